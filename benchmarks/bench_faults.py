"""How long faults take to detect and to recover from, with the default settings (the README's fault table).

Measured end to end on a local Ray, on a folder and on Azurite (on disk, SIGTERMed and restarted on its port),
with the fault catalogue's gated pipeline (tests/fault_driver.py):

- outage: the store goes away while a node runs; seconds from the cut until ``run()`` returns its result (the
  adapter's default retry budget, ADLS ``timeout_s`` = 10 s, decides most of it), and whether this same process
  may resume as soon as the store is back;
- SIGKILLed driver, same host: seconds until another process may resume (its lease died with it);
- SIGKILLed driver, seen from another host (a process in another UTS namespace): seconds from the kill until
  that process sees the run abandoned (three missed heartbeats of ``heartbeat_s``, default 15 s), and with
  ``force=True`` (no wait).

Prints one line per figure, the last line one JSON object. Timings, not ratios: this is about seconds of
detection, not speed; medians of ``--repeats`` where a figure is cheap to repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import loopback  # noqa: E402,F401  (network safety before ray)

REPO = Path(__file__).resolve().parents[1]


def _gate(folder: Path) -> dict[str, str]:
    marks = folder / "marks"
    marks.mkdir(parents=True)
    return {"marks": str(marks), "started": str(folder / "started"), "go": str(folder / "go")}


def _wait(path: str, proc: subprocess.Popen | None = None, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            raise RuntimeError(f"never got to {path}")
        time.sleep(0.01)


def outage(spec: str, down, up, work: Path, timeout_s: float) -> tuple[float, bool]:
    """Seconds from the cut to run()'s return; whether the same process resumed at once once storage was back."""
    from tests.fault_driver import drive

    gate = _gate(work)
    box: list[dict] = []
    t = threading.Thread(target=lambda: box.append(drive(spec, **gate, backend="ray", timeout_s=timeout_s)))
    t.start()
    _wait(gate["started"])
    time.sleep(0.5)  # earlier checkpoints written
    down()
    cut = time.monotonic()
    Path(gate["go"]).write_text("go")
    t.join()
    returned = time.monotonic() - cut
    up()
    resumed = drive(spec, **gate, resume=box[0]["run_id"], timeout_s=timeout_s)
    return returned, resumed.get("as_bytes") == "6"


def _driver(spec: str, gate: dict[str, str], *args: str, uts: str | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tests.fault_driver", spec, gate["marks"], gate["started"], gate["go"], *args]
    if uts:
        cmd = ["unshare", "--uts", "sh", "-c", f'hostname {uts} && exec "$@"', "sh", *cmd]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _killed_run(spec: str, gate: dict[str, str]) -> float:
    proc = _driver(spec, gate)
    _wait(gate["started"], proc)
    os.kill(proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    proc.communicate()
    return killed


_WATCH = """
import sys, time, json
sys.path.insert(0, {repo!r})
from tests.fault_driver import open_spec
from odibi_ray.checkpoint import layout
from odibi_ray.checkpoint.store import effective_status, list_runs
store = open_spec({spec!r})
rid = list_runs(store, "faults")[0]["run_id"]
while effective_status(json.loads(store.get(layout.manifest_key("faults", rid)))) == "running":
    time.sleep(0.2)
print(time.time())
"""


def takeovers(spec: str, work: Path, other_host: bool) -> dict[str, float]:
    """Seconds after a SIGKILL until this host, and another host, see the run abandoned; a forced resume."""
    from odibi_ray.checkpoint import layout
    from odibi_ray.checkpoint.store import effective_status, list_runs
    from tests.fault_driver import drive, open_spec

    out: dict[str, float] = {}
    gate = _gate(work / "same")
    killed = _killed_run(spec, gate)
    store = open_spec(spec)
    rid = list_runs(store, "faults")[0]["run_id"]
    while effective_status(json.loads(store.get(layout.manifest_key("faults", rid)))) == "running":
        time.sleep(0.01)
    out["same_host_s"] = time.monotonic() - killed
    Path(gate["go"]).write_text("go")
    assert drive(spec, **gate, resume=rid).get("as_bytes") == "6"
    if other_host:
        gate = _gate(work / "other")
        killed_wall, killed = time.time(), _killed_run(spec, gate)
        killed_wall += time.monotonic() - killed
        watch = subprocess.run(["unshare", "--uts", "sh", "-c", 'hostname elsewhere && exec "$@"', "sh",
                                sys.executable, "-c", _WATCH.format(repo=str(REPO), spec=spec)],
                               capture_output=True, text=True, check=True)
        out["other_host_s"] = float(watch.stdout.strip()) - killed_wall
        Path(gate["go"]).write_text("go")
        gate2 = _gate(work / "forced")
        killed = _killed_run(spec, gate2)
        Path(gate2["go"]).write_text("go")
        forced = _driver(spec, gate2, "--resume", "latest", "--force", uts="elsewhere")
        res = json.loads(forced.communicate()[0].strip().splitlines()[-1])
        assert res.get("as_bytes") == "6", res
        out["other_host_force_s"] = time.monotonic() - killed - res["seconds"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-other-host", action="store_true", help="skip the 45 s other-host takeover")
    a = ap.parse_args()
    import ray

    from tests.storage.fixtures_azurite import AzuriteServer, new_container

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    work = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    server = AzuriteServer(location=str(work / "azurite")).start()
    can_uts = not a.no_other_host and subprocess.run(["unshare", "--uts", "true"], capture_output=True,
                                                     check=False).returncode == 0
    report: dict[str, dict] = {}
    try:
        for kind in ("folder", "azurite"):
            cuts, resumable = [], True
            for i in range(a.repeats):
                if kind == "folder":
                    root = work / f"store{i}"
                    root.mkdir()
                    spec = f"file:{root}"
                    down, up = (lambda r=root: r.rename(f"{r}.off")), (lambda r=root: Path(f"{r}.off").rename(r))
                else:
                    spec = f"azurite:{server.port}:{new_container(server)}"
                    down, up = server.stop, server.start
                cut, ok = outage(spec, down, up, work / f"{kind}-outage{i}", timeout_s=10.0)
                cuts.append(cut)
                resumable &= ok
            take = takeovers(spec, work / f"{kind}-kill", other_host=can_uts)
            report[kind] = {"outage_to_result_s": round(statistics.median(cuts), 2),
                            "same_process_resume_after_outage": resumable,
                            **{k: round(v, 2) for k, v in take.items()}}
            print(f"{kind}: run() returned {report[kind]['outage_to_result_s']} s after an outage (median of "
                  f"{a.repeats}); SIGKILLed driver resumable from this host after {report[kind]['same_host_s']} s"
                  + (f", from another host after {report[kind]['other_host_s']} s (heartbeat 15 s), by force after "
                     f"{report[kind]['other_host_force_s']} s" if "other_host_s" in take else ""), flush=True)
    finally:
        server.close()
        ray.shutdown()
    print(json.dumps({"bench": "faults", **report}))


if __name__ == "__main__":
    main()
