"""The ``[webhooks]`` keys of SES over SNS: checked at load time, each problem naming its key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trustme

from otpd.config import load_config
from otpd.errors import ConfigError


def test_the_defaults_refuse_every_topic_and_allow_only_sns_hosts() -> None:
    config = load_config(env={}, data={}).webhooks
    assert (config.sns_topic_arns, config.sns_ca_file, config.sns_max_age_seconds) == ((), "", 3600)
    cert = re.compile(config.sns_cert_url_pattern)
    assert cert.fullmatch(
        "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-01d088a6f77103d0fe307c0069e40ed6.pem"
    )
    assert cert.fullmatch(
        "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-ab.pem"
    )
    for url in (
        "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-ab.pem",
        "https://sns.us-east-1.amazonaws.com.evil.example/SimpleNotificationService-ab.pem",
        "https://evil.example/sns.us-east-1.amazonaws.com/SimpleNotificationService-ab.pem",
        "https://sns.us-east-1.amazonaws.com@evil.example/SimpleNotificationService-ab.pem",
    ):
        assert cert.fullmatch(url) is None, url
    subscribe = re.compile(config.sns_subscribe_url_pattern)
    assert subscribe.fullmatch(
        "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription"
        "&TopicArn=arn:aws:sns:us-west-2:123456789012:MyTopic&Token=2336412f37"
    )
    assert (
        subscribe.fullmatch("https://sns.us-west-2.amazonaws.com.evil/?Action=ConfirmSubscription&")
        is None
    )


def test_topics_come_from_the_environment_as_a_json_list() -> None:
    arn = "arn:aws:sns:us-east-1:123456789012:otpd-ses"
    config = load_config(env={"OTPD_WEBHOOKS__SNS_TOPIC_ARNS": f'["{arn}"]'}, data={})
    assert config.webhooks.sns_topic_arns == (arn,)


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"sns_topic_arns": ["otpd-ses"]}, "webhooks.sns_topic_arns"),
        ({"sns_cert_url_pattern": "^https://(unclosed"}, "webhooks.sns_cert_url_pattern"),
        ({"sns_subscribe_url_pattern": ""}, "webhooks.sns_subscribe_url_pattern"),
        ({"sns_ca_file": "/nonexistent/ca.pem"}, "webhooks.sns_ca_file"),
        ({"sns_max_age_seconds": 10}, "webhooks.sns_max_age_seconds"),
    ],
)
def test_a_bad_webhooks_value_is_refused_naming_its_key(
    values: dict[str, object], key: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(env={}, data={"webhooks": values})


def test_a_ca_file_without_certificates_is_refused_and_a_pem_one_accepted(tmp_path: Path) -> None:
    path = tmp_path / "ca.pem"
    path.write_text("no certificate here\n")
    with pytest.raises(ConfigError, match=r"webhooks\.sns_ca_file"):
        load_config(env={}, data={"webhooks": {"sns_ca_file": str(path)}})
    trustme.CA().cert_pem.write_to_path(path)
    assert load_config(env={}, data={"webhooks": {"sns_ca_file": str(path)}}).webhooks.sns_ca_file
