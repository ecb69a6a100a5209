"""deploy/kubernetes rendered with kustomize (kubectl's built-in), offline: every object
against the Kubernetes JSON schemas of a pinned version (strict: no unknown field), the
KEDA objects against KEDA 2.15's fields, and batchgate's own rules on top (references
resolve, one ScaledObject per pool on that pool's queue, grace periods, probes)."""

from __future__ import annotations

import copy
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.fixtures.keda import AUTH_PARAMETERS, keda_errors

DEPLOY = Path(__file__).parents[2] / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (DEPLOY / "overlays").iterdir())
# The Kubernetes version whose schemas the objects must match; KEDA 2.15 supports 1.28-1.30.
KUBERNETES_VERSION = "1.30"
DEFAULT_POOL = "default"
STREAM_PREFIX = "batchgate:q:"
PRESTOP_S = 5


def render(overlay: str, tree: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize` of one overlay, in a copy whose secrets.env is the example."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl (with its built-in kustomize) is not on PATH", pytrace=False)
    shutil.copytree(DEPLOY, tree)
    overlay_dir = tree / "overlays" / overlay
    shutil.copy(overlay_dir / "secrets.env.example", overlay_dir / "secrets.env")
    proc = subprocess.run(
        [kubectl, "kustomize", str(overlay_dir)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@pytest.fixture(params=OVERLAYS)
def objects(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[dict[str, Any]]]:
    yield render(request.param, tmp_path / "kubernetes")


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    assert found, f"no {kind} named {name}"
    return found[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]  # type: ignore[no-any-return]


def option(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {shlex.join(args)}"
    return args[args.index(flag) + 1]


def config(objects: list[dict[str, Any]]) -> dict[str, str]:
    maps = [
        o
        for o in of_kind(objects, "ConfigMap")
        if o["metadata"]["name"].startswith("batchgate-config")
    ]
    assert len(maps) == 1
    return maps[0]["data"]  # type: ignore[no-any-return]


def workers(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        d
        for d in of_kind(objects, "Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    ]


def test_every_kubernetes_object_matches_the_pinned_schemas(objects: list[dict[str, Any]]) -> None:
    plain = [o for o in objects if not o["apiVersion"].startswith("keda.sh/")]
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= {
        o["kind"] for o in plain
    }
    for obj in plain:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    # Strict means strict: a misspelt field fails.
    misspelt = copy.deepcopy(of_kind(plain, "Deployment")[0])
    misspelt["spec"]["template"]["spec"]["terminationGracePeriod"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)


def test_keda_objects_use_only_the_fields_keda_defines(objects: list[dict[str, Any]]) -> None:
    keda = [o for o in objects if o["apiVersion"].startswith("keda.sh/")]
    assert of_kind(keda, "ScaledObject") and of_kind(keda, "TriggerAuthentication")
    problems = {o["metadata"]["name"]: keda_errors(o) for o in keda}
    assert not any(problems.values()), problems


def test_references_resolve_to_rendered_objects_and_keys(objects: list[dict[str, Any]]) -> None:
    secrets = {s["metadata"]["name"]: s for s in of_kind(objects, "Secret")}
    maps = {m["metadata"]["name"]: m for m in of_kind(objects, "ConfigMap")}
    for workload in of_kind(objects, "Deployment") + of_kind(objects, "StatefulSet"):
        for c in workload["spec"]["template"]["spec"]["containers"]:
            for source in c.get("envFrom", []):
                assert source["configMapRef"]["name"] in maps
            for var in c.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets[ref["name"]]["data"], ref
    auths = {a["metadata"]["name"]: a for a in of_kind(objects, "TriggerAuthentication")}
    for scaled in of_kind(objects, "ScaledObject"):
        target = named(objects, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])
        env = env_names(target, maps)
        for trigger in scaled["spec"]["triggers"]:
            for key, value in trigger["metadata"].items():
                if key.endswith("FromEnv"):  # KEDA reads it from the target's container
                    assert value in env, (key, value)
            auth = auths[trigger["authenticationRef"]["name"]]
            for ref in auth["spec"].get("secretTargetRef", []):
                assert ref["parameter"] in AUTH_PARAMETERS[trigger["type"]], ref
                assert ref["key"] in secrets[ref["name"]]["data"], ref


def env_names(deployment: dict[str, Any], maps: dict[str, dict[str, Any]]) -> set[str]:
    c = container(deployment)
    names = {var["name"] for var in c.get("env", [])}
    for source in c.get("envFrom", []):
        names |= maps[source["configMapRef"]["name"]]["data"].keys()
    return names


def test_each_pool_is_scaled_on_its_own_queue(objects: list[dict[str, Any]]) -> None:
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in of_kind(objects, "ScaledObject")}
    pools = set()
    for worker in workers(objects):
        name = worker["metadata"]["name"]
        assert "replicas" not in worker["spec"], f"{name}: KEDA owns the replica count"
        args = container(worker)["args"]
        pool = option(args, "--pools")
        assert "," not in pool, f"{name}: one pool per Deployment, one queue per ScaledObject"
        assert worker["metadata"]["labels"]["batchgate.dev/pool"] == pool
        pools.add(pool)
        executors = option(args, "--max-executors")
        assert int(option(args, "--min-executors")) <= int(executors)
        [trigger] = scaled[name]["spec"]["triggers"]
        if trigger["type"] == "redis-streams":
            # XLEN = tasks waiting + running, because acked entries are deleted; naming the
            # consumer group would count only one of the two.
            assert "consumerGroup" not in trigger["metadata"]
            stream = STREAM_PREFIX + ("" if pool == DEFAULT_POOL else f"{pool}:") + "stream"
            assert trigger["metadata"]["stream"] == stream
            assert trigger["metadata"]["streamLength"] == executors
        else:
            assert trigger["type"] == "aws-sqs-queue"
            queue = config(objects)["QUEUE_URL"].removeprefix("sqs://").split("?")[0]
            expected = queue if pool == DEFAULT_POOL else f"{queue}-{pool}"
            assert trigger["metadata"]["queueURL"] == expected
            assert trigger["metadata"]["queueLength"] == executors
            assert trigger["metadata"].get("scaleOnInFlight", "true") == "true"
    assert DEFAULT_POOL in pools
    assert len(scaled) == len(workers(objects))


def test_scale_to_zero_outlasts_the_longest_retry_backoff(objects: list[dict[str, Any]]) -> None:
    backoff_max_s = float(config(objects)["BATCHGATE_RETRY_BACKOFF_MAX"])
    for scaled in of_kind(objects, "ScaledObject"):
        spec = scaled["spec"]
        assert spec["minReplicaCount"] in (0, 1)
        assert spec["maxReplicaCount"] >= max(spec["minReplicaCount"], 1)
        if spec["minReplicaCount"] == 0:
            # A retry waiting out its backoff is not in the stream: the last worker must
            # still be there when it becomes due.
            assert spec["cooldownPeriod"] > backoff_max_s, scaled["metadata"]["name"]


def test_grace_periods_outlast_the_drain(objects: list[dict[str, Any]]) -> None:
    drain_s = int(config(objects)["BATCHGATE_DRAIN"])
    for worker in workers(objects):
        longest_s = int(worker["metadata"]["annotations"]["batchgate.dev/max-function-timeout-s"])
        grace_s = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace_s > drain_s + longest_s, worker["metadata"]["name"]
    gateway = named(objects, "Deployment", "batchgate-gateway")
    pre_stop = container(gateway)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop == ["sleep", str(PRESTOP_S)]
    assert (
        gateway["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > PRESTOP_S + drain_s
    )


def test_probes_hit_the_ports_batchgate_listens_on(objects: list[dict[str, Any]]) -> None:
    gateway = container(named(objects, "Deployment", "batchgate-gateway"))
    args = gateway["args"]
    assert args[0] == "gateway" and option(args, "--host") == "0.0.0.0"
    [port] = gateway["ports"]
    assert port["containerPort"] == int(option(args, "--port"))
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # Off loopback the gateway refuses to start without keys: they come from the Secret.
    keys = [v for v in gateway["env"] if v["name"] == "BATCHGATE_API_KEYS"]
    assert keys and keys[0]["valueFrom"]["secretKeyRef"]["key"] == "BATCHGATE_API_KEYS"
    for worker in workers(objects):
        c = container(worker)
        assert c["args"][0] == "worker"
        assert option(c["args"], "--metrics-host") == "0.0.0.0"
        [port] = c["ports"]
        assert port["containerPort"] == int(option(c["args"], "--metrics-port"))
        for probe in ("startupProbe", "livenessProbe"):
            assert c[probe]["httpGet"] == {"path": "/healthz", "port": port["name"]}


def test_pods_run_as_non_root_with_resource_requests(objects: list[dict[str, Any]]) -> None:
    for workload in of_kind(objects, "Deployment") + of_kind(objects, "StatefulSet"):
        spec = workload["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        for c in spec["containers"]:
            assert {"cpu", "memory"} <= c["resources"]["requests"].keys()
            assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_gateway_disruptions_and_autoscaling_are_bounded(objects: list[dict[str, Any]]) -> None:
    hpa = named(objects, "HorizontalPodAutoscaler", "batchgate-gateway")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "batchgate-gateway"
    assert hpa["spec"]["minReplicas"] >= 2  # the PDB can then let one go
    pdb = named(objects, "PodDisruptionBudget", "batchgate-gateway")
    gateway = named(objects, "Deployment", "batchgate-gateway")
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = named(objects, "Service", "batchgate-gateway")
    assert service["spec"]["selector"].items() <= labels.items()


def test_in_cluster_redis_keeps_an_append_only_file(tmp_path: Path) -> None:
    objects = render("trial", tmp_path / "kubernetes")
    redis = named(objects, "StatefulSet", "batchgate-redis")
    args = container(redis)["args"]
    assert option(args, "--appendonly") == "yes"
    assert option(args, "--requirepass") == "$(REDIS_PASSWORD)"
    assert config(objects)["REDIS_ADDRESS"] == "batchgate-redis:6379"
    [claim] = redis["spec"]["volumeClaimTemplates"]
    assert container(redis)["volumeMounts"][0]["name"] == claim["metadata"]["name"]


def test_the_keda_check_rejects_what_keda_would_not_accept() -> None:
    good = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "w"},
        "spec": {
            "scaleTargetRef": {"name": "w"},
            "triggers": [
                {"type": "redis-streams", "metadata": {"address": "r:6379", "stream": "s"}}
            ],
        },
    }
    assert keda_errors(good) == []
    typo = {**good, "spec": {**good["spec"], "cooldownPeriods": 300}}
    assert keda_errors(typo)
    trigger = {"type": "redis-streams", "metadata": {"address": "r:6379", "stream": "s"}}
    for bad_metadata in (
        {"streamLength": "two"},
        {"consumerGroup": "g", "streamLength": "2"},
        {"lagCount": "5"},
        {"stream_length": "2"},
    ):
        bad = {**trigger, "metadata": {**trigger["metadata"], **bad_metadata}}
        assert keda_errors({**good, "spec": {**good["spec"], "triggers": [bad]}}), bad_metadata
    auth = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": {"name": "a"},
        "spec": {"podIdentity": {"provider": "aws", "identityOwner": "pod"}},
    }
    assert keda_errors(auth)
