"""Logging set-up: plain lines for people, or one JSON object per line for collectors."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import msgspec

# What every LogRecord has: anything else came with ``extra=`` and becomes a JSON field.
_RECORD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the fields a call gave with
    ``extra=`` (topic, partition, offset ... for a collector to filter on), the exception."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a JSON line."""
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _RECORD and name not in entry:
                entry[name] = value if isinstance(value, str | int | float | bool) or \
                    value is None else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return msgspec.json.encode(entry).decode()


class Scrub(logging.Filter):
    """Replaces each secret (a password, a SASL secret) with ``***`` in every record."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.secrets = sorted(set(secrets), key=len, reverse=True)

    def text(self, text: str) -> str:
        """``text`` with every secret masked."""
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask the record's message and exception text; keep the record."""
        if self.secrets:
            record.msg, record.args = self.text(record.getMessage()), None
            for name, value in list(vars(record).items()):  # the fields extra= gave too
                if name not in _RECORD and isinstance(value, str):
                    setattr(record, name, self.text(value))
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = self.text(record.exc_text)
        return True


def configure(level: str = "INFO", json: bool = False, secrets: Sequence[str] = ()) -> None:
    """Send the package's logs to stderr, as text or JSON lines, with ``secrets`` masked."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(Scrub(secrets))
    handler.setFormatter(
        JsonFormatter() if json
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class Sparse:
    """Logs a kind of line at most once per ``every_s`` seconds, saying how many were held back.

    For what a client can cause at any rate (refused requests): the log says
    that it happens and why, and nobody can flood it.
    """

    def __init__(self, logger: logging.Logger, every_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log, self._every, self._clock = logger, every_s, clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, kind: str, message: str, *args: object) -> None:
        """Log ``message`` unless a line of ``kind`` went out less than ``every_s`` ago."""
        now = self._clock()
        with self._lock:
            if now - self._last.get(kind, -self._every) < self._every:
                self._held[kind] = self._held.get(kind, 0) + 1
                return
            self._last[kind] = now
            held = self._held.pop(kind, 0)
        suffix = f" (and {held} more like it since the last such line)" if held else ""
        self._log.warning(message + suffix, *args)
