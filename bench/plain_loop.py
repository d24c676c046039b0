"""The ceiling for W: one process applying deliveries with no Celery around them.

`python -m bench.plain_loop TAG N`: registers N fresh jobs, builds the same
deliveries the worker gets, then times a loop of `webhook_ingest.ingest.ingest`
(normalize + the state script, exactly what the task calls). Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter


def main(tag: str, count: int) -> None:
    from bench.common import BulkRegistrar, Signer
    from bench.worker import deliveries
    from webhook_ingest.ingest import ingest
    from webhook_ingest.services import build_services

    services = build_services()
    signer = Signer(os.environ["WEBHOOK_SECRET_REPLICATE"])
    jobs, batch = deliveries(tag, count, signer)
    BulkRegistrar(services.redis, services).register(jobs)

    outcomes = Counter()
    started = time.perf_counter()
    for delivery in batch:
        outcomes[ingest(delivery, services).outcome.value] += 1
    seconds = time.perf_counter() - started
    print(
        json.dumps({"deliveries": count, "seconds": seconds, "rate": count / seconds, **outcomes})
    )
    if outcomes["applied"] != count:
        sys.exit(f"expected {count} applied, got {dict(outcomes)}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
