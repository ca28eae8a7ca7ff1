"""Secrets: ``env://NAME`` and ``kv://<vault>/<name>[/<version>]`` references, resolved where they are used.

- :class:`SecretValue` holds a secret string; its ``repr``/``str``/``format`` are redacted, so it can be
  logged, put in an f-string or an exception message without showing the value.
- :class:`SecretRef` is a reference (never a value): the normal way a secret crosses processes. Pickle the
  reference; each process resolves it itself (Ray workers included).
- :func:`resolve_secret` turns a reference (or a literal) into a :class:`SecretValue`. ``kv://`` goes to
  Azure Key Vault through ``azure.keyvault.secrets.SecretClient`` with an *injected* credential
  (argument, or :func:`set_default_credential`); only when neither is given does it fall back to
  ``azure.identity.DefaultAzureCredential`` (production only: it probes cloud metadata addresses).
  Key Vault values are cached per process for ``ttl_s`` seconds (default 300); ``env://`` is read each time.

Vault URL of ``kv://<vault>/...`` (first match wins): the ``vault_urls`` mapping given to the resolver or
call; the environment variable ``ODIBI_RAY_KEYVAULT_URL_<VAULT>`` (vault name upper-cased, '-' -> '_');
else ``https://<vault>.<suffix>`` with ``suffix`` from ``ODIBI_RAY_KEYVAULT_DNS_SUFFIX`` (sovereign clouds:
``vault.azure.cn``, ``vault.usgovcloudapi.net``), default ``vault.azure.net``.

No value ever reaches a log line, an exception message or a repr: errors name the reference only, and the
SDK's body-logging (``logging_enable``) is refused because it would log the secret in the response.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any
from collections.abc import Mapping

from ..errors import OdibiError

log = logging.getLogger(__name__)

__all__ = [
    "SecretValue", "SecretRef", "SecretResolver", "resolve_secret", "set_default_credential",
    "clear_cache", "vault_url_for", "default_resolver",
    "SecretError", "InvalidSecretReferenceError", "SecretNotFoundError", "SecretAccessDeniedError",
    "SecretUnavailableError",
]

_MASK = "**********"
DEFAULT_TTL_S = 300.0
DEFAULT_DNS_SUFFIX = "vault.azure.net"
URL_ENV_PREFIX = "ODIBI_RAY_KEYVAULT_URL_"
SUFFIX_ENV = "ODIBI_RAY_KEYVAULT_DNS_SUFFIX"

#: SDK options used unless the caller overrides them: a dead vault fails in seconds, not minutes
#: (azure-core's defaults are 10 retries and 300 s timeouts). Retries wait 0, 1, 2 s.
DEFAULT_CLIENT_OPTIONS: Mapping[str, Any] = {
    "connection_timeout": 5,
    "read_timeout": 10,
    "retry_total": 3,
    "retry_backoff_factor": 0.5,
    "retry_backoff_max": 4,
}

_REF = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*)://(?P<rest>.*)$", re.S)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_VAULT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,22}[A-Za-z0-9]\Z")  # Azure: 3-24 chars
_SECRET_NAME = re.compile(r"^[A-Za-z0-9-]{1,127}\Z")
_VERSION = re.compile(r"^[A-Za-z0-9]{1,64}\Z")
_REF_SCHEMES = ("env", "kv")


# --- errors ------------------------------------------------------------------------------------


class SecretError(OdibiError):
    """A secret could not be resolved. ``ref`` is the reference (never a value); messages name it only."""

    def __init__(self, message: str, ref: str | None = None) -> None:
        super().__init__(message)
        self.ref = ref

    def __reduce__(self) -> tuple:  # keep ``ref`` across pickling (Ray ships errors between processes)
        return (type(self), (self.args[0] if self.args else "", self.ref))


class InvalidSecretReferenceError(SecretError, ValueError):
    """A string looks like a secret reference (``env://``, ``kv://``) but is malformed."""


class SecretNotFoundError(SecretError, KeyError):
    """The environment variable is not set (or empty), or the vault has no such secret (or version)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class SecretAccessDeniedError(SecretError):
    """The vault refused the credential (401), or the identity lacks 'get' permission (403). Not retried."""


class SecretUnavailableError(SecretError):
    """The vault could not be reached, or kept failing, after the SDK's bounded retries."""


# --- values and references ---------------------------------------------------------------------


class SecretValue:
    """A secret string whose ``repr``/``str``/``format`` are redacted; ``get_secret_value()`` returns it.

    Equality compares values (in constant time). Pickling carries the value (a SecretValue sent to another
    process arrives whole): to cross processes, send a :class:`SecretRef` and resolve it there instead.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"SecretValue holds a str, got {type(value).__name__}")
        self._value = value

    def get_secret_value(self) -> str:
        """The secret itself; call it only where the value is handed to the service that needs it."""
        return self._value

    def __repr__(self) -> str:
        return f"SecretValue('{_MASK}')"

    def __str__(self) -> str:
        return _MASK

    def __format__(self, format_spec: str) -> str:
        return format(_MASK, format_spec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretValue):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((SecretValue, self._value))

    def __reduce__(self) -> tuple:
        return (SecretValue, (self._value,))


@dataclass(frozen=True)
class SecretRef:
    """A picklable reference to a secret: ``env://NAME`` or ``kv://<vault>/<name>[/<version>]``; no value."""

    ref: str

    def __post_init__(self) -> None:
        parsed = _parse(self.ref)
        if parsed is None:
            raise InvalidSecretReferenceError(
                "a secret reference starts with env:// or kv:// (a literal secret is not a reference)")
        object.__setattr__(self, "ref", parsed[0])  # canonical form (lower-case scheme)

    @property
    def scheme(self) -> str:
        """``"env"`` or ``"kv"``."""
        return self.ref.split("://", 1)[0]

    @staticmethod
    def is_reference(text: object) -> bool:
        """True if ``text`` is a string starting with ``env://`` or ``kv://`` (well-formed or not)."""
        m = _REF.match(text) if isinstance(text, str) else None
        return m is not None and m.group("scheme").lower() in _REF_SCHEMES

    def resolve(self, **kwargs: Any) -> SecretValue:
        """Resolve in this process (``kwargs`` as for :func:`resolve_secret`)."""
        return resolve_secret(self, **kwargs)


def _parse(text: str) -> tuple[str, str, tuple[str, ...]] | None:
    """(canonical ref, scheme, parts) of a reference; None for a literal; raises if a reference is malformed."""
    if not isinstance(text, str):
        raise TypeError(f"a secret is a str, SecretValue or SecretRef, got {type(text).__name__}")
    m = _REF.match(text)
    if not m or m.group("scheme").lower() not in _REF_SCHEMES:
        return None
    scheme, rest = m.group("scheme").lower(), m.group("rest")
    if scheme == "env":
        if not _ENV_NAME.match(rest):
            raise InvalidSecretReferenceError(
                f"malformed env reference {_show(text)}: use env://NAME (letters, digits, '_')")
        return f"env://{rest}", scheme, (rest,)
    parts = tuple(rest.split("/"))
    if (len(parts) not in (2, 3) or not _VAULT_NAME.match(parts[0]) or not _SECRET_NAME.match(parts[1])
            or (len(parts) == 3 and not _VERSION.match(parts[2]))):
        raise InvalidSecretReferenceError(
            f"malformed Key Vault reference {_show(text)}: use kv://<vault>/<name>[/<version>] (vault: 3-24 "
            "letters, digits, '-'; name: letters, digits, '-'; version: letters and digits)")
    return f"kv://{'/'.join(parts)}", scheme, parts


def _show(text: str) -> str:
    """A malformed reference for a message: shown in full only if short and plain (it may be a typo'd secret)."""
    return repr(text) if len(text) <= 200 and text.isprintable() else repr(text[:12] + "...")


def vault_url_for(vault: str, vault_urls: Mapping[str, str] | None = None) -> str:
    """The URL of vault ``vault``: ``vault_urls[vault]``, ``$ODIBI_RAY_KEYVAULT_URL_<VAULT>``, or the DNS name."""
    url = (vault_urls or {}).get(vault) or os.environ.get(URL_ENV_PREFIX + vault.upper().replace("-", "_"))
    if not url:
        suffix = os.environ.get(SUFFIX_ENV) or DEFAULT_DNS_SUFFIX
        url = f"https://{vault}.{suffix.strip('.')}"
    if not url.lower().startswith("https://"):
        raise InvalidSecretReferenceError(f"vault URL for kv://{vault} must be https://, got {url!r}",
                                          ref=f"kv://{vault}")
    return url.rstrip("/")


# --- the resolver ------------------------------------------------------------------------------


@dataclass
class _Entry:
    value: SecretValue
    fetched: float  # time.monotonic() of the fetch; an entry serves calls whose ttl_s it is younger than
    credential: Any  # held so the id() in the cache key cannot be reused while the entry lives


class SecretResolver:
    """Resolves references in this process: one Key Vault client per vault and credential, a TTL cache.

    ``credential``: default credential for ``kv://`` (an ``azure.core.credentials.TokenCredential``).
    ``vault_urls``: vault name -> URL overrides. ``client_options``: extra ``SecretClient`` keyword
    arguments (``connection_verify``, ``retry_total``, ``verify_challenge_resource``, ...), over
    :data:`DEFAULT_CLIENT_OPTIONS`. ``ttl_s``: how old a cached Key Vault value may be (0: always fetch);
    a call may pass its own ``ttl_s``.
    Thread-safe; concurrent resolves of one reference make one request.
    """

    def __init__(self, credential: Any = None, *, vault_urls: Mapping[str, str] | None = None,
                 client_options: Mapping[str, Any] | None = None, ttl_s: float = DEFAULT_TTL_S) -> None:
        _check_ttl(ttl_s)
        self.credential = credential
        self.vault_urls = dict(vault_urls or {})
        self.client_options = {**DEFAULT_CLIENT_OPTIONS, **_check_options(client_options)}
        self.ttl_s = float(ttl_s)
        self._lock = threading.Lock()
        self._key_locks: dict[tuple, threading.Lock] = {}
        self._cache: dict[tuple, _Entry] = {}
        self._clients: dict[tuple, tuple[Any, Any]] = {}  # key -> (SecretClient, credential)
        self._fallback_credential: Any = None

    def __repr__(self) -> str:
        return f"SecretResolver(vaults={sorted(self.vault_urls)!r}, ttl_s={self.ttl_s})"

    def __getstate__(self) -> dict:
        raise TypeError("SecretResolver is per process and is not pickled: send SecretRef objects instead")

    def resolve(self, value_or_ref: str | SecretValue | SecretRef, *, credential: Any = None,
                vault_urls: Mapping[str, str] | None = None, client_options: Mapping[str, Any] | None = None,
                ttl_s: float | None = None) -> SecretValue:
        """A :class:`SecretValue` for a reference, a literal string, or a SecretValue (returned as is)."""
        if isinstance(value_or_ref, SecretValue):
            return value_or_ref
        text = value_or_ref.ref if isinstance(value_or_ref, SecretRef) else value_or_ref
        parsed = _parse(text)
        if parsed is None:
            return SecretValue(text)  # a literal secret
        ref, scheme, parts = parsed
        if scheme == "env":
            return _from_env(ref, parts[0])
        if ttl_s is not None:
            _check_ttl(ttl_s)
        urls = {**self.vault_urls, **(vault_urls or {})}
        options = {**self.client_options, **_check_options(client_options)}
        return self._from_vault(ref, parts, credential if credential is not None else self.credential,
                                urls, options, self.ttl_s if ttl_s is None else float(ttl_s))

    def clear_cache(self) -> None:
        """Forget every cached value (clients stay open)."""
        with self._lock:
            self._cache.clear()

    def close(self) -> None:
        """Forget cached values and close the Key Vault clients."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
            self._cache.clear()
        for client, _ in clients:
            try:
                client.close()
            except Exception:  # pragma: no cover - closing is best effort
                log.debug("closing a Key Vault client failed", exc_info=True)

    # --- Key Vault ----------------------------------------------------------------------------------

    def _from_vault(self, ref: str, parts: tuple[str, ...], credential: Any, vault_urls: Mapping[str, str],
                    options: dict[str, Any], ttl_s: float) -> SecretValue:
        vault, name = parts[0], parts[1]
        version = parts[2] if len(parts) == 3 else None
        url = vault_url_for(vault, vault_urls)
        key = (url, name, version, id(credential))
        with self._lock:
            entry = self._cache.get(key)
            if entry and time.monotonic() - entry.fetched < ttl_s:
                return entry.value
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # one request per reference, however many threads ask at once
            with self._lock:
                entry = self._cache.get(key)
                if entry and time.monotonic() - entry.fetched < ttl_s:
                    return entry.value
            client = self._client(url, credential, options)
            value = _fetch(client, ref, name, version)
            log.debug("fetched secret %s from %s", ref, url)
            with self._lock:
                self._cache[key] = _Entry(value, time.monotonic(), credential)
            return value

    def _client(self, url: str, credential: Any, options: dict[str, Any]) -> Any:
        from azure.keyvault.secrets import SecretClient

        if credential is None:
            credential = self._default_azure_credential()
        key = (url, id(credential), tuple(sorted((k, repr(v)) for k, v in options.items())))
        with self._lock:
            found = self._clients.get(key)
        if found is not None:
            return found[0]
        client = SecretClient(url, credential, **options)
        with self._lock:
            found = self._clients.setdefault(key, (client, credential))
        if found[0] is not client:
            client.close()
        return found[0]

    def _default_azure_credential(self) -> Any:
        with self._lock:
            if self._fallback_credential is None:
                from azure.identity import DefaultAzureCredential

                log.info("no credential given for Key Vault: using DefaultAzureCredential")
                self._fallback_credential = DefaultAzureCredential()
            return self._fallback_credential


def _fetch(client: Any, ref: str, name: str, version: str | None) -> SecretValue:
    """Get one secret through the SDK, mapping its errors to ours (messages name ``ref`` only)."""
    from azure.core.exceptions import (ClientAuthenticationError, HttpResponseError, ResourceNotFoundError,
                                       ServiceRequestError, ServiceResponseError)

    try:
        secret = client.get_secret(name, version)
    except ResourceNotFoundError:
        raise SecretNotFoundError(f"secret {ref} not found in its vault", ref=ref) from None
    except ClientAuthenticationError as exc:  # 401, or the credential could not get a token
        why = f"HTTP {exc.status_code}" if exc.status_code else "no token"
        raise SecretAccessDeniedError(f"access to secret {ref} denied ({why}): check the credential",
                                      ref=ref) from None
    except HttpResponseError as exc:
        status, code = exc.status_code, _error_code(exc)
        if status == 403:
            raise SecretAccessDeniedError(
                f"access to secret {ref} denied (HTTP 403{code}): the identity lacks 'get' permission",
                ref=ref) from None
        if status in (408, 429) or (status or 0) >= 500:
            raise SecretUnavailableError(f"vault of secret {ref} kept failing (HTTP {status}{code})",
                                         ref=ref) from None
        raise SecretError(f"could not get secret {ref} (HTTP {status}{code})", ref=ref) from None
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise SecretUnavailableError(f"vault of secret {ref} unreachable ({type(exc).__name__})",
                                     ref=ref) from None
    if secret.value is None:
        raise SecretError(f"secret {ref} has no value", ref=ref)
    return SecretValue(secret.value)


def _error_code(exc: Any) -> str:
    code = getattr(getattr(exc, "error", None), "code", None)
    return f", {code}" if isinstance(code, str) and code.isprintable() and len(code) < 80 else ""


def _from_env(ref: str, name: str) -> SecretValue:
    value = os.environ.get(name)
    if value is None:
        raise SecretNotFoundError(f"secret {ref}: environment variable {name} is not set", ref=ref)
    if value == "":
        raise SecretNotFoundError(f"secret {ref}: environment variable {name} is empty", ref=ref)
    return SecretValue(value)


def _check_ttl(ttl_s: float) -> None:
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not ttl_s >= 0:
        raise ValueError(f"secret cache ttl_s must be a number >= 0, got {ttl_s!r}")


def _check_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    out = dict(options or {})
    if out.get("logging_enable"):
        raise ValueError("logging_enable=True would log Key Vault response bodies, i.e. secret values: "
                         "not allowed")
    return out


# --- process-wide default ----------------------------------------------------------------------

_default = SecretResolver()


def default_resolver() -> SecretResolver:
    """This process's resolver (what :func:`resolve_secret` uses)."""
    return _default


def set_default_credential(credential: Any) -> None:
    """Credential for ``kv://`` in this process when a call gives none (None: back to DefaultAzureCredential)."""
    _default.credential = credential


def resolve_secret(value_or_ref: str | SecretValue | SecretRef, *, credential: Any = None,
                   vault_urls: Mapping[str, str] | None = None, client_options: Mapping[str, Any] | None = None,
                   ttl_s: float | None = None) -> SecretValue:
    """Resolve ``env://NAME``, ``kv://<vault>/<name>[/<version>]`` or a literal to a :class:`SecretValue`."""
    return _default.resolve(value_or_ref, credential=credential, vault_urls=vault_urls,
                            client_options=client_options, ttl_s=ttl_s)


def clear_cache() -> None:
    """Forget this process's cached Key Vault values."""
    _default.clear_cache()
