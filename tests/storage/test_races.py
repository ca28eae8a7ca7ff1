"""Cross-process races on every adapter (local folder, Azurite, moto S3): 8 processes racing a create-only
put of one key: exactly one wins, the others get AlreadyExistsError, and a reader polling meanwhile never
sees anything but no object or the whole winner's bytes."""

from __future__ import annotations

import multiprocessing
import pickle


from odibi_ray.errors import AlreadyExistsError, NotFoundError

WRITERS = 8
PAYLOAD = 2 * 1024 * 1024
KEY = "race/one.bin"


def _writer(blob: bytes, i: int, barrier, results) -> None:
    storage = pickle.loads(blob)  # the adapter travels as configuration; this process opens its own client
    barrier.wait(timeout=60)
    try:
        storage.put(KEY, bytes([i + 1]) * PAYLOAD, {"writer": str(i)}, if_none_match=True)
        results.put((i, "won"))
    except AlreadyExistsError:
        results.put((i, "exists"))
    except Exception as exc:  # reported, so the test shows what went wrong
        results.put((i, f"{type(exc).__name__}: {exc}"))


def _reader(blob: bytes, started, stop, results) -> None:
    storage = pickle.loads(blob)
    seen: dict[str, int] = {}
    started.set()
    while not stop.is_set():
        try:
            data = storage.get(KEY)
        except NotFoundError:
            kind = "none"
        else:
            ok = len(data) == PAYLOAD and data.count(data[:1]) == PAYLOAD
            kind = "whole" if ok else f"partial({len(data)})"
        seen[kind] = seen.get(kind, 0) + 1
    results.put(("reader", seen))


def test_eight_processes_race_a_create_only_put(storage):
    ctx = multiprocessing.get_context("spawn")
    blob = pickle.dumps(storage)
    barrier, started, stop, results = ctx.Barrier(WRITERS), ctx.Event(), ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=_reader, args=(blob, started, stop, results))
    reader.start()
    assert started.wait(60)
    writers = [ctx.Process(target=_writer, args=(blob, i, barrier, results)) for i in range(WRITERS)]
    for p in writers:
        p.start()
    outcomes = dict(results.get(timeout=120) for _ in range(WRITERS))
    stop.set()
    _, seen = results.get(timeout=60)
    for p in writers + [reader]:
        p.join(timeout=60)
    assert sorted(outcomes.values()) == ["exists"] * (WRITERS - 1) + ["won"], outcomes
    assert set(seen) <= {"none", "whole"}, seen
    winner = next(i for i, o in outcomes.items() if o == "won")
    data, info = storage.get_with_info(KEY)
    assert data == bytes([winner + 1]) * PAYLOAD and info.metadata == {"writer": str(winner)}
