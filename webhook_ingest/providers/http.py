"""HTTP to provider APIs: one session per client, explicit timeouts, bounded retries.

A call takes ~30 s at worst (two tries of 3 s connect + 10 s read, plus backoff),
which keeps a task well inside its time limit and the broker's visibility timeout.

Only idempotent requests are retried here (GET); a submit is never retried
blindly because a lost answer to a POST may still have created a job. Longer
waits are not slept away inside a task: the caller raises `ProviderUnavailable`
and the task retries later with a countdown.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import InvalidHeader
from urllib3.util.retry import Retry

from webhook_ingest import strict_json
from webhook_ingest.observability.metrics import PROVIDER_API_ERRORS

CONNECT_TIMEOUT = 3.05
READ_TIMEOUT = 10
RETRY_STATUSES = (429, 500, 502, 503, 504)
# An error answer's reason is read from at most this much of its body.
MAX_ERROR_ANSWER_BYTES = 64 * 1024
# Only for its Retry-After parser, the one requests already relies on.
_RETRY_AFTER_PARSER = Retry(0)


class ProviderError(Exception):
    """The provider API did not give a usable answer.

    `status`, `answer` (the JSON object it answered with, if any) and `headers` keep
    the provider's own words: some error answers are a job's definitive end (a
    Stability 403 is its content moderation, a fal result with `error_type` the
    request's failure), which only the provider's module can tell.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        answer: dict | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.answer = answer
        self.headers: Mapping[str, str] = headers if headers is not None else {}


class ProviderUnavailable(ProviderError):
    """A transient failure (timeout, 429, 5xx): try again later."""

    def __init__(
        self,
        message: str,
        retry_after: float | None = None,
        status: int | None = None,
        **answered: Any,
    ) -> None:
        super().__init__(message, status=status, **answered)
        self.retry_after = retry_after


class ProviderNotFound(ProviderError):
    """The provider does not know this id (never did, or forgot it)."""


class ProviderAuthError(ProviderError):
    """The provider refused our credentials (401/403): a missing or revoked API key.
    Retrying will not help until an operator fixes the key."""


def path_segment(value: str) -> str:
    """`value` as exactly one URL path segment, whatever it holds.

    Ids reach provider URLs from webhooks and from registrations (`POST /jobs`
    takes any printable id), and the request carries our API key: an id must
    not add segments (`/`), climb out of the path or start a query (`?`, `#`).
    Everything but unreserved characters is percent-encoded. `.` and `..` cannot
    be: requests decodes `%2E` back to a dot before sending, and a dot segment
    is resolved away by the client or the server. No provider names a job so,
    and registration refuses it; such an id raises ProviderError, unsent.
    """
    if value in (".", ".."):
        raise ProviderError("an id of only dots cannot be put into a URL")
    return quote(value, safe="")


class ProviderSession(requests.Session):
    """A session that knows whose API it talks to, so failures are counted per provider."""

    def __init__(self, provider: str) -> None:
        super().__init__()
        self.provider = provider


def make_session(
    auth_header: str | None, provider: str, user_agent: str = "webhook-ingest"
) -> ProviderSession:
    session = ProviderSession(provider)
    # 429 is not retried here: its Retry-After may be minutes, which must become a
    # task countdown, not a sleep that holds a worker past the visibility timeout.
    retry = Retry(
        total=1,
        backoff_factor=0.5,
        backoff_jitter=0.25,
        status_forcelist=(500, 502, 503, 504),
        allowed_methods=frozenset({"GET", "HEAD"}),
        # A 5xx's Retry-After is left to the task's countdown for the same reason.
        respect_retry_after_header=False,
        backoff_max=5,
        raise_on_status=False,
    )
    adapter = HTTPAdapter(max_retries=retry, pool_maxsize=10)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = user_agent
    if auth_header:
        session.headers["Authorization"] = auth_header
    return session


def get_json(session: requests.Session, url: str) -> tuple[int, dict]:
    """GET a JSON object. Raises ProviderUnavailable / ProviderNotFound / ProviderError."""
    try:
        response = session.get(
            url, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT), headers={"Accept": "application/json"}
        )
    except requests.RequestException as exc:
        _count_error(session, exc)
        raise ProviderUnavailable(f"{type(exc).__name__} calling provider") from None
    return response.status_code, _checked_json(session, response)


def post_json(session: requests.Session, url: str, **kwargs) -> dict:
    """POST and return the JSON object answered. Never retried on an answer: a submit
    whose response was lost may still have started a job (urllib3 only retries a
    connection that was never made)."""
    try:
        response = session.post(
            url,
            timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
            headers={"Accept": "application/json"},
            **kwargs,
        )
    except requests.ConnectionError as exc:
        _count_error(session, exc)
        raise ProviderUnavailable(f"{type(exc).__name__} calling provider") from None
    except requests.RequestException as exc:
        _count_error(session, exc)
        # A timeout after sending: the provider may have the job. Not retryable blindly.
        raise ProviderError(f"{type(exc).__name__} calling provider; the job may exist") from None
    return _checked_json(session, response)


def _count_error(session: requests.Session, failure: requests.Response | Exception | str) -> None:
    """`status`: the HTTP status, or what went wrong without one (timeout, connection...)."""
    if isinstance(failure, str):
        status = failure
    elif isinstance(failure, requests.Response):
        status = str(failure.status_code)
    elif isinstance(failure, requests.Timeout):
        status = "timeout"
    else:
        status = "connection"
    PROVIDER_API_ERRORS.labels(getattr(session, "provider", "unknown"), status).inc()


def _checked_json(session: requests.Session, response: requests.Response) -> dict:
    status = response.status_code
    if status >= 400:
        _count_error(session, response)
    if status == 404:
        raise ProviderNotFound("provider answered 404", status=status)
    if status in (401, 403):
        # the answer is kept: a provider's module may know better (Stability's 403
        # is a content moderation verdict on the job, not on our key)
        raise ProviderAuthError(
            f"provider answered {status}: our API key for it is missing or refused",
            status=status,
            **_answered(response),
        )
    if status in RETRY_STATUSES:
        raise ProviderUnavailable(
            f"provider answered {status}",
            retry_after=_retry_after(response),
            status=status,
            **_answered(response),
        )
    if status >= 400:
        raise ProviderError(f"provider answered {status}", status=status, **_answered(response))
    try:
        body = strict_json.loads(response.content)
    except ValueError:
        _count_error(session, "invalid_body")
        raise ProviderError("provider answered with something that is not JSON") from None
    if not isinstance(body, dict):
        _count_error(session, "invalid_body")
        raise ProviderError("provider answered with JSON that is not an object")
    return body


def _answered(response: requests.Response) -> dict[str, Any]:
    """An error answer's JSON object and headers, for the provider module to read its
    reason from; an answer that is not a small JSON object keeps only the headers."""
    answer = None
    if len(response.content) <= MAX_ERROR_ANSWER_BYTES:
        try:
            parsed = strict_json.loads(response.content)
        except ValueError:
            parsed = None
        answer = parsed if isinstance(parsed, dict) else None
    return {"answer": answer, "headers": response.headers}


def _retry_after(response: requests.Response) -> float | None:
    """Retry-After in seconds, from either of its forms (RFC 9110): delay-seconds or an
    HTTP date (one in the past is 0). None when absent or not of those forms; urllib3
    also caps it at its retry_after_max (6 hours)."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return float(_RETRY_AFTER_PARSER.parse_retry_after(value))
    except (InvalidHeader, ValueError, OverflowError):  # e.g. year 99999, 5000 digits
        return None
