"""Storage adapters: one interface (:class:`Storage`) over a local folder, ADLS Gen2, S3 and HDFS."""

from .base import ObjectInfo, Storage, check_key
from .uri import open_storage, redact_uri, scheme_of

__all__ = ["Storage", "ObjectInfo", "check_key", "open_storage", "redact_uri", "scheme_of"]
