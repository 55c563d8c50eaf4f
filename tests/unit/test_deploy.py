"""deploy/: the Kubernetes manifests say what the server needs (probes, grace, volume, ports)."""

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.grpc.server import ENGINE_BACKED_SERVICES, INFERENCE_SERVICE, LIVE_SERVICES
from service.settings import SERVER_ENV_PREFIX, ServerSettings, load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# The engine's shutdown after the drain (vLLM stops its core process), with margin.
ENGINE_SHUTDOWN_SECONDS = 15

Manifests = dict[tuple[str, str], dict[str, Any]]


def load(directory: Path) -> Manifests:
    """The documents of a kustomization's resources, by (kind, name)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    manifests: Manifests = {}
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((directory / resource).read_text()):
            manifests[(doc["kind"], doc["metadata"]["name"])] = doc
    return manifests


@pytest.fixture(scope="module")
def manifests() -> Manifests:
    return load(DEPLOY)


def pod_spec(manifests: Manifests) -> dict[str, Any]:
    return manifests[("Deployment", "adapterd")]["spec"]["template"]["spec"]


def container(manifests: Manifests) -> dict[str, Any]:
    (only,) = pod_spec(manifests)["containers"]
    return only


def config(manifests: Manifests) -> dict[str, str]:
    return manifests[("ConfigMap", "adapterd")]["data"]


def setting_names(keys) -> list[str]:
    return [key.removeprefix(SERVER_ENV_PREFIX).lower() for key in keys]


def test_one_replica_recreated_with_one_gpu(manifests):
    deployment = manifests[("Deployment", "adapterd")]["spec"]
    assert deployment["replicas"] == 1
    assert deployment["strategy"] == {"type": "Recreate"}
    assert container(manifests)["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_startup_and_readiness_ask_the_inference_service_and_liveness_a_live_one(manifests):
    grpc_port = int(config(manifests)["ADAPTERD_PORT"])
    probes = {kind: container(manifests)[kind]["grpc"] for kind in ("startupProbe",
              "readinessProbe", "livenessProbe")}  # fmt: skip
    assert probes["startupProbe"] == {"port": grpc_port, "service": INFERENCE_SERVICE}
    assert probes["readinessProbe"] == {"port": grpc_port, "service": INFERENCE_SERVICE}
    assert INFERENCE_SERVICE in ENGINE_BACKED_SERVICES
    assert probes["livenessProbe"]["port"] == grpc_port
    assert probes["livenessProbe"]["service"] in LIVE_SERVICES
    startup = container(manifests)["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # a slow first warm-up


def test_termination_grace_covers_the_drain_the_trainer_stop_and_the_engine(manifests):
    # On SIGTERM the runner stops the trainer within the drain grace, then gRPC and HTTP drain
    # within it again, then the engine shuts down.
    drain = float(config(manifests)["ADAPTERD_DRAIN_GRACE_SECONDS"])
    grace = pod_spec(manifests)["terminationGracePeriodSeconds"]
    assert grace > 2 * drain + ENGINE_SHUTDOWN_SECONDS


def test_the_config_map_is_valid_server_settings(manifests, monkeypatch):
    data = config(manifests)
    unknown = set(setting_names(data)) - set(ServerSettings.model_fields)
    assert not unknown, f"not settings: {unknown}"
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(ServerSettings, {})
    assert settings.host == "0.0.0.0"
    assert settings.engine_gpu_memory_fraction == 0.5  # the accelerator-sharing settings
    assert settings.engine_sleep_while_training is False
    assert container(manifests)["envFrom"] == [{"configMapRef": {"name": "adapterd"}}]


def test_the_data_directory_is_the_read_write_once_claim(manifests):
    claim = manifests[("PersistentVolumeClaim", "adapterd-data")]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    volumes = {v["name"]: v for v in pod_spec(manifests)["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container(manifests)["volumeMounts"]}
    data_volume = volumes[mounts[config(manifests)["ADAPTERD_DATA_DIR"]]]
    assert data_volume["persistentVolumeClaim"]["claimName"] == "adapterd-data"
    assert pod_spec(manifests)["securityContext"]["fsGroup"] == 10001  # the image's user


def test_services_reach_the_grpc_http_and_metrics_ports(manifests):
    template_labels = manifests[("Deployment", "adapterd")]["spec"]["template"]["metadata"]
    ports = {p["name"]: p["containerPort"] for p in container(manifests)["ports"]}
    data = config(manifests)
    assert ports == {
        "grpc": int(data["ADAPTERD_PORT"]),
        "http": int(data["ADAPTERD_HTTP_PORT"]),
        "metrics": int(data["ADAPTERD_METRICS_PORT"]),
    }
    for name, port in ports.items():
        service = manifests[("Service", f"adapterd-{name}")]
        assert service["spec"]["selector"].items() <= template_labels["labels"].items()
        assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(port, name)]


def test_the_service_monitor_scrapes_the_metrics_service(manifests):
    monitor = manifests[("ServiceMonitor", "adapterd")]["spec"]
    service = manifests[("Service", "adapterd-metrics")]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["endpoints"][0]["path"] == "/metrics"


def apply_json_patch(doc: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """The add/remove/replace operations kustomize applies (RFC 6902, object paths only)."""
    doc = copy.deepcopy(doc)
    for operation in operations:
        *parents, last = operation["path"].strip("/").split("/")
        node = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if operation["op"] == "remove":
            del node[last]
        else:
            assert operation["op"] == "add" or last in node, operation  # replace needs a target
            node[int(last) if isinstance(node, list) else last] = operation["value"]
    return doc


def test_the_cpu_overlay_applies_and_drops_the_gpu(manifests):
    overlay = yaml.safe_load((DEPLOY / "cpu/kustomization.yaml").read_text())
    assert overlay["resources"] == [".."]
    patched = dict(manifests)
    for patch in overlay["patches"]:
        key = (patch["target"]["kind"], patch["target"]["name"])
        patched[key] = apply_json_patch(manifests[key], yaml.safe_load(patch["patch"]))
    spec = patched[("Deployment", "adapterd")]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in str(spec)
    added = set(config(patched)) - set(config(manifests))
    assert added and set(setting_names(added)) <= set(ServerSettings.model_fields)
    assert overlay["images"][0]["newTag"].endswith("-cpu")
