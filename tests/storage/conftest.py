"""The storage conformance fixture: one `storage` per adapter, each on a fresh prefix.

Each adapter's own fixture (`local_storage`, `azurite_storage`, `s3_storage`) lives in its
fixtures_<name>.py module (registered in tests/conftest.py) and yields an adapter rooted at a prefix
unique to the test.
"""

import pytest

ADAPTERS = ["local", "azurite", "s3"]


@pytest.fixture(params=ADAPTERS)
def storage(request):
    """Every storage adapter, against a real folder or a real protocol server on 127.0.0.1."""
    return request.getfixturevalue(f"{request.param}_storage")
