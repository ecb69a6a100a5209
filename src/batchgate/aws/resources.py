"""CloudFormation building blocks for the SAM template: queues, bucket, network, cache, IAM.

Every function returns plain dicts (logical id -> resource) in the long intrinsic form
(`{"Fn::GetAtt": [...]}`), which is valid in both the JSON and the YAML template. The
logical ids are a contract with `template.py`, the docs and the tests: Queue,
DeadLetterQueue, Bucket, BackendSecurityGroup, SqsEndpoint, LambdaEndpoint, S3Endpoint,
StateCache, GatewayFunction, WorkerFunction, FeederFunction, ControllerFunction.
"""

from __future__ import annotations

import re
from typing import Any

Doc = dict[str, Any]

# SQS quotas (SQS Developer Guide, "Amazon SQS message quotas" and CreateQueue).
RETENTION_S = 1_209_600  # 14 days: the longest MessageRetentionPeriod
MAX_VISIBILITY_S = 43_200  # 12 h: the longest VisibilityTimeout
LONG_POLL_S = 20  # the longest ReceiveMessageWaitTimeSeconds
MAX_RECEIVE_COUNT = 1000  # the largest maxReceiveCount of a redrive policy
# Key prefixes the store writes under (see batchgate.keys); each expires after the retention.
STORE_PREFIXES = ("inputs/", "outputs/", "results/", "payloads/")
# ElastiCache Serverless listens on 6379 (primary) and 6380 (reads from replicas).
CACHE_PORTS = (6379, 6380)
CACHE_MAJOR_VERSIONS = {"valkey": "8", "redis": "7"}
_POLICY_VERSION = "2012-10-17"

GATEWAY_SQS_ACTIONS = ["sqs:GetQueueUrl", "sqs:GetQueueAttributes", "sqs:SendMessage"]
WORKER_SQS_ACTIONS = [
    "sqs:GetQueueUrl",
    "sqs:GetQueueAttributes",
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:SendMessage",
]
CONTROLLER_SQS_ACTIONS = ["sqs:GetQueueUrl", "sqs:GetQueueAttributes"]
# PutObject also covers the multipart upload calls that put_stream makes.
OBJECT_ACTIONS = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]


def ref(name: str) -> Doc:
    return {"Ref": name}


def get_att(name: str, attribute: str) -> Doc:
    return {"Fn::GetAtt": [name, attribute]}


def sub(text: str) -> Doc:
    return {"Fn::Sub": text}


def policy(*statements: Doc) -> Doc:
    """An IAM policy document of Allow statements."""
    return {"Version": _POLICY_VERSION, "Statement": list(statements)}


def allow(actions: list[str], resource: Any) -> Doc:
    return {"Effect": "Allow", "Action": actions, "Resource": resource}


def queue_access(actions: list[str]) -> Doc:
    """`actions` on the queue and its dead-letter queue, and nothing else."""
    return allow(actions, [get_att("Queue", "Arn"), get_att("DeadLetterQueue", "Arn")])


def bucket_access() -> list[Doc]:
    """Object reads and writes in the bucket, and listing it (HeadBucket needs ListBucket)."""
    return [
        allow(OBJECT_ACTIONS, sub("${Bucket.Arn}/*")),
        allow(["s3:ListBucket"], get_att("Bucket", "Arn")),
    ]


def number_param(default: int, low: int, high: int, description: str) -> Doc:
    """A Number stack parameter."""
    return {
        "Type": "Number",
        "Default": default,
        "MinValue": low,
        "MaxValue": high,
        "Description": description,
    }


def id_list_param(kind: str, values: tuple[str, ...], description: str) -> Doc:
    """A stack parameter of ids; the ids given when the template is written are its default."""
    doc: Doc = {"Type": kind, "Description": description}
    if values:
        doc["Default"] = ",".join(values)
    return doc


def queues(visibility_s: int, max_receive_count: int) -> dict[str, Doc]:
    """The task queue and its dead-letter queue, joined by a redrive policy."""
    encrypted = {"MessageRetentionPeriod": RETENTION_S, "SqsManagedSseEnabled": True}
    return {
        "DeadLetterQueue": {"Type": "AWS::SQS::Queue", "Properties": dict(encrypted)},
        "Queue": {
            "Type": "AWS::SQS::Queue",
            "Properties": {
                **encrypted,
                "VisibilityTimeout": min(visibility_s, MAX_VISIBILITY_S),
                "ReceiveMessageWaitTimeSeconds": LONG_POLL_S,
                "RedrivePolicy": {
                    "deadLetterTargetArn": get_att("DeadLetterQueue", "Arn"),
                    "maxReceiveCount": min(max_receive_count, MAX_RECEIVE_COUNT),
                },
            },
        },
    }


def bucket() -> dict[str, Doc]:
    """The store's bucket: private, TLS only, blobs expiring after ResultRetentionDays."""
    rules: list[Doc] = [
        {
            "Id": "expire-" + prefix.rstrip("/"),
            "Status": "Enabled",
            "Prefix": prefix,
            "ExpirationInDays": ref("ResultRetentionDays"),
        }
        for prefix in STORE_PREFIXES
    ]
    rules.append(
        {
            "Id": "abort-incomplete-uploads",
            "Status": "Enabled",
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        }
    )
    deny_plain_http = {
        "Sid": "DenyInsecureTransport",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [get_att("Bucket", "Arn"), sub("${Bucket.Arn}/*")],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }
    return {
        "Bucket": {
            "Type": "AWS::S3::Bucket",
            "Properties": {
                "PublicAccessBlockConfiguration": {
                    "BlockPublicAcls": True,
                    "BlockPublicPolicy": True,
                    "IgnorePublicAcls": True,
                    "RestrictPublicBuckets": True,
                },
                "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
                "BucketEncryption": {
                    "ServerSideEncryptionConfiguration": [
                        {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
                    ]
                },
                "LifecycleConfiguration": {"Rules": rules},
            },
        },
        "BucketPolicy": {
            "Type": "AWS::S3::BucketPolicy",
            "Properties": {
                "Bucket": ref("Bucket"),
                "PolicyDocument": {"Version": _POLICY_VERSION, "Statement": [deny_plain_http]},
            },
        },
    }


def network(lambda_sg_count: int, *, endpoints: bool, lambda_endpoint: bool, cache: bool) -> Doc:
    """VPC endpoints (SQS and Lambda: Interface; S3: Gateway) and the security group that
    lets the Lambdas' security groups reach them and the cache. No NAT gateway is needed."""
    ports = ([(443, 443)] if endpoints else []) + ([CACHE_PORTS] if cache else [])
    if not ports:
        return {}
    ingress = [
        {
            "IpProtocol": "tcp",
            "FromPort": low,
            "ToPort": high,
            # The number of security groups is fixed when the template is written.
            "SourceSecurityGroupId": {"Fn::Select": [index, ref("SecurityGroupIds")]},
            "Description": "from the batchgate Lambdas",
        }
        for low, high in ports
        for index in range(lambda_sg_count)
    ]
    resources: Doc = {
        "BackendSecurityGroup": {
            "Type": "AWS::EC2::SecurityGroup",
            "Properties": {
                "GroupDescription": "batchgate: VPC endpoints and cache, reached from its Lambdas",
                "VpcId": ref("VpcId"),
                "SecurityGroupIngress": ingress,
            },
        }
    }
    if not endpoints:
        return resources
    services = ["sqs"] + (["lambda"] if lambda_endpoint else [])
    for service in services:
        resources[service.capitalize() + "Endpoint"] = {
            "Type": "AWS::EC2::VPCEndpoint",
            "Properties": {
                "VpcEndpointType": "Interface",
                "ServiceName": sub("com.amazonaws.${AWS::Region}." + service),
                "VpcId": ref("VpcId"),
                "SubnetIds": ref("SubnetIds"),
                "SecurityGroupIds": [ref("BackendSecurityGroup")],
                "PrivateDnsEnabled": True,
            },
        }
    resources["S3Endpoint"] = {
        "Type": "AWS::EC2::VPCEndpoint",
        "Properties": {
            "VpcEndpointType": "Gateway",
            "ServiceName": sub("com.amazonaws.${AWS::Region}.s3"),
            "VpcId": ref("VpcId"),
            "RouteTableIds": ref("RouteTableIds"),
        },
    }
    return resources


def cache(engine: str, app_name: str) -> dict[str, Doc]:
    """An ElastiCache Serverless cache (Valkey or Redis) in the Lambdas' subnets."""
    slug = re.sub(r"[^a-z0-9]+", "-", app_name.lower()).strip("-")[:20].strip("-") or "app"
    # A name unique per stack: bg-<app>-<first 8 hex digits of the stack id's UUID>.
    stack_uuid = {"Fn::Select": [2, {"Fn::Split": ["/", ref("AWS::StackId")]}]}
    suffix = {"Fn::Select": [0, {"Fn::Split": ["-", stack_uuid]}]}
    return {
        "StateCache": {
            "Type": "AWS::ElastiCache::ServerlessCache",
            "Properties": {
                "ServerlessCacheName": {"Fn::Join": ["-", ["bg", slug, suffix]]},
                "Description": f"batchgate job state for {app_name}",
                "Engine": engine,
                "MajorEngineVersion": CACHE_MAJOR_VERSIONS[engine],
                "SubnetIds": ref("SubnetIds"),
                "SecurityGroupIds": [ref("BackendSecurityGroup")],
            },
        }
    }


def function(
    description: str,
    handler: str,
    timeout_s: int,
    memory: Any,
    statements: list[Doc],
    **extra: Any,
) -> Doc:
    """An AWS::Serverless::Function; Runtime, CodeUri and shared settings come from Globals."""
    return {
        "Type": "AWS::Serverless::Function",
        "Properties": {
            "Description": description,
            "Handler": handler,
            "Timeout": timeout_s,
            "MemorySize": memory,
            "Policies": [policy(*statements)],
            **extra,
        },
    }


def sqs_event_source() -> dict[str, Doc]:
    """The worker's SQS event source mapping, declared as a plain resource so that SAM does
    not attach its broad AWSLambdaSQSQueueExecutionRole: WorkerFunction's own policy covers
    what the mapping needs (ReceiveMessage, DeleteMessage, GetQueueAttributes)."""
    return {
        "WorkerEventSource": {
            "Type": "AWS::Lambda::EventSourceMapping",
            "Properties": {
                "FunctionName": ref("WorkerFunction"),
                "EventSourceArn": get_att("Queue", "Arn"),
                "BatchSize": ref("WorkerBatchSize"),
                "MaximumBatchingWindowInSeconds": ref("WorkerBatchingWindow"),
                "FunctionResponseTypes": ["ReportBatchItemFailures"],
                "ScalingConfig": {"MaximumConcurrency": ref("WorkerMaxConcurrency")},
            },
        }
    }


def feeder_self_invoke() -> dict[str, Doc]:
    """lambda:InvokeFunction on the feeder itself, attached to its SAM-made role after the
    function exists (inside the function's own Policies it would be a circular reference)."""
    return {
        "FeederSelfInvokePolicy": {
            "Type": "AWS::IAM::Policy",
            "Properties": {
                "PolicyName": "batchgate-feeder-self-invoke",
                "Roles": [ref("FeederFunctionRole")],
                "PolicyDocument": policy(
                    allow(["lambda:InvokeFunction"], get_att("FeederFunction", "Arn"))
                ),
            },
        }
    }
