"""``open_storage(uri)``: the URI factory that picks the adapter for a scheme.

- a plain path or ``file://`` → :class:`~odibi_ray.storage.local.LocalStorage`
- ``abfss://<filesystem>@<account>.dfs.core.windows.net/<prefix>`` (also ``abfs://``, ``az://``)
  → :class:`~odibi_ray.storage.adls.ADLSStorage`
- ``s3://bucket/prefix`` → :class:`~odibi_ray.storage.arrowfs.ArrowFSStorage` over ``pyarrow.fs.S3FileSystem``
- ``hdfs://host:port/path`` → the same adapter over ``pyarrow.fs.HadoopFileSystem`` (thin; untested here)
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from ..errors import InvalidURIError
from .base import Storage

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*)://")

#: scheme -> "module:Class" whose ``from_uri(uri, **options)`` builds the adapter (imported lazily, so
#: a local run does not import the Azure SDK).
ADAPTERS = {
    "file": "odibi_ray.storage.local:LocalStorage",
    "abfss": "odibi_ray.storage.adls:ADLSStorage",
    "abfs": "odibi_ray.storage.adls:ADLSStorage",
    "az": "odibi_ray.storage.adls:ADLSStorage",
    "s3": "odibi_ray.storage.arrowfs:ArrowFSStorage",
    "hdfs": "odibi_ray.storage.arrowfs:ArrowFSStorage",
}


def scheme_of(uri: str) -> str:
    """The URI's scheme, ``"file"`` for a plain path; ``InvalidURIError`` for what is neither."""
    if not isinstance(uri, str) or not uri.strip():
        raise InvalidURIError(f"storage URI must be a non-empty string, got {uri!r}")
    m = _SCHEME.match(uri)
    if m:
        return m.group(1).lower()
    if "://" in uri or re.match(r"^[a-zA-Z][a-zA-Z0-9+.\-]*:[^\\/]", uri):
        raise InvalidURIError(f"malformed storage URI {redact_uri(uri)!r}")
    return "file"


def open_storage(uri: str, **options: Any) -> Storage:
    """The storage adapter for ``uri``; ``options`` go to the adapter (credentials, endpoint, timeouts)."""
    scheme = scheme_of(uri)
    target = ADAPTERS.get(scheme)
    if target is None:
        raise InvalidURIError(f"unknown storage scheme {scheme!r} in {redact_uri(uri)!r}: use a path, file://, "
                              "abfss://, az://, s3:// or hdfs://")
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls).from_uri(uri, **options)


def redact_uri(uri: str) -> str:
    """``uri`` without its query string and user-info (where SAS tokens and keys would be)."""
    uri = uri.split("?", 1)[0].split("#", 1)[0]
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.\-]*://)[^/@]*:[^/@]*@", r"\1***@", uri)
