"""batchgate on AWS Lambda: the SAM template (`batchgate aws template`) and the deployment
package (`batchgate aws package`).

The Lambda entry points the template names (`batchgate.aws.gateway_handler`,
`batchgate.aws.sqs_handler`, `batchgate.aws.feeder_handler`,
`batchgate.aws.controller_handler`) are not written yet; see docs/deploy/aws.md.
Nothing here imports boto or aiobotocore at import time.
"""
