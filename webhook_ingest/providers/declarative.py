"""Declarative providers: a provider added by configuration, without code.

Many providers differ only in how they sign, where their payload names the job
and its status, and which words they use for it. An operator describes such a
provider in the file named by `WEBHOOK_PROVIDERS_FILE` (`.json`, `.yaml` or
`.yml`); every process loads it at start, and anything unknown or invalid stops
the process with the field's path (`providers[0].status_map.done.value: ...`),
as a bad environment variable does. `examples/providers.yaml` documents the
format on a GitHub-style provider.

A declarative provider receives (verification, job lookup, status mapping) and
polls (the orphan poller's `poll_job_status`), but does not submit: its jobs are
started with the provider's own client and registered through `POST /jobs`,
`JobRegistry.register` or a plain HSET, like any other job.
"""

from __future__ import annotations

import math
import os
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import yaml
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from webhook_ingest import strict_json
from webhook_ingest.config import ConfigError, Settings
from webhook_ingest.providers import http
from webhook_ingest.providers.base import (
    URL_SECRET_PREFIX,
    URL_TOKEN_PREFIX,
    JobRef,
    JobRequest,
    PayloadError,
    Provider,
    WebhookConfig,
    env_name,
    job_update,
)
from webhook_ingest.state.job_update import (
    FAILED,
    SOURCE_ORPHAN_POLL,
    SOURCE_WEBHOOK,
    STATUSES,
    JobStateUpdate,
)
from webhook_ingest.verification import StandardWebhooksVerifier, Verifier
from webhook_ingest.verification.hmac_signature import (
    ALGORITHMS,
    ENCODINGS,
    HmacOptions,
    HmacVerifier,
)
from webhook_ingest.verification.tokens import (
    BasicAuthVerifier,
    BearerTokenVerifier,
    UrlTokenVerifier,
)

if TYPE_CHECKING:
    from redis import Redis

PROVIDERS_FILE_VARIABLE = "WEBHOOK_PROVIDERS_FILE"

# Patterns end in \Z: `$` also matches before a trailing newline.
# A URL segment and part of environment variable names (upper-cased).
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}\Z")
# Keys separated by dots; a numeric key also indexes a list (output.0.url).
_PATH = re.compile(r"^[^.]+(\.[^.]+)*$")
_ENV_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # an HTTP token (RFC 9110)
_POLL_PLACEHOLDERS = ("base_url", "external_job_id")

# The checks the base class also reads from WEBHOOK_<...>_<NAME>, by scheme.
_TOKEN_SCHEMES = {
    "bearer": (BearerTokenVerifier, "WEBHOOK_BEARER_TOKEN_"),
    "basic": (BasicAuthVerifier, "WEBHOOK_BASIC_AUTH_"),
    "url-token": (UrlTokenVerifier, "WEBHOOK_URL_TOKEN_"),
}


# -- reading values out of JSON documents ------------------------------------------


def resolve(document: Any, path: str) -> Any:
    """The value at a dotted path, or None when any step is missing."""
    value = document
    for part in path.split("."):
        if isinstance(value, Mapping):
            value = value.get(part)
        elif isinstance(value, list) and part.isascii() and part.isdigit():
            index = int(part)
            value = value[index] if index < len(value) else None
        else:
            return None
        if value is None:
            return None
    return value


def first(document: Any, paths: Iterable[str]) -> tuple[str | None, Any]:
    """The first path with a non-null value, and the value; (None, None) if none has one.

    Several paths let one field come from where the provider puts it at the
    time, e.g. GitHub's `conclusion`, which is null until the run completes.
    """
    for path in paths:
        value = resolve(document, path)
        if value is not None:
            return path, value
    return None, None


@dataclass(frozen=True)
class Fields:
    """Where a document (a delivery, or a poll answer) says how a job stands."""

    status: tuple[str, ...]
    status_map: Mapping[str, str]
    progress: tuple[str, ...] = ()
    progress_scale: int = 100
    result: tuple[str, ...] = ()
    error: tuple[str, ...] = ()

    def update(
        self, document: Any, job: JobRef, external_id: str, provider: str, source: str
    ) -> JobStateUpdate:
        raw_status = self._raw_status(document)
        status = self.status_map.get(raw_status)
        if status is None:
            # Parked, not guessed: the operator extends status_map and replays it.
            raise PayloadError(f"{provider} status {raw_status!r:.40} is not in status_map")
        return job_update(
            provider,
            job,
            status,
            source=source,
            provider_status=raw_status,
            external_job_id=external_id,
            progress=self._progress(document),
            result=first(document, self.result)[1],
            error_message=self._error(document, raw_status) if status == FAILED else None,
        )

    def _raw_status(self, document: Any) -> str:
        path, value = first(document, self.status)
        if path is None:
            raise PayloadError(f"payload has no {' or '.join(self.status)}")
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise PayloadError(f"payload field {path} is not a string")
        return str(value)

    def _progress(self, document: Any) -> int | None:
        path, value = first(document, self.progress)
        if path is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PayloadError(f"payload field {path} is not a number")
        if not 0 <= value <= self.progress_scale:
            raise PayloadError(f"payload field {path} is outside 0-{self.progress_scale}")
        # Rounded first so 0.29 × 100 is 29, not 28.999…; then down: never claim more.
        return math.floor(round(value * 100 / self.progress_scale, 6))

    def _error(self, document: Any, raw_status: str) -> str:
        _, value = first(document, self.error)
        if value is None or value == "":
            return raw_status  # e.g. "cancelled", "timed_out": still says why
        return value if isinstance(value, str) else strict_json.dumps(value)


# -- the configuration ---------------------------------------------------------------


@dataclass(frozen=True)
class VerificationSpec:
    scheme: str
    variable: str  # the environment variable holding the secret(s)
    hmac: HmacOptions | None = None


@dataclass(frozen=True)
class PollSpec:
    url: str  # template: {base_url}, {external_job_id}
    auth_env: str | None
    fields: Fields


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    where: str  # "providers[2]": how errors name it
    verification: VerificationSpec
    external_id: tuple[str, ...]
    fields: Fields
    ignore_unless_present: str | None = None
    base_url: str | None = None
    poll: PollSpec | None = None


class _Paths(fields.Field):
    """A dotted path, or a list of them: the first with a value wins."""

    def _deserialize(self, value, attr, data, **kwargs) -> tuple[str, ...]:
        paths = [value] if isinstance(value, str) else value
        if (
            not isinstance(paths, list)
            or not paths
            or not all(isinstance(path, str) and _PATH.match(path) for path in paths)
        ):
            raise ValidationError("expected a dotted path such as data.id, or a list of them")
        return tuple(paths)


def _env_variable(**kwargs) -> fields.String:
    return fields.String(
        validate=validate.Regexp(_ENV_VARIABLE, error="must be an environment variable name"),
        **kwargs,
    )


def _header_name(**kwargs) -> fields.String:
    return fields.String(
        validate=validate.Regexp(_HEADER_NAME, error="must be an HTTP header name"), **kwargs
    )


def _status_map(**kwargs) -> fields.Dict:
    # Keys are strings: quote values YAML would read as booleans or numbers (yes, on, 1).
    return fields.Dict(
        keys=fields.String(validate=validate.Length(min=1)),
        values=fields.String(validate=validate.OneOf(STATUSES)),
        validate=validate.Length(min=1),
        **kwargs,
    )


class _SchemeSchema(Schema):
    scheme = fields.String(required=True)


class _HmacSchema(_SchemeSchema):
    secret_env = _env_variable(required=True)
    signature_header = _header_name(required=True)
    algorithm = fields.String(load_default="sha256", validate=validate.OneOf(list(ALGORITHMS)))
    encoding = fields.String(load_default="hex", validate=validate.OneOf(ENCODINGS))
    prefix = fields.String(load_default="")
    timestamp_header = _header_name(load_default=None)
    signed_content = fields.String(load_default=None)
    delivery_id_header = _header_name(load_default=None)

    @validates_schema
    def _usable(self, data: dict, **_: object) -> None:
        problems = _hmac_options(data).problems()
        if problems:
            raise ValidationError({name: [text] for name, text in problems.items()})


class _SecretSchema(_SchemeSchema):
    secret_env = _env_variable(required=True)


class _TokenSchema(_SchemeSchema):
    token_env = _env_variable(required=True)


class _BasicSchema(_SchemeSchema):
    credentials_env = _env_variable(required=True)


_SCHEME_SCHEMAS: dict[str, tuple[type[Schema], str]] = {
    "hmac": (_HmacSchema, "secret_env"),
    "standard-webhooks": (_SecretSchema, "secret_env"),
    "bearer": (_TokenSchema, "token_env"),
    "url-token": (_TokenSchema, "token_env"),
    "basic": (_BasicSchema, "credentials_env"),
}


def _hmac_options(data: dict) -> HmacOptions:
    return HmacOptions(**{k: v for k, v in data.items() if k not in ("scheme", "secret_env")})


class _Verification(fields.Field):
    """One of the schemes, each with its own options."""

    def _deserialize(self, value, attr, data, **kwargs) -> VerificationSpec:
        if not isinstance(value, dict):
            raise ValidationError("expected a mapping with a scheme")
        scheme = value.get("scheme")
        if not isinstance(scheme, str) or scheme not in _SCHEME_SCHEMAS:
            raise ValidationError({"scheme": [f"must be one of: {', '.join(_SCHEME_SCHEMAS)}"]})
        schema, variable_field = _SCHEME_SCHEMAS[scheme]
        loaded = schema().load(value)
        options = _hmac_options(loaded) if scheme == "hmac" else None
        return VerificationSpec(scheme, loaded[variable_field], options)


def _placeholders(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def _poll_url(template: str) -> None:
    try:
        names = _placeholders(template)
    except ValueError as exc:
        raise ValidationError(f"not a template: {exc}") from None
    if any(name not in _POLL_PLACEHOLDERS for name in names):
        raise ValidationError("only {base_url} and {external_job_id} may be used")
    if "external_job_id" not in names:
        raise ValidationError("must contain {external_job_id}")


class _PollSchema(Schema):
    url = fields.String(required=True, validate=_poll_url)
    auth_env = _env_variable(load_default=None)
    status = _Paths(required=True)
    # By default the provider's: many APIs answer a poll in the words of their webhooks.
    status_map = _status_map(load_default=None)
    progress = _Paths(load_default=())
    progress_scale = fields.Integer(
        strict=True, load_default=None, validate=validate.OneOf([1, 100])
    )
    result = _Paths(load_default=())
    error = _Paths(load_default=())


class _ProviderSchema(Schema):
    name = fields.String(
        required=True,
        validate=validate.Regexp(
            _NAME, error="1-40 of a-z, 0-9, _ and -, starting with a letter or digit"
        ),
    )
    verification = _Verification(required=True)
    base_url = fields.String(
        load_default=None, validate=validate.URL(schemes={"http", "https"}, require_tld=False)
    )
    external_id = _Paths(required=True)
    ignore_unless_present = fields.String(
        load_default=None, validate=validate.Regexp(_PATH, error="expected a dotted path")
    )
    status = _Paths(required=True)
    status_map = _status_map(required=True)
    progress = _Paths(load_default=())
    progress_scale = fields.Integer(
        strict=True, load_default=100, validate=validate.OneOf([1, 100])
    )
    result = _Paths(load_default=())
    error = _Paths(load_default=())
    poll = fields.Nested(_PollSchema, load_default=None)


class _FileSchema(Schema):
    providers = fields.List(
        fields.Nested(_ProviderSchema), required=True, validate=validate.Length(min=1)
    )


def _spec(index: int, data: dict) -> ProviderSpec:
    provider_fields = Fields(
        status=data["status"],
        status_map=data["status_map"],
        progress=data["progress"],
        progress_scale=data["progress_scale"],
        result=data["result"],
        error=data["error"],
    )
    poll = data["poll"]
    return ProviderSpec(
        name=data["name"],
        where=f"providers[{index}]",
        verification=data["verification"],
        external_id=data["external_id"],
        fields=provider_fields,
        ignore_unless_present=data["ignore_unless_present"],
        base_url=data["base_url"],
        poll=None if poll is None else _poll_spec(poll, provider_fields),
    )


def _poll_spec(data: dict, defaults: Fields) -> PollSpec:
    return PollSpec(
        url=data["url"],
        auth_env=data["auth_env"],
        fields=Fields(
            status=data["status"],
            status_map=data["status_map"] or defaults.status_map,
            progress=data["progress"],
            progress_scale=data["progress_scale"] or defaults.progress_scale,
            result=data["result"],
            error=data["error"],
        ),
    )


def _messages(messages: Any, where: str = "") -> list[str]:
    """marshmallow's nested messages as `providers[0].status_map: ...` lines."""
    if isinstance(messages, dict):
        lines = []
        for key, value in messages.items():
            if isinstance(key, int) and not isinstance(key, bool):  # a list index
                child = f"{where}[{key}]"
            elif key == "_schema":
                child = where
            else:
                child = f"{where}.{key}" if where else str(key)
            lines.extend(_messages(value, child))
        return lines
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return [f"{where or 'file'}: {' '.join(messages)}"]
    if isinstance(messages, list):
        return [line for message in messages for line in _messages(message, where)]
    return [f"{where or 'file'}: {messages}"]


def parse_specs(document: Any, reserved: Iterable[str] = ()) -> list[ProviderSpec]:
    """Validated specs from a parsed file; ValueError naming every bad field."""
    if not isinstance(document, dict):
        raise ValueError("expected a mapping with a providers list")
    try:
        loaded = _FileSchema().load(document)
    except ValidationError as exc:
        raise ValueError("; ".join(_messages(exc.messages))) from None
    specs = [_spec(index, data) for index, data in enumerate(loaded["providers"])]
    problems = _name_problems(specs, set(reserved))
    if problems:
        raise ValueError("; ".join(problems))
    return specs


def _name_problems(specs: list[ProviderSpec], reserved: set[str]) -> list[str]:
    problems, seen = [], set()
    for spec in specs:
        if spec.name in reserved:
            problems.append(f"{spec.where}.name: {spec.name!r} is a built-in provider")
        elif spec.name in seen:
            problems.append(f"{spec.where}.name: {spec.name!r} is declared twice")
        seen.add(spec.name)
    return problems


# -- reading the file ---------------------------------------------------------------


class _StrictYamlLoader(yaml.SafeLoader):
    """SafeLoader (plain data, never Python objects) refusing duplicate keys, which
    PyYAML would otherwise resolve silently in favour of the last one."""


def _construct_mapping(loader: _StrictYamlLoader, node: yaml.MappingNode, deep: bool = False):
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *defaults` then overriding a key is what merges are for
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, str | int | float | bool):
            continue  # unhashable: construct_mapping reports it
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictYamlLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise ValueError(f"duplicate key {duplicates[0]!r}")
    return dict(pairs)


def read_document(path: str) -> Any:
    """The parsed file; ConfigError naming the variable for anything unreadable."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise ConfigError(f"{PROVIDERS_FILE_VARIABLE}: expected a .json, .yaml or .yml file")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError(f"{PROVIDERS_FILE_VARIABLE}: cannot read {path}: {reason}") from None
    try:
        if suffix == ".json":
            return strict_json.loads(text, object_pairs_hook=_json_object)
        return yaml.load(text, Loader=_StrictYamlLoader)  # noqa: S506 - a SafeLoader subclass
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{PROVIDERS_FILE_VARIABLE}: {path} does not parse: {exc}") from None


def providers_from_environ(
    settings: Settings,
    environ: Mapping[str, str] | None = None,
    reserved: Iterable[str] = (),
    redis: Redis | None = None,
) -> dict[str, DeclarativeProvider]:
    """The providers of the file in WEBHOOK_PROVIDERS_FILE ({} when unset).

    `reserved`: the built-in providers' names, which a declared one may not take;
    `redis`: the process's client, as the built-in providers get it.
    """
    env = os.environ if environ is None else environ
    path = env.get(PROVIDERS_FILE_VARIABLE, "").strip()
    if not path:
        return {}
    try:
        specs = parse_specs(read_document(path), reserved)
    except ValueError as exc:
        raise ConfigError(f"{PROVIDERS_FILE_VARIABLE} ({path}): {exc}") from None
    providers = {}
    for spec in specs:
        try:
            providers[spec.name] = DeclarativeProvider(spec, settings, environ, redis=redis)
        except ConfigError as exc:
            raise ConfigError(f"{PROVIDERS_FILE_VARIABLE} ({path}): {spec.where}: {exc}") from None
    return providers


# -- the provider ---------------------------------------------------------------------


class DeclarativeProvider(Provider):
    """A provider described by a `ProviderSpec`: receives and polls, never submits.

    `submit` raises NotImplementedError: declarative providers exist to receive a
    provider's webhooks; start its jobs with the provider's own client, then
    register them (`POST /jobs`, the job registry, or a plain HSET of
    `job_mapping:{job_id}`) so deliveries and the orphan poller find them.
    """

    default_base_url = ""
    # A poll names its token's variable (checked at start), or needs none.
    needs_api_key = False

    def __init__(
        self,
        spec: ProviderSpec,
        settings: Settings,
        environ: Mapping[str, str] | None = None,
        *,
        redis: Redis | None = None,
    ) -> None:
        # Before the base class builds the verifier from them.
        self.spec = spec
        self.name = spec.name
        self.default_base_url = spec.base_url or ""
        super().__init__(settings, environ, redis=redis)
        if spec.poll is not None:
            self._check_poll(spec.poll)

    # -- receiving --------------------------------------------------------------

    def signature_verifier(self) -> Verifier | None:
        """The configured scheme; its variable must be set (the file asks for it)."""
        spec = self.spec.verification
        if spec.scheme == "hmac":
            return HmacVerifier.from_env(
                spec.hmac, self.environ, spec.variable, self.settings.tolerance_seconds
            )
        if spec.scheme == "url-token" and self._per_job_url_tokens(spec):
            return None
        if spec.scheme in _TOKEN_SCHEMES and self._base_class_builds(spec):
            return None
        value = self.environ.get(spec.variable, "").strip()
        if not value:
            raise ConfigError(f"{spec.variable}: not set; verification.{spec.scheme} needs it")
        if spec.scheme == "standard-webhooks":
            return StandardWebhooksVerifier.from_secrets(
                value, spec.variable, self.settings.tolerance_seconds
            )
        return _TOKEN_SCHEMES[spec.scheme][0].from_env(value, spec.variable)

    @property
    def configuration_hint(self) -> str:
        return self.spec.verification.variable

    def _per_job_url_tokens(self, spec: VerificationSpec) -> bool:
        """Whether WEBHOOK_URL_SECRET_<NAME> is set: the base class then builds the one
        URL token check, from it and WEBHOOK_URL_TOKEN_<NAME> (the shared tokens,
        while migrating); token_env may then be unset, or must be that variable."""
        secret_variable = env_name(self.name, prefix=URL_SECRET_PREFIX)
        if not self.environ.get(secret_variable, "").strip():
            return False
        shared_variable = env_name(self.name, prefix=URL_TOKEN_PREFIX)
        if spec.variable != shared_variable and self.environ.get(spec.variable, "").strip():
            raise ConfigError(
                f"{secret_variable} is read with {shared_variable}, not {spec.variable}: "
                f"name {shared_variable} in token_env, or unset {spec.variable}"
            )
        return True

    def _base_class_builds(self, spec: VerificationSpec) -> bool:
        """Whether the base class's WEBHOOK_<SCHEME>_<NAME> check is also set: the
        same variable is built once, two different ones for one header are an error."""
        variable = env_name(self.name, prefix=_TOKEN_SCHEMES[spec.scheme][1])
        if not self.environ.get(variable, "").strip():
            return False
        if variable == spec.variable:
            return True
        raise ConfigError(f"{variable} and {spec.variable} both configure {spec.scheme}: set one")

    def external_id(self, payload: dict[str, Any]) -> str:
        path, value = first(payload, self.spec.external_id)
        if path is None:
            raise PayloadError(f"payload has no {' or '.join(self.spec.external_id)}")
        if isinstance(value, str) and value:
            return value
        # Numeric ids (GitHub's run ids) are registered as their decimal text.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        raise PayloadError(f"payload field {path} is not a non-empty string or an integer")

    def waits_for_mapping(self, payload: dict[str, Any]) -> bool:
        return self._describes_a_job(payload)

    def _describes_a_job(self, payload: dict[str, Any]) -> bool:
        """False for deliveries `ignore_unless_present` rules out (e.g. GitHub's ping)."""
        gate = self.spec.ignore_unless_present
        return gate is None or resolve(payload, gate) is not None

    def to_update(self, payload: dict[str, Any], job: JobRef) -> JobStateUpdate | None:
        if not self._describes_a_job(payload):
            return None
        return self.spec.fields.update(
            payload, job, self.external_id(payload), self.name, SOURCE_WEBHOOK
        )

    # -- connector --------------------------------------------------------------

    @property
    def api_key(self) -> str | None:
        poll = self.spec.poll
        if poll is not None and poll.auth_env:
            return self.environ.get(poll.auth_env, "").strip() or None
        return super().api_key

    def get_webhook_config(self, job_id: str) -> WebhookConfig:
        """With a URL token the URL carries it (the job's own with
        WEBHOOK_URL_SECRET_<NAME>): treat the result as a secret then."""
        path = [job_id]
        check = self.url_token_check()
        if check is not None:
            path.append(check.token_for(job_id))
        return WebhookConfig(
            url=self.webhook_url(*path), events=(), auth=self.spec.verification.scheme
        )

    def submit(self, job: JobRequest) -> str:
        raise NotImplementedError(
            f"{self.name} is a declarative provider: it receives webhooks and polls, but "
            "cannot submit. Start the job with the provider's own client and register it "
            "(POST /jobs with job_id, provider, external_job_id)."
        )

    def can_poll(self) -> bool:
        return self.spec.poll is not None

    def poll_job_status(self, job: JobRef) -> JobStateUpdate:
        poll = self.spec.poll
        if poll is None:
            raise http.ProviderError(
                f"{self.name} has no poll configured in {PROVIDERS_FILE_VARIABLE}: "
                "its jobs are recovered by webhook only"
            )
        external_id = job.external_job_id or ""
        _, answer = http.get_json(self.session, self._poll_url(poll, external_id))
        return poll.fields.update(answer, job, external_id, self.name, SOURCE_ORPHAN_POLL)

    def _poll_url(self, poll: PollSpec, external_id: str) -> str:
        # Quoted whole: an id must not add path segments (../) or a query to the URL.
        return poll.url.format(
            base_url=self.base_url, external_job_id=http.path_segment(external_id)
        )

    def _check_poll(self, poll: PollSpec) -> None:
        """At start, not at the first orphan: the URL must be complete, and https
        unless local, since the poll's bearer token travels with it."""
        if "base_url" in _placeholders(poll.url) and not self.base_url:
            variable = env_name(self.name, suffix="_BASE_URL")
            raise ConfigError(f"poll.url uses {{base_url}}: set base_url or {variable}")
        parts = urlsplit(self._poll_url(poll, "x"))
        local = parts.hostname in ("localhost", "127.0.0.1", "::1")
        if not parts.hostname or not (
            parts.scheme == "https" or (parts.scheme == "http" and local)
        ):
            raise ConfigError("poll.url: expected an https:// URL (http only to localhost)")
        if poll.auth_env and not self.environ.get(poll.auth_env, "").strip():
            raise ConfigError(
                f"{poll.auth_env}: not set; poll.auth_env names it for the poll token"
            )
