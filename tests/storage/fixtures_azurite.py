"""Azurite (the real Azure Blob protocol server, from npm) on 127.0.0.1, and ADLSStorage fixtures on it.

- ``azurite``: one in-memory Azurite for the whole test session, stopped by its PID at the end.
- ``azurite_storage``: an :class:`~odibi_ray.storage.adls.ADLSStorage` on a fresh container per test,
  authenticated with Azurite's well-known ``devstoreaccount1`` key (public documentation, not a secret).

Network safety: Azurite always runs with ``--disableTelemetry`` (without it, it calls out to a cloud
metadata address) and listens on 127.0.0.1 only. :class:`AzuriteServer` is also used by
``benchmarks/bench_storage.py`` and by the outage test (on-disk ``--location``, restarted in place).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from collections.abc import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
AZURITE_BLOB = REPO / "node_modules" / ".bin" / "azurite-blob"

#: Azurite's well-known development account (documented publicly by Microsoft; not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    """A TCP port that nothing listens on at the moment (bound and released on 127.0.0.1)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AzuriteServer:
    """One azurite-blob process on 127.0.0.1: start, wait until its port answers, stop (SIGTERM) by PID.

    ``location=None`` runs with ``--inMemoryPersistence``; a folder runs on disk there (the two cannot be
    combined), so a stop and a ``start()`` on the same port keep the data. ``cert``/``key`` (PEM paths)
    serve HTTPS, with ``oauth="basic"`` accepting bearer tokens (Azurite checks issuer, audience, expiry).
    """

    def __init__(self, port: int | None = None, location: str | None = None, *, cert: str | None = None,
                 key: str | None = None, oauth: str | None = None) -> None:
        self.port = port or free_port()
        self.location = location
        self.cert, self.key, self.oauth = cert, key, oauth
        self.proc: subprocess.Popen | None = None
        self._cwd = tempfile.mkdtemp(prefix="azurite-cwd-")  # Azurite writes nothing into the repo
        self._log = open(os.path.join(self._cwd, "azurite.out"), "wb")

    @property
    def endpoint(self) -> str:
        """The account endpoint for the ``endpoint`` option (path-style, as Azurite serves it)."""
        scheme = "https" if self.cert else "http"
        return f"{scheme}://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        """A connection string for this server with the well-known development key."""
        return (f"DefaultEndpointsProtocol={'https' if self.cert else 'http'};AccountName={ACCOUNT};"
                f"AccountKey={ACCOUNT_KEY};BlobEndpoint={self.endpoint};")

    def start(self, timeout_s: float = 30.0) -> AzuriteServer:
        """Start the process and return once 127.0.0.1:port accepts connections."""
        if not AZURITE_BLOB.exists():
            raise RuntimeError(f"{AZURITE_BLOB} is missing: run `npm ci` in {REPO} (./dev test does it)")
        args = [str(AZURITE_BLOB), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
                "--disableTelemetry", "--skipApiVersionCheck", "--silent"]
        args += ["--location", self.location] if self.location else ["--inMemoryPersistence"]
        if self.cert:
            args += ["--cert", self.cert, "--key", self.key or ""]
        if self.oauth:
            args += ["--oauth", self.oauth]
        self.proc = subprocess.Popen(args, cwd=self._cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"azurite exited with {self.proc.returncode}: {self.output()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"azurite did not listen on 127.0.0.1:{self.port} within {timeout_s} s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the process by its PID and wait for it (SIGKILL if it does not exit in time)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout_s)

    def output(self) -> str:
        """What the process printed so far (for error messages)."""
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")

    def close(self) -> None:
        """Stop the process, close its log and remove its working folder."""
        self.stop()
        self._log.close()
        shutil.rmtree(self._cwd, ignore_errors=True)


@pytest.fixture(scope="session")
def azurite() -> Iterator[AzuriteServer]:
    """One in-memory Azurite blob server on a free 127.0.0.1 port for the whole session."""
    server = AzuriteServer().start()
    try:
        yield server
    finally:
        server.close()


def new_container(server: AzuriteServer) -> str:
    """Create a container with a fresh name on ``server`` and return the name."""
    from azure.storage.blob import BlobServiceClient

    name = f"t{uuid.uuid4().hex[:20]}"
    with BlobServiceClient(server.endpoint, credential={"account_name": ACCOUNT, "account_key": ACCOUNT_KEY},
                           retry_total=0) as svc:
        svc.create_container(name)
    return name


@pytest.fixture
def azurite_storage(azurite: AzuriteServer):
    """An ADLSStorage rooted at a prefix of a fresh container on the session's Azurite (account key)."""
    from odibi_ray.storage.adls import ADLSStorage

    container = new_container(azurite)
    storage = ADLSStorage.from_uri(f"abfss://{container}@{ACCOUNT}.dfs.core.windows.net/root",
                                   endpoint=azurite.endpoint, account_key=ACCOUNT_KEY)
    yield storage
    from azure.storage.blob import BlobServiceClient

    with BlobServiceClient(azurite.endpoint, credential={"account_name": ACCOUNT, "account_key": ACCOUNT_KEY},
                           retry_total=0) as svc:
        svc.delete_container(container)
