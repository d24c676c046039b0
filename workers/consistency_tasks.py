"""The consistency check as a Celery task (scheduled by beat); the logic is in
webhook_ingest.operations.consistency."""

from __future__ import annotations

from celery import shared_task

from celeryconfig import CHECK_CONSISTENCY_TASK
from webhook_ingest.operations.consistency import ConsistencyCheck
from workers.services import services

# Stop polling this long before the soft time limit, so the summary is still counted.
TIME_LIMIT_MARGIN_SECONDS = 10


@shared_task(name=CHECK_CONSISTENCY_TASK, bind=True)
def check_consistency(self) -> dict:
    """Re-poll a sample of recently finished jobs; count and log disagreements."""
    soft_limit = self.app.conf.task_soft_time_limit
    budget = max(soft_limit - TIME_LIMIT_MARGIN_SECONDS, 1) if soft_limit else None
    return ConsistencyCheck(services()).run(time_budget_seconds=budget).as_dict()
