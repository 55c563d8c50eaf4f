"""service/metrics.py: the engine's step stats on the page, as the endpoint picker reads them."""

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.inference.engine import EngineStats
from service.metrics import Metrics


def lora_series(metrics: Metrics) -> list[tuple[dict[str, str], float]]:
    page = generate_latest(metrics.registry).decode()
    (family,) = [f for f in text_string_to_metric_families(page)
                 if f.name == "adapterd_lora_requests_info"]  # fmt: skip
    return [(sample.labels, sample.value) for sample in family.samples]


def step(running=(), waiting=(), max_loras=4) -> EngineStats:
    return EngineStats(running=len(running), waiting=len(waiting), kv_cache_usage=0.25,
                       running_adapters=running, waiting_adapters=waiting, max_loras=max_loras)  # fmt: skip


def test_lora_requests_info_names_the_last_steps_versions_in_one_series(monkeypatch):
    metrics = Metrics()
    clock = iter([100.0, 101.0, 102.0])
    monkeypatch.setattr("service.metrics.time.time", lambda: next(clock))
    metrics.record_engine_stats(step(running=("acme/a@1", "acme/b@2"), waiting=("globex/c@1",)))
    assert lora_series(metrics) == [({"max_lora": "4", "waiting_lora_adapters": "globex/c@1",
                                      "running_lora_adapters": "acme/a@1,acme/b@2"}, 100.0)]  # fmt: skip
    metrics.record_engine_stats(step(running=("globex/c@1",)))
    metrics.record_engine_stats(step(running=("globex/c@1",)))  # the same batch: a newer time
    assert lora_series(metrics) == [({"max_lora": "4", "waiting_lora_adapters": "",
                                      "running_lora_adapters": "globex/c@1"}, 102.0)]  # fmt: skip
    page = generate_latest(metrics.registry).decode()
    assert "adapterd_engine_kv_cache_usage_ratio 0.25" in page
