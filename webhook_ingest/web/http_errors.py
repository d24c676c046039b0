"""Every error is a small JSON object; no request ever sees a stack trace."""

from __future__ import annotations

import logging

import redis
from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


def error(status: int, message: str, **headers: str):
    response = jsonify(error=message)
    response.status_code = status
    for name, value in headers.items():
        response.headers[name.replace("_", "-")] = value
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        if exc.response is not None:  # already answered in full (the rate limiter's 429)
            return exc.response
        messages = {
            429: "too many requests",
            400: "bad request",
            413: "body too large",
            404: "not found",
            405: "method not allowed",
            408: "request body did not arrive in time",
        }
        response = error(exc.code or 500, messages.get(exc.code, exc.name.lower()))
        allowed = dict(exc.get_headers()).get("Allow")
        if allowed:  # a 405 must say what is allowed (RFC 9110)
            response.headers["Allow"] = allowed
        return response

    @app.errorhandler(redis.RedisError)
    def _redis_down(exc: redis.RedisError):
        log.warning("redis unavailable: %s", type(exc).__name__)
        return error(503, "state store unavailable, retry later", Retry_After="5")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error(500, "internal error")
