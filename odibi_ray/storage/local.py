"""``LocalStorage``: the :class:`~odibi_ray.storage.base.Storage` interface over a local (or mounted) folder.

Layout: the object ``a/b/c`` is the plain file ``<root>/a/b/c`` holding exactly the bytes put, so other tools
(pyarrow, pandas, ``cat``) read it directly. Its metadata (ETag, metadata, and the size and ``mtime_ns`` the data
file was written with) lives in the file's own extended attribute ``user.odibi.meta``: data and metadata are one
inode, so they appear together atomically and a put is one file. Where the filesystem has no user extended
attributes (or an object's metadata is too large for one), the metadata lives beside the file in a sidecar,
``<root>/a/b/.odibi-meta.c.json``, which also records the data file's inode; a sidecar that does not match its
data file is stale (a crash between the two renames of a put, or the file rewritten by another tool) and is
ignored. Stores written with sidecars only (before extended attributes were used) read as before. A data file
without valid metadata (e.g. dropped into the folder by another tool) reads as an object with no metadata and an
ETag made from its inode, size and mtime. A file rewritten in place by another tool keeps its attribute but not its
recorded size/mtime, so its metadata is dropped. Copies that keep extended attributes and mtimes (``cp -a``,
``rsync -aX``) keep the metadata; others keep the data only.

Writes: the bytes go to a temp file in the target folder (``.odibi-tmp-*``), its metadata is set on it (fsync'ed
when ``fsync``), then it is moved in place: create-only with ``os.link`` (fails if the name exists, so exactly
one racing writer wins, across processes; no lock taken), overwrite and compare-and-swap with ``os.replace``
holding the key's exclusive ``fcntl.flock`` (one of 256 lock stripes under ``<root>/.odibi-locks/``, chosen by a
hash of the key), so an ETag check and the replace are one step across processes. With sidecars, the sidecar is
moved in first, then the data, under the same lock. Delete removes data then sidecar under the exclusive lock,
walking the folders from the root without following symlinks (never outside the root).

Reads: an object with its metadata in its attribute is read lock-free from one open file (the inode is never
changed in place, only replaced). Sidecar objects are paired under the key's lock *shared*, so a reader never
pairs the data of one write with the sidecar of another. Where a reader cannot open a lock file (read-only
mount, no permission to create it) it reads without one, still pairing by inode. Names starting with
``.odibi-`` are reserved: they are never listed and are refused as key segments. POSIX only (``fcntl``, hard
links; the link falls back to a locked check where a filesystem has no hard links).

Limits: a key cannot be both an object and a "folder" of other keys (``a/b`` and ``a/b/c``); writing the
second raises :class:`~odibi_ray.errors.InvalidURIError`. A key's last segment must leave room for the
sidecar name (at most 238 bytes on a filesystem with 255-byte names).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import stat
import urllib.parse
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from ..errors import (AlreadyExistsError, InvalidURIError, NotFoundError, PreconditionFailedError, StorageAuthError,
                      StorageError, StorageUnavailableError)
from .base import ObjectInfo, Storage, check_key, check_metadata
from .uri import redact_uri

logger = logging.getLogger(__name__)

RESERVED = ".odibi-"
_TMP = RESERVED + "tmp-"
_META, _META_END = RESERVED + "meta.", ".json"  # the sidecar of "c" is ".odibi-meta.c.json"
_LOCKS = RESERVED + "locks"
_LOCK_STRIPES = 256
_NAME_MAX = 255
_URI_LIKE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*:")
_NO_HARDLINK = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}
_UNAVAILABLE = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ENODEV, errno.ENXIO, errno.ESTALE,
                errno.ENOTCONN, errno.EHOSTDOWN, errno.ETIMEDOUT}
_READ_UNLOCKED = {errno.ENOENT, errno.EROFS, errno.EACCES, errno.EPERM}  # a reader that cannot make a lock file
_XATTR = "user.odibi.meta"
#: setxattr errors that mean "no user attributes on this filesystem" (fall back to sidecars for good)
_NO_XATTR = {errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.ENOSYS}
#: getxattr errors that mean "this file has no (readable) attribute": read its sidecar instead
_NO_ATTR = _NO_XATTR | {errno.ENODATA, errno.ERANGE, errno.EACCES}
_DIR_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class LocalStorage(Storage):
    """Objects as plain files below a root folder, metadata in each file's extended attribute (or a sidecar):
    atomic, safe for many processes."""

    #: A look-up is a stat and an attribute read: the checkpoint plan asks per key instead of listing.
    local_lookups = True

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True, create_root: bool = True,
                 xattrs: bool = True) -> None:
        """``root``: the folder (made absolute against the cwd now, so a pickled copy names the same folder).

        ``fsync``: flush data, sidecar and the folder entry to disk before a put returns; turn off only for
        scratch data. ``create_root``: make a missing root on the first write; False treats a missing root as an
        unavailable mount (``StorageUnavailableError``) instead of silently starting an empty folder.
        ``xattrs``: keep metadata in the file's extended attribute (one file per object) where the filesystem
        has them; False always writes sidecars (the format every reader understands).
        """
        if not isinstance(root, (str, os.PathLike)) or not os.fspath(root):
            raise InvalidURIError(f"LocalStorage root must be a non-empty path, got {root!r}")
        root_s = os.fspath(root)
        if "\x00" in root_s:
            raise InvalidURIError("LocalStorage root must not contain a NUL character")
        self.root: str = os.path.abspath(os.path.expanduser(root_s))
        self.fsync = bool(fsync)
        self.create_root = bool(create_root)
        self.xattrs = bool(xattrs)
        self._xattrs_work = self.xattrs  # turned off in this process at the first filesystem that refuses them
        self.uri = Path(self.root).as_uri()

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> "LocalStorage":
        """A LocalStorage from a plain path (relative ones against the cwd) or a ``file:///abs/path`` URI."""
        if not isinstance(uri, str) or not uri.strip():
            raise InvalidURIError(f"local storage URI must be a non-empty string, got {uri!r}")
        if uri.lower().startswith("file://"):
            parts = urllib.parse.urlsplit(uri)
            if parts.query or parts.fragment:
                raise InvalidURIError(f"file URI {redact_uri(uri)!r} must not have a query string or fragment")
            if parts.netloc not in ("", "localhost"):
                raise InvalidURIError(f"file URI {redact_uri(uri)!r} names a host: only local paths are "
                                      "supported (file:///abs/path)")
            path = urllib.parse.unquote(parts.path)
            if not path.startswith("/"):
                raise InvalidURIError(f"file URI {redact_uri(uri)!r} has no absolute path: use file:///abs/path")
            return cls(path, **options)
        if _URI_LIKE.match(uri):
            raise InvalidURIError(f"{redact_uri(uri)!r} looks like a URI but is not one this adapter reads: use a "
                                  "plain path or file:///abs/path")
        return cls(uri, **options)

    # --- pickling: configuration only ---------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "fsync": self.fsync, "create_root": self.create_root, "xattrs": self.xattrs}

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        self.__init__(state["root"], fsync=state["fsync"], create_root=state["create_root"],  # type: ignore[misc]
                      xattrs=state.get("xattrs", True))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LocalStorage) and self.__getstate__() == other.__getstate__()

    def __hash__(self) -> int:
        return hash((type(self), self.root))

    # --- interface ----------------------------------------------------------------------------------

    def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None, *,
            if_none_match: bool = False, if_match: str | None = None) -> ObjectInfo:
        """Write ``data`` under ``key`` atomically; create-only or compare-and-swap on request."""
        path = self._path(key)
        meta = check_metadata(metadata)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"put({key!r}): data must be bytes-like, got {type(data).__name__}")
        if if_none_match and if_match is not None:
            raise ValueError(f"put({key!r}): if_none_match and if_match cannot be combined")
        if if_match is not None and (not isinstance(if_match, str) or not if_match):
            raise ValueError(f"put({key!r}): if_match must be a non-empty ETag string")
        folder, name = os.path.split(path)
        if len(os.fsencode(_META + name + _META_END)) > _NAME_MAX:
            raise InvalidURIError(f"cannot put {key!r} in {self.uri}: its last segment is too long to leave room "
                                  f"for the metadata sidecar (at most {_NAME_MAX - len(_META + _META_END)} bytes)",
                                  key=key)
        side = os.path.join(folder, _META + name + _META_END)
        view = memoryview(data).cast("B")
        etag = secrets.token_hex(16)
        tmp, st, in_attr = self._write_temp(key, folder, view, (etag, meta))
        side_tmp = None
        try:
            if in_attr:  # one file: data and metadata share the inode
                self._move_in(key, tmp, path, side, if_none_match, if_match)
            else:
                record = {"etag": etag, "size": st.st_size, "ino": st.st_ino, "mtime_ns": st.st_mtime_ns,
                          "metadata": meta}
                side_tmp = self._write_temp(key, folder, json.dumps(record, separators=(",", ":")).encode())[0]
                with self._locked(key):
                    self._refuse_folder(key, path)
                    if if_none_match:
                        self._link_new(key, tmp, path, side_tmp, side)
                    else:
                        self._check_etag(key, path, if_match)
                        self._os(key, "put", os.replace, side_tmp, side)  # sidecar first: a crash leaves it stale
                        self._place(key, os.replace, tmp, path, side)
        finally:
            _unlink_quietly(tmp)
            if side_tmp is not None:
                _unlink_quietly(side_tmp)
        if self.fsync:
            _fsync_dir(folder)
        return ObjectInfo(key=key, size=view.nbytes, etag=etag, last_modified=st.st_mtime, metadata=meta)

    def _move_in(self, key: str, tmp: str, path: str, side: str, if_none_match: bool, if_match: str | None) -> None:
        """Move a temp file that carries its metadata in place: create-only by ``os.link`` (atomic, no lock),
        else by ``os.replace`` under the key's exclusive lock (so a compare-and-swap is one step)."""
        if if_none_match:
            self._refuse_folder(key, path)
            try:
                os.link(tmp, path)  # fails if the name exists: exactly one of many racing writers wins
                return
            except FileExistsError:
                self._refuse_folder(key, path)
                raise AlreadyExistsError(f"put({key!r}) in {self.uri}: the object already exists", key=key) from None
            except OSError as exc:
                if exc.errno not in _NO_HARDLINK or os.path.lexists(path):
                    raise self._map(exc, key, "put") from None
            with self._locked(key):  # no hard links here: a locked check, then the rename
                if os.path.lexists(path):
                    raise AlreadyExistsError(f"put({key!r}) in {self.uri}: the object already exists", key=key)
                self._os(key, "put", os.replace, tmp, path)
            return
        with self._locked(key):
            self._refuse_folder(key, path)
            self._check_etag(key, path, if_match)
            self._os(key, "put", os.replace, tmp, path)
            _unlink_quietly(side)  # an earlier write's sidecar, stale now (under the lock: never a newer one's)

    def _check_etag(self, key: str, path: str, if_match: str | None) -> None:
        """``PreconditionFailedError`` unless ``if_match`` is None or the current ETag (the lock is held)."""
        if if_match is None:
            return
        current = self._current_etag(key, path)
        if current != if_match:
            what = "does not exist" if current is None else "has another ETag"
            raise PreconditionFailedError(f"put({key!r}) in {self.uri}: if_match failed, the object {what}", key=key)

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """The object's bytes, or ``[start, end)`` of them (clamped to the object; ``end`` None: to the end)."""
        path = self._path(key)
        _check_range(key, start, end)
        self._require_root()
        fd, st = self._open_data(key, path)  # no lock: the file is only ever replaced whole
        try:
            lo = min(start or 0, st.st_size)
            hi = st.st_size if end is None else min(end, st.st_size)
            return self._read(key, fd, lo, max(0, hi - lo))
        finally:
            os.close(fd)

    def get_with_info(self, key: str) -> tuple[bytes, ObjectInfo]:
        """The whole object and its info, read from one open file (its attribute), or paired with its sidecar
        under the key's shared lock (so they belong together)."""
        path = self._path(key)
        self._require_root()
        fd, st = self._open_data(key, path)
        try:
            info = self._attr_info(key, fd, st)
        except BaseException:
            os.close(fd)
            raise
        if info is None:
            os.close(fd)
            with self._locked(key, shared=True):
                fd, st = self._open_data(key, path)
                try:
                    info = self._pair(key, fd, st)
                except BaseException:
                    os.close(fd)
                    raise
        try:  # the open file is that write's data even if another put replaces the name now
            return self._read(key, fd, 0, st.st_size), info
        finally:
            os.close(fd)

    def head(self, key: str) -> ObjectInfo:
        """Size, ETag, mtime and metadata of ``key``; ``NotFoundError`` if absent."""
        path = self._path(key)
        self._require_root()
        return self._info(key, path)

    def _info(self, key: str, path: str) -> ObjectInfo:
        fd, st = self._open_data(key, path)
        try:
            info = self._attr_info(key, fd, st)
        finally:
            os.close(fd)
        if info is not None:
            return info
        with self._locked(key, shared=True):  # a sidecar object (or a plain file): pair it under the lock
            return self._pair(key, path, self._stat_data(key, path))

    def list(self, prefix: str = "", *, with_metadata: bool = False) -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix`` (a plain string prefix), in key order."""
        self._check_prefix(prefix)
        self._require_root()
        return self._list(prefix, with_metadata)

    def _list(self, prefix: str, with_metadata: bool) -> Iterator[ObjectInfo]:
        for key, path, _ in self._walk(prefix, orphans=False):
            try:
                info = self._info(key, path)  # the ETag is always returned: read it like head
            except NotFoundError:  # deleted (or replaced by a folder) since the folder was read
                continue
            yield info if with_metadata else ObjectInfo(info.key, info.size, info.etag, info.last_modified, {})

    def delete(self, key: str, *, missing_ok: bool = True) -> bool:
        """Remove one object and its sidecar (and the folders it leaves empty); True if it existed."""
        path = self._path(key)
        self._require_root()
        existed = False
        if os.path.isdir(self.root):
            with self._locked(key):
                existed = self._unlink_pair(key, orphan=False)
        if not existed and not missing_ok:
            raise NotFoundError(f"cannot delete {key!r}: not found in {self.uri}", key=key)
        if existed:
            self._prune(os.path.dirname(path))
        return existed

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object whose key starts with ``prefix`` (and stray sidecars), then the folders left
        empty; the number of objects removed."""
        self._check_prefix(prefix)
        self._require_root()
        removed, folders = 0, set()
        for key, path, orphan in list(self._walk(prefix, orphans=True)):
            with self._locked(key):
                if self._unlink_pair(key, orphan=orphan):
                    removed += 1
            folders.add(os.path.dirname(path))
        for folder in sorted(folders, key=len, reverse=True):
            self._prune(folder)
        logger.debug("deleted %d object(s) under %r in %s", removed, prefix, self.uri)
        return removed

    # --- paths and checks ---------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        check_key(key)
        segments = key.split("/")
        if "\x00" in key or any(s.startswith(RESERVED) for s in segments):
            raise InvalidURIError(f"invalid object key {key!r} for {self.uri}: NUL characters and segments "
                                  f"starting with {RESERVED!r} (reserved for temp, metadata and lock files) are "
                                  "not allowed", key=key)
        return os.path.join(self.root, *segments)

    def _check_prefix(self, prefix: str) -> None:
        if not isinstance(prefix, str):
            raise InvalidURIError(f"prefix must be a string, got {type(prefix).__name__}")
        if "/" in prefix:
            folder = prefix.rsplit("/", 1)[0]
            try:
                self._path(folder)
            except InvalidURIError:
                raise InvalidURIError(f"invalid prefix {prefix!r} for {self.uri}: its folders must be a valid "
                                      "key ('a/b/' or 'a/b/c'; no leading '/', '.', '..' or empty segments)",
                                      key=prefix) from None
        elif "\\" in prefix or "\x00" in prefix:
            raise InvalidURIError(f"invalid prefix {prefix!r} for {self.uri}", key=prefix)

    def _missing(self, key: str) -> StorageError:
        """``NotFoundError`` for ``key``, unless the root itself is gone and must not be recreated (an outage)."""
        self._require_root()
        return NotFoundError(f"{key!r} not found in {self.uri}", key=key)

    def _require_root(self) -> None:
        if not self.create_root and not os.path.isdir(self.root):
            raise StorageUnavailableError(f"root folder of {self.uri} does not exist (missing mount?); "
                                          "create it or open with create_root=True")

    # --- reading ------------------------------------------------------------------------------------

    def _open_data(self, key: str, path: str) -> tuple[int, os.stat_result]:
        """An open fd of the data file and its stat; ``NotFoundError`` if there is no regular file."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # NONBLOCK: a FIFO must not hang us
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise self._missing(key) from None
        except OSError as exc:
            raise self._map(exc, key, "read") from None
        try:
            st = os.fstat(fd)
        except OSError as exc:
            os.close(fd)
            raise self._map(exc, key, "read") from None
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise NotFoundError(f"{key!r} not found in {self.uri}", key=key)
        return fd, st

    def _stat_data(self, key: str, path: str) -> os.stat_result:
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise self._missing(key) from None
        except OSError as exc:
            raise self._map(exc, key, "read") from None
        if not stat.S_ISREG(st.st_mode):  # a folder of other keys is not an object
            raise NotFoundError(f"{key!r} not found in {self.uri}", key=key)
        return st

    def _pair(self, key: str, data: int | str, st: os.stat_result) -> ObjectInfo:
        """The info of the data file ``st`` (``data``: its open fd, or its path while the key's lock is held): from
        its attribute, else from its sidecar if that was written with this very file."""
        info = self._attr_info(key, data, st)
        if info is not None:
            return info
        side = _sidecar(self._path(key))
        record = self._read_sidecar(key, side)
        if (record is not None and record["ino"] == st.st_ino and record["size"] == st.st_size
                and record["mtime_ns"] == st.st_mtime_ns):
            return ObjectInfo(key, st.st_size, record["etag"], st.st_mtime, record["metadata"])
        # No sidecar, or a stale one (a crash between a put's two renames, or the file rewritten by another tool).
        return ObjectInfo(key, st.st_size, f"w-{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}", st.st_mtime, {})

    def _attr_info(self, key: str, target: int | str, st: os.stat_result) -> ObjectInfo | None:
        """The info kept in the file's attribute (``target``: an open fd of it, or its path while the key's lock
        is held), if it has one written with exactly this content (size and mtime); else None."""
        try:
            raw = os.getxattr(target, _XATTR)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in _NO_ATTR:
                return None
            raise self._map(exc, key, "read") from None
        record = _parse_record(raw, with_ino=False)
        if record is None:
            logger.warning("ignoring the unreadable metadata attribute of %r in %s", key, self.uri)
            return None
        if record["size"] != st.st_size or record["mtime_ns"] != st.st_mtime_ns:
            return None  # rewritten in place by another tool: the attribute describes other bytes
        return ObjectInfo(key, st.st_size, record["etag"], st.st_mtime, record["metadata"])

    def _read_sidecar(self, key: str, side: str) -> dict[str, Any] | None:
        """The parsed sidecar, or None when there is none or it cannot be trusted."""
        try:
            fd = os.open(side, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENAMETOOLONG):
                return None
            raise self._map(exc, key, "read") from None
        try:
            chunks = []
            while True:  # a regular file gives a short read only at its end
                chunks.append(os.read(fd, 65536))
                if len(chunks[-1]) < 65536:
                    break
        except OSError as exc:
            raise self._map(exc, key, "read") from None
        finally:
            os.close(fd)
        record = _parse_record(b"".join(chunks), with_ino=True)
        if record is None:
            logger.warning("ignoring the unreadable metadata sidecar of %r in %s", key, self.uri)
        return record

    def _read(self, key: str, fd: int, offset: int, size: int) -> bytes:
        try:
            return _read_upto(fd, offset, size)
        except OSError as exc:
            raise self._map(exc, key, "read") from None

    def _current_etag(self, key: str, path: str) -> str | None:
        """The ETag of ``key`` (the caller holds its lock), None if absent."""
        try:
            return self._pair(key, path, self._stat_data(key, path)).etag
        except NotFoundError:
            return None

    def _walk(self, prefix: str, orphans: bool) -> Iterator[tuple[str, str, bool]]:
        """(key, data path, orphan) of every file whose key starts with ``prefix``, in key order, skipping
        reserved names; ``orphans``: also sidecars without a data file (orphan True)."""
        base = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
        yield from self._walk_folder(os.path.join(self.root, *base.split("/")), base, prefix, orphans)

    def _walk_folder(self, folder: str, key_prefix: str, prefix: str,
                     orphans: bool) -> Iterator[tuple[str, str, bool]]:
        items: list[tuple[str, str, str]] = []  # (name, "dir" | "file" | "orphan", path)
        files: set[str] = set()
        sidecars: list[str] = []
        try:
            with os.scandir(folder) as it:
                for e in it:
                    if e.name.startswith(RESERVED):
                        if orphans and e.name.startswith(_META) and e.name.endswith(_META_END):
                            sidecars.append(e.name[len(_META):-len(_META_END)])
                    elif e.is_dir(follow_symlinks=False):  # a linked folder is not followed
                        items.append((e.name + "/", "dir", e.path))
                    elif (key_prefix + e.name).startswith(prefix) and e.is_file():
                        items.append((e.name, "file", e.path))
                        files.add(e.name)
        except (FileNotFoundError, NotADirectoryError):
            self._require_root()  # a gone mount is an outage, not an empty folder
            return
        except OSError as exc:
            raise self._map(exc, key_prefix or None, "list") from None
        for name in sidecars:
            if name and not name.startswith(RESERVED) and name not in files and (key_prefix + name).startswith(prefix):
                items.append((name, "orphan", os.path.join(folder, name)))
        for sort_name, kind, path in sorted(items):
            key = key_prefix + sort_name
            if kind == "dir":
                if key.startswith(prefix) or prefix.startswith(key):
                    yield from self._walk_folder(path, key, prefix, orphans)
            else:
                yield key, path, kind == "orphan"

    # --- writing ------------------------------------------------------------------------------------

    def _write_temp(self, key: str, folder: str, data: bytes | memoryview,
                    attr: tuple[str, dict[str, str]] | None = None) -> tuple[str, os.stat_result, bool]:
        """Write ``data`` to a fresh temp file in ``folder`` (made if missing); its name, its stat, and whether
        ``attr`` (ETag, metadata) was set as its metadata attribute (else the caller writes a sidecar)."""
        self._require_root()
        tmp = os.path.join(folder, _TMP + secrets.token_hex(8))
        for attempt in range(5):
            try:
                if attempt:  # the folder is missing (new, or removed by a concurrent delete): make it
                    os.makedirs(folder, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
                break
            except FileNotFoundError:
                if attempt == 4:
                    raise self._map(OSError(errno.ENOENT, "folder keeps disappearing"), key, "put") from None
            except (FileExistsError, NotADirectoryError):
                raise InvalidURIError(f"cannot put {key!r} in {self.uri}: a parent of it is an object (a key "
                                      "cannot also be a folder in LocalStorage)", key=key) from None
            except OSError as exc:
                raise self._map(exc, key, "put") from None
        try:
            try:
                _write_all(fd, data)
                st = os.fstat(fd)
                in_attr = attr is not None and self._set_attr(fd, st, *attr)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            _unlink_quietly(tmp)
            raise self._map(exc, key, "put") from None
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return tmp, st, in_attr

    def _set_attr(self, fd: int, st: os.stat_result, etag: str, meta: dict[str, str]) -> bool:
        """Set the metadata attribute on the open temp file; False where it cannot hold it (the filesystem has no
        user attributes: sidecars from now on in this process; or this metadata is too large for one)."""
        if not self._xattrs_work:
            return False
        record = {"etag": etag, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "metadata": meta}
        try:
            os.setxattr(fd, _XATTR, json.dumps(record, separators=(",", ":")).encode())
            return True
        except OSError as exc:
            if exc.errno in _NO_XATTR:
                self._xattrs_work = False
                logger.info("%s has no user extended attributes: metadata goes to sidecar files", self.uri)
                return False
            if exc.errno in (errno.E2BIG, errno.ENOSPC, errno.ERANGE):
                return False  # too large for an attribute here: this object gets a sidecar
            raise

    def _refuse_folder(self, key: str, path: str) -> None:
        """``InvalidURIError`` if ``key`` names a folder of other keys (checked before any rename)."""
        try:
            is_dir = stat.S_ISDIR(os.lstat(path).st_mode)
        except OSError:
            return
        if is_dir:
            raise InvalidURIError(f"cannot put {key!r} in {self.uri}: it is a folder of other keys (a key cannot "
                                  "also be a folder in LocalStorage)", key=key)

    def _link_new(self, key: str, tmp: str, path: str, side_tmp: str, side: str) -> None:
        """Move sidecar then data in place only if no object has the name (the lock is held)."""
        exists = AlreadyExistsError(f"put({key!r}) in {self.uri}: the object already exists", key=key)
        if os.path.lexists(path):
            raise exists
        self._os(key, "put", os.replace, side_tmp, side)
        try:
            os.link(tmp, path)  # fails if the name exists, even if another tool made it without our lock
            return
        except FileExistsError:
            _unlink_quietly(side)  # ours, and stale for whatever file took the name
            raise exists from None
        except OSError as exc:
            if exc.errno not in _NO_HARDLINK or os.path.lexists(path):
                _unlink_quietly(side)
                raise self._map(exc, key, "put") from None
        # No hard links on this filesystem: the per-key lock makes check-then-replace safe among LocalStorages.
        self._place(key, os.replace, tmp, path, side)

    def _place(self, key: str, move: Any, tmp: str, path: str, side: str) -> None:
        """Move the data in place after its sidecar; on failure remove that sidecar (stale without it)."""
        try:
            self._os(key, "put", move, tmp, path)
        except BaseException:
            _unlink_quietly(side)
            raise

    def _unlink_pair(self, key: str, orphan: bool) -> bool:
        """Remove the data file and sidecar of ``key`` (the lock is held); True if the data file existed.

        The folders are opened one by one from the root without following symlinks, so nothing outside the
        root is ever removed. ``orphan``: remove the sidecar only, and only if there is no data file.
        """
        segments = key.split("/")
        dfd = self._open_folder(key, segments[:-1])
        if dfd is None:
            return False
        try:
            name = segments[-1]
            if orphan:
                try:
                    os.lstat(name, dir_fd=dfd)
                    return False  # a data file appeared since the listing: the sidecar is (maybe) its own
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise self._map(exc, key, "delete") from None
                existed = False
            else:
                existed = self._unlink_at(key, name, dfd)  # data first: a crash leaves a stray sidecar, no object
            self._unlink_at(key, _META + name + _META_END, dfd)
            return existed
        finally:
            os.close(dfd)

    def _open_folder(self, key: str, segments: list[str]) -> int | None:
        """An fd of the folder ``segments`` below the root, never through a symlink; None if there is none."""
        try:
            fd = os.open(self.root, _DIR_FLAGS & ~os.O_NOFOLLOW)  # the root itself may be a link
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise self._map(exc, key, "delete") from None
        for segment in segments:
            try:
                child = os.open(segment, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    return None
                raise self._map(exc, key, "delete") from None
            os.close(fd)
            fd = child
        return fd

    def _unlink_at(self, key: str, name: str, dfd: int) -> bool:
        try:
            os.unlink(name, dir_fd=dfd)
            return True
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):  # a folder of other keys: no object
            return False
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                return False
            if exc.errno == errno.EPERM:  # unlink() of a folder on some systems
                try:
                    if stat.S_ISDIR(os.lstat(name, dir_fd=dfd).st_mode):
                        return False
                except OSError:
                    pass
            raise self._map(exc, key, "delete") from None

    def _prune(self, folder: str) -> None:
        """Remove ``folder`` and its parents while they are empty, never the root or anything above it."""
        while folder != self.root and folder.startswith(self.root + os.sep):
            try:
                os.rmdir(folder)
            except OSError:  # not empty (or gone, or not ours to remove): stop
                return
            folder = os.path.dirname(folder)

    @contextmanager
    def _locked(self, key: str, shared: bool = False) -> Iterator[None]:
        """Hold the flock of ``key``'s lock stripe (one of 256 files under the root): exclusive for writers,
        shared for readers. A reader that cannot open or make the lock file (read-only mount, no lock folder
        yet, no permission) goes on without it."""
        fd = self._lock_fd(key, shared)
        if fd is None:
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _lock_fd(self, key: str, shared: bool) -> int | None:
        stripe = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=2).digest()
        folder = os.path.join(self.root, _LOCKS)
        lock = os.path.join(folder, f"{int.from_bytes(stripe, 'big') % _LOCK_STRIPES:03d}")
        flags = os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC
        try:
            try:
                return os.open(lock, flags, 0o666)
            except FileNotFoundError:
                if shared:  # no lock folder: nothing was ever written here by a LocalStorage; do not make it
                    return None
                self._require_root()
                os.makedirs(folder, exist_ok=True)
                return os.open(lock, flags, 0o666)
        except OSError as exc:
            if shared and exc.errno in _READ_UNLOCKED:
                return None
            raise self._map(exc, key, "lock") from None

    def _os(self, key: str, action: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except (IsADirectoryError, NotADirectoryError):
            raise InvalidURIError(f"cannot {action} {key!r} in {self.uri}: it is a folder of other keys (a key "
                                  "cannot also be a folder in LocalStorage)", key=key) from None
        except OSError as exc:
            raise self._map(exc, key, action) from None

    def _map(self, exc: OSError, key: str | None, action: str) -> StorageError:
        """The storage error for an OS error (the message names the key and the folder, never more)."""
        what = f"{action} {key!r} in {self.uri}" if key else f"{action} in {self.uri}"
        reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
        if exc.errno in (errno.EACCES, errno.EPERM):
            return StorageAuthError(f"cannot {what}: permission denied", key=key)
        if exc.errno in (errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL):
            return InvalidURIError(f"cannot {what}: {reason} (the key is not a valid file name here)", key=key)
        if exc.errno == errno.ENOENT:
            return StorageUnavailableError(f"cannot {what}: the folder is missing ({reason})", key=key)
        if exc.errno in _UNAVAILABLE:
            return StorageUnavailableError(f"cannot {what}: {reason}", key=key)
        return StorageUnavailableError(f"cannot {what}: {reason} (errno {exc.errno})", key=key)


# --- helpers --------------------------------------------------------------------------------------


def _sidecar(path: str) -> str:
    """The metadata sidecar of the data file ``path``: ``.odibi-meta.<name>.json`` in the same folder."""
    folder, name = os.path.split(path)
    return os.path.join(folder, _META + name + _META_END)


def _parse_record(raw: bytes, with_ino: bool) -> dict[str, Any] | None:
    """A metadata record (attribute or sidecar) if well formed: etag, size, mtime_ns (and ino for a sidecar),
    metadata (str -> str)."""
    try:
        record = json.loads(raw)
        meta = record["metadata"]
        ints = ("size", "mtime_ns", "ino") if with_ino else ("size", "mtime_ns")
        valid = (isinstance(record["etag"], str) and bool(record["etag"]) and isinstance(meta, dict)
                 and all(type(record[f]) is int for f in ints)
                 and all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()))
    except (ValueError, KeyError, TypeError):
        return None
    return record if valid else None


def _check_range(key: str, start: int | None, end: int | None) -> None:
    for name, value in (("start", start), ("end", end)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValueError(f"get({key!r}): {name} must be a non-negative int or None, got {value!r}")
    if start is not None and end is not None and end < start:
        raise ValueError(f"get({key!r}): end ({end}) is before start ({start})")


def _read_upto(fd: int, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` (fewer only if the file ends first)."""
    data = os.pread(fd, size, offset)
    if len(data) == size or not data:
        return data
    parts, got = [data], len(data)
    while got < size:
        chunk = os.pread(fd, size - got, offset + got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view.nbytes:
        view = view[os.write(fd, view):]


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a folder; the data itself is already on disk
        pass
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
