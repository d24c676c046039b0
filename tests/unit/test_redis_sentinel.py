"""redis+sentinel:// URLs: parsed one way for every client, refused at start when wrong."""

from __future__ import annotations

import pytest

from celeryconfig import celery_settings, is_redis_broker
from webhook_ingest.config import ConfigError, load_settings, redacted_url
from webhook_ingest.handoff import broker
from webhook_ingest.handoff.single_script import SingleScriptHandoff, broker_url
from webhook_ingest.redis_sentinel import parse

URL = "redis+sentinel://:data-pw@10.0.0.1:26379,10.0.0.2,[::1]:26380/prod-state/4"


def test_a_sentinel_url_names_the_sentinels_the_master_and_the_database():
    parsed = parse(URL + "?sentinel_password=sentinel-pw")
    assert parsed.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380))
    assert parsed.master_name == "prod-state"
    assert parsed.db == 4
    assert parsed.password == "data-pw"
    assert parsed.sentinel_password == "sentinel-pw"
    assert parsed.data_node_kwargs() == {"db": 4, "password": "data-pw"}
    assert parsed.sentinel_kwargs() == {"password": "sentinel-pw"}
    assert not parsed.tls


def test_tls_options_go_to_sentinels_and_data_nodes():
    parsed = parse(
        "rediss+sentinel://h:26379/m?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem"
        "&ssl_check_hostname=true"
    )
    expected = {
        "ssl": True,
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": "/etc/ca.pem",
        "ssl_check_hostname": True,
    }
    assert parsed.sentinel_kwargs() == expected
    assert parsed.data_node_kwargs() == {"db": 0, **expected}


@pytest.mark.parametrize(
    "url, problem",
    [
        ("redis+sentinel://h:26379", "names no master"),
        ("redis+sentinel:///m", "names no sentinel"),
        ("redis+sentinel://h:263x9/m", "bad sentinel address"),
        ("redis+sentinel://h/m/zero", "path must be"),
        ("redis+sentinel://h/m/1/2", "path must be"),
        ("redis+sentinel://h/m?service=x", "unknown option 'service'"),
        ("redis+sentinel://h/m?ssl_cert_reqs=required", "need rediss+sentinel"),
        ("rediss+sentinel://h/m?ssl_cert_reqs=maybe", "ssl_cert_reqs must be"),
    ],
)
def test_a_wrong_sentinel_url_stops_the_start_naming_the_variable(url, problem):
    with pytest.raises(ConfigError) as error:
        load_settings({"REDIS_URL": url})
    assert error.value.problems[0].startswith("REDIS_URL: Sentinel URL:")
    assert problem in str(error.value)


def test_the_broker_may_be_a_sentinel_url_of_its_own():
    with pytest.raises(ConfigError, match="CELERY_BROKER_URL: Sentinel URL"):
        load_settings({"CELERY_BROKER_URL": "redis+sentinel://h:26379"})
    settings = load_settings({"CELERY_BROKER_URL": "redis+sentinel://h:26379/m/2"})
    assert is_redis_broker(settings)


def test_passwords_in_a_sentinel_url_are_never_shown():
    shown = redacted_url(URL + "?sentinel_password=sentinel-pw")
    assert "data-pw" not in shown and "sentinel-pw" not in shown
    assert "10.0.0.1:26379,10.0.0.2,[::1]:26380/prod-state/4" in shown


def test_celery_reaches_the_same_master_through_kombus_sentinel_transport():
    settings = load_settings({"REDIS_URL": URL + "?sentinel_password=sentinel-pw"})
    conf = celery_settings(settings)
    assert conf["broker_url"] == (
        "sentinel://:data-pw@10.0.0.1:26379/4;sentinel://:data-pw@10.0.0.2:26379/4;"
        "sentinel://:data-pw@[::1]:26380/4"
    )
    assert conf["broker_read_url"] == conf["broker_write_url"] == conf["broker_url"]
    assert conf["broker_transport"] == "workers.kombu_redis:SentinelTransport"
    options = conf["broker_transport_options"]
    assert options["master_name"] == "prod-state"
    assert options["sentinel_kwargs"]["password"] == "sentinel-pw"
    assert options["visibility_timeout"] == settings.broker_visibility_timeout_seconds


def test_the_receiver_takes_the_one_script_path_when_broker_and_state_share_the_master():
    settings = load_settings({"REDIS_URL": URL})
    app = broker.celery_app(settings)
    # kombu's connection, read back as the URL it came from
    assert (
        broker_url(app)
        == "redis+sentinel://:data-pw@10.0.0.1:26379,10.0.0.2:26379,[::1]:26380/prod-state/4"
    )
    assert SingleScriptHandoff.applies(app, settings.redis_url)
    # hosts in another order are the same sentinels
    assert SingleScriptHandoff.applies(
        app, "redis+sentinel://:data-pw@[::1]:26380,10.0.0.2:26379,10.0.0.1/prod-state/0"
    )
    assert not SingleScriptHandoff.applies(
        app, "redis+sentinel://:data-pw@10.0.0.1:26379/other-master/0"
    )
    assert not SingleScriptHandoff.applies(app, "redis://10.0.0.1:6379/0")
