"""JSON as RFC 8259 defines it and the rest of the job system can read it.

Python's json accepts NaN and Infinity, turns 1e999 into inf, and decodes an
escaped lone surrogate ("\\ud800") into a string that cannot be encoded as UTF-8:
the JavaScript parts of the job system (JSON.parse) would reject or mangle the
first ones in a broadcast, and Redis cannot store the last. All of them are
refused here, so the receiver answers 400 instead of a worker failing later.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

# Only a \u escape can produce a surrogate (UTF-8 decoding refuses encoded ones),
# so texts without one skip the check. An escaped backslash before "ud8…" makes
# a false hit, which only costs the exact check.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_SURROGATE_ESCAPE_BYTES = re.compile(rb"\\u[dD][89abcdefABCDEF]")


class NotStrictJSON(ValueError):
    """Parsed by Python, not readable downstream. The message names the rule, never
    the text, so it is safe to answer with."""


def _reject_constant(name: str) -> Any:
    raise NotStrictJSON(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999, -1E+400: inf in Python
        raise NotStrictJSON("a number is out of range")
    return value


def _int_a_double_holds(text: str) -> int:
    value = int(text)
    try:
        float(value)  # what a JavaScript reader makes of it
    except OverflowError:
        raise NotStrictJSON("a number is out of range") from None
    return value


def loads(
    text: str | bytes,
    *,
    object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
) -> Any:
    """Parse strict JSON; ValueError for anything else (NotStrictJSON for NaN,
    Infinity, numbers beyond a double and lone surrogates).

    `object_pairs_hook` is json's: each object's pairs in document order, e.g. so a
    configuration file can refuse a duplicate key (raise ValueError there).
    """
    try:
        value = json.loads(
            text,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
            parse_int=_int_a_double_holds,
            object_pairs_hook=object_pairs_hook,
        )
    except RecursionError:  # nesting deeper than the parser's stack: not a payload we take
        raise ValueError("JSON nested too deeply") from None
    pattern = _SURROGATE_ESCAPE_BYTES if isinstance(text, bytes) else _SURROGATE_ESCAPE
    if pattern.search(text):
        _refuse_lone_surrogates(value)
    return value


def _refuse_lone_surrogates(value: Any) -> None:
    """json pairs escaped surrogates into one character; any left alone fails to encode."""
    try:
        json.dumps(value, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError:
        raise NotStrictJSON("a string holds a lone surrogate") from None


def dumps(value: Any) -> str:
    """Compact, key-sorted (so equal results compare equal), strict JSON text."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False)
