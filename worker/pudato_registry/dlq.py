"""Dead letters: list them, and re-publish (redrive) them to the event topic once they can pass.

Redrive records each message it re-published in ``pudato_dlq_redriven``, by
the SHA-256 of its key and value, after the broker acknowledged it: a second
redrive skips it, and so does a redrive after the same message was
dead-lettered again (it would be sent round for ever otherwise). A crash
between the acknowledgement and the record can send a message twice; the
worker drops the second copy by its event id.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pudato_registry import kafka, store
from pudato_registry.settings import Settings
from pudato_registry.validate import Rejection, validate


def _number(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class DeadLetter:
    """One message of the dead-letter topic."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]

    @property
    def kind(self) -> str:
        """Why it was rejected (a RejectionKind value)."""
        return self.headers.get("error.kind", "")

    @property
    def error(self) -> str:
        """The rejection's message."""
        return self.headers.get("error", "")

    @property
    def source(self) -> str:
        """topic[partition]@offset it came from."""
        h = self.headers
        return f"{h.get('source.topic')}[{h.get('source.partition')}]@{h.get('source.offset')}"

    @property
    def dead_lettered_at(self) -> datetime | None:
        """When the worker dead-lettered it."""
        try:
            return datetime.fromisoformat(self.headers.get("dead_lettered_at", ""))
        except ValueError:  # absent or not a time: a letter written by someone else
            return None

    @property
    def truncated(self) -> bool:
        """Whether the letter carries only a prefix of its value (or key)."""
        return "true" in (self.headers.get("value.truncated"), self.headers.get("key.truncated"))

    def source_position(self) -> tuple[str | None, int | None, int | None]:
        """(topic, partition, offset) of the original, each None where a header is not one."""
        h = self.headers
        return h.get("source.topic"), _number(h.get("source.partition")), _number(
            h.get("source.offset"))

    def digest(self) -> str:
        """SHA-256 of key and value: the identity redrive records."""
        sha = hashlib.sha256()
        for part in (self.key, self.value):
            sha.update(b"\x00" if part is None else b"\x01" + len(part).to_bytes(8, "big") + part)
        return sha.hexdigest()

    def preview(self, width: int = 60) -> str:
        """The value's start, printable."""
        if self.value is None:
            return "(null)"
        text = self.value[:width * 4].decode("utf-8", "replace").replace("\n", " ")
        return text if len(text) <= width else text[:width - 3] + "..."


def read_all(settings: Settings) -> list[DeadLetter]:
    """Every message of the dead-letter topic, by partition and offset."""
    return read(settings)[0]


def read(settings: Settings, limit: int | None = None,
         kind: str | None = None) -> tuple[list[DeadLetter], int]:
    """The first ``limit`` dead letters by partition and offset (of ``kind`` only, if given),
    and how many more there are.

    Memory holds at most ``limit`` letters, however many the topic has.
    """
    reader = kafka.PartitionReader(settings, settings.dlq_topic)
    letters: list[DeadLetter] = []
    seen = 0
    try:
        reader.start()
        for batch in reader.read_until(reader.end_offsets()):
            found = [DeadLetter(m.partition() or 0, m.offset() or 0, m.key(), m.value(),
                                kafka.headers_dict(m.headers())) for m in batch]
            found = [d for d in found if kind is None or d.kind == kind]
            seen += len(found)
            letters.extend(found)
            letters.sort(key=lambda d: (d.partition, d.offset))
            if limit is not None:
                del letters[limit:]
    finally:
        reader.close()
    return letters, seen - len(letters)


def as_data(value: bytes | None, name: str) -> dict[str, str | None]:
    """Bytes for JSON, losslessly: ``name`` as text if they are UTF-8, else ``name_base64``."""
    if value is None:
        return {name: None}
    try:
        return {name: value.decode()}
    except UnicodeDecodeError:
        return {f"{name}_base64": base64.b64encode(value).decode()}


def rows(letters: Sequence[DeadLetter], *, full: bool = False) -> list[dict[str, Any]]:
    """Letters as `dlq list` (and the UI) show them; ``full``: with the key, the value and
    the headers, as ``--json`` prints them for a script."""
    found: list[dict[str, Any]] = [
        {"partition": d.partition, "offset": d.offset, "kind": d.kind, "error": d.error,
         "source": d.source, "dead_lettered_at": d.dead_lettered_at, "preview": d.preview()}
        for d in letters]
    if full:
        found = [{**row, **as_data(d.key, "key"), **as_data(d.value, "value"),
                  "headers": d.headers} for row, d in zip(found, letters, strict=True)]
    return found


def select(letters: Sequence[DeadLetter], *, kind: str | None = None,
           since: datetime | None = None) -> list[DeadLetter]:
    """The letters of one kind and/or dead-lettered since a time."""
    return [d for d in letters
            if (kind is None or d.kind == kind)
            and (since is None or (d.dead_lettered_at is not None and d.dead_lettered_at >= since))]


@dataclass(frozen=True)
class RedriveReport:
    """What a redrive did."""

    selected: int
    redriven: int  # (with dry_run: would be)
    already: int
    truncated: int = 0  # letters holding a prefix only: not redriven (the original is kept)
    hopeless: int = 0  # the worker would dead-letter them again as they are: not redriven
    dry_run: bool = False


def redrive(settings: Settings, *, kind: str | None = None, since: datetime | None = None,
            dry_run: bool = False, force: bool = False) -> RedriveReport:
    """Re-publish the selected dead letters to the event topic, each at most once.

    A letter the worker's validation (with these settings) refuses as it is, say
    ``not_json`` or a tombstone, would only be dead-lettered again: it is left
    alone unless ``force``. ``dry_run`` says what would be done and does nothing.
    """
    chosen = select(read_all(settings), kind=kind, since=since)
    done = store.redriven_digests(settings.database_dsn, [d.digest() for d in chosen])
    todo: dict[str, DeadLetter] = {}
    cut = [letter for letter in chosen if letter.truncated]
    hopeless = 0
    for letter in chosen:
        if letter.digest() in done or letter.truncated or letter.digest() in todo:
            continue
        if not force and isinstance(validate(letter.value, settings.max_message_bytes),
                                    Rejection):
            hopeless += 1
            continue
        todo[letter.digest()] = letter
    report = RedriveReport(selected=len(chosen), redriven=len(todo),
                           already=len(chosen) - len(todo) - len(cut) - hopeless,
                           truncated=len(cut), hopeless=hopeless, dry_run=dry_run)
    if dry_run or not todo:
        return report
    producer = kafka.make_producer(settings, **{"client.id": "pudato-redrive"})
    kafka.deliver(producer, settings.topic, (
        (letter.key, letter.value,
         [("redriven_from", f"{settings.dlq_topic}[{letter.partition}]@{letter.offset}")])
        for letter in todo.values()
    ), 60.0)
    store.record_redriven(settings.database_dsn, [
        (digest, d.kind, *d.source_position()) for digest, d in todo.items()
    ])
    return report
