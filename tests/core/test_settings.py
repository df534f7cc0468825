from __future__ import annotations

import pytest

from flip_nvflare.constants import HubApi
from flip_nvflare.core.settings import (
    DEFAULT_HTTP_TIMEOUT,
    SettingsReader,
    check_url,
    parse_bucket,
    read_hub_settings,
    read_results_settings,
    read_trust_settings,
)
from flip_nvflare.errors import FlipConfigError


def test_missing_hub_settings_are_all_named() -> None:
    with pytest.raises(FlipConfigError) as err:
        read_hub_settings(SettingsReader({}, env={}))
    assert "FLIP_API_INTERNAL_URL" in str(err.value)
    assert "INTERNAL_SERVICE_KEY" in str(err.value)


def test_explicit_values_win_over_environment() -> None:
    env = {"FLIP_API_INTERNAL_URL": "http://env:1/api", "INTERNAL_SERVICE_KEY": "env-key"}
    reader = SettingsReader({"FLIP_API_INTERNAL_URL": "http://arg:2/api"}, env=env)
    hub = read_hub_settings(reader)
    assert hub.url == "http://arg:2/api"
    assert hub.key == "env-key"
    assert hub.key_header == "X-Internal-Service-Key"
    assert hub.hub_api is HubApi.H1
    assert hub.timeout == DEFAULT_HTTP_TIMEOUT


def test_empty_environment_value_counts_as_missing() -> None:
    with pytest.raises(FlipConfigError, match="INTERNAL_SERVICE_KEY"):
        read_hub_settings(SettingsReader({}, env={"FLIP_API_INTERNAL_URL": "http://x", "INTERNAL_SERVICE_KEY": " "}))


@pytest.mark.parametrize("value", ["abc", "-1", "0", "nan", "inf"])
def test_malformed_timeout_is_a_clear_error(value: str) -> None:
    env = {"FLIP_API_INTERNAL_URL": "http://x/api", "INTERNAL_SERVICE_KEY": "k", "FLIP_HTTP_TIMEOUT": value}
    with pytest.raises(FlipConfigError, match="FLIP_HTTP_TIMEOUT"):
        read_hub_settings(SettingsReader({}, env=env))


def test_hub_api_h2_and_bad_value() -> None:
    env = {"FLIP_API_INTERNAL_URL": "http://x/api", "INTERNAL_SERVICE_KEY": "k", "FLIP_HUB_API": "H2"}
    assert read_hub_settings(SettingsReader({}, env=env)).hub_api is HubApi.H2
    env["FLIP_HUB_API"] = "h3"
    with pytest.raises(FlipConfigError, match="FLIP_HUB_API"):
        read_hub_settings(SettingsReader({}, env=env))


def test_trust_settings_need_only_their_service() -> None:
    env = {"DATA_ACCESS_API_URL": "http://trust:8000/", "TRUST_INTERNAL_SERVICE_KEY": "t"}
    trust = read_trust_settings(SettingsReader({}, env=env), service="data-access-api")
    assert trust.data_access_url == "http://trust:8000/"
    assert trust.key_header == "X-Trust-Internal-Service-Key"
    with pytest.raises(FlipConfigError) as err:
        read_trust_settings(SettingsReader({}, env=env), service="imaging-api")
    assert "IMAGING_API_URL" in str(err.value) and "NET_ID" in str(err.value)
    assert "TRUST_INTERNAL_SERVICE_KEY" not in str(err.value)


def test_trust_settings_error_never_shows_the_key() -> None:
    env = {"DATA_ACCESS_API_URL": "ftp://nope", "TRUST_INTERNAL_SERVICE_KEY": "s3cr3t-key"}
    with pytest.raises(FlipConfigError) as err:
        read_trust_settings(SettingsReader({}, env=env), service="data-access-api")
    assert "s3cr3t-key" not in str(err.value)


@pytest.mark.parametrize("url", ["flip-api:8000", "ftp://x", "http://", ""])
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(FlipConfigError):
        check_url("FLIP_API_INTERNAL_URL", url)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("s3://bucket", ("bucket", "")),
        ("s3://bucket/", ("bucket", "")),
        ("s3://bucket/a/b/", ("bucket", "a/b")),
        ("bucket/prefix", ("bucket", "prefix")),
        ("bucket", ("bucket", "")),
    ],
)
def test_parse_bucket(value: str, expected: tuple[str, str]) -> None:
    assert parse_bucket(value) == expected


@pytest.mark.parametrize("value", ["s3://", "s3:///prefix", "https://bucket/x"])
def test_parse_bucket_refuses_nonsense(value: str) -> None:
    with pytest.raises(FlipConfigError):
        parse_bucket(value)


def test_results_settings_take_boto3_endpoint_variables() -> None:
    env = {"UPLOADED_FEDERATED_DATA_BUCKET": "s3://b/p", "AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}
    assert read_results_settings(SettingsReader({}, env=env)).endpoint_url == "http://127.0.0.1:9000"
    env["AWS_ENDPOINT_URL_S3"] = "http://127.0.0.1:9001"
    results = read_results_settings(SettingsReader({}, env=env))
    assert (results.bucket, results.prefix, results.endpoint_url) == ("b", "p", "http://127.0.0.1:9001")
