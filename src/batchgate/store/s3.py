"""Blobs in S3 or an S3-compatible server: `s3://BUCKET/PREFIX?region=…&endpoint_url=…`.

Every key lives under PREFIX (which may be empty) in BUCKET. Keys follow the file store's
rule, so the two backends take the same keys: relative paths with `/` separators whose
segments are not empty and do not start with `.`. `path_style=0` turns off path-style
addressing, which is used by default whenever `endpoint_url` is given (MinIO, moto).

S3 writes are atomic per object: a reader sees the old blob or the new one. put_stream
sends a blob of less than one part in a single PutObject, and a larger one as a multipart
upload that S3 assembles only on completion; any failure aborts the upload, so no parts
are left behind (and billed) and an earlier blob under the key stays. It holds at most one
part (PART_BYTES) in memory.

IAM: s3:PutObject, s3:GetObject, s3:DeleteObject, s3:ListBucket (HeadBucket at open,
delete_prefix) and s3:AbortMultipartUpload on the bucket and prefix; see docs/backends/s3.md.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from batchgate.aws_client import AwsClient, AwsError, open_client
from batchgate.errors import BackendError, ConfigError, NotFound
from batchgate.urls import query_params

__all__ = ["S3Store", "open"]

# S3 multipart limits (docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html): parts are
# 5 MiB to 5 GiB, except the last, and an upload has at most 10,000 of them.
MIN_PART_BYTES = 5 * 1024 * 1024
PART_BYTES = 8 * 1024 * 1024  # 10,000 parts of this make blobs of up to 78 GiB
MAX_PARTS = 10_000
# Each part carries a CRC32 that botocore computes and S3 checks (what s3transfer does too).
CHECKSUM = "CRC32"
_CHECKSUM_FIELD = "ChecksumCRC32"
# DeleteObjects takes at most 1,000 keys a request.
MAX_DELETE_KEYS = 1000
# A SigV4 presigned URL is valid for at most 7 days (less when signed with a session token).
MAX_PRESIGN_S = 7 * 24 * 3600

_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PARAMS = {"region", "endpoint_url", "path_style"}


def _check_key(key: str, what: str = "store key") -> None:
    """ValueError unless `key` is a relative path of plain segments (the file store's rule)."""
    if "\\" in key or "\0" in key:
        raise ValueError(f"{what} {key!r} contains a backslash or NUL")
    for segment in key.split("/"):
        if not segment or segment.startswith("."):
            raise ValueError(
                f"{what} {key!r} has an empty segment or one starting with '.' "
                "(keys are relative paths like 'inputs/job/0')"
            )


def _check_prefix(prefix: str) -> None:
    """A key prefix may end mid-segment or with `/`, but may not escape like a bad key."""
    if not prefix:
        return
    folder, _, name = prefix.rpartition("/")
    if folder or prefix.startswith("/"):
        _check_key(folder, "store key prefix")
    if name.startswith("."):
        raise ValueError(f"store key prefix {prefix!r} has a segment starting with '.'")


class S3Store:
    """The Store port on one S3 bucket and key prefix; see the module docstring."""

    def __init__(self, client: AwsClient, bucket: str, prefix: str) -> None:
        self.bucket = bucket
        self.prefix = prefix  # "" or ending in "/"
        self._client = client

    def _object(self, key: str) -> str:
        _check_key(key)
        return self.prefix + key

    async def put(self, key: str, data: bytes) -> None:
        """Write `data` under `key` (one PutObject), replacing any earlier blob."""
        await self._client.call("put_object", Bucket=self.bucket, Key=self._object(key), Body=data)

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        """Write a blob from a stream, holding at most one part in memory; returns its size."""
        name = self._object(key)
        buffer = bytearray()
        size = 0
        upload: _Upload | None = None
        try:
            async for piece in chunks:
                buffer += piece
                size += len(piece)
                if len(buffer) >= PART_BYTES:
                    if upload is None:
                        upload = await _Upload.start(self._client, self.bucket, name)
                    await upload.send(bytes(buffer))
                    buffer.clear()
            if upload is None:
                await self._client.call(
                    "put_object", Bucket=self.bucket, Key=name, Body=bytes(buffer)
                )
                return size
            if buffer:
                await upload.send(bytes(buffer))
            await upload.complete()
        except BaseException:
            if upload is not None:
                await upload.abort()
            raise
        return size

    async def get(self, key: str) -> bytes:
        """The whole blob; raises NotFound when there is none."""
        body = await self._body(key)
        async with body:
            try:
                data: bytes = await body.read()
            except self._client.errors as exc:
                raise self._client.error("get_object", exc) from exc
        return data

    async def open_stream(self, key: str, chunk_bytes: int = 1 << 16) -> AsyncIterator[bytes]:
        """Stream a blob in pieces; raises NotFound on first iteration when there is none."""
        body = await self._body(key)
        async with body:
            while True:
                try:
                    piece: bytes = await body.read(chunk_bytes)
                except self._client.errors as exc:
                    raise self._client.error("get_object", exc) from exc
                if not piece:
                    return
                yield piece

    async def delete(self, keys: Sequence[str]) -> None:
        """Delete blobs (DeleteObjects, 1,000 keys a request); missing keys are ignored."""
        await self._delete_objects([self._object(key) for key in keys])

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every blob whose key starts with `prefix` (not only at a `/`)."""
        _check_prefix(prefix)
        count = 0
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        while True:
            response = await self._client.call("list_objects_v2", **params)
            names = [str(item["Key"]) for item in response.get("Contents", [])]
            await self._delete_objects(names)
            count += len(names)
            if not response.get("IsTruncated"):
                return count
            params["ContinuationToken"] = response["NextContinuationToken"]

    async def presigned_url(self, key: str, expires_s: int) -> str | None:
        """A GET URL for the blob, valid for `expires_s` seconds (at most 7 days)."""
        if not 0 < expires_s <= MAX_PRESIGN_S:
            raise ValueError(f"expires_s must be 1-{MAX_PRESIGN_S}, got {expires_s}")
        params = {"Bucket": self.bucket, "Key": self._object(key)}
        try:
            url: str = await self._client.raw.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=expires_s
            )
        except self._client.errors as exc:
            raise self._client.error("generate_presigned_url", exc) from exc
        return url

    async def check_health(self) -> None:
        """Nothing to check cheaply: S3 does not fill up."""

    async def aclose(self) -> None:
        """Close the client's connection pool."""
        await self._client.aclose()

    async def _body(self, key: str) -> Any:
        """The streaming body of GetObject (the caller closes it); NotFound if missing."""
        try:
            response = await self._client.call(
                "get_object", Bucket=self.bucket, Key=self._object(key)
            )
        except AwsError as exc:
            if exc.code in _MISSING_CODES:
                raise NotFound(f"no blob stored under {key!r}") from None
            raise
        return response["Body"]

    async def _delete_objects(self, names: Sequence[str]) -> None:
        for start in range(0, len(names), MAX_DELETE_KEYS):
            batch = names[start : start + MAX_DELETE_KEYS]
            response = await self._client.call(
                "delete_objects",
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": name} for name in batch], "Quiet": True},
            )
            errors = response.get("Errors") or []
            if errors:
                detail = "; ".join(f"{e.get('Key')}: {e.get('Code')}" for e in errors[:5])
                raise BackendError(f"S3 could not delete {len(errors)} object(s): {detail}")


class _Upload:
    """One multipart upload in progress."""

    def __init__(self, client: AwsClient, bucket: str, name: str, upload_id: str) -> None:
        self._client = client
        self._ids = {"Bucket": bucket, "Key": name, "UploadId": upload_id}
        self._parts: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, client: AwsClient, bucket: str, name: str) -> _Upload:
        response = await client.call(
            "create_multipart_upload", Bucket=bucket, Key=name, ChecksumAlgorithm=CHECKSUM
        )
        return cls(client, bucket, name, str(response["UploadId"]))

    async def send(self, data: bytes) -> None:
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise BackendError(
                f"blob exceeds {MAX_PARTS} parts of {PART_BYTES} bytes, S3's multipart limit"
            )
        response = await self._client.call(
            "upload_part", PartNumber=number, Body=data, ChecksumAlgorithm=CHECKSUM, **self._ids
        )
        part = {"PartNumber": number, "ETag": response["ETag"]}
        # An upload declared with a checksum must list every part's checksum on completion.
        if response.get(_CHECKSUM_FIELD):
            part[_CHECKSUM_FIELD] = response[_CHECKSUM_FIELD]
        self._parts.append(part)

    async def complete(self) -> None:
        await self._client.call(
            "complete_multipart_upload", MultipartUpload={"Parts": self._parts}, **self._ids
        )

    async def abort(self) -> None:
        await self._client.call("abort_multipart_upload", **self._ids)


def _parse(url: str) -> tuple[str, str, dict[str, str]]:
    parts = urlsplit(url)
    params = query_params(url, _PARAMS)
    bucket = parts.netloc
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ConfigError(
            f"{url!r}: {bucket!r} is not an S3 bucket name (3-63 lowercase letters, digits, "
            "'.' and '-')"
        )
    prefix = parts.path.strip("/")
    if prefix:
        try:
            _check_key(prefix, "s3:// URL prefix")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        prefix += "/"
    if params.get("path_style", "1") not in ("0", "1"):
        raise ConfigError(f"{url!r}: path_style must be 0 or 1")
    return bucket, prefix, params


async def open(url: str) -> S3Store:
    """Open the bucket and prefix named by `s3://BUCKET/PREFIX?…`; the bucket must exist."""
    bucket, prefix, params = _parse(url)
    client = await open_client("s3", params)
    try:
        await client.call("head_bucket", Bucket=bucket)
    except AwsError as exc:
        await client.aclose()
        if exc.code in _MISSING_CODES or exc.code in ("NoSuchBucket", "403", "AccessDenied"):
            raise ConfigError(f"{url!r}: cannot use bucket {bucket!r} ({exc.code})") from exc
        raise
    except BaseException:
        await client.aclose()
        raise
    return S3Store(client, bucket, prefix)
