"""gunicorn entry point: `gunicorn -c gunicorn.conf.py webhook_ingest.wsgi:app`."""

import logging

from webhook_ingest.app import create_app

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

app = create_app()
