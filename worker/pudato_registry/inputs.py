"""Input formats: how each source's bytes become registry events, one registered decoder each.

A decoder takes the bytes of one message (or request body) and gives a
:class:`Translated` (the registry messages it becomes, keyed by correlation
id), an :class:`Ignored` (counted), or a
:class:`~pudato_registry.validate.Rejection` (dead-lettered, or a 400). The
bridge and the HTTP receiver decode through the one their settings name
(``PUDATO_INPUT_FORMAT``); a new format is one module with a decoder and one
line in :data:`FORMATS`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from pudato_registry.settings import Settings
from pudato_registry.validate import Rejection, validate


@dataclass(frozen=True)
class Translated:
    """The registry events an input message becomes: (key, value) messages, ready to publish."""

    messages: list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class Ignored:
    """Valid input the registry has no use for, and why (counted, not dead-lettered)."""

    reason: str
    kind: str = "other"  # the metric's label


Decoded = Translated | Ignored | Rejection
Decoder = Callable[[bytes | None], Decoded]

# name -> "module:function", imported when first asked for: the function takes the
# settings and gives the decoder (which may read options from them).
FORMATS: dict[str, str] = {
    "openlineage": "pudato_registry.openlineage:decoder",
    "events-v1": "pudato_registry.inputs:events_v1_decoder",
}


def decoder(name: str, settings: Settings) -> Decoder:
    """The decoder registered as ``name``, set up from ``settings``; ValueError if none is."""
    target = FORMATS.get(name)
    if target is None:
        raise ValueError(f"no input format {name!r}; there are {', '.join(sorted(FORMATS))}")
    module, function = target.split(":")
    make = cast(Callable[[Settings], Decoder], getattr(importlib.import_module(module), function))
    return make(settings)


def events_v1_decoder(_settings: Settings) -> Decoder:
    """The ``events-v1`` format: registry events mirrored as they are."""
    return events_v1


def events_v1(value: bytes | None) -> Decoded:
    """A registry event as it is (a topic mirrored from elsewhere): checked, keyed, passed on."""
    result = validate(value)
    if isinstance(result, Rejection):
        return result
    assert value is not None  # validate refuses a tombstone
    return Translated([(result.correlation_id.encode(), value)])
