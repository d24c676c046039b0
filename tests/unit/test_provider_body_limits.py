"""MAX_BODY_BYTES_<PROVIDER> (issue 15, item 3): each provider's body limit, validated
at start with the variable's name in the error.

Defaults: RunPod and fal send outputs inline and take 20 MiB (or MAX_BODY_BYTES, if
larger); every other provider takes MAX_BODY_BYTES.
"""

from __future__ import annotations

import pytest

from webhook_ingest.config import ConfigError, load_settings
from webhook_ingest.providers import load_providers

MIB = 1024 * 1024


def limits(**environ: str) -> dict[str, int]:
    providers = load_providers(load_settings(environ), environ)
    return {name: provider.max_body_bytes for name, provider in providers.items()}


def test_runpod_and_fal_take_20_mib_by_default_and_the_others_max_body_bytes():
    assert limits() == {
        "openai": MIB,
        "replicate": MIB,
        "stability": MIB,
        "fal": 20 * MIB,
        "runpod": 20 * MIB,
    }
    assert limits(MAX_BODY_BYTES="65536")["replicate"] == 65536
    assert limits(MAX_BODY_BYTES="65536")["runpod"] == 20 * MIB


def test_a_max_body_bytes_above_20_mib_raises_runpod_and_fal_too():
    assert limits(MAX_BODY_BYTES=str(32 * MIB))["runpod"] == 32 * MIB
    assert limits(MAX_BODY_BYTES=str(32 * MIB))["fal"] == 32 * MIB


def test_the_provider_variable_overrides_either_default_both_ways():
    found = limits(MAX_BODY_BYTES_RUNPOD="5000000", MAX_BODY_BYTES_REPLICATE="2097152")

    assert found["runpod"] == 5_000_000
    assert found["replicate"] == 2_097_152
    assert found["fal"] == 20 * MIB
    assert found["openai"] == MIB


@pytest.mark.parametrize("value", ["0", "-1", "20MB", "1e6", "2.5", "abc", "²", "1" * 16])
def test_a_bad_value_stops_the_start_naming_the_variable(value):
    with pytest.raises(ConfigError, match="MAX_BODY_BYTES_RUNPOD: expected a whole number"):
        limits(MAX_BODY_BYTES_RUNPOD=value)


def test_a_misspelt_provider_name_stops_the_start():
    with pytest.raises(ConfigError, match="MAX_BODY_BYTES_RUNPD: no such provider"):
        limits(MAX_BODY_BYTES_RUNPD="5000000")


def test_an_empty_value_means_unset():
    assert limits(MAX_BODY_BYTES_RUNPOD="", MAX_BODY_BYTES_NOPE="")["runpod"] == 20 * MIB
