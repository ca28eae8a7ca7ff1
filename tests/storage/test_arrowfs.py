"""S3Storage (boto3 + pyarrow) on moto's S3 server, and the generic pyarrow path that HDFS uses.

Real parts: moto's S3 server on 127.0.0.1 (IAM authentication on, so it checks request signatures), a real
HTTPS moto with a trustme CA, real folders through pyarrow's LocalFileSystem. Two stand-ins, said where
used: a silent TCP listener (an endpoint that accepts and never answers) and a TCP fault proxy in front of
moto that answers 503 SlowDown or drops moto's answer for chosen connections (no S3 emulator fails on
demand). HDFS itself cannot run here (no cluster, no libhdfs): only its URI parsing, laziness and the
failure when the client library is missing are tested, and its code path over LocalFileSystem.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from odibi_ray.errors import (AlreadyExistsError, InvalidURIError, NotFoundError, PreconditionFailedError,
                              StorageAuthError, StorageError, StorageUnavailableError)
from odibi_ray.storage import open_storage
from odibi_ray.storage.arrowfs import ArrowFSStorage, S3Storage

from .fixtures_s3 import MotoServer, free_port

pytestmark = pytest.mark.timeout(120)


# --- URIs and options ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("uri, bucket, prefix, canonical", [
    ("s3://bkt", "bkt", "", "s3://bkt"),
    ("s3://bkt/", "bkt", "", "s3://bkt"),
    ("s3://my.bucket-1/a/b/", "my.bucket-1", "a/b", "s3://my.bucket-1/a/b"),
    ("S3://bkt/runs", "bkt", "runs", "s3://bkt/runs"),
])
def test_good_s3_uris(uri: str, bucket: str, prefix: str, canonical: str) -> None:
    store = open_storage(uri, access_key="AKIDEXAMPLE", secret_key="not-used-here", region="eu-west-1")
    assert isinstance(store, S3Storage) and isinstance(store, ArrowFSStorage)
    assert (store.bucket, store.prefix, store.uri, store.region) == (bucket, prefix, canonical, "eu-west-1")


@pytest.mark.parametrize("uri, fragment", [
    ("s3://", "names no bucket"),
    ("s3:///prefix", "names no bucket"),
    ("s3://Bad_Bucket/x", "invalid S3 bucket name"),
    ("s3://ab/x", "invalid S3 bucket name"),
    ("s3://bkt/a/../b", "invalid prefix"),
    ("s3://bkt/a//b", "invalid prefix"),
    ("s3://bkt//x", "invalid prefix"),
    ("s3://bkt:9000/x", "user info or a port"),
    ("s3:/bkt/x", "malformed"),
    ("gs://bkt/x", "not an S3 or HDFS URI"),
    ("hdfs:///data", "malformed HDFS URI"),
    ("hdfs://nn:99999/data", "invalid port"),
    ("hdfs://nn/a/../b", "invalid prefix"),
])
def test_bad_uris_are_invalid_uri_errors(uri: str, fragment: str) -> None:
    with pytest.raises(InvalidURIError, match=fragment):
        ArrowFSStorage.from_uri(uri)


def test_secrets_in_a_uri_are_refused_and_not_echoed() -> None:
    for uri in ("s3://AKIDEXAMPLE:Sup3rS3cret@bkt/x", "s3://bkt/x?X-Amz-Signature=Sup3rS3cret",
                "hdfs://user:Sup3rS3cret@nn/x"):
        with pytest.raises(InvalidURIError) as err:
            ArrowFSStorage.from_uri(uri)
        assert "Sup3rS3cret" not in str(err.value)


@pytest.mark.parametrize("options, error, fragment", [
    ({"endpoint_override": "ftp://127.0.0.1:9000"}, InvalidURIError, "invalid endpoint_override"),
    ({"endpoint_override": "http://127.0.0.1:9000/path"}, InvalidURIError, "invalid endpoint_override"),
    ({"endpoint_override": "http://127.0.0.1:notaport"}, InvalidURIError, "invalid endpoint_override"),
    ({"endpoint_override": "https://127.0.0.1:9000", "scheme": "http"}, InvalidURIError, "says https"),
    ({"scheme": "ftp"}, InvalidURIError, "'http' or 'https'"),
    ({"region": "Not A Region"}, InvalidURIError, "invalid S3 region"),
    ({"timeout_s": 0}, ValueError, "timeout_s"),
    ({"connect_timeout": -1}, ValueError, "connect_timeout"),
    ({"request_timeout": 1, "request_timeout_s": 2}, TypeError, "not both"),
    ({"max_attempts": 0}, ValueError, "max_attempts"),
    ({"no_such_option": 1}, TypeError, "no_such_option"),
    ({"anonymous": True, "access_key": "a", "secret_key": "b"}, StorageAuthError, "anonymous"),
    ({"access_key": "AKIDEXAMPLE"}, StorageAuthError, "go together"),
])
def test_bad_s3_options(options: dict, error: type, fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        open_storage("s3://bkt/p", **options)


def test_endpoint_forms() -> None:
    plain = open_storage("s3://bkt", endpoint_override="127.0.0.1:9000", scheme="http", anonymous=True)
    full = open_storage("s3://bkt", endpoint_override="https://127.0.0.1:9000", anonymous=True)
    default = open_storage("s3://bkt", endpoint_override="minio.local:9000", anonymous=True)
    assert (plain.endpoint, plain.scheme) == ("http://127.0.0.1:9000", "http")
    assert (full.endpoint, full.scheme) == ("https://127.0.0.1:9000", "https")
    assert (default.endpoint, default.scheme) == ("https://minio.local:9000", "https")


def test_region_comes_from_the_environment_when_not_given(monkeypatch) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    assert open_storage("s3://bkt", anonymous=True).region == "ap-south-1"
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    assert open_storage("s3://bkt", anonymous=True).region == "us-east-1"


# --- credentials ----------------------------------------------------------------------------------------------


def test_wrong_secret_key_is_an_auth_error_at_once(moto_s3: MotoServer, fault_proxy, caplog) -> None:
    """moto (IAM auth on) recomputes the signature and refuses it; the proxy counts requests: no retry."""
    good = moto_s3.storage()
    good.put("k", b"x")
    bad = moto_s3.storage(prefix=good.prefix, secret_key="wrong-secret-Sup3r",
                          endpoint_override=fault_proxy.endpoint)
    caplog.set_level(logging.DEBUG, logger="odibi_ray")
    calls = {"put": lambda: bad.put("k2", b"y"), "get": lambda: bad.get("k"), "head": lambda: bad.head("k"),
             "list": lambda: list(bad.list()), "delete_prefix": lambda: bad.delete_prefix("")}
    for op, call in calls.items():
        before = len(fault_proxy.seen)
        with pytest.raises(StorageAuthError) as err:
            call()
        assert len(fault_proxy.seen) - before == 1, f"{op} was retried"
        assert "HTTP 403" in str(err.value) and "Sup3r" not in str(err.value)
        if op != "head":  # a HEAD answer has no body, so no error code
            assert "SignatureDoesNotMatch" in str(err.value)
    assert not [r for r in caplog.records if "retry" in r.getMessage()]
    assert all("Sup3r" not in r.getMessage() for r in caplog.records)
    assert good.get("k") == b"x" and not good.exists("k2")


def test_unknown_access_key_is_an_auth_error(moto_s3: MotoServer) -> None:
    store = moto_s3.storage(access_key="AKIANOTKNOWNTOMOTO00", secret_key="whatever")
    with pytest.raises(StorageAuthError, match="InvalidAccessKeyId"):
        store.get("anything")


def test_secret_reference_is_resolved_in_each_process_and_never_pickled(moto_s3: MotoServer, monkeypatch) -> None:
    monkeypatch.setenv("ODIBI_TEST_S3_SECRET", moto_s3.secret_key)
    store = moto_s3.storage(secret_key="env://ODIBI_TEST_S3_SECRET")
    store.put("parent", b"from parent")
    blob = pickle.dumps(store)
    assert moto_s3.secret_key.encode() not in blob and b"env://ODIBI_TEST_S3_SECRET" in blob
    assert moto_s3.secret_key not in repr(store)
    child = ("import pickle, sys, os; s = pickle.loads(sys.stdin.buffer.read()); "
             "s.put('child', s.get('parent') + b' and child', {'pid': str(os.getpid())}); print(os.getpid())")
    done = subprocess.run([sys.executable, "-c", child], input=blob, capture_output=True, timeout=60,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    pid = done.stdout.decode().strip()
    assert pid != str(os.getpid())
    assert store.get("child") == b"from parent and child" and store.head("child").metadata == {"pid": pid}


def test_missing_secret_is_an_auth_error_naming_the_reference(moto_s3: MotoServer, monkeypatch) -> None:
    monkeypatch.delenv("ODIBI_TEST_S3_MISSING", raising=False)
    store = moto_s3.storage(secret_key="env://ODIBI_TEST_S3_MISSING")
    with pytest.raises(StorageAuthError, match="env://ODIBI_TEST_S3_MISSING"):
        store.get("x")


def test_repr_and_pickle_hold_no_secret_and_no_client(moto_s3: MotoServer) -> None:
    store = moto_s3.storage(secret_key=moto_s3.secret_key, session_token=None)
    store.put("k", b"v")
    store.arrow_filesystem()  # both clients open now
    text = repr(store) + str(store)
    assert moto_s3.secret_key not in text and moto_s3.access_key not in text
    assert text.startswith("S3Storage('s3://odibi-test/t/") and "127.0.0.1" in text
    state = store.__getstate__()
    assert "_boto" not in state and "_fs" not in state and "_lock" not in state
    copy = pickle.loads(pickle.dumps(store))
    assert copy.get("k") == b"v" and repr(copy) == repr(store)


# --- unavailable endpoints -------------------------------------------------------------------------------------


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A stand-in for a hung server: a listener on 127.0.0.1 that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


def test_dead_endpoint_is_unavailable_within_the_default_budget(moto_s3: MotoServer) -> None:
    store = moto_s3.storage(endpoint_override=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailableError, match=r"unavailable after [2-9] attempt\(s\)") as err:
        store.put("k", b"x")
    assert time.monotonic() - t0 < 10.0
    assert err.value.key == "k" and "EndpointConnectionError" in str(err.value)


def test_hung_endpoint_is_unavailable_within_the_default_budget(moto_s3: MotoServer, silent_endpoint) -> None:
    store = moto_s3.storage(endpoint_override=silent_endpoint)
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailableError, match="ReadTimeoutError"):
        store.get("k")
    assert time.monotonic() - t0 < 10.0


def test_budget_is_configurable_and_timeouts_are_retried(moto_s3: MotoServer, silent_endpoint) -> None:
    store = moto_s3.storage(endpoint_override=silent_endpoint, timeout_s=2.0, connect_timeout=0.3,
                            request_timeout=0.4)
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailableError, match=r"after [2-9] attempt\(s\)"):
        store.head("k")
    assert time.monotonic() - t0 < 2.0 + 0.5  # the budget, plus slack for a busy 2-core machine


# --- transient faults, through a fault-injecting proxy ------------------------------------------------------------


class FaultProxy:
    """TCP proxy on 127.0.0.1 in front of moto; ``plan`` lists faults for the next connections, in order.

    A stand-in for S3's transient faults (no emulator fails on demand): ``"503"`` answers S3's SlowDown
    without asking moto; ``"drop"`` forwards the request to moto (which carries it out) and drops moto's
    answer, as a cut connection would; anything else is forwarded both ways. ``seen`` records each connection.
    """

    SLOWDOWN = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>"
                b"<Message>Please reduce your request rate.</Message></Error>")

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.plan: list[str] = []
        self.seen: list[str] = []
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.endpoint = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.server.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn = self.server.accept()[0]
            except OSError:
                continue
            action = self.plan.pop(0) if self.plan else "forward"
            self.seen.append(action)
            threading.Thread(target=self._serve, args=(conn, action), daemon=True).start()

    def _serve(self, conn: socket.socket, action: str) -> None:
        try:
            if action == "503":
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    head += chunk
                conn.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(self.SLOWDOWN), self.SLOWDOWN))
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(conn, upstream, False), daemon=True).start()
            self._pipe(upstream, conn, action == "drop")
        finally:
            conn.close()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, drop_answer: bool) -> None:
        try:
            while True:
                chunk = src.recv(65536)
                if not chunk:
                    break
                if drop_answer and not chunk.startswith(b"HTTP/1.1 100"):
                    continue  # moto's final answer is lost (a 100-continue still goes through)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.server.close()


@pytest.fixture
def fault_proxy(moto_s3: MotoServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(moto_s3.port)
    yield proxy
    proxy.close()


def test_slowdown_is_retried_then_succeeds(moto_s3: MotoServer, fault_proxy: FaultProxy) -> None:
    store = moto_s3.storage(endpoint_override=fault_proxy.endpoint)
    fault_proxy.plan = ["503", "503"]
    info = store.put("k", b"after two 503s", {"n": "1"})
    assert fault_proxy.seen[:3] == ["503", "503", "forward"]
    fault_proxy.plan = ["503"]
    data, got = store.get_with_info("k")
    assert (data, got.etag, got.size, got.metadata) == (b"after two 503s", info.etag, 14, {"n": "1"})


def test_slowdown_forever_is_unavailable_within_the_budget(moto_s3: MotoServer, fault_proxy: FaultProxy) -> None:
    store = moto_s3.storage(endpoint_override=fault_proxy.endpoint, timeout_s=2.0, connect_timeout=0.5,
                            request_timeout=0.5)
    fault_proxy.plan = ["503"] * 100
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailableError, match=r"after \d attempt\(s\).*SlowDown, HTTP 503"):
        store.get("k")
    assert time.monotonic() - t0 < 2.0 and fault_proxy.seen.count("503") >= 2


def test_create_only_put_whose_answer_was_lost_is_still_ours(moto_s3: MotoServer, fault_proxy: FaultProxy) -> None:
    """moto stores the object but the answer is cut; the retry gets 412 and recognises its own write."""
    store = moto_s3.storage(endpoint_override=fault_proxy.endpoint)
    fault_proxy.plan = ["drop"]
    info = store.put("lock", b"run-1", {"owner": "run-1"}, if_none_match=True)
    assert fault_proxy.seen[0] == "drop" and len(fault_proxy.seen) >= 2
    assert store.get_with_info("lock") == (b"run-1", info)
    fault_proxy.plan = ["drop"]  # and someone else's object is still refused after a lost answer
    with pytest.raises(AlreadyExistsError):
        store.put("lock", b"run-2", {"owner": "run-2"}, if_none_match=True)
    assert store.get("lock") == b"run-1"


def test_compare_and_swap_whose_answer_was_lost_is_still_ours(moto_s3: MotoServer, fault_proxy: FaultProxy) -> None:
    store = moto_s3.storage(endpoint_override=fault_proxy.endpoint)
    etag = store.put("manifest", b"v1").etag
    fault_proxy.plan = ["drop"]
    info = store.put("manifest", b"v2", if_match=etag)
    assert store.head("manifest").etag == info.etag and store.get("manifest") == b"v2"
    with pytest.raises(PreconditionFailedError):
        store.put("manifest", b"v3", if_match=etag)


# --- reads are one version of an object ----------------------------------------------------------------------------


def test_reads_never_mix_versions_under_concurrent_overwrites(s3_storage: S3Storage) -> None:
    """pyarrow's S3 reads (a HEAD, then ranged GETs) come back torn when an object is replaced in between;
    every read here is one GetObject, so each result is exactly one written version (or a slice of one)."""
    versions = [bytes([65 + i]) * (10_000 * (1 + i % 2)) for i in range(4)]  # 10 KB and 20 KB, alternating
    s3_storage.put("hot", versions[0])
    stop = threading.Event()

    def overwrite() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            s3_storage.put("hot", versions[i % len(versions)])

    writer = threading.Thread(target=overwrite)
    writer.start()
    try:
        seen = set()
        for _ in range(60):
            whole = s3_storage.get("hot")
            assert whole in versions
            part = s3_storage.get("hot", 5_000, 15_000)
            assert any(part == v[5_000:15_000] for v in versions)
            data, info = s3_storage.get_with_info("hot")
            assert data in versions and info.size == len(data)
            seen.add(whole)
    finally:
        stop.set()
        writer.join(30)
    assert len(seen) >= 2  # the reader did overlap the writer


def test_missing_bucket_is_not_found(moto_s3: MotoServer) -> None:
    store = S3Storage.from_uri("s3://no-such-bucket/x", endpoint_override=moto_s3.endpoint, region=moto_s3.region,
                               access_key=moto_s3.access_key, secret_key=moto_s3.secret_key)
    with pytest.raises(NotFoundError, match="bucket 'no-such-bucket' does not exist"):
        store.put("k", b"x")
    with pytest.raises(NotFoundError):
        list(store.list())


def test_folder_markers_of_other_tools_are_not_listed(s3_storage: S3Storage, moto_s3: MotoServer) -> None:
    moto_s3.client().put_object(Bucket=moto_s3.bucket, Key=f"{s3_storage.prefix}/dir/", Body=b"")
    s3_storage.put("dir/file", b"x")
    assert [i.key for i in s3_storage.list()] == ["dir/file"]


def test_etags_are_s3s_own(s3_storage: S3Storage, moto_s3: MotoServer) -> None:
    info = s3_storage.put("e", b"hello")
    raw = moto_s3.client().head_object(Bucket=moto_s3.bucket, Key=f"{s3_storage.prefix}/e")
    assert info.etag == raw["ETag"] == '"5d41402abc4b2a76b9719d911017c592"'  # MD5, as S3 computes it


# --- pyarrow for Arrow readers -------------------------------------------------------------------------------------


def test_arrow_filesystem_reads_what_the_adapter_wrote(s3_storage: S3Storage) -> None:
    table = pa.table({"a": list(range(1000)), "b": [str(i) for i in range(1000)]})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    s3_storage.put("tables/t.parquet", sink.getvalue(), {"codec": "parquet"})
    fs = s3_storage.arrow_filesystem()
    assert pq.read_table("tables/t.parquet", filesystem=fs).equals(table)
    assert [i.path for i in fs.get_file_info(pafs.FileSelector("tables"))] == ["tables/t.parquet"]


# --- HTTPS with a private CA ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_https(tmp_path_factory) -> Iterator[MotoServer]:
    """A second moto server, on HTTPS with a certificate from a throwaway trustme CA."""
    import trustme

    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    with open(folder / "cert.pem", "wb") as f:
        for pem in cert.cert_chain_pems:
            f.write(pem.bytes())
    server = MotoServer(cert=str(folder / "cert.pem"), key=str(folder / "key.pem"))
    server.ca_file = str(folder / "ca.pem")
    server.start()
    try:
        yield server.setup_iam()
    finally:
        server.stop()


def test_https_with_a_private_ca(moto_https: MotoServer) -> None:
    store = moto_https.storage(tls_ca_file=moto_https.ca_file)
    assert store.endpoint.startswith("https://")
    store.put("tls", b"over https", {"via": "tls"})
    assert store.get("tls") == b"over https" and store.head("tls").metadata == {"via": "tls"}
    with store.arrow_filesystem().open_input_file("tls") as f:  # pyarrow gets the CA too
        assert f.read() == b"over https"


def test_https_with_an_unknown_ca_is_refused_without_retries(moto_https: MotoServer, caplog) -> None:
    store = moto_https.storage()  # the system CAs do not know the trustme CA
    caplog.set_level(logging.INFO, logger="odibi_ray")
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailableError, match="TLS"):
        store.get("tls")
    assert time.monotonic() - t0 < 2.0
    assert not [r for r in caplog.records if "retry" in r.getMessage()]


# --- the generic pyarrow path (what HDFS uses), over real folders --------------------------------------------------


@pytest.fixture
def arrow_local(tmp_path) -> ArrowFSStorage:
    """The HDFS code path on pyarrow's LocalFileSystem (same pyarrow.fs interface as HadoopFileSystem)."""
    root = tmp_path / "root"
    return ArrowFSStorage(f"file://{root}", str(root), pafs.LocalFileSystem)


def test_generic_path_round_trip(arrow_local: ArrowFSStorage) -> None:
    first = arrow_local.put("a/b/obj", b"hello world")
    assert first.size == 11 and arrow_local.get("a/b/obj") == b"hello world"
    assert arrow_local.get("a/b/obj", 6) == b"world" and arrow_local.get("a/b/obj", 2, 4) == b"ll"
    assert arrow_local.get("a/b/obj", 50) == b""
    time.sleep(0.01)
    second = arrow_local.put("a/b/obj", b"changed!")
    assert second.etag != first.etag and arrow_local.head("a/b/obj").etag == second.etag
    data, info = arrow_local.get_with_info("a/b/obj")
    assert data == b"changed!" and info.etag == second.etag and info.metadata == {}
    arrow_local.put("a/c", b"2")
    arrow_local.put("ab", b"3")
    assert [i.key for i in arrow_local.list("a")] == ["a/b/obj", "a/c", "ab"]
    assert [i.key for i in arrow_local.list("a/")] == ["a/b/obj", "a/c"]
    assert arrow_local.delete("a/c") is True and arrow_local.delete("a/c") is False
    with pytest.raises(NotFoundError):
        arrow_local.delete("a/c", missing_ok=False)
    with pytest.raises(NotFoundError):
        arrow_local.get("a/c")
    with pytest.raises(NotFoundError):
        arrow_local.head("a/b")  # a folder is no object
    assert arrow_local.delete_prefix("a") == 2 and [i.key for i in arrow_local.list()] == []


def test_generic_path_refuses_what_pyarrow_cannot_do(arrow_local: ArrowFSStorage) -> None:
    with pytest.raises(StorageError, match="metadata is not supported"):
        arrow_local.put("m", b"x", {"codec": "bytes"})
    with pytest.raises(StorageError, match="conditional put is not supported"):
        arrow_local.put("m", b"x", if_none_match=True)
    with pytest.raises(StorageError, match="conditional put is not supported"):
        arrow_local.put("m", b"x", if_match='"etag"')
    assert not arrow_local.exists("m")
    with pytest.raises(InvalidURIError, match="invalid object key"):
        arrow_local.put("../escape", b"x")


def test_generic_path_hides_temp_files_and_pickles(arrow_local: ArrowFSStorage, tmp_path) -> None:
    arrow_local.put("k", b"v")
    (tmp_path / "root" / ".k.odibi-tmp-0123456789abcdef0123456789abcdef").write_bytes(b"partial")
    assert [i.key for i in arrow_local.list()] == ["k"]
    copy = pickle.loads(pickle.dumps(arrow_local))
    assert copy.get("k") == b"v" and copy.uri == arrow_local.uri


def test_pyarrow_s3_errors_map_to_the_hierarchy(moto_s3: MotoServer) -> None:
    """The generic path over pyarrow's own S3FileSystem: AWS error texts of the C++ SDK are mapped."""
    def s3fs(secret: str, port: int) -> ArrowFSStorage:
        factory = functools.partial(pafs.S3FileSystem, access_key=moto_s3.access_key, secret_key=secret,
                                    endpoint_override=f"127.0.0.1:{port}", scheme="http", region=moto_s3.region,
                                    retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))
        return ArrowFSStorage(f"s3://{moto_s3.bucket}/generic", f"{moto_s3.bucket}/generic", factory,
                              timeout_s=1.5)

    good = s3fs(moto_s3.secret_key, moto_s3.port)
    good.put("x", b"via pyarrow")
    assert good.get("x") == b"via pyarrow"
    with pytest.raises(NotFoundError):
        good.get("missing")
    with pytest.raises(StorageAuthError, match="ACCESS_DENIED"):
        s3fs("wrong", moto_s3.port).get("x")
    with pytest.raises(StorageUnavailableError, match="NETWORK_CONNECTION"):
        s3fs(moto_s3.secret_key, free_port()).get("x")
    good.delete_prefix("")


# --- HDFS: only as far as it runs without a cluster ----------------------------------------------------------------


def test_hdfs_uri_is_parsed_without_touching_the_cluster() -> None:
    """Building the adapter opens nothing: it succeeds here although no libhdfs exists on this machine."""
    store = open_storage("hdfs://namenode.example:9000/data/odibi/", user="etl", timeout_s=3)
    assert type(store) is ArrowFSStorage
    assert (store.uri, store.root, store.timeout_s) == ("hdfs://namenode.example:9000/data/odibi", "/data/odibi", 3)
    assert open_storage("hdfs://nn/x").uri == "hdfs://nn:8020/x"
    with pytest.raises(TypeError, match="unknown HDFS option"):
        open_storage("hdfs://nn/x", endpoint_override="x")
    copy = pickle.loads(pickle.dumps(store))
    assert copy.uri == store.uri and repr(copy) == "ArrowFSStorage('hdfs://namenode.example:9000/data/odibi')"


def test_hdfs_without_its_client_library_fails_clearly_and_fast() -> None:
    """On this machine libhdfs is absent: the first use says what is missing, and is not retried."""
    store = open_storage(f"hdfs://127.0.0.1:{free_port()}/data")
    t0 = time.monotonic()
    with pytest.raises(StorageError, match="HDFS client library not available") as err:
        store.head("k")
    assert type(err.value) is StorageError and time.monotonic() - t0 < 2.0
