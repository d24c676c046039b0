"""gunicorn entry point: `gunicorn -c gunicorn.conf.py webhook_ingest.wsgi:app`."""

from webhook_ingest.observability import json_logs
from webhook_ingest.web.app import create_app

json_logs.configure()

app = create_app()
