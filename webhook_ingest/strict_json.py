"""JSON as RFC 8259 defines it: Python's json accepts NaN and Infinity, which the
JavaScript parts of the job system (JSON.parse) would reject in a broadcast."""

from __future__ import annotations

import json
from typing import Any


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(text: str | bytes) -> Any:
    """Parse strict JSON; ValueError for anything else, NaN and Infinity included."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:  # nesting deeper than the parser's stack: not a payload we take
        raise ValueError("JSON nested too deeply") from None


def dumps(value: Any) -> str:
    """Compact, key-sorted (so equal results compare equal), strict JSON text."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False)
