"""What a reader trusts in a checkpoint store: signed objects (HMAC-SHA256) and, or not, pickles.

Why: checkpoints are shared state. Without a signature, an object's metadata (codec, sha256, size) is whatever
its writer chose, so the SHA-256 check catches accidents, not tampering, and anyone who can write to the store
can make every reader decode a pickle -- that is, run code. With a signing key every object the engine writes
carries ``sig``: an HMAC-SHA256, keyed by a secret the store never sees, over the object key and the metadata
that say how to read it (codec, sha256, size, node, pipeline, created, expiry). The payload itself is bound by
its sha256, which every read checks against the bytes. An object whose signature is missing or wrong is never
decoded: it is a cache miss (recomputed, counted, logged with its key, never with the signing key).

Key rotation: a :class:`Signer` signs with its first key and accepts any of its keys; each signature names its
key by a short id (a hash of the key, which reveals nothing of it). Keys are given like every secret: literal,
``env://NAME`` or ``kv://vault/name``; references travel to workers as references and are resolved there.

``allow_pickle=False``: an output that would need cloudpickle fails its node when it is written, with the codecs
that would work; a stored pickle is never decoded (a miss). Hand-written here: the standard library's ``hmac``
is the whole of the cryptography, no library adds what this module does (choosing what to sign).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Mapping, Sequence

from ..storage.secrets import SecretRef, SecretValue, resolve_secret

log = logging.getLogger(__name__)

#: The metadata fields a signature covers, with the object key; a change to any of them voids it.
SIGNED_FIELDS = ("codec", "sha256", "size", "node", "pipeline", "created", "expires_at")
_VERSION = "v1"


class Signer:
    """Signs checkpoint metadata with its first key, verifies with any (rotation). Its repr and its pickled form
    never hold a key's value when the key is a reference (``env://``, ``kv://``)."""

    def __init__(self, keys: str | SecretValue | SecretRef | Sequence[str | SecretValue | SecretRef]) -> None:
        items = [keys] if isinstance(keys, (str, SecretValue, SecretRef)) else list(keys)
        if not items:
            raise ValueError("signing_key needs at least one key")
        self._given = [SecretRef(k) if isinstance(k, str) and SecretRef.is_reference(k) else
                       (SecretValue(k) if isinstance(k, str) else k) for k in items]
        for k in self._given:
            if not isinstance(k, (SecretValue, SecretRef)):
                raise TypeError(f"a signing key is a string, SecretValue or SecretRef, got {type(k).__name__}")
        self._keys: list[tuple[str, bytes]] | None = None

    def __repr__(self) -> str:
        return f"Signer({len(self._given)} key(s))"

    def __getstate__(self) -> dict[str, Any]:
        return {"given": self._given}  # references stay references; resolved keys are never pickled

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        self._given, self._keys = list(state["given"]), None

    def _resolved(self) -> list[tuple[str, bytes]]:
        if self._keys is None:
            keys = []
            for k in self._given:
                value = (resolve_secret(k) if isinstance(k, SecretRef) else k).get_secret_value().encode()
                if len(value) < 16:
                    raise ValueError("a signing key must be at least 16 characters long")
                keys.append((hashlib.sha256(b"odibi-signing-key-id\0" + value).hexdigest()[:12], value))
            self._keys = keys
        return self._keys

    def sign(self, object_key: str, metadata: Mapping[str, str]) -> str:
        kid, key = self._resolved()[0]
        return f"{_VERSION}:{kid}:{_mac(key, object_key, metadata)}"

    def verify(self, object_key: str, metadata: Mapping[str, str]) -> bool:
        sig = metadata.get("sig", "")
        version, _, rest = sig.partition(":")
        kid, _, mac = rest.partition(":")
        if version != _VERSION or not mac:
            return False
        for known, key in self._resolved():
            if hmac.compare_digest(known, kid):
                return hmac.compare_digest(_mac(key, object_key, metadata), mac)
        return False


def _mac(key: bytes, object_key: str, metadata: Mapping[str, str]) -> str:
    """HMAC-SHA256 over the object key and the signed fields, each length-prefixed (no ambiguity)."""
    parts = [object_key] + [metadata.get(f, "") for f in SIGNED_FIELDS]
    msg = b"".join(len(p.encode()).to_bytes(4, "big") + p.encode() for p in parts)
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Trust:
    """A run's (or a cache's) rules for its checkpoint objects; travels to workers with their targets."""

    signer: Signer | None = field(default=None, compare=False)
    allow_pickle: bool = True

    def seal(self, object_key: str, metadata: dict[str, str]) -> dict[str, str]:
        """``metadata`` with its signature (when signing)."""
        if self.signer is not None:
            metadata["sig"] = self.signer.sign(object_key, metadata)
        return metadata

    def refusal(self, object_key: str, metadata: Mapping[str, str]) -> str | None:
        """Why an object must not be decoded (unsigned, a wrong signature, a pickle not allowed), or None."""
        if self.signer is not None:
            if not metadata.get("sig"):
                return "it is not signed"
            if not self.signer.verify(object_key, metadata):
                return "its signature does not match (altered, or signed with another key)"
        if not self.allow_pickle and metadata.get("codec") == "pickle":
            return "it is a pickle and allow_pickle is off"
        return None


#: What a reader trusts when nothing is said: any intact object, pickles included (the behaviour before signing).
TRUST_ALL = Trust()


def trust_from(signing_key: Any = None, allow_pickle: bool | None = None) -> Trust:
    """The :class:`Trust` for a ``signing_key`` (one key, or a list: the first signs) and ``allow_pickle``."""
    if isinstance(signing_key, Signer):
        signer: Signer | None = signing_key
    else:
        signer = Signer(signing_key) if signing_key not in (None, "", []) else None
    return Trust(signer, True if allow_pickle is None else bool(allow_pickle))
