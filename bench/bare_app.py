"""The ceiling for R: a bare Flask endpoint on the receiver's route, nothing else.

Served by the same `gunicorn -c gunicorn.conf.py` command and environment as the
product (`bench.bare_app:app`), so the ratio isolates what the receiver does on
top of Flask + gunicorn: verification, de-duplication, rate limit, enqueue, logs.
"""

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.post("/webhook/<provider>/<job_id>")
def receive(provider: str, job_id: str):
    request.get_data(cache=False)  # the product reads the body too
    return jsonify(received=True), 202


@app.get("/healthz")
def healthz():
    return jsonify(status="ok")
