from pathlib import Path

import pytest

from service.adapters.registry import AdapterState, Registry, parse_ref, qualify
from service.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError


def register(registry, name, now=0.0, ready=True):
    version = max((v.version for v in registry.of_name(name)), default=0) + 1
    entry = registry.register(
        name,
        version,
        path=Path("/a") / name.partition("/")[2],
        sha256="s",
        rank=8,
        base_model="tiny",
        created=now,
    )
    if ready:
        entry.state = AdapterState.READY
        entry.resident = True
    return entry


def test_a_version_registers_once_in_any_order_and_engine_ids_are_unique():
    registry = Registry()
    first, second = register(registry, "t/bot"), register(registry, "t/bot")
    other = register(registry, "t/other-bot")
    assert (first.ref, second.ref, other.ref) == ("t/bot@1", "t/bot@2", "t/other-bot@1")
    with pytest.raises(ValueError, match="t/bot@2 is registered already"):
        registry.register(
            "t/bot", 2, path=Path("/a"), sha256="s", rank=8, base_model="tiny", created=0.0
        )
    late = registry.register(  # published elsewhere under a number reserved earlier
        "t/bot", 0, path=Path("/a"), sha256="s", rank=8, base_model="tiny", created=0.0
    )
    assert late.ref == "t/bot@0" and [v.version for v in registry.of_name("t/bot")] == [0, 1, 2]
    engine_ids = [v.engine_id for v in registry.versions.values()]
    assert len(set(engine_ids)) == len(engine_ids)


def test_a_name_resolves_to_its_alias_else_its_newest_ready_version():
    registry = Registry()
    one, two = register(registry, "t/bot"), register(registry, "t/bot")
    register(registry, "t/bot", ready=False)  # bot@3 still loading
    assert registry.resolve("t/bot") is two
    registry.set_alias("t/bot", "t/bot@1")
    assert registry.resolve("t/bot") is one
    assert registry.resolve("t/bot@2") is two


def test_unknown_and_not_ready_adapters_are_refused_never_the_base_model():
    registry = Registry()
    loading = register(registry, "t/bot", ready=False)
    with pytest.raises(NotFoundError, match="no adapter or alias 't/nope'"):
        registry.resolve("t/nope")
    with pytest.raises(NotFoundError, match="'t/bot@7'"):
        registry.resolve("t/bot@7")
    with pytest.raises(FailedPreconditionError, match="bot@1 is loading"):
        registry.resolve("t/bot")
    loading.state, loading.error = AdapterState.FAILED, "rank too large"
    with pytest.raises(FailedPreconditionError, match="failed, not ready: rank too large"):
        registry.resolve("t/bot@1")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("t/Bot", "not a valid name"),
        ("t/-bot", "not a valid name"),
        ("t/" + "a" * 64, "not a valid name"),
        ("t/bot@0", "no valid version"),
        ("t/bot@x", "no valid version"),
        ("t/bot@1@2", "no valid version"),
        ("t/bot@99999999999", "no valid version"),
        ("t/base", "reserved"),
        ("t/other", "reserved"),
        ("bot", "names no valid tenant"),
        ("Acme/bot", "names no valid tenant"),
        ("a/b/c", "not a valid name"),
        ("/bot", "names no valid tenant"),
        ("t\x00/bot", "names no valid tenant"),
    ],
)
def test_bad_names_and_refs_are_invalid_arguments_naming_the_field(text, message):
    with pytest.raises(InvalidArgumentError, match=f"^adapter: .*{message}"):
        parse_ref(text, "adapter")


def test_alias_needs_an_exact_ready_version_and_returns_the_previous_target():
    registry = Registry()
    register(registry, "t/bot")
    register(registry, "t/bot")
    with pytest.raises(InvalidArgumentError, match="names no version"):
        registry.set_alias("t/prod", "t/bot")
    assert registry.set_alias("t/prod", "t/bot@1") == ""
    assert registry.set_alias("t/prod", "t/bot@2") == "t/bot@1"
    assert registry.aliases_of(registry.versions["t/bot@2"]) == ["t/prod"]
    assert registry.remove_alias("t/prod") == "t/bot@2"
    with pytest.raises(NotFoundError):
        registry.remove_alias("t/prod")


def test_eviction_takes_the_least_recently_used_version_that_nothing_holds():
    registry = Registry()
    pinned, aliased, busy, old, recent = (
        register(registry, f"t/{n}", now=i) for i, n in enumerate(["a", "b", "c", "d", "e"])
    )
    pinned.pinned = True
    registry.set_alias("t/prod", aliased.ref)
    busy.in_flight = 1
    recent.last_used = 100.0
    old.last_used = 50.0
    assert registry.eviction_candidate() is old
    old.resident = False
    assert registry.eviction_candidate() is recent
    recent.in_flight = 2
    assert registry.eviction_candidate() is None


def test_a_bare_name_is_qualified_with_the_callers_tenant():
    assert qualify("bot@2", "acme", "adapter") == "acme/bot@2"
    assert qualify("shared/bot", "acme", "adapter") == "shared/bot"
    with pytest.raises(InvalidArgumentError, match="adapter: longer than 200 characters"):
        qualify("x" * 300, "acme", "adapter")
