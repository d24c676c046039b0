"""JSON as RFC 8259 defines it: Python's json accepts NaN and Infinity, which the
JavaScript parts of the job system (JSON.parse) would reject in a broadcast."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(
    text: str | bytes,
    *,
    object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
) -> Any:
    """Parse strict JSON; ValueError for anything else, NaN and Infinity included.

    `object_pairs_hook` is json's: each object's pairs in document order, e.g. so a
    configuration file can refuse a duplicate key (raise ValueError there).
    """
    try:
        return json.loads(
            text, parse_constant=_reject_constant, object_pairs_hook=object_pairs_hook
        )
    except RecursionError:  # nesting deeper than the parser's stack: not a payload we take
        raise ValueError("JSON nested too deeply") from None


def dumps(value: Any) -> str:
    """Compact, key-sorted (so equal results compare equal), strict JSON text."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False)
