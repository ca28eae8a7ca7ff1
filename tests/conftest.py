"""Shared fixtures: one local Ray per test session, a guard against non-loopback connections.

Network safety: every test talks only to 127.0.0.x. Ray is kept on loopback by
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 and never reports usage (RAY_USAGE_STATS_ENABLED=0); both are set
here before Ray is imported, and .ci/run sets them too.
"""

from __future__ import annotations

import ipaddress
import os
import socket

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
# A `ray start` cluster still sends one "usage stats disabled" notice: point it at a closed local port.
os.environ["RAY_USAGE_STATS_REPORT_URL"] = "http://127.0.0.1:9/"
# Ray's dashboard process asks cloud metadata addresses (169.254.169.254, metadata.google.internal) which
# cloud it runs on, whatever the usage-stats setting. Route every HTTP(S) call that is not to loopback
# through a closed loopback port, so such probes fail at once without leaving the machine. (`./dev test`
# also runs the suite in a network namespace with loopback only.)
for _var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
    os.environ[_var] = "http://127.0.0.1:9"
for _var in ("NO_PROXY", "no_proxy"):
    os.environ[_var] = "127.0.0.1,localhost,127.0.0.0/8,::1"
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

import pytest  # noqa: E402

pytest_plugins = [
    "tests.storage.fixtures_local",
    "tests.storage.fixtures_azurite",
    "tests.storage.fixtures_s3",
    "tests.storage.fixtures_kafka",
]

def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: The session's Ray serves its Prometheus metrics endpoint here (127.0.0.1), reporting every second, so that the
#: tests can scrape what odibi_ray publishes through ray.util.metrics (tests/test_live_metrics.py).
RAY_METRICS_PORT = _free_loopback_port()
RAY_LOCAL_ARGS = dict(address="local", num_cpus=2, include_dashboard=False,
                      object_store_memory=200 * 1024 * 1024, log_to_driver=True,
                      _metrics_export_port=RAY_METRICS_PORT, _system_config={"metrics_report_interval_ms": 1000})


# --- network guard ---------------------------------------------------------------------------------

class NonLoopbackConnection(ConnectionRefusedError):
    """Raised to the code that tried to leave loopback; the test fails at teardown even if it is caught."""


_violations: list[str] = []
_allow_network = [False]  # set for tests marked external_network (opt-in real-cloud tests)


def _is_loopback(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False  # a host name: would need DNS, which is itself a way out


@pytest.fixture(autouse=True, scope="session")
def _loopback_only():
    """Refuse, and record, any connection from the test process to an address other than loopback.

    It covers the pytest process (the driver, the storage clients); code in Ray worker processes is
    kept on loopback by Ray's own settings (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, checked by a test).
    """
    original_connect, original_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def refuse(address):
        if _allow_network[0]:
            return
        _violations.append(repr(address))
        raise NonLoopbackConnection(f"test tried to connect to non-loopback address {address!r}")

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
            refuse(address)
        return original_connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
            refuse(address)
        return original_connect_ex(self, address)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
    yield
    socket.socket.connect, socket.socket.connect_ex = original_connect, original_connect_ex


@pytest.fixture(autouse=True, scope="session")
def _scheduler_checks_its_invariants():
    """Every run in the tests checks the scheduler's state invariants after each batch of outcomes."""
    from odibi_ray.execution.scheduler import Scheduler

    Scheduler.check_each_step = True
    yield
    Scheduler.check_each_step = False


@pytest.fixture(autouse=True)
def _no_connection_left_loopback(request):
    """Fail the test if anything in it tried to leave loopback, even if the error was swallowed.

    Only tests marked ``external_network`` (opt-in, real cloud services, skipped by default) may."""
    del _violations[:]
    _allow_network[0] = request.node.get_closest_marker("external_network") is not None
    yield
    _allow_network[0] = False
    assert not _violations, f"connections to non-loopback addresses attempted: {_violations}"


# --- Ray -------------------------------------------------------------------------------------------

_local_ray_address: list[str] = []


@pytest.fixture
def ray_local():
    """A local single-node Ray, started once per session (again only after a cluster module ran)."""
    import ray

    if ray.is_initialized() and _local_ray_address and ray.get_runtime_context().gcs_address == _local_ray_address[0]:
        yield ray
        return
    if ray.is_initialized():
        ray.shutdown()
    ray.init(**RAY_LOCAL_ARGS)
    _local_ray_address[:] = [ray.get_runtime_context().gcs_address]
    yield ray


@pytest.fixture(params=["local", "azurite"])
def store(request):
    """Checkpoint storage: a LocalStorage folder, or ADLSStorage on Azurite."""
    return request.getfixturevalue(f"{request.param}_storage")


@pytest.fixture
def marks(tmp_path):
    """A folder where test nodes leave a mark each time they run (cp_nodes.ran counts them)."""
    d = tmp_path / "marks"
    d.mkdir()
    return d


@pytest.fixture(params=["local", "ray"])
def backend(request):
    """Run a test on both backends: the in-process thread pool and real Ray tasks."""
    if request.param == "ray":
        request.getfixturevalue("ray_local")
    return request.param


def pytest_collection_modifyitems(config, items):
    """Multi-node cluster tests restart Ray: run them after everything else."""
    items.sort(key=lambda item: 1 if item.get_closest_marker("cluster") else 0)
