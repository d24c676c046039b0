"""Settings from the environment, validated once at start (twelve-factor).

Every process (web, worker, beat) reads the same variables through `load_settings`,
so a bad value fails at start with the variable's name instead of on the first
delivery. Per-provider credentials are read by `webhook_ingest.providers`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from marshmallow import (
    EXCLUDE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from webhook_ingest import redis_sentinel, weak_tokens

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_TOLERANCE_SECONDS = 300
# OpenAI retries a delivery for up to 72 hours: remember ids a little longer.
DEFAULT_DEDUP_TTL_SECONDS = 3 * 24 * 3600 + 3600
# The Redis broker redelivers an unacknowledged message after this long; retry
# countdowns must stay below it or a waiting retry is redelivered as a duplicate.
MAX_VISIBILITY_TIMEOUT_SECONDS = 120
# A job not heard of this long is polled, on a tick every interval (see the
# bound beside the fields below).
DEFAULT_ORPHAN_AFTER_SECONDS = 180
DEFAULT_ORPHAN_POLL_INTERVAL_SECONDS = 30
# Failing polls (5xx, 429, timeouts, answers we cannot read) of one job end it after
# this long: by then Stability, the longest keeper here, has deleted the result,
# and the backoff has been asking once an hour for most of the day.
DEFAULT_ORPHAN_GIVE_UP_SECONDS = 24 * 3600
# The consistency check leaves a job alone this long after it finished: late
# webhooks and provider-side bookkeeping settle first.
CONSISTENCY_SETTLE_SECONDS = 60
# How long a receiver or worker waits for REDIS_MIN_REPLICA_ACKS replicas to confirm
# a write (Redis WAIT) before it answers 503 / retries the task. A healthy local
# replica confirms in well under a millisecond (docs/operations.md, "Replica
# acknowledgement"); this only bounds what a lagging or lost replica costs each
# request. The upper bound stays well below the Redis clients' socket timeouts
# (redis_client.connect: 2 s), or the WAIT would be cut off as a dead connection.
DEFAULT_REPLICA_ACK_TIMEOUT_MS = 200
MAX_REPLICA_ACK_TIMEOUT_MS = 1000


def min_redrive_after_seconds(visibility_timeout_seconds: int) -> int:
    """The broker brings back a crashed worker's message after the visibility
    timeout; a retry waits up to 0.4 of it and runs up to 0.5 of it
    (celeryconfig): only after all that may the journal assume it lost."""
    return int(visibility_timeout_seconds * (1 + 0.4 + 0.5)) + 1


class ConfigError(Exception):
    """The environment holds a value the service cannot run with.

    `problems`: one line per bad variable, each starting with its name (what
    `webhook-ingest check-config` prints one per line)."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


@dataclass(frozen=True)
class Settings:
    port: int
    bind_address: str
    redis_url: str
    broker_url: str
    tolerance_seconds: int
    trusted_proxy_count: int
    max_body_bytes: int
    rate_limit: str
    unverified_rate_limit: str
    admin_failure_limit: str
    admin_token: str | None
    webhook_base_url: str
    orphan_after_seconds: int
    orphan_poll_interval_seconds: int
    orphan_polls_per_minute: int
    orphan_not_found_grace_seconds: int
    orphan_give_up_seconds: int
    adoption_scan_budget: int
    consistency_check_interval_seconds: int
    consistency_check_sample: int
    consistency_check_window_seconds: int
    broker_visibility_timeout_seconds: int
    worker_metrics_port: int
    worker_metrics_address: str
    dedup_ttl_seconds: int
    unmatched_retry_seconds: int
    dead_letter_ttl_seconds: int
    dead_letter_max_per_provider: int
    dead_letter_max_bytes_per_provider: int
    raw_retention_seconds: int
    journal_redrive_after_seconds: int
    journal_redrive_interval_seconds: int
    journal_redrive_budget: int
    log_level: str
    log_format: str
    flower_basic_auth: str | None
    redis_min_replica_acks: int
    redis_replica_ack_timeout_ms: int

    @property
    def bind(self) -> str:
        """gunicorn's `bind`: host:port, an IPv6 address in brackets."""
        host = f"[{self.bind_address}]" if ":" in self.bind_address else self.bind_address
        return f"{host}:{self.port}"


def _redis_scheme(value: str) -> None:
    # unix:// is refused rather than half supported: redis-py reads it, but the same
    # URL is the default broker (kombu's Redis transport wants redis+socket://),
    # Flask-Limiter's storage (redis+unix://) and RedBeat's, and the one-script
    # hand-off compares servers by host and port.
    if value.startswith("unix:"):
        raise ValidationError(
            "unix sockets (unix://) are not supported: the broker, rate limits and beat "
            "reach Redis over TCP; use redis://host:port/db or rediss://"
        )
    if redis_sentinel.is_sentinel_url(value):
        _sentinel_url(value)
    elif not value.startswith(("redis://", "rediss://")):
        raise ValidationError(
            "must be a redis:// or rediss:// URL, or redis+sentinel://host:26379[,host:port...]"
            "/master-name[/db]"
        )


def _sentinel_url(value: str) -> None:
    try:
        redis_sentinel.parse(value)
    except ValueError as exc:
        raise ValidationError(f"Sentinel URL: {exc}") from None


def _broker_scheme(value: str) -> None:
    if redis_sentinel.is_sentinel_url(value):
        _sentinel_url(value)
    elif not re.match(r"^(redis|rediss|amqp|amqps|pyamqp)://", value):
        raise ValidationError("must be a redis://, redis+sentinel:// or amqp:// URL")


_http_url = validate.URL(schemes={"http", "https"}, require_tld=False)
_positive = validate.Range(min=1)


def _rate_limit(value: str) -> None:
    from limits import parse_many

    try:
        rates = parse_many(value)
    except ValueError:
        rates = []
    if len(rates) != 1:  # one window, counted in one key (handoff.claims)
        raise ValidationError("expected one rate such as 100/second or 1000 per minute")


def _strong_token(value: str) -> None:
    problem = weak_tokens.weakness(value)
    if problem:
        raise ValidationError(problem)


def _listen_address(value: str) -> None:
    """An address of this machine to listen on: an IP literal (0.0.0.0 or :: for
    every interface) or localhost. Names that resolve elsewhere are not guessed at."""
    if value == "localhost":
        return
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValidationError(
            "must be an IP address such as 127.0.0.1, 0.0.0.0 (every interface) or ::"
        ) from None


LOG_FORMATS = ("json", "text")


def _log_level(value: str) -> None:
    # As observability.json_logs applies it (upper-cased, to the root logger): a name
    # logging does not know made gunicorn die with `Unknown level` and no variable named.
    if not isinstance(logging.getLevelNamesMapping().get(value.upper()), int):
        raise ValidationError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")


def _log_format(value: str) -> None:
    # json_logs reads it stripped and lower-cased; anything else fell back to JSON silently.
    if value.strip().lower() not in LOG_FORMATS:
        raise ValidationError(f"must be one of {', '.join(LOG_FORMATS)}")


def _flower_basic_auth(value: str) -> None:
    # Flower compares `user:password` strings, one per comma-separated entry: an entry
    # without a colon (or an empty side) is a login nobody can ever use, and Flower
    # itself starts without a word.
    for entry in value.split(","):
        user, colon, password = entry.partition(":")
        if not (colon and user and password):
            raise ValidationError("expected user:password[,user2:password2]")


def _int(name: str, default: int, *validators: validate.Validator) -> fields.Integer:
    return fields.Integer(data_key=name, load_default=default, validate=list(validators) or None)


class SettingsSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    port = _int("PORT", 8000, validate.Range(1, 65535))
    # Every interface: a receiver is reached through a load balancer or proxy on
    # another host (or a container's published port), never over loopback. Set an
    # interface's address to keep it off other networks (`make run` uses 127.0.0.1).
    bind_address = fields.String(
        data_key="BIND_ADDRESS",
        load_default="0.0.0.0",  # noqa: S104 - see above
        validate=_listen_address,
    )
    redis_url = fields.String(
        data_key="REDIS_URL", load_default=DEFAULT_REDIS_URL, validate=_redis_scheme
    )
    broker_url = fields.String(
        data_key="CELERY_BROKER_URL", load_default=None, validate=_broker_scheme
    )
    tolerance_seconds = _int("WEBHOOK_TOLERANCE_SECONDS", DEFAULT_TOLERANCE_SECONDS, _positive)
    trusted_proxy_count = _int("TRUSTED_PROXY_COUNT", 0, validate.Range(0, 10))
    max_body_bytes = _int("MAX_BODY_BYTES", 1_048_576, _positive)
    # New verified deliveries per provider + client, counted in the hand-off's script.
    rate_limit = fields.String(
        data_key="RATE_LIMIT", load_default="100/second", validate=_rate_limit
    )
    # Requests that proved nothing (failed verification, unknown provider, ...) per
    # client, in each receiver process's memory: they cost no Redis and spend no
    # budget of the authentic deliveries (web.client_buckets).
    unverified_rate_limit = fields.String(
        data_key="UNVERIFIED_RATE_LIMIT", load_default="10/second", validate=_rate_limit
    )
    # Wrong or missing operator tokens per client, per process; over it 429 without
    # looking at the token, so guessing it is slowed, not only logged.
    admin_failure_limit = fields.String(
        data_key="ADMIN_FAILURE_LIMIT", load_default="10/minute", validate=_rate_limit
    )
    # Guards every operator endpoint: a sample copied from documentation or an
    # obviously patterned string is refused, not only a short one.
    admin_token = fields.String(data_key="ADMIN_TOKEN", load_default=None, validate=_strong_token)
    webhook_base_url = fields.String(
        data_key="WEBHOOK_BASE_URL", load_default=None, validate=_http_url
    )
    # With the defaults a job whose final webhook is lost is polled within
    # 180 + 30 + 29.5 s (stale, a tick, the spread of a full budget): under 5 minutes
    # with the provider's answer (README, "Orphan recovery").
    orphan_after_seconds = _int("ORPHAN_AFTER_SECONDS", DEFAULT_ORPHAN_AFTER_SECONDS, _positive)
    orphan_poll_interval_seconds = _int(
        "ORPHAN_POLL_INTERVAL_SECONDS", DEFAULT_ORPHAN_POLL_INTERVAL_SECONDS, _positive
    )
    # Per provider: a thousand orphans must not hammer one API.
    orphan_polls_per_minute = _int("ORPHAN_POLLS_PER_MINUTE", 120, _positive)
    # A provider may not know a job it just accepted; after this a 404 is final.
    orphan_not_found_grace_seconds = _int("ORPHAN_NOT_FOUND_GRACE_SECONDS", 600, validate.Range(0))
    # No job is polled forever: one whose polls have failed this long is failed.
    orphan_give_up_seconds = _int(
        "ORPHAN_GIVE_UP_SECONDS", DEFAULT_ORPHAN_GIVE_UP_SECONDS, _positive
    )
    # Keys of the keyspace examined per tick when adopting mappings other services wrote.
    adoption_scan_budget = _int("ADOPTION_SCAN_BUDGET", 50_000, validate.Range(min=100))
    consistency_check_interval_seconds = _int("CONSISTENCY_CHECK_INTERVAL_SECONDS", 300, _positive)
    # Finished jobs re-polled per run, across providers: each is one provider API call.
    consistency_check_sample = _int("CONSISTENCY_CHECK_SAMPLE", 10, validate.Range(1, 1000))
    # Only jobs that finished within this window are sampled; it must be longer than
    # the settle time, or nothing would ever be.
    consistency_check_window_seconds = _int(
        "CONSISTENCY_CHECK_WINDOW_SECONDS", 3600, validate.Range(min=CONSISTENCY_SETTLE_SECONDS + 1)
    )
    broker_visibility_timeout_seconds = _int(
        "BROKER_VISIBILITY_TIMEOUT_SECONDS", 90, validate.Range(10, MAX_VISIBILITY_TIMEOUT_SECONDS)
    )
    # The Celery worker's own Prometheus port (workers.metrics_server); 0 serves none.
    worker_metrics_port = _int("WORKER_METRICS_PORT", 0, validate.Range(0, 65535))
    # Loopback unless asked, like Flower: counts and job-free labels, but an open
    # port is the operator's decision (0.0.0.0 for a Prometheus on another machine).
    worker_metrics_address = fields.String(
        data_key="WORKER_METRICS_ADDRESS", load_default="127.0.0.1", validate=_listen_address
    )
    # At least twice the tolerance (checked below).
    dedup_ttl_seconds = _int("DELIVERY_DEDUP_TTL_SECONDS", DEFAULT_DEDUP_TTL_SECONDS, _positive)
    unmatched_retry_seconds = _int("UNMATCHED_RETRY_SECONDS", 300, _positive)
    dead_letter_ttl_seconds = _int("DEAD_LETTER_TTL_SECONDS", 14 * 24 * 3600, _positive)
    # Dead letters kept per provider at most, by count and by bytes (their stored
    # fields); parking past either drops that provider's oldest (issue 14,
    # finding 4: a flood of unmatched deliveries parked 13,824 letters, no cap).
    dead_letter_max_per_provider = _int("DEAD_LETTER_MAX_PER_PROVIDER", 10_000, _positive)
    dead_letter_max_bytes_per_provider = _int(
        "DEAD_LETTER_MAX_BYTES_PER_PROVIDER", 256 * 1024 * 1024, validate.Range(min=1024)
    )
    # A debug window of every verified delivery as received; 0 keeps none (the default).
    raw_retention_seconds = _int("RAW_RETENTION_SECONDS", 0, validate.Range(min=0))
    # An acknowledged delivery not finished this long after it was accepted (or
    # after its last scheduled retry) is published again by beat. Must outlast
    # everything the broker itself does to bring a message back (checked below).
    journal_redrive_after_seconds = _int("JOURNAL_REDRIVE_AFTER_SECONDS", 300, _positive)
    journal_redrive_interval_seconds = _int("JOURNAL_REDRIVE_INTERVAL_SECONDS", 30, _positive)
    # Records redriven per tick at most, so a long outage's backlog comes back in
    # steps instead of one burst.
    journal_redrive_budget = _int("JOURNAL_REDRIVE_BUDGET", 1000, validate.Range(1, 100_000))

    # Replicas that must confirm (Redis WAIT) the receiver's claim + journal record
    # before a 2xx, and a worker's applied state before it acknowledges the task
    # (webhook_ingest.state.replica_acks). 0: no WAIT at all, as before.
    redis_min_replica_acks = _int("REDIS_MIN_REPLICA_ACKS", 0, validate.Range(0, 16))
    redis_replica_ack_timeout_ms = _int(
        "REDIS_REPLICA_ACK_TIMEOUT_MS",
        DEFAULT_REPLICA_ACK_TIMEOUT_MS,
        validate.Range(1, MAX_REPLICA_ACK_TIMEOUT_MS),
    )

    # Read by observability.json_logs in every process; validated here so a bad value
    # stops the process (and check-config) naming the variable.
    log_level = fields.String(data_key="LOG_LEVEL", load_default="INFO", validate=_log_level)
    log_format = fields.String(data_key="LOG_FORMAT", load_default="json", validate=_log_format)
    # Read by Flower itself (workers.flower); a secret, never printed.
    flower_basic_auth = fields.String(
        data_key="FLOWER_BASIC_AUTH", load_default=None, validate=_flower_basic_auth
    )

    @validates_schema
    def _redrive_after_the_broker(self, data: dict, **_: object) -> None:
        visibility = data.get("broker_visibility_timeout_seconds", 90)
        floor = min_redrive_after_seconds(visibility)
        if data.get("journal_redrive_after_seconds", 300) < floor:
            raise ValidationError(
                f"must be at least {floor} with BROKER_VISIBILITY_TIMEOUT_SECONDS={visibility} "
                "(the visibility timeout, the longest retry countdown and the task time limit): "
                "a delivery the broker still holds would be redriven as a duplicate",
                field_name="JOURNAL_REDRIVE_AFTER_SECONDS",
            )

    @validates_schema
    def _give_up_after_a_retry(self, data: dict, **_: object) -> None:
        interval = data.get("orphan_poll_interval_seconds", DEFAULT_ORPHAN_POLL_INTERVAL_SECONDS)
        if data.get("orphan_give_up_seconds", DEFAULT_ORPHAN_GIVE_UP_SECONDS) < interval:
            raise ValidationError(
                f"must be at least ORPHAN_POLL_INTERVAL_SECONDS={interval}: a job would be "
                "failed on its first failed poll, without being asked again",
                field_name="ORPHAN_GIVE_UP_SECONDS",
            )

    @validates_schema
    def _ids_outlive_the_replay_window(self, data: dict, **_: object) -> None:
        """A signed timestamp passes for the tolerance on either side of now, so a
        delivery first received at the start of that window can be replayed for
        twice the tolerance; its id must be remembered at least that long, or a
        replay after the id is forgotten is accepted again."""
        tolerance = data.get("tolerance_seconds", DEFAULT_TOLERANCE_SECONDS)
        dedup_ttl = data.get("dedup_ttl_seconds", DEFAULT_DEDUP_TTL_SECONDS)
        if dedup_ttl < 2 * tolerance:
            raise ValidationError(
                f"must be at least {2 * tolerance} (twice WEBHOOK_TOLERANCE_SECONDS={tolerance}):"
                " a delivery id forgotten while its signed timestamp still passes lets a "
                "captured delivery be replayed",
                field_name="DELIVERY_DEDUP_TTL_SECONDS",
            )

    @post_load
    def _derive(self, data: dict, **_: object) -> Settings:
        data["broker_url"] = data["broker_url"] or data["redis_url"]
        data["log_level"] = data["log_level"].upper()
        data["log_format"] = data["log_format"].strip().lower()
        data["webhook_base_url"] = (
            data["webhook_base_url"] or f"http://localhost:{data['port']}"
        ).rstrip("/")
        return Settings(**data)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Validate the environment; raise ConfigError naming every bad variable."""
    env = os.environ if environ is None else environ
    if isinstance(env, MutableMapping):
        read_secret_files(env)
    # Empty strings mean "unset", as in most process managers' .env files.
    present = {key: value for key, value in env.items() if value != ""}
    try:
        return SettingsSchema().load(present)
    except ValidationError as exc:
        problems = [
            f"{name}: {' '.join(map(str, messages))}"
            for name, messages in sorted(exc.normalized_messages().items())
        ]
        raise ConfigError(f"invalid configuration: {'; '.join(problems)}", problems) from None


# Variables that hold a secret, which may instead be read from a file named by
# `<VAR>_FILE` (the container convention: Docker and Kubernetes secrets are files).
# The URLs are here for the passwords they may carry.
SECRET_VARIABLE = re.compile(
    r"(WEBHOOK_(SECRET|BEARER_TOKEN|BASIC_AUTH|URL_SECRET|URL_TOKEN)_[A-Z0-9_]+"
    r"|[A-Z][A-Z0-9_]*_API_(KEY|TOKEN)|FAL_KEY|ADMIN_TOKEN|FLOWER_BASIC_AUTH"
    r"|REDIS_URL|CELERY_BROKER_URL)"
)
FILE_SUFFIX = "_FILE"


def secret_file_variables(environ: Mapping[str, str]) -> dict[str, str]:
    """{secret variable: its `_FILE` variable} for every `<VAR>_FILE` set whose VAR
    is a secret variable (WEBHOOK_PROVIDERS_FILE, say, is a variable of its own)."""
    return {
        name.removesuffix(FILE_SUFFIX): name
        for name, value in environ.items()
        if name.endswith(FILE_SUFFIX)
        and value.strip()
        and SECRET_VARIABLE.fullmatch(name.removesuffix(FILE_SUFFIX))
    }


def read_secret_files(environ: MutableMapping[str, str]) -> None:
    """Set each secret variable given as `<VAR>_FILE` from its file, in `environ`
    itself (the process's environment at start), so every reader of VAR — the
    providers, Flower, Celery — sees the value. The file's trailing newline is not
    part of the secret. Both VAR and VAR_FILE set is refused (which one would win
    is a guess), unless VAR already holds the file's content: a process that read
    the files before (gunicorn's master, then its workers) reads them again."""
    problems = []
    for variable, file_variable in sorted(secret_file_variables(environ).items()):
        path = environ[file_variable].strip()
        try:
            with open(path, encoding="utf-8") as file:
                value = file.read().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or type(exc).__name__
            problems.append(f"{file_variable}: cannot read {path}: {why}")
            continue
        if not value.strip():
            problems.append(f"{file_variable}: {path} is empty")
        elif environ.get(variable, "") not in ("", value):
            problems.append(f"{file_variable}: {variable} is set too; set one of them")
        else:
            environ[variable] = value
    if problems:
        raise ConfigError(f"invalid configuration: {'; '.join(problems)}", problems)


# Query parameters that carry a credential (redis-py takes any connection keyword,
# `password` included, from the query string).
_SECRET_QUERY_NAME = re.compile(r"pass|secret|token|auth|key", re.I)


def redacted_url(url: str) -> str:
    """`url` with its password, and the value of any credential in its query, shown
    as `***`: what a command may print or a log line may carry."""
    parts = urlsplit(url)
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:***@{hostport}"
    query = "&".join(
        f"{name}=***" if value and _SECRET_QUERY_NAME.search(name) else pair
        for pair in parts.query.split("&")
        for name, _, value in [pair.partition("=")]
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))
