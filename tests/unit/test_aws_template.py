"""`batchgate aws template` and `batchgate aws package`, without AWS and without network."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from batchgate import App, Settings
from batchgate.app import Registry, load_app
from batchgate.aws import package as pkg
from batchgate.aws.template import (
    TemplateOptions,
    build_template,
    dump_template,
    format_for,
)
from batchgate.cli import main
from batchgate.errors import ConfigError

APP = Path(__file__).parents[1] / "apps" / "testapp.py"
REDIS = "rediss://redis.example.com:6379/0"
VPC: dict[str, Any] = {
    "subnet_ids": ("subnet-0123456789abcdef0", "subnet-0123456789abcdef1"),
    "security_group_ids": ("sg-0123456789abcdef0", "sg-0123456789abcdef1"),
    "route_table_ids": ("rtb-0123456789abcdef0",),
    "vpc_id": "vpc-0123456789abcdef0",
}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_app(str(APP)).registry()


def props(template: dict[str, Any], logical_id: str) -> dict[str, Any]:
    resource: dict[str, Any] = template["Resources"][logical_id]["Properties"]
    return resource


def types(template: dict[str, Any]) -> set[str]:
    return {resource["Type"] for resource in template["Resources"].values()}


def statements(template: dict[str, Any], logical_id: str) -> list[dict[str, Any]]:
    return [s for p in props(template, logical_id)["Policies"] for s in p["Statement"]]


def test_esm_template(registry: Registry) -> None:
    t = build_template(registry, TemplateOptions(redis_url=REDIS))
    assert t["Transform"] == "AWS::Serverless-2016-10-31"
    # testapp's longest timeout is 60 s: the worker gets 60 + 30, the queue 6 x that.
    worker = props(t, "WorkerFunction")
    assert worker["Handler"] == "batchgate.aws.sqs_handler"
    assert worker["Timeout"] == 90
    queue = props(t, "Queue")
    assert queue["VisibilityTimeout"] == 6 * 90
    # flaky has retries=3, so 4 attempts; 3 crash retries and one more crash; the receive
    # that gives up; plus the margin of 3.
    assert queue["RedrivePolicy"]["maxReceiveCount"] == 4 + 3 + 1 + 1 + 3
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {
        "Fn::GetAtt": ["DeadLetterQueue", "Arn"]
    }
    esm = props(t, "WorkerEventSource")
    assert esm["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert esm["ScalingConfig"] == {"MaximumConcurrency": {"Ref": "WorkerMaxConcurrency"}}
    assert esm["BatchSize"] == {"Ref": "WorkerBatchSize"}
    assert esm["MaximumBatchingWindowInSeconds"] == {"Ref": "WorkerBatchingWindow"}
    assert "FeederFunction" not in t["Resources"]
    assert "StateCache" not in t["Resources"]
    assert t["Parameters"]["RedisUrl"]["Default"] == REDIS
    assert t["Parameters"]["RedisUrl"]["NoEcho"] is True
    assert set(t["Outputs"]) == {"GatewayUrl", "QueueUrl", "DeadLetterQueueUrl", "BucketName"}


def test_gateway_function(registry: Registry) -> None:
    t = build_template(registry, TemplateOptions(redis_url=REDIS))
    gateway = props(t, "GatewayFunction")
    assert gateway["Handler"] == "batchgate.aws.gateway_handler"
    assert gateway["Timeout"] == 900
    assert gateway["FunctionUrlConfig"] == {"AuthType": "AWS_IAM", "InvokeMode": "BUFFERED"}
    assert gateway["Environment"]["Variables"]["BATCHGATE_MAX_WAIT"] == "880"
    assert t["Parameters"]["ApiKeys"]["Default"] == ""
    assert t["Globals"]["Function"]["CodeUri"] == "dist/batchgate-lambda.zip"
    assert t["Globals"]["Function"]["Runtime"] in ("python3.11", "python3.12")
    assert t["Globals"]["Function"]["Architectures"] == [{"Ref": "Architecture"}]


def test_public_url_needs_the_explicit_option_and_api_keys(registry: Registry) -> None:
    t = build_template(registry, TemplateOptions(redis_url=REDIS, public_url=True))
    assert props(t, "GatewayFunction")["FunctionUrlConfig"]["AuthType"] == "NONE"
    assert "Default" not in t["Parameters"]["ApiKeys"]
    assert t["Parameters"]["ApiKeys"]["MinLength"] == 1


def test_feeder_template(registry: Registry) -> None:
    t = build_template(registry, TemplateOptions(workers="feeder", redis_url=REDIS))
    feeder = props(t, "FeederFunction")
    assert feeder["Handler"] == "batchgate.aws.feeder_handler"
    assert feeder["RecursiveLoop"] == "Allow"
    assert feeder["Timeout"] == 900  # long hops: billed by the time they run
    controller = props(t, "ControllerFunction")
    env = controller["Environment"]["Variables"]
    assert env["FEEDER_FUNCTION_NAME"] == {"Ref": "FeederFunction"}
    assert env["FEEDER_MIN_CHAINS"] == {"Ref": "MinChains"}
    assert env["FEEDER_TASKS_PER_CHAIN"] == {"Ref": "TasksPerChain"}
    assert controller["Events"]["EveryMinute"] == {
        "Type": "Schedule",
        "Properties": {"Schedule": "rate(1 minute)"},
    }
    controller_actions = [s["Action"] for s in statements(t, "ControllerFunction")]
    assert ["lambda:InvokeFunction"] in controller_actions
    assert ["s3:GetObject"] in controller_actions  # the kill switch only
    assert {"Fn::Sub": "${Bucket.Arn}/control/*"} in [
        s["Resource"] for s in statements(t, "ControllerFunction")
    ]
    self_invoke = props(t, "FeederSelfInvokePolicy")
    assert self_invoke["Roles"] == [{"Ref": "FeederFunctionRole"}]
    assert self_invoke["PolicyDocument"]["Statement"][0]["Resource"] == {
        "Fn::GetAtt": ["FeederFunction", "Arn"]
    }
    assert "WorkerEventSource" not in t["Resources"]
    assert "WorkerBatchSize" not in t["Parameters"]
    assert "MaxChains" in t["Parameters"]


def test_vpc_gets_endpoints_and_elasticache_instead_of_nat(registry: Registry) -> None:
    t = build_template(registry, TemplateOptions(workers="feeder", **VPC))
    assert "AWS::EC2::NatGateway" not in types(t)
    sqs, lam, s3 = props(t, "SqsEndpoint"), props(t, "LambdaEndpoint"), props(t, "S3Endpoint")
    assert sqs["VpcEndpointType"] == lam["VpcEndpointType"] == "Interface"
    assert sqs["PrivateDnsEnabled"] is True
    assert s3["VpcEndpointType"] == "Gateway"
    assert s3["RouteTableIds"] == {"Ref": "RouteTableIds"}
    assert t["Parameters"]["RouteTableIds"]["Default"] == "rtb-0123456789abcdef0"
    assert t["Parameters"]["VpcId"]["Default"] == "vpc-0123456789abcdef0"
    assert t["Globals"]["Function"]["VpcConfig"] == {
        "SubnetIds": {"Ref": "SubnetIds"},
        "SecurityGroupIds": {"Ref": "SecurityGroupIds"},
    }
    cache = props(t, "StateCache")
    assert t["Resources"]["StateCache"]["Type"] == "AWS::ElastiCache::ServerlessCache"
    assert cache["Engine"] == "valkey"
    assert cache["SubnetIds"] == {"Ref": "SubnetIds"}
    state = t["Globals"]["Function"]["Environment"]["Variables"]["BATCHGATE_STATE"]["Fn::Sub"]
    assert state.startswith("rediss://${StateCache.Endpoint.Address}")
    # One ingress rule per Lambda security group and port range: HTTPS and the cache.
    ingress = props(t, "BackendSecurityGroup")["SecurityGroupIngress"]
    assert [(r["FromPort"], r["ToPort"]) for r in ingress] == [(443, 443)] * 2 + [(6379, 6380)] * 2
    assert "StateEndpoint" in t["Outputs"]


def test_esm_in_a_vpc_needs_no_lambda_endpoint(registry: Registry) -> None:
    t = build_template(registry, TemplateOptions(**VPC))
    assert "SqsEndpoint" in t["Resources"]
    assert "LambdaEndpoint" not in t["Resources"]


def test_vpc_without_endpoints_or_ids(registry: Registry) -> None:
    options = TemplateOptions(
        subnet_ids=VPC["subnet_ids"], security_group_ids=VPC["security_group_ids"], endpoints=False
    )
    t = build_template(registry, options)
    assert "AWS::EC2::VPCEndpoint" not in types(t)
    assert "RouteTableIds" not in t["Parameters"]
    assert "Default" not in t["Parameters"]["VpcId"]  # asked for at deploy time


def test_bucket_is_private_and_expires_blobs(registry: Registry) -> None:
    t = build_template(registry, TemplateOptions(redis_url=REDIS))
    bucket = props(t, "Bucket")
    assert set(bucket["PublicAccessBlockConfiguration"].values()) == {True}
    rules = bucket["LifecycleConfiguration"]["Rules"]
    expiring = {r["Prefix"]: r["ExpirationInDays"] for r in rules if "Prefix" in r}
    days = {"Ref": "ResultRetentionDays"}
    assert expiring == {prefix: days for prefix in ("inputs/", "outputs/", "results/", "payloads/")}
    assert t["Parameters"]["ResultRetentionDays"]["Default"] == 1


@pytest.mark.parametrize("workers", ["esm", "feeder"])
def test_iam_is_scoped_to_the_stacks_resources(registry: Registry, workers: str) -> None:
    t = build_template(registry, TemplateOptions(workers=workers, **VPC))  # type: ignore[arg-type]
    functions = [k for k, v in t["Resources"].items() if v["Type"] == "AWS::Serverless::Function"]
    assert len(functions) == (2 if workers == "esm" else 3)
    for name in functions:
        for statement in statements(t, name):
            assert statement["Effect"] == "Allow"
            assert "*" not in json.dumps(statement["Action"])
            assert statement["Resource"] != "*", (name, statement)
    worker = "WorkerFunction" if workers == "esm" else "FeederFunction"
    actions = {a for s in statements(t, worker) for a in s["Action"]}
    assert {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:SendMessage",
        "sqs:GetQueueAttributes",
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:ListBucket",
    } <= actions


def test_environment_is_what_settings_accepts(registry: Registry) -> None:
    t = build_template(registry, TemplateOptions(**VPC))
    names = set(t["Globals"]["Function"]["Environment"]["Variables"])
    for resource in t["Resources"].values():
        names |= set(resource.get("Properties", {}).get("Environment", {}).get("Variables", {}))
    ours = {n for n in names if n.startswith("BATCHGATE_")}
    assert {"BATCHGATE_QUEUE", "BATCHGATE_STATE", "BATCHGATE_STORE"} <= ours
    # Settings refuses unknown BATCHGATE_* names; the literal values must parse.
    env = dict.fromkeys(ours, "x") | {
        "BATCHGATE_MAX_WAIT": "880",
        "BATCHGATE_RESULT_TTL": "1d",
        "BATCHGATE_API_KEYS": "",
    }
    settings = Settings.load(env=env)
    assert settings.max_wait_s == 880
    assert settings.result_ttl_s == 86400


def test_longer_functions_get_longer_workers_and_visibility() -> None:
    app = App("slow")
    app.function(lambda p: p, name="slow", timeout=600, retries=5)
    t = build_template(app.registry(), TemplateOptions(redis_url=REDIS))
    assert props(t, "WorkerFunction")["Timeout"] == 630
    assert props(t, "Queue")["VisibilityTimeout"] == 6 * 630
    assert props(t, "Queue")["RedrivePolicy"]["maxReceiveCount"] == 6 + 3 + 1 + 1 + 3
    capped = App("capped")
    capped.function(lambda p: p, name="capped", timeout=885)
    assert props(build_template(capped.registry(), TemplateOptions(redis_url=REDIS)),
                 "WorkerFunction")["Timeout"] == 900  # fmt: skip


def test_worker_timeout_override(registry: Registry) -> None:
    t = build_template(registry, TemplateOptions(redis_url=REDIS, worker_timeout_s=300))
    assert props(t, "WorkerFunction")["Timeout"] == 300
    with pytest.raises(ConfigError, match="worker timeout"):
        build_template(registry, TemplateOptions(redis_url=REDIS, worker_timeout_s=65))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (TemplateOptions(), "ElastiCache"),
        (TemplateOptions(redis_url=REDIS, subnet_ids=("subnet-1",)), "go together"),
        (TemplateOptions(redis_url=REDIS, route_table_ids=("rtb-1",)), "need --subnets"),
        (TemplateOptions(redis_url="http://redis"), "redis://"),
        (TemplateOptions(redis_url=REDIS, gateway_timeout_s=901), "gateway timeout"),
        (TemplateOptions(redis_url=REDIS, workers="lambda"), "workers"),  # type: ignore[arg-type]
    ],
)
def test_bad_options_are_config_errors(
    registry: Registry, options: TemplateOptions, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        build_template(registry, options)


def test_functions_lambda_cannot_run_are_refused() -> None:
    app = App("too-slow")
    app.function(lambda p: p, name="hour", timeout=3600)
    with pytest.raises(ConfigError, match="'hour' may run 3600 s"):
        build_template(app.registry(), TemplateOptions(redis_url=REDIS))
    with pytest.raises(ConfigError, match="no functions"):
        build_template(App("empty").registry(), TemplateOptions(redis_url=REDIS))


def test_build_is_pure(registry: Registry) -> None:
    options = TemplateOptions(workers="feeder", **VPC)
    first = build_template(registry, options)
    assert build_template(registry, options) == first
    assert json.loads(dump_template(first, "json")) == first


def test_yaml_round_trips_without_anchors(registry: Registry) -> None:
    t = build_template(registry, TemplateOptions(workers="feeder", **VPC))
    text = dump_template(t, "yaml")
    assert "&id" not in text
    assert yaml.safe_load(text) == t
    assert text.startswith("AWSTemplateFormatVersion: '2010-09-09'\n")


def test_format_for() -> None:
    assert format_for("template.json") == "json"
    assert format_for("template.yaml") == format_for(None) == "yaml"


def test_cli_template(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "template.json"
    subnets = ",".join(VPC["subnet_ids"])
    result = runner.invoke(
        main,
        ["aws", "template", str(APP), "--workers", "feeder", "--subnets", subnets,
         "--security-groups", "sg-0123456789abcdef0", "--route-tables", "rtb-1,rtb-2",
         "-o", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    t = json.loads(out.read_text())
    assert props(t, "FeederFunction")["RecursiveLoop"] == "Allow"
    assert t["Parameters"]["RouteTableIds"]["Default"] == "rtb-1,rtb-2"
    assert t["Metadata"]["batchgate"]["app"] == "testapp"
    result = runner.invoke(main, ["aws", "template", str(APP), "--redis-url", REDIS])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["Resources"]["WorkerFunction"]
    result = runner.invoke(main, ["aws", "template", str(APP)])
    assert result.exit_code == 2
    assert "ElastiCache" in result.stderr


def test_requirements_are_batchgates_runtime_and_extras() -> None:
    names = {r.split(">")[0].split("=")[0].split("[")[0] for r in pkg.batchgate_requirements()}
    assert {"starlette", "uvicorn", "redis", "aiobotocore", "pyyaml"} <= names
    assert not names & {"pytest", "moto", "ruff", "mypy"}


def test_pip_command_targets_lambdas_platform(tmp_path: Path) -> None:
    command = pkg.pip_command(tmp_path, "arm64", requirements_file=Path("req.txt"))
    assert command[command.index("--platform") + 1] == "manylinux2014_aarch64"
    assert command[command.index("--python-version") + 1] == "3.12"
    assert "--only-binary=:all:" in command
    assert command[-2:] == ["-r", "req.txt"]
    assert command[command.index("--target") + 1] == str(tmp_path)


def test_package_without_deps(tmp_path: Path) -> None:
    out = tmp_path / "dist" / "lambda.zip"
    result = CliRunner().invoke(main, ["aws", "package", str(APP), "-o", str(out), "--no-deps"])
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(out) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read(pkg.MANIFEST_NAME))
        assert archive.getinfo("testapp.py").external_attr >> 16 == 0o644
    assert {"testapp.py", "batchgate/__init__.py", "batchgate/aws/template.py"} <= names
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in names)
    assert manifest["app"] == "testapp:app"
    assert {f["name"] for f in manifest["functions"]} >= {"echo", "square"}
    # The same input gives the same bytes.
    again = tmp_path / "again.zip"
    pkg.build_package(str(APP), again, with_deps=False)
    assert again.read_bytes() == out.read_bytes()


def test_package_for_this_python_ships_bytecode_python_uses(tmp_path: Path) -> None:
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    report = pkg.build_package(str(APP), tmp_path / "l.zip", with_deps=False, python_version=here)
    assert report.bytecode
    code = tmp_path / "code"
    with zipfile.ZipFile(report.path) as archive:
        archive.extractall(code)
        pyc = archive.read(importlib.util.cache_from_source("batchgate/aws/runtime.py"))
    assert int.from_bytes(pyc[4:8], "little") == 0b01  # hash-based, source never checked
    # A changed source does not matter: the (read-only, on Lambda) compiled module is used.
    with (code / "testapp.py").open("a") as source:
        source.write("raise RuntimeError('the source was compiled again')\n")
    imported = subprocess.run(
        [sys.executable, "-B", "-c", "import testapp, batchgate.aws.runtime"],
        cwd=code, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr


def test_package_for_another_python_says_it_has_no_bytecode(tmp_path: Path) -> None:
    out = tmp_path / "l.zip"
    result = CliRunner().invoke(
        main, ["aws", "package", str(APP), "-o", str(out), "--no-deps", "--python-version", "3.1"]
    )
    assert result.exit_code == 0, result.output
    assert "no compiled modules" in result.stderr


def test_package_refuses_a_broken_app(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("app = 1\n")
    with pytest.raises(ConfigError, match=r"not a batchgate\.App"):
        pkg.build_package(str(bad), tmp_path / "x.zip", with_deps=False)


def test_package_refuses_a_bad_python_version(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["aws", "package", str(APP), "-o", str(tmp_path / "x.zip"), "--python-version", "x"]
    )
    assert result.exit_code == 2
    assert "python version must be like 3.12" in result.output
    assert not (tmp_path / "x.zip").exists()


def test_cli_feeding_flips_the_kill_switch(tmp_path: Path) -> None:
    store = f"file://{tmp_path}/store"
    runner = CliRunner()
    for switch, shown in [("status", "off"), ("on", "on"), ("status", "on"), ("off", "off")]:
        result = runner.invoke(main, ["aws", "feeding", switch, "--store", store])
        assert result.exit_code == 0, result.output
        assert result.output == f"feeding is {shown}\n"
    assert not (tmp_path / "store" / "control" / "keep-feeding").exists()
    result = runner.invoke(main, ["aws", "feeding", "on", "--store", "bogus://x"])
    assert result.exit_code == 2
    assert "unknown store URL scheme" in result.output
