"""What `webhook-ingest check-config` checks beyond the settings themselves: that
Redis and the broker answer, which variables look misspelt, and what each
provider can do with the configuration given.

Settings and providers are built by the code every process uses (config,
providers), so check-config and the processes cannot disagree on what is valid.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping

from webhook_ingest import redis_client, redis_sentinel
from webhook_ingest.config import (
    FILE_SUFFIX,
    SECRET_VARIABLE,
    Settings,
    SettingsSchema,
    redacted_url,
)
from webhook_ingest.providers import Provider
from webhook_ingest.providers.base import (
    BODY_LIMIT_PREFIX,
    DEDUP_WINDOW_PREFIX,
    URL_SECRET_PREFIX,
    URL_TOKEN_PREFIX,
)

# Seconds a connection check may take: a preflight answers quickly, whatever is down.
CONNECT_TIMEOUT_SECONDS = 2.0

# Variables each provider may have, by prefix or suffix of its upper-cased name.
_PER_PROVIDER_PREFIXES = (
    "WEBHOOK_SECRET_",
    "WEBHOOK_BEARER_TOKEN_",
    "WEBHOOK_BASIC_AUTH_",
    URL_TOKEN_PREFIX,
    URL_SECRET_PREFIX,
    "WEBHOOK_IP_ALLOWLIST_",
    BODY_LIMIT_PREFIX,
    DEDUP_WINDOW_PREFIX,
)
_PER_PROVIDER_SUFFIXES = ("_API_KEY", "_BASE_URL")
# Read by one provider or one verifier only (the provider modules).
_PROVIDER_SPECIFIC = (
    "REPLICATE_API_TOKEN",
    "FAL_KEY",
    "FAL_USER_ID",
    "RUNPOD_ENDPOINT_ID",
    "WEBHOOK_JWKS_URL_FAL",
    "WEBHOOK_JWKS_CACHE_SECONDS",
    "WEBHOOK_JWKS_REFETCH_SECONDS",
    "WEBHOOK_PROVIDERS_FILE",
)
_VARIABLE_NAME = re.compile(r"\b[A-Z][A-Z0-9_]{2,}\b")


def connection_problems(settings: Settings) -> list[tuple[str, str, str | None]]:
    """(what, redacted URL, problem or None) for the state Redis and the broker,
    each reached with the client the processes use and a short timeout."""
    results = []
    try:
        client = redis_client.connect(settings.redis_url, socket_timeout=CONNECT_TIMEOUT_SECONDS)
        try:
            client.ping()
        finally:
            client.close()
        results.append(("redis", redacted_url(settings.redis_url), None))
    except Exception as exc:
        results.append(("redis", redacted_url(settings.redis_url), _why(exc, settings.redis_url)))
    results.append(("broker", redacted_url(settings.broker_url), _broker_problem(settings)))
    return results


def sentinel_views(settings: Settings) -> list[tuple[str, str | None, bool]]:
    """For a redis+sentinel:// REDIS_URL (and broker, if another): (what the sentinels
    say, a problem or None, whether the problem is an error). Every sentinel is
    asked: one that does not answer is a warning (the others can still fail
    over), none answering an error (no process could find the master)."""
    urls = [settings.redis_url]
    if settings.broker_url != settings.redis_url:
        urls.append(settings.broker_url)
    views = []
    for url in filter(redis_sentinel.is_sentinel_url, urls):
        parsed = redis_sentinel.parse(url)
        client = redis_client.sentinels(parsed, socket_timeout=CONNECT_TIMEOUT_SECONDS)
        answers, silent = [], []
        for (host, port), sentinel in zip(parsed.sentinels, client.sentinels, strict=True):
            try:
                answers.append(sentinel.sentinel_master(parsed.master_name))
            except Exception as exc:  # noqa: BLE001 - reported, per sentinel
                silent.append(f"{host}:{port} ({_why(exc, url)})")
            finally:
                sentinel.close()
        name = parsed.master_name
        if not answers:
            shown = f"sentinels: none of {parsed.hosts_text()} knows {name!r}"
            views.append((shown, "; ".join(silent), True))
            continue
        state = answers[0]
        masters = {f"{a.get('ip')}:{a.get('port')}" for a in answers}
        shown = (
            f"sentinels: {len(answers)} of {len(parsed.sentinels)} answer for {name!r} "
            f"(quorum {state.get('quorum')}): master {', '.join(sorted(masters))}, "
            f"{state.get('num-slaves')} replicas, flags {state.get('flags')}"
        )
        problem = None
        if silent:
            problem = f"sentinels not answering: {'; '.join(silent)}"
        elif len(masters) > 1:
            problem = "the sentinels name different masters (a failover in progress?)"
        views.append((shown, problem, False))
    return views


def replica_acknowledgement(settings: Settings) -> tuple[str, str | None]:
    """(what REDIS_MIN_REPLICA_ACKS makes the processes do, a warning or None): a
    master with fewer replicas online than it asks for would have every delivery
    answered 503, and no task acknowledged."""
    wanted = settings.redis_min_replica_acks
    if not wanted:
        return "replica acknowledgement: off (REDIS_MIN_REPLICA_ACKS=0, no WAIT)", None
    shown = (
        f"replica acknowledgement: WAIT for {wanted} replica{'s' if wanted > 1 else ''}, "
        f"at most {settings.redis_replica_ack_timeout_ms} ms, before a 2xx or a task's ack"
    )
    try:
        client = redis_client.connect(settings.redis_url, socket_timeout=CONNECT_TIMEOUT_SECONDS)
        try:
            replication = client.info("replication")
        finally:
            client.close()
    except Exception:
        return shown, None  # unreachable: connection_problems says so already
    online = sum(
        1
        for name, value in replication.items()
        if name.startswith("slave") and isinstance(value, dict) and value.get("state") == "online"
    )
    if online >= wanted:
        return shown, None
    return shown, (
        f"REDIS_MIN_REPLICA_ACKS={wanted} but the state Redis has {online} replica"
        f"{'' if online == 1 else 's'} online: every delivery would be answered 503"
    )


def _broker_problem(settings: Settings) -> str | None:
    # The publishing app the receiver builds (handoff.broker), connected as /readyz does.
    from webhook_ingest.handoff import broker

    try:
        app = broker.celery_app(settings)
        with app.connection_for_write() as connection:
            connection.ensure_connection(
                max_retries=1, interval_start=0, timeout=CONNECT_TIMEOUT_SECONDS
            )
    except Exception as exc:
        return _why(exc, settings.broker_url)
    return None


def _why(exc: Exception, url: str) -> str:
    text = str(exc).strip() or type(exc).__name__
    # An error may quote what it was given: never the password.
    password = _password(url)
    if password:
        text = text.replace(password, "***")
    return f"{type(exc).__name__}: {text}"


def _password(url: str) -> str | None:
    from urllib.parse import urlsplit

    return urlsplit(url).password


def known_variables(providers: Mapping[str, Provider], environ: Mapping[str, str]) -> set[str]:
    """Every WEBHOOK_* and <PROVIDER>_* name the processes read."""
    known = {field.data_key for field in SettingsSchema().fields.values()}
    known.update(_PROVIDER_SPECIFIC)
    for name in providers:
        upper = name.upper()
        known.update(prefix + upper for prefix in _PER_PROVIDER_PREFIXES)
        known.update(upper + suffix for suffix in _PER_PROVIDER_SUFFIXES)
    # Declarative providers name their own variables in their file: every name there
    # counts as known (a variable the file names but nothing sets is the file's check).
    path = environ.get("WEBHOOK_PROVIDERS_FILE", "").strip()
    if path:
        try:
            with open(path, encoding="utf-8") as file:
                known.update(_VARIABLE_NAME.findall(file.read()))
        except OSError:
            pass  # load_providers has refused it already
    known.update({name + FILE_SUFFIX for name in known if SECRET_VARIABLE.fullmatch(name)})
    return known


def unknown_variable_warnings(
    providers: Mapping[str, Provider], environ: Mapping[str, str]
) -> list[str]:
    """A line for each set WEBHOOK_* or <PROVIDER>_* variable nothing reads, with the
    nearest name that is read: a misspelt secret leaves its provider accepting
    nothing while the operator believes it configured."""
    known = known_variables(providers, environ)
    prefixes = ("WEBHOOK_", *(f"{name.upper()}_" for name in providers))
    warnings = []
    for name in sorted(environ):
        if not name.startswith(prefixes) or name in known or not environ[name].strip():
            continue
        nearest = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
        hint = f"; did you mean {nearest[0]}?" if nearest else ""
        prefix = next((p for p in _PER_PROVIDER_PREFIXES if name.startswith(p)), None)
        if prefix and name[len(prefix) :].lower() not in providers:
            hint = f" (no provider {name[len(prefix) :].lower()}){hint}"
        warnings.append(f"{name} is not a variable webhook-ingest reads{hint}")
    return warnings


def capabilities(provider: Provider) -> str:
    """`receive yes (scheme); fetch ...; poll ...; submit ...`: what the configuration
    lets this provider do, and for each `no` what to set."""
    parts = [_receive(provider)]
    key = provider.api_key
    key_missing = f"no, set {provider.api_key_variable}"
    if hasattr(provider, "fetch_object"):  # its webhooks name an object read from its API
        parts.append(f"fetch {'yes' if key else key_missing}")
    if not provider.can_poll():
        parts.append("poll no (nothing to ask)")
    elif key or not provider.needs_api_key:
        parts.append("poll yes")
    else:
        parts.append(f"poll {key_missing}")
    if getattr(provider, "spec", None) is not None:  # declarative: register jobs instead
        parts.append("submit no (declarative: register jobs with POST /jobs)")
    else:
        parts.append(f"submit {'yes' if key else key_missing}")
    return "; ".join(parts)


def _receive(provider: Provider) -> str:
    if not provider.supports_webhooks():
        return "receive no (sends no webhooks)"
    if provider.enabled:
        return f"receive yes ({provider.verifier.scheme})"
    return f"receive no, set {provider.configuration_hint}"
