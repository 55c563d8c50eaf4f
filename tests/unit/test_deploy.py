"""deploy/: the Kubernetes manifests, as kustomize renders each kustomization, say what the
server and the workers need (probes, grace, volumes, ports, the shared store) and are valid
Kubernetes objects; the worker pool's autoscaling query counts what a worker would do."""

import re
import time
from typing import Any

import kubernetes_validate
import psycopg
import pytest
import yaml

from service.grpc.server import ENGINE_BACKED_SERVICES, INFERENCE_SERVICE, LIVE_SERVICES
from service.jobs.model import Job, JobKind, JobState, Work
from service.metrics import Metrics
from service.settings import SERVER_ENV_PREFIX, ServerSettings, load_settings
from service.store.postgres import PostgresStore
from tests.support import DEPLOY, Manifests, assert_promtool_accepts_rules, kustomize

# The engine's shutdown after the drain (vLLM stops its core process), with margin.
ENGINE_SHUTDOWN_SECONDS = 15
# The Kubernetes release whose schemas the built-in kinds are checked against.
KUBERNETES_VERSION = "1.33.0"
# Kinds of custom resources (KEDA, Prometheus Operator, Gateway API Inference Extension): no
# schema is bundled; their tests check what they mean instead.
CUSTOM_KINDS = {
    "ScaledObject", "TriggerAuthentication", "ServiceMonitor", "InferencePool", "PrometheusRule",
}  # fmt: skip

KUSTOMIZATIONS = ["base", "overlays/cpu", "overlays/scale-out", "overlays/inference-pool"]
SCALED_OUT = ["overlays/scale-out", "overlays/inference-pool"]
POSTGRES_SECRET = {"name": "adapterd-postgres", "key": "url"}


@pytest.fixture(scope="module")
def rendered() -> dict[str, Manifests]:
    return {name: kustomize(DEPLOY / name) for name in KUSTOMIZATIONS}


@pytest.fixture(params=KUSTOMIZATIONS)
def manifests(request, rendered) -> Manifests:
    """Each kustomization in turn: the properties of the single-node base hold in every one."""
    return rendered[request.param]


@pytest.fixture(params=SCALED_OUT)
def scaled_out(request, rendered) -> Manifests:
    return rendered[request.param]


def pod_spec(manifests: Manifests, name: str = "adapterd") -> dict[str, Any]:
    return manifests[("Deployment", name)]["spec"]["template"]["spec"]


def container(manifests: Manifests, name: str = "adapterd") -> dict[str, Any]:
    (only,) = pod_spec(manifests, name)["containers"]
    return only


def config(manifests: Manifests) -> dict[str, str]:
    return manifests[("ConfigMap", "adapterd")]["data"]


def settings_of(manifests: Manifests, monkeypatch) -> ServerSettings:
    """The server settings a serving pod of these manifests reads from its ConfigMap, checked
    as on that pod: with the CPUs its container requests, not this machine's."""
    data = config(manifests)
    unknown = set(setting_names(data)) - set(ServerSettings.model_fields)
    assert not unknown, f"not settings: {unknown}"
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    cpus = int(container(manifests)["resources"]["requests"]["cpu"])
    monkeypatch.setattr("service.settings.available_cpus", lambda: cpus)
    return load_settings(ServerSettings, {})


def setting_names(keys) -> list[str]:
    return [key.removeprefix(SERVER_ENV_PREFIX).lower() for key in keys]


def test_every_built_in_object_is_valid_for_kubernetes(manifests):
    for (kind, _), doc in manifests.items():
        if kind in CUSTOM_KINDS:
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        else:  # strict: a misspelt field is an error, not ignored
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_each_custom_kind_left_unvalidated_is_one_the_manifests_use(rendered):
    used = {kind for manifests in rendered.values() for kind, _ in manifests}
    assert used >= CUSTOM_KINDS


def test_the_alert_rules_pass_promtool_and_query_only_metrics_adapterd_exports(rendered):
    groups = rendered["base"][("PrometheusRule", "adapterd")]["spec"]["groups"]
    assert_promtool_accepts_rules(yaml.safe_dump({"groups": groups}))
    exported = {m._name for m in Metrics().per_adapter()}
    queried = {
        name
        for group in groups
        for rule in group["rules"]
        for name in re.findall(r"\badapterd_[a-z_]+", rule["expr"])
    }
    assert queried and queried <= exported
    assert {r["alert"] for g in groups for r in g["rules"]} >= {"AdapterdPromptDrift"}


def test_the_single_node_base_is_one_replica_recreated_with_one_gpu(rendered):
    deployment = rendered["base"][("Deployment", "adapterd")]["spec"]
    assert deployment["replicas"] == 1
    assert deployment["strategy"] == {"type": "Recreate"}
    assert container(rendered["base"])["resources"]["limits"]["nvidia.com/gpu"] == 1


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
    settings = settings_of(manifests, monkeypatch)
    assert settings.host == "0.0.0.0"
    assert settings.store_url is None  # a URL with a password belongs in a Secret
    assert container(manifests)["envFrom"] == [{"configMapRef": {"name": "adapterd"}}]


def test_the_base_shares_the_accelerator_and_keeps_sqlite_on_a_read_write_once_claim(
    rendered, monkeypatch
):
    settings = settings_of(rendered["base"], monkeypatch)
    assert settings.engine_gpu_memory_fraction == 0.5  # the accelerator-sharing settings
    assert settings.engine_sleep_while_training is False
    claim = rendered["base"][("PersistentVolumeClaim", "adapterd-data")]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


def data_claim(manifests: Manifests, deployment: str) -> str:
    """The claim a Deployment mounts at the ConfigMap's data directory."""
    volumes = {v["name"]: v for v in pod_spec(manifests, deployment)["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container(manifests, deployment)["volumeMounts"]}
    return volumes[mounts[config(manifests)["ADAPTERD_DATA_DIR"]]]["persistentVolumeClaim"][
        "claimName"
    ]


def test_the_data_directory_is_the_claim_and_writable_by_the_image_user(manifests):
    assert data_claim(manifests, "adapterd") == "adapterd-data"
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


def test_the_service_monitor_scrapes_every_metrics_service(manifests):
    monitor = manifests[("ServiceMonitor", "adapterd")]["spec"]
    scraped = [doc for (kind, name), doc in manifests.items() if kind == "Service"
               and monitor["selector"]["matchLabels"].items() <= doc["metadata"]["labels"].items()]  # fmt: skip
    expected = {"adapterd-metrics"} | ({"adapterd-worker-metrics"}
                                       if ("Deployment", "adapterd-worker") in manifests else set())  # fmt: skip
    assert {s["metadata"]["name"] for s in scraped} == expected
    for service in scraped:
        assert service["spec"]["ports"][0]["name"] == monitor["endpoints"][0]["port"]
    assert monitor["endpoints"][0]["path"] == "/metrics"


def test_the_cpu_overlay_drops_the_gpu_and_splits_the_cpus(rendered, monkeypatch):
    cpu = rendered["overlays/cpu"]
    assert "nvidia.com/gpu" not in str(pod_spec(cpu))
    assert container(cpu)["image"].endswith("-cpu")
    settings = settings_of(cpu, monkeypatch)
    assert settings.engine_threads == settings.trainer_threads == 4
    assert set(config(cpu)) > set(config(rendered["base"]))


def store_url_source(manifests: Manifests, deployment: str) -> dict[str, Any]:
    (entry,) = [e for e in container(manifests, deployment)["env"]
                if e["name"] == SERVER_ENV_PREFIX + "STORE_URL"]  # fmt: skip
    return entry["valueFrom"]["secretKeyRef"]


def test_scaled_out_replicas_roll_one_at_a_time_on_the_shared_store(scaled_out, monkeypatch):
    deployment = scaled_out[("Deployment", "adapterd")]["spec"]
    assert deployment["replicas"] >= 2
    assert deployment["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}
    }  # fmt: skip
    budget = scaled_out[("PodDisruptionBudget", "adapterd")]["spec"]
    assert budget["selector"]["matchLabels"].items() <= (
        scaled_out[("Deployment", "adapterd")]["spec"]["template"]["metadata"]["labels"].items()
    )
    assert 1 <= budget["minAvailable"] < deployment["replicas"]
    assert store_url_source(scaled_out, "adapterd") == POSTGRES_SECRET
    settings = settings_of(scaled_out, monkeypatch)
    assert settings.train_workers == 0 and settings.engine_gpu_memory_fraction == 0.9
    claim = scaled_out[("PersistentVolumeClaim", "adapterd-data")]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_workers_share_the_store_and_the_volume_and_checkpoint_within_their_grace(scaled_out):
    worker = container(scaled_out, "adapterd-worker")
    assert worker["args"] == ["worker"]
    assert worker["envFrom"] == [{"configMapRef": {"name": "adapterd"}}]
    assert store_url_source(scaled_out, "adapterd-worker") == POSTGRES_SECRET
    assert data_claim(scaled_out, "adapterd-worker") == "adapterd-data"
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    drain = float(config(scaled_out)["ADAPTERD_DRAIN_GRACE_SECONDS"])
    assert pod_spec(scaled_out, "adapterd-worker")["terminationGracePeriodSeconds"] > drain
    metrics_port = int(config(scaled_out)["ADAPTERD_METRICS_PORT"])
    assert worker["ports"] == [{"name": "metrics", "containerPort": metrics_port}]
    assert worker["livenessProbe"]["httpGet"] == {"port": "metrics", "path": "/metrics"}
    assert "replicas" not in scaled_out[("Deployment", "adapterd-worker")]["spec"]  # KEDA's


def test_the_headless_service_resolves_to_every_ready_replica(scaled_out):
    service = scaled_out[("Service", "adapterd-grpc-headless")]["spec"]
    labels = scaled_out[("Deployment", "adapterd")]["spec"]["template"]["metadata"]["labels"]
    assert service["clusterIP"] == "None"
    assert not service.get("publishNotReadyAddresses")  # warming replicas get no calls
    assert service["selector"].items() <= labels.items()
    assert [(p["port"], p["targetPort"]) for p in service["ports"]] == [
        (int(config(scaled_out)["ADAPTERD_PORT"]), "grpc")
    ]


def test_keda_scales_the_workers_one_per_slot_with_the_secret_url(scaled_out):
    scaled = scaled_out[("ScaledObject", "adapterd-worker")]["spec"]
    assert scaled["scaleTargetRef"] == {"name": "adapterd-worker"}
    assert scaled["minReplicaCount"] == 0 < scaled["maxReplicaCount"]
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "postgresql"
    assert float(trigger["metadata"]["targetQueryValue"]) == int(
        config(scaled_out)["ADAPTERD_SLOTS"]
    )
    auth = scaled_out[("TriggerAuthentication", trigger["authenticationRef"]["name"])]["spec"]
    assert auth["secretTargetRef"] == [{"parameter": "connection", **POSTGRES_SECRET}]


def test_the_inference_pool_routes_http_to_the_serving_replicas(rendered):
    pooled = rendered["overlays/inference-pool"]
    pool = pooled[("InferencePool", "adapterd")]["spec"]
    labels = pooled[("Deployment", "adapterd")]["spec"]["template"]["metadata"]["labels"]
    assert pool["selector"]["matchLabels"].items() <= labels.items()
    assert pool["targetPorts"] == [{"number": int(config(pooled)["ADAPTERD_HTTP_PORT"])}]


async def test_the_scaled_objects_query_counts_the_training_jobs_waiting_or_running(
    rendered, postgres
):
    # The query runs against the schema the migrations make, on jobs in every state a store
    # can hold them in: it counts what a worker has or will have (training jobs waiting to be
    # claimed, or claimed and not trained yet), not evaluations or finished jobs.
    (trigger,) = rendered["overlays/scale-out"][("ScaledObject", "adapterd-worker")]["spec"][
        "triggers"
    ]
    url = postgres.create_database()
    store = PostgresStore(url)
    await store.open()
    try:
        now = time.time()
        for n, kind in enumerate([JobKind.TRAIN] * 6 + [JobKind.EVALUATE] * 2):
            await store.create_job(Job(
                id=f"job-{n}", tenant=f"t{n}", kind=kind, state=JobState.QUEUED, spec={},
                spec_digest=f"d{n}", request_id="", priority=0, created=now, updated=now,
            ))  # fmt: skip
        training = frozenset({Work.TRAINING})
        validating = await store.claim_job("w1", training, 60)
        running = await store.claim_job("w2", training, 60)
        await store.update_job(running.lease, JobState.RUNNING)
        for owner, end in (("w3", JobState.EVALUATION_PENDING), ("w4", JobState.SUCCEEDED)):
            claimed = await store.claim_job(owner, training, 60)
            for state in (JobState.RUNNING, end):
                await store.update_job(claimed.lease, state)
        await store.claim_job("r1", frozenset({Work.EVALUATION}), 60)  # an evaluation runs
        states = {
            j.id: (j.kind, j.state) for j in (await store.list_jobs(None, [], [], 50, 0)).jobs
        }
        expected = [job for job, (kind, state) in states.items() if kind is JobKind.TRAIN
                    and state in (JobState.QUEUED, JobState.VALIDATING, JobState.RUNNING)]  # fmt: skip
        assert len(expected) == 4  # two waiting, validating's and running's
        assert validating.state is JobState.VALIDATING
    finally:
        await store.close()
    async with await psycopg.AsyncConnection.connect(url) as conn:
        (counted,) = await (await conn.execute(trigger["metadata"]["query"])).fetchone()
    assert counted == len(expected)
