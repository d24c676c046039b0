"""A provider's Retry-After, read as urllib3 reads it (RFC 9110: delay-seconds or an
HTTP date), becomes `ProviderUnavailable.retry_after`; one we cannot read is no hint.

Answers come from the real fake provider API over HTTP.
"""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest

from webhook_ingest.providers import http

PATH = "/v1/anything/ext-1"


def retry_after_of(api, value: str) -> float | None:
    api.respond("GET", PATH, (429, {"error": "slow down"}, {"Retry-After": value}))
    with pytest.raises(http.ProviderUnavailable) as raised:
        http.get_json(http.make_session(None, "test"), f"{api.url}{PATH}")
    return raised.value.retry_after


@pytest.mark.parametrize(("value", "seconds"), [("7", 7.0), (" 30 ", 30.0), ("0", 0.0)])
def test_delay_seconds_are_the_hint(api, value, seconds):
    assert retry_after_of(api, value) == seconds


def test_an_http_date_in_the_future_is_the_seconds_until_then(api):
    hint = retry_after_of(api, formatdate(time.time() + 120, usegmt=True))

    assert hint is not None
    assert 60 <= hint <= 120


def test_an_http_date_in_the_past_is_no_wait(api):
    assert retry_after_of(api, "Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


@pytest.mark.parametrize(
    "value",
    ["soon", "1.5", "inf", "nan", "", "Wed, 21 Oct 99999 07:28:00 GMT", "9" * 5000],
    ids=["word", "fraction", "inf", "nan", "empty", "year-99999", "5000-digits"],
)
def test_a_retry_after_of_neither_form_is_no_hint(api, value):
    assert retry_after_of(api, value) is None


def test_a_negative_delay_is_no_wait_either(api):
    # Not delay-seconds (1*DIGIT), so no hint; before, it was clamped to 0. Both mean
    # the caller's own backoff alone decides (retries.countdown, the poller's back-off).
    assert not retry_after_of(api, "-5")


def test_an_absurd_delay_is_capped_at_six_hours(api):
    assert retry_after_of(api, "99999999") == 6 * 3600
