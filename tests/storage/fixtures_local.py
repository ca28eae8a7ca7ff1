"""Fixtures for the local storage adapter: a LocalStorage on a fresh, real temp folder per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from odibi_ray.storage.local import LocalStorage


@pytest.fixture
def local_storage(tmp_path) -> Iterator[LocalStorage]:
    """A LocalStorage rooted at a fresh folder (made on first write, like a new prefix in a bucket)."""
    yield LocalStorage(tmp_path / "store")
