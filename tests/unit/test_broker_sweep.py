"""The Redis broker's sweep of unacknowledged messages outlives a sweeper's death.

kombu's sweep takes `unacked_mutex` with an expiry (300 s by default) for the
milliseconds of its scan; a worker SIGKILLed inside that window leaves it set,
and no worker restored anything until it expired (the soak fault test: the
queue did not drain within 120 s after a worker SIGKILL, the mutex still set)."""

from __future__ import annotations

import pytest

from celeryconfig import celery_settings
from webhook_ingest.config import load_settings


@pytest.mark.parametrize("visibility", [10, 90, 120])
def test_a_dead_sweepers_mutex_delays_the_next_sweep_by_a_few_seconds_at_most(visibility):
    settings = load_settings(
        {
            "BROKER_VISIBILITY_TIMEOUT_SECONDS": str(visibility),
            "JOURNAL_REDRIVE_AFTER_SECONDS": str(visibility * 2),
        }
    )
    options = celery_settings(settings)["broker_transport_options"]
    # a message comes back within the visibility timeout plus one sweep interval
    # plus this, even when the last sweeper died holding the mutex
    assert options["unacked_mutex_expire"] <= options["unacked_restore_interval"] <= visibility
