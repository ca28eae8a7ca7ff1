"""Secrets: redacted values, env:// and kv:// references, the per-process TTL cache, error mapping.

The kv:// tests run the real ``azure.keyvault.secrets.SecretClient`` against tests/kv_standin.py, a
STAND-IN for Azure Key Vault (no Key Vault emulator exists): a small server on 127.0.0.1 speaking the Key
Vault REST protocol over real TLS (a trustme CA), including the 401 bearer challenge the SDK answers. The
credential is a tiny static-token class, so no identity endpoint is ever contacted. A test against a real
vault runs only when ODIBI_RAY_TEST_KEYVAULT and ODIBI_RAY_TEST_SECRET (and AZURE_TENANT_ID,
AZURE_CLIENT_ID, AZURE_CLIENT_SECRET) are set.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import pickle
import socket
import threading
import time
import traceback

import pytest
from azure.core.credentials import AccessToken

from odibi_ray.errors import OdibiError
from odibi_ray.storage.secrets import (DEFAULT_CLIENT_OPTIONS, InvalidSecretReferenceError, SecretAccessDeniedError,
                               SecretError, SecretNotFoundError, SecretRef, SecretResolver,
                               SecretUnavailableError, SecretValue, clear_cache, default_resolver,
                               resolve_secret, set_default_credential, vault_url_for)
from tests.kv_standin import KeyVaultStandIn

VALUE = "s3cr3t-Value-7f1e"          # a secret value that must never show up where it should not
TOKEN = "static-test-token-5b2c9a"   # the bearer token the stand-in accepts
DENIED_TOKEN = "token-without-get-permission"


class StaticTokenCredential:
    """A TokenCredential that hands out a fixed bearer token (no identity endpoint involved)."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.calls = 0

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        self.calls += 1
        return AccessToken(self.token, int(time.time()) + 3600)


@pytest.fixture(scope="session")
def kv_standin():
    """The Key Vault stand-in (see tests/kv_standin.py), one per test session."""
    server = KeyVaultStandIn(TOKEN, denied_tokens=[DENIED_TOKEN]).start()
    yield server
    server.stop()


@pytest.fixture
def kv_options(kv_standin):
    """SDK options for the stand-in: trust its CA, accept its challenge resource, fail fast."""
    return {"connection_verify": kv_standin.ca_path, "verify_challenge_resource": False, "retry_total": 0}


@pytest.fixture
def resolver(kv_standin, kv_options):
    """A fresh per-test resolver pointed at the stand-in as vault 'standin'."""
    r = SecretResolver(StaticTokenCredential(), vault_urls={"standin": kv_standin.url}, client_options=kv_options)
    yield r
    r.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- SecretValue -------------------------------------------------------------------------------


def test_secret_value_is_redacted_in_every_text_form(caplog):
    s = SecretValue(VALUE)
    texts = [repr(s), str(s), f"{s}", f"{s!r}", f"{s!s}", f"{s:>30}",
             "%s %r" % (s, s),  # noqa: UP031 - %-formatting is one of the text forms under test
             "{} {!r}".format(s, s),  # noqa: UP032 - and so is str.format
             repr({"password": s}), str([s, (s,)]), repr({"nested": [{"x": s}]}),
             str(ValueError(f"login failed with {s}")), repr(ValueError(s)), str(KeyError(s))]
    try:
        raise RuntimeError(f"cannot connect using {s}", s)
    except RuntimeError as exc:
        texts.append("".join(traceback.format_exception(exc)))
    logger = logging.getLogger("odibi_ray.test_secrets")
    with caplog.at_level(logging.DEBUG):
        logger.debug("value %s", s)
        logger.info("value %r in %s", s, {"k": s})
        logger.warning("value", extra={"secret": s})
        try:
            raise ValueError(s)
        except ValueError:
            logger.exception("failed with %s", s)
    texts += [r.getMessage() for r in caplog.records] + [caplog.text]
    assert repr(s) == "SecretValue('**********')" and str(s) == "**********"
    assert len(caplog.records) == 4
    for text in texts:
        assert VALUE not in text
        assert "*****" in text or text == "value"


def test_secret_value_gives_its_value_on_request_and_compares_by_value():
    s = SecretValue(VALUE)
    assert s.get_secret_value() == VALUE
    assert s == SecretValue(VALUE) and hash(s) == hash(SecretValue(VALUE))
    assert s != SecretValue(VALUE + "x")
    assert s != VALUE  # a secret is not equal to a plain string
    assert len({s, SecretValue(VALUE)}) == 1
    with pytest.raises(TypeError, match="SecretValue holds a str"):
        SecretValue(b"bytes")  # type: ignore[arg-type]


def test_pickling_a_value_carries_it_but_a_reference_carries_none():
    """Documented: a pickled SecretValue holds the value; SecretRef is how secrets should cross processes."""
    s = SecretValue(VALUE)
    data = pickle.dumps(s)
    assert VALUE.encode() in data and pickle.loads(data) == s
    ref = SecretRef("env://ODIBI_TEST_SECRET")
    data = pickle.dumps(ref)
    assert VALUE.encode() not in data and pickle.loads(data) == ref


def test_a_reference_resolves_in_the_process_that_receives_it(monkeypatch):
    monkeypatch.setenv("ODIBI_TEST_CHILD_SECRET", VALUE)  # the spawned child inherits the environment
    ref = SecretRef("env://ODIBI_TEST_CHILD_SECRET")
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        child_pid, value = pool.submit(_resolve_in_child, ref).result(timeout=60)
    assert child_pid != os.getpid()
    assert value == SecretValue(VALUE)


def _resolve_in_child(ref: SecretRef) -> tuple[int, SecretValue]:
    return os.getpid(), ref.resolve()


# --- references --------------------------------------------------------------------------------


def test_env_reference_literal_and_value_passthrough(monkeypatch):
    monkeypatch.setenv("ODIBI_TEST_SECRET", VALUE)
    assert resolve_secret("env://ODIBI_TEST_SECRET") == SecretValue(VALUE)
    assert resolve_secret(SecretRef("env://ODIBI_TEST_SECRET")) == SecretValue(VALUE)
    assert SecretRef("ENV://ODIBI_TEST_SECRET").ref == "env://ODIBI_TEST_SECRET"
    monkeypatch.setenv("ODIBI_TEST_SECRET", "rotated")
    assert resolve_secret("env://ODIBI_TEST_SECRET").get_secret_value() == "rotated"  # env is read each time
    literal = resolve_secret("plain literal password")
    assert isinstance(literal, SecretValue) and literal.get_secret_value() == "plain literal password"
    assert resolve_secret("https://not-a-ref/x").get_secret_value() == "https://not-a-ref/x"
    s = SecretValue(VALUE)
    assert resolve_secret(s) is s


def test_missing_or_empty_env_variable_names_the_variable(monkeypatch):
    monkeypatch.delenv("ODIBI_TEST_MISSING", raising=False)
    with pytest.raises(SecretNotFoundError) as info:
        resolve_secret("env://ODIBI_TEST_MISSING")
    assert str(info.value) == "secret env://ODIBI_TEST_MISSING: environment variable ODIBI_TEST_MISSING is not set"
    assert info.value.ref == "env://ODIBI_TEST_MISSING"
    assert isinstance(info.value, SecretError) and isinstance(info.value, OdibiError)
    assert isinstance(info.value, KeyError)
    monkeypatch.setenv("ODIBI_TEST_MISSING", "")
    with pytest.raises(SecretNotFoundError, match="ODIBI_TEST_MISSING is empty"):
        resolve_secret("env://ODIBI_TEST_MISSING")


@pytest.mark.parametrize("text", [
    "env://", "env://1BAD", "env://HAS-DASH", "kv://", "kv://vault", "kv://vault/", "kv://v/name",
    "kv://1vault/name", "kv://vault/na me", "kv://vault/name/abc/extra", "kv://vault/name/bad-version",
    "kv://evil.example.com#/name", "kv://vault-/name",
])
def test_malformed_reference_is_rejected_precisely(text):
    with pytest.raises(InvalidSecretReferenceError) as info:
        resolve_secret(text)
    assert isinstance(info.value, ValueError)
    assert "env://NAME" in str(info.value) or "kv://<vault>/<name>" in str(info.value)


def test_secret_ref_accepts_references_only():
    with pytest.raises(InvalidSecretReferenceError, match="starts with env:// or kv://"):
        SecretRef("just a literal")
    with pytest.raises(TypeError):
        resolve_secret(42)  # type: ignore[arg-type]
    ref = SecretRef("KV://my-vault/db-password/0123abcd")
    assert ref.ref == "kv://my-vault/db-password/0123abcd" and ref.scheme == "kv"
    assert repr(ref) == "SecretRef(ref='kv://my-vault/db-password/0123abcd')"
    assert SecretRef.is_reference("kv://x") and not SecretRef.is_reference("s3://x")


def test_vault_url_from_mapping_environment_or_dns(monkeypatch):
    monkeypatch.delenv("ODIBI_RAY_KEYVAULT_URL_MY_VAULT", raising=False)
    monkeypatch.delenv("ODIBI_RAY_KEYVAULT_DNS_SUFFIX", raising=False)
    assert vault_url_for("my-vault") == "https://my-vault.vault.azure.net"
    monkeypatch.setenv("ODIBI_RAY_KEYVAULT_DNS_SUFFIX", "vault.azure.cn")
    assert vault_url_for("my-vault") == "https://my-vault.vault.azure.cn"
    monkeypatch.setenv("ODIBI_RAY_KEYVAULT_URL_MY_VAULT", "https://127.0.0.1:8443/")
    assert vault_url_for("my-vault") == "https://127.0.0.1:8443"
    assert vault_url_for("my-vault", {"my-vault": "https://localhost:9"}) == "https://localhost:9"
    with pytest.raises(InvalidSecretReferenceError, match="must be https://"):
        vault_url_for("my-vault", {"my-vault": "http://127.0.0.1:80"})


def test_resolver_options_are_checked():
    with pytest.raises(ValueError, match="ttl_s must be a number >= 0"):
        SecretResolver(ttl_s=-1)
    with pytest.raises(ValueError, match="would log Key Vault response bodies"):
        SecretResolver(client_options={"logging_enable": True})
    with pytest.raises(ValueError, match="would log Key Vault response bodies"):
        resolve_secret("kv://standin/x", client_options={"logging_enable": True})
    with pytest.raises(TypeError, match="send SecretRef objects instead"):
        pickle.dumps(SecretResolver())
    assert SecretResolver().client_options == dict(DEFAULT_CLIENT_OPTIONS)


def test_errors_pickle_with_their_reference():
    for cls in (SecretError, SecretNotFoundError, SecretAccessDeniedError, SecretUnavailableError,
                InvalidSecretReferenceError):
        err = pickle.loads(pickle.dumps(cls("secret kv://v1/name: boom", ref="kv://v1/name")))
        assert type(err) is cls and err.ref == "kv://v1/name" and str(err) == "secret kv://v1/name: boom"


# --- Key Vault, against the stand-in -----------------------------------------------------------


def test_kv_reference_fetches_latest_or_given_version(kv_standin, resolver):
    old = kv_standin.set_secret("app-password", "first-" + VALUE)
    kv_standin.set_secret("app-password", VALUE)
    before = kv_standin.served("app-password")
    value = resolver.resolve("kv://standin/app-password")
    assert isinstance(value, SecretValue) and value.get_secret_value() == VALUE
    assert resolver.resolve(f"kv://standin/app-password/{old}").get_secret_value() == "first-" + VALUE
    assert kv_standin.served("app-password") == before + 2
    assert resolver.credential.calls >= 1  # the SDK asked the injected credential for its token


def test_kv_value_is_cached_until_its_ttl_expires(kv_standin, kv_options):
    kv_standin.set_secret("cached", "v1")
    r = SecretResolver(StaticTokenCredential(), vault_urls={"standin": kv_standin.url},
                       client_options=kv_options, ttl_s=0.5)
    assert r.resolve("kv://standin/cached").get_secret_value() == "v1"
    count, served = len(kv_standin.requests), kv_standin.served("cached")
    kv_standin.set_secret("cached", "v2")  # rotated in the vault
    assert r.resolve("kv://standin/cached").get_secret_value() == "v1"  # from the cache
    assert len(kv_standin.requests) == count  # no request at all
    time.sleep(0.55)
    assert r.resolve("kv://standin/cached").get_secret_value() == "v2"  # expired: fetched again
    assert kv_standin.served("cached") == served + 1
    r.clear_cache()
    r.resolve("kv://standin/cached")
    assert kv_standin.served("cached") == served + 2
    r.resolve("kv://standin/cached", ttl_s=0)  # ttl 0: no cache
    r.resolve("kv://standin/cached", ttl_s=0)
    assert kv_standin.served("cached") == served + 4
    r.close()


def test_concurrent_resolves_of_one_reference_make_one_request(kv_standin, resolver):
    kv_standin.set_secret("shared", VALUE)
    before = kv_standin.served("shared")
    barrier = threading.Barrier(8)

    def work() -> SecretValue:
        barrier.wait()
        return resolver.resolve("kv://standin/shared")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        values = list(pool.map(lambda _: work(), range(8)))
    assert values == [SecretValue(VALUE)] * 8
    assert kv_standin.served("shared") == before + 1


def test_cache_is_per_credential(kv_standin, resolver):
    """A value fetched with one credential is not handed to a caller who brings another."""
    kv_standin.set_secret("per-cred", VALUE)
    resolver.resolve("kv://standin/per-cred")
    with pytest.raises(SecretAccessDeniedError):
        resolver.resolve("kv://standin/per-cred", credential=StaticTokenCredential("wrong-token"))


def test_unknown_secret_or_version_is_not_found_naming_the_reference(kv_standin, resolver):
    with pytest.raises(SecretNotFoundError) as info:
        resolver.resolve("kv://standin/no-such-secret")
    assert str(info.value) == "secret kv://standin/no-such-secret not found in its vault"
    assert info.value.ref == "kv://standin/no-such-secret"
    assert kv_standin.requests[-1].status == 404
    kv_standin.set_secret("versioned", VALUE)
    with pytest.raises(SecretNotFoundError, match="kv://standin/versioned/0000ffff"):
        resolver.resolve("kv://standin/versioned/0000ffff")


def test_wrong_token_is_access_denied_and_never_shown(kv_standin, kv_options):
    kv_standin.set_secret("guarded", VALUE)
    bad = "wrong-token-9d8e7f"
    r = SecretResolver(StaticTokenCredential(bad), vault_urls={"standin": kv_standin.url}, client_options=kv_options)
    with pytest.raises(SecretAccessDeniedError) as info:
        r.resolve("kv://standin/guarded")
    assert "kv://standin/guarded" in str(info.value) and "HTTP 401" in str(info.value)
    assert kv_standin.requests[-1].status == 401 and kv_standin.requests[-1].had_token
    full = "".join(traceback.format_exception(info.value))
    assert bad not in full and VALUE not in full


def test_identity_without_permission_is_access_denied(kv_standin, kv_options):
    kv_standin.set_secret("guarded", VALUE)
    r = SecretResolver(StaticTokenCredential(DENIED_TOKEN), vault_urls={"standin": kv_standin.url},
                       client_options=kv_options)
    with pytest.raises(SecretAccessDeniedError, match=r"HTTP 403, Forbidden\): the identity lacks 'get'"):
        r.resolve("kv://standin/guarded")


def test_dead_vault_is_unavailable_quickly(kv_options):
    url = f"https://127.0.0.1:{_free_port()}"  # nothing listens there
    r = SecretResolver(StaticTokenCredential(), vault_urls={"gone": url}, client_options=kv_options)
    start = time.monotonic()
    with pytest.raises(SecretUnavailableError, match=r"vault of secret kv://gone/name unreachable"):
        r.resolve("kv://gone/name")
    assert time.monotonic() - start < 2
    # with the library's default retries (not the test's retry_total=0) it still gives up within 10 s
    r = SecretResolver(StaticTokenCredential(), vault_urls={"gone": url},
                       client_options={"connection_verify": kv_options["connection_verify"]})
    start = time.monotonic()
    with pytest.raises(SecretUnavailableError):
        r.resolve("kv://gone/name")
    assert time.monotonic() - start < 10


def test_tls_is_real_an_untrusted_certificate_is_refused(kv_standin):
    """Without the stand-in's CA the SDK refuses its certificate: the stand-in really speaks TLS."""
    kv_standin.set_secret("tls-check", VALUE)
    r = SecretResolver(StaticTokenCredential(), vault_urls={"standin": kv_standin.url},
                       client_options={"verify_challenge_resource": False, "retry_total": 0})
    with pytest.raises(SecretUnavailableError, match="kv://standin/tls-check"):
        r.resolve("kv://standin/tls-check")


def test_no_secret_or_token_in_logs(kv_standin, kv_options, caplog):
    kv_standin.set_secret("logged", VALUE)
    r = SecretResolver(StaticTokenCredential(), vault_urls={"standin": kv_standin.url}, client_options=kv_options)
    with caplog.at_level(logging.DEBUG):
        assert r.resolve("kv://standin/logged").get_secret_value() == VALUE
        with pytest.raises(SecretNotFoundError):
            r.resolve("kv://standin/logged-missing")
    names = {rec.name for rec in caplog.records}
    assert "azure.core.pipeline.policies.http_logging_policy" in names  # the SDK's HTTP logging was on
    assert any(rec.name == "odibi_ray.storage.secrets" and "kv://standin/logged" in rec.getMessage()
               for rec in caplog.records)
    assert "Authorization" in caplog.text  # the header is logged ... redacted
    for rec in caplog.records:
        text = rec.getMessage() + (rec.exc_text or "")
        assert VALUE not in text and TOKEN not in text
    assert VALUE not in caplog.text and TOKEN not in caplog.text
    r.close()


def test_process_default_credential_is_used(kv_standin, kv_options):
    kv_standin.set_secret("default-cred", VALUE)
    cred = StaticTokenCredential()
    set_default_credential(cred)
    try:
        value = resolve_secret("kv://standin/default-cred", vault_urls={"standin": kv_standin.url},
                               client_options=kv_options)
        assert value.get_secret_value() == VALUE and cred.calls >= 1
        assert SecretRef("kv://standin/default-cred").resolve(vault_urls={"standin": kv_standin.url}) == value
    finally:
        set_default_credential(None)
        clear_cache()
        default_resolver().close()


def test_without_any_credential_falls_back_to_default_azure_credential(kv_standin, kv_options, monkeypatch):
    """MOCK, said so: DefaultAzureCredential probes cloud addresses, so it is replaced by a static-token class
    here; the test proves the fallback is taken (and only then), the vault is still the stand-in."""
    import azure.identity

    made = []

    class FakeDefaultAzureCredential(StaticTokenCredential):
        def __init__(self) -> None:
            super().__init__()
            made.append(self)

    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", FakeDefaultAzureCredential)
    kv_standin.set_secret("fallback", VALUE)
    r = SecretResolver(vault_urls={"standin": kv_standin.url}, client_options=kv_options)
    assert r.resolve("kv://standin/fallback").get_secret_value() == VALUE
    r.clear_cache()
    r.resolve("kv://standin/fallback")
    assert len(made) == 1 and made[0].calls >= 1  # built once per resolver, reused
    r.resolve("kv://standin/fallback", credential=StaticTokenCredential(), ttl_s=0)
    assert len(made) == 1  # an explicit credential does not touch the fallback
    r.close()


# --- a real vault (opt-in) ---------------------------------------------------------------------

_REAL = ("ODIBI_RAY_TEST_KEYVAULT", "ODIBI_RAY_TEST_SECRET", "AZURE_TENANT_ID", "AZURE_CLIENT_ID",
         "AZURE_CLIENT_SECRET")


@pytest.mark.skipif(not all(os.environ.get(n) for n in _REAL),
                    reason="real Key Vault test is opt-in: set " + ", ".join(_REAL))
@pytest.mark.external_network
def test_real_key_vault():
    """Reads ODIBI_RAY_TEST_SECRET from vault ODIBI_RAY_TEST_KEYVAULT with a service principal."""
    from azure.identity import ClientSecretCredential

    cred = ClientSecretCredential(os.environ["AZURE_TENANT_ID"], os.environ["AZURE_CLIENT_ID"],
                                  os.environ["AZURE_CLIENT_SECRET"])
    r = SecretResolver(cred)
    ref = f"kv://{os.environ['ODIBI_RAY_TEST_KEYVAULT']}/{os.environ['ODIBI_RAY_TEST_SECRET']}"
    value = r.resolve(ref)
    assert isinstance(value, SecretValue) and value.get_secret_value()
    with pytest.raises(SecretNotFoundError):
        r.resolve(f"kv://{os.environ['ODIBI_RAY_TEST_KEYVAULT']}/odibi-ray-no-such-secret-4e1f")
    r.close()
