"""Engine crashes: the backoff and give-up policy with an injected clock, and the lifecycle
restarting a fake engine, reloading adapters, and giving up."""

import asyncio

from service.inference.engine import EngineState
from service.inference.fake import FakeEngine
from service.inference.lifecycle import EngineLifecycle
from service.inference.restarts import RestartPolicy
from service.metrics import Metrics


def test_crashes_back_off_exponentially_and_too_many_in_the_window_give_up():
    policy = RestartPolicy(max_restarts=3, window_seconds=600, base_delay=2, max_delay=5)
    assert [policy.after_crash(t) for t in (0.0, 10.0, 20.0)] == [2, 4, 5]
    assert policy.after_crash(30.0) is None  # the fourth crash within ten minutes


def test_crashes_outside_the_window_are_forgotten():
    policy = RestartPolicy(max_restarts=2, window_seconds=100, base_delay=1)
    assert policy.after_crash(0.0) == 1
    assert policy.after_crash(50.0) == 2
    assert policy.after_crash(120.0) == 2  # the one at 0 is out of the window: a second crash
    assert policy.after_crash(130.0) is None  # 50, 120, 130: a third within 100 s
    assert RestartPolicy(max_restarts=0).after_crash(0.0) is None


def lifecycle(engine, metrics, events, max_restarts):
    states: list[EngineState] = []

    async def on_state(state):
        states.append(state)

    async def restarted():
        events.append("restarted")

    async def gave_up():
        events.append("gave up")

    life = EngineLifecycle(
        engine, metrics, on_state, (1, 2),
        policy=RestartPolicy(max_restarts=max_restarts, base_delay=0.01),
        on_restarted=restarted, on_give_up=gave_up, health_interval=0.01,
    )  # fmt: skip
    return life, states


async def wait_for(predicate, seconds=5.0):
    async with asyncio.timeout(seconds):
        while not predicate():  # noqa: ASYNC110 (the lifecycle has no event to await)
            await asyncio.sleep(0.01)


async def test_a_crashed_engine_is_restarted_and_its_adapters_forgotten():
    engine, metrics, events = FakeEngine(), Metrics(), []
    life, states = lifecycle(engine, metrics, events, max_restarts=2)
    await life.start()
    assert life.state is EngineState.READY
    engine.crash()
    await wait_for(lambda: events == ["restarted"])
    assert life.state is EngineState.READY and engine.running
    assert states[-3:] == [EngineState.STARTING, EngineState.STARTING, EngineState.READY]
    assert metrics.registry.get_sample_value("adapterd_engine_restarts_total") == 1
    await life.stop()


async def test_an_engine_that_keeps_crashing_stays_failed_and_gives_up():
    engine, metrics, events = FakeEngine(), Metrics(), []
    life, _ = lifecycle(engine, metrics, events, max_restarts=1)
    await life.start()
    engine.crash()
    await wait_for(lambda: events == ["restarted"])
    engine.fail_start = True  # the restart itself fails now
    engine.crash()
    await wait_for(lambda: events == ["restarted", "gave up"])
    assert life.state is EngineState.FAILED
    await life.stop()
