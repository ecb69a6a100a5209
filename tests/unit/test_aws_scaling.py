"""The Lambda handlers' pure parts: chain targets, wait limits, SQS records, feeder events."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from batchgate import Settings
from batchgate.aws.controller import ControllerConfig, target_chains
from batchgate.aws.feeder import hop_event, parse_event
from batchgate.aws.gateway import API_GATEWAY_WAIT_S, via_api_gateway, wait_limit_s
from batchgate.aws.sqs_worker import deliveries_of, record_message
from batchgate.errors import ConfigError

URL_ID = "abcdefghijklmnopqrstuvwxyz012345"
API_ID = "a1b2c3d4e5"

FUNCTION_URL = {
    "version": "2.0",
    "requestContext": {
        "apiId": URL_ID,
        "domainName": f"{URL_ID}.lambda-url.us-east-1.on.aws",
        "http": {"method": "GET", "path": "/healthz"},
    },
}
HTTP_API = {
    "version": "2.0",
    "requestContext": {
        "apiId": API_ID,
        "domainName": f"{API_ID}.execute-api.us-east-1.amazonaws.com",
        "http": {"method": "GET", "path": "/healthz"},
    },
}
REST_API = {
    "resource": "/{proxy+}",
    "httpMethod": "GET",
    "path": "/healthz",
    "requestContext": {
        "apiId": API_ID,
        "domainName": f"{API_ID}.execute-api.us-east-1.amazonaws.com",
        "stage": "prod",
    },
}
ALB = {
    "httpMethod": "GET",
    "path": "/healthz",
    "requestContext": {"elb": {"targetGroupArn": "arn:aws:elasticloadbalancing:…"}},
}


# --- controller: target_chains and its configuration ------------------------------------


CONFIG = ControllerConfig("feeder", max_chains=3, min_chains=1, tasks_per_chain=2)


@pytest.mark.parametrize(
    ("demand", "current", "target"),
    [
        (0, 0, 1),  # the minimum runs with nothing to do
        (5, 0, 3),  # ceil(5 / 2), reached at once
        (1, 1, 1),
        (100, 1, 3),  # never above the maximum
        (0, 3, 2),  # down by one a run
        (2, 3, 2),
        (4, 3, 2),
        (6, 2, 3),
    ],
)
def test_target_chains(demand: int, current: int, target: int) -> None:
    assert target_chains(demand, current, CONFIG) == target


def test_target_chains_drops_to_a_lowered_maximum_at_once() -> None:
    assert target_chains(0, 5, CONFIG) == 3
    stop_all = ControllerConfig("feeder", max_chains=0, min_chains=0, tasks_per_chain=2)
    assert target_chains(100, 4, stop_all) == 0


def test_target_chains_with_no_minimum_goes_to_zero() -> None:
    config = ControllerConfig("feeder", max_chains=3, min_chains=0, tasks_per_chain=2)
    assert target_chains(0, 0, config) == 0
    assert target_chains(0, 1, config) == 0


def test_controller_config_from_env() -> None:
    env = {
        "FEEDER_FUNCTION_NAME": "stack-FeederFunction-1A2B3C",
        "FEEDER_MAX_CHAINS": "4",
        "FEEDER_TASKS_PER_CHAIN": "5",
    }
    assert ControllerConfig.from_env(env) == ControllerConfig(
        "stack-FeederFunction-1A2B3C", max_chains=4, min_chains=1, tasks_per_chain=5
    )
    # the minimum never exceeds the maximum
    config = ControllerConfig.from_env({**env, "FEEDER_MAX_CHAINS": "0"})
    assert (config.max_chains, config.min_chains) == (0, 0)


BASE_ENV = {"FEEDER_FUNCTION_NAME": "f", "FEEDER_MAX_CHAINS": "2"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FEEDER_MAX_CHAINS": "2"}, "FEEDER_FUNCTION_NAME"),
        ({"FEEDER_FUNCTION_NAME": "f"}, "FEEDER_MAX_CHAINS"),
        ({**BASE_ENV, "FEEDER_MAX_CHAINS": "two"}, "FEEDER_MAX_CHAINS"),
        ({**BASE_ENV, "FEEDER_MAX_CHAINS": "-1"}, "FEEDER_MAX_CHAINS"),
        ({**BASE_ENV, "FEEDER_MIN_CHAINS": ""}, "FEEDER_MIN_CHAINS"),
        ({**BASE_ENV, "FEEDER_TASKS_PER_CHAIN": "0"}, "FEEDER_TASKS_PER_CHAIN"),
        ({**BASE_ENV, "FEEDER_TASKS_PER_CHAIN": "1.5"}, "FEEDER_TASKS_PER_CHAIN"),
    ],
)
def test_controller_config_refuses(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ControllerConfig.from_env(env)


# --- gateway: how long a request may wait ------------------------------------------------


@pytest.mark.parametrize(
    ("event", "through_api_gateway"),
    [(FUNCTION_URL, False), (HTTP_API, True), (REST_API, True), (ALB, False), ({}, False)],
)
def test_via_api_gateway(event: dict[str, Any], through_api_gateway: bool) -> None:
    assert via_api_gateway(event) is through_api_gateway


def test_wait_limit_is_the_remaining_time_less_the_reply_margin() -> None:
    settings = Settings.load(env={})  # max wait 900 s
    assert wait_limit_s(settings, FUNCTION_URL, 60.0, {}) == pytest.approx(57.0)
    assert wait_limit_s(settings, FUNCTION_URL, 5.0, {}) == pytest.approx(2.0)
    assert wait_limit_s(settings, FUNCTION_URL, 2.0, {}) == 0.0
    assert wait_limit_s(settings, FUNCTION_URL, 2000.0, {}) == 900.0


def test_wait_limit_behind_api_gateway_keeps_under_its_integration_timeout() -> None:
    settings = Settings.load(env={})
    for event in (HTTP_API, REST_API):
        assert wait_limit_s(settings, event, 900.0, {}) == API_GATEWAY_WAIT_S
        assert wait_limit_s(settings, event, 10.0, {}) == pytest.approx(7.0)


def test_an_explicit_max_wait_overrides_the_api_gateway_default() -> None:
    env = {"BATCHGATE_MAX_WAIT": "100"}
    settings = Settings.load(env=env)
    assert wait_limit_s(settings, REST_API, 900.0, env) == 100.0
    assert wait_limit_s(settings, FUNCTION_URL, 900.0, env) == 100.0
    assert wait_limit_s(settings, HTTP_API, 50.0, env) == pytest.approx(47.0)


# --- sqs_worker: Lambda's SQS records as deliveries --------------------------------------


def sqs_record(message_id: str, body: str, receive_count: int, **attributes: str) -> dict[str, Any]:
    """An SQS record as Lambda's event source mapping hands it over."""
    return {
        "messageId": message_id,
        "receiptHandle": f"AQEB{message_id}handle==",
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": str(receive_count),
            "SentTimestamp": "1700000000000",
            "SenderId": "AIDAIENQZJOLO23YVJ4VO",
            "ApproximateFirstReceiveTimestamp": "1700000000100",
        },
        "messageAttributes": {
            name: {
                "stringValue": value,
                "stringListValues": [],
                "binaryListValues": [],
                "dataType": "String",
            }
            for name, value in attributes.items()
        },
        "md5OfBody": "0" * 32,
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:bg-queue",
        "awsRegion": "us-east-1",
    }


def test_record_message_is_receive_message_shaped() -> None:
    record = sqs_record("m-1", "hello", 2, **{"bg-id": "job-msg-1"})
    assert record_message(record) == {
        "MessageId": "m-1",
        "ReceiptHandle": "AQEBm-1handle==",
        "Body": "hello",
        "Attributes": record["attributes"],
        "MessageAttributes": {"bg-id": {"StringValue": "job-msg-1", "DataType": "String"}},
    }


def test_deliveries_of_an_sqs_event() -> None:
    binary = b"\x00\xffraw"
    event = {
        "Records": [
            sqs_record("m-1", '{"plain": true}', 1, **{"bg-id": "bg-1"}),
            sqs_record(
                "m-2",
                base64.b64encode(binary).decode(),
                3,
                **{"bg-id": "bg-2", "bg-enc": "base64"},
            ),
            sqs_record("m-3", "no batchgate attributes", 1),
        ]
    }
    [(mid1, d1), (mid2, d2), (mid3, d3)] = deliveries_of(event, 1234.5)
    assert (mid1, d1.message_id, d1.body, d1.attempt) == ("m-1", "bg-1", b'{"plain": true}', 1)
    assert d1.receipt == "1234.500000:AQEBm-1handle=="
    assert (mid2, d2.message_id, d2.body, d2.attempt) == ("m-2", "bg-2", binary, 3)
    assert (mid3, d3.message_id) == ("m-3", "m-3")  # SQS's id when batchgate's is missing


@pytest.mark.parametrize("event", [{}, {"Records": None}, {"chain": "x"}])
def test_deliveries_of_refuses_other_events(event: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="SQS event"):
        deliveries_of(event, 0.0)


# --- feeder: its event --------------------------------------------------------------------


def test_parse_event() -> None:
    assert parse_event({"chain": "tok", "hop": 7}) == ("tok", 7)
    assert parse_event({"chain": "tok"}) == ("tok", 0)
    assert parse_event(json.loads(hop_event("tok", 3))) == ("tok", 3)


@pytest.mark.parametrize(
    "event",
    [
        None,
        [],
        {},
        {"hop": 1},
        {"chain": 5, "hop": 1},
        {"chain": "tok", "hop": -1},
        {"chain": "tok", "hop": "1"},
        {"chain": "tok", "hop": 1.0},
        {"chain": "tok", "hop": True},
    ],
)
def test_parse_event_refuses(event: Any) -> None:
    with pytest.raises(ConfigError):
        parse_event(event)
