"""What a provider module provides. One provider = one module + one registry line.

A provider knows how its deliveries are verified, which of its ids a payload
names, how a payload becomes a `JobStateUpdate`, and (for the connectors and the
orphan poller) how to ask its API about a job.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from webhook_ingest.config import Settings
from webhook_ingest.job_update import JobStateUpdate
from webhook_ingest.verification import StandardWebhooksVerifier


class PayloadError(Exception):
    """A verified payload we cannot understand: retrying will not help."""


@dataclass(frozen=True)
class JobRef:
    job_id: str
    provider: str
    external_job_id: str | None


def env_name(provider: str, prefix: str = "", suffix: str = "") -> str:
    return f"{prefix}{provider.upper()}{suffix}"


class Provider(abc.ABC):
    name: ClassVar[str]

    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.environ = os.environ if environ is None else environ
        self.verifier = self._build_verifier()

    # -- receiving --------------------------------------------------------------

    def _build_verifier(self):
        """None when nothing is configured: the provider then accepts nothing."""
        variable = env_name(self.name, prefix="WEBHOOK_SECRET_")
        secrets = self.environ.get(variable, "").strip()
        if not secrets:
            return None
        return StandardWebhooksVerifier.from_secrets(
            secrets, variable, self.settings.tolerance_seconds
        )

    @property
    def enabled(self) -> bool:
        return self.verifier is not None

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

    def setting(self, suffix: str, default: str | None = None) -> str | None:
        value = self.environ.get(env_name(self.name, suffix=suffix), "").strip()
        return value or default


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
