"""Redis key names. The first two are shared with the rest of the job system."""


def job_mapping(job_id: str) -> str:
    return f"job_mapping:{job_id}"


def job_state(job_id: str) -> str:
    return f"job_state:{job_id}"


def progress_channel(job_id: str) -> str:
    return f"job_progress:{job_id}"


UPDATES_CHANNEL = "job_updates"

# Ours: not read by other services, free to change with a migration note.


def live_jobs(provider: str) -> str:
    """Non-terminal jobs of one provider, scored by when they were last heard of (ms).

    The orphan poller reads only the stale end of these (ZRANGEBYSCORE), so a
    tick costs what the stale jobs cost, not what the keyspace holds; one zset
    per provider lets it bound the polls per provider.
    """
    return f"webhook_ingest:live_jobs:{provider}"


# hash: job_id -> consecutive failed polls, {job_id}:failing_since -> when that run
# began (ms; the give-up bound), {job_id}:first_404 -> a timeless mapping's first 404
POLL_FAILURES = "webhook_ingest:poll_failures"
ADOPTION_CURSOR = "webhook_ingest:adoption_cursor"  # SCAN cursor over job_mapping:*


def applied_deliveries(job_id: str) -> str:
    """Delivery ids already applied to a job, for deliveries that carry no journal
    record (messages sent by versions before the journal): makes a redelivered task
    a no-op. A journaled delivery needs none: its record is gone once it is finished."""
    return f"webhook_ingest:applied:{job_id}"


def job_events(job_id: str) -> str:
    """The last observations offered to a job's state and what became of each (a list)."""
    return f"webhook_ingest:job_events:{job_id}"


def finished_jobs(provider: str) -> str:
    """Recently finished jobs of one provider, scored by when they finished (ms).

    What the consistency check samples from; trimmed to its window and bounded in size.
    """
    return f"webhook_ingest:finished_jobs:{provider}"


CONSISTENCY_LOCK = "webhook_ingest:consistency_check:lock"  # one run at a time, any process


def external_index(provider: str, external_job_id: str) -> str:
    """Reverse lookup for providers whose webhook names only their own id."""
    return f"webhook_ingest:external:{provider}:{external_job_id}"


def poll_target(provider: str, external_job_id: str) -> str:
    """Where to poll a job when the provider's id alone does not say (fal's app,
    RunPod's endpoint): recorded at submit, kept for as long as a job may need polling."""
    return f"webhook_ingest:poll_target:{provider}:{external_job_id}"


def jwks(provider: str) -> str:
    """A provider's public key set (the JWKS text), fetched by one process and read by
    all, expiring with the key cache's TTL."""
    return f"webhook_ingest:jwks:{provider}"


def seen_deliveries(provider: str, bucket: int) -> str:
    """Digests of the deliveries one provider sent in one time bucket (a set of
    12-byte blake2b digests; handoff.seen): the receiver's de-duplication."""
    return f"webhook_ingest:seen:{provider}:{bucket}"


def delivery_claim(provider: str, delivery_id: str, job_id: str | None = None) -> str:
    """A delivery's claim as versions before `seen_deliveries` wrote it (a key per id):
    still read by the claim script, so an upgrade forgets no id that such a receiver
    acknowledged; nothing writes it any more, and the last one expires
    DELIVERY_DEDUP_TTL_SECONDS after the upgrade.

    Per provider, per job of the URL it came to, per delivery id.

    The job is part of it, so a captured delivery posted first to another job's
    URL cannot make the real one a "duplicate" (it is a claim of its own, parked
    or left waiting for a job that does not match). Provider names have neither
    `:` nor `/` and job ids no `/` (web.receiver.JOB_ID), so the two forms never
    meet: `{provider}:{delivery_id}` for project-level URLs (OpenAI), and
    `{provider}/{job_id}/{delivery_id}` for per-job URLs.
    """
    if job_id is None:
        return f"webhook_ingest:delivery:{provider}:{delivery_id}"
    return f"webhook_ingest:delivery:{provider}/{job_id}/{delivery_id}"


def delivery_rate(provider: str, client: str) -> str:
    """New verified deliveries from one client address to one provider in the
    current RATE_LIMIT window (a counter that expires with the window), counted
    by the hand-off's claim script (handoff.claims)."""
    return f"webhook_ingest:rate:{provider}:{client}"


def delivery_claims(provider: str) -> str:
    """A SCAN/KEYS pattern for every legacy claim of one provider, of both forms."""
    return f"webhook_ingest:delivery:{provider}[:/]*"


def seen_buckets(provider: str) -> str:
    """A SCAN/KEYS pattern for every bucket of one provider's seen deliveries."""
    return f"webhook_ingest:seen:{provider}:*"


DEAD_LETTERS = "webhook_ingest:dead_letters"  # zset dead letter id -> parked at (ms)


def dead_letter(letter_id: str) -> str:
    return f"webhook_ingest:dead_letter:{letter_id}"


# One provider's letters: zset id -> parked at (ms), hash id -> stored bytes, and
# their total, for the per-provider caps (operations.dead_letters).
def dead_letters_of(provider: str) -> str:
    return f"webhook_ingest:dead_letters:{provider}"


def dead_letter_sizes(provider: str) -> str:
    return f"webhook_ingest:dead_letter_sizes:{provider}"


def dead_letter_bytes(provider: str) -> str:
    return f"webhook_ingest:dead_letter_bytes:{provider}"


RAW_DELIVERIES = "webhook_ingest:raw_deliveries"  # zset "{provider}:{delivery_id}" -> received (ms)


def raw_delivery(member: str) -> str:
    """A verified delivery kept for RAW_RETENTION_SECONDS; `member` as in RAW_DELIVERIES."""
    return f"webhook_ingest:raw_delivery:{member}"


# capped list of deliveries recorded but not applied (state.ignored)
IGNORED_DELIVERIES = "webhook_ingest:ignored"


# The delivery journal (handoff.journal): a delivery the receiver acknowledged
# stays here until the worker records its outcome. A zset of journal members
# scored by when the delivery is due to be finished (ms), and a hash of the
# message each member's delivery travels as.
JOURNAL = "webhook_ingest:journal"
JOURNAL_MESSAGES = "webhook_ingest:journal_messages"

# A write that exists only to be waited for (webhook_ingest.state.replica_acks): Redis WAIT
# counts the replication offset of the calling connection's last write, and this one
# is written after everything the caller depends on. Expires: nothing ever reads it.
REPLICA_ACK_MARK = "webhook_ingest:replica_ack_mark"
REPLICA_ACK_MARK_TTL_MS = 60_000
