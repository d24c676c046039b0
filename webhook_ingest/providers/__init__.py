"""The provider registry: adding a provider is its module plus one line here."""

from __future__ import annotations

from collections.abc import Mapping

from webhook_ingest.config import Settings
from webhook_ingest.providers.base import JobRef, PayloadError, Provider
from webhook_ingest.providers.openai import OpenAIProvider
from webhook_ingest.providers.replicate import ReplicateProvider

PROVIDER_CLASSES: dict[str, type[Provider]] = {
    OpenAIProvider.name: OpenAIProvider,
    ReplicateProvider.name: ReplicateProvider,
}


def load_providers(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> dict[str, Provider]:
    """Every known provider, configured from the environment (ConfigError if invalid)."""
    return {name: cls(settings, environ) for name, cls in PROVIDER_CLASSES.items()}


__all__ = ["JobRef", "PayloadError", "Provider", "load_providers", "PROVIDER_CLASSES"]
