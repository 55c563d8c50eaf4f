"""Uploads: every file a client sends, of every kind, through one path.

A client streams a file with a header (kind, name, size, sha256). The bytes go to a staging
directory of this process (`uploads/.staging/<host>-<pid>/`, so replicas sharing one root never
touch each other's), are checked for their size and sha256, then for their kind (a task archive
is extracted by `service.archive` and its YAMLs loaded by the allowlisting loader, an adapter
archive extracted the same way and its peft files checked; a prompt set and a JSON Schema are
parsed, RE2 patterns included), fsynced, and moved into place; only then is
the record committed, with the tenant's byte quota checked in the same transaction. An upload
belongs to the uploading tenant and is named by its id; `path_of` and `client_files` answer
another tenant's id exactly as an unknown one.

CPU and file work on client bytes (hashing aside) runs in a worker thread, never on the event
loop.
"""

import asyncio
import enum
import hashlib
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from eval.benchmarks import find_tasks
from eval.human import read_ratings
from eval.prompts import PromptSetError, read_schema
from eval.rubric import read_conversations
from eval.safety import read_families
from eval.sources import ClientFiles
from eval.spec import EvalSpec
from eval.taskyaml import TaskYamlError, load_task_yaml
from service.adapters.checks import check_peft_files
from service.archive import ARCHIVE_SUFFIXES, ArchiveError, ArchiveLimits, extract
from service.auth import Principal
from service.authz import is_admin, visible_tenant
from service.errors import InvalidArgumentError, NotFoundError, PermissionDeniedError
from service.paths import confined
from service.store.base import Store, UploadRecord, could_be_issued, upload_quota_error


class UploadKind(enum.StrEnum):
    """What an upload holds; mirrors adapterd.v1.UploadKind."""

    DATASET = "dataset"
    TASK_ARCHIVE = "task_archive"
    PROMPT_SET = "prompt_set"
    JSON_SCHEMA = "json_schema"
    SAFETY_FAMILIES = "safety_families"
    HUMAN_RATINGS = "human_ratings"
    ADAPTER_ARCHIVE = "adapter_archive"


@dataclass(frozen=True)
class _Rule:
    prefix: str
    suffixes: tuple[str, ...]


RULES = {
    UploadKind.DATASET: _Rule("ds", (".jsonl", ".json", ".csv", ".parquet")),
    UploadKind.TASK_ARCHIVE: _Rule("task", ARCHIVE_SUFFIXES),
    UploadKind.PROMPT_SET: _Rule("prompts", (".jsonl",)),
    UploadKind.JSON_SCHEMA: _Rule("schema", (".json",)),
    UploadKind.SAFETY_FAMILIES: _Rule("safety", (".jsonl",)),
    UploadKind.HUMAN_RATINGS: _Rule("ratings", (".jsonl",)),
    UploadKind.ADAPTER_ARCHIVE: _Rule("adapter", ARCHIVE_SUFFIXES),
}
ARCHIVE_KINDS = frozenset({UploadKind.TASK_ARCHIVE, UploadKind.ADAPTER_ARCHIVE})
"""Kinds stored extracted: the record's path is the directory."""
MAX_FILE_NAME = 255
READ_CHUNK_BYTES = 1 << 20
CLIENT_FILES = (
    ("task_dir", "benchmarks", "task_dir", "task_upload", UploadKind.TASK_ARCHIVE),
    ("schema_prompts", "schema_adherence", "prompts", "prompts_upload", UploadKind.PROMPT_SET),
    ("schema", "schema_adherence", "schema_file", "schema_upload", UploadKind.JSON_SCHEMA),
    ("tool_prompts", "tool_calls", "prompts", "prompts_upload", UploadKind.PROMPT_SET),
    ("win_rate_prompts", "win_rate", "prompts", "prompts_upload", UploadKind.PROMPT_SET),
    ("safety_families", "safety", "families", "families_upload", UploadKind.SAFETY_FAMILIES),
    ("rubric_prompts", "rubric", "prompts", "prompts_upload", UploadKind.PROMPT_SET),
    ("human_prompts", "human", "prompts", "prompts_upload", UploadKind.PROMPT_SET),
)
"""The client files an evaluation spec may name: (ClientFiles field, spec section, the key of
an admin's raw path, the key of an upload id, the upload's kind)."""


@dataclass(frozen=True)
class Announced:
    """What an upload's header claims; checked against the bytes that follow."""

    kind: UploadKind
    file_name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class UploadLimits:
    """Where uploads go and how much a tenant may keep."""

    root: Path
    """`DATA_DIR/datasets/uploads`."""
    data_root: Path
    """`DATA_DIR/datasets`: where an admin's raw paths resolve."""
    max_file_bytes: int
    """One upload, and what one archive may extract to."""
    tenant_quota_bytes: int
    """All uploads of one tenant, on disk."""
    max_archive_files: int = 1000


def staging_name() -> str:
    """This process's staging directory name: host and pid (in a pod, the pid alone is 1)."""
    return f"{socket.gethostname()}-{os.getpid()}"


def check_file_name(file_name: str, kind: UploadKind, field: str = "header.file_name") -> str:
    """`file_name` if it may name an upload of `kind`: a plain name of its suffixes.

    Raises:
        InvalidArgumentError: naming `field`.
    """
    suffixes = RULES[kind].suffixes
    name = PurePosixPath(file_name).name if "\x00" not in file_name else ""
    if (
        not name
        or name != file_name
        or name.startswith(".")
        or len(name.encode()) > MAX_FILE_NAME
        or not name.endswith(suffixes)
    ):
        raise InvalidArgumentError(
            f"{field}: {file_name[:300]!r} must be a plain file name of at most "
            f"{MAX_FILE_NAME} bytes ending in {', '.join(suffixes)} (for kind {kind.value})"
        )
    return name


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class UploadService:
    """Receives, checks, stores and finds uploads."""

    def __init__(self, *, store: Store, limits: UploadLimits, staging: str) -> None:
        self._store = store
        self._limits = limits
        self._staging = limits.root / ".staging" / staging

    def clean_staging(self) -> None:
        """Removes what this process's staging directory holds from an earlier run (a crash
        mid-upload); other processes' staging directories are left alone."""
        shutil.rmtree(self._staging, ignore_errors=True)
        self._staging.mkdir(parents=True, exist_ok=True)

    async def upload(
        self, principal: Principal, header: Announced, chunks: AsyncIterator[bytes]
    ) -> tuple[UploadRecord, int]:
        """Stores an upload after every check; returns it and the tenant's bytes with it.

        Raises:
            InvalidArgumentError: a bad name, size, checksum or content, naming the field,
                file, line or archive member (nothing is kept).
            ResourceExhaustedError: past the tenant's quota (nothing is kept).
        """
        kind, size = header.kind, header.size
        name = check_file_name(header.file_name, kind)
        cap = self._limits.max_file_bytes
        if not 0 < size <= cap:
            raise InvalidArgumentError(f"header.size: {size} must be 1 to {cap} bytes")
        held = await self._store.tenant_upload_bytes(principal.tenant)
        if held + size > self._limits.tenant_quota_bytes:
            raise upload_quota_error(principal.tenant, held, size, self._limits.tenant_quota_bytes)
        upload_id = f"{RULES[kind].prefix}-{uuid.uuid4().hex[:16]}"
        staging = self._staging / upload_id
        staging.mkdir(parents=True)
        try:
            digest = await self._receive(staging / name, size, header.sha256, chunks)
            stored, files = await asyncio.to_thread(self._check_kind, kind, staging, name)
            final = self._limits.root / upload_id
            await asyncio.to_thread(_publish, staging, final)
            record = UploadRecord(
                id=upload_id, tenant=principal.tenant, kind=kind.value, name=name,
                path=final if kind in ARCHIVE_KINDS else final / name,
                sha256=digest, size=size, stored=stored, files=files, created=time.time(),
            )  # fmt: skip
            try:
                total = await self._store.add_upload(record, self._limits.tenant_quota_bytes)
            except BaseException:
                shutil.rmtree(final, ignore_errors=True)
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return record, total

    @property
    def max_file_bytes(self) -> int:
        """The largest upload."""
        return self._limits.max_file_bytes

    def scratch(self) -> "tempfile.TemporaryDirectory[str]":
        """A temporary directory in this process's staging area, gone on exit (and after a
        crash, with the staging area at the next start)."""
        return tempfile.TemporaryDirectory(dir=self._staging)

    async def add_path(  # noqa: PLR0917 (the file and what was measured of it as it arrived)
        self,
        principal: Principal,
        kind: UploadKind,
        file_name: str,
        path: Path,
        size: int,
        digest: str,
    ) -> tuple[UploadRecord, int]:
        """Stores a file the server fetched for the caller (a download, its `size` and sha256
        `digest` measured as it arrived) as the caller's upload, through every check and the
        quota an upload passes (`upload`)."""

        async def chunks() -> AsyncIterator[bytes]:
            with path.open("rb") as f:
                while chunk := f.read(READ_CHUNK_BYTES):
                    yield chunk

        header = Announced(kind, file_name, size, digest)
        return await self.upload(principal, header, chunks())

    async def add_file(
        self, principal: Principal, kind: UploadKind, file_name: str, data: bytes
    ) -> tuple[UploadRecord, int]:
        """Stores a file the server made for the caller (an export) as the caller's upload,
        through every check and the quota an upload passes (`upload`)."""

        async def chunks() -> AsyncIterator[bytes]:
            yield data

        header = Announced(kind, file_name, len(data), hashlib.sha256(data).hexdigest())
        return await self.upload(principal, header, chunks())

    async def _receive(
        self, target: Path, size: int, sha256: str, chunks: AsyncIterator[bytes]
    ) -> str:
        digest, received = hashlib.sha256(), 0
        with target.open("wb") as out:
            async for chunk in chunks:
                received += len(chunk)
                if received > size:
                    raise InvalidArgumentError(
                        f"chunk: more than the {size} bytes header.size announced"
                    )
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if received != size:
            raise InvalidArgumentError(f"header.size: announced {size} bytes, got {received}")
        if digest.hexdigest() != sha256.lower():
            raise InvalidArgumentError(
                f"header.sha256: the bytes hash to {digest.hexdigest()}, not {sha256[:64]!r}"
            )
        return digest.hexdigest()

    def _check_kind(self, kind: UploadKind, staging: Path, name: str) -> tuple[int, int]:
        """Checks the received file for its kind; returns (bytes stored, files)."""
        path = staging / name
        try:
            if kind is UploadKind.PROMPT_SET:
                # One-turn prompts or conversations; a section checks its own fields (a
                # reference answer, say) when a spec names the set.
                read_conversations(path, None)
            elif kind is UploadKind.JSON_SCHEMA:
                read_schema(path)
            elif kind is UploadKind.SAFETY_FAMILIES:
                read_families(path)
            elif kind is UploadKind.HUMAN_RATINGS:
                read_ratings(path)  # the items are checked against a sheet on import
            elif kind in ARCHIVE_KINDS:
                limits = ArchiveLimits(self._limits.max_file_bytes, self._limits.max_archive_files)
                tree = staging / "tree"
                extracted = extract(path, tree, limits)
                path.unlink()
                for entry in tree.iterdir():
                    entry.rename(staging / entry.name)
                tree.rmdir()
                if kind is UploadKind.TASK_ARCHIVE:
                    _check_tasks(staging)
                else:
                    check_peft_files(staging)
                return extracted.bytes, extracted.files
        except (PromptSetError, ArchiveError, TaskYamlError) as exc:
            raise InvalidArgumentError(f"{name}: {exc}") from None
        return path.stat().st_size, 1

    async def path_of(
        self, principal: Principal | None, upload_id: str, kind: UploadKind, field: str
    ) -> Path:
        """Where an upload of `kind` lies, if `principal` may use it (None: the service itself,
        for a job whose rights were checked at submission).

        Raises:
            NotFoundError: no such upload, another tenant's, or one of another kind.
        """
        return (await self.record_of(principal, upload_id, kind, field)).path

    async def record_of(
        self, principal: Principal | None, upload_id: str, kind: UploadKind, field: str
    ) -> UploadRecord:
        """An upload of `kind`, if `principal` may use it (see `path_of`)."""
        record = await self._store.get_upload(upload_id) if could_be_issued(upload_id) else None
        tenant = visible_tenant(principal) if principal is not None else None
        if (
            record is None
            or record.kind != kind.value
            or (tenant is not None and record.tenant != tenant)
        ):
            raise NotFoundError(f"{field}: no {kind.value} upload {upload_id[:64]!r}")
        return record

    async def client_files(
        self, principal: Principal | None, spec: EvalSpec, where: str
    ) -> ClientFiles:
        """The client files of an evaluation spec as paths: its uploads (the caller's), or an
        admin's raw paths under the data root.

        Raises:
            NotFoundError: an upload the caller may not use, or a path with nothing there.
            PermissionDeniedError: a raw path from a user.
            InvalidArgumentError: a raw path that leads outside the data root.
        """

        found: dict[str, Path | None] = {}
        for target, section, path_key, upload_key, kind in CLIENT_FILES:
            part = getattr(spec, section)
            if part is None:
                continue
            upload, path = getattr(part, upload_key), getattr(part, path_key)
            if upload:
                field = f"{where}.{section}.{upload_key}"
                found[target] = await self.path_of(principal, upload, kind, field)
            elif path:
                found[target] = self.raw_path(principal, path, f"{where}.{section}.{path_key}")
        return ClientFiles(**found)

    def raw_path(self, principal: Principal | None, path: str, field: str) -> Path:
        """A file an admin names by its path under the data root (None: the service itself,
        for a job whose rights were checked at submission).

        Raises:
            PermissionDeniedError: from a user, who names its uploads by id instead.
            InvalidArgumentError, NotFoundError: a path that leads outside, or to nothing.
        """
        if principal is not None and not is_admin(principal):
            raise PermissionDeniedError(
                f"{field}: raw server paths are for admins; upload the file (Upload) and give "
                "its id"
            )
        return confined(self._limits.data_root, path, field)


def _check_tasks(directory: Path) -> None:
    tasks = find_tasks(directory)
    if not tasks and not any(directory.rglob("*.yaml")):
        raise TaskYamlError("the archive holds no task YAML at its top level")
    for path in sorted(directory.glob("*.yaml")):
        load_task_yaml(path, directory)


def _publish(staging: Path, final: Path) -> None:
    for path in staging.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    staging.rename(final)
    _fsync_dir(final.parent)
