"""batchgate on AWS Lambda: the entry points the SAM template names, the template
(`batchgate aws template`) and the deployment package (`batchgate aws package`).

- `gateway_handler`: the HTTP gateway behind a Function URL or API Gateway (gateway.py);
- `sqs_handler`: a worker on an SQS event source mapping (sqs_worker.py);
- `feeder_handler`: one hop of a self-re-invoking feeder chain (feeder.py);
- `controller_handler`: the scheduled scaler of feeder chains (controller.py).

Each imports its module on first call, so `batchgate aws template` and a gateway Lambda
load only what they use.
"""

from __future__ import annotations

from typing import Any


def gateway_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    from batchgate.aws import gateway, runtime

    runtime.setup_logging()
    return gateway.handle(event, context)


def sqs_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    from batchgate.aws import runtime, sqs_worker

    runtime.setup_logging()
    return runtime.run(lambda: sqs_worker.handle(event, context))


def feeder_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    from batchgate.aws import feeder, runtime

    runtime.setup_logging()
    return runtime.run(lambda: feeder.handle(event, context))


def controller_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    from batchgate.aws import controller, runtime

    runtime.setup_logging()
    return runtime.run(lambda: controller.handle(event, context))
