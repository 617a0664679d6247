"""An S3-compatible server for the object-storage tests: moto's server mode on 127.0.0.1.

A test module takes its fixtures with ``pytest_plugins = ["tests.s3server"]``. The
environment is the one a user would set (fake credentials, ``AWS_ENDPOINT_URL``), so the
code under test finds the server the way it finds MinIO; every test gets its own bucket.
"""

from __future__ import annotations

import contextlib
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

KEY_ID = "AKIAFAKEKEYID0000001"
SECRET = "fake/secret+never-to-be-shown0000000000"
TOKEN = "fake-session-token-never-to-be-shown"
_CLEARED = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
    "AWS_CA_BUNDLE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
)


@dataclass
class S3:
    """One empty bucket on the test server, and a boto3 client to arrange objects with."""

    endpoint: str
    bucket: str
    client: Any
    key_id: str = KEY_ID
    secret: str = SECRET
    token: str = TOKEN

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}"

    def put(self, key: str, body: bytes | Path) -> str:
        data = body.read_bytes() if isinstance(body, Path) else body
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        return self.url(key)

    def get(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    @contextlib.contextmanager
    def denying(self) -> Iterator[None]:
        """Make the server check signatures against its own (empty) IAM: every request is
        denied, as Amazon denies unknown or unsigned ones (moto's reset-auth control)."""

        def reset(count: str) -> None:
            request = urllib.request.Request(
                f"{self.endpoint}/moto-api/reset-auth",
                data=count.encode(),
                method="POST",
                headers={"Content-Type": "text/plain"},
            )
            with urllib.request.urlopen(request, timeout=10) as answer:
                answer.read()

        reset("0")
        try:
            yield
        finally:
            reset("inf")

    def listing(self) -> list[str]:
        found = self.client.list_objects_v2(Bucket=self.bucket).get("Contents", [])
        return sorted(str(o["Key"]) for o in found)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """The server's URL; it serves the whole session."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3:
    """A fresh bucket, with the environment pointing at the server (fake credentials)."""
    for name in _CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never probe an instance role
    # No ~/.aws of the machine running the tests: the chain sees only the variables above.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    client = boto3.client(
        "s3",
        endpoint_url=s3_server,
        region_name="us-east-1",
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
    )
    bucket = f"bb-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return S3(s3_server, bucket, client)
