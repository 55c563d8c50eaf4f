"""The adapter registry: names, versions, aliases, pins and residency. Pure state, no I/O.

Every name and alias belongs to a tenant and is kept qualified, `tenant/name`; `qualify` turns
what a caller wrote (`[tenant/]name[@N]`, a bare name meaning the caller's tenant) into that
form, and `service.authz` decides whether the caller may see or change it. A name registered
again gets the next version, `tenant/name@N`, counted upward per name and never reused (the
store hands out the numbers, so they survive restarts). A request names a version exactly
(`acme/bot@3`), or a name: its alias if one is set, else its newest ready version. An alias is
one dictionary entry, so switching it is atomic: requests that resolved the old target keep it
(they hold a lease), new ones get the new target.

Eviction (`eviction_candidate`) picks the least recently used resident version that nothing
holds: not pinned, not an alias target, no request in flight, ready.
"""

import enum
import re
from dataclasses import dataclass, field
from pathlib import Path

from service.auth import TENANT_PATTERN, TENANT_RULE
from service.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from service.inference.engine import AdapterSlot

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
NAME_RULE = "lowercase letters, digits and '-', 1 to 63 characters, starting with a letter or digit"
RESERVED_NAMES = frozenset({"base", "other"})
"""Metric labels of their own (the base model, and names beyond the label limit)."""
MAX_REF_CHARS = 200
NOT_REGISTERED = "no adapter or alias {ref} is registered"
"""The one answer for a name that does not exist, or that the caller may not see."""


class AdapterState(enum.Enum):
    """Lifecycle of one version; mirrors adapterd.v1.AdapterState."""

    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    UNLOADING = "unloading"


@dataclass
class AdapterVersion:
    """One registered version of an adapter, and what the server knows about it now."""

    name: str
    version: int
    engine_id: int
    """The engine's integer id of this version (vLLM's lora_int_id), unique per server."""
    path: Path
    """Resolved adapter directory, inside the adapter root."""
    sha256: str
    """sha256 of adapter_model.safetensors."""
    rank: int
    base_model: str
    created: float
    """Wall-clock registration time (seconds since the epoch)."""
    state: AdapterState = AdapterState.LOADING
    pinned: bool = False
    """Pinned explicitly (alias targets are held as well, see `Registry.held`)."""
    resident: bool = False
    """In the engine's adapter cache."""
    last_used: float | None = None
    """Wall-clock time its last request ended."""
    load_seconds: float = 0.0
    error: str = ""
    in_flight: int = 0

    @property
    def ref(self) -> str:
        """ "tenant/name@version"."""
        return f"{self.name}@{self.version}"

    @property
    def tenant(self) -> str:
        """The tenant that owns it."""
        return tenant_of(self.name)

    @property
    def slot(self) -> AdapterSlot:
        """The engine's view of this version."""
        return AdapterSlot(engine_id=self.engine_id, ref=self.ref, path=self.path)


def tenant_of(qualified: str) -> str:
    """The tenant of "tenant/name" or "tenant/name@N"."""
    return qualified.partition("/")[0]


def check_name(value: str, field_name: str) -> str:
    """`value` if it is a valid qualified name, "tenant/name".

    Raises:
        InvalidArgumentError: naming `field_name` and the rule.
    """
    tenant, slash, name = value.partition("/")
    if not slash or not TENANT_PATTERN.match(tenant):
        raise InvalidArgumentError(
            f"{field_name}: {value!r} names no valid tenant (expected tenant/name; {TENANT_RULE})"
        )
    if not NAME_PATTERN.match(name):
        raise InvalidArgumentError(f"{field_name}: {name!r} is not a valid name ({NAME_RULE})")
    if name in RESERVED_NAMES:
        raise InvalidArgumentError(f"{field_name}: {name!r} is reserved")
    return value


def qualify(text: str, tenant: str, field_name: str) -> str:
    """What a caller wrote, `[tenant/]name[@N]`, in the qualified form `tenant/name[@N]`; a bare
    name is in `tenant`. Pure.

    Raises:
        InvalidArgumentError: naming `field_name` when the text is no valid reference.
    """
    if len(text) > MAX_REF_CHARS:
        raise InvalidArgumentError(f"{field_name}: longer than {MAX_REF_CHARS} characters")
    qualified = text if "/" in text else f"{tenant}/{text}"
    parse_ref(qualified, field_name)
    return qualified


def parse_ref(text: str, field_name: str) -> tuple[str, int | None]:
    """Splits "tenant/name@3" into ("tenant/name", 3) and "tenant/name" into ("tenant/name",
    None).

    Raises:
        InvalidArgumentError: naming `field_name` when the text is neither form.
    """
    name, at, version = text.partition("@")
    check_name(name, field_name)
    if not at:
        return name, None
    if not version.isdigit() or not 1 <= int(version) < 2**31:
        raise InvalidArgumentError(
            f"{field_name}: {text!r} has no valid version after '@' (expected name@N, N >= 1)"
        )
    return name, int(version)


@dataclass
class Registry:
    """Every registered version and alias of one server."""

    versions: dict[str, AdapterVersion] = field(default_factory=dict)
    """By ref."""
    aliases: dict[str, str] = field(default_factory=dict)
    """Alias -> ref."""
    _last_engine_id: int = 0

    def register(
        self,
        name: str,
        version: int,
        *,
        path: Path,
        sha256: str,
        rank: int,
        base_model: str,
        created: float,
    ) -> AdapterVersion:
        """Adds version `version` of `name`, in state LOADING. Versions may arrive out of
        order (a worker's publication read from the store after a later local one); the store
        never hands out a number twice."""
        check_name(name, "name")
        if f"{name}@{version}" in self.versions:
            raise ValueError(f"{name}@{version} is registered already")
        self._last_engine_id += 1
        entry = AdapterVersion(
            name=name,
            version=version,
            engine_id=self._last_engine_id,
            path=path,
            sha256=sha256,
            rank=rank,
            base_model=base_model,
            created=created,
        )
        self.versions[entry.ref] = entry
        return entry

    def remove(self, entry: AdapterVersion) -> None:
        """Forgets a version (its number stays used)."""
        del self.versions[entry.ref]

    def get(self, text: str, field_name: str) -> AdapterVersion:
        """The version named exactly by "name@N".

        Raises:
            InvalidArgumentError: when `text` is not name@N.
            NotFoundError: when no such version is registered.
        """
        if parse_ref(text, field_name)[1] is None:
            raise InvalidArgumentError(f"{field_name}: {text!r} names no version (use name@N)")
        entry = self.versions.get(text)
        if entry is None:
            raise NotFoundError(f"{field_name}: " + NOT_REGISTERED.format(ref=repr(text)))
        return entry

    def of_name(self, name: str) -> list[AdapterVersion]:
        """Every version of `name`, oldest first."""
        return sorted(
            (v for v in self.versions.values() if v.name == name), key=lambda v: v.version
        )

    def resolve(self, text: str, field_name: str = "adapter") -> AdapterVersion:
        """The version a request for `text` goes to: see the module doc.

        Raises:
            InvalidArgumentError: when `text` is not a valid name or ref.
            NotFoundError: when nothing by that name is registered.
            FailedPreconditionError: when it exists but is not ready.
        """
        name, number = parse_ref(text, field_name)
        if number is None and name in self.aliases:
            entry = self.versions[self.aliases[name]]
        elif number is not None:
            entry = self.get(text, field_name)
        else:
            candidates = self.of_name(name)
            if not candidates:
                raise NotFoundError(f"{field_name}: " + NOT_REGISTERED.format(ref=repr(text)))
            ready = [v for v in candidates if v.state is AdapterState.READY]
            entry = ready[-1] if ready else candidates[-1]
        if entry.state is not AdapterState.READY:
            detail = f": {entry.error}" if entry.error else ""
            raise FailedPreconditionError(
                f"{field_name}: adapter {entry.ref} is {entry.state.value}, not ready{detail}"
            )
        return entry

    def set_alias(self, alias: str, target: str) -> str:
        """Points `alias` at the ready version `target`; returns the previous target or ""."""
        check_name(alias, "alias")
        entry = self.get(target, "target")
        if entry.state is not AdapterState.READY:
            raise FailedPreconditionError(
                f"target: adapter {target} is {entry.state.value}; an alias needs a ready version"
            )
        previous = self.aliases.get(alias, "")
        self.aliases[alias] = entry.ref
        return previous

    def remove_alias(self, alias: str) -> str:
        """Removes `alias`; returns its target.

        Raises:
            NotFoundError: when there is no such alias.
        """
        check_name(alias, "alias")
        if alias not in self.aliases:
            raise NotFoundError("alias: " + NOT_REGISTERED.format(ref=repr(alias)))
        return self.aliases.pop(alias)

    def aliases_of(self, entry: AdapterVersion) -> list[str]:
        """Aliases that point at `entry`, sorted."""
        return sorted(a for a, ref in self.aliases.items() if ref == entry.ref)

    def held(self, entry: AdapterVersion) -> bool:
        """Never evicted: pinned explicitly or an alias target."""
        return entry.pinned or entry.ref in self.aliases.values()

    def resident(self) -> list[AdapterVersion]:
        """Versions in the engine's adapter cache."""
        return [v for v in self.versions.values() if v.resident]

    def eviction_candidate(self) -> AdapterVersion | None:
        """The least recently used resident version nothing holds, or None."""
        free = [
            v
            for v in self.resident()
            if not self.held(v) and v.in_flight == 0 and v.state is AdapterState.READY
        ]
        return min(free, key=lambda v: v.last_used or v.created, default=None)
