"""`batchgate aws template`: the SAM template that runs an app on AWS Lambda.

`build_template(registry, options)` is pure: it reads the functions' time limits and
retries from the registry and returns the template as a dict; `dump_template` writes it as
JSON or YAML. What it deploys (docs/deploy/aws.md has the why):

- an SQS queue and dead-letter queue; an S3 bucket whose blobs expire after
  ResultRetentionDays; Redis for job state: an ElastiCache Serverless cache in the given
  subnets, or an existing endpoint (RedisUrl);
- the gateway Lambda behind a Function URL (AWS_IAM auth unless `public_url`);
- workers: a Lambda on an SQS event source mapping (`esm`), or a self-re-invoking feeder
  Lambda plus a controller run every minute (`feeder`);
- with subnets: every Lambda in the VPC, and VPC endpoints for SQS (and Lambda, for the
  feeder) and S3 instead of a NAT gateway.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Literal

from batchgate import __version__
from batchgate.app import FunctionInfo, Registry
from batchgate.attempts import DEFAULT_CRASH_RETRIES, most_starts
from batchgate.aws import resources as res
from batchgate.aws.resources import Doc, get_att, ref, sub
from batchgate.errors import ConfigError

WorkersMode = Literal["esm", "feeder"]
CacheEngine = Literal["valkey", "redis"]
TemplateFormat = Literal["yaml", "json"]

RUNTIME = "python3.12"
DEFAULT_CODE_URI = "dist/batchgate-lambda.zip"
GATEWAY_HANDLER = "batchgate.aws.gateway_handler"
SQS_HANDLER = "batchgate.aws.sqs_handler"
FEEDER_HANDLER = "batchgate.aws.feeder_handler"
CONTROLLER_HANDLER = "batchgate.aws.controller_handler"
# Environment the controller reads (not BATCHGATE_*: Settings refuses names it does not know).
FEEDER_FUNCTION_ENV = "FEEDER_FUNCTION_NAME"
FEEDER_MAX_CHAINS_ENV = "FEEDER_MAX_CHAINS"
FEEDER_MIN_CHAINS_ENV = "FEEDER_MIN_CHAINS"
FEEDER_TASKS_PER_CHAIN_ENV = "FEEDER_TASKS_PER_CHAIN"

LAMBDA_MAX_TIMEOUT_S = 900  # Lambda's longest function timeout (15 min)
# A worker's timeout is the longest function's plus this (start-up, store I/O, ack).
WORKER_MARGIN_S = 30
MIN_WORKER_MARGIN_S = 10
# AWS's guidance for an SQS event source: queue visibility >= 6 x the function's timeout.
ESM_VISIBILITY_FACTOR = 6
# SQS's redrive is a backstop behind batchgate's own budgets: besides every start they allow
# and the receive that gives up, receives that start nothing (a Lambda killed at its
# timeout, a poll released during shutdown) get this much slack.
RECEIVE_COUNT_MARGIN = 3
# The gateway answers 202 + Location this long before its Lambda would time out.
GATEWAY_WAIT_MARGIN_S = 20
MIN_GATEWAY_TIMEOUT_S = 30
CONTROLLER_TIMEOUT_S = 60
CONTROLLER_SCHEDULE = "rate(1 minute)"


@dataclasses.dataclass(frozen=True, slots=True)
class TemplateOptions:
    """What `batchgate aws template` was asked for; see the module docstring."""

    workers: WorkersMode = "esm"
    subnet_ids: tuple[str, ...] = ()
    security_group_ids: tuple[str, ...] = ()
    route_table_ids: tuple[str, ...] = ()
    vpc_id: str | None = None
    endpoints: bool = True
    redis_url: str | None = None
    cache_engine: CacheEngine = "valkey"
    public_url: bool = False
    code_uri: str = DEFAULT_CODE_URI
    gateway_timeout_s: int = LAMBDA_MAX_TIMEOUT_S
    worker_timeout_s: int | None = None
    app_name: str = "batchgate"

    @property
    def in_vpc(self) -> bool:
        return bool(self.subnet_ids)

    @property
    def creates_cache(self) -> bool:
        return self.redis_url is None

    def validate(self) -> None:
        """Raise ConfigError for a combination that cannot make a working stack."""
        if self.workers not in ("esm", "feeder"):
            raise ConfigError(f"workers must be 'esm' or 'feeder', got {self.workers!r}")
        if self.cache_engine not in res.CACHE_MAJOR_VERSIONS:
            raise ConfigError(f"cache engine must be valkey or redis, got {self.cache_engine!r}")
        if bool(self.subnet_ids) != bool(self.security_group_ids):
            raise ConfigError("--subnets and --security-groups go together (the Lambdas' VPC)")
        if not self.in_vpc and (self.route_table_ids or self.vpc_id):
            raise ConfigError("--route-tables and --vpc-id need --subnets and --security-groups")
        if self.creates_cache and not self.in_vpc:
            raise ConfigError(
                "an ElastiCache cache lives in a VPC: give --subnets and --security-groups "
                "for it and the Lambdas, or --redis-url for an existing Redis"
            )
        if self.redis_url is not None and not self.redis_url.startswith(("redis://", "rediss://")):
            raise ConfigError(
                f"--redis-url must be redis://… or rediss://…, got {self.redis_url!r}"
            )
        if not MIN_GATEWAY_TIMEOUT_S <= self.gateway_timeout_s <= LAMBDA_MAX_TIMEOUT_S:
            raise ConfigError(
                f"gateway timeout must be {MIN_GATEWAY_TIMEOUT_S}..{LAMBDA_MAX_TIMEOUT_S} s, "
                f"got {self.gateway_timeout_s}"
            )
        if not self.code_uri:
            raise ConfigError("code URI must not be empty")


def worker_timeout_s(infos: list[FunctionInfo], options: TemplateOptions) -> int:
    """The worker Lambda's timeout: the longest function time limit plus a margin."""
    longest = max(infos, key=lambda info: info.timeout_s)
    needed = math.ceil(longest.timeout_s) + MIN_WORKER_MARGIN_S
    if needed > LAMBDA_MAX_TIMEOUT_S:
        raise ConfigError(
            f"function {longest.name!r} may run {longest.timeout_s:g} s, but a Lambda worker "
            f"stops at {LAMBDA_MAX_TIMEOUT_S} s: lower its timeout to at most "
            f"{LAMBDA_MAX_TIMEOUT_S - MIN_WORKER_MARGIN_S} or run `batchgate worker` hosts"
        )
    if options.worker_timeout_s is None:
        return min(LAMBDA_MAX_TIMEOUT_S, math.ceil(longest.timeout_s) + WORKER_MARGIN_S)
    if not needed <= options.worker_timeout_s <= LAMBDA_MAX_TIMEOUT_S:
        raise ConfigError(
            f"worker timeout must be {needed}..{LAMBDA_MAX_TIMEOUT_S} s "
            f"({longest.name!r} may run {longest.timeout_s:g} s), got {options.worker_timeout_s}"
        )
    return options.worker_timeout_s


def build_template(registry: Registry, options: TemplateOptions) -> dict[str, Any]:
    """The SAM template (a dict) that runs the registry's functions on AWS Lambda."""
    options.validate()
    infos = list(registry)
    if not infos:
        raise ConfigError("the app registers no functions: there is nothing to deploy")
    worker_s = worker_timeout_s(infos, options)
    max_attempts = max(info.max_attempts for info in infos)
    receives = most_starts(max_attempts, DEFAULT_CRASH_RETRIES) + 1 + RECEIVE_COUNT_MARGIN
    resources: Doc = {
        **res.queues(ESM_VISIBILITY_FACTOR * worker_s, receives),
        **res.bucket(),
    }
    if options.in_vpc:
        resources |= res.network(
            len(options.security_group_ids),
            endpoints=options.endpoints,
            lambda_endpoint=options.workers == "feeder",
            cache=options.creates_cache,
        )
    if options.creates_cache:
        resources |= res.cache(options.cache_engine, options.app_name)
    resources |= _functions(options, worker_s)
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Transform": "AWS::Serverless-2016-10-31",
        "Description": (
            f"batchgate app {options.app_name!r} on AWS Lambda "
            f"({options.workers} workers; written by `batchgate aws template`)"
        ),
        "Metadata": {"batchgate": _metadata(infos, options, worker_s)},
        "Parameters": _parameters(options),
        "Globals": {"Function": _globals(options)},
        "Resources": resources,
        "Outputs": _outputs(options),
    }


def _functions(options: TemplateOptions, worker_s: int) -> Doc:
    gateway_env = {
        "BATCHGATE_MAX_WAIT": str(options.gateway_timeout_s - GATEWAY_WAIT_MARGIN_S),
        "BATCHGATE_API_KEYS": ref("ApiKeys"),
    }
    functions: Doc = {
        "GatewayFunction": res.function(
            "batchgate gateway: the HTTP API, behind a Function URL",
            GATEWAY_HANDLER,
            options.gateway_timeout_s,
            ref("GatewayMemorySize"),
            [res.queue_access(res.GATEWAY_SQS_ACTIONS), *res.bucket_access()],
            # SAM adds the public invoke permissions only for a literal AuthType NONE.
            FunctionUrlConfig={
                "AuthType": "NONE" if options.public_url else "AWS_IAM",
                "InvokeMode": "BUFFERED",
            },
            Environment={"Variables": gateway_env},
        )
    }
    worker_statements = [res.queue_access(res.WORKER_SQS_ACTIONS), *res.bucket_access()]
    if options.workers == "esm":
        functions["WorkerFunction"] = res.function(
            "batchgate worker: runs tasks delivered by the SQS event source mapping",
            SQS_HANDLER,
            worker_s,
            ref("WorkerMemorySize"),
            worker_statements,
        )
        return functions | res.sqs_event_source()
    functions["FeederFunction"] = res.function(
        "batchgate feeder: long-polls SQS, runs tasks, re-invokes itself",
        FEEDER_HANDLER,
        # A hop is billed for the time it runs, not for its timeout: long hops mean few
        # re-invocations. It stops taking tasks when the longest function would not fit.
        options.worker_timeout_s or LAMBDA_MAX_TIMEOUT_S,
        ref("WorkerMemorySize"),
        worker_statements,
        # Without Allow, Lambda stops a self-invoking chain after about 16 hops.
        RecursiveLoop="Allow",
        # A failed hop ends its chain; the controller starts a replacement.
        EventInvokeConfig={"MaximumRetryAttempts": 0, "MaximumEventAgeInSeconds": 300},
    )
    functions["ControllerFunction"] = res.function(
        "batchgate controller: sets the number of feeder chains from queue depth",
        CONTROLLER_HANDLER,
        CONTROLLER_TIMEOUT_S,
        256,
        [
            res.queue_access(res.CONTROLLER_SQS_ACTIONS),
            res.allow(["lambda:InvokeFunction"], get_att("FeederFunction", "Arn")),
            # the kill switch, control/keep-feeding (HeadBucket needs ListBucket)
            res.allow(["s3:GetObject"], sub("${Bucket.Arn}/control/*")),
            res.allow(["s3:ListBucket"], get_att("Bucket", "Arn")),
        ],
        Environment={
            "Variables": {
                FEEDER_FUNCTION_ENV: ref("FeederFunction"),
                FEEDER_MAX_CHAINS_ENV: ref("MaxChains"),
                FEEDER_MIN_CHAINS_ENV: ref("MinChains"),
                FEEDER_TASKS_PER_CHAIN_ENV: ref("TasksPerChain"),
            }
        },
        Events={
            "EveryMinute": {"Type": "Schedule", "Properties": {"Schedule": CONTROLLER_SCHEDULE}}
        },
    )
    return functions | res.feeder_self_invoke()


def _parameters(options: TemplateOptions) -> Doc:
    api_keys: Doc = {
        "Type": "String",
        "NoEcho": True,
        "Description": "Comma-separated API keys the gateway accepts (Authorization: Bearer)",
    }
    if options.public_url:  # a public Function URL must not run without keys
        api_keys["MinLength"] = 1
    else:
        api_keys["Default"] = ""
    params: Doc = {
        "Architecture": {
            "Type": "String",
            "Default": "x86_64",
            "AllowedValues": ["x86_64", "arm64"],
            "Description": "Lambda CPU architecture; must match `batchgate aws package --arch`",
        },
        "GatewayMemorySize": res.number_param(512, 128, 10240, "Gateway Lambda memory (MB)"),
        "WorkerMemorySize": res.number_param(1024, 128, 10240, "Worker Lambda memory (MB)"),
        "ResultRetentionDays": res.number_param(
            1, 1, 3650, "Days before inputs, results and payloads expire from the bucket"
        ),
        "ApiKeys": api_keys,
    }
    if options.workers == "esm":
        params["WorkerBatchSize"] = res.number_param(1, 1, 10, "Tasks per worker invocation")
        params["WorkerBatchingWindow"] = res.number_param(
            0, 0, 300, "Seconds the event source may wait to fill a batch"
        )
        params["WorkerMaxConcurrency"] = res.number_param(
            10, 2, 1000, "Most worker invocations the event source runs at once"
        )
    else:
        params["MaxChains"] = res.number_param(
            2, 0, 1000, "Most feeder chains the controller runs (0 stops them all)"
        )
        params["MinChains"] = res.number_param(
            1, 0, 1000, "Chains kept running with an empty queue (at most MaxChains)"
        )
        params["TasksPerChain"] = res.number_param(
            10, 1, 1000, "Queued or running tasks per chain the controller aims for"
        )
    if options.in_vpc:
        params["VpcId"] = res.id_list_param(
            "AWS::EC2::VPC::Id",
            (options.vpc_id,) if options.vpc_id else (),
            "The VPC of the subnets (for the endpoints and the cache's security group)",
        )
        params["SubnetIds"] = res.id_list_param(
            "List<AWS::EC2::Subnet::Id>", options.subnet_ids, "Subnets for the Lambdas"
        )
        params["SecurityGroupIds"] = res.id_list_param(
            "List<AWS::EC2::SecurityGroup::Id>",
            options.security_group_ids,
            f"Security groups for the Lambdas (exactly {len(options.security_group_ids)})",
        )
        if options.endpoints:
            params["RouteTableIds"] = res.id_list_param(
                "CommaDelimitedList",
                options.route_table_ids,
                "Route tables of the subnets, for the S3 gateway endpoint",
            )
    if not options.creates_cache:
        params["RedisUrl"] = {
            "Type": "String",
            "NoEcho": True,
            "Default": options.redis_url,
            "AllowedPattern": "^rediss?://.+",
            "Description": "Job state: redis:// or rediss:// URL of an existing Redis/Valkey",
        }
    return params


def _globals(options: TemplateOptions) -> Doc:
    if options.creates_cache:
        # ElastiCache Serverless speaks TLS only and is cluster-mode: db 0, and one hash tag
        # in the key prefix keeps every key (and so every Lua script) in one slot.
        state: Any = sub(
            "rediss://${StateCache.Endpoint.Address}:${StateCache.Endpoint.Port}/0"
            "?prefix={batchgate}:"
        )
    else:
        state = ref("RedisUrl")
    env = {
        "BATCHGATE_QUEUE": sub(
            "sqs://${Queue.QueueName}?region=${AWS::Region}&create=0"
            "&dlq=${DeadLetterQueue.QueueName}"
        ),
        "BATCHGATE_STATE": state,
        "BATCHGATE_STORE": sub("s3://${Bucket}?region=${AWS::Region}"),
        "BATCHGATE_RESULT_TTL": sub("${ResultRetentionDays}d"),
    }
    doc: Doc = {
        "Runtime": RUNTIME,
        "Architectures": [ref("Architecture")],
        "CodeUri": options.code_uri,
        "Environment": {"Variables": env},
    }
    if options.in_vpc:
        doc["VpcConfig"] = {
            "SubnetIds": ref("SubnetIds"),
            "SecurityGroupIds": ref("SecurityGroupIds"),
        }
    return doc


def _outputs(options: TemplateOptions) -> Doc:
    outputs: Doc = {
        "GatewayUrl": {
            "Description": "The gateway's Function URL (POST /v1/functions/NAME)",
            "Value": get_att("GatewayFunctionUrl", "FunctionUrl"),
        },
        "QueueUrl": {"Description": "The task queue", "Value": ref("Queue")},
        "DeadLetterQueueUrl": {"Description": "Dead letters", "Value": ref("DeadLetterQueue")},
        "BucketName": {"Description": "The store's bucket", "Value": ref("Bucket")},
    }
    if options.creates_cache:
        outputs["StateEndpoint"] = {
            "Description": "The ElastiCache Serverless endpoint (TLS)",
            "Value": sub("${StateCache.Endpoint.Address}:${StateCache.Endpoint.Port}"),
        }
    if options.workers == "feeder":
        outputs["FeederFunctionName"] = {
            "Description": "Kill switch: put-function-concurrency 0 on this function",
            "Value": ref("FeederFunction"),
        }
    return outputs


def _metadata(infos: list[FunctionInfo], options: TemplateOptions, worker_s: int) -> Doc:
    return {
        "generator": f"batchgate {__version__} aws template",
        "app": options.app_name,
        "workers": options.workers,
        "worker_timeout_s": worker_s,
        "functions": [
            {
                "name": i.name,
                "kind": i.kind.value,
                "timeout_s": float(i.timeout_s),
                "retries": i.retries,
            }
            for i in infos
        ],
    }


def format_for(path: str | None) -> TemplateFormat:
    """JSON for a `.json` file name, YAML otherwise (and for stdout)."""
    return "json" if path is not None and path.lower().endswith(".json") else "yaml"


def dump_template(template: dict[str, Any], fmt: TemplateFormat = "yaml") -> str:
    """The template as JSON or YAML text (YAML needs PyYAML: the `aws` extra)."""
    if fmt == "json":
        return json.dumps(template, indent=2) + "\n"
    try:
        import yaml  # type: ignore[import-untyped]  # no stubs: keep the dev deps few
    except ImportError:
        raise ConfigError(
            "YAML output needs PyYAML: pip install 'batchgate[aws]', "
            "or write JSON (-o template.json or --format json)"
        ) from None
    # A JSON round trip drops shared sub-dicts, which PyYAML would write as &anchors.
    plain = json.loads(json.dumps(template))
    text: str = yaml.safe_dump(plain, sort_keys=False, default_flow_style=False, width=100)
    return text
