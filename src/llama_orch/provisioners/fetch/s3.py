"""``s3://bucket/key`` through boto3; ``endpoint_url`` makes MinIO and other S3 stores work.

Credentials come from boto3's own chain (environment, profile); none are stored or logged.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from llama_orch.catalog.refs import ModelRef, S3Ref
from llama_orch.errors import FetchFailed, NotFound
from llama_orch.provisioners.fetch.base import (
    Fetched,
    OpenPart,
    keep_validator,
    open_part,
    read_validator,
    validator_path,
)
from llama_orch.provisioners.fetch.resume import (
    DEFAULT_FLOOR,
    Body,
    RateFloor,
    Transient,
    download,
)
from llama_orch.provisioners.policy import OutboundPolicy
from llama_orch.provisioners.progress import PullProgress

CHUNK_BYTES = 1024 * 1024


class S3Fetcher:
    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        opener: OpenPart = open_part,
        client: Any = None,
        floor: RateFloor = DEFAULT_FLOOR,
        backoff_s: float = 0.2,
    ) -> None:
        self.endpoint_url = endpoint_url
        self.region = region
        self.opener = opener
        self._client = client
        self.floor = floor
        self.backoff_s = backoff_s

    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client(
                "s3", endpoint_url=self.endpoint_url, region_name=self.region
            )
        return self._client

    def endpoint(self, ref: ModelRef) -> tuple[str, str]:
        assert isinstance(ref, S3Ref)
        if self.endpoint_url:
            parts = urlsplit(self.endpoint_url)
            return "s3", parts.hostname or ""
        return "s3", f"{ref.bucket}.s3.amazonaws.com"

    def fetch(
        self, ref: ModelRef, stage: Path, progress: PullProgress, outbound: OutboundPolicy
    ) -> Fetched:
        assert isinstance(ref, S3Ref)
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client()
        try:
            head = client.head_object(Bucket=ref.bucket, Key=ref.key, ChecksumMode="ENABLED")
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NoSuchBucket"):
                raise NotFound(f"s3://{ref.bucket}/{ref.key} does not exist") from exc
            raise FetchFailed(f"s3://{ref.bucket}/{ref.key}: {code}") from exc
        except BotoCoreError as exc:
            raise FetchFailed(f"s3://{ref.bucket}/{ref.key}: {exc}") from exc
        version = head.get("VersionId")
        size = int(head["ContentLength"])
        final = stage / ref.key.rsplit("/", 1)[-1]
        validator = validator_path(final)
        revision = str(version or head.get("ETag", "")).strip('"')
        # Kept bytes are resumed onto only if they are of this very object: an unversioned
        # key may have been overwritten since they were fetched.
        stale = read_validator(validator) != revision
        keep_validator(validator, revision)

        def open_body(offset: int) -> Body:
            nonlocal stale
            args: dict[str, Any] = {"Bucket": ref.bucket, "Key": ref.key}
            if version:
                args["VersionId"] = version
            if offset > size or stale:
                offset = 0  # kept from another object, or a longer one: start over
            stale = False  # what later tries of this fetch resume from is this object's
            if offset:
                if offset == size:
                    return Body(size, True, iter(()), lambda: None)
                args["Range"] = f"bytes={offset}-"
            try:
                response = client.get_object(**args)
            except (ClientError, BotoCoreError) as exc:
                raise Transient(str(exc)) from exc
            stream = response["Body"]
            resumed = _resumed(response, offset)
            if resumed is None:
                # Bytes from elsewhere in the object (a broken store or a cache in front of
                # it): appended, they would register a file that never existed.
                stream.close()
                stale = True
                return open_body(0)
            return Body(size, resumed, _chunks(stream), stream.close)

        sha = download(
            final,
            open_body,
            progress,
            opener=self.opener,
            backoff_s=self.backoff_s,
            floor=self.floor,
        )
        source = {"etag": str(head.get("ETag", "")).strip('"')}
        if version:
            source["version_id"] = str(version)
        return Fetched(
            path=final, claimed_sha256=_claimed(head), source=source, computed_sha256=sha
        )


def _claimed(head: dict[str, Any]) -> dict[str, str]:
    """The object's sha256 the store publishes (not a multipart one's checksum of checksums)."""
    checksum = head.get("ChecksumSHA256")
    if not checksum or "-" in checksum:
        return {}
    return {"": base64.b64decode(checksum).hex()}


def _resumed(response: dict[str, Any], offset: int) -> bool | None:
    """Whether a GET asked from ``offset`` answered from there (True), with the whole object
    (False: a store that ignores Range answers 200), or from elsewhere (None)."""
    if not offset:
        return False
    if str(response.get("ContentRange", "")).startswith(f"bytes {offset}-"):
        return True
    return False if response["ResponseMetadata"]["HTTPStatusCode"] == 200 else None


def _chunks(stream: Any) -> Iterator[bytes]:
    from botocore.exceptions import BotoCoreError
    from urllib3.exceptions import HTTPError

    # What each network read returned, from the urllib3 response under botocore's body:
    # StreamingBody.read(n) waits until n bytes came, so a source trickling a byte now and
    # then would never reach the rate floor's check. The length is checked by download().
    raw = stream._raw_stream
    try:
        while chunk := raw.read1(CHUNK_BYTES):
            yield chunk
    except (BotoCoreError, HTTPError, OSError) as exc:
        raise Transient(f"connection lost: {exc}") from exc
