"""Issue 14, finding 4: dead letters are capped per provider, by count and by bytes.

Parking past a cap drops that provider's oldest letters in the same transaction as
the park, counts them in webhook_dead_letters_dropped_total{provider}, and leaves
other providers' letters alone.
"""

from __future__ import annotations

import json
import time
import uuid

from prometheus_client import REGISTRY

from webhook_ingest.handoff.delivery import Delivery
from webhook_ingest.state import keys


def dropped(provider: str) -> float:
    value = REGISTRY.get_sample_value("webhook_dead_letters_dropped_total", {"provider": provider})
    return value or 0.0


def park(services, provider: str, padding: int = 0) -> str:
    delivery = Delivery(
        provider=provider,
        delivery_id=f"msg_{uuid.uuid4().hex}",
        body=json.dumps({"id": "pred-x", "logs": "é" * padding}, ensure_ascii=False),
        job_id=f"job-{uuid.uuid4().hex[:8]}",
        headers={"webhook-id": "msg_x"},
        journaled=True,
    )
    services.journal.open(delivery)
    time.sleep(0.002)  # "oldest" is by parked time (ms); letters of one ms tie by id
    letter_id = services.dead_letters.park(delivery, "unmatched", "no job registered", 3)
    assert not services.journal.is_open(delivery)  # the park still finishes it
    return letter_id


def test_parking_past_the_count_cap_drops_the_oldest_of_that_provider(services_with):
    services = services_with(DEAD_LETTER_MAX_PER_PROVIDER="3")
    other = park(services, "openai")
    before = dropped("replicate")

    letters = [park(services, "replicate") for _ in range(5)]

    kept = services.dead_letters.select(provider="replicate")
    assert kept == letters[2:]  # the newest three, oldest first
    assert dropped("replicate") - before == 2
    for gone in letters[:2]:
        assert services.dead_letters.get(gone) is None
        assert services.redis.zscore(keys.DEAD_LETTERS, gone) is None
    assert services.dead_letters.select(provider="openai") == [other]
    assert services.redis.zcard(keys.dead_letters_of("replicate")) == 3


def test_parking_past_the_byte_cap_drops_the_oldest_and_keeps_the_newest(services_with):
    services = services_with(DEAD_LETTER_MAX_BYTES_PER_PROVIDER="20000")
    before = dropped("replicate")

    # about 6 KB stored each (3,000 two-byte characters, kept as UTF-8)
    letters = [park(services, "replicate", padding=3000) for _ in range(5)]

    kept = services.dead_letters.select(provider="replicate")
    assert kept == letters[-3:]
    assert dropped("replicate") - before == 2
    total = int(services.redis.get(keys.dead_letter_bytes("replicate")))
    assert 3 * 6000 < total <= 20000
    sizes = services.redis.hgetall(keys.dead_letter_sizes("replicate"))
    assert sorted(sizes) == sorted(kept) and sum(map(int, sizes.values())) == total

    # one letter larger than the whole cap is still kept, alone
    huge = park(services, "replicate", padding=20000)
    assert services.dead_letters.select(provider="replicate") == [huge]
    assert dropped("replicate") - before == 5


def test_a_purged_or_replayed_letter_leaves_its_providers_count(services_with):
    services = services_with(DEAD_LETTER_MAX_PER_PROVIDER="2")
    first, second = park(services, "replicate"), park(services, "replicate")
    services.dead_letters.purge(first)
    before = dropped("replicate")

    third = park(services, "replicate")

    assert dropped("replicate") == before  # the purge made room
    assert services.dead_letters.select(provider="replicate") == [second, third]
    assert services.redis.hlen(keys.dead_letter_sizes("replicate")) == 2


def test_the_caps_are_validated(services_with):
    import pytest

    from tests.support import environ_with
    from webhook_ingest.config import ConfigError, load_settings

    for name, value in (
        ("DEAD_LETTER_MAX_PER_PROVIDER", "0"),
        ("DEAD_LETTER_MAX_BYTES_PER_PROVIDER", "10"),
        ("DEAD_LETTER_MAX_PER_PROVIDER", "lots"),
    ):
        with pytest.raises(ConfigError, match=name):
            load_settings(environ_with(**{name: value}))
