"""The web process: the Flask app (app.create_app), the webhook receiver, the
operator and dead-letter APIs, /metrics, the admin bearer check, rate limits and
the JSON error answers. It proves a delivery authentic and hands it off; it never
calls a provider and never writes job state."""
