"""The hand-off in one Redis call: claim a delivery and put it on the Celery queue.

When the broker is a database of the state Redis server (the default:
CELERY_BROKER_URL unset means REDIS_URL), the receiver's three round trips —
claim the delivery id, publish through kombu, confirm the claim — become one
Lua script that Redis runs atomically: it LPUSHes the same message kombu's Redis
transport would (Celery message protocol v2 in kombu's envelope) onto the queue
list the worker consumes, marks the claim `enqueued` and writes the delivery's
journal record (handoff.journal) in the same step. The script SELECTs the
broker's database and back (allowed in scripts; the caller's connection keeps
its own). The acknowledgment rests on the journal record; the broker's copy is
how the worker gets it without waiting for a redrive.

Measured (bench/, docs/benchmarks.md): kombu's publish costs several Redis
round trips' worth of Python per delivery; this is one round trip.

With REDIS_MIN_REPLICA_ACKS the script and a Redis WAIT go out as one pipeline on
one connection (webhook_ingest.state.replica_acks): still one round trip.

Anything else (RabbitMQ, a separate Redis server, TLS differences) journals,
then publishes: webhook_ingest.handoff.journal_then_publish.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from dataclasses import replace
from json.encoder import encode_basestring_ascii
from urllib.parse import quote, urlsplit

import redis
from celery import Celery
from kombu.transport import redis as kombu_redis
from kombu.transport import resolve_transport

from celeryconfig import INGEST_TASK, UNMATCHED_QUEUE
from webhook_ingest.handoff.base import Handoff
from webhook_ingest.handoff.claims import (
    CLAIM_AND_JOURNAL_LUA,
    Claim,
    RateLimit,
    claim_call,
    outcome,
)
from webhook_ingest.handoff.delivery import Delivery
from webhook_ingest.handoff.journal import Journal
from webhook_ingest.handoff.publish import argsrepr
from webhook_ingest.handoff.seen import SeenDeliveries
from webhook_ingest.redis_sentinel import is_sentinel_url
from webhook_ingest.redis_sentinel import parse as parse_sentinel_url
from webhook_ingest.state import keys as state_keys
from webhook_ingest.state.replica_acks import ReplicaAcks

# Stand for the task's body and the queue's name in the message until the script
# joins them in: random per process, so no delivery's text (its id shows in
# argsrepr) holds them. The body is base64 of up to MAX_BODY_BYTES_<PROVIDER>
# (20 MiB for RunPod): passed to Redis on its own, it is never copied into a
# second string of the whole message here.
_BODY_MARK = f"body-{uuid.uuid4().hex}"
_QUEUE_MARK = f"queue-{uuid.uuid4().hex}"
# Stand for the fields that change per message in the envelope template.
_ID_MARK = f"id-{uuid.uuid4().hex}"
_TAG_MARK = f"tag-{uuid.uuid4().hex}"
_ARGSREPR_MARK = f"argsrepr-{uuid.uuid4().hex}"

# Claim and journal (claims.CLAIM_AND_JOURNAL_LUA: KEYS[1-8], ARGV[1-7]), then
# the push. KEYS[9-11]: main queue, unmatched queue, the job's mapping ("" when the
# URL names no job). ARGV[8-13]: broker message up to its body, the body (base64),
# the message from there up to its queue's name (delivery_info.routing_key), the
# rest, broker db, state db.
# A delivery for a job with no mapping goes to the unmatched queue from its first
# attempt (celeryconfig.UNMATCHED_QUEUE): a flood of them must not stand in line
# before deliveries for registered jobs (issue 14, finding 4). The worker applies
# it all the same if the job is registered by the time it runs.
_CLAIM_AND_PUSH_LUA = (
    CLAIM_AND_JOURNAL_LUA
    + """
local queue = KEYS[9]
if KEYS[11] ~= '' and redis.call('EXISTS', KEYS[11]) == 0 then queue = KEYS[10] end
local broker_db, state_db = tonumber(ARGV[12]), tonumber(ARGV[13])
if broker_db ~= state_db then redis.call('SELECT', broker_db) end
redis.call('LPUSH', queue, ARGV[8] .. ARGV[9] .. ARGV[10] .. queue .. ARGV[11])
if broker_db ~= state_db then redis.call('SELECT', state_db) end
return 'enqueued'
"""
)


def _server(url: str) -> tuple | None:
    """(scheme, host, port, user, password) of a redis:// URL; for a redis+sentinel://
    one, the sentinels and the master's name (redis_sentinel.SentinelUrl.server);
    None for anything else."""
    if is_sentinel_url(url):
        return parse_sentinel_url(url).server
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        return None
    host = {"localhost": "127.0.0.1"}.get(parts.hostname or "", parts.hostname)
    return (parts.scheme, host, parts.port or 6379, parts.username, parts.password)


def _db(url: str) -> int:
    if is_sentinel_url(url):
        return parse_sentinel_url(url).db
    path = urlsplit(url).path.strip("/")
    return int(path) if path.isdigit() else 0


class SingleScriptHandoff(Handoff):
    """Claim + enqueue + confirm as one script; see the module docstring."""

    def __init__(
        self,
        client: redis.Redis,
        celery_app: Celery,
        state_url: str,
        seen: SeenDeliveries,
        journal: Journal,
        rate: RateLimit | None = None,
        acks: ReplicaAcks | None = None,
    ) -> None:
        self._script = client.register_script(_CLAIM_AND_PUSH_LUA)
        self._acks = acks
        self._journal = journal
        self._seen = seen
        self._rate = rate
        self._state_db = _db(state_url)
        self._broker_db = _db(broker_url(celery_app))
        route = celery_app.amqp.router.route({}, INGEST_TASK)
        self._queue = route["queue"].name
        # Celery's own builder makes the template once, so the headers are exactly
        # what this Celery version sends; per message only the ids change.
        # (ignore_result None, as send_task leaves it: the task and conf decide)
        template = celery_app.amqp.as_task_v2(
            "0", INGEST_TASK, args=[], kwargs={}, ignore_result=None
        )
        self._headers = template.headers
        # what send_task puts here (its results channel; unused without a result backend)
        self._reply_to = celery_app.thread_oid
        # after the delivery's message in the task's body: `], {kwargs}, {embed}]`
        self._task_tail = (
            "], {}, " + json.dumps(template.body[2], ensure_ascii=False) + "]"
        ).encode()
        self._head, self._before, self._after = self._envelope_template()

    @classmethod
    def applies(cls, celery_app: Celery, state_url: str) -> bool:
        """Only when the broker is a database of the state's own Redis server."""
        broker = broker_url(celery_app)
        return _server(broker) is not None and _server(broker) == _server(state_url)

    def accept(self, delivery: Delivery, client: str = "") -> Claim:
        delivery = replace(delivery, journaled=True)
        record = self._journal.record(delivery)
        # The journal record is json.dumps(delivery.to_message()) of this same
        # (journaled) delivery: the task's body is built around those bytes.
        head, body, before, after = self._pieces(delivery, record[2])
        mapping = state_keys.job_mapping(delivery.job_id) if delivery.job_id else ""
        claim_keys, claim_args = claim_call(self._seen, delivery, client, record, self._rate)
        script_keys = [*claim_keys, self._queue, UNMATCHED_QUEUE, mapping]
        script_args = [
            *claim_args,
            head,
            body,
            before,
            after,
            self._broker_db,
            self._state_db,
        ]
        if self._acks is None:
            return outcome(self._script(keys=script_keys, args=script_args))
        reply, acked = self._acks.run_script(self._script, script_keys, script_args)
        claim = outcome(reply)  # RateLimited: 429 whatever the replicas say
        self._acks.require(acked)  # ReplicasBehind: 503, never a 2xx
        return claim

    def message(self, delivery: Delivery, queue: str | None = None) -> str:
        """The JSON kombu's Redis transport stores for `send_task(INGEST_TASK, [message])`
        (on `queue`, the main queue unless given)."""
        head, body, before, after = self._pieces(delivery, _message_json(delivery))
        return head + body.decode("ascii") + before + (queue or self._queue) + after

    def _pieces(self, delivery: Delivery, message_json: bytes) -> tuple[str, bytes, str, str]:
        """The message as (its text up to the task's body, the body: base64 bytes, the
        rest up to the queue's name, the rest after it). `message_json`: the delivery's
        message as json.dumps(..., ensure_ascii=False) writes it, UTF-8."""
        # Celery's json serializer writes [args, kwargs, embed] with json.dumps'
        # separators; joining the delivery's own JSON in is the same text, without
        # serializing the body a second time. UTF-8 as it is (broker.utf8_json).
        body = base64.b64encode(b"".join((b"[[", message_json, self._task_tail)))
        task_id, delivery_tag = _two_uuid4s()
        fields = {
            "id": task_id,
            "tag": delivery_tag,
            # as json.dumps (ensure_ascii) writes a string: the id comes from the request
            "argsrepr": encode_basestring_ascii(argsrepr(delivery)),
        }
        return self._head, body, self._before.format_map(fields), self._after.format_map(fields)

    def _envelope_template(self) -> tuple[str, str, str]:
        """kombu's envelope for the message, serialized once: (text up to the body, the
        rest up to the queue's name, the rest after it). The last two are format
        strings taking the fields that change per message: the task id (also its
        root and correlation id), the delivery tag, the JSON-quoted argsrepr."""
        envelope = json.dumps(
            {
                "body": _BODY_MARK,
                "content-encoding": "utf-8",
                "content-type": "application/json",
                "headers": {
                    **self._headers,
                    "id": _ID_MARK,
                    "root_id": _ID_MARK,
                    "argsrepr": _ARGSREPR_MARK,
                },
                "properties": {
                    "correlation_id": _ID_MARK,
                    "reply_to": self._reply_to,
                    # Celery copies it here too (publish options end up as properties)
                    "argsrepr": _ARGSREPR_MARK,
                    "delivery_mode": 2,  # persistent
                    "delivery_info": {"exchange": "", "routing_key": _QUEUE_MARK},
                    "priority": 0,
                    "body_encoding": "base64",
                    "delivery_tag": _TAG_MARK,
                },
            }
        )
        text = envelope.replace("{", "{{").replace("}", "}}")  # literal braces for format
        text = text.replace(f'"{_ID_MARK}"', '"{id}"').replace(f'"{_TAG_MARK}"', '"{tag}"')
        text = text.replace(f'"{_ARGSREPR_MARK}"', "{argsrepr}")
        head, rest = text.split(_BODY_MARK)
        before, after = rest.split(_QUEUE_MARK)
        return head.format(), before, after


def _message_json(delivery: Delivery) -> bytes:
    """What Journal.record writes for a journaled delivery, for any delivery."""
    return json.dumps(delivery.to_message(), ensure_ascii=False).encode()


def _two_uuid4s() -> tuple[str, str]:
    """Two random (version 4) UUIDs as str(uuid.uuid4()) writes them, from one read
    of the OS's random source: the task id and kombu's delivery tag."""
    raw = os.urandom(32).hex()
    return _uuid4_text(raw[:32]), _uuid4_text(raw[32:])


def _uuid4_text(hex32: str) -> str:
    # version nibble 4; variant bits 10 (RFC 4122) in the top of the 17th digit
    variant = "89ab"[int(hex32[16], 16) & 3]
    return f"{hex32[:8]}-{hex32[8:12]}-4{hex32[13:16]}-{variant}{hex32[17:20]}-{hex32[20:]}"


def broker_url(celery_app: Celery) -> str:
    """The broker as a redis:// URL whenever kombu reaches it through its Redis
    transport, ours included (workers/kombu_redis.py, whose URI kombu names after
    the class); kombu's own URI for anything else (amqp://, sentinel://)."""
    conn = celery_app.connection_for_write()
    transport = resolve_transport(conn.transport_cls)
    if not isinstance(transport, type) or not issubclass(transport, kombu_redis.Transport):
        return conn.as_uri(include_password=True)
    if issubclass(transport.Channel, kombu_redis.SentinelChannel):  # workers.kombu_redis's too
        return _sentinel_uri(conn)
    scheme = "rediss" if conn.ssl else "redis"
    auth = ""
    if conn.userid or conn.password:
        auth = f"{quote(conn.userid or '', safe='')}:{quote(conn.password or '', safe='')}@"
    return f"{scheme}://{auth}{conn.hostname}:{conn.port or 6379}/{conn.virtual_host or 0}"


def _sentinel_uri(conn) -> str:
    """kombu's Sentinel connection (one `sentinel://` alternate per sentinel, the
    master's name a transport option) as the redis+sentinel:// URL it came from."""
    hosts = []
    for alternate in conn.alt or [conn.as_uri()]:
        parts = urlsplit(alternate)
        host = parts.hostname or "localhost"
        hosts.append(f"{f'[{host}]' if ':' in host else host}:{parts.port or 26379}")
    auth = ""
    if conn.userid or conn.password:
        auth = f"{quote(conn.userid or '', safe='')}:{quote(conn.password or '', safe='')}@"
    master = conn.transport_options.get("master_name", "")
    return f"redis+sentinel://{auth}{','.join(hosts)}/{master}/{conn.virtual_host or 0}"
