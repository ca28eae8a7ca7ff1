"""ADLSStorage beyond the conformance suite: URIs, auth modes, error mapping, budgets, an outage, hygiene.

Everything runs against real Azurite processes on 127.0.0.1 (the session one from fixtures_azurite.py, an
HTTPS one with OAuth for token credentials, an on-disk one for the outage) or real sockets: a port with
nothing listening, a server that accepts and never answers, and :class:`FaultProxy`, a real HTTP proxy in
front of Azurite that answers 503 or drops answers. Two things cannot run here and are said where they are:
a service principal / managed identity token (needs Microsoft Entra ID; only the credential built from the
options is checked), and the hierarchical-namespace (DataLake) path (Azurite has no HNS; one test drives
that routing with a recording stand-in for the DataLake client).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import pickle
import socket
import socketserver
import threading
import time
import traceback
from datetime import datetime, timedelta, timezone
from collections.abc import Callable

import pytest

from odibi_ray.errors import (AlreadyExistsError, InvalidURIError, NotFoundError, PreconditionFailedError,
                              StorageAuthError, StorageError, StorageUnavailableError)
from odibi_ray.storage import open_storage
from odibi_ray.storage.adls import ADLSStorage
from tests.storage.fixtures_azurite import ACCOUNT, ACCOUNT_KEY, AzuriteServer, free_port, new_container

WRONG_KEY = base64.b64encode(b"not the key of devstoreaccount1, 64 bytes long...... padding!!!!").decode()
HOST = f"{ACCOUNT}.dfs.core.windows.net"


@pytest.fixture
def container(azurite: AzuriteServer) -> str:
    return new_container(azurite)


def key_storage(azurite: AzuriteServer, container: str, prefix: str = "t", **options) -> ADLSStorage:
    return ADLSStorage.from_uri(f"abfss://{container}@{HOST}/{prefix}", endpoint=azurite.endpoint,
                                account_key=ACCOUNT_KEY, **options)


def container_sas(container: str, **permissions) -> str:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    perms = permissions or dict(read=True, write=True, delete=True, list=True)
    return generate_container_sas(ACCOUNT, container, account_key=ACCOUNT_KEY,
                                  permission=ContainerSasPermissions(**perms),
                                  expiry=datetime.now(timezone.utc) + timedelta(hours=1))


class RequestCounter:
    """A ``raw_request_hook``: counts the HTTP requests the SDK sends (retries included)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, request) -> None:
        self.count += 1


# --- URIs ------------------------------------------------------------------------------------------------------


def test_abfss_uri_parts_and_default_endpoint() -> None:
    s = ADLSStorage.from_uri(f"abfss://raw-data@{HOST}/runs/etl/", account_key="k")
    assert (s.filesystem, s.account, s.prefix) == ("raw-data", ACCOUNT, "runs/etl")
    assert s.uri == f"abfss://raw-data@{HOST}/runs/etl"
    assert s.account_url == f"https://{ACCOUNT}.blob.core.windows.net"


def test_abfs_and_sovereign_cloud_suffix() -> None:
    s = ADLSStorage.from_uri("abfs://fs1@acct01.dfs.core.chinacloudapi.cn", sas_token="sv=x&sig=y")
    assert (s.filesystem, s.account, s.prefix, s.scheme) == ("fs1", "acct01", "", "abfs")
    assert s.account_url == "https://acct01.blob.core.chinacloudapi.cn"
    assert s.uri == "abfs://fs1@acct01.dfs.core.chinacloudapi.cn"


def test_az_uri_takes_the_account_from_the_option_or_the_environment(monkeypatch) -> None:
    s = ADLSStorage.from_uri("az://fs1/a/b", account_name="acct01", account_key="k")
    assert (s.filesystem, s.account, s.prefix, s.uri) == ("fs1", "acct01", "a/b", "az://fs1/a/b")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", "envacct")
    assert ADLSStorage.from_uri("az://fs1", account_key="k").account_url == "https://envacct.blob.core.windows.net"
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT")
    with pytest.raises(InvalidURIError, match="account_name option or .*AZURE_STORAGE_ACCOUNT"):
        ADLSStorage.from_uri("az://fs1/a", account_key="k")


def test_open_storage_dispatches_every_form_to_adls(monkeypatch) -> None:
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", "acct01")
    for uri in (f"abfss://fs1@{HOST}/p", f"abfs://fs1@{HOST}/p", "az://fs1/p"):
        assert type(open_storage(uri, account_key="k")) is ADLSStorage


@pytest.mark.parametrize("uri, match", [
    (f"abfss://{HOST}/p", "malformed ADLS URI"),                       # no filesystem@
    ("abfss://fs1@acct01/p", "malformed ADLS URI"),                    # host is not <account>.dfs.<suffix>
    (f"abfss://@{HOST}/p", "malformed ADLS URI"),
    (f"abfss://Upper@{HOST}/p", "invalid filesystem"),
    (f"abfss://a--b@{HOST}/p", "invalid filesystem"),
    (f"abfss://fs@{HOST}/p", "invalid filesystem"),                    # too short
    ("abfss://fs1@ab.dfs.core.windows.net/p", "invalid storage account"),
    ("abfss://fs1@Acct-1.dfs.core.windows.net/p", "invalid storage account"),
    (f"abfss://fs1@{HOST}/a//b", "invalid prefix"),
    (f"abfss://fs1@{HOST}/a/../b", "invalid prefix"),
    ("az://fs1@acct01/p", "az://<filesystem>/<prefix>"),
    ("az:///p", "names no filesystem"),
    ("s3://bucket/p", "not an ADLS URI"),
    ("abfss:/fs1@x", "not an ADLS URI"),
])
def test_bad_uris_are_invalid_uri_errors(uri: str, match: str) -> None:
    options = {"account_name": "acct01"} if uri.startswith("az:") else {}
    with pytest.raises(InvalidURIError, match=match):
        ADLSStorage.from_uri(uri, account_key="k", **options)


def test_credentials_in_the_uri_are_refused_without_echoing_them() -> None:
    with pytest.raises(InvalidURIError, match="pass credentials .* as options") as err:
        ADLSStorage.from_uri(f"abfss://fs1@{HOST}/p?sv=2024&sig=TOPSECRETSIG", account_key="k")
    assert "TOPSECRETSIG" not in str(err.value)
    with pytest.raises(InvalidURIError) as err:
        ADLSStorage.from_uri(f"abfss://fs1:TOPSECRETPW@{HOST}/p", account_key="k")
    assert "TOPSECRETPW" not in str(err.value)


def test_bad_options_are_precise_errors() -> None:
    uri = f"abfss://fs1@{HOST}/p"
    with pytest.raises(TypeError, match="acount_key"):
        ADLSStorage.from_uri(uri, acount_key="k")
    with pytest.raises(InvalidURIError, match="invalid endpoint"):
        ADLSStorage.from_uri(uri, account_key="k", endpoint="ftp://127.0.0.1/x")
    with pytest.raises(InvalidURIError, match="differs from the account"):
        ADLSStorage.from_uri(uri, account_key="k", account_name="otheracct")
    with pytest.raises(ValueError, match="timeout_s"):
        ADLSStorage.from_uri(uri, account_key="k", timeout_s=0)
    with pytest.raises(ValueError, match="client_options may not set retry_total"):
        ADLSStorage.from_uri(uri, account_key="k", client_options={"retry_total": 10})


# --- credentials: choice and errors ---------------------------------------------------------------------------


def test_missing_credentials_name_the_accepted_options() -> None:
    with pytest.raises(StorageAuthError) as err:
        ADLSStorage.from_uri(f"abfss://fs1@{HOST}/p")
    msg = str(err.value)
    for option in ("connection_string", "account_key", "sas_token", "tenant_id", "client_secret",
                   "managed_identity", "credential='default'"):
        assert option in msg


def test_several_or_incomplete_credentials_are_refused_without_values() -> None:
    uri = f"abfss://fs1@{HOST}/p"
    with pytest.raises(StorageAuthError, match="several credentials given \\(account_key, sas_token\\)") as err:
        ADLSStorage.from_uri(uri, account_key="KEYVALUE123", sas_token="sig=SASVALUE123")
    assert "KEYVALUE123" not in str(err.value) and "SASVALUE123" not in str(err.value)
    with pytest.raises(StorageAuthError, match="missing: client_id"):
        ADLSStorage.from_uri(uri, tenant_id="t", client_secret="SPSECRET123")
    with pytest.raises(StorageAuthError, match="'default' or a TokenCredential"):
        ADLSStorage.from_uri(uri, credential="KEYVALUE123")
    with pytest.raises(StorageAuthError, match="no get_token"):
        ADLSStorage.from_uri(uri, credential=object())


def test_token_credentials_need_https(azurite: AzuriteServer) -> None:
    with pytest.raises(StorageAuthError, match="need an https endpoint"):
        ADLSStorage.from_uri(f"abfss://fs1@{HOST}/p", endpoint=azurite.endpoint, credential=StaticToken("x"))


def test_service_principal_and_managed_identity_build_their_credentials(monkeypatch) -> None:
    """Not runnable here (they need Microsoft Entra ID): only the credential built from the options is
    checked, never asked for a token (which would leave loopback)."""
    from azure.identity import ClientSecretCredential, ManagedIdentityCredential

    monkeypatch.setenv("ODIBI_TEST_SP_SECRET", "sp-secret-value")
    sp = ADLSStorage.from_uri(f"abfss://fs1@{HOST}/p", tenant_id="00000000-0000-0000-0000-000000000001",
                              client_id="00000000-0000-0000-0000-000000000002",
                              client_secret="env://ODIBI_TEST_SP_SECRET")
    assert sp.auth == "service_principal" and isinstance(sp._credential(), ClientSecretCredential)
    assert "sp-secret-value" not in repr(sp) and b"sp-secret-value" not in pickle.dumps(sp)
    mi = ADLSStorage.from_uri(f"abfss://fs1@{HOST}/p", managed_identity=True, client_id="cid")
    assert mi.auth == "managed_identity" and isinstance(mi._credential(), ManagedIdentityCredential)


# --- auth modes that run against Azurite -----------------------------------------------------------------------


def round_trip(storage: ADLSStorage) -> None:
    info = storage.put("auth/obj", b"payload", {"mode": storage.auth})
    assert storage.get("auth/obj") == b"payload"
    assert storage.head("auth/obj").etag == info.etag
    assert [i.key for i in storage.list("auth/")] == ["auth/obj"]
    assert storage.delete_prefix("auth/") == 1


def test_account_key(azurite: AzuriteServer, container: str) -> None:
    round_trip(key_storage(azurite, container))


def test_connection_string_supplies_account_and_endpoint(azurite: AzuriteServer, container: str) -> None:
    s = ADLSStorage.from_uri(f"az://{container}/cs", connection_string=azurite.connection_string)
    assert s.auth == "connection_string"
    round_trip(s)
    assert s.account == ACCOUNT
    other = ADLSStorage.from_uri(f"abfss://{container}@otheracct.dfs.core.windows.net/cs",
                                 connection_string=azurite.connection_string)
    with pytest.raises(StorageAuthError, match="another account"):
        other.put("k", b"x")


def test_sas_token(azurite: AzuriteServer, container: str) -> None:
    s = ADLSStorage.from_uri(f"az://{container}/sas", account_name=ACCOUNT, endpoint=azurite.endpoint,
                             sas_token="?" + container_sas(container))
    assert s.auth == "sas_token"
    round_trip(s)


def test_read_only_sas_cannot_write_and_is_not_retried(azurite: AzuriteServer, container: str) -> None:
    hook = RequestCounter()
    s = ADLSStorage.from_uri(f"az://{container}/sas", account_name=ACCOUNT, endpoint=azurite.endpoint,
                             sas_token=container_sas(container, read=True, list=True),
                             client_options={"raw_request_hook": hook})
    with pytest.raises(StorageAuthError, match="credentials refused") as err:
        s.put("k", b"x")
    assert err.value.key == "k" and hook.count == 1


def test_env_reference_resolves_in_the_process_and_pickles_as_the_reference(
        azurite: AzuriteServer, container: str, monkeypatch) -> None:
    monkeypatch.setenv("ODIBI_TEST_AZURITE_KEY", ACCOUNT_KEY)
    s = ADLSStorage.from_uri(f"abfss://{container}@{HOST}/env", endpoint=azurite.endpoint,
                             account_key="env://ODIBI_TEST_AZURITE_KEY")
    round_trip(s)
    blob = pickle.dumps(s)
    assert ACCOUNT_KEY.encode() not in blob and b"env://ODIBI_TEST_AZURITE_KEY" in blob
    copy = pickle.loads(blob)
    copy.put("again", b"1")
    monkeypatch.delenv("ODIBI_TEST_AZURITE_KEY")
    from odibi_ray.storage import base

    base._INSTANCES.clear()  # as in a new process: unpickling there makes a fresh adapter (no client yet)
    fresh = pickle.loads(blob)  # a process where the variable is not set
    with pytest.raises(StorageAuthError, match="could not resolve option account_key.*ODIBI_TEST_AZURITE_KEY"):
        fresh.get("again")


def test_wrong_key_is_an_auth_error_on_the_first_attempt(azurite: AzuriteServer, container: str) -> None:
    hook = RequestCounter()
    s = ADLSStorage.from_uri(f"abfss://{container}@{HOST}/p", endpoint=azurite.endpoint, account_key=WRONG_KEY,
                             client_options={"raw_request_hook": hook})
    for call in (lambda: s.put("k", b"x"), lambda: s.get("k"), lambda: list(s.list("")),
                 lambda: s.delete_prefix("")):
        hook.count = 0
        t0 = time.monotonic()
        with pytest.raises(StorageAuthError, match="credentials refused"):
            call()
        assert time.monotonic() - t0 < 1.0
        assert hook.count == 1, "an auth failure must not be retried"


# --- token credentials on HTTPS Azurite with OAuth ----------------------------------------------------------


class StaticToken:
    """A TokenCredential that hands out one fixed token (picklable; what tests may inject)."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.calls = 0

    def get_token(self, *scopes, **kwargs):
        from azure.core.credentials import AccessToken

        self.calls += 1
        return AccessToken(self.token, int(time.time()) + 3600)


def unsigned_jwt(aud: str, iss: str = "https://sts.windows.net/00000000-0000-0000-0000-000000000001/") -> str:
    """A JWT with the claims Azurite's basic OAuth checks (issuer, audience, lifetime); it checks no signature."""
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    now = int(time.time())
    return ".".join([part({"alg": "RS256", "typ": "JWT"}),
                     part({"aud": aud, "iss": iss, "nbf": now - 60, "iat": now - 60, "exp": now + 3600}),
                     "c2lnbmF0dXJl"])


@pytest.fixture(scope="module")
def https_azurite(tmp_path_factory):
    """A second Azurite on HTTPS (a trustme CA) with ``--oauth basic``, for bearer-token credentials."""
    import trustme

    folder = tmp_path_factory.mktemp("azurite-tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    server = AzuriteServer(cert=str(folder / "cert.pem"), key=str(folder / "key.pem"), oauth="basic").start()
    server.ca_file = str(folder / "ca.pem")
    try:
        yield server
    finally:
        server.close()


def test_injected_token_credential_over_https(https_azurite: AzuriteServer) -> None:
    from azure.storage.blob import BlobServiceClient

    with BlobServiceClient(https_azurite.endpoint, connection_verify=https_azurite.ca_file, retry_total=0,
                           credential={"account_name": ACCOUNT, "account_key": ACCOUNT_KEY}) as svc:
        svc.create_container("tokens")
    cred = StaticToken(unsigned_jwt("https://storage.azure.com"))
    s = ADLSStorage.from_uri(f"abfss://tokens@{HOST}/t", endpoint=https_azurite.endpoint, credential=cred,
                             connection_verify=https_azurite.ca_file)
    assert s.auth == "token_credential"
    round_trip(s)
    assert cred.calls >= 1
    # the credential object stays in its process: a pickled copy says so instead of failing obscurely
    with pytest.raises(StorageAuthError, match="injected credential object stays in the process"):
        pickle.loads(pickle.dumps(s)).get("x")
    # a token for another audience is refused, once
    hook = RequestCounter()
    wrong = ADLSStorage.from_uri(f"abfss://tokens@{HOST}/t", endpoint=https_azurite.endpoint,
                                 credential=StaticToken(unsigned_jwt("https://vault.azure.net")),
                                 connection_verify=https_azurite.ca_file, client_options={"raw_request_hook": hook})
    with pytest.raises(StorageAuthError):
        wrong.put("k", b"x")
    assert hook.count == 1


def test_untrusted_certificate_fails_fast_without_retries(https_azurite: AzuriteServer) -> None:
    hook = RequestCounter()
    s = ADLSStorage.from_uri(f"abfss://tokens@{HOST}/t", endpoint=https_azurite.endpoint,
                             credential=StaticToken(unsigned_jwt("https://storage.azure.com")),
                             client_options={"raw_request_hook": hook})  # system CAs: the test CA is unknown
    with pytest.raises(StorageUnavailableError, match="SSLError|CERTIFICATE"):
        s.head("k")
    assert hook.count == 1


# --- budgets: dead and hung endpoints ----------------------------------------------------------------------------


def test_dead_endpoint_is_unavailable_within_the_default_budget(container: str) -> None:
    hook = RequestCounter()
    port = free_port()  # nothing listens there
    s = ADLSStorage.from_uri(f"abfss://{container}@{HOST}/p", endpoint=f"http://127.0.0.1:{port}/{ACCOUNT}",
                             account_key=ACCOUNT_KEY, client_options={"raw_request_hook": hook})
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailableError) as err:
        s.put("some/key", b"x")
    elapsed = time.monotonic() - t0
    assert elapsed <= 10.0, f"default budget is 10 s, took {elapsed:.1f} s"
    assert hook.count >= 3, "connection failures must be retried"
    assert err.value.key == "some/key"
    assert f"abfss://{container}@{HOST}/p/some/key" in str(err.value) and "Connection refused" in str(err.value)


def test_dead_endpoint_budget_is_configurable(container: str) -> None:
    s = ADLSStorage.from_uri(f"abfss://{container}@{HOST}/p", endpoint=f"http://127.0.0.1:{free_port()}/{ACCOUNT}",
                             account_key=ACCOUNT_KEY, timeout_s=1.0)
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailableError):
        s.get("k")
    assert time.monotonic() - t0 <= 1.3


def test_server_that_never_answers_is_cut_off_by_the_budget() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_stay_silent() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept_and_stay_silent, daemon=True)
    thread.start()
    try:
        port = listener.getsockname()[1]
        s = ADLSStorage.from_uri(f"abfss://fs1@{HOST}/p", endpoint=f"http://127.0.0.1:{port}/{ACCOUNT}",
                                 account_key=ACCOUNT_KEY, timeout_s=2.0)
        t0 = time.monotonic()
        with pytest.raises(StorageUnavailableError, match="timed out"):
            s.put("k", b"x" * 1000)
        assert 1.5 <= time.monotonic() - t0 <= 3.0
        assert accepted, "the request did reach the silent server"
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        listener.close()


# --- transient faults and lost answers, through a real fault-injecting HTTP proxy ----------------------------


class FaultProxy:
    """An HTTP/1.1 proxy on 127.0.0.1 in front of Azurite, one request per connection, that can inject faults.

    ``plan(method, path, n)`` (``n``: how many requests with this method came before) returns ``"forward"``,
    ``"drop"`` (forward, let Azurite apply it, then close without answering: a lost answer) or an HTTP status
    to answer itself (503 ServerBusy) without forwarding. ``log`` records (method, path, action).
    """

    def __init__(self, upstream_port: int, plan: Callable[[str, str, int], object]) -> None:
        self.upstream_port, self.plan = upstream_port, plan
        self.log: list[tuple[str, str, object]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                proxy._handle(self.rfile, self.wfile)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{ACCOUNT}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handle(self, rfile, wfile) -> None:
        line = rfile.readline().decode("latin-1")
        if not line.strip():
            return
        method, target, _ = line.split(" ", 2)
        headers = []
        while True:
            raw = rfile.readline().decode("latin-1")
            if raw in ("\r\n", "\n", ""):
                break
            name, value = raw.split(":", 1)
            headers.append((name.strip(), value.strip()))
        length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
        body = rfile.read(length) if length else b""
        with self._lock:
            n = sum(1 for m, _, _ in self.log if m == method)
            action = self.plan(method, target, n)
            self.log.append((method, target, action))
        if isinstance(action, int):
            payload = (b'<?xml version="1.0" encoding="utf-8"?><Error><Code>ServerBusy</Code>'
                       b"<Message>injected</Message></Error>")
            wfile.write(f"HTTP/1.1 {action} Injected\r\nx-ms-error-code: ServerBusy\r\nContent-Type: application/xml"
                        f"\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload)
            return
        upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=10)
        try:
            upstream.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                if name.lower() != "connection":
                    upstream.putheader(name, value)
            upstream.endheaders(body)
            resp = upstream.getresponse()
            data = resp.read()
            resp_headers = resp.getheaders()
        finally:
            upstream.close()
        if action == "drop":
            return  # Azurite has carried it out; the client never hears of it
        out = [f"HTTP/1.1 {resp.status} {resp.reason}"]
        for name, value in resp_headers:
            if name.lower() in ("connection", "transfer-encoding", "keep-alive") or \
                    (name.lower() == "content-length" and method != "HEAD"):
                continue
            out.append(f"{name}: {value}")
        if method != "HEAD":
            out.append(f"Content-Length: {len(data)}")
        out.append("Connection: close")
        wfile.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + (b"" if method == "HEAD" else data))


@pytest.fixture
def proxied(azurite: AzuriteServer, container: str):
    """``make(plan) -> (adapter through a FaultProxy, proxy)``; proxies are closed after the test."""
    proxies: list[FaultProxy] = []

    def make(plan: Callable[[str, str, int], object]) -> tuple[ADLSStorage, FaultProxy]:
        proxy = FaultProxy(azurite.port, plan)
        proxies.append(proxy)
        s = ADLSStorage.from_uri(f"abfss://{container}@{HOST}/px", endpoint=proxy.endpoint, account_key=ACCOUNT_KEY)
        return s, proxy

    yield make
    for proxy in proxies:
        proxy.close()


def test_server_busy_is_retried_until_it_succeeds(proxied, azurite: AzuriteServer, container: str) -> None:
    s, proxy = proxied(lambda method, path, n: 503 if method == "PUT" and n < 2 else "forward")
    info = s.put("busy", b"finally", {"a": "b"})
    assert [a for m, _, a in proxy.log if m == "PUT"] == [503, 503, "forward"]
    direct = key_storage(azurite, container, prefix="px")
    assert direct.get("busy") == b"finally" and direct.head("busy").etag == info.etag


def test_server_busy_that_persists_is_unavailable(proxied) -> None:
    s, proxy = proxied(lambda method, path, n: 503)
    s.timeout_s = 1.5
    with pytest.raises(StorageUnavailableError, match="ServerBusy, HTTP 503") as err:
        s.get("k")
    assert err.value.key == "k" and len(proxy.log) >= 2


def test_lost_answer_of_create_only_put_is_recognised_as_ours(proxied, azurite, container) -> None:
    s, proxy = proxied(lambda method, path, n: "drop" if method == "PUT" and n == 0 else "forward")
    info = s.put("once", b"mine", {"w": "1"}, if_none_match=True)  # 1st answer lost, retry sees 409
    assert [a for m, _, a in proxy.log if m == "PUT"] == ["drop", "forward"]
    assert info.etag == s.head("once").etag and s.get("once") == b"mine"
    with pytest.raises(AlreadyExistsError):  # a genuine second writer still loses
        s.put("once", b"theirs", if_none_match=True)


def test_lost_answer_does_not_hide_another_writers_object(proxied, azurite, container) -> None:
    key_storage(azurite, container, prefix="px").put("taken", b"theirs")
    s, proxy = proxied(lambda method, path, n: 503 if method == "PUT" and n == 0 else "forward")
    with pytest.raises(AlreadyExistsError):
        s.put("taken", b"mine", if_none_match=True)
    assert s.get("taken") == b"theirs"


def test_lost_answer_of_compare_and_swap_is_recognised_as_ours(proxied) -> None:
    s, proxy = proxied(lambda method, path, n: "drop" if method == "PUT" and n == 1 else "forward")
    etag = s.put("cas", b"v1").etag
    info = s.put("cas", b"v2", {"rev": "2"}, if_match=etag)  # applied, answer lost; retry gets 412
    assert s.get("cas") == b"v2" and info.etag == s.head("cas").etag != etag
    with pytest.raises(PreconditionFailedError):
        s.put("cas", b"v3", if_match=etag)


# --- concurrency, batch delete, rename, namespace routing --------------------------------------------------------


def test_racing_create_only_puts_have_exactly_one_winner(azurite: AzuriteServer, container: str) -> None:
    base = key_storage(azurite, container)
    copies = [pickle.loads(pickle.dumps(base)) for _ in range(8)]  # each with its own client
    barrier = threading.Barrier(len(copies))
    results: list[object] = [None] * len(copies)

    def race(i: int) -> None:
        barrier.wait()
        try:
            results[i] = copies[i].put("lock", f"writer-{i}".encode() * 5000, if_none_match=True)
        except StorageError as exc:
            results[i] = exc

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(copies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, r in enumerate(results) if not isinstance(r, StorageError)]
    assert len(winners) == 1, results
    assert all(isinstance(r, AlreadyExistsError) for i, r in enumerate(results) if i != winners[0])
    assert base.get("lock") == f"writer-{winners[0]}".encode() * 5000


def test_delete_prefix_batches_more_than_256(azurite: AzuriteServer, container: str) -> None:
    s = key_storage(azurite, container)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: s.put(f"many/{i:04d}", b"x"), range(300)))
    s.put("keep/one", b"y")
    assert s.delete_prefix("many/") == 300
    assert [i.key for i in s.list()] == ["keep/one"]


def test_rename_without_hierarchical_namespace_copies_then_deletes(azurite, container) -> None:
    s = key_storage(azurite, container)
    assert s.has_hierarchical_namespace() is False  # Azurite reports no HNS
    s.put("from", b"data", {"m": "1"})
    info = s.rename("from", "to")
    assert not s.exists("from") and s.get("to") == b"data" and dict(s.head("to").metadata) == {"m": "1"}
    assert info.etag == s.head("to").etag


def test_missing_container_is_not_found(azurite: AzuriteServer) -> None:
    s = ADLSStorage.from_uri(f"abfss://no-such-fs@{HOST}/p", endpoint=azurite.endpoint, account_key=ACCOUNT_KEY)
    for call in (lambda: s.put("k", b"x"), lambda: s.get("k"), lambda: list(s.list())):
        with pytest.raises(NotFoundError, match="filesystem \\(container\\) 'no-such-fs' does not exist"):
            call()


def test_hierarchical_namespace_routes_to_datalake(azurite: AzuriteServer, container: str, monkeypatch) -> None:
    """Azurite has no hierarchical namespace, so the DataLake client is replaced by a recording stand-in
    (a mock, said here): this checks only which DataLake calls the adapter makes, with which paths."""
    s = key_storage(azurite, container, prefix="root")
    s.put("dir/a", b"1")
    s.put("dir/sub/b", b"2")
    s.put("file", b"3")
    calls: list[tuple] = []

    class Recorder:
        def __init__(self, *path: str) -> None:
            self.path = path

        def get_directory_client(self, name: str) -> Recorder:
            return Recorder("directory", name)

        def get_file_client(self, name: str) -> Recorder:
            return Recorder("file", name)

        def delete_directory(self, **kw) -> None:
            calls.append(("delete_directory", *self.path))

        def rename_file(self, new_name: str, **kw) -> None:
            calls.append(("rename_file", *self.path, new_name))
            s.put("renamed", b"3")  # what the service would have done, so head() finds it

    s._hns = True
    monkeypatch.setattr(s, "_datalake", lambda: Recorder())
    assert s.delete_prefix("dir/") == 2
    s.rename("file", "renamed")
    assert calls == [("delete_directory", "directory", "root/dir"),
                     ("rename_file", "file", "root/file", f"{container}/root/renamed")]


# --- secrets never show ------------------------------------------------------------------------------------------


def test_no_key_or_sas_in_repr_errors_tracebacks_or_logs(azurite: AzuriteServer, container: str, caplog) -> None:
    caplog.set_level(logging.DEBUG)  # everything: the SDK's, urllib3's and ours
    sas = container_sas(container)
    sig = sas.split("sig=")[1].split("&")[0]
    dead = f"http://127.0.0.1:{free_port()}/{ACCOUNT}"
    adapters = [
        key_storage(azurite, container),
        ADLSStorage.from_uri(f"az://{container}/s", account_name=ACCOUNT, endpoint=azurite.endpoint, sas_token=sas),
        ADLSStorage.from_uri(f"az://{container}/s", account_name=ACCOUNT, endpoint=dead, sas_token=sas,
                             timeout_s=0.5),
        ADLSStorage.from_uri(f"az://{container}/s", account_name=ACCOUNT, endpoint=dead, account_key=ACCOUNT_KEY,
                             timeout_s=0.5),
        ADLSStorage.from_uri(f"az://{container}/s", account_name=ACCOUNT, endpoint=azurite.endpoint,
                             account_key=WRONG_KEY),
        ADLSStorage.from_uri(f"az://{container}/s", connection_string=azurite.connection_string),
    ]
    errors: list[BaseException] = []
    for s in adapters:
        # each lambda is called at once, in this iteration; the default binds s anyway (ruff B023)
        for call in (lambda s=s: s.put("k", b"v", {"m": "1"}), lambda s=s: s.get("k"), lambda s=s: s.head("missing"),
                     lambda s=s: list(s.list())):
            try:
                call()
            except StorageError as exc:
                errors.append(exc)
    assert {type(e) for e in errors} >= {StorageUnavailableError, StorageAuthError, NotFoundError}
    texts = [repr(s) for s in adapters] + [str(e) for e in errors] + [repr(e) for e in errors]
    texts += ["".join(traceback.format_exception(e)) for e in errors]
    texts += [r.getMessage() for r in caplog.records]
    assert any("Request URL" in t for t in texts), "the SDK's request logging was captured"
    leaks = [t for t in texts if sig in t or ACCOUNT_KEY in t or ACCOUNT_KEY[:24] in t or sas in t]
    assert not leaks, leaks[:3]


# --- the outage: Azurite on disk, SIGTERMed and restarted in the middle of a sequence of puts ---------------------


def test_outage_puts_succeed_or_are_unavailable_and_acknowledged_ones_survive(tmp_path, caplog) -> None:
    """Two sequences of 15 puts (16-112 KB) run side by side, one through an adapter with the default 10 s
    budget (it should ride out the restart), one with 0.4 s (it should give up during it). After 10 puts,
    Azurite (on disk) is SIGTERMed by PID and restarted 1 s later on the same port and folder while the puts
    go on. Each put either succeeds or raises StorageUnavailableError; every acknowledged put is there
    afterwards with its bytes, ETag and metadata."""
    caplog.set_level(logging.INFO, logger="odibi_ray.storage.retry")
    server = AzuriteServer(location=str(tmp_path / "azurite-data")).start()
    try:
        container = new_container(server)
        uri = f"abfss://{container}@{HOST}/outage"
        adapters = {"patient": ADLSStorage.from_uri(uri, endpoint=server.endpoint, account_key=ACCOUNT_KEY),
                    "impatient": ADLSStorage.from_uri(uri, endpoint=server.endpoint, account_key=ACCOUNT_KEY,
                                                      timeout_s=0.4)}
        payloads = {f"{name}/{i:02d}": os.urandom(16 * 1024 * (1 + i % 7)) for name in adapters for i in range(15)}
        acknowledged: dict[str, object] = {}
        unavailable: list[str] = []
        other: list[tuple[str, BaseException]] = []
        done = threading.Semaphore(0)

        def puts(name: str) -> None:
            for i in range(15):
                key = f"{name}/{i:02d}"
                try:
                    acknowledged[key] = adapters[name].put(key, payloads[key], {"i": str(i)})
                except StorageUnavailableError:
                    unavailable.append(key)
                except Exception as exc:  # noqa: BLE001 - collected: any other outcome fails the test
                    other.append((key, exc))
                done.release()
                time.sleep(0.05)

        threads = [threading.Thread(target=puts, args=(name,)) for name in adapters]
        for t in threads:
            t.start()
        for _ in range(10):
            assert done.acquire(timeout=30)
        server.stop()  # SIGTERM by PID, waits for the exit
        time.sleep(1.0)
        server.start()  # same port, same --location
        for t in threads:
            t.join(60)
        assert not other, other
        assert len(acknowledged) + len(unavailable) == 30
        retried = {r.getMessage().split(" ")[1].rsplit("/", 2)[-2] for r in caplog.records
                   if "transient" in r.getMessage()}
        assert retried == {"patient", "impatient"}, "both sequences met the outage"
        assert unavailable and all(k.startswith("impatient/") for k in unavailable)
        assert len([k for k in acknowledged if k.startswith("patient/")]) == 15, "the 10 s budget rode it out"
        reader = adapters["patient"]
        for key, info in acknowledged.items():
            data, stored = reader.get_with_info(key)
            assert data == payloads[key], key
            assert stored.etag == info.etag and stored.metadata["i"] == str(int(key[-2:]))
        for key in unavailable:  # it may or may not have been applied, but never partly
            if reader.exists(key):
                assert reader.get(key) == payloads[key]
        assert {i.key for i in reader.list("")} >= set(acknowledged)
    finally:
        server.close()


def test_account_key_fetched_from_key_vault(azurite: AzuriteServer, container: str, monkeypatch) -> None:
    """`account_key="kv://vault/name"`: the key comes from Key Vault (the TLS stand-in of tests/kv_standin.py,
    speaking the Key Vault REST protocol on 127.0.0.1), resolved in the process that opens the client."""
    from odibi_ray.storage import secrets
    from tests.kv_standin import KeyVaultStandIn
    from tests.test_secrets import TOKEN, StaticTokenCredential

    with KeyVaultStandIn(TOKEN) as vault:
        vault.set_secret("storage-key", ACCOUNT_KEY)
        monkeypatch.setenv("ODIBI_RAY_KEYVAULT_URL_LAKEVAULT", vault.url)
        resolver = secrets.default_resolver()
        monkeypatch.setattr(resolver, "credential", StaticTokenCredential())
        monkeypatch.setattr(resolver, "client_options", {**resolver.client_options,
                                                          "connection_verify": vault.ca_path,
                                                          "verify_challenge_resource": False})
        secrets.clear_cache()
        try:
            storage = ADLSStorage.from_uri(f"abfss://{container}@{ACCOUNT}.dfs.core.windows.net/kv",
                                           endpoint=azurite.endpoint, account_key="kv://lakevault/storage-key")
            storage.put("hello.txt", b"from a key in Key Vault")
            assert storage.get("hello.txt") == b"from a key in Key Vault"
            assert vault.served("storage-key") == 1
            assert ACCOUNT_KEY not in repr(storage) and ACCOUNT_KEY not in str(pickle.dumps(storage))
        finally:
            secrets.clear_cache()


# --- listing ---------------------------------------------------------------------------------------------------


def test_listing_pages_are_read_without_the_sdk_deserialiser_and_say_the_same(azurite, container, monkeypatch):
    """A listing page is read with ElementTree (the SDK's deserialiser cost ~0.4 ms a blob): names, sizes, ETags,
    times and metadata equal the SDK's own listing, across pages, and a missing container is the same error."""
    from odibi_ray.storage import adls

    storage = key_storage(azurite, container)
    for i in range(5):
        storage.put(f"objects/p/k{i}", b"x" * i, {"sha256": f"{i}" * 64, "node": f"n{i}"})
    storage.put("other/k", b"y", {})
    monkeypatch.setattr(adls, "LIST_PAGE_SIZE", 2)  # three pages for five objects
    fast = list(storage.list("objects/", with_metadata=True))
    sdk_pages: list[int] = []
    real = adls._list_page_fast
    monkeypatch.setattr(adls, "_list_page_fast", lambda *a: sdk_pages.append(1) and real(*a))  # the SDK's pager
    slow = list(storage.list("objects/", with_metadata=True))
    assert sdk_pages and [i.key for i in fast] == [f"objects/p/k{i}" for i in range(5)]
    assert fast == slow
    assert fast[3].size == 3 and fast[3].metadata["node"] == "n3" and fast[3].etag.startswith('"')
    gone = ADLSStorage.from_uri(f"abfss://nosuchcontainer@{HOST}/t", endpoint=azurite.endpoint,
                                account_key=ACCOUNT_KEY)
    with pytest.raises(NotFoundError, match="does not exist"):
        list(gone.list("objects/"))
