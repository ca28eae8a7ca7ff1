"""S3 and HDFS behind :class:`Storage`: ``ArrowFSStorage`` over a ``pyarrow.fs`` filesystem, ``S3Storage`` for S3.

URIs: ``s3://<bucket>/<prefix>`` and ``hdfs://<namenode>[:<port>]/<path>`` (``open_storage`` calls
:meth:`ArrowFSStorage.from_uri`, which returns an :class:`S3Storage` for ``s3://``).

S3 options: ``endpoint_override`` (``host:port`` or ``http(s)://host:port``, for MinIO, moto, ...),
``scheme`` (``http``/``https``), ``region`` (else ``AWS_REGION``/``AWS_DEFAULT_REGION``, else ``us-east-1``:
always explicit, so no SDK asks the EC2 metadata service for it), ``access_key`` + ``secret_key``
(+ ``session_token``), each a literal, a SecretValue or an ``env://``/``kv://`` reference resolved in the
process that opens the client; or ``anonymous=True``; with none of them the AWS default credential chain
applies (environment, config files, and on EC2 the instance metadata service). ``tls_ca_file`` (PEM) for a
private CA. ``timeout_s`` (default 10 s: the budget of one operation with its retries),
``connect_timeout``/``request_timeout`` (per attempt; also spelt ``connect_timeout_s``/``request_timeout_s``),
``max_attempts``.

Why boto3 and pyarrow: ``pyarrow.fs.S3FileSystem`` cannot carry S3's semantics: ``open_output_stream``
drops user metadata (it only sets Content-Type, ACL, ...), always makes a multipart upload (three requests,
no ETag returned), has no If-None-Match / If-Match, and its reads are a HEAD then ranged GETs, so an object
replaced in between is read torn (measured on pyarrow 26 against moto: a grown object came back cut to the
old size, a shrunk one padded with garbage bytes; 59 of 60 reads under a concurrent writer were wrong).
So every object operation of :class:`S3Storage` is one boto3 request (PutObject with If-None-Match ``*`` /
If-Match, GetObject with Range, HeadObject, ListObjectsV2, DeleteObjects), and pyarrow serves Arrow readers
of objects that are not being replaced: :meth:`ArrowFSStorage.arrow_filesystem` gives a ``pyarrow.fs``
filesystem rooted at the prefix (e.g. ``pyarrow.parquet.read_table(key, filesystem=...)``).

HDFS (thin, untested here: no cluster and no libhdfs on the test machines): ``pyarrow.fs.HadoopFileSystem``
built on first use (needs ``JAVA_HOME``, ``ARROW_LIBHDFS_DIR`` and Hadoop's ``CLASSPATH``); options
``user``, ``kerb_ticket``, ``replication``, ``extra_conf`` (libhdfs keeps its own connect timeouts and
retries: set them there, e.g. ``ipc.client.connect.timeout``; ``timeout_s`` bounds only this adapter's
retries). The generic pyarrow path it uses (open to any pyarrow filesystem through the constructor) has no
metadata and no conditional writes (they raise :class:`StorageError`); a put writes a hidden temp file and
renames it over the key (HDFS's rename over an existing file is a delete then a rename: not atomic); the
ETag is a substitute made of size and modification time.

Failures: SDK retries are off; transient faults (connection errors, timeouts, 408/429/5xx, S3's 409
ConditionalRequestConflict) are retried with bounded backoff within ``timeout_s``, so a dead endpoint raises
:class:`StorageUnavailableError` within it; refused credentials raise :class:`StorageAuthError` at once.
Messages name the URI and key and the error code, never a credential.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import logging
import os
import re
import threading
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Any, TypeVar
from collections.abc import Callable, Iterator, Mapping

from ..errors import (AlreadyExistsError, InvalidURIError, NotFoundError, PreconditionFailedError,
                      StorageAuthError, StorageError, StorageUnavailableError)
from .base import BytesLike, ObjectInfo, Storage, check_key, check_metadata, resolve_secret_option
from .retry import Backoff, RetriesExhausted, call_with_retry
from .uri import redact_uri

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_CONNECT_TIMEOUT_S = 2.0
DEFAULT_REQUEST_TIMEOUT_S = 5.0
DEFAULT_MAX_ATTEMPTS = 8
DEFAULT_HDFS_PORT = 8020
DELETE_BATCH = 1000  # DeleteObjects' limit per request
HEAD_THREADS = 8  # parallel HeadObject calls of list(with_metadata=True)
MAX_SINGLE_PUT = 5 * 1024 ** 3  # S3's limit of one PutObject

_BUCKET = re.compile(r"^(?=.{3,63}\Z)[a-z0-9][a-z0-9.\-]*[a-z0-9]\Z")
_URI = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*)://([^/?#]*)(/[^?#]*)?([?#].*)?$", re.S)
_TMP_NAME = re.compile(r"(^|/)\.[^/]*\.odibi-tmp-[0-9a-f]{32}$")
_SECRET_OPTIONS = ("access_key", "secret_key", "session_token")
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_RETRY_CODES = frozenset({"RequestTimeout", "SlowDown", "Throttling", "ThrottlingException", "RequestThrottled",
                          "InternalError", "ServiceUnavailable", "ConditionalRequestConflict", "OperationAborted"})
_AUTH_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                         "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem",
                         "InvalidSecurity", "MissingSecurityHeader", "UnrecognizedClientException"})
# pyarrow's S3 errors read "AWS Error <CODE> during <Operation> operation: ..."
_ARROW_AWS = re.compile(r"AWS Error ([A-Z_]+)")
_ARROW_AUTH = frozenset({"ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "EXPIRED_TOKEN",
                         "INVALID_CLIENT_TOKEN_ID", "MISSING_AUTHENTICATION_TOKEN", "UNRECOGNIZED_CLIENT",
                         "INCOMPLETE_SIGNATURE", "INVALID_SIGNATURE"})
_ARROW_TRANSIENT = frozenset({"NETWORK_CONNECTION", "SLOW_DOWN", "SERVICE_UNAVAILABLE", "THROTTLING",
                              "INTERNAL_FAILURE", "REQUEST_TIMEOUT", "REQUEST_EXPIRED"})
_ARROW_HTTP_5XX = re.compile(r"HTTP status (5\d\d|429|408)")
_HDFS_LIB = ("libjvm", "libhdfs", "JAVA_HOME", "CLASSPATH")


@dataclass(frozen=True)
class _Fault:
    """What a failed call means: ``kind`` is not_found, auth, conflict, transient, unreachable or fatal."""

    kind: str
    reason: str
    code: str | None = None
    maybe_applied: bool = False  # a transient failure after which the request may still have been carried out


class ArrowFSStorage(Storage):
    """Objects under a root path of a ``pyarrow.fs`` filesystem (HDFS, or any other), opened once per process.

    ``filesystem_factory`` is a picklable callable returning the filesystem (a class or a
    ``functools.partial``); it is called lazily in each process. No metadata, no conditional writes.
    """

    def __init__(self, uri: str, root: str, filesystem_factory: Callable[[], Any], *,
                 timeout_s: float = DEFAULT_TIMEOUT_S, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 backoff: Backoff | None = None) -> None:
        """Configure (no I/O). ``root``: the folder in the filesystem's own path form (``/data``, ``bucket/p``)."""
        if not callable(filesystem_factory):
            raise TypeError(f"filesystem_factory must be callable, got {type(filesystem_factory).__name__}")
        _check_budget(timeout_s, max_attempts)
        self.uri = redact_uri(uri).rstrip("/")
        self.root = root.rstrip("/")
        self._factory = filesystem_factory
        self.timeout_s = float(timeout_s)
        self.max_attempts = max_attempts
        self.backoff = backoff or Backoff()
        self._attempt_s = 0.2  # the shortest time worth starting another attempt in
        self._lock = threading.Lock()
        self._fs: tuple[int, Any] | None = None  # (pid, filesystem) of this process

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> ArrowFSStorage:
        """An adapter for ``s3://bucket/prefix`` (an :class:`S3Storage`) or ``hdfs://host[:port]/path``."""
        scheme, authority, path = _split_uri(uri)
        if scheme == "s3":
            return S3Storage.from_uri(uri, **options)
        if scheme != "hdfs":
            raise InvalidURIError(f"not an S3 or HDFS URI {redact_uri(uri)!r}: use s3://<bucket>/<prefix> or "
                                  "hdfs://<namenode>[:<port>]/<path>")
        return _hdfs_storage(redact_uri(uri), authority, path, options)

    # --- pickling: configuration only ---------------------------------------------------------

    def __getstate__(self) -> dict:
        """URI, root and options (secret references as given); never an open filesystem or client."""
        state = self.__dict__.copy()
        for name in ("_lock", "_fs", "_boto"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock, self._fs = threading.Lock(), None

    # --- the filesystem (one per process, opened on first use) --------------------------------

    def _new_filesystem(self) -> Any:
        """Build this process's pyarrow filesystem (called once per process)."""
        return self._factory()

    def _filesystem(self) -> Any:
        pid = os.getpid()
        fs = self._fs
        if fs is not None and fs[0] == pid:
            return fs[1]
        with self._lock:
            if self._fs is None or self._fs[0] != pid:
                try:
                    opened = self._new_filesystem()
                except StorageError:
                    raise
                except Exception as exc:
                    raise self._map("open", None, exc) from None
                log.debug("opened a %s for %s", type(opened).__name__, self.uri)
                self._fs = (pid, opened)
            return self._fs[1]

    def arrow_filesystem(self) -> Any:
        """A ``pyarrow.fs`` filesystem rooted at this adapter's prefix, for Arrow readers (paths are keys).

        It holds the resolved credentials: use it in this process, do not pickle it.
        """
        import pyarrow.fs as pafs

        return pafs.SubTreeFileSystem(self.root or "/", self._filesystem())

    def close(self) -> None:
        """Drop this process's clients (they are reopened on next use)."""
        with self._lock:
            self._fs = None

    # --- the retry / error-mapping core -------------------------------------------------------

    def _where(self, key: str | None) -> str:
        return f"{self.uri}/{key}" if key else self.uri

    def _fault(self, exc: BaseException) -> _Fault:
        """Classify a pyarrow (or OS) exception."""
        return _arrow_fault(exc)

    def _call(self, op: str, key: str | None, fn: Callable[[], T],
              on_conflict: Callable[[BaseException, _Fault, bool], T] | None = None) -> T:
        """Run ``fn()`` with bounded retries of transient faults; map every failure to a StorageError.

        ``on_conflict(exc, fault, ambiguous)`` handles a not-found or precondition answer; ``ambiguous``
        says an earlier attempt may have been carried out although its answer was lost.
        """
        ambiguous = False

        def attempt(_left: float) -> T:
            nonlocal ambiguous
            try:
                return fn()
            except StorageError:
                raise
            except Exception as exc:
                fault = self._fault(exc)
                if on_conflict is not None and fault.kind in ("conflict", "not_found"):
                    return on_conflict(exc, fault, ambiguous)
                if fault.kind == "transient":
                    ambiguous = ambiguous or fault.maybe_applied
                raise

        def transient(exc: BaseException) -> bool:
            return not isinstance(exc, StorageError) and self._fault(exc).kind == "transient"

        try:
            return call_with_retry(attempt, is_transient=transient, budget_s=self.timeout_s,
                                   max_attempts=self.max_attempts, backoff=self.backoff,
                                   min_attempt_s=self._attempt_s, describe=f"{op} {self._where(key)}")
        except RetriesExhausted as exc:
            raise StorageUnavailableError(
                f"{op} {self._where(key)}: unavailable after {exc.attempts} attempt(s) in {exc.elapsed_s:.1f} s "
                f"({self._fault(exc.last).reason})", key=key) from None
        except StorageError:
            raise
        except Exception as exc:
            raise self._map(op, key, exc) from None

    def _map(self, op: str, key: str | None, exc: BaseException) -> StorageError:
        """The StorageError for a failed call: the message names the URI, the key and the error code only."""
        fault, where = self._fault(exc), self._where(key)
        if fault.kind == "not_found":
            return NotFoundError(f"{op} {where}: not found ({fault.reason})", key=key)
        if fault.kind == "auth":
            return StorageAuthError(f"{op} {where}: credentials refused or missing ({fault.reason})", key=key)
        if fault.kind == "conflict":
            return PreconditionFailedError(f"{op} {where}: precondition failed ({fault.reason})", key=key)
        if fault.kind in ("transient", "unreachable"):
            return StorageUnavailableError(f"{op} {where}: unavailable ({fault.reason})", key=key)
        return StorageError(f"{op} {where}: failed ({fault.reason})", key=key)

    # --- the generic pyarrow path (HDFS) ------------------------------------------------------

    def _path(self, key: str) -> str:
        check_key(key)
        return f"{self.root}/{key}"

    def _unsupported(self, what: str, key: str | None) -> StorageError:
        return StorageError(f"{self._where(key)}: {what} is not supported on this filesystem (pyarrow.fs has no "
                            "object metadata or conditional writes); use s3://, abfss:// or a local folder",
                            key=key)

    def put(self, key: str, data: BytesLike, metadata: Mapping[str, str] | None = None, *,
            if_none_match: bool = False, if_match: str | None = None) -> ObjectInfo:
        """Write a hidden temp file beside the key, then rename it over the key."""
        path = self._path(key)
        md = check_metadata(metadata)
        payload = _payload(data, self._where(key))
        _check_conditions(if_none_match, if_match)
        if md:
            raise self._unsupported("object metadata", key)
        if if_none_match or if_match is not None:
            raise self._unsupported("a conditional put", key)
        parent, _, name = path.rpartition("/")
        tmp = f"{parent}/.{name}.odibi-tmp-{uuid.uuid4().hex}"

        def write() -> ObjectInfo:
            fs = self._filesystem()
            if parent:
                fs.create_dir(parent, recursive=True)
            try:
                with fs.open_output_stream(tmp) as out:
                    out.write(payload)
                fs.move(tmp, path)
            except BaseException:
                _quietly(fs.delete_file, tmp)
                raise
            return self._info_of(key, fs.get_file_info(path))

        return self._call("put", key, write)

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """The bytes ``[start, end)`` (Python slice rules for non-negative bounds)."""
        path = self._path(key)
        offset, end = _check_range(start, end, self._where(key))

        def read() -> bytes:
            with self._filesystem().open_input_file(path) as f:
                size = f.size()
                stop = size if end is None else min(end, size)
                return f.read_at(stop - offset, offset) if stop > offset else b""

        return self._call("get", key, read)

    def get_with_info(self, key: str) -> tuple[bytes, ObjectInfo]:
        """Bytes and info, re-read while the file changed between the two (no atomic read on HDFS)."""
        for _ in range(3):
            before = self.head(key)
            data = self.get(key)
            after = self.head(key)
            if before.etag == after.etag and len(data) == after.size:
                return data, after
        raise StorageUnavailableError(f"get {self._where(key)}: the object kept changing while being read", key=key)

    def head(self, key: str) -> ObjectInfo:
        """Size, substitute ETag and modification time of one file."""
        path = self._path(key)
        return self._call("head", key, lambda: self._info_of(key, self._filesystem().get_file_info(path)))

    def _info_of(self, key: str, info: Any) -> ObjectInfo:
        import pyarrow.fs as pafs

        if info.type != pafs.FileType.File:
            raise NotFoundError(f"head {self._where(key)}: not found", key=key)
        return _arrow_info(key, info)

    def list(self, prefix: str = "", *, with_metadata: bool = False) -> Iterator[ObjectInfo]:
        """Files whose key starts with ``prefix``, in key order (one recursive listing of the deepest folder)."""
        _check_prefix(prefix)
        return self._files(prefix)

    def _files(self, prefix: str) -> Iterator[ObjectInfo]:
        import pyarrow.fs as pafs

        folder = prefix.rpartition("/")[0]
        base = f"{self.root}/{folder}" if folder else (self.root or "/")
        cut = len(self.root) + 1

        def listing() -> list:
            selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
            return self._filesystem().get_file_info(selector)

        infos = self._call("list", prefix or None, listing)
        found = sorted((i.path[cut:], i) for i in infos if i.type == pafs.FileType.File)
        for key, info in found:
            if key.startswith(prefix) and not _TMP_NAME.search(key):
                yield _arrow_info(key, info)

    def delete(self, key: str, *, missing_ok: bool = True) -> bool:
        """Delete one file; True if it existed."""
        path = self._path(key)

        def remove() -> bool:
            self._filesystem().delete_file(path)
            return True

        def gone(exc: BaseException, fault: _Fault, ambiguous: bool) -> bool:
            if fault.kind != "not_found":
                raise exc
            if not missing_ok:
                raise NotFoundError(f"delete {self._where(key)}: not found", key=key)
            return False

        return self._call("delete", key, remove, on_conflict=gone)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every file under ``prefix`` (one by one; empty folders stay)."""
        return sum(1 for info in list(self.list(prefix)) if self.delete(info.key))


# --- S3 ----------------------------------------------------------------------------------------------------


class S3Storage(ArrowFSStorage):
    """Objects in an S3 bucket under a prefix: boto3 for every object operation, pyarrow for Arrow readers."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_override: str | None = None,
                 scheme: str | None = None, region: str | None = None, access_key: Any = None,
                 secret_key: Any = None, session_token: Any = None, anonymous: bool = False,
                 tls_ca_file: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 connect_timeout: float | None = None, request_timeout: float | None = None,
                 connect_timeout_s: float | None = None, request_timeout_s: float | None = None,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS, backoff: Backoff | None = None) -> None:
        """Configure (no network): validate the bucket, prefix, endpoint, timeouts and credential options."""
        if not isinstance(bucket, str) or not _BUCKET.match(bucket) or ".." in bucket:
            raise InvalidURIError(f"invalid S3 bucket name {bucket!r}: 3-63 characters of a-z, 0-9, '.' and '-', "
                                  "starting and ending with a letter or digit")
        prefix = _check_root_prefix(prefix)
        endpoint, scheme = _endpoint(endpoint_override, scheme)
        connect = _pick_timeout("connect_timeout", connect_timeout, connect_timeout_s, DEFAULT_CONNECT_TIMEOUT_S)
        request = _pick_timeout("request_timeout", request_timeout, request_timeout_s, DEFAULT_REQUEST_TIMEOUT_S)
        super().__init__(f"s3://{bucket}/{prefix}", f"{bucket}/{prefix}", _no_factory, timeout_s=timeout_s,
                         max_attempts=max_attempts, backoff=backoff)
        self.bucket, self.prefix = bucket, prefix
        self.endpoint, self.scheme = endpoint, scheme
        self.region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        if not isinstance(self.region, str) or not re.match(r"^[a-z0-9\-]{2,40}$", self.region):
            raise InvalidURIError(f"invalid S3 region {self.region!r}")
        self.connect_timeout_s = min(connect, self.timeout_s)
        self.request_timeout_s = min(request, self.timeout_s)
        # another attempt starts only if it can run to its own timeouts within the budget
        self._attempt_s = self.connect_timeout_s + self.request_timeout_s
        if tls_ca_file is not None and not isinstance(tls_ca_file, (str, os.PathLike)):
            raise TypeError(f"tls_ca_file must be a path, got {type(tls_ca_file).__name__}")
        self.tls_ca_file = os.fspath(tls_ca_file) if tls_ca_file is not None else None
        self.anonymous = bool(anonymous)
        self._secrets = {"access_key": access_key, "secret_key": secret_key, "session_token": session_token}
        given = sorted(k for k, v in self._secrets.items() if v is not None)
        if self.anonymous and given:
            raise StorageAuthError(f"{self.uri}: anonymous=True cannot be combined with {', '.join(given)}")
        if given and ("access_key" not in given or "secret_key" not in given):
            raise StorageAuthError(f"{self.uri}: access_key and secret_key go together (given: {', '.join(given)})")
        self.auth = "anonymous" if self.anonymous else ("keys" if given else "default chain")
        self._boto: tuple[int, Any] | None = None  # (pid, boto3 S3 client) of this process
        if importlib.util.find_spec("boto3") is None:  # say so now, not at the first request
            _import_boto3(self.uri)

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> S3Storage:
        """Parse ``s3://<bucket>[/<prefix>]``; ``options`` are the keyword arguments of ``__init__``."""
        scheme, authority, path = _split_uri(uri)
        shown = redact_uri(uri)
        if scheme != "s3":
            raise InvalidURIError(f"not an S3 URI {shown!r}: use s3://<bucket>/<prefix>")
        if "@" in authority or ":" in authority:
            raise InvalidURIError(f"S3 URI {shown!r} holds user info or a port: pass credentials as access_key / "
                                  "secret_key options and the endpoint as endpoint_override")
        if not authority:
            raise InvalidURIError(f"S3 URI {shown!r} names no bucket: use s3://<bucket>/<prefix>")
        if not _BUCKET.match(authority) or ".." in authority:
            raise InvalidURIError(f"invalid S3 bucket name {authority!r} in {shown!r}: 3-63 characters of a-z, "
                                  "0-9, '.' and '-', starting and ending with a letter or digit")
        try:
            prefix = _check_root_prefix(path)
        except InvalidURIError:
            raise InvalidURIError(f"invalid prefix in {shown!r}: use '/a/b' segments without '.', '..' or empty "
                                  "ones") from None
        return cls(authority, prefix, **options)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._boto = None

    def __repr__(self) -> str:
        where = f", endpoint={self.endpoint!r}" if self.endpoint else ""
        return f"S3Storage({self.uri!r}{where}, auth={self.auth!r})"

    # --- clients (one per process, opened on first use) ---------------------------------------

    def _secret(self, name: str) -> str | None:
        """The value of a secret option, resolved here (``env://``, ``kv://``, SecretValue or literal)."""
        return resolve_secret_option(self.uri, name, self._secrets[name])

    def _client(self) -> Any:
        """This process's boto3 S3 client, created on first use and reused (clients are thread-safe)."""
        pid = os.getpid()
        boto = self._boto
        if boto is not None and boto[0] == pid:
            return boto[1]
        with self._lock:
            if self._boto is None or self._boto[0] != pid:
                boto3 = _import_boto3(self.uri)
                from botocore import UNSIGNED
                from botocore.config import Config

                config = Config(connect_timeout=self.connect_timeout_s, read_timeout=self.request_timeout_s,
                                retries={"total_max_attempts": 1}, max_pool_connections=HEAD_THREADS * 2,
                                s3={"addressing_style": "path" if self.endpoint else "auto"},
                                signature_version=UNSIGNED if self.anonymous else None)
                session = boto3.session.Session()
                client = session.client(
                    "s3", region_name=self.region, endpoint_url=self.endpoint,
                    aws_access_key_id=self._secret("access_key"), aws_secret_access_key=self._secret("secret_key"),
                    aws_session_token=self._secret("session_token"),
                    verify=self.tls_ca_file if self.tls_ca_file else None, config=config)
                log.debug("opened an S3 client for %s (endpoint %s, auth: %s)", self.uri,
                          self.endpoint or "AWS", self.auth)
                self._boto = (pid, client)
            return self._boto[1]

    def _new_filesystem(self) -> Any:
        """A pyarrow S3FileSystem with the same endpoint, region, credentials and timeouts (SDK retries off)."""
        import pyarrow.fs as pafs

        kwargs: dict[str, Any] = dict(region=self.region, scheme=self.scheme, connect_timeout=self.connect_timeout_s,
                                      request_timeout=self.request_timeout_s,
                                      retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))
        if self.endpoint:
            kwargs["endpoint_override"] = urllib.parse.urlsplit(self.endpoint).netloc
        if self.tls_ca_file:
            kwargs["tls_ca_file_path"] = self.tls_ca_file
        if self.anonymous:
            kwargs["anonymous"] = True
        elif self.auth == "keys":
            kwargs.update(access_key=self._secret("access_key"), secret_key=self._secret("secret_key"),
                          session_token=self._secret("session_token"))
        return pafs.S3FileSystem(**kwargs)

    def close(self) -> None:
        """Drop this process's clients (they are reopened on next use)."""
        with self._lock:
            self._fs, self._boto = None, None

    def _fault(self, exc: BaseException) -> _Fault:
        return _boto_fault(exc) or _arrow_fault(exc)

    def _map(self, op: str, key: str | None, exc: BaseException) -> StorageError:
        if self._fault(exc).code == "NoSuchBucket":
            return NotFoundError(f"{op} {self._where(key)}: bucket {self.bucket!r} does not exist", key=key)
        return super()._map(op, key, exc)

    def _name(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    # --- Storage ------------------------------------------------------------------------------

    def put(self, key: str, data: BytesLike, metadata: Mapping[str, str] | None = None, *,
            if_none_match: bool = False, if_match: str | None = None) -> ObjectInfo:
        """One PutObject (If-None-Match ``*`` for create-only, If-Match for compare-and-swap)."""
        name = self._name(key)
        md = check_metadata(metadata)
        payload = _payload(data, self._where(key))
        _check_conditions(if_none_match, if_match)
        if len(payload) > MAX_SINGLE_PUT:
            raise StorageError(f"put {self._where(key)}: {len(payload)} bytes exceed S3's single-PUT limit of 5 GiB",
                               key=key)
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": name, "Body": payload, "Metadata": md}
        if if_none_match:
            request["IfNoneMatch"] = "*"
        if if_match is not None:
            request["IfMatch"] = if_match

        def upload() -> ObjectInfo:
            answer = self._client().put_object(**request)
            return ObjectInfo(key, len(payload), _etag(answer["ETag"]), None, md)

        def conflict(exc: BaseException, fault: _Fault, ambiguous: bool) -> ObjectInfo:
            if fault.code == "NoSuchBucket" or not (if_none_match or if_match is not None):
                raise exc
            if ambiguous:  # an earlier attempt may have written it: ours if the stored object is ours
                try:
                    got, info = self.get_with_info(key)
                except NotFoundError:
                    got, info = None, None
                if info is not None and got == payload and dict(info.metadata) == md:
                    log.info("put %s: an earlier attempt's answer was lost; the stored object is this put's",
                             self._where(key))
                    return info
            if if_none_match:
                raise AlreadyExistsError(f"put {self._where(key)}: already exists (create-only put)", key=key)
            raise PreconditionFailedError(f"put {self._where(key)}: ETag is not {if_match} (or the object is gone)",
                                          key=key)

        return self._call("put", key, upload, on_conflict=conflict)

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """The bytes ``[start, end)`` (Python slice rules for non-negative bounds), by one (ranged) GetObject."""
        name = self._name(key)
        offset, end = _check_range(start, end, self._where(key))
        if end == offset:
            self.head(key)  # the object must exist; the range is empty
            return b""
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": name}
        if offset or end is not None:
            request["Range"] = f"bytes={offset}-{'' if end is None else end - 1}"

        def download() -> bytes:
            try:
                return self._client().get_object(**request)["Body"].read()
            except Exception as exc:
                if _status(exc) == 416:  # start at or past the end: empty, as a slice would be
                    return b""
                raise

        return self._call("get", key, download)

    def get_with_info(self, key: str) -> tuple[bytes, ObjectInfo]:
        """Bytes, ETag and metadata from one GetObject (one version of the object, never a mix)."""
        name = self._name(key)

        def download() -> tuple[bytes, ObjectInfo]:
            answer = self._client().get_object(Bucket=self.bucket, Key=name)
            data = answer["Body"].read()
            return data, _boto_info(key, answer, len(data))

        return self._call("get", key, download)

    def head(self, key: str) -> ObjectInfo:
        """Size, ETag, last-modified and metadata of one object (HeadObject)."""
        name = self._name(key)
        return self._call("head", key, lambda: _boto_info(
            key, self._client().head_object(Bucket=self.bucket, Key=name)))

    def _pages(self, prefix: str) -> Iterator[list[tuple[str, dict]]]:
        """ListObjectsV2 page by page (each page retried alone): ``(key, entry)`` pairs in key order."""
        root = f"{self.prefix}/" if self.prefix else ""
        request: dict[str, Any] = {"Bucket": self.bucket, "Prefix": root + prefix}
        while True:
            # _call runs the lambda (and its retries) before the loop sets the next page's token in request
            answer = self._call("list", prefix or None, lambda: self._client().list_objects_v2(**request))
            yield [(entry["Key"][len(root):], entry) for entry in answer.get("Contents", ())
                   if not entry["Key"].endswith("/")]  # "folder" markers made by other tools are no objects
            token = answer.get("NextContinuationToken")
            if not answer.get("IsTruncated") or not token:
                return
            request["ContinuationToken"] = token

    def list(self, prefix: str = "", *, with_metadata: bool = False) -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix``, in key order; metadata costs one HeadObject per object."""
        _check_prefix(prefix)
        return self._objects(prefix, with_metadata)

    def _objects(self, prefix: str, with_metadata: bool) -> Iterator[ObjectInfo]:
        pool: concurrent.futures.ThreadPoolExecutor | None = None
        try:
            for page in self._pages(prefix):
                if not with_metadata:
                    for key, entry in page:
                        lm = entry.get("LastModified")
                        yield ObjectInfo(key, int(entry.get("Size", 0)), _etag(entry["ETag"]),
                                         lm.timestamp() if lm else None, {})
                    continue
                if pool is None and len(page) > 1:
                    pool = concurrent.futures.ThreadPoolExecutor(HEAD_THREADS, thread_name_prefix="odibi-s3-head")
                heads = pool.map(self._head_if_there, [k for k, _ in page]) if pool else map(
                    self._head_if_there, [k for k, _ in page])
                for info in heads:
                    if info is not None:  # deleted since it was listed
                        yield info
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    def _head_if_there(self, key: str) -> ObjectInfo | None:
        try:
            return self.head(key)
        except NotFoundError:
            return None

    def delete(self, key: str, *, missing_ok: bool = True) -> bool:
        """Delete one object (HeadObject, then DeleteObject); True if it existed."""
        try:
            self.head(key)
        except NotFoundError:
            if not missing_ok:
                raise NotFoundError(f"delete {self._where(key)}: not found", key=key) from None
            return False
        name = self._name(key)
        self._call("delete", key, lambda: self._client().delete_object(Bucket=self.bucket, Key=name))
        return True

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``: DeleteObjects of up to 1000 keys per listed page."""
        _check_prefix(prefix)
        root = f"{self.prefix}/" if self.prefix else ""
        removed = 0
        for page in self._pages(prefix):
            for i in range(0, len(page), DELETE_BATCH):
                names = [root + key for key, _ in page[i:i + DELETE_BATCH]]

                def batch(names: list = names) -> int:
                    answer = self._client().delete_objects(
                        Bucket=self.bucket, Delete={"Objects": [{"Key": n} for n in names], "Quiet": True})
                    errors = [e for e in answer.get("Errors", ()) if e.get("Code") != "NoSuchKey"]
                    if errors:
                        raise _BatchPartFailed(errors[0].get("Code") or "error", len(errors))
                    return len(names) - len(answer.get("Errors", ()))

                removed += self._call("delete_prefix", prefix or None, batch)
        return removed


# --- HDFS ----------------------------------------------------------------------------------------------


def _hdfs_storage(uri: str, authority: str, path: str, options: dict[str, Any]) -> ArrowFSStorage:
    """An ArrowFSStorage over ``pyarrow.fs.HadoopFileSystem`` (built on first use; thin, untested here)."""
    import functools

    import pyarrow.fs as pafs

    host, _, port_text = authority.rpartition(":") if ":" in authority else (authority, "", "")
    if "@" in authority or not host or not re.match(r"^[A-Za-z0-9.\-]+$", host):
        raise InvalidURIError(f"malformed HDFS URI {uri!r}: use hdfs://<namenode>[:<port>]/<path>")
    if port_text and not (port_text.isdigit() and 0 < int(port_text) < 65536):
        raise InvalidURIError(f"invalid port {port_text!r} in HDFS URI {uri!r}")
    port = int(port_text) if port_text else DEFAULT_HDFS_PORT
    root = "/" + _check_root_prefix(path)
    budget = {k: options.pop(k) for k in ("timeout_s", "max_attempts", "backoff") if k in options}
    allowed = {"user", "kerb_ticket", "replication", "extra_conf"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(f"unknown HDFS option(s) {', '.join(unknown)}: use {', '.join(sorted(allowed))}, timeout_s, "
                        "max_attempts")
    factory = functools.partial(pafs.HadoopFileSystem, host, port, **options)
    return ArrowFSStorage(f"hdfs://{host}:{port}{root}".rstrip("/"), root, factory, **budget)


def _no_factory() -> Any:  # S3Storage builds its filesystem in _new_filesystem
    raise AssertionError("unreachable")


# --- helpers ---------------------------------------------------------------------------------------------


def _import_boto3(uri: str) -> Any:
    """boto3, imported on first use: it comes with the ``s3`` extra, not with odibi_ray itself."""
    try:
        import boto3
        import botocore  # noqa: F401
    except ImportError:
        raise StorageError(f"{uri}: the S3 adapter needs boto3, which comes with the s3 extra: "
                           "pip install 'odibi_ray[s3]'") from None
    return boto3


class _BatchPartFailed(Exception):
    """Some keys of a DeleteObjects request failed with another code than NoSuchKey."""

    def __init__(self, code: str, count: int) -> None:
        super().__init__(f"{count} key(s) not deleted: {code}")
        self.code = code


def _split_uri(uri: str) -> tuple[str, str, str]:
    """(scheme, authority, path) of ``scheme://authority/path``; InvalidURIError for a query or fragment."""
    if not isinstance(uri, str):
        raise InvalidURIError(f"storage URI must be a string, got {type(uri).__name__}")
    m = _URI.match(uri)
    if not m:
        raise InvalidURIError(f"malformed storage URI {redact_uri(uri)!r}: use s3://<bucket>/<prefix> or "
                              "hdfs://<namenode>[:<port>]/<path>")
    if m.group(4):
        raise InvalidURIError(f"storage URI {redact_uri(uri)!r} has a query string or fragment: pass options "
                              "(credentials, endpoint) as keyword arguments, never in the URI")
    return m.group(1).lower(), m.group(2), m.group(3) or ""


def _check_root_prefix(prefix: str) -> str:
    """The adapter's root prefix without its outer '/', validated like a key."""
    if not isinstance(prefix, str):
        raise InvalidURIError(f"prefix must be a string, got {type(prefix).__name__}")
    inner = prefix.strip("/")
    if inner:
        try:
            check_key(inner)
        except InvalidURIError:
            raise InvalidURIError(f"invalid prefix {prefix!r}: use 'a/b' segments without '.', '..' or empty "
                                  "ones") from None
    if prefix.startswith("//") or prefix.endswith("//"):
        raise InvalidURIError(f"invalid prefix {prefix!r}: no empty segments")
    return inner


def _check_prefix(prefix: str) -> None:
    """A list/delete prefix: a plain string prefix of valid keys ('' for all)."""
    if not isinstance(prefix, str):
        raise InvalidURIError(f"invalid prefix {prefix!r}: a relative key prefix")
    if prefix:
        try:
            check_key(prefix + "x")  # every key under it must be valid: no '/' start, no '..' or '//' segments
        except InvalidURIError:
            raise InvalidURIError(f"invalid prefix {prefix!r}: a relative key prefix without '.', '..' or empty "
                                  "segments") from None


def _endpoint(endpoint_override: str | None, scheme: str | None) -> tuple[str | None, str]:
    """(endpoint URL or None, scheme) from ``host:port`` or ``http(s)://host:port`` and the scheme option."""
    if scheme is not None and scheme not in ("http", "https"):
        raise InvalidURIError(f"scheme must be 'http' or 'https', got {scheme!r}")
    if endpoint_override is None:
        return None, scheme or "https"
    if not isinstance(endpoint_override, str) or not endpoint_override.strip():
        raise InvalidURIError(f"endpoint_override must be 'host:port' or 'http(s)://host:port', "
                              f"got {endpoint_override!r}")
    text = endpoint_override.strip()
    has_scheme = "://" in text
    parts = urllib.parse.urlsplit(text if has_scheme else f"{scheme or 'https'}://{text}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password
            or parts.path.strip("/") or parts.query or parts.fragment or port == -1):
        raise InvalidURIError(f"invalid endpoint_override {redact_uri(text)!r}: use 'host:port' or "
                              "'http(s)://host:port' without a path, user info or query")
    if has_scheme and scheme is not None and scheme != parts.scheme:
        raise InvalidURIError(f"endpoint_override {text!r} says {parts.scheme} but scheme={scheme!r}")
    return f"{parts.scheme}://{parts.netloc}", parts.scheme


def _pick_timeout(name: str, value: float | None, value_s: float | None, default: float) -> float:
    if value is not None and value_s is not None:
        raise TypeError(f"give {name} or {name}_s, not both")
    chosen = value if value is not None else value_s
    if chosen is None:
        return default
    if isinstance(chosen, bool) or not isinstance(chosen, (int, float)) or not chosen > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {chosen!r}")
    return float(chosen)


def _check_budget(timeout_s: float, max_attempts: int) -> None:
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ValueError(f"max_attempts must be an integer >= 1, got {max_attempts!r}")


def _payload(data: Any, where: str) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"put {where}: data must be bytes, got {type(data).__name__}")
    return data if isinstance(data, bytes) else bytes(data)


def _check_conditions(if_none_match: bool, if_match: str | None) -> None:
    if if_none_match and if_match is not None:
        raise ValueError("put: give if_none_match or if_match, not both")
    if if_match is not None and (not isinstance(if_match, str) or not if_match):
        raise ValueError(f"put: if_match must be an ETag string, got {if_match!r}")


def _check_range(start: int | None, end: int | None, where: str) -> tuple[int, int | None]:
    for label, v in (("start", start), ("end", end)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise ValueError(f"get {where}: {label} must be a non-negative int, got {v!r}")
    offset = start or 0
    if end is not None and end < offset:
        raise ValueError(f"get {where}: end {end} is before start {offset}")
    return offset, end


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - best-effort cleanup of a temp file
        log.debug("cleanup %s%r failed", getattr(fn, "__name__", fn), args, exc_info=True)


def _etag(value: str) -> str:
    """One ETag form everywhere: quoted, as HTTP sends it."""
    return value if value.startswith(('"', 'W/"')) else f'"{value}"'


def _arrow_info(key: str, info: Any) -> ObjectInfo:
    """ObjectInfo of a pyarrow FileInfo; the ETag substitute is size and modification time (ns)."""
    mtime_ns = info.mtime_ns or 0
    return ObjectInfo(key, int(info.size or 0), f'"{int(info.size or 0):x}-{mtime_ns:x}"',
                      mtime_ns / 1e9 if mtime_ns else None, {})


def _boto_info(key: str, answer: Mapping[str, Any], size: int | None = None) -> ObjectInfo:
    lm = answer.get("LastModified")
    return ObjectInfo(key, int(answer.get("ContentLength", 0)) if size is None else size, _etag(answer["ETag"]),
                      lm.timestamp() if lm else None, dict(answer.get("Metadata") or {}))


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status if isinstance(status, int) else None
    return None


def _boto_fault(exc: BaseException) -> _Fault | None:
    """Classify a botocore exception (None if ``exc`` is none)."""
    try:
        from botocore import exceptions as bx
    except ImportError:  # pragma: no cover - the S3 adapter refuses to start without boto3 (the s3 extra)
        return None
    if isinstance(exc, bx.ClientError):
        status, code = _status(exc), str(exc.response.get("Error", {}).get("Code") or "") or None
        reason = f"HTTP {status}" if code is None or code == str(status) else f"{code}, HTTP {status}"
        if status in (401, 403) or code in _AUTH_CODES:
            return _Fault("auth", reason, code)
        if status == 404 or code in ("NoSuchKey", "NoSuchBucket", "NotFound"):
            return _Fault("not_found", reason, code)
        if status == 412 or code == "PreconditionFailed":
            return _Fault("conflict", reason, code)
        if status in _RETRY_STATUS or code in _RETRY_CODES or (status or 0) >= 500:
            return _Fault("transient", reason, code, maybe_applied=True)
        return _Fault("fatal", reason, code)
    if isinstance(exc, _BatchPartFailed):
        kind = "auth" if exc.code in _AUTH_CODES else ("transient" if exc.code in _RETRY_CODES else "fatal")
        return _Fault(kind, str(exc), exc.code, maybe_applied=True)
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError, bx.CredentialRetrievalError)):
        return _Fault("auth", f"{type(exc).__name__}: no usable credentials")
    if isinstance(exc, bx.SSLError):  # a bad certificate does not heal by retrying
        return _Fault("unreachable", "SSLError: TLS handshake failed")
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError)):
        return _Fault("transient", type(exc).__name__)  # nothing was sent
    if isinstance(exc, (bx.HTTPClientError, bx.IncompleteReadError, bx.ResponseStreamingError,
                        bx.ConnectionError)):
        return _Fault("transient", type(exc).__name__, maybe_applied=True)
    return None


def _arrow_fault(exc: BaseException) -> _Fault:
    """Classify a pyarrow.fs (or plain OS) exception by its type and pyarrow's 'AWS Error <CODE>' text."""
    name = type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        return _Fault("not_found", name)
    if isinstance(exc, (IsADirectoryError, NotADirectoryError)):
        return _Fault("not_found", f"{name}: a folder, not an object")
    if isinstance(exc, PermissionError):
        return _Fault("auth", name)
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return _Fault("transient", name, maybe_applied=True)
    text = str(exc)
    m = _ARROW_AWS.search(text)
    if m:
        code = m.group(1)
        if code in _ARROW_AUTH:
            return _Fault("auth", f"AWS Error {code}", code)
        if code in ("NO_SUCH_KEY", "NO_SUCH_BUCKET", "RESOURCE_NOT_FOUND"):
            return _Fault("not_found", f"AWS Error {code}", code)
        if code in _ARROW_TRANSIENT or _ARROW_HTTP_5XX.search(text):
            return _Fault("transient", f"AWS Error {code}", code, maybe_applied=True)
        return _Fault("fatal", f"AWS Error {code}", code)
    if isinstance(exc, OSError) and any(marker in text for marker in _HDFS_LIB):
        return _Fault("fatal", "HDFS client library not available: pyarrow needs libjvm (JAVA_HOME), libhdfs "
                               "(ARROW_LIBHDFS_DIR) and the Hadoop jars (CLASSPATH); "
                               + text.splitlines()[0][:120])
    return _Fault("fatal", name)

