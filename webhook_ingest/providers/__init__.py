"""The provider registry: adding a provider is its module plus one line here."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from webhook_ingest.config import ConfigError, Settings
from webhook_ingest.providers.base import (
    BODY_LIMIT_PREFIX,
    DEDUP_WINDOW_PREFIX,
    JobRef,
    JobRequest,
    PayloadError,
    Provider,
    WebhookCapableConnector,
    WebhookConfig,
)
from webhook_ingest.providers.fal import FalProvider
from webhook_ingest.providers.openai import OpenAIProvider
from webhook_ingest.providers.replicate import ReplicateProvider
from webhook_ingest.providers.runpod import RunPodProvider
from webhook_ingest.providers.stability import StabilityProvider

if TYPE_CHECKING:
    from redis import Redis

PROVIDER_CLASSES: dict[str, type[Provider]] = {
    OpenAIProvider.name: OpenAIProvider,
    ReplicateProvider.name: ReplicateProvider,
    StabilityProvider.name: StabilityProvider,
    FalProvider.name: FalProvider,
    RunPodProvider.name: RunPodProvider,
}


def load_providers(
    settings: Settings, environ: Mapping[str, str] | None = None, redis: Redis | None = None
) -> dict[str, Provider]:
    """Every known provider, configured from the environment (ConfigError if invalid):
    the built-in classes, then those declared in WEBHOOK_PROVIDERS_FILE, if set.

    `redis`: the process's client, shared by every provider (see Provider.redis).
    """
    from webhook_ingest.providers.declarative import providers_from_environ

    providers = {
        name: cls(settings, environ, redis=redis) for name, cls in PROVIDER_CLASSES.items()
    }
    providers.update(
        providers_from_environ(settings, environ, reserved=PROVIDER_CLASSES, redis=redis)
    )
    environ = os.environ if environ is None else environ
    _refuse_unknown(BODY_LIMIT_PREFIX, environ, providers)
    _refuse_unknown(DEDUP_WINDOW_PREFIX, environ, providers)
    return providers


def configuration_warnings(providers: Mapping[str, Provider]) -> list[str]:
    """One line per thing that keeps a configured provider from doing all its work
    (Provider.configuration_warnings), for check-config and the start-up logs."""
    return [
        f"provider {name}: {warning}"
        for name, provider in sorted(providers.items())
        for warning in provider.configuration_warnings()
    ]


def _refuse_unknown(
    prefix: str, environ: Mapping[str, str], providers: dict[str, Provider]
) -> None:
    """A misspelt MAX_BODY_BYTES_<PROVIDER> would leave that provider's real deliveries
    at the default limit, refused with 413 while the operator thinks them allowed; a
    misspelt DELIVERY_DEDUP_TTL_SECONDS_<PROVIDER>, its ids remembered for a window
    the operator did not choose."""
    known = {f"{prefix}{name.upper()}" for name in providers}
    unknown = sorted(
        name
        for name, value in environ.items()
        if name.startswith(prefix) and value.strip() and name not in known
    )
    if unknown:
        raise ConfigError(
            f"{', '.join(unknown)}: no such provider; known: " + ", ".join(sorted(known))
        )


__all__ = [
    "configuration_warnings",
    "JobRef",
    "JobRequest",
    "PayloadError",
    "Provider",
    "WebhookCapableConnector",
    "WebhookConfig",
    "load_providers",
    "PROVIDER_CLASSES",
]
