"""The provider registry: adding a provider is its module plus one line here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from webhook_ingest.config import Settings
from webhook_ingest.providers.base import (
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
    return providers


def configuration_warnings(providers: Mapping[str, Provider]) -> list[str]:
    """One line per thing that keeps a configured provider from doing all its work
    (Provider.configuration_warnings), for check-config and the start-up logs."""
    return [
        f"provider {name}: {warning}"
        for name, provider in sorted(providers.items())
        for warning in provider.configuration_warnings()
    ]


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
