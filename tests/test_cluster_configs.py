"""The cluster configs in cluster/ are accepted by Ray's own cluster-launcher checks.

The launcher YAMLs go through the same two steps `ray up` runs before it contacts any machine
(``prepare_config``: merge the provider's defaults; ``validate_config``: Ray's ray-schema.json plus its
cross-field checks), with the ray package installed here. Nothing is launched and nothing leaves the
process: the Azure provider's defaults are read from a YAML file, no Azure SDK call is made.
The KubeRay manifest has no schema in the ray package (the CRD lives in the KubeRay operator), so its
structure is checked field by field.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
LAUNCHER_CONFIGS = ["azure.yaml", "local.yaml"]


def _load(name: str) -> Any:
    with open(CLUSTER / name, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _ray_check(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does to a config before launching anything, after a schema check of the file as
    written (so a wrong type fails as a ValidationError, not as a TypeError while defaults merge)."""
    jsonschema.validate(config, _schema())
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def _schema() -> dict[str, Any]:
    import ray.autoscaler

    with open(Path(ray.autoscaler.__file__).parent / "ray-schema.json", encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_passes_rays_schema_as_written(name):
    """The file itself (before defaults are merged) already matches ray-schema.json."""
    jsonschema.validate(_load(name), _schema())


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_passes_ray_up_checks(name):
    """prepare_config + validate_config (Ray's own, as `ray up` runs them) accept the file."""
    prepared = _ray_check(_load(name))
    assert prepared["head_node_type"] in prepared["available_node_types"]
    # The install step reaches every node: head and workers both pip install odibi_ray.
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert any("pip install" in c and "odibi_ray" in c for c in prepared[key]), key
    assert any(remote.endswith("odibi_ray") for remote in prepared["file_mounts"])


def test_azure_config_uses_azure_provider_with_a_managed_identity():
    config = _load("azure.yaml")
    provider = config["provider"]
    assert provider["type"] == "azure"
    for field in ("location", "resource_group", "subscription_id"):
        assert provider[field], field
    # Ray attaches an existing user-assigned identity when both are set (else it creates its own).
    assert provider["msi_name"] and provider["msi_resource_group"]
    types = config["available_node_types"]
    assert set(types) == {"ray.head.default", "ray.worker.default"}
    for node_type in types.values():
        assert node_type["node_config"]["azure_arm_parameters"]["vmSize"].startswith("Standard_")


def test_local_config_uses_local_provider_with_hosts_and_ssh_user():
    config = _load("local.yaml")
    assert config["provider"]["type"] == "local"
    assert config["provider"]["head_ip"] and config["provider"]["worker_ips"]
    assert config["auth"]["ssh_user"]
    prepared = _ray_check(config)
    # The local provider turns the host list into one node type; every listed worker joins.
    assert prepared["available_node_types"]["local.cluster.node"]["min_workers"] == \
        len(config["provider"]["worker_ips"])


@pytest.mark.parametrize("breakage, expected", [
    (lambda c: c.update(unknown_top_level_field=1), jsonschema.ValidationError),
    (lambda c: c["available_node_types"]["ray.worker.default"].update(resources={"CPU": -1}),
     jsonschema.ValidationError),
    (lambda c: c["available_node_types"]["ray.head.default"].pop("node_config"), jsonschema.ValidationError),
    (lambda c: c.update(setup_commands="pip install odibi_ray"), jsonschema.ValidationError),
    (lambda c: c.update(head_node_type="no.such.type"), ValueError),
    (lambda c: c.update(max_workers=0), ValueError),  # fewer than the workers' min_workers
], ids=["unknown-field", "negative-cpu", "no-node-config", "commands-not-a-list", "bad-head-type",
        "max-below-min"])
def test_a_broken_config_is_rejected(breakage, expected):
    """The check can fail: each deliberate breakage of the Azure config is refused by Ray's checks."""
    config = _load("azure.yaml")
    breakage(config)
    with pytest.raises(expected):
        _ray_check(config)


def test_local_config_without_worker_ips_is_rejected():
    config = _load("local.yaml")
    del config["provider"]["worker_ips"]
    with pytest.raises(click.ClickException, match="worker_ips"):  # Ray's CLI aborts with this
        _ray_check(config)


def test_local_config_with_a_non_string_head_ip_is_rejected():
    config = _load("local.yaml")
    config["provider"]["head_ip"] = 7
    with pytest.raises(jsonschema.ValidationError, match="head_ip|7 is not of type"):
        _ray_check(config)


def test_kuberay_rayjob_runs_the_etl_example_on_adls():
    docs = [d for d in yaml.safe_load_all((CLUSTER / "kuberay-rayjob.yaml").read_text(encoding="utf-8")) if d]
    jobs = [d for d in docs if d.get("kind") == "RayJob"]
    assert len(jobs) == 1
    job = jobs[0]
    assert job["apiVersion"] == "ray.io/v1"
    assert job["metadata"]["name"]
    spec = job["spec"]
    assert "examples/etl_pipeline.py" in spec["entrypoint"]
    assert "--storage abfss://" in " ".join(spec["entrypoint"].split())
    cluster = spec["rayClusterSpec"]
    head_pod = cluster["headGroupSpec"]["template"]
    workers = cluster["workerGroupSpecs"]
    assert workers and all(w["groupName"] and w["template"]["spec"]["containers"] for w in workers)
    # Workload identity: every Ray pod runs as the annotated service account, with the webhook label.
    accounts = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "ServiceAccount"}
    for pod in [head_pod] + [w["template"] for w in workers]:
        assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
        account = pod["spec"]["serviceAccountName"]
        assert "azure.workload.identity/client-id" in accounts[account]["metadata"]["annotations"]
        assert pod["spec"]["containers"][0]["image"]
