"""One JSON object per line for every log record, in every process.

Log collectors (Loki, CloudWatch, Datadog) index fields, not sentences: the
`extra={...}` fields of a record (provider, job_id, delivery_id, outcome,
reason, ...) become top-level keys. Fields whose names suggest a secret or a
full payload are dropped here, whatever a caller passes, so a careless
`extra=` cannot leak a signature or a body into the logs.

LOG_FORMAT=text gives the classic one-line text format for reading by eye.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
from datetime import UTC, datetime

# LogRecord's own attributes: everything else on a record came from `extra=`.
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)
_WITHHELD = re.compile(
    r"secret|token|signature|authorization|password|api_key|body|payload|header", re.I
)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# Characters json.dumps(ensure_ascii=False) leaves raw that a log line must not
# carry: DEL and the C1 controls (U+0085 is a newline to some readers), the line
# and paragraph separators (line ends for JavaScript and some collectors), bidi
# controls (they rearrange what a terminal shows), and lone surrogates (which
# stderr cannot even encode). Field values come from requests, so each is written
# as a JSON `\uXXXX` escape: the line stays one line, the value is kept.
_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape_unsafe(line: str) -> str:
    # Outside strings a JSON text is ASCII, so every match is inside a string.
    return _UNSAFE.sub(lambda match: f"\\u{ord(match.group()):04x}", line)


@functools.lru_cache(maxsize=4096)
def _is_event_field(name: str) -> bool:
    """Whether a record attribute is written as a field: one of the `extra=` fields,
    and not one whose name suggests a secret or a payload. Decided once per name:
    every accepted delivery writes a line, and testing each of a record's ~25
    attributes against the pattern was most of the formatter's time."""
    return not (name in _STANDARD or name.startswith("_") or _WITHHELD.search(name))


# json.dumps(..., ensure_ascii=False) builds an encoder per call; this one is reused.
_encode = json.JSONEncoder(ensure_ascii=False).encode


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if value is None or not _is_event_field(name):
                continue
            entry[name] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _escape_unsafe(_encode(entry))


class WithholdRequestText(logging.Filter):
    """gunicorn logs a malformed request line or header verbatim ("Invalid request from
    ip=...: Invalid HTTP request line: 'POST /webhook/runpod/<job>/<token>'"), the URI
    of a request that failed, and (access log) every request line; such text may carry
    a URL token or a bearer token. Keep who and why, not the secret."""

    _INVALID = re.compile(r"^(Invalid request from ip=[^:]*): ([^:']*)(?::.*)?$", re.S)
    # /webhook/<provider>/<job_id>/<token>: the third segment is a secret (RunPod)
    _URL_TOKEN = re.compile(r"(/webhook/[^/\s]+/[^/\s]+/)[^\s\"'?]+")

    def __init__(self, url_token_providers: list[str] | None = None) -> None:
        super().__init__()
        names = url_token_providers
        if names is None:
            names = url_token_providers_configured(os.environ)
        # /webhook/<provider>/<token>, the job id forgotten, on the URLs of a
        # provider that takes URL tokens: the last segment is the token
        alternatives = "|".join(map(re.escape, names))
        self._token_as_job = (
            re.compile(rf"(/webhook/(?:{alternatives})/)[^/\s\"'?]+(?=[\s\"'?]|$)")
            if names
            else None
        )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        match = self._INVALID.match(message)
        if match:
            message = f"{match.group(1)}: {match.group(2).strip()} (request text withheld)"
        elif message.startswith("Error handling request"):
            message = "Error handling request (request text withheld)"
        else:
            message = self._URL_TOKEN.sub(r"\1<withheld>", message)
            if self._token_as_job is not None:
                message = self._token_as_job.sub(r"\1<withheld>", message)
        record.msg, record.args = message, ()
        return True


def url_token_providers_configured(environ) -> list[str]:
    """Providers whose webhook URLs carry a secret token, as the environment
    configures them (WEBHOOK_URL_SECRET_<P>, WEBHOOK_URL_TOKEN_<P>)."""
    prefixes = ("WEBHOOK_URL_SECRET_", "WEBHOOK_URL_TOKEN_")
    return sorted(
        {
            name.removeprefix(prefix).lower()
            for name, value in environ.items()
            for prefix in prefixes
            if name.startswith(prefix) and value.strip()
        }
    )


def formatter() -> logging.Formatter:
    if os.environ.get("LOG_FORMAT", "json").strip().lower() == "text":
        return logging.Formatter(TEXT_FORMAT)
    return JsonFormatter()


def configure(level: str | int | None = None) -> None:
    """Route every logger through one stderr handler in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or os.environ.get("LOG_LEVEL", "INFO").upper())


def gunicorn_logconfig(access: bool = False) -> dict:
    """gunicorn's own loggers (errors, and the access log if asked) in the same format,
    redacted."""
    formatter_spec = (
        {"format": TEXT_FORMAT}
        if os.environ.get("LOG_FORMAT", "json").strip().lower() == "text"
        else {"()": f"{__name__}.JsonFormatter"}
    )
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "default",
        "filters": ["withhold_request_text"],
        "stream": "ext://sys.stderr",
    }
    loggers = {"gunicorn.error": {"handlers": ["console"], "level": "INFO", "propagate": False}}
    if access:
        loggers["gunicorn.access"] = {"handlers": ["console"], "level": "INFO", "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"withhold_request_text": {"()": f"{__name__}.WithholdRequestText"}},
        "formatters": {"default": formatter_spec},
        "handlers": {"console": handler},
        "loggers": loggers,
    }
