"""A STAND-IN for Azure Key Vault: a small HTTPS server on 127.0.0.1 that speaks its REST protocol.

No Key Vault emulator exists, so this server implements just enough of the Key Vault secrets REST API
for ``azure.keyvault.secrets.SecretClient.get_secret`` to run its real code path over real TLS:

- ``GET /secrets/{name}[/{version}]?api-version=...`` -> 200 with the secret bundle JSON
  (``value``, ``id`` = ``https://<host>/secrets/<name>/<version>``, ``attributes``);
- an unknown name or version -> 404 with Key Vault's error JSON (code ``SecretNotFound``);
- no bearer token, or a token it does not know -> 401 with the challenge
  ``WWW-Authenticate: Bearer authorization="https://127.0.0.1:<port>/<tenant>", resource="https://vault.azure.net"``
  (the SDK's challenge-auth policy sends its first request without a token to elicit exactly this; the
  authority is a loopback URL, and the credential used in tests is static, so nothing leaves 127.0.0.1);
- a token listed in ``denied_tokens`` -> 403 ``Forbidden`` (authenticated, but no access policy);
- a missing ``api-version`` -> 400, any other method or path -> 405 / 404.

The certificate comes from a ``trustme`` CA for "127.0.0.1" and "localhost"; ``ca_path`` is the CA's PEM
file, to give the SDK as ``connection_verify=<ca_path>``. Because the challenge names the real Key Vault
resource (``vault.azure.net``) while the server is 127.0.0.1, clients must pass
``verify_challenge_resource=False``.

Every request is recorded in ``requests`` (method, path, status, whether a bearer token came with it);
no secret value or token is logged or recorded.
"""

from __future__ import annotations

import json
import os
import ssl
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from collections.abc import Iterable
from urllib.parse import parse_qs, unquote, urlsplit

import trustme

#: The tenant the stand-in names in its challenge (any GUID works; the static credential ignores it).
TENANT_ID = "00000000-0000-0000-0000-00000000c0de"


@dataclass(frozen=True)
class Request:
    """One request the stand-in answered (no token or value, just what is needed to count)."""

    method: str
    path: str
    status: int
    had_token: bool


class KeyVaultStandIn:
    """A Key Vault stand-in: HTTPS on 127.0.0.1, a free port, served by a daemon thread."""

    def __init__(self, token: str, denied_tokens: Iterable[str] = ()) -> None:
        self.token = token
        self.denied_tokens = set(denied_tokens)
        self._secrets: dict[str, list[tuple[str, str]]] = {}  # name -> [(version, value)], newest last
        self._lock = threading.Lock()
        self.requests: list[Request] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="kv-standin-")
        self.ca_path = os.path.join(self._tmp.name, "ca.pem")
        ca = trustme.CA()
        ca.cert_pem.write_to_path(self.ca_path)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self.port: int = self._server.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="kv-standin", daemon=True)

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> KeyVaultStandIn:
        """Serve in the background thread; returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the socket, remove the CA file."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._tmp.cleanup()

    def __enter__(self) -> KeyVaultStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- content --------------------------------------------------------------------------------

    def set_secret(self, name: str, value: str) -> str:
        """Add a new version of ``name`` (it becomes the latest); returns the version id."""
        version = uuid.uuid4().hex
        with self._lock:
            self._secrets.setdefault(name, []).append((version, value))
        return version

    def lookup(self, name: str, version: str | None) -> tuple[str, str] | None:
        """(version, value) of ``name`` at ``version`` (latest when None), or None."""
        with self._lock:
            versions = self._secrets.get(name, [])
            if not versions:
                return None
            if not version:
                return versions[-1]
            return next((v for v in versions if v[0] == version), None)

    # --- counters -------------------------------------------------------------------------------

    def record(self, request: Request) -> None:
        """Remember one answered request."""
        with self._lock:
            self.requests.append(request)

    def served(self, name: str | None = None) -> int:
        """How many secret values were returned (200 on a secret path), for ``name`` or for all."""
        with self._lock:
            return sum(1 for r in self.requests if r.status == 200 and
                       (name is None or r.path.split("/")[2] == name))

    def reset_counters(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self.requests.clear()


def _handler_for(vault: KeyVaultStandIn) -> type[BaseHTTPRequestHandler]:
    """A request-handler class bound to ``vault``."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "KeyVaultStandIn/1.0"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
            pass  # quiet: the default writes every request to stderr

        def _send(self, status: int, body: dict, headers: dict[str, str] | None = None,
                  had_token: bool = False) -> None:
            data = json.dumps(body).encode()
            # recorded before the answer goes out: a client that has its answer must find it counted
            vault.record(Request(self.command, urlsplit(self.path).path, status, had_token))
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-ms-request-id", str(uuid.uuid4()))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, code: str, message: str, had_token: bool,
                   headers: dict[str, str] | None = None) -> None:
            self._send(status, {"error": {"code": code, "message": message}}, headers, had_token)

        def _drain(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)

        def do_GET(self) -> None:  # noqa: N802 - stdlib naming
            self._drain()
            url = urlsplit(self.path)
            auth = self.headers.get("Authorization", "")
            token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
            had_token = token is not None
            if token is None or (token != vault.token and token not in vault.denied_tokens):
                challenge = (f'Bearer authorization="https://127.0.0.1:{vault.port}/{TENANT_ID}", '
                             'resource="https://vault.azure.net"')
                msg = ("AKV10000: Request is missing a Bearer or PoP token." if token is None
                       else "AKV10032: Invalid issuer.")
                self._error(401, "Unauthorized", msg, had_token, {"WWW-Authenticate": challenge})
                return
            if "api-version" not in parse_qs(url.query):
                self._error(400, "BadParameter", "The 'api-version' query parameter is missing.", had_token)
                return
            parts = [unquote(p) for p in url.path.strip("/").split("/")]
            if len(parts) not in (2, 3) or parts[0] != "secrets" or not parts[1]:
                self._error(404, "NotFound", f"no such path {url.path}", had_token)
                return
            if token in vault.denied_tokens:
                self._error(403, "Forbidden", "The user, group or application does not have secrets get "
                            "permission on this key vault.", had_token)
                return
            name, version = parts[1], (parts[2] if len(parts) == 3 else None)
            found = vault.lookup(name, version)
            if found is None:
                self._error(404, "SecretNotFound", f"A secret with (name/id) {name} was not found in this "
                            "key vault.", had_token)
                return
            ver, value = found
            now = int(time.time())
            self._send(200, {
                "value": value,
                "id": f"{vault.url}/secrets/{name}/{ver}",
                "attributes": {"enabled": True, "created": now, "updated": now,
                               "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 90},
                "tags": {},
            }, had_token=had_token)

        def _not_allowed(self) -> None:
            self._drain()
            self._error(405, "MethodNotAllowed", f"{self.command} is not supported by the stand-in", False)

        do_PUT = do_POST = do_DELETE = do_PATCH = _not_allowed

    return Handler
