"""moto's S3 server (a real S3 protocol server) on 127.0.0.1, and S3Storage fixtures on it.

- ``moto_s3``: one moto server process for the whole session, stopped by its PID at the end. It serves
  one request at a time: moto checks a PutObject's If-None-Match / If-Match and then stores the object in
  two steps, which S3 does atomically; serving requests one by one makes moto atomic too, so the create-only
  race tests test the adapter, not a moto race. IAM authentication is switched on after setup (moto's
  ``/moto-api/reset-auth``): from then on every request must be signed with the key of the IAM user made
  here, and a wrong secret is refused with SignatureDoesNotMatch, as on AWS.
- ``s3_storage``: an :class:`~odibi_ray.storage.arrowfs.S3Storage` on a fresh prefix of the bucket.

Network safety: the server listens on 127.0.0.1 only; every client gets explicit credentials, region and
endpoint, and ``AWS_EC2_METADATA_DISABLED=true`` is set for this process (and so for the Ray workers it
starts) before any AWS SDK loads, so neither boto3 nor pyarrow's AWS SDK asks the EC2 metadata address.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any
from collections.abc import Iterator

import pytest

os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ["AWS_CONFIG_FILE"] = os.devnull  # no developer profile (endpoint, credential_process) leaks in
os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull

BUCKET = "odibi-test"
REGION = "us-east-1"
SETUP_KEY = "setup"  # before IAM authentication is on, moto accepts any key

#: moto's WSGI app under werkzeug, one request at a time (see the module docstring).
_LAUNCH = """
import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
run_simple(sys.argv[1], int(sys.argv[2]), DomainDispatcherApplication(create_backend_app), threaded=False,
           request_handler=MotoRequestHandler, ssl_context=(sys.argv[3], sys.argv[4]) if len(sys.argv) > 3 else None)
"""


def free_port() -> int:
    """A TCP port that nothing listens on at the moment (bound and released on 127.0.0.1)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class MotoServer:
    """One moto server process on 127.0.0.1: start, wait until it answers, stop by PID.

    ``cert``/``key`` (PEM paths) serve HTTPS. After :meth:`setup_iam`, ``access_key``/``secret_key`` are
    the only credentials it accepts.
    """

    cert: str | None = None
    key: str | None = None
    port: int = 0
    proc: subprocess.Popen | None = None
    access_key: str = SETUP_KEY
    secret_key: str = SETUP_KEY
    bucket: str = BUCKET
    region: str = REGION

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.cert else 'http'}://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> MotoServer:
        """Start the process (retrying on another port if the chosen one was taken meanwhile)."""
        env = dict(os.environ, AWS_EC2_METADATA_DISABLED="true")
        for _ in range(3):
            self.port = free_port()
            self._log = tempfile.NamedTemporaryFile(prefix="moto-", suffix=".log", delete=False)
            args = [sys.executable, "-c", _LAUNCH, "127.0.0.1", str(self.port)]
            if self.cert:
                args += [self.cert, self.key or ""]
            self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self.proc.poll() is None:
                if self._answers():
                    return self
                time.sleep(0.05)
            self.stop()
        with open(self._log.name, "rb") as f:
            tail = f.read()[-2000:].decode(errors="replace")
        raise RuntimeError(f"moto server did not start on 127.0.0.1:{self.port}: {tail}")

    def _answers(self) -> bool:
        try:
            self.api("GET", "/moto-api/data.json")
            return True
        except OSError:
            return False

    def api(self, method: str, path: str, body: bytes | None = None) -> bytes:
        """A request to moto's own control API (not S3)."""
        if self.cert:
            import ssl

            ctx = ssl.create_default_context(cafile=self.ca_file) if getattr(self, "ca_file", None) else \
                ssl._create_unverified_context()  # noqa: S323 - readiness probe of our own loopback server
            conn: http.client.HTTPConnection = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=5,
                                                                           context=ctx)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "text/plain"})
            response = conn.getresponse()
            data = response.read()
            if response.status != 200:
                raise OSError(f"moto-api {path}: HTTP {response.status}")
            return data
        finally:
            conn.close()

    def client(self, service: str = "s3", **kwargs: Any) -> Any:
        """A boto3 client for this server with explicit credentials, region and endpoint."""
        import boto3
        from botocore.config import Config

        kwargs.setdefault("aws_access_key_id", self.access_key)
        kwargs.setdefault("aws_secret_access_key", self.secret_key)
        return boto3.session.Session().client(
            service, endpoint_url=self.endpoint, region_name=self.region,
            config=Config(retries={"total_max_attempts": 1}, s3={"addressing_style": "path"}),
            verify=getattr(self, "ca_file", None) or None, **kwargs)

    def setup_iam(self) -> MotoServer:
        """Make the bucket and an IAM user allowed s3:*, then switch IAM authentication on for every request."""
        iam = self.client("iam")
        iam.create_user(UserName="odibi")
        iam.put_user_policy(UserName="odibi", PolicyName="s3-all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="odibi")["AccessKey"]
        self.client().create_bucket(Bucket=self.bucket)
        self.api("POST", "/moto-api/reset-auth", b"0")  # from now on: signed by a known IAM key, or refused
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
        return self

    def storage(self, prefix: str | None = None, **options: Any):
        """An S3Storage on ``prefix`` (default: a fresh one) of this server's bucket."""
        from odibi_ray.storage.arrowfs import S3Storage

        options = {"endpoint_override": self.endpoint, "region": self.region, "access_key": self.access_key,
                   "secret_key": self.secret_key, **options}
        prefix = f"t/{uuid.uuid4().hex[:12]}" if prefix is None else prefix
        return S3Storage.from_uri(f"s3://{self.bucket}/{prefix}", **options)

    def stop(self) -> None:
        """SIGTERM the process by its PID (SIGKILL if it lingers)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoServer]:
    """One moto S3 server for the session, with a bucket and IAM authentication on."""
    server = MotoServer().start()
    try:
        server.setup_iam()
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_storage(moto_s3: MotoServer):
    """An S3Storage on a fresh prefix of the moto bucket; the prefix is emptied afterwards."""
    store = moto_s3.storage()
    yield store
    try:
        store.delete_prefix("")
    except Exception:  # noqa: BLE001 - cleanup only; a test that broke the server reports that itself
        pass
