"""Adapter operations against the engine: load, lease for a request, evict, unload, alias.

The registry (pure state) decides; this module does the I/O and keeps the engine's adapter
cache, the registry and the store in step. The methods that take a `Principal` are what clients
reach (through gRPC and HTTP alike): they qualify the names the caller wrote and apply its tenant
rights (`service.authz`). The others take qualified names that the service checked already, at
a job's submission. Registered versions and aliases are stored, so a
restarted server serves them again, and a version a training worker published is adopted from
the store (`refresh`); each is checked again and loads on its first request.
Every change to the engine's cache happens under one lock, so
the cache never holds more than its capacity and vLLM never evicts on its own: every eviction is
ours, counted, and never hits a pinned, aliased or busy adapter.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from service.adapters.checks import AdapterLimits, check_adapter
from service.adapters.publish import install_checkpoint, publish
from service.adapters.registry import (
    NOT_REGISTERED,
    AdapterState,
    AdapterVersion,
    Registry,
    parse_ref,
    tenant_of,
)
from service.auth import Principal
from service.authz import can_read, qualify_read, qualify_write
from service.errors import (
    AdapterdError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from service.inference.engine import EngineError, InferenceEngine
from service.metrics import AdapterLabels, Metrics
from service.store.base import AdapterRecord, Store

logger = logging.getLogger(__name__)

UNLOAD_DRAIN_SECONDS = 60.0
"""How long an unload waits for the requests of what it removes to finish."""


@dataclass(frozen=True)
class AdapterView:
    """One version as clients see it."""

    entry: AdapterVersion
    aliases: tuple[str, ...]
    """Aliases that point at it."""
    path: str
    """Its directory relative to the adapter root (never an absolute server path)."""


class AdapterManager:
    """Owns the registry and the engine's adapter cache."""

    def __init__(
        self,
        *,
        engine: InferenceEngine,
        store: Store,
        limits: AdapterLimits,
        capacity: int,
        metrics: Metrics,
        labels: AdapterLabels,
        clock: Callable[[], float] = time.time,
        drain_seconds: float = UNLOAD_DRAIN_SECONDS,
    ) -> None:
        self._registry = Registry()
        self._drain_seconds = drain_seconds
        self.capacity = capacity
        self._engine = engine
        self._store = store
        self._limits = limits
        self._metrics = metrics
        self._labels = labels
        self._clock = clock
        self._cache_lock = asyncio.Lock()
        self._syncing = asyncio.Lock()
        """Held by a change written to the store and the registry together, and by a refresh,
        so a refresh never reads the store between the two."""
        self._retiring: set[asyncio.Task[None]] = set()
        self._drained = asyncio.Condition()

    # ---- what clients reach, with their rights
    async def load_for(self, principal: Principal, name: str, path: str, pin: bool) -> AdapterView:
        """`load` of the name the caller wrote (`[tenant/]name`), in a tenant it may change."""
        entry = await self.load(qualify_write(principal, name, "name"), path, pin)
        return self._view(entry)

    async def unload_for(self, principal: Principal, requested: str) -> list[str]:
        """`unload` of a version or name the caller may change."""
        qualified = qualify_read(principal, requested, "adapter")
        return await self.unload(qualify_write(principal, qualified, "adapter"))

    async def pin_for(self, principal: Principal, requested: str, pinned: bool) -> AdapterView:
        """`pin` of a version the caller may see (pinning is an admin's, by the policy table)."""
        entry = await self.pin(qualify_read(principal, requested, "adapter"), pinned)
        return self._view(entry)

    async def set_alias_for(self, principal: Principal, alias: str, target: str) -> tuple[str, str]:
        """`set_alias` of an alias in a tenant the caller may change, to a version it may see
        ("" removes the alias). Returns the qualified target and the previous one."""
        qualified_alias = qualify_write(principal, alias, "alias")
        qualified_target = qualify_read(principal, target, "target") if target else ""
        return qualified_target, await self.set_alias(qualified_alias, qualified_target)

    def find(self, principal: Principal, requested: str, field: str = "adapter") -> str:
        """The ready version a reference the caller wrote resolves to now, if it may see it.

        Raises:
            InvalidArgumentError, NotFoundError, FailedPreconditionError: see Registry.resolve.
        """
        return self._registry.resolve(qualify_read(principal, requested, field), field).ref

    def holds(self, path: Path) -> bool:
        """Whether a registered version's files are at `path` (resolved)."""
        return any(v.path == path for v in self._registry.versions.values())

    def visible(self, principal: Principal) -> list[AdapterView]:
        """Every version the caller may see, by name and version."""
        entries = sorted(self._registry.versions.values(), key=lambda v: (v.name, v.version))
        return [self._view(v) for v in entries if can_read(principal, v.tenant)]

    def model_names(self, principal: Principal) -> list[str]:
        """The names and aliases the caller may address, sorted (for /v1/models)."""
        names = {v.name for v in self._registry.versions.values()} | set(self._registry.aliases)
        return sorted(n for n in names if can_read(principal, tenant_of(n)))

    def view(self, ref: str) -> AdapterView:
        """What clients are told of the version `ref` ("tenant/name@N")."""
        return self._view(self._registry.get(ref, "adapter"))

    def _view(self, entry: AdapterVersion) -> AdapterView:
        return AdapterView(
            entry=entry,
            aliases=tuple(self._registry.aliases_of(entry)),
            path=str(entry.path.relative_to(self._limits.root.resolve())),
        )

    # ---- registration
    async def load(self, name: str, path: str, pin: bool) -> AdapterVersion:
        """Checks the adapter at `path` (relative to the root), publishes it as the next
        version of the qualified `name` and loads it into the engine.

        Raises:
            InvalidArgumentError: naming what is refused; nothing is registered then.
            NotFoundError: when `path` does not exist.
            ResourceExhaustedError: when the engine's cache is full of held adapters.
        """
        began = time.monotonic()
        async with self._syncing:  # a refresh meanwhile does not adopt it a second time
            _, record = await publish(
                self._store, self._limits, name, path, pin=pin, created=self._clock()
            )
            entry = self._register(record)
        try:
            await self._make_resident(entry)
        except ResourceExhaustedError as exc:
            entry.state, entry.error = AdapterState.FAILED, str(exc)
            self._update_tiers()
            raise
        except EngineError as exc:  # passed our checks, yet the engine refuses the files
            entry.state, entry.error = AdapterState.FAILED, str(exc)
            self._update_tiers()
            raise InvalidArgumentError(f"path: {exc}") from exc
        entry.state = AdapterState.READY
        self._record_load(entry, "register", time.monotonic() - began)
        logger.info("adapter %s loaded from %s (%.3f s)", entry.ref, path, entry.load_seconds)
        return entry

    async def load_once(self, name: str, path: str) -> AdapterVersion:
        """The ready version of the qualified `name` registered from `path` (relative to the
        root) before, or else `load` of it, unpinned: the same files registered twice under
        one name are one version. Raises as `load`."""
        where = (self._limits.root / path).resolve()
        for entry in self._registry.versions.values():
            if (entry.name, entry.path, entry.state) == (name, where, AdapterState.READY):
                return entry
        return await self.load(name, path, pin=False)

    async def load_checkpoint(
        self, name: str, checkpoint: Path, job_dir: Path, job_id: str
    ) -> AdapterVersion:
        """A job's checkpoint installed under the root once (`install_checkpoint`) and
        registered once as a version of the qualified `name` (`load_once`).

        Raises:
            FileNotFoundError: the checkpoint went away as it was copied (pruned).
            InvalidArgumentError, NotFoundError, ResourceExhaustedError: as `load`.
        """
        relative = await asyncio.to_thread(
            install_checkpoint, checkpoint, job_dir, self._limits.root, job_id
        )
        return await self.load_once(name, relative)

    def _register(self, record: AdapterRecord) -> AdapterVersion:
        entry = self._registry.register(
            record.name,
            record.version,
            path=record.path,
            sha256=record.sha256,
            rank=record.rank,
            base_model=record.base_model,
            created=record.created,
        )
        entry.pinned = record.pinned
        self._labels.admit(record.name)
        return entry

    async def _save(self, entry: AdapterVersion) -> None:
        await self._store.save_adapter(
            AdapterRecord(
                name=entry.name,
                version=entry.version,
                path=entry.path,
                sha256=entry.sha256,
                rank=entry.rank,
                base_model=entry.base_model,
                created=entry.created,
                pinned=entry.pinned,
            )
        )

    async def restore(self) -> None:
        """At start: registers the stored versions and aliases again (`refresh`)."""
        await self.refresh()

    async def refresh(self) -> None:
        """Brings this server's registry in step with the store, which other processes write
        too (a worker publishes, another replica unloads, pins or moves an alias): a version
        it does not know yet is checked again (one whose files changed or went away is FAILED,
        with the reason) and loads on its first request; a version gone from the store stops
        taking requests and leaves the engine once those running here finish; pins and
        aliases are the store's."""
        async with self._syncing:
            records, aliases = await self._store.adapters()
            stored = {f"{r.name}@{r.version}": r for r in records}
            for ref, record in stored.items():
                known = self._registry.versions.get(ref)
                if known is None:
                    await self._adopt(record)
                else:
                    known.pinned = record.pinned
            gone = [
                entry
                for ref, entry in self._registry.versions.items()
                if ref not in stored and entry.state is not AdapterState.UNLOADING
            ]
            before = set(self._registry.aliases)
            self._registry.aliases = {
                alias: ref
                for alias, (name, version) in aliases.items()
                if (ref := f"{name}@{version}") in self._registry.versions
            }
            for alias in self._registry.aliases.keys() - before:
                self._labels.admit(alias)
        for alias in before - self._registry.aliases.keys():
            self._release_label(alias)
        if gone:
            for entry in gone:
                entry.state = AdapterState.UNLOADING
            retire = asyncio.create_task(self._retire(gone), name="adapter-retire")
            self._retiring.add(retire)
            retire.add_done_callback(self._retiring.discard)
        self._update_tiers()

    async def _adopt(self, record: AdapterRecord) -> None:
        entry = self._register(record)
        try:
            relative = str(record.path.relative_to(self._limits.root.resolve()))
            checked = await asyncio.to_thread(partial(check_adapter, relative, self._limits))
            if checked.sha256 != record.sha256:
                raise InvalidArgumentError("adapter_model.safetensors changed since publishing")
        except (ValueError, AdapterdError) as exc:
            entry.state, entry.error = AdapterState.FAILED, f"checked again: {exc}"
            return
        entry.state = AdapterState.READY
        logger.info("adapter %s registered from the store", entry.ref)

    async def _retire(self, entries: list[AdapterVersion]) -> None:
        """Forgets versions another process removed from the store, once their requests here
        have finished (at most `drain_seconds`: past it they are removed anyway)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._drain_seconds), self._drained:
                await self._drained.wait_for(lambda: all(e.in_flight == 0 for e in entries))
        async with self._cache_lock:
            for entry in entries:
                if entry.resident:
                    await self._engine.remove_adapter(entry.engine_id)
                self._registry.versions.pop(entry.ref, None)
        for name in {entry.name for entry in entries}:
            self._release_label(name)
        self._update_tiers()

    async def _make_resident(self, entry: AdapterVersion) -> None:
        """Loads `entry` into the engine's cache, evicting the LRU free adapter if full."""
        async with self._cache_lock:
            if entry.resident:
                return
            if len(self._registry.resident()) >= self.capacity:
                victim = self._registry.eviction_candidate()
                if victim is None:
                    raise ResourceExhaustedError(
                        f"the engine's adapter cache ({self.capacity}, --max-cpu-loras) is full "
                        "of pinned, aliased or busy adapters; unpin or unload one"
                    )
                await self._engine.remove_adapter(victim.engine_id)
                victim.resident = False
                self._metrics.adapter_evictions.inc()
                logger.info("adapter %s evicted for %s", victim.ref, entry.ref)
            await self._engine.add_adapter(entry.slot)
            entry.resident = True
            self._update_tiers()

    def _record_load(self, entry: AdapterVersion, reason: str, seconds: float) -> None:
        entry.load_seconds = seconds
        self._metrics.adapter_loads.labels(reason).inc()
        self._metrics.adapter_load_seconds.labels(reason).observe(seconds)

    def _update_tiers(self) -> None:
        resident = sum(v.resident for v in self._registry.versions.values())
        self._metrics.adapters_resident.labels("engine").set(resident)
        self._metrics.adapters_resident.labels("disk").set(len(self._registry.versions) - resident)

    async def engine_restarted(self) -> None:
        """A new engine holds no adapters: every version reloads on its next request."""
        async with self._cache_lock:
            for entry in self._registry.versions.values():
                entry.resident = False
            self._update_tiers()

    # ---- requests
    def label(self, requested: str) -> str:
        """The metric label of a request that named the qualified `requested` (its tenant and
        name, never its version)."""
        return self._labels.of(requested.partition("@")[0])

    def alias_target(self, alias: str) -> str:
        """The version a qualified alias points at now ("" when there is no such alias)."""
        return self._registry.aliases.get(alias, "")

    def resolve(self, requested: str, field: str = "adapter") -> AdapterVersion:
        """The ready version a qualified reference resolves to now (see Registry.resolve)."""
        return self._registry.resolve(requested, field)

    @asynccontextmanager
    async def lease(self, requested: str) -> AsyncIterator[AdapterVersion | None]:
        """The version a request for `requested` runs on ("" = base model: None), resident in
        the engine and protected from eviction and unloading until the block exits.

        Raises:
            NotFoundError, FailedPreconditionError, InvalidArgumentError: see Registry.resolve.
            ResourceExhaustedError: when an evicted adapter cannot be reloaded for lack of room.
        """
        if not requested:
            yield None
            return
        entry = self._registry.resolve(requested)
        entry.in_flight += 1
        try:
            if not entry.resident:
                began = time.monotonic()
                await self._make_resident(entry)
                self._record_load(entry, "reload", time.monotonic() - began)
            yield entry
        finally:
            entry.in_flight -= 1
            entry.last_used = self._clock()
            if entry.in_flight == 0:
                async with self._drained:
                    self._drained.notify_all()

    # ---- changes
    async def unload(self, requested: str) -> list[str]:
        """Unregisters one version ("tenant/name@N") or every version of a name, after their
        requests drain (at most `drain_seconds`); frees their engine slots. Returns the refs
        removed. While it waits, new requests for them are refused; if the wait runs out or the
        call is cancelled (its deadline passed), they are as they were before.

        Raises:
            NotFoundError: when nothing matches.
            FailedPreconditionError: when an alias points at a version to remove, or its
                requests did not drain in time.
        """
        name, number = parse_ref(requested, "adapter")
        if number is None:
            entries = self._registry.of_name(name)
            if not entries:
                raise NotFoundError("adapter: " + NOT_REGISTERED.format(ref=repr(name)))
        else:
            entries = [self._registry.get(requested, "adapter")]
        for entry in entries:
            if aliases := self._registry.aliases_of(entry):
                raise FailedPreconditionError(
                    f"adapter: {entry.ref} is the target of alias {aliases[0]!r}; point the "
                    "alias elsewhere or remove it first"
                )
        before = [entry.state for entry in entries]
        for entry in entries:
            entry.state = AdapterState.UNLOADING
        try:
            async with asyncio.timeout(self._drain_seconds), self._drained:
                await self._drained.wait_for(lambda: all(e.in_flight == 0 for e in entries))
        except BaseException as exc:  # timed out, or the caller went away: undo
            for entry, state in zip(entries, before, strict=True):
                entry.state = state
            if isinstance(exc, TimeoutError):
                busy = sum(e.in_flight for e in entries)
                raise FailedPreconditionError(
                    f"adapter: {requested} still has {busy} requests in flight after "
                    f"{self._drain_seconds:g} s; it stays loaded, retry later"
                ) from None
            raise
        async with self._syncing, self._cache_lock:
            for entry in entries:
                if entry.resident:
                    await self._engine.remove_adapter(entry.engine_id)
                self._registry.remove(entry)
                await self._store.delete_adapter(entry.name, entry.version)
        self._release_label(name)
        self._update_tiers()
        return [e.ref for e in entries]

    def _release_label(self, name: str) -> None:
        if not self._registry.of_name(name) and name not in self._registry.aliases:
            self._labels.release(name)

    async def pin(self, requested: str, pinned: bool) -> AdapterVersion:
        """Pins or unpins one version."""
        async with self._syncing:
            entry = self._registry.get(requested, "adapter")
            entry.pinned = pinned
            await self._save(entry)
        return entry

    async def set_alias(self, alias: str, target: str) -> str:
        """Points the qualified `alias` at the version `target` ("" removes it); returns the
        previous target."""
        async with self._syncing:
            if not target:
                previous = self._registry.remove_alias(alias)
                await self._store.set_alias(alias, None)
                self._release_label(alias)
                return previous
            previous = self._registry.set_alias(alias, target)
            entry = self._registry.versions[target]
            await self._store.set_alias(alias, (entry.name, entry.version))
        self._labels.admit(alias)
        return previous
