"""S3Store: cloudlets' state in an S3 bucket, for EC2 fleets.

>>> store = S3Store("my-cloudlets", region="eu-west-1")                 # doctest: +SKIP
>>> cluster.cloudlets.configure(hosts=pool, store=store)               # doctest: +SKIP

Objects under ``prefix``: ``<user>.tar`` (the saved state layer),
``<user>.json`` (its :class:`~ecshell.cloudlets.stores.Record`) and
``locks/<user>`` (the placement lock). A lock is created with a conditional
write (``If-None-Match: *``), which S3 performs atomically: of two shells,
one creates it and the other is refused and waits. ``endpoint_url`` points it
at any S3-compatible service (the tests use a moto server).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import Iterator
from typing import Any

from ..errors import ArgumentError
from ..state import whoami
from .runtime import USER_NAME, check_user
from .stores import Record, Store, StoreError

log = logging.getLogger("ecshell")

#: HTTP statuses S3 answers a conditional write with when the object exists (or is being written).
_REFUSED = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


class S3Store(Store):
    """Saved state layers and records as objects in ``bucket`` under ``prefix``."""

    def __init__(self, bucket: str, prefix: str = "cloudlets/", region: str | None = None,
                 endpoint_url: str | None = None, lock_timeout: float = 60.0, client: Any = None) -> None:
        if not isinstance(bucket, str) or not bucket:
            raise ArgumentError(f"give the S3 bucket's name, e.g. S3Store('my-cloudlets'), not {bucket!r}")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self.bucket, self.prefix, self.lock_timeout = bucket, prefix, lock_timeout
        if client is None:
            import boto3

            client = boto3.session.Session(region_name=region).client("s3", endpoint_url=endpoint_url)
        self.client = client

    def __repr__(self) -> str:
        return f"<S3Store s3://{self.bucket}/{self.prefix}>"

    def _key(self, user: str, suffix: str) -> str:
        return f"{self.prefix}{check_user(user)}{suffix}"

    def _failed(self, what: str, exc: Exception) -> StoreError:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        return StoreError(f"cloudlet store s3://{self.bucket}/{self.prefix}: {what} failed: "
                          f"{code + ': ' if code else ''}{exc}")

    @staticmethod
    def _code(exc: Exception) -> str:
        return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))

    # -- the lock -------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, user: str) -> Iterator[None]:
        from botocore.exceptions import ClientError

        key = f"{self.prefix}locks/{check_user(user)}"
        token = secrets.token_hex(8)
        body = json.dumps({"by": whoami(), "at": time.time(), "token": token}).encode()
        deadline = time.monotonic() + self.lock_timeout
        pause = 0.05
        while True:
            try:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*")
                break
            except ClientError as exc:
                if self._code(exc) not in _REFUSED:
                    raise self._failed(f"taking the lock of {user}", exc) from None
            if time.monotonic() >= deadline:
                raise StoreError(f"{user}'s cloudlet is being placed by another shell ({self._holder(key)}); "
                                 f"waited {self.lock_timeout:g}s. If that shell is gone, delete "
                                 f"s3://{self.bucket}/{key}")
            time.sleep(pause * (0.5 + secrets.randbelow(100) / 100))
            pause = min(pause * 1.5, 1.0)
        try:
            yield
        finally:
            self._unlock(key, token)

    def _holder(self, key: str) -> str:
        try:
            data = json.loads(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
            return f"held by {data.get('by', 'unknown')}" if isinstance(data, dict) else "held"
        except Exception:  # only for the message
            return "held"

    def _unlock(self, key: str, token: str) -> None:
        from botocore.exceptions import ClientError

        try:
            data = json.loads(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
            if isinstance(data, dict) and data.get("token") == token:
                self.client.delete_object(Bucket=self.bucket, Key=key)
            else:
                log.warning("the lock s3://%s/%s was no longer ours when released", self.bucket, key)
        except (ClientError, ValueError) as exc:
            log.warning("could not release the lock s3://%s/%s: %s", self.bucket, key, exc)

    # -- records and archives ---------------------------------------------------------

    def read(self, user: str) -> Record | None:
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(user, ".json"))["Body"].read()
        except ClientError as exc:
            if self._code(exc) in ("NoSuchKey", "404"):
                return None
            raise self._failed(f"reading {user}'s record", exc) from None
        return Record.from_json(user, body)

    def write(self, record: Record) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(record.user, ".json"),
                                   Body=record.to_json().encode())
        except ClientError as exc:
            raise self._failed(f"writing {record.user}'s record", exc) from None

    def upload(self, user: str, archive: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:  # a PUT (or a multipart upload's completion) replaces the object whole
            self.client.upload_file(archive, self.bucket, self._key(user, ".tar"))
        except (ClientError, BotoCoreError) as exc:
            raise self._failed(f"uploading {user}'s state", exc) from None

    def download(self, user: str, directory: str) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        path = os.path.join(directory, check_user(user) + ".tar")
        try:
            self.client.download_file(self.bucket, self._key(user, ".tar"), path)
        except (ClientError, BotoCoreError) as exc:
            raise self._failed(f"downloading {user}'s state", exc) from None
        return path

    def users(self) -> list[str]:
        from botocore.exceptions import ClientError

        found = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
                for item in page.get("Contents", []):
                    name = item["Key"][len(self.prefix):]
                    if name.endswith(".json") and USER_NAME.fullmatch(name[:-5]):
                        found.append(name[:-5])
        except ClientError as exc:
            raise self._failed("listing users", exc) from None
        return sorted(found)
