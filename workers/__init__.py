"""Celery worker side: `celery -A workers worker|beat|flower` finds `workers.app`."""

from workers.celery_app import app

__all__ = ["app"]
