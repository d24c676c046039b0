"""Properties of everything that handles untrusted input (issue 4), with hypothesis.

- Every verifier, given any body bytes, any header dict and any URL token, returns a
  `Verified` or raises `VerificationError` — never anything else, which the receiver
  would turn into a 500 — and a delivery id it returns is one the receiver can use.
- Every normalizer, given any JSON-like value, returns a `JobStateUpdate` (or None)
  that the state store's schema accepts, or raises `PayloadError` — never a
  KeyError / TypeError / AttributeError / ValueError.

The strategies are biased towards inputs that pass part of the checks (correctly
signed headers with one field changed, payloads with the right keys and odd values),
because uniformly random input stops at the first check. No Redis or network: the
providers are built on an unreachable Redis URL, so any accidental I/O would fail.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, hmac_data

from webhook_ingest.config import load_settings
from webhook_ingest.ingest import parse_payload
from webhook_ingest.providers import JobRef, PayloadError, http
from webhook_ingest.providers.declarative import DeclarativeProvider, parse_specs, read_document
from webhook_ingest.providers.fal import FalProvider
from webhook_ingest.providers.openai import OpenAIProvider, update_from_response
from webhook_ingest.providers.openai_objects import EVENT_STATUS, FAMILIES, family_of_event
from webhook_ingest.providers.replicate import ReplicateProvider, update_from_prediction
from webhook_ingest.providers.runpod import RunPodProvider, update_from_status
from webhook_ingest.state.job_update import JobStateUpdate, validated
from webhook_ingest.verification import (
    AllOf,
    Ed25519JwksVerifier,
    HmacOptions,
    HmacVerifier,
    JwksCache,
    StandardWebhooksVerifier,
    VerificationError,
    Verified,
)
from webhook_ingest.verification.base import MAX_DELIVERY_ID_LENGTH
from webhook_ingest.verification.tokens import (
    BasicAuthVerifier,
    BearerTokenVerifier,
    UrlTokenVerifier,
)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = 1_750_000_000
TOLERANCE = 300

# -- verifiers, configured as from the environment -----------------------------------------

SW_SECRET = "whsec_" + base64.b64encode(b"fuzz-secret-0123456789abcdef").decode()
SW_OLD_SECRET = "whsec_" + base64.b64encode(b"older-secret-0123456789abcde").decode()
BEARER = "bearer-token-0123456789"
BEARER_OLD = "bearer-token-old-9876543210"
BASIC = "hooks:pass-word-0123456789"
URL_TOKEN = "ut-Zr5kQ9wLx2MvB7pN3cYh"
BASIC_HEADER = "Basic " + base64.b64encode(BASIC.encode()).decode()
FAL_KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"fuzz-fal-key").digest())
HMAC_SECRET = "hmac-secret-0123456789"
HMAC_OLD_SECRET = "hmac-secret-old-9876543210"
# The generic HMAC scheme as three providers use it (and as declarative providers configure it)
HMAC_VARIANTS = {
    "github": HmacOptions(
        signature_header="X-Hub-Signature-256",
        prefix="sha256=",
        delivery_id_header="X-GitHub-Delivery",
    ),
    "slack": HmacOptions(
        signature_header="X-Slack-Signature",
        prefix="v0=",
        timestamp_header="X-Slack-Request-Timestamp",
        signed_content="v0:{timestamp}:{body}",
    ),
    "sha512-base64-signed-id": HmacOptions(
        signature_header="X-Acme-Signature",
        algorithm="sha512",
        encoding="base64",
        timestamp_header="X-Acme-Timestamp",
        delivery_id_header="X-Acme-Delivery",
        signed_content="{delivery_id}.{timestamp}.{body}",
    ),
}
FAL_HEADERS = (
    "X-Fal-Webhook-Request-Id",
    "X-Fal-Webhook-User-Id",
    "X-Fal-Webhook-Timestamp",
    "X-Fal-Webhook-Signature",
)


class _StaticJwks(requests.adapters.BaseAdapter):
    """Serves one JWKS document for any URL: a key server with no network."""

    def __init__(self, document: dict) -> None:
        super().__init__()
        self.text = json.dumps(document).encode()

    def send(self, request, **kwargs):
        response = requests.Response()
        response.status_code = 200
        response.raw = io.BytesIO(self.text)
        response.url = request.url
        response.request = request
        return response

    def close(self) -> None:
        pass


def _jwks_cache() -> JwksCache:
    raw = FAL_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    session = requests.Session()
    session.mount("https://", _StaticJwks({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x}]}))
    return JwksCache("https://keys.example.com/jwks.json", None, "fal", session=session)


def _verifiers() -> dict[str, object]:
    sw = StandardWebhooksVerifier.from_secrets(
        f"{SW_SECRET} {SW_OLD_SECRET}", "WEBHOOK_SECRET_X", TOLERANCE
    )
    bearer = BearerTokenVerifier.from_env(f"{BEARER} {BEARER_OLD}", "WEBHOOK_BEARER_TOKEN_X")
    basic = BasicAuthVerifier.from_env(BASIC, "WEBHOOK_BASIC_AUTH_X")
    url_token = UrlTokenVerifier.from_env(URL_TOKEN, "WEBHOOK_URL_TOKEN_X")
    ed25519 = Ed25519JwksVerifier(_jwks_cache(), TOLERANCE)
    hmacs = {
        f"hmac-{name}": HmacVerifier.from_env(
            options, {"HMAC_SECRET": f"{HMAC_SECRET} {HMAC_OLD_SECRET}"}, "HMAC_SECRET", TOLERANCE
        )
        for name, options in HMAC_VARIANTS.items()
    }
    return {
        **hmacs,
        "all-of(hmac-github+url-token)": AllOf([hmacs["hmac-github"], url_token]),
        "standard-webhooks": sw,
        "bearer": bearer,
        "basic": basic,
        "url-token": url_token,
        "ed25519-jwks": ed25519,
        "all-of(standard-webhooks+bearer)": AllOf([sw, bearer]),
        "all-of(url-token+standard-webhooks)": AllOf([url_token, sw]),
        "all-of(basic+ed25519-jwks)": AllOf([basic, ed25519]),
    }


VERIFIERS = _verifiers()

# -- what a request may carry ------------------------------------------------------------------

# Header text as a WSGI server hands it over: any character but no surrogates
# (werkzeug decodes header bytes as latin-1 and path segments as UTF-8 with replacement).
server_text = st.text(max_size=60)
# Everything a Python str can hold, lone surrogates included.
any_text = st.text(st.characters(exclude_categories=()), max_size=60)

HEADER_NAMES = (
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "Authorization",
    *FAL_HEADERS,
    *sorted(
        {
            name
            for o in HMAC_VARIANTS.values()
            for name in (o.signature_header, o.timestamp_header, o.delivery_id_header)
            if name
        }
    ),
)


def sw_headers(body: bytes, msg_id: str, ts: str, secret: str = SW_SECRET) -> dict[str, str]:
    """Standard Webhooks headers made with the `standardwebhooks` package's HMAC."""
    digest = hmac_data(
        Webhook(secret)._whsecret, msg_id.encode() + b"." + ts.encode() + b"." + body
    )
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": ts,
        "webhook-signature": f"v1,{base64.b64encode(digest).decode()}",
    }


def fal_headers(body: bytes, request_id: str, user_id: str, ts: str) -> dict[str, str]:
    message = "\n".join((request_id, user_id, ts, hashlib.sha256(body).hexdigest()))
    return dict(
        zip(
            FAL_HEADERS,
            (request_id, user_id, ts, FAL_KEY.sign(message.encode()).hex()),
            strict=True,
        )
    )


def hmac_headers(options: HmacOptions, body: bytes, delivery_id: str, ts: str, secret: str):
    """Headers as a provider signing with `options` sends them (Python's hmac, by the docs)."""
    content = (
        options.template.replace("{delivery_id}", delivery_id)
        .replace("{timestamp}", ts)
        .encode()
        .replace(b"{body}", body)
    )
    algorithm = hashlib.sha512 if options.algorithm == "sha512" else hashlib.sha256
    digest = hmac.new(secret.encode(), content, algorithm).digest()
    encoded = digest.hex() if options.encoding == "hex" else base64.b64encode(digest).decode()
    headers = {options.signature_header: options.prefix + encoded}
    if options.timestamp_header:
        headers[options.timestamp_header] = ts
    if options.delivery_id_header:
        headers[options.delivery_id_header] = delivery_id
    return headers


def header_values(text: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Text, plus values shaped like the real ones so the parsers get past their first check."""
    return st.one_of(
        text,
        st.builds(lambda t: f"Bearer {t}", text),
        st.builds(lambda t: f"Basic {t}", text),
        st.builds(lambda b: "Basic " + base64.b64encode(b).decode(), st.binary(max_size=40)),
        st.builds(lambda t: f"v1,{t}", text),
        st.builds(lambda b: "v1," + base64.b64encode(b).decode(), st.binary(max_size=40)),
        st.integers(min_value=-(10**15), max_value=10**15).map(str),
        st.binary(min_size=64, max_size=64).map(bytes.hex),
        st.sampled_from(
            [
                "",
                " ",
                f"Bearer {BEARER}",
                f"bearer  {BEARER_OLD} ",
                "Basic " + base64.b64encode(BASIC.encode()).decode(),
                str(NOW),
                "NaN",
                "1e9",
                "١٧٥٠٠٠٠٠٠٠",
            ]
        ),
    )


@st.composite
def requests_(draw, text: st.SearchStrategy[str]):
    """(body, headers, url_token, now): sometimes authentic, then perhaps altered."""
    body = draw(
        st.one_of(
            st.binary(max_size=300),
            st.recursive(
                st.none() | st.integers() | text, lambda c: st.lists(c, max_size=3), max_leaves=5
            ).map(lambda v: json.dumps(v).encode()),
        )
    )
    now = NOW + draw(st.integers(min_value=-2 * TOLERANCE, max_value=2 * TOLERANCE))
    headers: dict[str, str] = {}
    ts = str(NOW)
    if draw(st.booleans()):
        msg_id = draw(st.one_of(st.just("msg_1"), text))
        secret = draw(st.sampled_from([SW_SECRET, SW_OLD_SECRET]))
        try:
            headers.update(sw_headers(body, msg_id, ts, secret))
        except UnicodeEncodeError:  # the package cannot sign a surrogate id either
            headers["webhook-id"] = msg_id
    if draw(st.booleans()):
        request_id = draw(st.one_of(st.just("req-1"), text))
        user_id = draw(st.one_of(st.just("user-1"), text))
        try:
            headers.update(fal_headers(body, request_id, user_id, ts))
        except UnicodeEncodeError:
            headers[FAL_HEADERS[0]] = request_id
    if draw(st.booleans()):
        options = draw(st.sampled_from(list(HMAC_VARIANTS.values())))
        delivery_id = draw(st.one_of(st.just("delivery-1"), text))
        secret = draw(st.sampled_from([HMAC_SECRET, HMAC_OLD_SECRET]))
        try:
            headers.update(hmac_headers(options, body, delivery_id, ts, secret))
        except UnicodeEncodeError:
            headers[options.delivery_id_header or "X-Acme-Delivery"] = delivery_id
    if draw(st.booleans()):
        genuine = st.sampled_from([f"Bearer {BEARER}", f"Bearer {BEARER_OLD}", BASIC_HEADER])
        headers["Authorization"] = draw(st.one_of(genuine, header_values(text)))
    # then change, add or blank any header, known names or not
    headers.update(
        draw(
            st.dictionaries(
                st.one_of(st.sampled_from(HEADER_NAMES), text), header_values(text), max_size=4
            )
        )
    )
    url_token = draw(st.one_of(st.none(), st.just(URL_TOKEN), text))
    return body, headers, url_token, now


def check_verifier(verifier, body, headers, url_token, now) -> None:
    try:
        proof = verifier.verify(body, headers, url_token=url_token, now=now)
    except VerificationError as exc:
        assert isinstance(exc.reason, str) and exc.reason
        return
    assert isinstance(proof, Verified)
    if proof.delivery_id is not None:  # becomes part of a Redis key
        assert isinstance(proof.delivery_id, str)
        assert 0 < len(proof.delivery_id) <= MAX_DELIVERY_ID_LENGTH
        assert proof.delivery_id.isprintable()
        proof.delivery_id.encode("utf-8")
    if proof.timestamp is not None:
        assert abs(proof.timestamp - now) <= TOLERANCE


@pytest.mark.parametrize("name", VERIFIERS)
@FUZZ
@given(request=requests_(server_text))
def test_a_verifier_returns_verified_or_raises_verification_error(name, request):
    check_verifier(VERIFIERS[name], *request)


# the verifiers that meet a surrogate token before any other check rejects the request
SURROGATE_CRASHES = (
    "bearer",
    "url-token",
    "all-of(standard-webhooks+bearer)",
    "all-of(url-token+standard-webhooks)",
    "all-of(hmac-github+url-token)",
)
SURROGATE_CASES = [pytest.param(name) for name in VERIFIERS]
_SIGNED = {
    **sw_headers(b"{}", "msg_1", str(NOW)),
    **hmac_headers(HMAC_VARIANTS["github"], b"{}", "delivery-1", str(NOW), HMAC_SECRET),
}


@pytest.mark.parametrize("name", SURROGATE_CASES)
@FUZZ
@given(request=requests_(any_text))
@example(request=(b"{}", {**_SIGNED, "Authorization": "Bearer \ud800"}, "\ud800", NOW))
def test_a_verifier_given_lone_surrogates_raises_only_verification_error(name, request):
    check_verifier(VERIFIERS[name], *request)


def test_the_verifiers_accept_what_the_providers_send():
    """The fuzz strategies are not vacuous: authentic requests pass every verifier."""
    body = b'{"id": "x"}'
    headers = {
        **sw_headers(body, "msg_1", str(NOW)),
        **fal_headers(body, "req-1", "user-1", str(NOW)),
        "Authorization": f"Bearer {BEARER}",
    }
    for options in HMAC_VARIANTS.values():
        headers.update(hmac_headers(options, body, "delivery-1", str(NOW), HMAC_SECRET))
    basic = {**headers, "Authorization": "Basic " + base64.b64encode(BASIC.encode()).decode()}
    for name, verifier in VERIFIERS.items():
        sent = basic if "basic" in name else headers
        proof = verifier.verify(body, sent, url_token=URL_TOKEN, now=NOW + 10)
        assert isinstance(proof, Verified), name


# -- normalizers -------------------------------------------------------------------------------

SETTINGS = load_settings({"REDIS_URL": "redis://127.0.0.1:1/0"})  # unreachable: no I/O
JOB = JobRef(job_id="job-fuzz", provider="x", external_job_id="ext-1")

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def shaped(**fields: st.SearchStrategy) -> st.SearchStrategy:
    """Any JSON value; or a dict with some of the given keys, each real-looking or any
    value; or one with all of them real-looking — plus noise keys."""
    some = st.fixed_dictionaries(
        {}, optional={key: st.one_of(strategy, json_values) for key, strategy in fields.items()}
    )
    every = st.fixed_dictionaries(fields)
    noise = st.dictionaries(st.text(max_size=8), json_values, max_size=3)
    return st.one_of(
        json_values,
        st.builds(lambda known, extra: {**extra, **known}, some, noise),
        st.builds(lambda known, extra: {**extra, **known}, every, noise),
    )


tqdm_logs = st.builds(
    lambda before, percent, done, total: f"{before}\n{percent}%|###   | {done}/{total} [00:01]\n",
    st.text(max_size=20),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.integers(min_value=0, max_value=10**12),
    st.integers(min_value=0, max_value=10**12),
)
ids = st.one_of(st.text(max_size=30), st.just("ext-1"))

replicate_predictions = shaped(
    id=ids,
    status=st.sampled_from(
        ["starting", "processing", "succeeded", "failed", "canceled", "aborted", "queued"]
    ),
    logs=st.one_of(tqdm_logs, st.text(max_size=50)),
    output=json_values,
    error=json_values,
)
openai_responses = shaped(
    id=ids,
    status=st.sampled_from(
        ["queued", "in_progress", "completed", "failed", "cancelled", "incomplete", "x"]
    ),
    output=json_values,
    error=st.one_of(json_values, st.dictionaries(st.just("message"), json_values)),
    incomplete_details=st.one_of(json_values, st.dictionaries(st.just("reason"), json_values)),
)


def _fetched_for(event_type: str) -> bool:
    """Whether the event's object is fetched (its family has an endpoint)."""
    family = family_of_event(event_type)
    return family is not None and family.collection is not None


NO_FETCH_TYPES = sorted(t for t in EVENT_STATUS if not _fetched_for(t))  # eval runs
openai_events_without_fetch = shaped(
    type=st.one_of(
        st.sampled_from([*NO_FETCH_TYPES, "eval.run.created", "realtime.call.incoming"]),
        st.text(max_size=20).filter(lambda t: not _fetched_for(t)),
    ),
    data=st.one_of(shaped(id=ids), json_values),
)
openai_fetching_events = shaped(
    type=st.sampled_from(
        [
            *sorted(t for t in EVENT_STATUS if _fetched_for(t)),
            "response.created",
            "response.output_text.delta",
            "batch.created",
        ]
    ),
    data=st.one_of(shaped(id=ids), json_values),
)
# Any family's object: every status of every family, and their outcome fields.
openai_objects = shaped(
    id=ids,
    status=st.sampled_from(
        [
            *("queued", "in_progress", "completed", "failed", "cancelled", "incomplete"),
            *("validating", "finalizing", "expired", "cancelling"),
            *("validating_files", "running", "succeeded", "x"),
        ]
    ),
    output=json_values,
    error=st.one_of(
        json_values, st.dictionaries(st.sampled_from(["message", "code"]), json_values)
    ),
    errors=st.one_of(
        json_values,
        shaped(
            data=st.one_of(
                json_values,
                st.lists(
                    st.one_of(json_values, shaped(message=json_values, line=json_values)),
                    max_size=5,
                ),
            )
        ),
    ),
    incomplete_details=st.one_of(json_values, st.dictionaries(st.just("reason"), json_values)),
    request_counts=st.one_of(
        json_values,
        shaped(total=json_values, completed=json_values, failed=json_values),
    ),
    progress=json_values,
    fine_tuned_model=json_values,
    output_file_id=json_values,
)
fal_completions = shaped(
    request_id=ids,
    gateway_request_id=ids,
    status=st.sampled_from(["OK", "ERROR", "IN_PROGRESS"]),
    payload=json_values,
    payload_error=json_values,
    error=json_values,
)
runpod_statuses = shaped(
    id=ids,
    status=st.sampled_from(
        ["IN_QUEUE", "IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT", "x"]
    ),
    output=json_values,
    error=json_values,
)


def check_update(update) -> None:
    """A normalizer's answer: None, or an update the state store's schema accepts."""
    if update is None:
        return
    assert isinstance(update, JobStateUpdate)
    checked = validated(update)  # what StateStore.apply does first
    assert checked.status == update.status


def normalize(function, payload) -> None:
    try:
        update = function(payload)
    except PayloadError:
        return
    check_update(update)


def _offline_openai(fetched) -> OpenAIProvider:
    provider = OpenAIProvider(SETTINGS, {})

    def fetch(family, object_id):
        assert family in FAMILIES and family.collection is not None
        assert isinstance(object_id, str) and object_id
        if isinstance(fetched, Exception):
            raise fetched
        return fetched

    provider.fetch_object = fetch
    return provider


def _never_fetch(family, object_id):
    raise AssertionError(f"fetched {family.name} {object_id!r} for an event that needs no fetch")


REPLICATE = ReplicateProvider(SETTINGS, {})
OPENAI = OpenAIProvider(SETTINGS, {})
OPENAI.fetch_object = _never_fetch
FAL = FalProvider(SETTINGS, {})
FAL._result_or_none = lambda request_id: {"fetched": request_id}  # the queue, offline
RUNPOD = RunPodProvider(SETTINGS, {})


@FUZZ
@given(payload=replicate_predictions)
def test_replicate_predictions_normalize_or_raise_payload_error(payload):
    normalize(lambda p: update_from_prediction(p, JOB, "webhook"), payload)
    normalize(lambda p: REPLICATE.to_update(p, JOB), payload)


def test_a_replicate_log_line_with_a_huge_percentage_does_not_crash_the_normalizer():
    logs = "1" * 4301 + "%|##########| 1/1 [00:01<00:00]\n"
    prediction = {"id": "pred-1", "status": "processing", "logs": logs}

    normalize(lambda p: update_from_prediction(p, JOB, "webhook"), prediction)


@FUZZ
@given(response=openai_responses)
def test_openai_responses_normalize_or_raise_payload_error(response):
    normalize(lambda r: update_from_response(r, JOB, "webhook"), response)


@FUZZ
@given(event=openai_events_without_fetch)
def test_openai_events_that_need_no_fetch_normalize_or_raise_payload_error(event):
    normalize(lambda e: OPENAI.to_update(e, JOB), event)


@FUZZ
@given(
    event=openai_fetching_events,
    fetched=st.one_of(
        openai_responses,
        openai_objects,
        st.just(http.ProviderNotFound("gone")),
    ),
)
def test_openai_events_normalize_whatever_the_fetch_returns(event, fetched):
    normalize(lambda e: _offline_openai(fetched).to_update(e, JOB), event)


@FUZZ
@given(payload=fal_completions)
def test_fal_completions_normalize_or_raise_payload_error(payload):
    normalize(lambda p: FAL.to_update(p, JOB), payload)


@FUZZ
@given(payload=runpod_statuses)
def test_runpod_statuses_normalize_or_raise_payload_error(payload):
    normalize(lambda p: update_from_status(p, JOB, "webhook"), payload)
    normalize(lambda p: RUNPOD.to_update(p, JOB), payload)


# -- declarative providers -------------------------------------------------------------------

EXAMPLE_FILE = Path(__file__).resolve().parents[2] / "examples" / "providers.yaml"
GITHUB = DeclarativeProvider(
    parse_specs(read_document(str(EXAMPLE_FILE)))[0],
    SETTINGS,
    {"WEBHOOK_SECRET_GITHUB": HMAC_SECRET, "GITHUB_TOKEN": "ghp_fuzz"},
)
# every optional field, lists of paths, list indexes, a 0-1 progress scale, a gate
ACME = DeclarativeProvider(
    parse_specs(
        {
            "providers": [
                {
                    "name": "acme",
                    "verification": {"scheme": "bearer", "token_env": "ACME_TOKEN"},
                    "external_id": ["job.id", "id"],
                    "ignore_unless_present": "job",
                    "status": ["job.state", "states.0"],
                    "status_map": {
                        "queued": "processing",
                        "running": "processing",
                        "done": "completed",
                        "1": "completed",
                        "error": "failed",
                    },
                    "progress": ["job.progress", "progress"],
                    "progress_scale": 1,
                    "result": ["job.output.0", "output"],
                    "error": ["job.error.message", "error"],
                }
            ]
        }
    )[0],
    SETTINGS,
    {"ACME_TOKEN": BEARER},
)
DECLARATIVE = {"github": GITHUB, "acme": ACME}

workflow_runs = shaped(
    action=st.sampled_from(["requested", "in_progress", "completed"]),
    workflow_run=shaped(
        id=st.one_of(ids, st.integers()),
        status=st.sampled_from(["queued", "in_progress", "completed", "weird"]),
        conclusion=st.sampled_from(["success", "failure", "cancelled", "neutral", "odd"]),
        html_url=st.text(max_size=30),
    ),
)
numbers = st.one_of(
    st.integers(min_value=-5, max_value=200),
    st.floats(min_value=-1, max_value=2, allow_nan=False),
    st.floats(allow_nan=False, allow_infinity=False),
)
acme_jobs = shaped(
    id=st.one_of(ids, st.integers()),
    states=st.lists(st.sampled_from(["queued", "done", "error", "1", "x"]), max_size=2),
    progress=numbers,
    output=json_values,
    error=json_values,
    job=shaped(
        id=st.one_of(ids, st.integers()),
        state=st.one_of(
            st.sampled_from(["queued", "running", "done", "error", "?"]), st.integers()
        ),
        progress=numbers,
        output=st.lists(json_values, max_size=2),
        error=shaped(message=json_values),
    ),
)


@pytest.mark.parametrize("name", DECLARATIVE)
@FUZZ
@given(payload=st.one_of(workflow_runs, acme_jobs))
def test_declarative_providers_normalize_or_raise_payload_error(name, payload):
    normalize(lambda p: DECLARATIVE[name].to_update(p, JOB), payload)


@FUZZ
@given(answer=workflow_runs.map(lambda p: p.get("workflow_run") if isinstance(p, dict) else p))
def test_a_declarative_poll_answer_normalizes_or_raises_payload_error(answer):
    fields = GITHUB.spec.poll.fields
    normalize(lambda a: fields.update(a, JOB, "ext-1", "github", "orphan_poll"), answer)


def test_the_declarative_strategies_reach_real_updates():
    run = {"workflow_run": {"id": 30433642, "status": "completed", "conclusion": "success"}}
    assert GITHUB.to_update(run, JOB).status == "completed"
    assert GITHUB.external_id(run) == "30433642"
    job = {"job": {"id": "a1", "state": "running", "progress": 0.29, "output": [{"u": 1}]}}
    update = ACME.to_update(job, JOB)
    assert (update.status, update.progress, update.result) == ("processing", 29, {"u": 1})
    assert ACME.to_update({"id": "a1", "states": ["done"]}, JOB) is None  # no `job`: ignored


# -- what ingest asks every provider before normalizing ------------------------------------------

PROVIDERS = {"replicate": REPLICATE, "openai": OPENAI, "fal": FAL, "runpod": RUNPOD, **DECLARATIVE}
any_payload = st.one_of(
    replicate_predictions,
    openai_events_without_fetch,
    fal_completions,
    runpod_statuses,
    workflow_runs,
    acme_jobs,
)


@pytest.mark.parametrize(
    "name",
    list(PROVIDERS),
)
@FUZZ
@given(payload=any_payload)
@example(payload={"type": ["response.completed"], "data": {}})
def test_the_ingest_hooks_take_any_payload(name, payload):
    """ingest() calls external_id (PayloadError allowed) and, when that fails,
    waits_for_mapping, which must answer for any payload."""
    provider = PROVIDERS[name]
    try:
        external_id = provider.external_id(payload)
        assert isinstance(external_id, str) and external_id
    except PayloadError:
        pass
    assert provider.waits_for_mapping(payload) in (True, False)


# -- the body -------------------------------------------------------------------------------------


@FUZZ
@given(
    body=st.one_of(
        st.text(max_size=200),
        st.text(st.characters(exclude_categories=()), max_size=50),
        json_values.map(json.dumps),
        st.builds(lambda value, cut: json.dumps(value)[:cut], json_values, st.integers(0, 100)),
    )
)
def test_parse_payload_returns_an_object_or_raises_payload_error(body):
    try:
        payload = parse_payload(body)
    except PayloadError:
        return
    assert isinstance(payload, dict)


@pytest.mark.parametrize("opener, closer", [("[", "]"), ('{"a":', "}")], ids=["arrays", "objects"])
def test_parse_payload_of_deeply_nested_json_is_a_payload_error(opener, closer):
    body = opener * 100_000 + "1" + closer * 100_000

    with pytest.raises(PayloadError):
        parse_payload(body)


def test_the_fuzzed_normalizers_do_map_real_payloads():
    """The strategies' target shapes are real: each normalizer maps one of them."""
    assert (
        update_from_prediction({"id": "p", "status": "succeeded"}, JOB, "webhook").status
        == "completed"
    )
    assert update_from_response({"id": "r", "status": "queued"}, JOB, "webhook").progress == 0
    assert (
        OPENAI.to_update({"type": "eval.run.failed", "data": {"id": "e"}}, JOB).status == "failed"
    )
    assert (
        _offline_openai({"id": "b", "status": "expired"})
        .to_update({"type": "batch.expired", "data": {"id": "b"}}, JOB)
        .status
        == "failed"
    )
    assert (
        FAL.to_update({"request_id": "q", "status": "OK", "payload": {}}, JOB).status == "completed"
    )
    assert update_from_status({"id": "j", "status": "IN_QUEUE"}, JOB, "webhook").progress == 0
