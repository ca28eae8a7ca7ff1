"""ADLSStorage: Azure Data Lake Storage Gen2 (and plain Blob Storage, and Azurite) behind :class:`Storage`.

URIs: ``abfss://<filesystem>@<account>.dfs.core.windows.net/<prefix>`` (also ``abfs://``, and a
``<account>.blob.<suffix>`` host), or ``az://<filesystem>/<prefix>`` with the account from the
``account_name`` option or ``AZURE_STORAGE_ACCOUNT``.

Data plane: the Blob API of ``azure-storage-blob`` (create-only put with If-None-Match ``*``, ETag
compare-and-swap with If-Match, metadata, prefix listing, ranged reads, batch delete), which works on
ADLS Gen2 accounts and on Azurite. Namespace operations (recursive directory delete, rename) go through
``azure-storage-file-datalake`` only when the account reports a hierarchical namespace; otherwise blob
fallbacks. The hierarchical-namespace path is thin and untested here (Azurite has no HNS).

Auth, exactly one of: ``connection_string``, ``account_key``, ``sas_token``, a service principal
(``tenant_id`` + ``client_id`` + ``client_secret``), ``managed_identity=True`` (optional ``client_id``),
``credential="default"`` (DefaultAzureCredential: production only) or ``credential=<TokenCredential>``.
Secret options accept a literal, a :class:`~odibi_ray.storage.secrets.SecretValue` or a reference
(``env://NAME``, ``kv://<vault>/<name>``), resolved in the process that opens the client.

Failures: the SDK's own retries are off; transient faults (connection errors, timeouts, 408/429/5xx) are
retried here with bounded exponential backoff inside ``timeout_s`` (default 10 s), so a dead endpoint raises
:class:`StorageUnavailableError` within it. Refused credentials raise :class:`StorageAuthError` at once.
Messages name the URI (no query string) and the key only, never the SDK's text.
"""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import io
import logging
import os
import re
import ssl
import threading
from typing import Any, NamedTuple, TypeVar
from xml.etree import ElementTree
from collections.abc import Callable, Iterator, Mapping

from ..errors import (AlreadyExistsError, InvalidURIError, NotFoundError, PreconditionFailedError,
                      StorageAuthError, StorageError, StorageUnavailableError)
from .base import BytesLike, ObjectInfo, Storage, check_key, check_metadata, resolve_secret_option
from .retry import Backoff, RetriesExhausted, call_with_retry
from .uri import redact_uri

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_CONNECT_TIMEOUT_S = 3.0
DEFAULT_MAX_ATTEMPTS = 8
BATCH_DELETE_SIZE = 256  # the Blob Batch API's limit per request

_SCHEMES = ("abfss", "abfs", "az")
_ACCOUNT = re.compile(r"^[a-z0-9]{3,24}$")
_FILESYSTEM = re.compile(r"^(?=.{3,63}$)[a-z0-9](?:[a-z0-9]|-(?!-))*[a-z0-9]$")
_HOST = re.compile(r"^(?P<account>[^.]+)\.(?P<kind>dfs|blob)\.(?P<suffix>[a-z0-9.\-]+)$")
_ENDPOINT = re.compile(r"^https?://[^/?#\s]+(/[^?#\s]*)?$")
_SECRET_OPTIONS = ("connection_string", "account_key", "sas_token", "client_secret")
_AUTH_HELP = ("pass exactly one of: connection_string, account_key, sas_token, tenant_id + client_id + "
              "client_secret (service principal), managed_identity=True (optional client_id), "
              "credential='default' (DefaultAzureCredential) or credential=<azure TokenCredential>")
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_QUERY_VALUE = re.compile(r"([?&][^=&\s\"'#]+=)[^&\s\"'#]*")


class _RedactQueryValues(logging.Filter):
    """Blank query-string values (a SAS) in urllib3's request lines, which it logs at DEBUG with full URLs."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - leave malformed records to logging itself
            return True
        if "?" in text:
            record.msg, record.args = _QUERY_VALUE.sub(r"\1REDACTED", text), ()
        return True


_redactor = _RedactQueryValues()


def _install_log_redaction() -> None:
    """Attach the redacting filter to the loggers that print request URLs with their query strings."""
    for name in ("urllib3.connectionpool",):
        logger = logging.getLogger(name)
        if _redactor not in logger.filters:
            logger.addFilter(_redactor)


class ADLSStorage(Storage):
    """Objects in an ADLS Gen2 filesystem (a blob container) under a prefix, through the Blob API.

    Options besides the credentials: ``endpoint`` (replaces ``https://<account>.blob.<suffix>``, e.g.
    ``http://127.0.0.1:10000/devstoreaccount1`` for Azurite), ``timeout_s`` (retry budget of one call, 10 s),
    ``connect_timeout_s`` (3 s), ``max_attempts`` (8), ``backoff`` (:class:`Backoff`), ``connection_verify``
    (a CA bundle path), ``max_concurrency`` (parallel chunks of large transfers, 1) and ``client_options``
    (other azure-core client keywords, e.g. ``proxies``, ``raw_request_hook``).
    """

    def __init__(self, filesystem: str, account: str | None, prefix: str = "", *, scheme: str = "abfss",
                 endpoint_suffix: str = "core.windows.net", endpoint: str | None = None,
                 connection_string: Any = None, account_key: Any = None, sas_token: Any = None,
                 tenant_id: str | None = None, client_id: str | None = None, client_secret: Any = None,
                 managed_identity: bool = False, credential: Any = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, connect_timeout_s: float | None = None,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS, backoff: Backoff | None = None,
                 connection_verify: bool | str = True, max_concurrency: int = 1,
                 client_options: Mapping[str, Any] | None = None) -> None:
        """Configure (no network): validate names, options and the choice of credential."""
        if not isinstance(filesystem, str) or not _FILESYSTEM.match(filesystem):
            raise InvalidURIError(f"invalid ADLS filesystem (container) name {filesystem!r}: 3-63 characters "
                                  "of a-z, 0-9 and single '-', starting and ending with a letter or digit")
        if account is not None and (not isinstance(account, str) or not _ACCOUNT.match(account)):
            raise InvalidURIError(f"invalid storage account name {account!r}: 3-24 characters of a-z and 0-9")
        prefix = (prefix or "").strip("/")
        if prefix:
            try:
                check_key(prefix)
            except InvalidURIError:
                raise InvalidURIError(f"invalid prefix {prefix!r}: use 'a/b' segments without '.', '..' or "
                                      "empty ones") from None
        if endpoint is not None:
            if not isinstance(endpoint, str) or not _ENDPOINT.match(endpoint):
                raise InvalidURIError(f"invalid endpoint {redact_uri(str(endpoint))!r}: use "
                                      "http(s)://host[:port][/path] without a query string")
            if connection_string is not None:
                raise InvalidURIError("endpoint cannot be combined with connection_string: put "
                                      "BlobEndpoint=... in the connection string instead")
        if account is None and connection_string is None:
            raise InvalidURIError("no storage account: use abfss://<filesystem>@<account>.dfs.core.windows.net/"
                                  "..., or give az:// the account_name option or set AZURE_STORAGE_ACCOUNT")
        if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
            raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        if connect_timeout_s is not None and not (isinstance(connect_timeout_s, (int, float))
                                                  and connect_timeout_s > 0):
            raise ValueError(f"connect_timeout_s must be a positive number of seconds, got {connect_timeout_s!r}")
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts must be an integer >= 1, got {max_attempts!r}")
        if not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"max_concurrency must be an integer >= 1, got {max_concurrency!r}")
        client_options = dict(client_options or {})
        managed = sorted(set(client_options) & {"retry_total", "retry_policy", "connection_timeout",
                                                 "read_timeout", "connection_verify", "credential"})
        if managed:
            raise ValueError(f"client_options may not set {', '.join(managed)}: use timeout_s, connect_timeout_s, "
                             "max_attempts, connection_verify and the credential options instead")

        self.filesystem, self.account, self.prefix = filesystem, account, prefix
        self.scheme, self.endpoint_suffix = scheme, endpoint_suffix
        if scheme == "az":
            self.uri = f"az://{filesystem}/{prefix}".rstrip("/")
        else:
            self.uri = f"{scheme}://{filesystem}@{account}.dfs.{endpoint_suffix}/{prefix}".rstrip("/")
        self.endpoint = endpoint
        self.timeout_s = float(timeout_s)
        self.connect_timeout_s = float(min(connect_timeout_s or DEFAULT_CONNECT_TIMEOUT_S, self.timeout_s))
        self.max_attempts = max_attempts
        self.backoff = backoff or Backoff()
        self.connection_verify = connection_verify
        self.max_concurrency = max_concurrency
        self.client_options = client_options
        self._secrets = {"connection_string": connection_string, "account_key": account_key,
                         "sas_token": sas_token, "client_secret": client_secret}
        self.tenant_id, self.client_id = tenant_id, client_id
        self.managed_identity = bool(managed_identity)
        self._credential_obj = None if isinstance(credential, str) or credential is None else credential
        self._credential_name = credential if isinstance(credential, str) else None
        self.auth = self._choose_auth()
        if self.auth in ("service_principal", "managed_identity", "default", "token_credential") \
                and self.account_url.startswith("http://"):
            raise StorageAuthError(f"{self.uri}: token credentials ({self.auth}) need an https endpoint, "
                                   f"got {self.account_url!r}")
        self._lock = threading.Lock()
        self._clients: tuple[int, Any] | None = None  # (pid, ContainerClient) of this process
        self._hns: bool | None = None

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> ADLSStorage:
        """Parse an ``abfss://``, ``abfs://`` or ``az://`` URI; ``options`` are ``__init__``'s keywords."""
        if not isinstance(uri, str):
            raise InvalidURIError(f"storage URI must be a string, got {type(uri).__name__}")
        shown = redact_uri(uri)
        m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.\-]*)://([^/?#]*)(/[^?#]*)?([?#].*)?$", uri, re.S)
        if not m or m.group(1).lower() not in _SCHEMES:
            raise InvalidURIError(f"not an ADLS URI {shown!r}: use abfss://<filesystem>@<account>.dfs.core."
                                  "windows.net/<prefix>, abfs://... or az://<filesystem>/<prefix>")
        scheme, authority, path, rest = m.group(1).lower(), m.group(2), m.group(3) or "", m.group(4)
        if rest:
            raise InvalidURIError(f"ADLS URI {shown!r} has a query string or fragment: pass credentials "
                                  "(SAS, keys) as options, never in the URI")
        if "@" in authority and ":" in authority.rpartition("@")[0]:
            raise InvalidURIError(f"ADLS URI {shown!r} has user:password credentials: pass credentials as "
                                  "options, never in the URI")
        account_name = options.pop("account_name", None)
        if scheme == "az":
            if "@" in authority:
                raise InvalidURIError(f"az:// URI {shown!r} takes az://<filesystem>/<prefix> (the account "
                                      "comes from the account_name option or AZURE_STORAGE_ACCOUNT)")
            filesystem = authority
            account = account_name or os.environ.get("AZURE_STORAGE_ACCOUNT") or None
            options.setdefault("endpoint_suffix", "core.windows.net")
        else:
            filesystem, at, host = authority.rpartition("@")
            hm = _HOST.match(host.lower()) if at else None
            if not hm or not filesystem:
                raise InvalidURIError(f"malformed ADLS URI {shown!r}: use {scheme}://<filesystem>@<account>."
                                      "dfs.core.windows.net/<prefix>")
            account = hm.group("account")
            if account_name is not None and account_name != account:
                raise InvalidURIError(f"account_name {account_name!r} differs from the account {account!r} "
                                      f"of {shown!r}")
            options["endpoint_suffix"] = hm.group("suffix")
        if not filesystem:
            raise InvalidURIError(f"ADLS URI {shown!r} names no filesystem (container)")
        if not _FILESYSTEM.match(filesystem):
            raise InvalidURIError(f"invalid filesystem (container) name {filesystem!r} in {shown!r}: 3-63 "
                                  "characters of a-z, 0-9 and single '-', starting and ending with a letter "
                                  "or digit")
        if account is not None and not _ACCOUNT.match(account):
            raise InvalidURIError(f"invalid storage account name {account!r} in {shown!r}: 3-24 characters "
                                  "of a-z and 0-9")
        return cls(filesystem, account, path, scheme=scheme, **options)

    def _choose_auth(self) -> str:
        """Which credential the options name; StorageAuthError if none, several, or an incomplete one."""
        given = [name for name in ("connection_string", "account_key", "sas_token")
                 if self._secrets[name] is not None]
        sp_parts = {"tenant_id": self.tenant_id, "client_secret": self._secrets["client_secret"]}
        if any(v is not None for v in sp_parts.values()):
            missing = [k for k, v in {**sp_parts, "client_id": self.client_id}.items() if v is None]
            if missing:
                raise StorageAuthError(f"{self.uri}: a service principal needs tenant_id, client_id and "
                                       f"client_secret; missing: {', '.join(missing)}")
            given.append("service_principal")
        if self.managed_identity:
            given.append("managed_identity")
        if self._credential_name is not None:
            if self._credential_name != "default":
                raise StorageAuthError(f"{self.uri}: credential must be 'default' or a TokenCredential object; "
                                       "give keys as account_key, SAS tokens as sas_token")
            given.append("default")
        if self._credential_obj is not None:
            if not hasattr(self._credential_obj, "get_token"):
                raise StorageAuthError(f"{self.uri}: credential object {type(self._credential_obj).__name__} "
                                       "has no get_token(): pass an azure TokenCredential")
            given.append("token_credential")
        if not given:
            raise StorageAuthError(f"{self.uri}: no credentials given; {_AUTH_HELP}")
        if len(given) > 1:
            raise StorageAuthError(f"{self.uri}: several credentials given ({', '.join(given)}); {_AUTH_HELP}")
        return given[0]

    @property
    def account_url(self) -> str:
        """The Blob endpoint: the ``endpoint`` option, else ``https://<account>.blob.<suffix>``."""
        if self.endpoint:
            return self.endpoint.rstrip("/")
        return f"https://{self.account}.blob.{self.endpoint_suffix}"

    def __repr__(self) -> str:
        return f"ADLSStorage({self.uri!r}, auth={self.auth!r})"

    # --- pickling: configuration only ---------------------------------------------------------

    def __getstate__(self) -> dict:
        """URI parts and options (secret references as given); never a client or a credential object."""
        state = self.__dict__.copy()
        for name in ("_lock", "_clients", "_hns"):
            state.pop(name, None)
        state["_credential_obj"] = None  # an injected credential stays in its process
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock, self._clients, self._hns = threading.Lock(), None, None

    # --- clients (one per process, opened on first use) ---------------------------------------

    def _secret(self, name: str) -> str | None:
        """The value of a secret option, resolved here (``env://``, ``kv://``, SecretValue or literal)."""
        return resolve_secret_option(self.uri, name, self._secrets[name])

    def _mode_secret(self, name: str) -> str:
        """A secret option the auth mode is made of (set: ``_choose_auth`` chose the mode for it), resolved."""
        value = self._secret(name)
        assert value is not None, name
        return value

    def _sdk_options(self) -> dict[str, Any]:
        return dict(self.client_options, retry_total=0, connection_timeout=self.connect_timeout_s,
                    read_timeout=self.timeout_s, connection_verify=self.connection_verify)

    def _credential(self) -> Any:
        """The credential for the SDK clients (auth modes other than connection_string)."""
        if self.auth == "account_key":
            return {"account_name": self.account, "account_key": self._secret("account_key")}
        if self.auth == "sas_token":
            from azure.core.credentials import AzureSasCredential

            return AzureSasCredential(self._mode_secret("sas_token").lstrip("?"))
        if self.auth == "service_principal":
            from azure.identity import ClientSecretCredential

            assert self.tenant_id is not None and self.client_id is not None  # _choose_auth checked both
            return ClientSecretCredential(self.tenant_id, self.client_id, self._mode_secret("client_secret"))
        if self.auth == "managed_identity":
            from azure.identity import ManagedIdentityCredential

            return ManagedIdentityCredential(client_id=self.client_id) if self.client_id \
                else ManagedIdentityCredential()
        if self.auth == "default":  # production only: it probes cloud metadata addresses
            from azure.identity import DefaultAzureCredential

            return DefaultAzureCredential()
        if self._credential_obj is None:
            raise StorageAuthError(f"{self.uri}: the injected credential object stays in the process that made "
                                   "the adapter (credentials are not pickled); in other processes use "
                                   "tenant_id + client_id + client_secret, managed_identity=True or "
                                   "credential='default'")
        return self._credential_obj

    def _container(self) -> Any:
        """This process's ContainerClient, created on first use and reused."""
        pid = os.getpid()
        clients = self._clients
        if clients is not None and clients[0] == pid:
            return clients[1]
        with self._lock:
            if self._clients is None or self._clients[0] != pid:
                from azure.storage.blob import BlobServiceClient

                log.debug("opening a blob client for %s (auth: %s)", self.uri, self.auth)
                _install_log_redaction()
                if self.auth == "connection_string":
                    try:
                        service = BlobServiceClient.from_connection_string(self._mode_secret("connection_string"),
                                                                           **self._sdk_options())
                    except ValueError:
                        raise StorageAuthError(f"{self.uri}: connection_string is malformed") from None
                    if self.account is None:
                        self.account = service.account_name
                    elif service.account_name != self.account:
                        raise StorageAuthError(f"{self.uri}: connection_string is for another account "
                                               f"({service.account_name!r})")
                else:
                    service = BlobServiceClient(self.account_url, credential=self._credential(),
                                                **self._sdk_options())
                self._clients = (pid, service.get_container_client(self.filesystem))
            return self._clients[1]

    def _datalake(self) -> Any:
        """A DataLake FileSystemClient (hierarchical-namespace accounts only; thin, untested on Azurite)."""
        from azure.storage.filedatalake import DataLakeServiceClient

        if self.auth == "connection_string":
            service = DataLakeServiceClient.from_connection_string(self._mode_secret("connection_string"),
                                                                   **self._sdk_options())
        else:
            url = re.sub(r"^(https?://[^/.]+)\.blob\.", r"\1.dfs.", self.account_url)
            service = DataLakeServiceClient(url, credential=self._credential(), **self._sdk_options())
        return service.get_file_system_client(self.filesystem)

    def close(self) -> None:
        """Close this process's client (it is reopened on next use)."""
        with self._lock:
            clients, self._clients = self._clients, None
        if clients is not None and clients[0] == os.getpid():
            clients[1].close()

    def has_hierarchical_namespace(self) -> bool:
        """Whether the account has a hierarchical namespace (asked once per process; False if not allowed)."""
        if self._hns is None:
            try:
                info = self._call("account info", None, lambda c, t: c.get_account_information(**t))
                self._hns = bool(info.get("is_hns_enabled"))
            except StorageAuthError:  # e.g. a container SAS may not read account information
                log.debug("%s: account information refused; assuming no hierarchical namespace", self.uri)
                self._hns = False
        return self._hns

    # --- the retry / error-mapping core -------------------------------------------------------

    def _name(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self, key: str | None) -> str:
        return f"{self.uri}/{key}" if key else self.uri

    def _call(self, op: str, key: str | None, fn: Callable[[Any, dict], T], *, read: bool = False,
              on_conflict: Callable[[BaseException, bool], T] | None = None) -> T:
        """Run ``fn(container_client, timeouts)`` with bounded retries; map every failure to StorageError.

        ``read``: a 412 means the blob changed during a chunked read, retried from the start.
        ``on_conflict(exc, ambiguous)``: called for a 409/412/404 answer; ``ambiguous`` is True when an
        earlier attempt may have been applied (its response was lost), so the caller can check the result.
        """
        container = self._container()
        ambiguous = False

        def attempt(left: float) -> T:
            nonlocal ambiguous
            timeouts = {"connection_timeout": min(self.connect_timeout_s, left), "read_timeout": left}
            try:
                return fn(container, timeouts)
            except Exception as exc:
                if on_conflict is not None and _status(exc) in (404, 409, 412) and not _is_auth(exc):
                    return on_conflict(exc, ambiguous)
                if _is_transient(exc, read):
                    ambiguous = ambiguous or _maybe_applied(exc)
                raise

        try:
            return call_with_retry(attempt, is_transient=lambda e: _is_transient(e, read), budget_s=self.timeout_s,
                                   max_attempts=self.max_attempts, backoff=self.backoff,
                                   describe=f"{op} {self._where(key)}")
        except RetriesExhausted as exc:
            raise StorageUnavailableError(
                f"{op} {self._where(key)}: unavailable after {exc.attempts} attempt(s) in {exc.elapsed_s:.1f} s "
                f"({_reason(exc.last)})", key=key) from None
        except StorageError:
            raise
        except Exception as exc:
            raise self._map(op, key, exc) from None

    def _map(self, op: str, key: str | None, exc: BaseException) -> StorageError:
        """The StorageError for an SDK exception; the message names the URI, the key and the error code."""
        where, reason, status = self._where(key), _reason(exc), _status(exc)
        code = _code(exc)
        if _is_auth(exc):
            return StorageAuthError(f"{op} {where}: credentials refused ({reason})", key=key)
        if status == 404 or code in ("ContainerNotFound", "BlobNotFound"):
            if code == "ContainerNotFound":
                return NotFoundError(f"{op} {where}: filesystem (container) {self.filesystem!r} does not exist",
                                     key=key)
            return NotFoundError(f"{op} {where}: not found", key=key)
        if status == 409 and code in ("BlobAlreadyExists", "PathAlreadyExists", "ContainerAlreadyExists"):
            return AlreadyExistsError(f"{op} {where}: already exists", key=key)
        if status == 412:
            return PreconditionFailedError(f"{op} {where}: precondition failed ({reason})", key=key)
        if _is_transient(exc, True) or isinstance(exc, _service_errors()):
            return StorageUnavailableError(f"{op} {where}: unavailable ({reason})", key=key)
        return StorageError(f"{op} {where}: failed ({reason})", key=key)

    # --- Storage ------------------------------------------------------------------------------

    def put(self, key: str, data: BytesLike, metadata: Mapping[str, str] | None = None, *,
            if_none_match: bool = False, if_match: str | None = None) -> ObjectInfo:
        """Upload ``data`` (Put Blob, or staged blocks + an atomic commit for large data)."""
        name = self._name(key)
        md = check_metadata(metadata)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"put {self._where(key)}: data must be bytes, got {type(data).__name__}")
        if if_none_match and if_match is not None:
            raise ValueError("put: give if_none_match or if_match, not both")
        if if_match is not None and (not isinstance(if_match, str) or not if_match):
            raise ValueError(f"put: if_match must be an ETag string, got {if_match!r}")
        data = bytes(data) if not isinstance(data, bytes) else data
        cond: dict[str, Any] = {"overwrite": not if_none_match}
        if if_match is not None:
            from azure.core import MatchConditions

            cond.update(etag=_etag(if_match), match_condition=MatchConditions.IfNotModified)

        def upload(container: Any, t: dict) -> ObjectInfo:
            resp = container.get_blob_client(name).upload_blob(
                data, length=len(data), metadata=md or None, max_concurrency=self.max_concurrency, **cond, **t)
            lm = resp.get("last_modified")
            return ObjectInfo(key, len(data), _etag(resp["etag"]), lm.timestamp() if lm else None, md)

        def conflict(exc: BaseException, ambiguous: bool) -> ObjectInfo:
            if _code(exc) == "ContainerNotFound" or not (if_none_match or if_match is not None):
                raise exc
            if ambiguous:  # an earlier attempt may have written it: ours if the stored object is ours
                try:
                    got, info = self.get_with_info(key)
                except NotFoundError:
                    got, info = None, None
                if info is not None and got == data and dict(info.metadata) == md:
                    log.info("put %s: an earlier attempt's answer was lost; the stored object is this put's",
                             self._where(key))
                    return info
            raise self._condition_failed(key, if_none_match, if_match)

        return self._call("put", key, upload, on_conflict=conflict)

    def _condition_failed(self, key: str, if_none_match: bool, if_match: str | None) -> StorageError:
        """The error of a conditional put that the service refused (create-only, or compare-and-swap)."""
        if if_none_match:
            return AlreadyExistsError(f"put {self._where(key)}: already exists (create-only put)", key=key)
        return PreconditionFailedError(f"put {self._where(key)}: ETag is not {if_match} (or the object is gone)",
                                       key=key)

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """The bytes ``[start, end)`` (Python slice rules for non-negative bounds), by a ranged read."""
        name = self._name(key)
        for label, v in (("start", start), ("end", end)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise ValueError(f"get {self._where(key)}: {label} must be a non-negative int, got {v!r}")
        offset = start or 0
        if end is not None and end < offset:
            raise ValueError(f"get {self._where(key)}: end {end} is before start {offset}")
        if end == offset:
            self.head(key)  # the object must exist; the range is empty
            return b""
        length = None if end is None else end - offset
        if offset == 0 and length is None:
            offset_kw: dict[str, Any] = {}
        else:
            offset_kw = {"offset": offset, "length": length}

        def download(container: Any, t: dict) -> bytes:
            try:
                return container.get_blob_client(name).download_blob(
                    max_concurrency=self.max_concurrency, **offset_kw, **t).readall()
            except Exception as exc:
                if _status(exc) == 416:  # start at or past the end: empty, as a slice would be
                    return b""
                raise

        return self._call("get", key, download, read=True)

    def get_with_info(self, key: str) -> tuple[bytes, ObjectInfo]:
        """Bytes, ETag and metadata from one download (chunks are pinned to the first chunk's ETag)."""
        name = self._name(key)

        def download(container: Any, t: dict) -> tuple[bytes, ObjectInfo]:
            stream = container.get_blob_client(name).download_blob(max_concurrency=self.max_concurrency, **t)
            data = stream.readall()
            return data, _info(key, stream.properties, with_metadata=True)

        return self._call("get", key, download, read=True)

    def head(self, key: str) -> ObjectInfo:
        """Size, ETag, last-modified and metadata of one blob."""
        name = self._name(key)
        return self._call("head", key, lambda c, t: _info(key, c.get_blob_client(name).get_blob_properties(**t),
                                                          with_metadata=True), read=True)

    def list(self, prefix: str = "", *, with_metadata: bool = False) -> Iterator[ObjectInfo]:
        """Blobs whose key starts with ``prefix``, in key order, page by page (each page retried alone)."""
        if not isinstance(prefix, str) or prefix.startswith("/"):
            raise InvalidURIError(f"invalid list prefix {prefix!r}: a relative key prefix", key=None)
        root = f"{self.prefix}/" if self.prefix else ""
        token: str | None = None
        while True:
            def page(container: Any, t: dict, token: str | None = token) -> tuple[list, str | None]:
                # metadata always: it is how a hierarchical namespace marks directory entries
                fast = _list_page_fast(container, root + prefix, token, t)
                if fast is not None:
                    return fast
                pages = container.list_blobs(name_starts_with=root + prefix, include=["metadata"],
                                             **t).by_page(continuation_token=token)
                items = list(next(pages))
                return items, pages.continuation_token

            items, token = self._call("list", prefix or None, page, read=True)
            for blob in items:
                if (blob.metadata or {}).get("hdi_isfolder") == "true" and not blob.size and \
                        self.has_hierarchical_namespace():
                    continue  # a directory of a hierarchical namespace, not an object
                yield _info(blob.name[len(root):], blob, with_metadata=with_metadata)
            if not token:
                return

    def delete(self, key: str, *, missing_ok: bool = True) -> bool:
        """Delete one blob (with its snapshots); True if it existed."""
        name = self._name(key)

        def remove(container: Any, t: dict) -> bool:
            container.get_blob_client(name).delete_blob(delete_snapshots="include", **t)
            return True

        def gone(exc: BaseException, ambiguous: bool) -> bool:
            if _status(exc) != 404 or _code(exc) == "ContainerNotFound":
                raise exc
            if ambiguous:  # an earlier attempt whose answer was lost deleted it
                return True
            if not missing_ok:
                raise NotFoundError(f"delete {self._where(key)}: not found", key=key)
            return False

        return self._call("delete", key, remove, on_conflict=gone)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every blob under ``prefix`` (batch deletes of 256; a recursive directory delete on HNS)."""
        if not isinstance(prefix, str) or prefix.startswith("/"):
            raise InvalidURIError(f"invalid delete prefix {prefix!r}: a relative key prefix")
        keys = [info.key for info in self.list(prefix)]
        if not keys:
            return 0
        directory = f"{self.prefix}/{prefix}".strip("/") if self.prefix else prefix.strip("/")
        if (prefix == "" or prefix.endswith("/")) and directory and self.has_hierarchical_namespace():
            self._call("delete_prefix", prefix, lambda c, t: self._datalake().get_directory_client(
                directory).delete_directory(**t))
            return len(keys)
        root = f"{self.prefix}/" if self.prefix else ""
        removed = 0
        for i in range(0, len(keys), BATCH_DELETE_SIZE):
            names = [root + k for k in keys[i:i + BATCH_DELETE_SIZE]]

            def batch(container: Any, t: dict, names: list = names) -> int:
                results = list(container.delete_blobs(*names, raise_on_any_failure=False, **t))
                for r in results:
                    if r.status_code not in (202, 404):
                        raise _BatchPartFailed(r.status_code, r.headers.get("x-ms-error-code"))
                return sum(1 for r in results if r.status_code == 202)

            removed += self._call("delete_prefix", prefix or None, batch)
        return removed

    # --- streaming: large objects without a second whole copy in memory ---------------------------------

    def put_stream(self, key: str, source: Any, metadata: Mapping[str, str] | None = None, *,
                   if_none_match: bool = False, if_match: str | None = None) -> ObjectInfo:
        """:meth:`put` of ``source`` without copying it whole: a bytes-like object (``bytearray``, ``memoryview``,
        a pyarrow buffer: read in place) or a readable, seekable binary file (read from its current position to
        its end). Uploaded in blocks of the SDK's block size (staged blocks and one atomic commit above its
        single-put size, as :meth:`put`), so at most one block is copied at a time (one whole request's body,
        at most the single-put size of 64 MB, for smaller objects). Every attempt reads ``source`` again from
        where it started. Same conditions, atomicity and errors as :meth:`put`."""
        name = self._name(key)
        md = check_metadata(metadata)
        if if_none_match and if_match is not None:
            raise ValueError("put: give if_none_match or if_match, not both")
        if if_match is not None and (not isinstance(if_match, str) or not if_match):
            raise ValueError(f"put: if_match must be an ETag string, got {if_match!r}")
        if isinstance(source, bytes):
            return self.put(key, source, md, if_none_match=if_none_match, if_match=if_match)
        source_at = _source_opener(source, f"put {self._where(key)}")
        length = source_at().size
        cond: dict[str, Any] = {"overwrite": not if_none_match}
        if if_match is not None:
            from azure.core import MatchConditions

            cond.update(etag=_etag(if_match), match_condition=MatchConditions.IfNotModified)

        def upload(container: Any, t: dict) -> ObjectInfo:
            resp = container.get_blob_client(name).upload_blob(
                source_at(), length=length, metadata=md or None, max_concurrency=self.max_concurrency, **cond, **t)
            lm = resp.get("last_modified")
            return ObjectInfo(key, length, _etag(resp["etag"]), lm.timestamp() if lm else None, md)

        def conflict(exc: BaseException, ambiguous: bool) -> ObjectInfo:
            if _code(exc) == "ContainerNotFound" or not (if_none_match or if_match is not None):
                raise exc
            if ambiguous:  # an earlier attempt may have written it: ours if the stored object is ours (by digest)
                mine = _digest(source_at())
                theirs = _DigestSink()
                try:
                    info = self.get_into(key, lambda _info: theirs)
                except NotFoundError:
                    info = None
                if info is not None and info.size == length and theirs.hexdigest() == mine \
                        and dict(info.metadata) == md:
                    log.info("put %s: an earlier attempt's answer was lost; the stored object is this put's",
                             self._where(key))
                    return info
            raise self._condition_failed(key, if_none_match, if_match)

        return self._call("put", key, upload, on_conflict=conflict)

    def get_into(self, key: str, open_sink: Callable[[ObjectInfo], Any]) -> ObjectInfo:
        """Stream the object into a sink, chunk by chunk, and return its info (ETag, metadata): never a whole
        copy of it in memory here.

        ``open_sink(info)`` is called once the object's info is known, after the first ranged read (at most the
        SDK's first-read size, 32 MB) and before the rest is fetched: it returns a binary sink (``write(b)``; with
        ``max_concurrency`` > 1, a seekable one is written chunk by chunk in parallel, out of order after
        ``seek``, any other in order) or raises to stop there (e.g. metadata the caller will not
        trust: the rest is never downloaded). The rest comes in ranged reads of the SDK's chunk size, each pinned
        to the first read's ETag, so the bytes are one version's. A retried attempt (a transient fault, or the
        blob replaced mid-read) calls ``open_sink`` again and fills the new sink from the start. An exception
        raised by ``open_sink`` or by the sink is raised as it is (not retried)."""
        name = self._name(key)
        failed: list[BaseException] = []

        def download(container: Any, t: dict) -> ObjectInfo:
            failed.clear()
            stream = container.get_blob_client(name).download_blob(max_concurrency=self.max_concurrency, **t)
            info = _info(key, stream.properties, with_metadata=True)
            try:
                sink = open_sink(info)
            except BaseException as exc:
                failed.append(exc)
                raise
            guarded = _GuardedSink(sink, failed)
            if self.max_concurrency > 1 and not guarded.seekable():
                for chunk in stream.chunks():  # the SDK writes out of order only into a seekable sink: in order here
                    guarded.write(chunk)
            else:
                stream.readinto(guarded)
            return info

        try:
            return self._call("get", key, download, read=True)
        except StorageError as exc:
            if failed and failed[-1] is not exc:
                raise failed[-1] from None
            raise

    # --- namespace operations -----------------------------------------------------------------

    def rename(self, src: str, dst: str) -> ObjectInfo:
        """Move ``src`` to ``dst`` (replacing it): atomic rename on HNS, else copy + delete (not atomic)."""
        src_name, dst_name = self._name(src), self._name(dst)
        if self.has_hierarchical_namespace():
            self._call("rename", src, lambda c, t: self._datalake().get_file_client(src_name).rename_file(
                f"{self.filesystem}/{dst_name}", **t))
            return self.head(dst)
        data, info = self.get_with_info(src)
        new = self.put(dst, data, info.metadata)
        self.delete(src)
        return new


# --- helpers -------------------------------------------------------------------------------------


_STREAM_CHUNK = 4 * 1024 * 1024


class _ViewReader(io.RawIOBase):
    """A read-only, seekable binary file over a bytes-like object, read in place (``read`` copies only what it
    returns: the SDK asks for one block at a time)."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view, self._pos = view, 0
        self.size = view.nbytes

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        end = self.size if size is None or size < 0 else min(self.size, self._pos + size)
        out = self._view[self._pos:end].tobytes() if end > self._pos else b""
        self._pos = max(self._pos, end)
        return out

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        n = max(0, min(out.nbytes, self.size - self._pos))
        out[:n] = self._view[self._pos:self._pos + n]
        self._pos += n
        return n


class _FileSlice(io.RawIOBase):
    """The bytes of a binary file from ``start`` to its end (as found when the put began), read in place."""

    def __init__(self, f: Any, start: int, size: int) -> None:
        super().__init__()
        self._f, self._start, self.size = f, start, size
        f.seek(start)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._f.tell() - self._start

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.tell(), io.SEEK_END: self.size}[whence]
        return self._f.seek(self._start + max(0, base + offset)) - self._start

    def read(self, size: int | None = -1) -> bytes:
        left = self.size - self.tell()
        want = left if size is None or size < 0 else min(size, left)
        return self._f.read(want) if want > 0 else b""


def _source_opener(source: Any, what: str) -> Callable[[], Any]:
    """A function that gives a fresh reader of ``source`` (a bytes-like object, or a readable seekable binary
    file from its current position), positioned at its start, with its ``size``."""
    try:
        view = memoryview(source).cast("B")
    except TypeError:
        view = None
    if view is not None:
        return lambda: _ViewReader(view)
    if not all(hasattr(source, name) for name in ("read", "seek", "tell")):
        raise TypeError(f"{what}: source must be bytes-like or a readable, seekable binary file, got "
                        f"{type(source).__name__}")
    start = source.tell()
    size = source.seek(0, io.SEEK_END) - start
    source.seek(start)
    return lambda: _FileSlice(source, start, size)


def _digest(reader: Any) -> str:
    """The SHA-256 of what ``reader`` gives from where it is to its end, read a chunk at a time."""
    h = hashlib.sha256()
    while True:
        chunk = reader.read(_STREAM_CHUNK)
        if not chunk:
            return h.hexdigest()
        h.update(chunk)


class _DigestSink:
    """A sink that keeps only the SHA-256 of what is written to it."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def write(self, data: Any) -> int:
        self._h.update(data)
        return memoryview(data).nbytes

    def hexdigest(self) -> str:
        return self._h.hexdigest()


class _GuardedSink:
    """Passes writes to the caller's sink and notes an exception it raises, so that it reaches the caller as it
    is (not as a storage error)."""

    def __init__(self, sink: Any, failed: list[BaseException]) -> None:
        self._sink, self._failed = sink, failed

    def write(self, data: Any) -> int:
        try:
            return self._sink.write(data)
        except BaseException as exc:
            self._failed.append(exc)
            raise

    def seekable(self) -> bool:
        return bool(getattr(self._sink, "seekable", lambda: False)())

    def seek(self, *args: Any) -> int:
        return self._sink.seek(*args)

    def tell(self) -> int:
        return self._sink.tell()


class _BatchPartFailed(Exception):
    """One sub-request of a batch delete failed with another status than 202/404."""

    def __init__(self, status: int, code: str | None) -> None:
        super().__init__(f"batch part failed: {code or 'error'} (HTTP {status})")
        self.status_code, self.error_code = status, code


def _service_errors() -> tuple[type, ...]:
    from azure.core.exceptions import ServiceRequestError, ServiceResponseError

    return (ServiceRequestError, ServiceResponseError)


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _code(exc: BaseException) -> str | None:
    code = getattr(exc, "error_code", None)
    return None if code is None else str(getattr(code, "value", code))


def _is_auth(exc: BaseException) -> bool:
    from azure.core.exceptions import ClientAuthenticationError

    return isinstance(exc, ClientAuthenticationError) or _status(exc) in (401, 403)


def _tls_failure(exc: BaseException) -> bool:
    """Whether a connection error is a TLS failure (a bad certificate will not heal by retrying)."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        cur = todo.pop()
        if not isinstance(cur, BaseException) or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLError) or "SSLError" in type(cur).__name__:
            return True
        todo += [getattr(cur, "inner_exception", None), getattr(cur, "reason", None), cur.__cause__,
                 cur.__context__, *cur.args]
    return False


def _is_transient(exc: BaseException, read: bool = False) -> bool:
    """Worth another attempt: connection failures, timeouts, 408/429/5xx, a cut stream, a blob changed mid-read."""
    from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        return not _tls_failure(exc)
    if _is_auth(exc):
        return False
    if isinstance(exc, HttpResponseError):
        status = _status(exc)
        return status is None or status in _RETRY_STATUS or (read and status == 412)
    if isinstance(exc, _BatchPartFailed):
        return exc.status_code in _RETRY_STATUS
    return isinstance(exc, (ConnectionError, TimeoutError))


def _maybe_applied(exc: BaseException) -> bool:
    """Whether a failed request may have been carried out (sent, but its answer lost or a 5xx)."""
    from azure.core.exceptions import ServiceRequestError

    if isinstance(exc, ServiceRequestError):  # connecting failed: nothing was sent
        return False
    status = _status(exc)
    return status is None or status >= 500 or status == 408


def _reason(exc: BaseException) -> str:
    """A short, secret-free description: the error code and HTTP status, or the error's type.

    Never the SDK's message text (it can hold request URLs); for connection errors only the OS-level
    reason, with any query string cut off.
    """
    status, code = _status(exc), _code(exc)
    if status is not None:
        return f"{code or type(exc).__name__}, HTTP {status}"
    text = str(exc)
    for marker in ("Connection refused", "timed out", "Name or service not known", "Connection reset",
                   "Connection aborted", "RemoteDisconnected", "CERTIFICATE_VERIFY_FAILED", "IncompleteRead"):
        if marker.lower() in text.lower():
            return f"{type(exc).__name__}: {marker}"
    return type(exc).__name__


#: Blobs per listing page (the service's maximum).
LIST_PAGE_SIZE = 5000


class _ListedBlob(NamedTuple):
    """One blob of a listing page, as :func:`_info` reads a blob's properties."""

    name: str
    size: int
    etag: str
    last_modified: datetime.datetime | None
    metadata: dict[str, str]


def _list_page_fast(container: Any, name_prefix: str, token: str | None,
                    timeouts: dict) -> tuple[list[_ListedBlob], str | None] | None:
    """One page of List Blobs (metadata included), its XML read with ElementTree: the SDK's generated deserialiser
    spent ~0.4 ms per blob (most of a fully cached 1,000-node re-run on Azurite, benchmarks/README.md), this ~10 us.
    The request goes through the container client's own pipeline (auth, retries off as configured, transport);
    None when that private entry point is not there (another SDK version): the caller lists with the SDK. An error
    answer raises as the SDK's would (status and error code), so it is mapped the same way."""
    send = getattr(getattr(container, "_client", None), "_send_request", None)
    if send is None:
        return None
    from azure.core.exceptions import HttpResponseError
    from azure.core.rest import HttpRequest

    params = {"restype": "container", "comp": "list", "include": "metadata", "maxresults": str(LIST_PAGE_SIZE)}
    if name_prefix:
        params["prefix"] = name_prefix
    if token:
        params["marker"] = token
    request = HttpRequest("GET", container.url, params=params,
                          headers={"x-ms-version": container.api_version, "Accept": "application/xml"})
    response = send(request, **timeouts)
    if response.status_code != 200:
        error = HttpResponseError(response=response)
        error.error_code = response.headers.get("x-ms-error-code")  # type: ignore[attr-defined]  # (the SDK's own too)
        raise error
    root = ElementTree.fromstring(response.read())
    blobs = []
    for blob in root.iter("Blob"):
        props = blob.find("Properties")
        if props is None:
            return None
        modified = props.findtext("Last-Modified")
        blobs.append(_ListedBlob(blob.findtext("Name") or "", int(props.findtext("Content-Length") or 0),
                                 props.findtext("Etag") or "",
                                 email.utils.parsedate_to_datetime(modified) if modified else None,
                                 {m.tag: m.text or "" for m in blob.find("Metadata") or ()}))
    return blobs, root.findtext("NextMarker") or None


def _etag(value: str) -> str:
    """One ETag form everywhere: quoted, as HTTP sends it (blob listings return it bare)."""
    return value if value.startswith(('"', 'W/"')) else f'"{value}"'


def _info(key: str, props: Any, *, with_metadata: bool) -> ObjectInfo:
    lm = getattr(props, "last_modified", None)
    return ObjectInfo(key=key, size=int(props.size or 0), etag=_etag(props.etag),
                      last_modified=lm.timestamp() if lm else None,
                      metadata=dict(props.metadata or {}) if with_metadata else {})
