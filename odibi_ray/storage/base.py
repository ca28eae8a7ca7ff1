"""The one storage interface every adapter implements (local folder, ADLS Gen2, S3, HDFS).

Keys are relative, '/'-separated paths below the adapter's root (``runs/etl/r1/run.json``); they never
start with '/', never contain empty, '.' or '..' segments. Metadata is a flat ``str -> str`` mapping
(lower-case ASCII names; values ASCII) stored with the object.

Adapters are picklable *configuration*: pickling keeps the URI and options, never an open client or a
credential object; each process opens its own client lazily on first use and reuses it.
"""

from __future__ import annotations

import abc
import pickle
import re
import threading
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any
from collections.abc import Callable, Iterator, Mapping

from ..errors import InvalidURIError, NotFoundError, StorageAuthError, StorageUnavailableError

_BAD_SEGMENT = re.compile(r"(^|/)(\.{1,2})?(/|$)")
_META_NAME = re.compile(r"^[a-z_][a-z0-9_]*\Z")  # \Z: no trailing newline


@dataclass(frozen=True)
class ObjectInfo:
    """What ``head`` and ``list`` tell about an object."""

    key: str
    size: int
    etag: str
    last_modified: float | None = None  # seconds since the epoch
    metadata: Mapping[str, str] = field(default_factory=dict)


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid object key, else raise :class:`InvalidURIError`."""
    if not isinstance(key, str) or not key or key.startswith("/") or _BAD_SEGMENT.search(key) or "\\" in key:
        raise InvalidURIError(f"invalid object key {key!r}: use a relative 'a/b/c' path without '.', '..' or "
                              "empty segments", key=key if isinstance(key, str) else None)
    return key


def check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Validate metadata (names: lower-case identifiers; values: ASCII strings) and return a copy."""
    out: dict[str, str] = {}
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not _META_NAME.match(k):
            raise ValueError(f"metadata name {k!r} must be a lower-case identifier ([a-z_][a-z0-9_]*)")
        if not isinstance(v, str) or not v.isascii():
            raise ValueError(f"metadata value of {k!r} must be an ASCII string")
        out[k] = v
    return out


def resolve_secret_option(uri: str, name: str, value: object) -> str | None:
    """The value of an adapter's secret option (``env://``, ``kv://``, SecretValue or literal), resolved in
    this process; resolution failures become storage errors naming the option, never its value."""
    if value is None:
        return None
    from .secrets import SecretError, SecretUnavailableError, resolve_secret

    try:
        # any object goes in: resolve_secret raises TypeError for a wrong type, mapped just below
        return resolve_secret(value).get_secret_value()  # type: ignore[arg-type]
    except SecretUnavailableError as exc:
        raise StorageUnavailableError(f"{uri}: could not resolve option {name}: {exc}") from None
    except (SecretError, TypeError) as exc:
        raise StorageAuthError(f"{uri}: could not resolve option {name}: {exc}") from None


#: What :meth:`Storage.put` takes: any bytes-like object (a ``bytearray`` or ``memoryview`` is written without
#: a copy where the adapter can).
BytesLike = bytes | bytearray | memoryview


class Storage(abc.ABC):
    """Bytes under keys, with metadata, create-only and compare-and-swap writes.

    All methods raise subclasses of :class:`~odibi_ray.errors.StorageError` only:
    ``NotFoundError``, ``AlreadyExistsError``, ``PreconditionFailedError``, ``StorageUnavailableError``,
    ``StorageAuthError``, ``InvalidURIError``.
    """

    #: The URI this adapter was opened from, without any secret (no query string).
    uri: str
    #: True where ``head`` costs microseconds (a local folder), so callers look keys up one by one rather
    #: than list a prefix; remote adapters (a request per call) leave it False.
    local_lookups: bool = False

    if TYPE_CHECKING:
        # Every adapter defines these (its configuration, without an open client): __reduce__ and _restore use
        # them. Declared for the type checker only, so a subclass keeps whatever Python's object provides.
        def __getstate__(self) -> dict[str, Any]: ...

        def __setstate__(self, state: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def put(self, key: str, data: BytesLike, metadata: Mapping[str, str] | None = None, *,
            if_none_match: bool = False, if_match: str | None = None) -> ObjectInfo:
        """Write ``data`` under ``key`` atomically (a reader sees the old object or the whole new one).

        ``if_none_match=True``: create-only, ``AlreadyExistsError`` if the key exists (exactly one of
        several racing writers wins). ``if_match=etag``: replace only if the current ETag is ``etag``,
        else ``PreconditionFailedError`` (also when the key does not exist).
        Returns the new object's info (its ETag included).
        """

    @abc.abstractmethod
    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """The object's bytes, or the range ``[start, end)`` of them (``end`` None: to the end)."""

    @abc.abstractmethod
    def get_with_info(self, key: str) -> tuple[bytes, ObjectInfo]:
        """The object's bytes and its info (ETag, metadata) read together, for compare-and-swap."""

    @abc.abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """The object's info (size, ETag, metadata); ``NotFoundError`` if absent."""

    @abc.abstractmethod
    def list(self, prefix: str = "", *, with_metadata: bool = False) -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix`` (a plain string prefix), in key order."""

    @abc.abstractmethod
    def delete(self, key: str, *, missing_ok: bool = True) -> bool:
        """Remove one object; True if it existed. ``missing_ok=False``: ``NotFoundError`` if absent."""

    @abc.abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Remove every object whose key starts with ``prefix``; the number removed."""

    # --- streaming (optional: an adapter that can stream overrides these) -------------------------------

    def put_stream(self, key: str, source: BytesLike | IO[bytes], metadata: Mapping[str, str] | None = None, *,
                   if_none_match: bool = False, if_match: str | None = None) -> ObjectInfo:
        """:meth:`put` of ``source`` without copying it whole where the adapter can: a bytes-like object
        (``bytearray``, ``memoryview``) or a readable binary file (from its position to its end). This default
        passes a bytes-like object to :meth:`put` as it is, and reads a file into memory first."""
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = source
        else:
            data = source.read()
        return self.put(key, data, metadata, if_none_match=if_none_match, if_match=if_match)

    def get_into(self, key: str, open_sink: Callable[[ObjectInfo], Any]) -> ObjectInfo:
        """Stream the object into the sink ``open_sink(info)`` returns (called once the info is known, before
        the bytes are read where the adapter can; it may raise to stop there) and return its info. This default
        reads the whole object with :meth:`get_with_info`, then writes it to the sink."""
        data, info = self.get_with_info(key)
        open_sink(info).write(data)
        return info

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        try:
            self.head(key)
            return True
        except NotFoundError:
            return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    def __reduce__(self) -> tuple:
        """Pickle as configuration; unpickling in a process that already has an equal adapter returns that
        one, so its open client is reused (a task's inputs and spec each carry an adapter)."""
        return (_restore, (type(self), pickle.dumps(self.__getstate__(), protocol=5)))


_INSTANCES: dict[tuple[type, bytes], Storage] = {}
_INSTANCES_LOCK = threading.Lock()


def _restore(cls: type[Storage], state: bytes) -> Storage:
    """This process's adapter for a pickled configuration (one per configuration, created on first use).

    Built outside the lock: an adapter that wraps another (a test or benchmark wrapper) unpickles its inner
    adapter from its ``__setstate__``, which comes back here."""
    key = (cls, state)
    inst = _INSTANCES.get(key)
    if inst is None:
        made = cls.__new__(cls)
        made.__setstate__(pickle.loads(state))
        with _INSTANCES_LOCK:
            if len(_INSTANCES) >= 256:
                _INSTANCES.clear()
            inst = _INSTANCES.setdefault(key, made)
    return inst
