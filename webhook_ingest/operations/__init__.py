"""What keeps the service honest over time and what operators run: the orphan
poller, adoption of mappings written by other services, the consistency check,
dead letters, the raw-delivery retention, readiness and Redis depths, and the
`webhook-ingest` command line."""
