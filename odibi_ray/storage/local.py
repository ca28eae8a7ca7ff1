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

Symbolic links: the root itself may be a link, but nothing below it is ever followed. Every access resolves the
key from an fd of the root without following any link: by one ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)``
where Linux has it (5.6+), else by opening the key's folders one by one with ``O_NOFOLLOW`` (about 3 and 10 us
more than a plain ``open`` of a 3-folder key). So a link planted inside the root, even one swapped in while a call
runs, never leads outside it: a link is not an object
(``get``/``head``: ``NotFoundError``; ``list`` skips it; ``delete`` removes at most the link itself), and a key
whose folder is a link cannot be written (``InvalidURIError``).

Temp files: a writer killed mid-put leaves its ``.odibi-tmp-*`` file (never listed, never read).
:meth:`LocalStorage.temp_files` lists them and :meth:`LocalStorage.sweep_temp` removes those older than an age
(the age must exceed the longest a live put can go without writing: a younger temp file may be a live
writer's); the checkpoint housekeeping calls it (:mod:`odibi_ray.checkpoint.housekeeping`).

Limits: a key cannot be both an object and a "folder" of other keys (``a/b`` and ``a/b/c``); writing the
second raises :class:`~odibi_ray.errors.InvalidURIError`. A key's last segment must leave room for the
sidecar name (at most 238 bytes on a filesystem with 255-byte names).
"""

from __future__ import annotations

import builtins
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import stat
import sys
import time
import urllib.parse
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Iterator, Mapping, Sequence

from ..errors import (AlreadyExistsError, InvalidURIError, NotFoundError, PreconditionFailedError, StorageAuthError,
                      StorageError, StorageUnavailableError)
from .base import BytesLike, ObjectInfo, Storage, check_key, check_metadata
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
#: a folder on the way to a key: opened only to open what is below it, never through a symbolic link
_DIR_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: a folder to list or to fsync (an ``O_PATH`` fd can do neither)
_SCAN_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: a data file to read: NONBLOCK so a FIFO cannot hang us, NOFOLLOW so a link is not read through
_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW
#: open() errors of a final component that is a symbolic link (O_NOFOLLOW: ELOOP; EMLINK on FreeBSD)
_LINK_ERRNOS = {errno.ELOOP, errno.EMLINK}
#: openat2() errors that mean "not here" (no such syscall, blocked by a seccomp filter, flags unknown): use the walk
_NO_OPENAT2 = {errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.E2BIG}


def _load_openat2() -> Any:
    """``openat2(dirfd, path, flags, mode)`` resolving ``path`` beneath ``dirfd`` without following any symbolic
    link (``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS``, Linux 5.6+): one syscall instead of one open per folder.
    None where it cannot be called (not Linux, an architecture whose syscall number is not 437, no ctypes)."""
    import platform

    if sys.platform != "linux" or platform.machine() not in ("x86_64", "aarch64", "arm64", "riscv64", "ppc64le",
                                                              "s390x"):
        return None
    try:
        import ctypes

        syscall = ctypes.CDLL(None, use_errno=True).syscall
    except (ImportError, OSError, AttributeError):
        return None
    syscall.restype = ctypes.c_long
    syscall.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]

    class OpenHow(ctypes.Structure):
        _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]

    hows: dict[tuple[int, int], Any] = {}
    size = ctypes.sizeof(OpenHow)

    def openat2(dirfd: int, path: str, flags: int, mode: int = 0) -> int:
        how = hows.get((flags, mode))
        if how is None:
            how = hows[(flags, mode)] = ctypes.byref(OpenHow(flags, mode, 0x08 | 0x04))  # BENEATH | NO_SYMLINKS
        fd = syscall(437, dirfd, os.fsencode(path), how, size)
        if fd < 0:
            err = ctypes.get_errno()
            if err in _NO_OPENAT2:
                _OPENAT2[0] = None  # use the walk from now on in this process
            raise OSError(err, os.strerror(err))
        return fd

    return openat2


#: [openat2 or None], loaded on first use
_OPENAT2: list[Any] = []


def _openat2() -> Any:
    if not _OPENAT2:
        _OPENAT2.append(_load_openat2())
    return _OPENAT2[0]


@dataclass(frozen=True)
class TempFile:
    """A temp file of a put that never finished (or is still being written): where it lies, as a key (its folder
    and its ``.odibi-tmp-*`` name), its size, and when it last changed (the later of its data and inode times)."""

    key: str
    size: int
    mtime: float


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
    def from_uri(cls, uri: str, **options: Any) -> LocalStorage:
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
        # mypy refuses a call of __init__ (misc); it checks the root and opens what the adapter holds again
        self.__init__(state["root"], fsync=state["fsync"], create_root=state["create_root"],  # type: ignore[misc]
                      xattrs=state.get("xattrs", True))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LocalStorage) and self.__getstate__() == other.__getstate__()

    def __hash__(self) -> int:
        return hash((type(self), self.root))

    # --- interface ----------------------------------------------------------------------------------

    def put(self, key: str, data: BytesLike, metadata: Mapping[str, str] | None = None, *,
            if_none_match: bool = False, if_match: str | None = None) -> ObjectInfo:
        """Write ``data`` under ``key`` atomically; create-only or compare-and-swap on request."""
        self._path(key)
        meta = check_metadata(metadata)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"put({key!r}): data must be bytes-like, got {type(data).__name__}")
        if if_none_match and if_match is not None:
            raise ValueError(f"put({key!r}): if_none_match and if_match cannot be combined")
        if if_match is not None and (not isinstance(if_match, str) or not if_match):
            raise ValueError(f"put({key!r}): if_match must be a non-empty ETag string")
        *folder, name = key.split("/")
        if len(os.fsencode(_META + name + _META_END)) > _NAME_MAX:
            raise InvalidURIError(f"cannot put {key!r} in {self.uri}: its last segment is too long to leave room "
                                  f"for the metadata sidecar (at most {_NAME_MAX - len(_META + _META_END)} bytes)",
                                  key=key)
        side = _META + name + _META_END
        view = memoryview(data).cast("B")
        etag = secrets.token_hex(16)
        dfd, tmp, st, in_attr = self._write_temp(key, folder, view, (etag, meta))
        side_tmp = None
        try:
            try:
                if in_attr:  # one file: data and metadata share the inode
                    self._move_in(key, dfd, tmp, name, side, if_none_match, if_match)
                else:
                    record = {"etag": etag, "size": st.st_size, "ino": st.st_ino, "mtime_ns": st.st_mtime_ns,
                              "metadata": meta}
                    side_tmp = self._write_temp(key, folder, json.dumps(record, separators=(",", ":")).encode(),
                                                dfd=dfd)[1]
                    with self._locked(key):
                        self._refuse_folder(key, dfd, name)
                        if if_none_match:
                            self._link_new(key, dfd, tmp, name, side_tmp, side)
                        else:
                            self._check_etag(key, if_match)
                            # sidecar first: a crash between the two leaves it stale, never wrong
                            self._os(key, "put", os.replace, side_tmp, side, dfd)
                            self._place(key, dfd, tmp, name, side)
            finally:
                _unlink_quietly(tmp, dfd)
                if side_tmp is not None:
                    _unlink_quietly(side_tmp, dfd)
            if self.fsync:
                _fsync_dir(dfd)
        finally:
            os.close(dfd)
        return ObjectInfo(key=key, size=view.nbytes, etag=etag, last_modified=st.st_mtime, metadata=meta)

    def _move_in(self, key: str, dfd: int, tmp: str, name: str, side: str, if_none_match: bool,
                 if_match: str | None) -> None:
        """Move a temp file that carries its metadata in place (``dfd``: their folder): create-only by ``os.link``
        (atomic, no lock), else by ``os.replace`` under the key's exclusive lock (so a compare-and-swap is one
        step)."""
        if if_none_match:
            self._refuse_folder(key, dfd, name)
            try:
                os.link(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)  # fails if the name exists: one racing writer wins
                return
            except FileExistsError:
                self._refuse_folder(key, dfd, name)
                raise AlreadyExistsError(f"put({key!r}) in {self.uri}: the object already exists", key=key) from None
            except OSError as exc:
                if exc.errno not in _NO_HARDLINK or _lexists(name, dfd):
                    raise self._map(exc, key, "put") from None
            with self._locked(key):  # no hard links here: a locked check, then the rename
                if _lexists(name, dfd):
                    raise AlreadyExistsError(f"put({key!r}) in {self.uri}: the object already exists", key=key)
                self._os(key, "put", os.replace, tmp, name, dfd)
            return
        with self._locked(key):
            self._refuse_folder(key, dfd, name)
            self._check_etag(key, if_match)
            self._os(key, "put", os.replace, tmp, name, dfd)
            _unlink_quietly(side, dfd)  # an earlier write's sidecar, stale now (under the lock: never a newer one's)

    def _check_etag(self, key: str, if_match: str | None) -> None:
        """``PreconditionFailedError`` unless ``if_match`` is None or the current ETag (the lock is held)."""
        if if_match is None:
            return
        current = self._current_etag(key)
        if current != if_match:
            what = "does not exist" if current is None else "has another ETag"
            raise PreconditionFailedError(f"put({key!r}) in {self.uri}: if_match failed, the object {what}", key=key)

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """The object's bytes, or ``[start, end)`` of them (clamped to the object; ``end`` None: to the end)."""
        self._path(key)
        _check_range(key, start, end)
        self._require_root()
        fd, st = self._open_data(key)  # no lock: the file is only ever replaced whole
        try:
            lo = min(start or 0, st.st_size)
            hi = st.st_size if end is None else min(end, st.st_size)
            return self._read(key, fd, lo, max(0, hi - lo))
        finally:
            os.close(fd)

    def get_with_info(self, key: str) -> tuple[bytes, ObjectInfo]:
        """The whole object and its info, read from one open file (its attribute), or paired with its sidecar
        under the key's shared lock (so they belong together)."""
        fd, st, info = self._open_with_info(key)
        try:  # the open file is that write's data even if another put replaces the name now
            return self._read(key, fd, 0, st.st_size), info
        finally:
            os.close(fd)

    # --- streaming reads (issue 14, item 7): a large object without a whole copy of it in memory -------------

    def get_into(self, key: str, open_sink: Callable[[ObjectInfo], Any]) -> ObjectInfo:
        """Stream the object into a sink a chunk at a time (never a whole copy of it in memory here) and return
        its info, both of one write (the open file's, paired as in :meth:`get_with_info`).

        ``open_sink(info)`` is called once the info is known, before any byte is read: it returns a binary sink
        (``write(b)``; it must copy what it is given, the chunk buffer is reused) or raises to stop there (e.g.
        metadata the caller will not trust). An exception raised by ``open_sink`` or the sink is raised as it is.
        A file that another tool shortened in place gives fewer bytes than ``info.size`` (the caller checks)."""
        fd, st, info = self._open_with_info(key)
        try:
            sink = open_sink(info)
            try:
                _copy_out(fd, st.st_size, sink)
            except OSError as exc:
                if getattr(exc, "odibi_read", False):
                    raise self._map(exc, key, "read") from None
                raise
            return info
        finally:
            os.close(fd)

    def _open_with_info(self, key: str) -> tuple[int, os.stat_result, ObjectInfo]:
        """An open fd of the data file (the caller closes it), its stat and its info, paired as in
        :meth:`get_with_info` (the attribute of the open file, else its sidecar under the shared lock)."""
        self._path(key)
        self._require_root()
        fd, st = self._open_data(key)
        try:
            info = self._attr_info(key, fd, st)
        except BaseException:
            os.close(fd)
            raise
        if info is None:
            os.close(fd)
            with self._locked(key, shared=True):
                fd, st = self._open_data(key)
                try:
                    info = self._pair(key, fd, st)
                except BaseException:
                    os.close(fd)
                    raise
        return fd, st, info

    def head(self, key: str) -> ObjectInfo:
        """Size, ETag, mtime and metadata of ``key``; ``NotFoundError`` if absent."""
        self._path(key)
        self._require_root()
        return self._info(key)

    def _info(self, key: str) -> ObjectInfo:
        fd, st = self._open_data(key)
        try:
            info = self._attr_info(key, fd, st)
        finally:
            os.close(fd)
        if info is not None:
            return info
        with self._locked(key, shared=True):  # a sidecar object (or a plain file): pair it under the lock
            fd, st = self._open_data(key)
            try:
                return self._pair(key, fd, st)
            finally:
                os.close(fd)

    def list(self, prefix: str = "", *, with_metadata: bool = False) -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix`` (a plain string prefix), in key order."""
        self._check_prefix(prefix)
        self._require_root()
        return self._list(prefix, with_metadata)

    def _list(self, prefix: str, with_metadata: bool) -> Iterator[ObjectInfo]:
        for key, _ in self._walk(prefix, orphans=False):
            try:
                info = self._info(key)  # the ETag is always returned: read it like head (never through a link)
            except NotFoundError:  # deleted (or replaced by a folder or a link) since the folder was read
                continue
            yield info if with_metadata else ObjectInfo(info.key, info.size, info.etag, info.last_modified, {})

    def delete(self, key: str, *, missing_ok: bool = True) -> bool:
        """Remove one object and its sidecar (and the folders it leaves empty); True if it existed."""
        self._path(key)
        self._require_root()
        existed = False
        if os.path.isdir(self.root):
            with self._locked(key):
                existed = self._unlink_pair(key, orphan=False)
        if not existed and not missing_ok:
            raise NotFoundError(f"cannot delete {key!r}: not found in {self.uri}", key=key)
        if existed:
            self._prune(key.split("/")[:-1])
        return existed

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object whose key starts with ``prefix`` (and stray sidecars), then the folders left
        empty; the number of objects removed."""
        self._check_prefix(prefix)
        self._require_root()
        removed, folders = 0, set()
        for key, orphan in list(self._walk(prefix, orphans=True)):
            with self._locked(key):
                if self._unlink_pair(key, orphan=orphan):
                    removed += 1
            folders.add(tuple(key.split("/")[:-1]))
        for folder in sorted(folders, key=len, reverse=True):
            self._prune(list(folder))
        logger.debug("deleted %d object(s) under %r in %s", removed, prefix, self.uri)
        return removed

    # --- temp files of puts that never finished -----------------------------------------------------

    def temp_files(self, prefix: str = "") -> builtins.list[TempFile]:
        """The temp files (``.odibi-tmp-*``) in the folders under ``prefix``, in key order: those of writers
        killed mid-put, and those of puts running now. ``prefix`` selects folders (a temp file's name says
        nothing of the key it was for): those whose key starts with it, and the folder ``prefix`` ends in."""
        found: list[TempFile] = []
        self._sweep(prefix, None, found, dry_run=True)
        return found

    def sweep_temp(self, older_than_s: float, prefix: str = "", *, dry_run: bool = False) -> tuple[int, int]:
        """Remove the temp files under ``prefix`` (as :meth:`temp_files` selects them) that have not changed for
        ``older_than_s`` seconds, and the folders that leaves empty; ``(count, bytes)`` removed (``dry_run``:
        that would be). A younger temp file is never touched: a live writer may own it. Choose an age longer than
        any put can take between two writes (0 removes every temp file: only when no put is running)."""
        if isinstance(older_than_s, bool) or not isinstance(older_than_s, (int, float)):
            raise TypeError(f"older_than_s must be a number of seconds, got {type(older_than_s).__name__}")
        if not older_than_s >= 0 or older_than_s == float("inf"):
            raise ValueError(f"older_than_s must be a finite number >= 0, got {older_than_s!r}")
        swept: list[TempFile] = []
        self._sweep(prefix, time.time() - older_than_s, swept, dry_run=dry_run)
        if swept:
            logger.info("%s %d temp file(s) (%d bytes) of unfinished puts older than %gs under %r in %s",
                        "would remove" if dry_run else "removed", len(swept), sum(t.size for t in swept),
                        older_than_s, prefix, self.uri)
        return len(swept), sum(t.size for t in swept)

    def _sweep(self, prefix: str, cutoff: float | None, out: builtins.list[TempFile], dry_run: bool) -> None:
        """Collect (and unless ``dry_run`` remove) the temp files under ``prefix`` last changed at or before
        ``cutoff`` (None: all of them, never removed). Folders are opened from the root without following links."""
        self._check_prefix(prefix)
        self._require_root()
        base = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
        segments = base.split("/")[:-1]
        dfd = self._folder_fd(None, segments, "list", last=_SCAN_FLAGS)
        if dfd is None:
            return
        try:
            self._sweep_folder(dfd, base, prefix, base, cutoff, out, dry_run)
        finally:
            os.close(dfd)

    def _sweep_folder(self, dfd: int, folder: str, prefix: str, base: str, cutoff: float | None,
                      out: builtins.list[TempFile], dry_run: bool) -> bool:
        """Sweep the open folder ``dfd`` (key ``folder``, '' or ending in '/') and below (``base``: the folder
        ``prefix`` ends in); True if it removed something here or below (the folder may be empty now)."""
        removed = False
        try:
            with os.scandir(dfd) as it:
                entries = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it)
        except OSError as exc:
            raise self._map(exc, folder or None, "list") from None
        for name, is_dir in entries:
            if name.startswith(_TMP) and not is_dir:
                if not (folder.startswith(prefix) or folder == base):
                    continue
                try:
                    st = os.lstat(name, dir_fd=dfd)
                except FileNotFoundError:  # its put finished (or it was swept) since the folder was read
                    continue
                except OSError as exc:
                    raise self._map(exc, folder + name, "list") from None
                if not stat.S_ISREG(st.st_mode):
                    continue
                changed = max(st.st_mtime, st.st_ctime)  # ctime: a live put's attribute write counts too
                if cutoff is not None and changed > cutoff:
                    continue
                if cutoff is not None and not dry_run:
                    try:
                        os.unlink(name, dir_fd=dfd)
                    except FileNotFoundError:
                        continue
                    except OSError as exc:
                        raise self._map(exc, folder + name, "delete") from None
                    removed = True
                out.append(TempFile(folder + name, st.st_size, changed))
            elif is_dir and not name.startswith(RESERVED):
                child_key = folder + name + "/"
                if not (child_key.startswith(prefix) or prefix.startswith(child_key)):
                    continue
                try:
                    child = os.open(name, _SCAN_FLAGS, dir_fd=dfd)
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.ENOTDIR) or exc.errno in _LINK_ERRNOS:
                        continue  # gone, or swapped for a link since the folder was read
                    raise self._map(exc, child_key, "list") from None
                try:
                    emptied = self._sweep_folder(child, child_key, prefix, base, cutoff, out, dry_run)
                finally:
                    os.close(child)
                if emptied:
                    removed = True
                    try:
                        os.rmdir(name, dir_fd=dfd)  # only if now empty; a put that opened it retries its temp file
                    except OSError:
                        pass
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

    def _folder_fd(self, key: str | None, segments: Sequence[str], action: str, *, create: bool = False,
                   last: int = _DIR_FLAGS) -> int | None:
        """An fd of the folder ``segments`` below the root, opened one folder at a time with ``O_NOFOLLOW`` from
        the root (which may itself be a link), so it is always inside the root, even if a folder is swapped for
        a link meanwhile; the last one opened with the flags ``last``. None if a folder is missing, or is a link
        or a file (reads: there is no object). ``create``: missing folders are made, and a folder that is a link
        or a file raises :class:`InvalidURIError`."""
        flags = last if not segments else _DIR_FLAGS
        try:
            fd = os.open(self.root, flags & ~os.O_NOFOLLOW)
        except (FileNotFoundError, NotADirectoryError):
            if not create:
                return None
            self._require_root()
            try:
                os.makedirs(self.root, exist_ok=True)
                fd = os.open(self.root, flags & ~os.O_NOFOLLOW)
            except OSError as exc:
                raise self._map(exc, key, action) from None
        except OSError as exc:
            raise self._map(exc, key, action) from None
        openat2 = _openat2() if segments else None
        if openat2 is not None:
            try:
                child = openat2(fd, "/".join(segments), last)
            except OSError:  # a folder is missing, is a file or a link (or no openat2 here): the walk says which
                pass
            else:
                os.close(fd)
                return child
        for i, segment in enumerate(segments):
            try:
                child = self._open_child(key, fd, segment, action, create, last if i == len(segments) - 1 else
                                         _DIR_FLAGS)
            finally:
                os.close(fd)
            if child is None:
                return None
            fd = child
        return fd

    def _open_child(self, key: str | None, fd: int, segment: str, action: str, create: bool,
                    flags: int) -> int | None:
        for _ in range(5):
            try:
                return os.open(segment, flags, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    return None
                try:
                    os.mkdir(segment, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass  # made by a concurrent put (or it is a file / a link: the open says which)
                except OSError as exc:
                    raise self._map(exc, key, action) from None
            except OSError as exc:
                if exc.errno != errno.ENOTDIR and exc.errno not in _LINK_ERRNOS:
                    raise self._map(exc, key, action) from None
                if not create:
                    return None
                try:
                    link = stat.S_ISLNK(os.lstat(segment, dir_fd=fd).st_mode)
                except OSError:
                    link = False
                if link:
                    raise InvalidURIError(f"cannot {action} {key!r} in {self.uri}: its folder {segment!r} is a "
                                          "symbolic link (LocalStorage never follows links below its root)",
                                          key=key) from None
                raise InvalidURIError(f"cannot {action} {key!r} in {self.uri}: a parent of it is an object (a key "
                                      "cannot also be a folder in LocalStorage)", key=key) from None
        raise self._map(OSError(errno.ENOENT, "folder keeps disappearing"), key, action)

    # --- reading ------------------------------------------------------------------------------------

    def _open_data(self, key: str) -> tuple[int, os.stat_result]:
        """An open fd of the data file and its stat; ``NotFoundError`` if there is no regular file (a link is
        none: never followed)."""
        openat2 = _openat2()
        fd = self._open_beneath(key, openat2) if openat2 is not None else None
        if fd is None:
            fd = self._open_walking(key)
        try:
            st = os.fstat(fd)
        except OSError as exc:
            os.close(fd)
            raise self._map(exc, key, "read") from None
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise NotFoundError(f"{key!r} not found in {self.uri}", key=key)
        return fd, st

    def _open_beneath(self, key: str, openat2: Any) -> int | None:
        """The data file opened by one openat2() below the root (no link followed); None: ask the walk."""
        try:
            root = os.open(self.root, _DIR_FLAGS & ~os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            return openat2(root, key, _READ_FLAGS)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                raise self._missing(key) from None
            if exc.errno in _LINK_ERRNOS:
                raise NotFoundError(f"{key!r} not found in {self.uri} (a symbolic link is not an object, nor a "
                                    "folder of objects)", key=key) from None
            return None
        finally:
            os.close(root)

    def _open_walking(self, key: str) -> int:
        """The data file opened below its folder, itself opened one folder at a time (no link followed)."""
        *folder, name = key.split("/")
        dfd = self._folder_fd(key, folder, "read")
        if dfd is None:
            raise self._missing(key)
        try:
            return os.open(name, _READ_FLAGS, dir_fd=dfd)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise self._missing(key) from None
        except OSError as exc:
            if exc.errno in _LINK_ERRNOS:
                raise NotFoundError(f"{key!r} not found in {self.uri} (a symbolic link is not an object)",
                                    key=key) from None
            raise self._map(exc, key, "read") from None
        finally:
            os.close(dfd)

    def _pair(self, key: str, fd: int, st: os.stat_result) -> ObjectInfo:
        """The info of the open data file ``fd`` (stat ``st``): from its attribute, else from its sidecar if that
        was written with this very file (the key's lock is held)."""
        info = self._attr_info(key, fd, st)
        if info is not None:
            return info
        record = self._read_sidecar(key)
        if (record is not None and record["ino"] == st.st_ino and record["size"] == st.st_size
                and record["mtime_ns"] == st.st_mtime_ns):
            return ObjectInfo(key, st.st_size, record["etag"], st.st_mtime, record["metadata"])
        # No sidecar, or a stale one (a crash between a put's two renames, or the file rewritten by another tool).
        return ObjectInfo(key, st.st_size, f"w-{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}", st.st_mtime, {})

    def _attr_info(self, key: str, fd: int, st: os.stat_result) -> ObjectInfo | None:
        """The info kept in the attribute of the open file ``fd``, if it has one written with exactly this content
        (size and mtime); else None."""
        try:
            raw = os.getxattr(fd, _XATTR)
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

    def _read_sidecar(self, key: str) -> dict[str, Any] | None:
        """The parsed sidecar of ``key``, or None when there is none or it cannot be trusted."""
        *folder, name = key.split("/")
        dfd = self._folder_fd(key, folder, "read")
        if dfd is None:
            return None
        try:
            fd = os.open(_META + name + _META_END, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=dfd)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno in _LINK_ERRNOS or exc.errno == errno.ENAMETOOLONG:
                return None
            raise self._map(exc, key, "read") from None
        finally:
            os.close(dfd)
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

    def _current_etag(self, key: str) -> str | None:
        """The ETag of ``key`` (the caller holds its lock), None if absent."""
        try:
            fd, st = self._open_data(key)
        except NotFoundError:
            return None
        try:
            return self._pair(key, fd, st).etag
        finally:
            os.close(fd)

    def _walk(self, prefix: str, orphans: bool) -> Iterator[tuple[str, bool]]:
        """(key, orphan) of every file whose key starts with ``prefix``, in key order, skipping reserved names and
        links; ``orphans``: also sidecars without a data file (orphan True). Callers open what it finds through
        :meth:`_folder_fd` (never through a link), so a folder swapped for a link during the walk yields nothing."""
        base = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
        yield from self._walk_folder(os.path.join(self.root, *base.split("/")), base, prefix, orphans)

    def _walk_folder(self, folder: str, key_prefix: str, prefix: str,
                     orphans: bool) -> Iterator[tuple[str, bool]]:
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
                    elif (key_prefix + e.name).startswith(prefix) and e.is_file(follow_symlinks=False):
                        items.append((e.name, "file", e.path))  # a linked file is no object either
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
                yield key, kind == "orphan"

    # --- writing ------------------------------------------------------------------------------------

    def _write_temp(self, key: str, folder: builtins.list[str], data: bytes | memoryview,
                    attr: tuple[str, dict[str, str]] | None = None,
                    dfd: int | None = None) -> tuple[int, str, os.stat_result, bool]:
        """Write ``data`` to a fresh temp file in the key's folder (``dfd`` if open, else opened, made if missing,
        never through a link); the folder's fd (the caller closes it), the temp file's name, its stat, and
        whether ``attr`` (ETag, metadata) was set as its metadata attribute (else the caller writes a sidecar)."""
        self._require_root()
        tmp = _TMP + secrets.token_hex(8)
        own = dfd is None
        for attempt in range(5):
            if own:
                dfd = self._folder_fd(key, folder, "put", create=True, last=_SCAN_FLAGS)
            assert dfd is not None
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o666,
                             dir_fd=dfd)
                break
            except FileNotFoundError:  # the folder was removed (a concurrent delete) since it was opened
                if not own or attempt == 4:
                    if own:
                        os.close(dfd)
                    raise self._map(OSError(errno.ENOENT, "folder keeps disappearing"), key, "put") from None
                os.close(dfd)
            except OSError as exc:
                if own:
                    os.close(dfd)
                raise self._map(exc, key, "put") from None
        assert dfd is not None  # the loop leaves only once the temp file is open in it
        try:
            try:
                _write_all(fd, data)
                st = os.fstat(fd)
                in_attr = attr is not None and self._set_attr(fd, st, *attr)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException as exc:
            _unlink_quietly(tmp, dfd)
            if own:
                os.close(dfd)
            if isinstance(exc, OSError):
                raise self._map(exc, key, "put") from None
            raise
        return dfd, tmp, st, in_attr

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

    def _refuse_folder(self, key: str, dfd: int, name: str) -> None:
        """``InvalidURIError`` if ``key`` (``name`` in the folder ``dfd``) names a folder of other keys (checked
        before any rename)."""
        try:
            is_dir = stat.S_ISDIR(os.lstat(name, dir_fd=dfd).st_mode)
        except OSError:
            return
        if is_dir:
            raise InvalidURIError(f"cannot put {key!r} in {self.uri}: it is a folder of other keys (a key cannot "
                                  "also be a folder in LocalStorage)", key=key)

    def _link_new(self, key: str, dfd: int, tmp: str, name: str, side_tmp: str, side: str) -> None:
        """Move sidecar then data in place only if no object has the name (the lock is held)."""
        exists = AlreadyExistsError(f"put({key!r}) in {self.uri}: the object already exists", key=key)
        if _lexists(name, dfd):
            raise exists
        self._os(key, "put", os.replace, side_tmp, side, dfd)
        try:
            os.link(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)  # fails if the name exists, even if made unlocked
            return
        except FileExistsError:
            _unlink_quietly(side, dfd)  # ours, and stale for whatever file took the name
            raise exists from None
        except OSError as exc:
            if exc.errno not in _NO_HARDLINK or _lexists(name, dfd):
                _unlink_quietly(side, dfd)
                raise self._map(exc, key, "put") from None
        # No hard links on this filesystem: the per-key lock makes check-then-replace safe among LocalStorages.
        self._place(key, dfd, tmp, name, side)

    def _place(self, key: str, dfd: int, tmp: str, name: str, side: str) -> None:
        """Move the data in place after its sidecar; on failure remove that sidecar (stale without it)."""
        try:
            self._os(key, "put", os.replace, tmp, name, dfd)
        except BaseException:
            _unlink_quietly(side, dfd)
            raise

    def _unlink_pair(self, key: str, orphan: bool) -> bool:
        """Remove the data file and sidecar of ``key`` (the lock is held); True if the data file existed.

        The folders are opened one by one from the root without following symlinks, so nothing outside the
        root is ever removed. ``orphan``: remove the sidecar only, and only if there is no data file.
        """
        segments = key.split("/")
        dfd = self._folder_fd(key, segments[:-1], "delete")
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

    def _prune(self, segments: builtins.list[str]) -> None:
        """Remove the folder ``segments`` and its parents while they are empty, never the root (each removed
        from its parent's fd, opened without following links: never anything outside the root)."""
        while segments:
            try:
                parent = self._folder_fd(None, segments[:-1], "delete")
            except StorageError:
                return
            if parent is None:
                return
            try:
                os.rmdir(segments[-1], dir_fd=parent)
            except OSError:  # not empty (or gone, or a link, or not ours to remove): stop
                return
            finally:
                os.close(parent)
            segments = segments[:-1]

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
        """The open lock file of ``key``'s stripe, ``<root>/.odibi-locks/NNN`` (opened without following links)."""
        stripe = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=2).digest()
        lock = f"{int.from_bytes(stripe, 'big') % _LOCK_STRIPES:03d}"
        flags = os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            try:
                root = os.open(self.root, _DIR_FLAGS & ~os.O_NOFOLLOW)
            except FileNotFoundError:
                if shared:
                    return None
                self._require_root()
                os.makedirs(self.root, exist_ok=True)
                root = os.open(self.root, _DIR_FLAGS & ~os.O_NOFOLLOW)
            openat2 = _openat2()
            if openat2 is not None:
                try:
                    fd = openat2(root, f"{_LOCKS}/{lock}", flags, 0o666)
                except OSError:
                    pass  # no lock folder yet, or a link in the way (or no openat2): the walk says which
                else:
                    os.close(root)
                    return fd
            try:
                try:
                    folder = os.open(_LOCKS, _DIR_FLAGS, dir_fd=root)
                except FileNotFoundError:
                    if shared:  # no lock folder: nothing was ever written here by a LocalStorage; do not make it
                        return None
                    try:
                        os.mkdir(_LOCKS, 0o777, dir_fd=root)
                    except FileExistsError:
                        pass
                    folder = os.open(_LOCKS, _DIR_FLAGS, dir_fd=root)
            finally:
                os.close(root)
            try:
                return os.open(lock, flags, 0o666, dir_fd=folder)
            finally:
                os.close(folder)
        except OSError as exc:
            if shared and exc.errno in _READ_UNLOCKED:
                return None
            raise self._map(exc, key, "lock") from None

    def _os(self, key: str, action: str, fn: Any, src: str, dst: str, dfd: int) -> Any:
        """``fn(src, dst)`` (a rename) within the folder ``dfd``, its errors mapped."""
        try:
            return fn(src, dst, src_dir_fd=dfd, dst_dir_fd=dfd)
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


_STREAM_CHUNK = 4 * 1024 * 1024


def _copy_out(fd: int, size: int, sink: Any) -> None:
    """Write the first ``size`` bytes of ``fd`` to ``sink`` through one reused buffer of ``_STREAM_CHUNK`` bytes
    (stops early where the file ends sooner). An OSError of the reads is marked ``odibi_read``."""
    buf = memoryview(bytearray(max(1, min(size, _STREAM_CHUNK))))
    offset = 0
    while offset < size:
        want = buf[:min(buf.nbytes, size - offset)]
        try:
            got = os.preadv(fd, [want], offset) if hasattr(os, "preadv") else _pread_into(fd, want, offset)
        except OSError as exc:
            exc.odibi_read = True  # type: ignore[attr-defined]  # a mark on the exception, read with getattr
            raise
        if not got:
            return
        sink.write(want[:got])
        offset += got


def _pread_into(fd: int, out: memoryview, offset: int) -> int:
    data = os.pread(fd, out.nbytes, offset)
    out[:len(data)] = data
    return len(data)


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


def _fsync_dir(dfd: int) -> None:
    try:
        os.fsync(dfd)
    except OSError:  # some filesystems cannot fsync a folder; the data itself is already on disk
        pass


def _unlink_quietly(name: str, dfd: int) -> None:
    try:
        os.unlink(name, dir_fd=dfd)
    except OSError:
        pass


def _lexists(name: str, dfd: int) -> bool:
    """Whether ``name`` exists in the folder ``dfd`` (a link counts, never followed)."""
    try:
        os.lstat(name, dir_fd=dfd)
        return True
    except OSError:
        return False
