"""The SAM template, translated offline by aws-sam-translator and linted by cfn-lint.

No network: the translator gets a fake managed-policy loader and a region from the
environment, and cfn-lint checks against its bundled us-east-1 resource schemas.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import lint
from cfnlint.decode.cfn_yaml import loads as load_cfn_yaml
from samtranslator.model.exceptions import InvalidDocumentException
from samtranslator.translator.transform import transform

from batchgate.app import Registry, load_app
from batchgate.aws.template import TemplateOptions, build_template, dump_template

APP = Path(__file__).parents[1] / "apps" / "testapp.py"
REGION = "us-east-1"
# `sam deploy` uploads the local zip and rewrites CodeUri to this form before the transform.
UPLOADED = "s3://batchgate-artifacts-example/batchgate-lambda.zip"
VPC = {
    "subnet_ids": ("subnet-0123456789abcdef0", "subnet-0123456789abcdef1"),
    "security_group_ids": ("sg-0123456789abcdef0", "sg-0123456789abcdef1"),
    "route_table_ids": ("rtb-0123456789abcdef0",),
    "vpc_id": "vpc-0123456789abcdef0",
}
VARIANTS: dict[str, dict[str, Any]] = {
    "esm": {"workers": "esm", "redis_url": "rediss://redis.example.com:6379/0"},
    "feeder": {"workers": "feeder", "redis_url": "redis://redis.example.com:6379/0"},
    "esm-vpc": {"workers": "esm", **VPC},
    "feeder-vpc": {"workers": "feeder", **VPC},
    "feeder-vpc-redis-url-public": {
        "workers": "feeder",
        "redis_url": "rediss://redis.example.com:6379/0",
        "public_url": True,
        **VPC,
    },
    "esm-vpc-no-endpoints": {"workers": "esm", "endpoints": False, "cache_engine": "redis", **VPC},
}


class NoManagedPolicies:
    """The translator's managed-policy loader, offline: the template names no managed policy."""

    def load(self) -> dict[str, str]:
        return {}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_app(str(APP)).registry()


@pytest.fixture(autouse=True)
def offline_region(monkeypatch: pytest.MonkeyPatch) -> None:
    # The translator asks a boto3 session for its region; no credentials are needed.
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)


def translate(sam: dict[str, Any]) -> dict[str, Any]:
    cfn: dict[str, Any] = transform(copy.deepcopy(sam), {}, NoManagedPolicies())  # type: ignore[arg-type]
    return cfn


def check(sam: dict[str, Any]) -> list[str]:
    """Translate and lint: the errors (empty when the template is good)."""
    try:
        cfn = translate(sam)
    except InvalidDocumentException as exc:
        return [f"sam: {cause.message}" for cause in exc.causes]
    matches = lint(json.dumps(cfn), regions=[REGION])
    return [f"{m.rule.id}: {m.message} ({m.path_string})" for m in matches if m.rule.id[0] == "E"]


def template(registry: Registry, **options: Any) -> dict[str, Any]:
    return build_template(
        registry, TemplateOptions(code_uri=UPLOADED, app_name="testapp", **options)
    )


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_template_translates_and_lints_clean(registry: Registry, variant: str) -> None:
    assert check(template(registry, **VARIANTS[variant])) == []


@pytest.mark.parametrize("variant", ["esm-vpc", "feeder"])
def test_yaml_output_reads_back_through_cfn_lints_parser(registry: Registry, variant: str) -> None:
    sam = template(registry, **VARIANTS[variant])
    parsed = load_cfn_yaml(dump_template(sam, "yaml"))
    assert json.loads(json.dumps(parsed)) == sam
    assert check(json.loads(json.dumps(parsed))) == []


def test_feeder_keeps_recursive_loop_allow_after_translation(registry: Registry) -> None:
    cfn = translate(template(registry, **VARIANTS["feeder-vpc"]))
    feeder = cfn["Resources"]["FeederFunction"]
    assert feeder["Type"] == "AWS::Lambda::Function"
    assert feeder["Properties"]["RecursiveLoop"] == "Allow"
    rule = cfn["Resources"]["ControllerFunctionEveryMinute"]
    assert rule["Type"] == "AWS::Events::Rule"
    assert rule["Properties"]["ScheduleExpression"] == "rate(1 minute)"
    # The self-invoke policy lands on the role SAM made for the feeder.
    assert "FeederFunctionRole" in cfn["Resources"]


def test_public_url_gets_the_public_invoke_permissions(registry: Registry) -> None:
    cfn = translate(template(registry, **VARIANTS["feeder-vpc-redis-url-public"]))
    kinds = {
        res["Properties"]["Action"]
        for res in cfn["Resources"].values()
        if res["Type"] == "AWS::Lambda::Permission" and res["Properties"].get("Principal") == "*"
    }
    assert kinds == {"lambda:InvokeFunctionUrl", "lambda:InvokeFunction"}
    private = translate(template(registry, **VARIANTS["esm-vpc"]))
    assert not any(
        res["Type"] == "AWS::Lambda::Permission" for res in private["Resources"].values()
    )


def test_worker_roles_have_no_broad_sam_managed_sqs_policy(registry: Registry) -> None:
    cfn = translate(template(registry, **VARIANTS["esm"]))
    arns = cfn["Resources"]["WorkerFunctionRole"]["Properties"]["ManagedPolicyArns"]
    assert not any("SQS" in str(arn) for arn in arns)


# A deliberately broken template must fail the same check.


def test_a_missing_referenced_resource_fails(registry: Registry) -> None:
    sam = template(registry, **VARIANTS["esm"])
    del sam["Resources"]["Bucket"]
    errors = check(sam)
    assert errors and any("Bucket" in error for error in errors), errors


def test_a_timeout_over_lambdas_limit_fails(registry: Registry) -> None:
    sam = template(registry, **VARIANTS["esm"])
    sam["Resources"]["WorkerFunction"]["Properties"]["Timeout"] = 1000
    errors = check(sam)
    assert errors and any("Timeout" in error for error in errors), errors


def test_a_bad_recursive_loop_value_fails(registry: Registry) -> None:
    sam = template(registry, **VARIANTS["feeder"])
    sam["Resources"]["FeederFunction"]["Properties"]["RecursiveLoop"] = "Sometimes"
    errors = check(sam)
    assert errors and any("RecursiveLoop" in error for error in errors), errors


def test_a_bad_function_url_auth_type_fails_in_translation(registry: Registry) -> None:
    sam = template(registry, **VARIANTS["esm"])
    sam["Resources"]["GatewayFunction"]["Properties"]["FunctionUrlConfig"]["AuthType"] = "OPEN"
    errors = check(sam)
    assert errors and errors[0].startswith("sam: "), errors
