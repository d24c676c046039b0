"""The Celery application: configured from celeryconfig.py, tasks in workers.tasks and
workers.consistency_tasks."""

from celery import Celery

app = Celery("webhook_ingest")
app.config_from_object("celeryconfig")
app.conf.imports = ("workers.tasks", "workers.consistency_tasks")
