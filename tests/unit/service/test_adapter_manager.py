"""The adapter manager over the fake engine: eviction, reloads, draining, aliases, labels."""

import asyncio
import shutil

import pytest

from service.adapters.checks import check_adapter
from service.adapters.manager import AdapterManager
from service.adapters.registry import AdapterState
from service.auth import Principal, Role
from service.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from service.inference.fake import FakeEngine
from service.metrics import AdapterLabels, Metrics
from service.store.base import AdapterRecord
from tests.support import adapter_limits

ADMIN = Principal("ops", Role.ADMIN)
ACME = Principal("acme", Role.USER)
GLOBEX = Principal("globex", Role.USER)


@pytest.fixture
def setup(tmp_path, tiny_model_dir, tiny_adapter, store):
    root = tmp_path / "adapters"
    for name in ("a", "b", "c"):
        shutil.copytree(tiny_adapter, root / name)
    engine = FakeEngine()
    metrics = Metrics()
    limits = adapter_limits(root, tiny_model_dir, max_bytes=2**30)
    clock = iter(range(1000)).__next__

    def make(capacity=2, labels=8, drain_seconds=60.0, engine=engine):
        return AdapterManager(
            engine=engine,
            store=store,
            limits=limits,
            capacity=capacity,
            metrics=metrics,
            labels=AdapterLabels(metrics, labels),
            clock=lambda: float(clock()),
            drain_seconds=drain_seconds,
        )

    return engine, metrics, make


def sample(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels)


async def test_loading_beyond_capacity_evicts_the_least_recently_used(setup):
    engine, metrics, make = setup
    manager = make(capacity=2)
    a = await manager.load("t/a", "a", pin=False)
    b = await manager.load("t/b", "b", pin=False)
    async with manager.lease("t/a"):
        pass  # a is now more recently used than b
    c = await manager.load("t/c", "c", pin=False)
    assert (a.resident, b.resident, c.resident) == (True, False, True)
    assert set(engine.adapters) == {a.engine_id, c.engine_id}
    assert sample(metrics, "adapterd_adapter_evictions_total") == 1
    assert sample(metrics, "adapterd_adapters", tier="disk") == 1

    async with manager.lease("t/b") as leased:  # an evicted adapter reloads on its next request
        assert leased is b
        assert b.resident
    assert sample(metrics, "adapterd_adapter_loads_total", reason="reload") == 1
    assert sample(metrics, "adapterd_adapter_loads_total", reason="register") == 3
    assert len(engine.adapters) == 2


async def test_pinned_and_aliased_adapters_are_never_evicted(setup):
    _, _, make = setup
    manager = make(capacity=2)
    await manager.load("t/a", "a", pin=True)
    await manager.load("t/b", "b", pin=False)
    await manager.set_alias("t/prod", "t/b@1")
    with pytest.raises(ResourceExhaustedError, match="full of pinned, aliased or busy"):
        await manager.load("t/c", "c", pin=False)
    assert manager.view("t/c@1").entry.state is AdapterState.FAILED
    with pytest.raises(FailedPreconditionError, match="t/c@1 is failed"):
        async with manager.lease("t/c"):
            pass


async def test_unload_drains_requests_in_flight_then_frees_the_slot(setup):
    engine, _, make = setup
    manager = make()
    a = await manager.load("t/a", "a", pin=False)
    lease = manager.lease("t/a")
    await lease.__aenter__()
    unloading = asyncio.create_task(manager.unload("t/a"))
    await asyncio.sleep(0.05)
    assert not unloading.done()
    assert a.state is AdapterState.UNLOADING
    assert a.engine_id in engine.adapters  # the running request still has it
    with pytest.raises(FailedPreconditionError, match="t/a@1 is unloading"):
        async with manager.lease("t/a@1"):
            pass
    await lease.__aexit__(None, None, None)
    assert await asyncio.wait_for(unloading, 1) == ["t/a@1"]
    assert engine.adapters == {}
    assert manager.visible(ADMIN) == []


async def test_an_alias_target_cannot_be_unloaded(setup):
    _, _, make = setup
    manager = make()
    await manager.load("t/a", "a", pin=False)
    await manager.set_alias("t/prod", "t/a@1")
    with pytest.raises(FailedPreconditionError, match="target of alias 't/prod'"):
        await manager.unload("t/a")
    await manager.set_alias("t/prod", "")
    assert await manager.unload("t/a") == ["t/a@1"]


async def test_a_refused_adapter_registers_nothing(setup):
    _, _, make = setup
    manager = make()
    with pytest.raises(InvalidArgumentError, match=r"contains '\.\.'"):
        await manager.load("t/a", "../a", pin=False)
    assert manager.visible(ADMIN) == []
    assert (await manager.load("t/a", "a", pin=False)).ref == "t/a@1"


async def test_adapter_labels_are_bounded_and_go_away_with_the_adapter(setup):
    _, metrics, make = setup
    manager = make(labels=1)
    await manager.load("t/a", "a", pin=False)
    await manager.load("t/b", "b", pin=False)
    labels = (manager.label("t/a@1"), manager.label("t/b"), manager.label(""))
    assert labels == ("t/a", "other", "base")
    metrics.generated_tokens.labels("t/a").inc(3)
    await manager.unload("t/a")
    assert sample(metrics, "adapterd_generated_tokens_total", adapter="t/a") is None
    await manager.load("t/c", "c", pin=False)
    assert manager.label("t/c") == "t/c"  # the freed place goes to the next name


async def test_a_restarted_manager_serves_the_stored_versions_and_aliases(setup, tmp_path):
    _, _, make = setup
    before = make()
    await before.load("t/a", "a", pin=True)
    await before.load("t/a", "b", pin=False)
    await before.load("t/c", "c", pin=False)
    await before.set_alias("t/prod", "t/a@1")
    await before.unload("t/a@2")
    (tmp_path / "adapters" / "c" / "adapter_model.safetensors").write_bytes(b"\x00" * 16)

    after = make()  # same store, a new process's worth of state
    await after.restore()
    restored = {v.entry.ref: v.entry for v in after.visible(ADMIN)}
    assert sorted(restored) == ["t/a@1", "t/c@1"]
    assert (restored["t/a@1"].state, restored["t/a@1"].pinned) == (AdapterState.READY, True)
    assert not restored["t/a@1"].resident  # loads on its first request
    assert restored["t/c@1"].state is AdapterState.FAILED
    assert "checked again" in restored["t/c@1"].error
    assert after.resolve("t/prod") is restored["t/a@1"]
    async with after.lease("t/prod") as entry:
        assert entry.resident
    assert (await after.load("t/a", "a", pin=False)).ref == "t/a@3"  # a@2 stays used


async def test_a_version_a_worker_published_is_adopted_even_after_a_later_local_one(
    setup, store, tmp_path, tiny_model_dir
):
    _, _, make = setup
    manager = make()
    await manager.load("t/a", "a", pin=False)
    # A worker reserved t/a@2 first and publishes it after this server loaded t/a@3.
    reserved = await store.next_adapter_version("t/a")
    await manager.load("t/a", "b", pin=False)
    limits = adapter_limits(tmp_path / "adapters", tiny_model_dir, max_bytes=2**30)
    checked = check_adapter("c", limits)
    await store.save_adapter(
        AdapterRecord("t/a", reserved, checked.path, checked.sha256, checked.rank,
                      checked.base_model, 1.0, pinned=False)
    )  # fmt: skip
    await manager.refresh()
    await manager.refresh()  # adopting happens once
    versions = {v.entry.ref: v.entry for v in manager.visible(ADMIN)}
    assert sorted(versions) == ["t/a@1", "t/a@2", "t/a@3"]
    assert (versions["t/a@2"].state, versions["t/a@2"].resident) == (AdapterState.READY, False)
    assert manager.resolve("t/a").ref == "t/a@3"  # the newest version answers the name
    async with manager.lease("t/a@2") as entry:  # loads on its first request
        assert entry.resident


async def test_a_replica_follows_the_alias_moves_pins_and_unloads_of_another(setup):
    _, _, make = setup
    first, second_engine = make(), FakeEngine()
    second = make(engine=second_engine)  # another replica: its own engine, the same store
    await first.load("t/a", "a", pin=False)
    await first.load("t/a", "b", pin=False)
    await first.set_alias("t/prod", "t/a@1")
    await second.restore()
    assert second.resolve("t/prod").ref == "t/a@1"
    async with second.lease("t/prod") as serving:  # a request on the second replica
        await first.set_alias("t/prod", "t/a@2")
        await first.pin("t/a@2", True)
        await first.unload("t/a@1")
        await second.refresh()
        assert second.resolve("t/prod").ref == "t/a@2"
        assert second.view("t/a@2").entry.pinned
        assert serving.state is AdapterState.UNLOADING  # no new requests; this one finishes
        with pytest.raises(FailedPreconditionError):
            second.resolve("t/a@1")
    await asyncio.gather(*second._retiring)
    assert sorted(v.entry.ref for v in second.visible(ADMIN)) == ["t/a@2"]
    assert not second_engine.adapters  # it left the second engine once its request ended


async def test_an_unload_that_cannot_drain_in_time_or_is_cancelled_leaves_the_adapter_serving(
    setup,
):
    _, _, make = setup
    manager = make(drain_seconds=0.1)
    a = await manager.load("t/a", "a", pin=False)
    lease = manager.lease("t/a")
    await lease.__aenter__()
    with pytest.raises(
        FailedPreconditionError, match=r"still has 1 requests in flight after 0\.1 s"
    ):
        await manager.unload("t/a")
    assert a.state is AdapterState.READY
    task = asyncio.create_task(manager.unload("t/a@1"))
    await asyncio.sleep(0.02)
    task.cancel()  # the client's deadline passed
    with pytest.raises(asyncio.CancelledError):
        await task
    assert a.state is AdapterState.READY
    async with manager.lease("t/a"):
        pass
    await lease.__aexit__(None, None, None)


async def test_tenants_see_and_change_only_their_own_and_shared_adapters(setup):
    _, _, make = setup
    manager = make(capacity=3)
    await manager.load_for(ADMIN, "acme/a", "a", pin=False)
    await manager.load_for(ADMIN, "shared/b", "b", pin=False)
    await manager.load_for(ADMIN, "globex/c", "c", pin=False)
    assert [v.entry.ref for v in manager.visible(ACME)] == ["acme/a@1", "shared/b@1"]
    assert manager.model_names(GLOBEX) == ["globex/c", "shared/b"]
    assert manager.find(ACME, "a") == "acme/a@1"  # a bare name is the caller's tenant
    assert manager.find(ACME, "shared/b") == "shared/b@1"
    # Another tenant's adapter answers exactly as one that does not exist.
    with pytest.raises(NotFoundError) as theirs:
        manager.find(ACME, "globex/c")
    with pytest.raises(NotFoundError) as nobodys:
        manager.find(ACME, "globex/zzz")
    assert str(theirs.value) == str(nobodys.value).replace("zzz", "c")
    with pytest.raises(NotFoundError):
        await manager.unload_for(ACME, "globex/c")
    with pytest.raises(PermissionDeniedError, match="a user changes only its own tenant"):
        await manager.unload_for(ACME, "shared/b")
    with pytest.raises(PermissionDeniedError, match="'globex/prod' is in tenant 'globex'"):
        await manager.set_alias_for(ACME, "globex/prod", "shared/b@1")
    with pytest.raises(NotFoundError):
        await manager.set_alias_for(ACME, "prod", "globex/c@1")
    assert await manager.set_alias_for(ACME, "prod", "shared/b@1") == ("shared/b@1", "")
    assert manager.find(ACME, "prod") == "shared/b@1"
    with pytest.raises(NotFoundError):  # acme's alias is acme's alone
        manager.find(GLOBEX, "acme/prod")
    assert await manager.unload_for(ACME, "a") == ["acme/a@1"]


async def test_the_same_files_registered_twice_under_one_name_are_one_version(setup):
    _, _, make = setup
    manager = make(capacity=3)
    first = await manager.load_once("t/a-ckpt", "a")
    assert (first.ref, first.state) == ("t/a-ckpt@1", AdapterState.READY)
    assert await manager.load_once("t/a-ckpt", "a") is first
    assert (await manager.load_once("t/a-ckpt", "b")).ref == "t/a-ckpt@2"  # other files
    assert (await manager.load_once("t/a", "a")).ref == "t/a@1"  # another name
