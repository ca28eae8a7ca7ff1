"""The one stored-object metadata type: written and read back, the expiry rule (with the seed cache's legacy
``never``), the integrity rules, and the lenient read used to list and filter damaged objects."""

import hashlib

import pytest

from odibi_ray.checkpoint.objectmeta import CheckpointMeta
from odibi_ray.storage.base import ObjectInfo

PAYLOAD = b'{"rows":[1,2,3]}'
SHA = hashlib.sha256(PAYLOAD).hexdigest()


def meta(**changes) -> CheckpointMeta:
    fields = dict(sha256=SHA, size=len(PAYLOAD), codec="json", created=1_760_000_000.25, expires_at=None,
                  node="süm/1", pipeline="etl", run_id="r1", attempt=2, ray_node_id="abc", pid=42,
                  started_at=1_760_000_000.5, ended_at=1_760_000_001.75, layout=2)
    fields.update(changes)
    return CheckpointMeta(**fields)


def info(md: dict[str, str], size: int = len(PAYLOAD)) -> ObjectInfo:
    return ObjectInfo("objects/etl/ab/ab", size, "etag", 1_700_000_000.0, md)


@pytest.mark.parametrize("expires_at", [None, 1_760_003_600.5])
def test_written_metadata_reads_back_equal(expires_at):
    written = meta(expires_at=expires_at)
    md = written.to_metadata()
    assert all(isinstance(v, str) and v.isascii() for v in md.values())  # storage metadata: ASCII strings
    assert md["node"] == "s%C3%BCm%2F1" and md["expires_at"] == ("" if expires_at is None else "1760003600.500000")
    assert CheckpointMeta.read(info(md)) == (written, None)
    assert CheckpointMeta.from_info(info(md)) == written == CheckpointMeta.salvage(info(md))


def test_layout1_objects_read_with_the_other_fields_empty():
    md = {"sha256": SHA, "size": str(len(PAYLOAD)), "codec": "json", "created": "1.5", "expires_at": "",
          "node": "n"}
    assert CheckpointMeta.from_info(info(md)) == CheckpointMeta(SHA, len(PAYLOAD), "json", 1.5, node="n")


@pytest.mark.parametrize("written", ["", "never", None])  # None: no expires_at at all
def test_empty_legacy_never_and_missing_expiry_never_expire(written):
    md = dict(meta().to_metadata())
    if written is None:
        del md["expires_at"]
    else:
        md["expires_at"] = written  # "never": what CloudCacheManager wrote before it used this type
    read = CheckpointMeta.from_info(info(md))
    assert read is not None and read.expires_at is None
    assert not read.expired(10 ** 12) and read.fresh(10 ** 12)


def test_expired_and_fresh_rule():
    m = meta(created=100.0, expires_at=200.0)
    assert not m.expired(199.9) and m.fresh(199.9)
    assert m.expired(200.0) and not m.fresh(200.0)  # an expiry equal to now has passed
    assert m.fresh(149.0, ttl_s=50) and not m.fresh(150.0, ttl_s=50)  # today's shorter TTL counts too
    assert not m.fresh(250.0, ttl_s=1000)  # a longer TTL does not revive it
    assert meta(created=100.0).fresh(10 ** 9) and not meta(created=100.0).fresh(10 ** 9, ttl_s=60)


@pytest.mark.parametrize("change, problem", [
    ({"sha256": None, "codec": None}, "its metadata lacks sha256, codec"),
    ({"size": "12x"}, "its size metadata is malformed"),
    ({"size": "-1"}, "its size metadata is malformed"),
    ({"sha256": "AB" * 32}, "its sha256 metadata is malformed"),
    ({"sha256": SHA + "\n"}, "its sha256 metadata is malformed"),
    ({"expires_at": "soon"}, "its expires_at metadata is malformed"),
    ({"expires_at": "nan"}, "its expires_at metadata is malformed"),
    ({"created": "inf"}, "its created metadata is malformed"),
    ({"attempt": "two"}, "its attempt metadata is malformed"),
    ({"size": "999"}, f"it holds {len(PAYLOAD)} bytes where its metadata says 999"),  # truncated, or not ours
])
def test_metadata_that_cannot_describe_the_object_says_why(change, problem):
    md = dict(meta(expires_at=5_000.0).to_metadata())
    for name, value in change.items():
        if value is None:
            del md[name]
        else:
            md[name] = value
    read, why = CheckpointMeta.read(info(md))
    assert read is None and why is not None and why.startswith(problem)
    assert CheckpointMeta.from_info(info(md)) is None


def test_salvage_reads_what_it_can_of_damaged_metadata():
    md = dict(meta(expires_at=5_000.0).to_metadata(), size="999", created="garbage")
    assert CheckpointMeta.from_info(info(md)) is None
    loose = CheckpointMeta.salvage(info(md))
    assert (loose.node, loose.expires_at, loose.created, loose.size) == ("süm/1", 5_000.0, 0.0, 999)
    assert loose.expired(5_000.0)
    assert CheckpointMeta.salvage(info({})) == CheckpointMeta("", 0, "", 0.0)


def test_payload_problem_is_the_integrity_rule_of_the_bytes():
    m = meta()
    assert m.payload_problem(len(PAYLOAD), SHA) is None
    assert m.payload_problem(len(PAYLOAD) - 1, SHA) == f"it holds {len(PAYLOAD) - 1} bytes where its metadata says " \
                                                       f"{len(PAYLOAD)}"
    assert m.payload_problem(len(PAYLOAD), "0" * 64) == "its SHA-256 does not match its metadata"
