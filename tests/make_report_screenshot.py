"""The run report as a browser shows it: a 200-node run, headless Chromium driven over the DevTools protocol, PNGs.

Used by tests/test_report_browser.py (the run on the local backend), and run by hand to make the README's
screenshot, docs/report-200-nodes.png (the run on a local Ray with 4 CPUs: a timeline row per Ray worker)::

    unshare -n sh -c 'ip link set lo up && exec .venv/bin/python -m tests.make_report_screenshot \
        docs/report-200-nodes.png'

(``unshare -n``: a network namespace with loopback only, as ``./dev test`` runs the suite; the browser is
started with its background services off anyway: see QUIET_FLAGS. The PNG is written only if the page loaded
without an error and the browser's network log shows no network use.)

Stdlib only. The browser is Debian's ``chromium`` package (``./dev test`` installs it when it can), or the
executable named by ``ODIBI_RAY_CHROMIUM``. It is driven through ``--remote-debugging-pipe``: the DevTools
protocol as NUL-terminated JSON messages on the browser's file descriptors 3 (commands in) and 4 (answers and
events out), so no port is opened at all; the page is opened as a ``file://`` URL.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import ipaddress
import json
import os
import select
import shutil
import signal
import struct
import sys
import tempfile
import time
import urllib.parse
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from odibi_ray import DAG, Node, RetryPolicy, RunResult, current_context, run

# --- the 200-node run -----------------------------------------------------------------------------------

#: The pipeline's stages (one level each), 25 nodes per stage: 8 x 25 = 200 nodes.
STAGES = ("extract", "clean", "validate", "enrich", "join", "aggregate", "score", "publish")
WIDTH = 25
#: Nodes that fail before they succeed (name -> failed attempts), and the one node that fails for good.
RETRIED = {"extract_03": 2, "clean_11": 1, "enrich_19": 1, "join_08": 2, "aggregate_22": 1, "score_15": 1}
FAILED = "validate_07"


class TransientError(IOError):
    """What the retried nodes raise before they succeed (their retry policy retries on it)."""


class BadRecordsError(ValueError):
    """What the failed node raises (not retried)."""


def _upstream(stage: int, i: int) -> list[str]:
    """Each node reads its own column of the stage before; enrich and score also read a neighbour, join a
    node three columns away: fan-in, and edges that cross."""
    if stage == 0:
        return []
    prev = STAGES[stage - 1]
    ups = [f"{prev}_{i:02d}"]
    extra = {"enrich": 1, "join": 3, "score": 1}.get(STAGES[stage])
    if extra:
        ups.append(f"{prev}_{(i + extra) % WIDTH:02d}")
    return ups


def _body(name: str, seconds: float, fail_times: int, fatal: bool):
    def body(**inputs: int) -> int:
        time.sleep(seconds)
        if fatal:
            raise BadRecordsError(f"{name}: 17 of 5000 rows have a negative amount (first: row 311)")
        attempt = current_context().attempt
        if attempt <= fail_times:
            raise TransientError(f"{name}: the source timed out (attempt {attempt})")
        return sum(inputs.values()) + 1

    return body


def pipeline_200(name: str = "nightly_sales") -> DAG:
    """200 nodes in 8 levels; 6 nodes retried (8 failed attempts, all retried successfully), one node failed
    for good (its descendants skipped)."""
    dag = DAG(name, cache=False)
    retry = RetryPolicy(max_attempts=3, delay_s=0.02, retry_on=(TransientError,))
    for stage, prefix in enumerate(STAGES):
        for i in range(WIDTH):
            node = f"{prefix}_{i:02d}"
            ups = _upstream(stage, i)
            seconds = 0.004 + 0.003 * ((i * 7 + stage * 3) % 5)  # 4 to 16 ms: bars of several lengths
            fn = _body(node, seconds, RETRIED.get(node, 0), node == FAILED)
            dag.add_node(Node(node, fn, inputs=ups, retry=retry))
    return dag


def _pause(seconds: float) -> None:
    time.sleep(seconds)


def run_200(backend: str = "local", **kwargs: Any) -> tuple[DAG, RunResult]:
    dag = pipeline_200()
    result = run(dag, backend=backend, progress=False, **kwargs)
    return dag, result


# --- PNG -------------------------------------------------------------------------------------------------

@dataclass
class Image:
    width: int
    height: int
    rows: list[bytes]  # RGB, 3 bytes a pixel

    def colours(self, box: tuple[int, int, int, int] | None = None, step: int = 1) -> dict[tuple[int, int, int], int]:
        """Pixel count per colour, in ``box`` (x0, y0, x1, y1) or the whole image, every ``step``-th pixel."""
        x0, y0, x1, y1 = box or (0, 0, self.width, self.height)
        counts: dict[tuple[int, int, int], int] = {}
        for y in range(max(0, y0), min(self.height, y1), step):
            row = self.rows[y]
            for x in range(max(0, x0), min(self.width, x1), step):
                c = (row[3 * x], row[3 * x + 1], row[3 * x + 2])
                counts[c] = counts.get(c, 0) + 1
        return counts

    def encode(self) -> bytes:
        """As an 8-bit RGB PNG (each row filtered 'up' or 'sub', whichever leaves more zeros; zlib level 9)."""
        raw = bytearray()
        prev = bytes(3 * self.width)
        for row in self.rows:
            up = bytes((a - b) & 0xFF for a, b in zip(row, prev))
            sub = bytes((row[i] - (row[i - 3] if i >= 3 else 0)) & 0xFF for i in range(len(row)))
            raw += b"\x02" + up if up.count(0) >= sub.count(0) else b"\x01" + sub
            prev = row
        ihdr = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(bytes(raw), 9))
                + _chunk(b"IEND", b""))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def decode_png(data: bytes) -> Image:
    """An 8-bit RGB or RGBA, non-interlaced PNG (what Chromium writes) as RGB rows; stdlib zlib only."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, header = 8, bytearray(), b""
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if depth != 8 or colour not in (2, 6) or interlace:
        raise ValueError(f"unsupported PNG: depth {depth}, colour type {colour}, interlace {interlace}")
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(bytes(idat)), width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:
            for i in range(stride):
                line[i] = (line[i] + prev[i]) & 0xFF
        elif kind == 3:
            for i in range(stride):
                line[i] = (line[i] + ((line[i - bpp] if i >= bpp else 0) + prev[i]) // 2) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a, b = (line[i - bpp] if i >= bpp else 0), prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        elif kind != 0:
            raise ValueError(f"bad PNG filter {kind} in row {y}")
        prev = line
        if bpp == 4:  # drop alpha (a screenshot is opaque)
            line = bytearray(b for i, b in enumerate(line) if i % 4 != 3)
        rows.append(bytes(line))
    return Image(width, height, rows)


# --- the browser -----------------------------------------------------------------------------------------

def find_chromium() -> str | None:
    """The Chromium executable: ``ODIBI_RAY_CHROMIUM``, Debian's binary behind its launcher script, or the
    first of chromium / chromium-browser / google-chrome on PATH."""
    named = os.environ.get("ODIBI_RAY_CHROMIUM")
    if named:
        return named if os.access(named, os.X_OK) else None
    if os.access("/usr/lib/chromium/chromium", os.X_OK):  # Debian: skip the launcher's own flags
        return "/usr/lib/chromium/chromium"
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


#: Every background service off: no update check, no sync, no safe-browsing lists, no metrics, no field
#: trials, no QUIC, no DNS prefetch, no first-run pages. With them on, Chromium calls Google's hosts.
#: Two were found necessary by reading the browser's own network log (Chromium 156, Debian 12), as the test
#: does: without them the component updater asks update.googleapis.com for the "Optimization Guide On Device
#: Models Manifest" (app id ceofaddefefcbblgcgnibnonglccbfja) at start-up, whatever the --disable-* flags say:
#: --optimization-guide-manifest-override (a manifest folder that does not exist) keeps that manifest off
#: the updater, and --component-updater=url-source=http://127.0.0.1:1/ sends any other update check to a
#: loopback port Chromium refuses to use (ERR_UNSAFE_PORT) instead of Google. (Only one --disable-features
#: counts: the last; so all of them are in this one.)
QUIET_FLAGS = (
    "--headless", "--disable-gpu", "--disable-quic", "--no-first-run", "--no-default-browser-check",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
    "--disable-default-apps", "--disable-domain-reliability", "--disable-client-side-phishing-detection",
    "--disable-breakpad", "--disable-crash-reporter", "--metrics-recording-only", "--no-pings",
    "--disable-dev-shm-usage", "--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider,"
    "AutofillServerCommunication,CertificateTransparencyComponentUpdater,NetworkTimeServiceQuerying",
    "--dns-prefetch-disable", "--force-device-scale-factor=1", "--force-color-profile=srgb", "--hide-scrollbars",
    "--optimization-guide-manifest-override=/nonexistent/odibi-ray-no-manifest",
    "--component-updater=url-source=http://127.0.0.1:1/",
)


class BrowserError(RuntimeError):
    pass


@dataclass
class Page:
    """What one page load produced: the DevTools events seen while it loaded, by kind."""
    url: str
    console: list[dict] = field(default_factory=list)     # Runtime.consoleAPICalled
    exceptions: list[dict] = field(default_factory=list)  # Runtime.exceptionThrown
    log: list[dict] = field(default_factory=list)         # Log.entryAdded (CSP violations, failed loads, ...)
    requests: list[str] = field(default_factory=list)     # Network.requestWillBeSent URLs
    failed_requests: list[dict] = field(default_factory=list)  # Network.loadingFailed

    def errors(self) -> list[str]:
        """Every console error or warning, uncaught exception, and browser log entry of level error/warning."""
        out = [f"console.{c['type']}: " + " ".join(str(a.get("value", a.get("description", ""))) for a in c["args"])
               for c in self.console if c["type"] in ("error", "warning", "assert")]
        for e in self.exceptions:
            details = e["exceptionDetails"]
            out.append(f"uncaught: {details.get('exception', {}).get('description') or details['text']}")
        out += [f"log {e['entry']['source']} {e['entry']['level']}: {e['entry']['text']}"
                for e in self.log if e["entry"]["level"] in ("error", "warning")]
        out += [f"request failed: {f.get('errorText')} {f.get('blockedReason', '')}" for f in self.failed_requests]
        return out


class Chromium:
    """One headless Chromium, a fresh profile in a temporary folder, one tab; DevTools over a pipe.

    ``net_log``: the browser writes its own network log there (every socket, DNS lookup and URL request of
    every Chromium process, background services included), completed when it closes: see :func:`read_net_log`
    and :func:`network_activity`. Chromium's stderr (``--enable-logging=stderr``) goes to :meth:`stderr`.
    """

    def __init__(self, executable: str, width: int = 1400, height: int = 1000, net_log: Path | None = None) -> None:
        self.width, self.height = width, height
        self.profile = tempfile.mkdtemp(prefix="odibi-chromium-")
        self.stderr_path = Path(self.profile, "chromium.stderr")
        self.net_log = net_log
        self._next_id = 0
        self._buffer = b""
        self._events: list[dict] = []
        cmd_r, cmd_w = os.pipe()   # we write commands; the browser reads them on its fd 3
        out_r, out_w = os.pipe()   # the browser writes on its fd 4; we read
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (cmd_r, out_w)]
        args = [executable, *QUIET_FLAGS, "--remote-debugging-pipe", f"--user-data-dir={self.profile}",
                f"--window-size={width},{height}", "--enable-logging=stderr", "--v=0"]
        if os.geteuid() == 0:
            args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
        if net_log is not None:
            args += [f"--log-net-log={net_log}", "--net-log-capture-mode=Default"]
        args.append("about:blank")
        err = os.open(self.stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        try:  # its own process group: what it starts (renderer, GPU, network processes) can be ended with it
            self.pid = os.posix_spawn(executable, args, os.environ, setpgroup=0, file_actions=[
                (os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, err, 1), (os.POSIX_SPAWN_DUP2, err, 2),
                (os.POSIX_SPAWN_DUP2, high[0], 3), (os.POSIX_SPAWN_DUP2, high[1], 4)])
        except BaseException:
            os.close(cmd_w)
            os.close(out_r)
            shutil.rmtree(self.profile, ignore_errors=True)
            raise
        finally:
            for fd in (cmd_r, out_w, err, null, *high):
                os.close(fd)
        self._cmd, self._out = cmd_w, out_r
        self._exit: int | None = None
        try:
            target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.send(f"{domain}.enable", session=True)
            self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                             "deviceScaleFactor": 1, "mobile": False}, session=True)
        except BaseException:
            self.close()
            raise

    # the protocol

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"Chromium did not answer in time; its stderr: {self.stderr()[-2000:]}")
            ready, _, _ = select.select([self._out], [], [], left)
            if ready:
                chunk = os.read(self._out, 1 << 20)
                if not chunk:
                    raise BrowserError(f"Chromium closed its DevTools pipe; its stderr: {self.stderr()[-2000:]}")
                self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, *, session: bool = False, timeout: float = 30) -> dict:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self._cmd, data):]
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply["result"]
            if "method" in reply:
                self._events.append(reply)

    def wait_for(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        for i, ev in enumerate(self._events):
            if ev["method"] == method:
                return self._events.pop(i)
        while True:
            ev = self._read_message(deadline)
            if ev.get("method") == method:
                return ev
            if "method" in ev:
                self._events.append(ev)

    # what the tests use

    def load(self, url: str, settle_s: float = 0.3) -> Page:
        """Open ``url`` in the tab and wait for its load event; the page's console, log and requests."""
        self._events.clear()
        nav = self.send("Page.navigate", {"url": url}, session=True)
        if nav.get("errorText"):
            raise BrowserError(f"could not open {url}: {nav['errorText']}")
        self.wait_for("Page.loadEventFired")
        time.sleep(settle_s)  # late console messages (a CSP report comes after the load event)
        self.evaluate("1")  # drains the events that arrived meanwhile
        page = Page(url)
        for ev in self._events:
            method, params = ev["method"], ev["params"]
            if method == "Runtime.consoleAPICalled":
                page.console.append(params)
            elif method == "Runtime.exceptionThrown":
                page.exceptions.append(params)
            elif method == "Log.entryAdded":
                page.log.append(params)
            elif method == "Network.requestWillBeSent":
                page.requests.append(params["request"]["url"])
            elif method == "Network.loadingFailed":
                page.failed_requests.append(params)
        self._events.clear()
        return page

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (DevTools runs it whatever the page's CSP says)."""
        reply = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=True)
        if "exceptionDetails" in reply:
            raise BrowserError(f"{expression[:80]}...: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def screenshot(self, clip: tuple[float, float, float, float] | None = None) -> bytes:
        """A PNG of the viewport, or of the page region ``clip`` = (x, y, width, height) in CSS pixels."""
        params: dict[str, Any] = {"format": "png"}
        if clip is not None:
            x, y, w, h = clip
            params.update(clip={"x": x, "y": y, "width": w, "height": h, "scale": 1}, captureBeyondViewport=True)
        return base64.b64decode(self.send("Page.captureScreenshot", params, session=True, timeout=60)["data"])

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        """Browser.close (so the network log is completed), then wait; the process group is killed if it lingers."""
        if self._exit is None:
            try:
                self.send("Browser.close", timeout=10)
            except (BrowserError, OSError):
                pass
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self._exit = os.waitstatus_to_exitcode(status)
                    break
                time.sleep(0.05)
            else:
                os.killpg(self.pid, signal.SIGKILL)
                self._exit = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
            for fd in (self._cmd, self._out):
                os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: The network log's event types that mean the network was used: a URL request (its ``url``), a host lookup
#: (``host``), a socket connect (``address`` or ``address_list``).
NETWORK_EVENTS = ("URL_REQUEST_START_JOB", "HOST_RESOLVER_MANAGER_REQUEST", "HOST_RESOLVER_MANAGER_JOB",
                  "DNS_TRANSACTION", "TCP_CONNECT", "TCP_CONNECT_ATTEMPT", "UDP_CONNECT", "SOCKET_CONNECT",
                  "SSL_CONNECT_JOB_CONNECT")


def read_net_log(path: Path) -> dict:
    """Chromium's own network log (``--log-net-log``), which the browser completes when it closes."""
    return json.loads(path.read_text(errors="replace"))


def network_activity(log: dict) -> list[tuple[str, str]]:
    """What every Chromium process did on the network, by the log: (event, target) for each URL request, host
    lookup and socket connect (any event named CONNECT or HOST_RESOLVER/DNS_TRANSACTION), the target being its
    URL, host or address."""
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    seen: list[tuple[str, str]] = []
    for ev in log["events"]:
        name, params = names.get(ev["type"], str(ev["type"])), ev.get("params") or {}
        if not ("CONNECT" in name or name.startswith(("HOST_RESOLVER", "DNS_TRANSACTION"))
                or name == "URL_REQUEST_START_JOB"):
            continue
        targets = [params[k] for k in ("url", "host", "address") if isinstance(params.get(k), str)]
        targets += [a for a in params.get("address_list") or [] if isinstance(a, str)]
        seen += [(name, t) for t in targets]
    return seen


def is_loopback_target(target: str) -> bool:
    """A file:/data:/about: URL, or a URL, host or ``address:port`` on loopback (127.0.0.0/8, ::1, localhost)."""
    if "://" in target:
        parts = urllib.parse.urlsplit(target)
        if parts.scheme in ("file", "data", "about", "chrome", "devtools"):
            return True
        host = parts.hostname or ""
    else:
        host = target.rsplit(":", 1)[0] if target.count(":") == 1 or target.startswith("[") else target
        host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- the README's screenshot -------------------------------------------------------------------------------

@contextmanager
def report_in_browser(result: RunResult, dag: DAG, folder: Path, width: int = 1400, height: int = 1000,
                      net_log: Path | None = None) -> Iterator[tuple[Chromium, Page]]:
    executable = find_chromium()
    if executable is None:
        raise BrowserError("no Chromium found (install Debian's chromium package, or set ODIBI_RAY_CHROMIUM)")
    path = result.report(folder / "run.html", dag)
    with Chromium(executable, width, height, net_log=net_log) as browser:
        yield browser, browser.load(path.resolve().as_uri())


def dag_and_timeline_clip(browser: Chromium) -> tuple[float, float, float, float]:
    """The page from its top to the bottom of the timeline: header, DAG, timeline (not the table)."""
    bottom = browser.evaluate("document.querySelector('svg.timeline').closest('.scroll')"
                              ".getBoundingClientRect().bottom + window.scrollY")
    return 0, 0, browser.width, float(bottom) + 16


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Screenshot the run report of the 200-node run (header, DAG, "
                                                 "timeline) in headless Chromium, as a PNG.")
    parser.add_argument("out", nargs="?", default="docs/report-200-nodes.png", type=Path)
    parser.add_argument("--backend", choices=("local", "ray"), default="ray",
                        help="ray (default): a local Ray with 4 CPUs, a timeline row per worker; local: 8 threads")
    parser.add_argument("--window", default="1400x1000", help="browser window, WIDTHxHEIGHT (default 1400x1000)")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.window.split("x"))
    if args.backend == "ray":
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray on 127.0.0.1 only, as in the tests
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        init = {"num_cpus": 4, "include_dashboard": False}
        # Warm up first (the 4 workers started, odibi_ray imported in each), so the picture shows a run on a
        # running cluster, not the workers' start-up.
        warm = DAG("warm_up", cache=False)
        for i in range(8):
            warm.add_node(Node(f"w{i}", _pause, params={"seconds": 0.3}))
        run(warm, backend="ray", progress=False, ray_init_kwargs=init).raise_for_status()
        dag, result = run_200("ray", ray_init_kwargs=init)
    else:
        dag, result = run_200("local", max_workers=8)
    with tempfile.TemporaryDirectory() as tmp:
        net_log = Path(tmp, "netlog.json")
        with report_in_browser(result, dag, Path(tmp), width, height, net_log=net_log) as (browser, page):
            image = decode_png(browser.screenshot(dag_and_timeline_clip(browser)))
        problems = page.errors() + [f"{e} {t}" for e, t in network_activity(read_net_log(net_log))]
    if problems:
        print("not written: the page had errors or the browser used the network:", *problems, sep="\n  ",
              file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(image.encode())
    print(f"{args.out}: {image.width}x{image.height}, {args.out.stat().st_size // 1024} KB "
          f"({len(result.nodes)} nodes, run {result.status.value}, backend {args.backend})")
    return 0


if __name__ == "__main__":
    # By its module name, not as __main__: Ray workers then load the node functions and the error classes by
    # reference (a class pickled by value would not be the one the retry policy names).
    from tests.make_report_screenshot import main as _main

    sys.exit(_main())
