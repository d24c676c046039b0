"""The Celery application: configured from celeryconfig.py, tasks in workers.tasks."""

from celery import Celery

app = Celery("webhook_ingest")
app.config_from_object("celeryconfig")
app.conf.imports = ("workers.tasks",)
