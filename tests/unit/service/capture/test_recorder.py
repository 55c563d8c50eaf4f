"""The capture recorder on a real SQLite store: sampling at the policy's rate, redaction before
the write, the bounded queue, settling a read, and the retention sweep."""

import asyncio
import itertools
import time

import pytest

from service.capture.model import Capture, CapturePolicy, new_request_id
from service.capture.online import OnlineQuality
from service.capture.recorder import CaptureRecorder
from service.metrics import Metrics
from service.store.sqlite import SqliteStore


@pytest.fixture
async def store(tmp_path):
    opened = SqliteStore(tmp_path / "adapterd.db")
    await opened.open()
    yield opened
    await opened.close()


def capture(
    n: int | str, text: str = "hi", expires: float | None = None, answer: str | None = None
) -> Capture:
    return Capture(
        id=n if isinstance(n, str) else f"cap-{n}", tenant="acme", target="acme/bot", adapter_version="acme/bot@1",
        request={"prompt": text, "sampling": {}, "json_schema": None},
        answer=f"re: {text}" if answer is None else answer,
        finish_reason="stop", prompt_tokens=1, completion_tokens=1, latency_seconds=0.1,
        redacted={}, created=time.time(), expires=expires or time.time() + 3600,
    )  # fmt: skip


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def recorder_on(store, metrics: Metrics | None = None, **kwargs) -> CaptureRecorder:
    metrics = metrics or Metrics()
    return CaptureRecorder(store, metrics, OnlineQuality(metrics), **kwargs)


async def test_decisions_follow_the_policy_rate_and_tenant(store):
    draws = itertools.cycle([0.05, 0.3, 0.6, 0.9])  # half of them under the rate 0.5
    recorder = recorder_on(store, draw=lambda: next(draws))
    assert recorder.decide("acme", "acme/bot") is None  # no policy yet
    await store.set_capture_policy(CapturePolicy("acme", "acme/bot", 0.5, 3600.0, 0.0))
    await recorder.refresh()
    chosen = [recorder.decide("acme", "acme/bot@2") is not None for _ in range(8)]
    assert chosen == [True, True, False, False] * 2
    assert recorder.decide("globex", "acme/bot") is None
    await store.delete_capture_policy("acme", "acme/bot")
    await recorder.refresh()
    assert recorder.decide("acme", "acme/bot") is None


async def test_the_writer_stores_captures_redacted_and_counts_them(store):
    metrics = Metrics()
    recorder = recorder_on(store, metrics)
    writer = asyncio.create_task(recorder.run())
    recorder.record(capture(1, "mail me at ann@example.com"), "acme/bot")
    stored = await recorder.stored("cap-1")  # waits for this process's writer
    assert stored is not None
    assert (stored.request["prompt"], stored.answer) == (
        "mail me at [EMAIL]", "re: mail me at [EMAIL]",
    )  # fmt: skip
    assert stored.redacted == {"email": 2}
    assert value(metrics, "adapterd_captures_total", adapter="acme/bot", outcome="stored") == 1
    assert value(metrics, "adapterd_capture_redactions_total", kind="email") == 2
    writer.cancel()


async def test_a_full_queue_drops_and_counts_instead_of_waiting(store):
    metrics = Metrics()
    recorder = recorder_on(store, metrics, queue_size=2)
    for n in range(5):
        recorder.record(capture(n), "acme/bot")  # no writer runs: the queue fills
    dropped = value(metrics, "adapterd_captures_total", adapter="acme/bot", outcome="queue_full")
    assert dropped == 3
    writer = asyncio.create_task(recorder.run())
    await recorder.drain(5.0)
    assert [await store.get_capture(f"cap-{n}") is not None for n in range(5)] == [
        True, True, False, False, False,
    ]  # fmt: skip
    writer.cancel()


async def test_the_sweep_deletes_expired_captures_and_counts_them(store):
    metrics = Metrics()
    await store.add_captures([capture(1, expires=time.time() - 1)])
    await store.add_captures([capture(2)])
    sweeper = asyncio.create_task(recorder_on(store, metrics).sweep(interval=0.05))
    for _ in range(100):
        if value(metrics, "adapterd_captures_expired_total"):
            break
        await asyncio.sleep(0.02)
    sweeper.cancel()
    assert value(metrics, "adapterd_captures_expired_total") == 1
    assert await store.get_capture("cap-1") is None
    assert await store.get_capture("cap-2") is not None


async def test_what_queued_up_is_written_in_one_batch(store, monkeypatch):
    batches: list[int] = []
    original = store.add_captures

    async def counted(captures):
        batches.append(len(captures))
        await original(captures)

    monkeypatch.setattr(store, "add_captures", counted)
    recorder = recorder_on(store)
    for n in range(70):
        recorder.record(capture(n), "acme/bot")
    writer = asyncio.create_task(recorder.run())
    await recorder.drain(5.0)
    writer.cancel()
    assert batches == [64, 6]
    assert await store.get_capture("cap-69") is not None


async def test_answers_are_checked_against_the_policys_schema_into_the_online_gauges(store):
    metrics = Metrics()
    schema = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}
    await store.set_capture_policy(CapturePolicy("acme", "acme/bot", 1.0, 3600.0, 0.0, schema))
    recorder = recorder_on(store, metrics)
    await recorder.refresh()
    writer = asyncio.create_task(recorder.run())
    for n, answer in enumerate(['{"n": 1}', '{"n": "one"}', "one", '```json\n{"n": 2}\n```']):
        recorder.record(capture(n, answer=answer), "acme/bot")
    await recorder.drain(5.0)
    writer.cancel()
    checks = {
        outcome: value(metrics, "adapterd_online_schema_checks_total", adapter="acme/bot",
                       outcome=outcome)
        for outcome in ("valid", "invalid", "not_json")
    }  # fmt: skip
    assert checks == {"valid": 2, "invalid": 1, "not_json": 1}
    quality = {
        metric: value(metrics, "adapterd_online_quality", adapter="acme/bot", metric=metric)
        for metric in ("schema_valid_rate", "schema_parse_rate")
    }
    assert quality == {"schema_valid_rate": 0.5, "schema_parse_rate": 0.75}
    assert (await store.capture_policies())[0].schema == schema


async def test_a_recent_capture_another_replica_is_writing_is_looked_for_again(store):
    recorder = recorder_on(store)  # this process queued nothing
    recent = new_request_id("chatcmpl")

    async def other_replica_writes_late():
        await asyncio.sleep(0.5)
        await store.add_captures([capture(recent)])

    began = time.monotonic()
    writing = asyncio.create_task(other_replica_writes_late())
    found = await recorder.stored(recent)
    assert found is not None and found.id == recent
    assert 0.5 <= time.monotonic() - began < 2.0
    await writing
    began = time.monotonic()
    for unknown in ("cap-404", new_request_id("gen", now=time.time() - 3600)):
        assert await recorder.stored(unknown) is None  # an old or foreign id: at once
    assert time.monotonic() - began < 0.5
    began = time.monotonic()
    assert await recorder.stored(new_request_id("gen")) is None  # recent, never written
    assert 2.5 < time.monotonic() - began < 4.5


async def test_a_policys_schema_is_compiled_once_until_it_changes(store, monkeypatch):
    import service.capture.recorder as recorder_module

    compiled = []
    real = recorder_module.validator_of

    def counting(schema):
        compiled.append(schema)
        return real(schema)

    monkeypatch.setattr(recorder_module, "validator_of", counting)
    recorder = recorder_on(store)
    schema = {"type": "object", "required": ["name"]}
    await store.set_capture_policy(CapturePolicy("acme", "acme/bot", 1.0, 3600.0, 0.0, schema))
    for _ in range(3):  # the periodic rereads
        await recorder.refresh()
    assert compiled == [schema]
    changed = {"type": "object", "required": ["email"]}
    await store.set_capture_policy(CapturePolicy("acme", "acme/bot", 1.0, 3600.0, 0.0, changed))
    await recorder.refresh()
    assert compiled == [schema, changed]
