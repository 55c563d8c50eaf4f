"""The adapter manager over the fake engine: eviction, reloads, draining, aliases, labels."""

import asyncio
import shutil

import pytest

from service.adapters.manager import AdapterManager
from service.adapters.registry import AdapterState
from service.errors import FailedPreconditionError, InvalidArgumentError, ResourceExhaustedError
from service.inference.fake import FakeEngine
from service.metrics import AdapterLabels, Metrics
from service.store.sqlite import SqliteStore
from tests.support import adapter_limits


@pytest.fixture
async def store(tmp_path):
    store = SqliteStore(tmp_path / "adapterd.db")
    await store.open()
    yield store
    await store.close()


@pytest.fixture
def setup(tmp_path, tiny_model_dir, tiny_adapter, store):
    root = tmp_path / "adapters"
    for name in ("a", "b", "c"):
        shutil.copytree(tiny_adapter, root / name)
    engine = FakeEngine()
    metrics = Metrics()
    limits = adapter_limits(root, tiny_model_dir, max_bytes=2**30)
    clock = iter(range(1000)).__next__

    def make(capacity=2, labels=8):
        return AdapterManager(
            engine=engine,
            store=store,
            limits=limits,
            capacity=capacity,
            metrics=metrics,
            labels=AdapterLabels(metrics, labels),
            clock=lambda: float(clock()),
        )

    return engine, metrics, make


def sample(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels)


async def test_loading_beyond_capacity_evicts_the_least_recently_used(setup):
    engine, metrics, make = setup
    manager = make(capacity=2)
    a = await manager.load("a", "a", pin=False)
    b = await manager.load("b", "b", pin=False)
    async with manager.lease("a"):
        pass  # a is now more recently used than b
    c = await manager.load("c", "c", pin=False)
    assert (a.resident, b.resident, c.resident) == (True, False, True)
    assert set(engine.adapters) == {a.engine_id, c.engine_id}
    assert sample(metrics, "adapterd_adapter_evictions_total") == 1
    assert sample(metrics, "adapterd_adapters", tier="disk") == 1

    async with manager.lease("b") as leased:  # an evicted adapter reloads on its next request
        assert leased is b
        assert b.resident
    assert sample(metrics, "adapterd_adapter_loads_total", reason="reload") == 1
    assert sample(metrics, "adapterd_adapter_loads_total", reason="register") == 3
    assert len(engine.adapters) == 2


async def test_pinned_and_aliased_adapters_are_never_evicted(setup):
    _, _, make = setup
    manager = make(capacity=2)
    await manager.load("a", "a", pin=True)
    await manager.load("b", "b", pin=False)
    await manager.set_alias("prod", "b@1")
    with pytest.raises(ResourceExhaustedError, match="full of pinned, aliased or busy"):
        await manager.load("c", "c", pin=False)
    assert manager.registry.versions["c@1"].state is AdapterState.FAILED
    with pytest.raises(FailedPreconditionError, match="c@1 is failed"):
        async with manager.lease("c"):
            pass


async def test_unload_drains_requests_in_flight_then_frees_the_slot(setup):
    engine, _, make = setup
    manager = make()
    a = await manager.load("a", "a", pin=False)
    lease = manager.lease("a")
    await lease.__aenter__()
    unloading = asyncio.create_task(manager.unload("a"))
    await asyncio.sleep(0.05)
    assert not unloading.done()
    assert a.state is AdapterState.UNLOADING
    assert a.engine_id in engine.adapters  # the running request still has it
    with pytest.raises(FailedPreconditionError, match="a@1 is unloading"):
        async with manager.lease("a@1"):
            pass
    await lease.__aexit__(None, None, None)
    assert await asyncio.wait_for(unloading, 1) == ["a@1"]
    assert engine.adapters == {}
    assert manager.registry.versions == {}


async def test_an_alias_target_cannot_be_unloaded(setup):
    _, _, make = setup
    manager = make()
    await manager.load("a", "a", pin=False)
    await manager.set_alias("prod", "a@1")
    with pytest.raises(FailedPreconditionError, match="target of alias 'prod'"):
        await manager.unload("a")
    await manager.set_alias("prod", "")
    assert await manager.unload("a") == ["a@1"]


async def test_a_refused_adapter_registers_nothing(setup):
    _, _, make = setup
    manager = make()
    with pytest.raises(InvalidArgumentError, match=r"contains '\.\.'"):
        await manager.load("a", "../a", pin=False)
    assert manager.registry.versions == {}
    assert (await manager.load("a", "a", pin=False)).ref == "a@1"


async def test_adapter_labels_are_bounded_and_go_away_with_the_adapter(setup):
    _, metrics, make = setup
    manager = make(labels=1)
    await manager.load("a", "a", pin=False)
    await manager.load("b", "b", pin=False)
    assert (manager.label("a@1"), manager.label("b"), manager.label("")) == ("a", "other", "base")
    metrics.generated_tokens.labels("a").inc(3)
    await manager.unload("a")
    assert sample(metrics, "adapterd_generated_tokens_total", adapter="a") is None
    await manager.load("c", "c", pin=False)
    assert manager.label("c") == "c"  # the freed place goes to the next name


async def test_a_restarted_manager_serves_the_stored_versions_and_aliases(setup, tmp_path):
    _, _, make = setup
    before = make()
    await before.load("a", "a", pin=True)
    await before.load("a", "b", pin=False)
    await before.load("c", "c", pin=False)
    await before.set_alias("prod", "a@1")
    await before.unload("a@2")
    (tmp_path / "adapters" / "c" / "adapter_model.safetensors").write_bytes(b"\x00" * 16)

    after = make()  # same store, a new process's worth of state
    await after.restore()
    restored = after.registry.versions
    assert sorted(restored) == ["a@1", "c@1"]
    assert (restored["a@1"].state, restored["a@1"].pinned) == (AdapterState.READY, True)
    assert not restored["a@1"].resident  # loads on its first request
    assert restored["c@1"].state is AdapterState.FAILED
    assert "on restart" in restored["c@1"].error
    assert after.registry.resolve("prod") is restored["a@1"]
    async with after.lease("prod") as entry:
        assert entry.resident
    assert (await after.load("a", "a", pin=False)).ref == "a@3"  # a@2 stays used
