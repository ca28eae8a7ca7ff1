"""Storage adapter overhead: ADLSStorage vs the raw azure-storage-blob client, LocalStorage vs plain files.

One process. Azure: one in-memory Azurite on 127.0.0.1 (started and stopped here, ``--disableTelemetry``);
the raw client is a default ``BlobServiceClient`` with the same account key. Local: a temp folder; plain
files are ``open(path, "wb").write(data)`` (and, to compare with LocalStorage's default durable writes,
the same followed by ``os.fsync``).

Figures: 64 MB put and get throughput (MB/s), and the latency of 1000 puts of 4 KB (median, p95, ms).
Every engine gets a warm-up, then the repeats are interleaved (the order rotates each repeat) and the
median over repeats is reported. Targets (Azure): adapter >= 0.9 x raw throughput, <= 1.1 x raw small-put
latency. The last line of stdout is one JSON object with every figure and ratio.

    python -m benchmarks.bench_storage [--repeats 3] [--big-mb 64] [--small-count 1000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from odibi_ray.storage.adls import ADLSStorage  # noqa: E402
from tests.storage.fixtures_azurite import ACCOUNT, ACCOUNT_KEY, AzuriteServer, new_container  # noqa: E402

THROUGHPUT_TARGET = 0.9
LATENCY_TARGET = 1.1
MB = 1024 * 1024


# --- engines: each offers put(key, data), get(key) -------------------------------------------------------


class RawBlob:
    """The plain azure-storage-blob client, default settings."""

    def __init__(self, endpoint: str, container: str) -> None:
        from azure.storage.blob import BlobServiceClient

        self.container = BlobServiceClient(endpoint, credential={"account_name": ACCOUNT, "account_key": ACCOUNT_KEY}
                                           ).get_container_client(container)

    def put(self, key: str, data: bytes) -> None:
        self.container.upload_blob(f"raw/{key}", data, overwrite=True)

    def get(self, key: str) -> bytes:
        return self.container.download_blob(f"raw/{key}").readall()


class PlainFiles:
    """``open().write()`` into a folder (optionally with ``os.fsync`` before close)."""

    def __init__(self, root: str, fsync: bool) -> None:
        self.root, self.fsync = root, fsync

    def put(self, key: str, data: bytes) -> None:
        path = os.path.join(self.root, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())

    def get(self, key: str) -> bytes:
        with open(os.path.join(self.root, key), "rb") as f:
            return f.read()


# --- measurements ---------------------------------------------------------------------------------------------


def big_put_get(engine: Any, data: bytes) -> tuple[float, float]:
    """(put MB/s, get MB/s) of one object of ``len(data)`` bytes."""
    t0 = time.perf_counter()
    engine.put("big/object", data)
    t1 = time.perf_counter()
    got = engine.get("big/object")
    t2 = time.perf_counter()
    if len(got) != len(data):
        raise RuntimeError(f"{type(engine).__name__}: read {len(got)} bytes, wrote {len(data)}")
    return len(data) / MB / (t1 - t0), len(data) / MB / (t2 - t1)


def small_puts(engine: Any, count: int, size: int, tag: str) -> list[float]:
    """Latency in ms of each of ``count`` puts of ``size`` bytes to distinct keys."""
    data = os.urandom(size)
    out = []
    for i in range(count):
        t0 = time.perf_counter()
        engine.put(f"small/{tag}/{i:05d}", data)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def run(engines: dict[str, Any], repeats: int, big: bytes, small_count: int, small_size: int
        ) -> dict[str, dict[str, float]]:
    """Warm-up, then ``repeats`` interleaved rounds; the median of each figure over the rounds per engine."""
    names = list(engines)
    for name in names:  # warm-up: connections, first-use paths, the server's first allocation
        big_put_get(engines[name], big[: 4 * MB])
        small_puts(engines[name], 20, small_size, "warm")
    rounds: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            put_mbs, get_mbs = big_put_get(engines[name], big)
            lat = small_puts(engines[name], small_count, small_size, f"r{r}")
            rounds[name].append({"put_mb_s": put_mbs, "get_mb_s": get_mbs,
                                 "small_put_median_ms": statistics.median(lat), "small_put_p95_ms": p95(lat)})
    return {n: {k: statistics.median(x[k] for x in rounds[n]) for k in rounds[n][0]} for n in names}


def ratios(results: dict[str, dict[str, float]], candidate: str, baseline: str) -> dict[str, float]:
    """candidate/baseline for throughput (higher is better) and latency (lower is better)."""
    c, b = results[candidate], results[baseline]
    return {"put_throughput": c["put_mb_s"] / b["put_mb_s"], "get_throughput": c["get_mb_s"] / b["get_mb_s"],
            "small_put_median_latency": c["small_put_median_ms"] / b["small_put_median_ms"],
            "small_put_p95_latency": c["small_put_p95_ms"] / b["small_put_p95_ms"]}


def table(results: dict[str, dict[str, float]]) -> str:
    lines = [f"{'engine':<28} {'put MB/s':>10} {'get MB/s':>10} {'4KB put med ms':>15} {'4KB put p95 ms':>15}"]
    for name, r in results.items():
        lines.append(f"{name:<28} {r['put_mb_s']:>10.1f} {r['get_mb_s']:>10.1f} {r['small_put_median_ms']:>15.3f} "
                     f"{r['small_put_p95_ms']:>15.3f}")
    return "\n".join(lines)


def ratio_lines(label: str, r: dict[str, float], targets: bool) -> list[str]:
    def mark(ok: bool) -> str:
        return ("  ok" if ok else "  MISSED") if targets else ""

    return [f"{label}: put throughput {r['put_throughput']:.3f}{mark(r['put_throughput'] >= THROUGHPUT_TARGET)}, "
            f"get throughput {r['get_throughput']:.3f}{mark(r['get_throughput'] >= THROUGHPUT_TARGET)}, "
            f"4KB put latency median {r['small_put_median_latency']:.3f}"
            f"{mark(r['small_put_median_latency'] <= LATENCY_TARGET)}, p95 {r['small_put_p95_latency']:.3f}"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--big-mb", type=int, default=64)
    parser.add_argument("--small-count", type=int, default=1000)
    parser.add_argument("--small-kb", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, 8 MB, 100 small puts")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.big_mb, args.small_count = 1, 8, 100
    if args.repeats < 1 or args.big_mb < 1 or args.small_count < 20:
        parser.error("need --repeats >= 1, --big-mb >= 1, --small-count >= 20")
    big = os.urandom(args.big_mb * MB)
    small_size = args.small_kb * 1024

    server = AzuriteServer().start()
    folder = tempfile.mkdtemp(prefix="bench-storage-")
    try:
        container = new_container(server)
        azure = {
            "azure raw client": RawBlob(server.endpoint, container),
            "azure ADLSStorage": ADLSStorage.from_uri(f"abfss://{container}@{ACCOUNT}.dfs.core.windows.net/adapter",
                                                      endpoint=server.endpoint, account_key=ACCOUNT_KEY),
        }
        az = run(azure, args.repeats, big, args.small_count, small_size)
        local: dict[str, Any] = {"plain open().write()": PlainFiles(os.path.join(folder, "plain"), fsync=False),
                                 "plain write + fsync": PlainFiles(os.path.join(folder, "plainsync"), fsync=True)}
        try:
            from odibi_ray.storage.local import LocalStorage

            local["LocalStorage(fsync=False)"] = LocalStorage(os.path.join(folder, "local-nosync"), fsync=False)
            local["LocalStorage (default)"] = LocalStorage(os.path.join(folder, "local"))
        except ImportError:
            print("odibi_ray.storage.local is not there yet: LocalStorage rows skipped", file=sys.stderr)
        lo = run(local, args.repeats, big, args.small_count, small_size)
    finally:
        server.close()
        shutil.rmtree(folder, ignore_errors=True)

    figures = {**az, **lo}
    out: dict[str, Any] = {
        "benchmark": "bench_storage", "repeats": args.repeats, "big_mb": args.big_mb,
        "small_count": args.small_count, "small_kb": args.small_kb,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "figures": figures,
        "ratios": {"adls_vs_raw": ratios(az, "azure ADLSStorage", "azure raw client")},
        "targets": {"throughput_min": THROUGHPUT_TARGET, "small_put_latency_max": LATENCY_TARGET},
    }
    lines = [f"storage benchmark: {args.repeats} interleaved repeats, medians; {args.big_mb} MB object, "
             f"{args.small_count} x {args.small_kb} KB puts", "", table(figures), ""]
    lines += ratio_lines("ADLSStorage / raw azure-storage-blob (targets >= 0.9, <= 1.1)",
                         out["ratios"]["adls_vs_raw"], True)
    if "LocalStorage (default)" in lo:
        out["ratios"]["local_nosync_vs_plain"] = ratios(lo, "LocalStorage(fsync=False)", "plain open().write()")
        out["ratios"]["local_vs_plain_fsync"] = ratios(lo, "LocalStorage (default)", "plain write + fsync")
        lines += ratio_lines("LocalStorage(fsync=False) / plain open().write()",
                             out["ratios"]["local_nosync_vs_plain"], False)
        lines += ratio_lines("LocalStorage (default, fsync) / plain write + fsync",
                             out["ratios"]["local_vs_plain_fsync"], False)
    r = out["ratios"]["adls_vs_raw"]
    out["targets_met"] = (r["put_throughput"] >= THROUGHPUT_TARGET and r["get_throughput"] >= THROUGHPUT_TARGET
                          and r["small_put_median_latency"] <= LATENCY_TARGET)
    print("\n".join(lines))
    print(json.dumps(out, sort_keys=True))
    return out


if __name__ == "__main__":
    main()
