"""Bearer-token authentication: who the caller is, from a tokens file.

The tokens file is YAML or JSON, a list of `{token, tenant, role}`. Tokens are kept only as
sha256 digests in memory. Pure logic: the gRPC interceptor that applies it is in
`service.grpc.interceptors`.
"""

import enum
import hashlib
import re
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from service.errors import ConfigError, UnauthenticatedError

MIN_TOKEN_LENGTH = 16
TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
TENANT_RULE = "a tenant is lowercase letters, digits, '_' and '-', 1 to 64 characters"
SHARED_TENANT = "shared"
"""The reserved tenant of what an admin publishes to all: every caller may use it, only admins
may change it. No token may belong to it."""
DEFAULT_TENANT = "default"
"""The tenant of every caller when authentication is off."""


class Role(enum.Enum):
    """What a caller may do; mirrors adapterd.v1.Role."""

    USER = "user"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request."""

    tenant: str
    """Tenant whose jobs, datasets and adapters the caller owns; DEFAULT_TENANT when auth is
    off."""
    role: Role
    """The caller's role."""


# Who is calling, set by the auth interceptor around each RPC. With auth off, every caller is
# an admin of the default tenant.
ANONYMOUS_ADMIN = Principal(tenant=DEFAULT_TENANT, role=Role.ADMIN)
current_principal: ContextVar[Principal] = ContextVar("current_principal", default=ANONYMOUS_ADMIN)


class _TokenEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    token: str = Field(min_length=MIN_TOKEN_LENGTH)
    tenant: str = Field(pattern=TENANT_PATTERN.pattern)
    role: Literal["user", "admin"]

    @field_validator("tenant")
    @classmethod
    def _not_shared(cls, value: str) -> str:
        if value == SHARED_TENANT:
            raise ValueError(f"{SHARED_TENANT!r} is reserved for what admins publish to all")
        return value


_ENTRIES = TypeAdapter(list[_TokenEntry])


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenTable:
    """Maps bearer tokens to principals."""

    def __init__(self, principals_by_digest: dict[bytes, Principal]) -> None:
        self._by_digest = principals_by_digest

    @classmethod
    def parse(cls, text: str, source: str) -> "TokenTable":
        """Parses a tokens file's text.

        Raises:
            ConfigError: naming the entry index and field of every problem, and duplicates.
        """
        try:
            raw = yaml.safe_load(text)
            entries = _ENTRIES.validate_python(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--auth-tokens-file {source}: not valid YAML/JSON ({exc})") from None
        except ValidationError as exc:
            problems = "; ".join(
                f"[{'.'.join(str(p) for p in e['loc'])}]: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(f"--auth-tokens-file {source}: {problems}") from None
        table: dict[bytes, Principal] = {}
        for index, entry in enumerate(entries):
            digest = _digest(entry.token)
            if digest in table:
                raise ConfigError(f"--auth-tokens-file {source}: [{index}].token is a duplicate")
            table[digest] = Principal(entry.tenant, Role(entry.role))
        if not table:
            raise ConfigError(f"--auth-tokens-file {source}: lists no tokens")
        return cls(table)

    @classmethod
    def load(cls, path: Path) -> "TokenTable":
        """Reads and parses a tokens file.

        Raises:
            ConfigError: when the file cannot be read or is invalid.
        """
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--auth-tokens-file {path}: {exc.strerror}") from None
        return cls.parse(text, str(path))

    def authenticate(self, authorization: str | None) -> Principal:
        """Returns the principal of an `authorization` metadata value ("Bearer <token>").

        Raises:
            UnauthenticatedError: when the value is missing, malformed or an unknown token.
        """
        if not authorization:
            raise UnauthenticatedError("missing 'authorization: Bearer <token>' metadata")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise UnauthenticatedError("authorization metadata must be 'Bearer <token>'")
        principal = self._by_digest.get(_digest(token.strip()))
        if principal is None:
            raise UnauthenticatedError("unknown bearer token")
        return principal
