"""The URI factory: ``scheme_of`` / ``open_storage`` on bad input, plain paths and ``file://``, ``redact_uri``.

ADLS and S3 URI parsing details are tested with their adapters; here only clearly malformed ADLS URIs are
checked (the S3 adapter module, odibi_ray/storage/arrowfs.py, did not exist when this file was written).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from odibi_ray.errors import InvalidURIError
from odibi_ray.storage import open_storage, redact_uri, scheme_of
from odibi_ray.storage.local import LocalStorage

SECRETS = ("hunter2", "SECRETSIG", "s3cr3t")


def assert_no_secret(message: str) -> None:
    for secret in SECRETS:
        assert secret not in message, message


# --- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["", "   ", None, 42, b"/tmp/x"])
def test_empty_or_non_string_uri(uri) -> None:
    for fn in (scheme_of, open_storage):
        with pytest.raises(InvalidURIError, match="non-empty string"):
            fn(uri)


@pytest.mark.parametrize("uri", ["ftp://x", "http://example.org/data", "gs://bucket/p", "FTP://X"])
def test_unknown_scheme(uri: str) -> None:
    assert scheme_of(uri) == uri.split(":")[0].lower()
    with pytest.raises(InvalidURIError, match=r"unknown storage scheme '(ftp|http|gs)'.*use a path, file://"):
        open_storage(uri)


@pytest.mark.parametrize("uri", ["c:relative", "s3:bucket/key", "mailto:someone", "://nothing", "1ab://x"])
def test_garbage_that_is_neither_path_nor_uri(uri: str) -> None:
    with pytest.raises(InvalidURIError, match="malformed storage URI"):
        scheme_of(uri)
    with pytest.raises(InvalidURIError, match="malformed storage URI"):
        open_storage(uri)


@pytest.mark.parametrize("uri", ["file:/abs/path", "s3:/bucket/key", "C:\\data\\x", "abfss:/fs@acct/x"])
def test_uri_typos_are_not_taken_for_relative_folders(uri: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidURIError, match="looks like a URI"):
        open_storage(uri)
    assert os.listdir(tmp_path) == []  # no folder named "file:" or "s3:" was made


def test_error_messages_never_show_credentials() -> None:
    for uri in ["ftp://user:hunter2@host/p?sig=SECRETSIG", "c:relative?token=s3cr3t",
                "file:///data?sig=SECRETSIG", "file://user:hunter2@host/p", "s3:/b?secret=s3cr3t"]:
        with pytest.raises(InvalidURIError) as err:
            open_storage(uri)
        assert_no_secret(str(err.value))


@pytest.mark.parametrize("uri", ["file://", "file://relative/x", "file://server/share/x", "file:///data?x=1",
                                 "file:///data#frag"])
def test_malformed_file_uris(uri: str) -> None:
    with pytest.raises(InvalidURIError, match="file URI"):
        open_storage(uri)


def test_unknown_option_for_local_storage_is_a_type_error(tmp_path) -> None:
    with pytest.raises(TypeError, match="account_key"):
        open_storage(str(tmp_path), account_key="s3cr3t")


@pytest.mark.parametrize("uri", ["abfss://", "abfs://", "abfss://fs@", "abfss://@acct.dfs.core.windows.net/p",
                                 "abfss://fs@acct.dfs.core.windows.net/p?sv=2022&sig=SECRETSIG"])
def test_clearly_malformed_adls_uris(uri: str) -> None:
    with pytest.raises(InvalidURIError) as err:
        open_storage(uri)
    assert_no_secret(str(err.value))


# --- local paths ------------------------------------------------------------------------------------------


def test_plain_absolute_path_gives_local_storage(tmp_path) -> None:
    storage = open_storage(str(tmp_path / "store"))
    assert scheme_of(str(tmp_path)) == "file"
    assert isinstance(storage, LocalStorage) and storage.root == str(tmp_path / "store")
    assert storage.uri == (tmp_path / "store").as_uri()
    storage.put("x/y", b"data")
    assert (tmp_path / "store" / "x" / "y").is_file()


def test_relative_path_is_resolved_against_the_cwd(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    storage = open_storage("data/store")
    assert isinstance(storage, LocalStorage) and storage.root == str(tmp_path / "data" / "store")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert open_storage("~/s").root == str(tmp_path / "home" / "s")


@pytest.mark.parametrize("form", ["file://{p}", "file://localhost{p}", "FILE://{p}"])
def test_file_uri_gives_local_storage(form: str, tmp_path) -> None:
    storage = open_storage(form.format(p=tmp_path / "store"))
    assert isinstance(storage, LocalStorage) and storage.root == str(tmp_path / "store")


def test_file_uri_is_percent_decoded_and_round_trips(tmp_path) -> None:
    folder = tmp_path / "with space%and#hash"
    storage = open_storage(folder.as_uri())
    assert storage.root == str(folder)
    assert open_storage(storage.uri) == storage
    storage.put("k", b"v")
    assert (folder / "k").is_file()


def test_options_reach_the_adapter(tmp_path) -> None:
    storage = open_storage(tmp_path.as_uri(), fsync=False, create_root=False)
    assert (storage.fsync, storage.create_root) == (False, False)


# --- redact_uri --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("uri, shown", [
    ("abfss://fs@acct.dfs.core.windows.net/p?sv=2022-11-02&sig=SECRETSIG", "abfss://fs@acct.dfs.core.windows.net/p"),
    ("s3://AKIA:s3cr3t@bucket/prefix", "s3://***@bucket/prefix"),
    ("https://user:hunter2@host:8080/x?token=s3cr3t#frag", "https://***@host:8080/x"),
    ("file:///tmp/a#b", "file:///tmp/a"),
    ("/plain/path", "/plain/path"),
    ("abfss://fs@acct.dfs.core.windows.net/p", "abfss://fs@acct.dfs.core.windows.net/p"),
])
def test_redact_uri(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown
    assert_no_secret(redact_uri(uri))


def test_repr_of_an_opened_storage_is_its_uri(tmp_path) -> None:
    storage = open_storage(str(tmp_path))
    assert repr(storage) == f"LocalStorage({Path(tmp_path).as_uri()!r})"
