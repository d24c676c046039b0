"""The Celery app Flower runs (`celery -A workers.flower_app flower`, workers.flower).

The worker's app, on kombu's own Redis transports instead of workers.kombu_redis.
Flower reads task events and the queues' lengths; it acknowledges no task, so
what workers.kombu_redis changes (how a consumer's acknowledgements are kept)
does nothing for it. And Flower picks the client for its broker page and
`/api/queues/length` by the broker URL's scheme, which kombu writes from the
transport's name: with ours it was `workers.kombu_redis:Transport://`, and
Flower answered 404 "broker is not supported" for redis:// and
redis+sentinel:// alike. kombu's own give `redis://` and `sentinel://` (the
master's name among the transport options), which Flower knows.
"""

from __future__ import annotations

from webhook_ingest.config import ConfigError
from workers.celery_app import create_celery_app


def _flower_app():
    try:
        flower_app = create_celery_app()
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    # None: kombu's transport for the URL's scheme (a RabbitMQ broker sets none)
    flower_app.conf.broker_transport = None
    return flower_app


app = _flower_app()
