"""What a provider module provides. One provider = one module + one registry line.

A provider knows how its deliveries are verified, which of its ids a payload
names, how a payload becomes a `JobStateUpdate`, and — as the seed's
`WebhookCapableConnector` — how a job is submitted with the right webhook
configuration and how its status is polled when the webhook never came.
"""

from __future__ import annotations

import abc
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import requests

from webhook_ingest.config import ConfigError, Settings
from webhook_ingest.providers import http
from webhook_ingest.state.job_update import JobStateUpdate
from webhook_ingest.verification import AllOf, StandardWebhooksVerifier, Verifier
from webhook_ingest.verification.tokens import (
    BasicAuthVerifier,
    BearerTokenVerifier,
    UrlTokenVerifier,
    shared_tokens,
    url_secrets,
)

if TYPE_CHECKING:
    from redis import Redis

# Checks any provider may add, each from its own variable; all configured must pass.
# The URL token is one check from two variables (Provider._url_token_check).
_EXTRA_CHECKS = (
    ("WEBHOOK_BEARER_TOKEN_", BearerTokenVerifier),
    ("WEBHOOK_BASIC_AUTH_", BasicAuthVerifier),
)
URL_TOKEN_PREFIX = "WEBHOOK_URL_TOKEN_"  # noqa: S105 - a variable name; shared, migration only
URL_SECRET_PREFIX = "WEBHOOK_URL_SECRET_"  # noqa: S105 - a variable name; per-job tokens
BODY_LIMIT_PREFIX = "MAX_BODY_BYTES_"
DEDUP_WINDOW_PREFIX = "DELIVERY_DEDUP_TTL_SECONDS_"
# Verification schemes that prove who sent a delivery without covering its body.
_CREDENTIALS_ONLY = frozenset({"url-token", "bearer", "basic"})
_WHOLE_NUMBER = re.compile(r"[0-9]{1,15}")


class PayloadError(Exception):
    """A verified payload we cannot understand: retrying will not help."""


class NotPollable(http.ProviderError):
    """The provider cannot be asked about this job by its id alone (an OpenAI eval
    run): its webhook decides. Nothing was asked, so nothing failed: the orphan
    poller looks again an hour later and never gives up on such a job."""


@dataclass(frozen=True)
class JobRef:
    job_id: str
    provider: str
    external_job_id: str | None


@dataclass(frozen=True)
class WebhookConfig:
    """What a submit request tells the provider about calling us back."""

    url: str
    events: tuple[str, ...]
    auth: str  # how the provider proves a delivery: the verification scheme


@dataclass(frozen=True)
class JobRequest:
    """A job to submit: our id plus the provider-specific request (model, input, ...)."""

    job_id: str
    params: dict[str, Any] = field(default_factory=dict)


class WebhookCapableConnector(abc.ABC):
    """The seed's connector interface, in Python."""

    @abc.abstractmethod
    def supports_webhooks(self) -> bool: ...

    @abc.abstractmethod
    def get_webhook_config(self, job_id: str) -> WebhookConfig | None: ...

    @abc.abstractmethod
    def submit(self, job: JobRequest) -> str:
        """Start the job at the provider; return the provider's id for it."""

    @abc.abstractmethod
    def poll_job_status(self, job: JobRef) -> JobStateUpdate:
        """Ask the provider where the job stands (source `orphan_poll`).

        Raises http.ProviderNotFound / ProviderUnavailable / ProviderError.
        """


def env_name(provider: str, prefix: str = "", suffix: str = "") -> str:
    return f"{prefix}{provider.upper()}{suffix}"


class Provider(WebhookCapableConnector):
    name: ClassVar[str]
    default_base_url: ClassVar[str]
    # For providers whose id alone does not say where a job is polled (fal's app,
    # RunPod's endpoint): the field that says it in `POST /jobs` and in the job's
    # mapping (providers.poll_targets). None: the id is enough.
    poll_target_field: ClassVar[str | None] = None

    # The largest delivery the provider really sends, when that is more than
    # MAX_BODY_BYTES: providers that put outputs inline in the webhook (RunPod,
    # fal) send megabytes where others send a status. MAX_BODY_BYTES_<PROVIDER>
    # overrides either (`max_body_bytes`).
    default_max_body_bytes: ClassVar[int | None] = None
    # Whether the provider's API runs a failed job again under the same id (RunPod's
    # /retry): its later completion may then replace the failure (StateStore.apply);
    # for every other provider a failed job stays failed.
    retries_under_same_id: ClassVar[bool] = False
    # How long after a delivery's first attempt the provider may still send it
    # again (its documented retry window plus slack, in seconds): its ids are
    # remembered that long (handoff.seen), and no longer, so a provider that gives
    # up after a minute does not cost 73 hours of ids. None: the provider does not
    # say (declarative providers), DELIVERY_DEDUP_TTL_SECONDS applies.
    # DELIVERY_DEDUP_TTL_SECONDS_<PROVIDER> overrides either
    # (`delivery_dedup_seconds`).
    delivery_retry_window_seconds: ClassVar[int | None] = None
    _session: requests.Session | None = None

    def __init__(
        self,
        settings: Settings,
        environ: Mapping[str, str] | None = None,
        *,
        redis: Redis | None = None,
    ) -> None:
        self.settings = settings
        self.environ = os.environ if environ is None else environ
        # The process's client (Services.redis), never one of the provider's own: one
        # pool per process, one place that sets Redis timeouts. Set before the verifier
        # is built, which may keep keys there. None: a provider built only to verify or
        # normalize (a test, a tool), which `redis` refuses to pretend it has.
        self._redis = redis
        self.verifier = self._build_verifier() if self.supports_webhooks() else None
        self.allowlist = self._build_allowlist()
        self.max_body_bytes = self._body_limit()
        self.delivery_dedup_seconds = self._dedup_window()

    def supports_webhooks(self) -> bool:
        return True

    def can_poll(self) -> bool:
        """Whether `poll_job_status` can ask the provider at all (the consistency check
        samples only such providers)."""
        return True

    def checked_poll_target(self, value: str) -> str:
        """A registration's `poll_target_field` value as it is stored; ValueError,
        saying what is expected, for one that cannot be put into a poll URL."""
        raise ValueError(f"{self.name} jobs are polled by their id alone")

    def configuration_warnings(self) -> list[str]:
        """What keeps this provider from doing all its work though it starts: it
        accepts webhooks but cannot call its API to fetch a result or poll a job
        (the API would answer 401, and such deliveries are parked as
        `provider_auth`). Said by `webhook-ingest check-config` and logged when the
        web and worker processes start."""
        if not (self.enabled and self.can_poll() and self.needs_api_key) or self.api_key:
            return []
        return [
            f"no {self.api_key_variable}: {self.name} webhooks are accepted, but its API "
            "cannot be called to fetch results or poll jobs whose webhook never came"
        ]

    # Declarative providers' polls may need no key (or name their own variable,
    # checked at start): only the built-in APIs always want one.
    needs_api_key: ClassVar[bool] = True

    @property
    def api_key_variable(self) -> str:
        """The variable `api_key` is read from, as operators should be told."""
        return env_name(self.name, suffix="_API_KEY")

    @property
    def redis(self) -> Redis:
        """The process's Redis client, for what a provider keeps there (poll targets)."""
        if self._redis is None:
            raise RuntimeError(
                f"provider {self.name} was built without a Redis client: "
                "build providers with load_providers(settings, environ, redis=client)"
            )
        return self._redis

    # -- the provider's API -----------------------------------------------------

    @property
    def base_url(self) -> str:
        return (self.setting("_BASE_URL") or self.default_base_url).rstrip("/")

    @property
    def api_key(self) -> str | None:
        return self.setting("_API_KEY")

    @property
    def session(self) -> requests.Session:
        """One HTTP session per provider and process: connection reuse, one retry policy."""
        if self._session is None:
            key = self.api_key
            self._session = http.make_session(f"Bearer {key}" if key else None, self.name)
        return self._session

    def webhook_url(self, *path: str) -> str:
        return "/".join((self.settings.webhook_base_url, "webhook", self.name, *path))

    # -- receiving --------------------------------------------------------------

    def signature_verifier(self) -> Verifier | None:
        """The provider's own signature scheme, if configured (Standard Webhooks here)."""
        variable = env_name(self.name, prefix="WEBHOOK_SECRET_")
        secrets = self.environ.get(variable, "").strip()
        if not secrets:
            return None
        return StandardWebhooksVerifier.from_secrets(
            secrets, variable, self.settings.tolerance_seconds
        )

    def _build_verifier(self) -> Verifier | None:
        """None when nothing is configured: the provider then accepts nothing."""
        checks = [check for check in [self.signature_verifier()] if check is not None]
        for prefix, scheme in _EXTRA_CHECKS:
            variable = env_name(self.name, prefix=prefix)
            value = self.environ.get(variable, "").strip()
            if value:
                checks.append(scheme.from_env(value, variable))
        url_token = self._url_token_check()
        if url_token is not None:
            checks.append(url_token)
        schemes = {check.scheme for check in checks}
        if {"bearer", "basic"} <= schemes:
            raise ConfigError(
                f"WEBHOOK_BEARER_TOKEN_{self.name.upper()} and WEBHOOK_BASIC_AUTH_"
                f"{self.name.upper()} both need the Authorization header: set one"
            )
        if not checks:
            return None
        return checks[0] if len(checks) == 1 else AllOf(checks)

    def _url_token_check(self) -> UrlTokenVerifier | None:
        """The URL token check: per-job tokens from WEBHOOK_URL_SECRET_<PROVIDER>,
        shared ones from WEBHOOK_URL_TOKEN_<PROVIDER>; either kind verifies."""
        token_variable = env_name(self.name, prefix=URL_TOKEN_PREFIX)
        secret_variable = env_name(self.name, prefix=URL_SECRET_PREFIX)
        tokens = self.environ.get(token_variable, "").strip()
        secrets = self.environ.get(secret_variable, "").strip()
        if not tokens and not secrets:
            return None
        return UrlTokenVerifier(
            shared_tokens(tokens, token_variable) if tokens else (),
            url_secrets(secrets, secret_variable) if secrets else (),
        )

    def url_token_check(self) -> UrlTokenVerifier | None:
        """The configured URL token check, wherever it sits in the verifier."""
        verifiers = getattr(self.verifier, "verifiers", (self.verifier,))
        return next((v for v in verifiers if isinstance(v, UrlTokenVerifier)), None)

    def job_webhook_url(self, job_id: str) -> str | None:
        """The URL to give the provider for `job_id`: what its submit sends (per job,
        with the job's URL token for RunPod) or the project-level URL (OpenAI). None
        when the provider takes no webhooks or no URL can be built yet (a URL token
        provider with no token configured). A URL with a token is a secret."""
        try:
            config = self.get_webhook_config(job_id)
        except ConfigError:
            return None
        return config.url if config is not None else None

    def _build_allowlist(self) -> tuple | None:
        """Networks deliveries may come from; None means any address."""
        variable = env_name(self.name, prefix="WEBHOOK_IP_ALLOWLIST_")
        value = self.environ.get(variable, "").strip()
        if not value:
            return None
        try:
            return tuple(
                ipaddress.ip_network(part.strip(), strict=False)
                for part in value.split(",")
                if part.strip()
            )
        except ValueError as exc:
            raise ConfigError(f"{variable}: {exc}") from None

    def _body_limit(self) -> int:
        """Bytes a delivery may have (more gets 413): MAX_BODY_BYTES_<PROVIDER> if set,
        else the provider's own default or MAX_BODY_BYTES, whichever is larger."""
        variable = env_name(self.name, prefix=BODY_LIMIT_PREFIX)
        value = self.environ.get(variable, "").strip()
        if not value:
            return max(self.default_max_body_bytes or 0, self.settings.max_body_bytes)
        if not _WHOLE_NUMBER.fullmatch(value) or int(value) < 1:
            raise ConfigError(
                f"{variable}: expected a whole number of bytes, at least 1 (20971520 is 20 MiB)"
            )
        return int(value)

    def _dedup_window(self) -> int:
        """Seconds a delivery id is remembered: DELIVERY_DEDUP_TTL_SECONDS_<PROVIDER> if
        set, else the provider's retry window or DELIVERY_DEDUP_TTL_SECONDS — never less
        than twice WEBHOOK_TOLERANCE_SECONDS: a signed timestamp passes for the
        tolerance on either side of now, and an id forgotten sooner lets a captured
        delivery be replayed (the check config.py makes of DELIVERY_DEDUP_TTL_SECONDS)."""
        floor = 2 * self.settings.tolerance_seconds
        variable = env_name(self.name, prefix=DEDUP_WINDOW_PREFIX)
        value = self.environ.get(variable, "").strip()
        if not value:
            declared = self.delivery_retry_window_seconds or self.settings.dedup_ttl_seconds
            return max(declared, floor)
        if not _WHOLE_NUMBER.fullmatch(value) or int(value) < floor:
            raise ConfigError(
                f"{variable}: expected a whole number of seconds, at least {floor} (twice "
                f"WEBHOOK_TOLERANCE_SECONDS={self.settings.tolerance_seconds}): a delivery id "
                "forgotten while its signed timestamp still passes lets a captured delivery "
                "be replayed"
            )
        return int(value)

    def allows(self, address: str | None) -> bool:
        if self.allowlist is None:
            return True
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped:  # ::ffff:1.2.3.4 is 1.2.3.4
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.allowlist)

    @property
    def enabled(self) -> bool:
        return self.verifier is not None

    @property
    def configuration_hint(self) -> str:
        """The variable an operator sets to enable this provider's webhooks."""
        return env_name(self.name, prefix="WEBHOOK_SECRET_")

    @property
    def proof_covers_no_body(self) -> bool:
        """Whether every configured check is a credential that signs nothing of the
        body (URL token, bearer, basic): the receiver then checks it before reading
        the body."""
        schemes = set(self.verifier.scheme.split("+")) if self.verifier is not None else set()
        return bool(schemes) and schemes <= _CREDENTIALS_ONLY

    @property
    def takes_url_token(self) -> bool:
        """Whether its webhook URLs end in a secret token segment."""
        return self.verifier is not None and "url-token" in self.verifier.scheme.split("+")

    @abc.abstractmethod
    def external_id(self, payload: dict[str, Any]) -> str:
        """The provider's own id of the job this payload is about."""

    def waits_for_mapping(self, payload: dict[str, Any]) -> bool:
        """Whether an unmatched delivery should wait for its job to be registered.

        False for event types we do not track: they are recorded, not retried.
        """
        return True

    @abc.abstractmethod
    def to_update(self, payload: dict[str, Any], job: JobRef) -> JobStateUpdate | None:
        """Normalize a verified delivery; None when it says nothing about job state."""

    # -- helpers for subclasses -------------------------------------------------

    def update(self, job: JobRef, status: str, *, source: str, **observed: Any) -> JobStateUpdate:
        """What this provider observed of `job`, as an update (`observed`: the keywords
        of `job_update`, which normalizers that are plain functions call directly)."""
        return job_update(self.name, job, status, source=source, **observed)

    def setting(self, suffix: str, default: str | None = None) -> str | None:
        value = self.environ.get(env_name(self.name, suffix=suffix), "").strip()
        return value or default


def job_update(
    provider: str,
    job: JobRef,
    status: str,
    *,
    source: str,
    provider_status: str | None,
    external_job_id: str | None = None,
    progress: int | None = None,
    result: Any = None,
    error_message: str | None = None,
) -> JobStateUpdate:
    """A provider's observation of `job` as a JobStateUpdate: the one place the fields
    every provider shares (our job id, the provider, its id for the job, whether a
    webhook or a poll said it) are filled in.

    `Provider.update` calls this with its own name; so do the normalizers that are
    plain functions of a document (openai, replicate, runpod, declarative fields),
    which the fuzz tests call without building a provider.
    `provider_status`: the provider's own word for the status (None if it gave
    none), which the job's events keep beside ours. `external_job_id`: the id the
    observation names, if it names one (a payload's or an answer's); else the job's
    registered one.
    """
    return JobStateUpdate(
        job_id=job.job_id,
        external_job_id=external_job_id or job.external_job_id,
        status=status,
        progress=progress,
        result=result,
        error_message=error_message,
        provider=provider,
        source=source,
        provider_status=provider_status,
    )


def require_str(payload: Mapping[str, Any], *path: str) -> str:
    """payload[path...] as a non-empty string, else PayloadError naming the path."""
    value: Any = payload
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            raise PayloadError(f"payload has no {'.'.join(path)}")
        value = value[part]
    if not isinstance(value, str) or not value:
        raise PayloadError(f"payload field {'.'.join(path)} is not a non-empty string")
    return value
