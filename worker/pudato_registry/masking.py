"""Secret-looking values masked wherever the registry shows a job's parameters or request:
the web UI, its JSON API, `jobs show`, `jobs diff` and `jobs reproduce` alike
(``PUDATO_MASK_KEYS``). Pure: no I/O."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"
DEFAULT_KEYS = ("password", "passwd", "pwd", "secret", "token", "key", "credential",
                "credentials", "auth", "authorization")
_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
_MASKED_COLUMNS = ("parameters", "request")


def secret_key(key: str, words: Iterable[str] = DEFAULT_KEYS) -> bool:
    """``key`` names a secret: one of its words (``db_password``, ``apiKey``,
    ``AWS_SECRET_ACCESS_KEY``, ``basicAuth``) is one of ``words``; ``monkey``, ``author``
    and ``tokenizer`` are not."""
    wanted = {w.lower() for w in words}
    return any(w.lower() in wanted for w in _WORDS.findall(key))


def masked(value: Any, words: Iterable[str] = DEFAULT_KEYS) -> Any:
    """``value`` with the value of every secret-looking key, at any depth, replaced."""
    wanted = tuple(words)

    def walk(v: Any) -> Any:
        if isinstance(v, Mapping):
            return {k: (MASK if item is not None and secret_key(str(k), wanted) else walk(item))
                    for k, item in v.items()}
        if isinstance(v, list):
            return [walk(item) for item in v]
        return v

    return walk(value)


def masked_job(job: Mapping[str, Any], words: Iterable[str] = DEFAULT_KEYS) -> dict[str, Any]:
    """A job row with its parameters and request masked."""
    wanted = tuple(words)
    return {k: masked(v, wanted) if k in _MASKED_COLUMNS else v for k, v in job.items()}
