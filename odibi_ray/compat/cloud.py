"""The seed's face: ``CloudAdapter.create("azure" | "local" | "s3" | "hdfs" | "kafka", ...)`` with read/write of
tables (``"kafka"``: topics as tables, see :mod:`odibi_ray.compat.kafka`).

A thin layer over the :class:`~odibi_ray.storage.Storage` adapters: paths are ``<container>/<key>`` for
Azure (``<bucket>/<key>`` for S3), plain keys for a local folder. ``simulate=True`` stores everything in a
local folder shared by every process on the machine, with the same semantics as the real backend: what
is written is read back (the seed's simulation kept no state).
"""

from __future__ import annotations

import fnmatch
import io
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..errors import InvalidURIError
from ..storage.base import Storage
from ..storage.uri import open_storage

log = logging.getLogger(__name__)

FORMATS = ("parquet", "csv", "json", "bytes")
KINDS = ("azure", "local", "s3", "hdfs", "kafka")


def simulation_root() -> Path:
    """The machine-wide folder behind ``simulate=True`` (``ODIBI_RAY_SIMULATION_DIR`` overrides it)."""
    return Path(os.environ.get("ODIBI_RAY_SIMULATION_DIR") or Path(tempfile.gettempdir()) / "odibi_ray_simulated")


class CloudAdapter:
    """Read and write tables and bytes on Azure (ADLS Gen2 / Blob), S3, HDFS or a local folder; topics on Kafka."""

    def __new__(cls, kind: str = "", *args: Any, **options: Any) -> CloudAdapter:
        if cls is CloudAdapter and kind == "kafka":  # a log, not a folder: its own class (same methods)
            from .kafka import KafkaCloudAdapter

            return super().__new__(KafkaCloudAdapter)
        return super().__new__(cls)

    def __init__(self, kind: str, *, simulate: bool = False, root: str | None = None, account_name: str | None = None,
                 host: str | None = None, **options: Any) -> None:
        if kind not in KINDS:
            raise InvalidURIError(f"unknown CloudAdapter kind {kind!r}: use one of {', '.join(KINDS)}")
        self.kind, self.simulate = kind, simulate
        self.account_name = account_name or (os.environ.get("AZURE_STORAGE_ACCOUNT") if kind == "azure" else None)
        self.root, self.host = root, host
        self._options = options  # credentials stay here (or as env:// / kv:// references), never in repr
        self._stores: dict[str, Storage] = {}
        self.connected = False

    @classmethod
    def create(cls, kind: str, **options: Any) -> CloudAdapter:
        """The adapter for ``kind`` ("azure", "local", "s3", "hdfs", "kafka"); ``simulate=True`` for a local
        stand-in (not for Kafka)."""
        return cls(kind, **options)

    def __repr__(self) -> str:
        where = self.account_name or self.root or self.host or ""
        return f"CloudAdapter({self.kind!r}, {where!r}{', simulate=True' if self.simulate else ''})"

    # --- connection -----------------------------------------------------------------------------

    def connect(self) -> CloudAdapter:
        """Check the configuration and open what can be opened up front (clients are opened lazily)."""
        if self.kind == "azure" and not self.simulate and not self.account_name:
            raise InvalidURIError("CloudAdapter('azure') needs account_name= (or AZURE_STORAGE_ACCOUNT)")
        log.info("%r connected", self)
        self.connected = True
        return self

    def disconnect(self) -> None:
        """Forget open clients; the adapter can connect again."""
        self._stores.clear()
        self.connected = False

    # --- paths ----------------------------------------------------------------------------------

    def locate(self, path: str) -> tuple[Storage, str]:
        """The :class:`~odibi_ray.storage.base.Storage` holding ``path`` and the key inside it: how the seed's
        cache and checkpoint managers (and anyone mixing this face with the native API) reach the store."""
        path = path.strip("/")
        if self.kind == "local":
            return self._store("", self.root or "."), path
        container, _, key = path.partition("/")
        if not container or not key:
            raise InvalidURIError(f"path {path!r} must be '<container>/<key>' for CloudAdapter({self.kind!r})")
        return self._store(container), key

    def _store(self, container: str, local_root: str | None = None) -> Storage:
        store = self._stores.get(container)
        if store is None:
            if self.simulate:
                base = simulation_root() / self.kind / (self.account_name or self.host or "default") / container
                store = open_storage(str(base))
            elif self.kind == "local":
                store = open_storage(local_root or ".")
            elif self.kind == "azure":
                store = open_storage(f"abfss://{container}@{self.account_name}.dfs.core.windows.net/", **self._options)
            elif self.kind == "s3":
                store = open_storage(f"s3://{container}/", **self._options)
            else:
                if not self.host:
                    raise InvalidURIError("CloudAdapter('hdfs') needs host='namenode:port'")
                store = open_storage(f"hdfs://{self.host}/{container}", **self._options)
            self._stores[container] = store
        return store

    # --- data -----------------------------------------------------------------------------------

    def write(self, data: Any, path: str, format: str = "parquet", metadata: dict[str, str] | None = None) -> None:
        """Write a table (Arrow, pandas, dict of columns, list of rows) or bytes to ``path``."""
        store, key = self.locate(path)
        store.put(key, encode(data, format), metadata)

    def read(self, path: str, format: str = "parquet", as_pandas: bool = False) -> Any:
        """Read ``path``: an Arrow table for parquet/csv/json (``as_pandas=True``: a DataFrame), or bytes."""
        store, key = self.locate(path)
        value = decode(store.get(key), format)
        return value.to_pandas() if as_pandas and isinstance(value, pa.Table) else value

    def exists(self, path: str) -> bool:
        store, key = self.locate(path)
        return store.exists(key)

    def list(self, prefix: str = "", pattern: str = "*") -> list[str]:
        """Paths under ``prefix`` whose file name matches the glob ``pattern`` (e.g. ``"*.parquet"``)."""
        if self.kind == "local":
            store, key_prefix, head = self._store("", self.root or "."), prefix.strip("/"), ""
        else:
            container, _, key_prefix = prefix.strip("/").partition("/")
            if not container:
                raise InvalidURIError(f"prefix {prefix!r} must start with a container for CloudAdapter({self.kind!r})")
            store, head = self._store(container), container + "/"
        if key_prefix and prefix.endswith("/"):
            key_prefix += "/"
        return [head + info.key for info in store.list(key_prefix)
                if fnmatch.fnmatchcase(info.key.rsplit("/", 1)[-1], pattern)]

    def delete(self, path: str) -> bool:
        """Delete ``path``; True if it existed."""
        store, key = self.locate(path)
        return store.delete(key)


def encode(data: Any, format: str) -> bytes:
    """Serialise ``data`` in ``format`` (parquet, csv, json lines, or bytes as is)."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}: use one of {', '.join(FORMATS)}")
    if format == "bytes":
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"format='bytes' needs bytes, got {type(data).__name__}")
        return bytes(data)
    table = to_table(data)
    buf = io.BytesIO()
    if format == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, buf)
    elif format == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, buf)
    else:
        for row in table.to_pylist():
            buf.write(json.dumps(row, default=str).encode() + b"\n")
    return buf.getvalue()


def decode(raw: bytes, format: str) -> Any:
    """Parse bytes written by :func:`encode` (or any file of that format)."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}: use one of {', '.join(FORMATS)}")
    if format == "bytes":
        return raw
    if format == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(pa.BufferReader(raw))
    if format == "csv":
        import pyarrow.csv as pacsv

        # an empty field is a null (as written by encode), not an empty string
        return pacsv.read_csv(pa.BufferReader(raw), convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    import pyarrow.json as pajson

    if not raw.strip():
        return pa.table({})
    return pajson.read_json(pa.BufferReader(raw))


def to_table(data: Any) -> pa.Table:
    """An Arrow table from a table, a pandas frame, a dict of columns or a list of row dicts."""
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if isinstance(data, dict):
        return pa.table(data)
    if isinstance(data, list):
        return pa.Table.from_pylist(data)
    if type(data).__module__.startswith("pandas"):
        return pa.Table.from_pandas(data, preserve_index=False)
    raise TypeError(f"cannot write a {type(data).__name__} as a table: give an Arrow table, a pandas DataFrame, "
                    "a dict of columns or a list of row dicts (or bytes with format='bytes')")
