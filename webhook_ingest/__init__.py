"""webhook-ingest: receives AI providers' job webhooks and turns them into job state."""

__version__ = "0.1.0"
