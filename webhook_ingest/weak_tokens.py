"""Refuse operator tokens an attacker would try first.

A single string's entropy cannot be measured, only its obvious weaknesses found:
a sample copied from documentation, a placeholder, too small an alphabet for its
length, one or two characters repeated, a repeated word, a run like `abcdef…`.
Randomly generated tokens (`openssl rand -hex 24`, `secrets.token_urlsafe(32)`)
pass every check; the checks never echo the token.
"""

from __future__ import annotations

import collections
import math
import re
import string

MIN_LENGTH = 16
# Bits a guesser needs at most, assuming the token is drawn at random from the
# character classes it uses: 16 alphanumeric characters are enough, 16 digits
# (53 bits) are not. 16 random hex characters are all digits about once in 1,800
# draws and then refused: generate 24 or more (the README's 48).
MIN_ESTIMATED_BITS = 64
# Bits per character of the token's own character counts: a random 16-character
# hex token falls below this about once in 100,000; `aaaab…` always does.
MIN_BITS_PER_CHARACTER = 2.0
GENERATE = "generate one with `openssl rand -hex 24`"

# Samples published in documentation (this README's quickstart used the first).
KNOWN_SAMPLES = frozenset({"change-me-to-a-long-token"})
_PLACEHOLDER = re.compile(r"change.?me|replace.?me|changeit|placeholder|your.?token", re.I)

_CLASSES = (
    (string.digits, 10),
    (string.ascii_lowercase, 26),
    (string.ascii_uppercase, 26),
)


def weakness(token: str) -> str | None:
    """Why `token` is too weak to guard the operator endpoints, or None."""
    if len(token) < MIN_LENGTH:
        return f"must be at least {MIN_LENGTH} characters; {GENERATE}"
    if token.lower() in KNOWN_SAMPLES or _PLACEHOLDER.search(token):
        return f"is a sample or placeholder, not a secret; {GENERATE}"
    if (
        _estimated_bits(token) < MIN_ESTIMATED_BITS
        or _bits_per_character(token) < MIN_BITS_PER_CHARACTER
        or _repeats_a_shorter_string(token)
        or _mostly_a_run(token)
    ):
        return f"is too easy to guess (too few or too regular characters); {GENERATE}"
    return None


def _estimated_bits(token: str) -> float:
    pool = sum(size for chars, size in _CLASSES if any(c in chars for c in token))
    if any(not any(c in chars for chars, _ in _CLASSES) for c in token):
        pool += 33  # punctuation and anything else
    return len(token) * math.log2(pool)


def _bits_per_character(token: str) -> float:
    counts = collections.Counter(token).values()
    return -sum(n / len(token) * math.log2(n / len(token)) for n in counts)


def _repeats_a_shorter_string(token: str) -> bool:
    """`passwordpassword`, `abcabcabc…`: the token is found inside itself shifted."""
    return token in (token + token)[1:-1]


def _mostly_a_run(token: str) -> bool:
    """`abcdefgh…`, `0123456789…`, `zyxw…`: most neighbours are consecutive."""
    steps = sum(abs(ord(a) - ord(b)) == 1 for a, b in zip(token, token[1:], strict=False))
    return steps >= (len(token) - 1) / 2
