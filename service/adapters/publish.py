"""Publishing an adapter version, without an engine: its files installed under the adapter root
once and immutably, checked, and recorded in the store under the name's next version number.

A serving replica publishes and then loads into its engine (`AdapterManager.load`); a training
worker only publishes, and every serving replica picks the version up from the store
(`AdapterManager.refresh`), checking its files again before it serves them.
"""

import asyncio
import json
import shutil
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from service.adapters.checks import (
    CONFIG_FILE,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    AdapterLimits,
    CheckedAdapter,
    check_adapter,
)
from service.adapters.registry import check_name
from service.errors import AdapterdError
from service.jobs.model import Job, JobResult, JobSpec
from service.store.base import AdapterRecord, Store
from trainer.drift import REFERENCE_FILE
from trainer.files import fresh_staging, publish_dir
from trainer.layout import ADAPTER

JOB_ADAPTERS = "jobs"
"""Where under the adapter root a training job's adapter is installed (`jobs/<job id>`)."""
JOB_CHECKPOINTS = "checkpoints"
"""Where under the adapter root a job's registered checkpoints are installed
(`checkpoints/<job id>/step-<N>`)."""
CHECKPOINTS_SUFFIX = "-ckpt"


def checkpoints_name(adapter_name: str) -> str:
    """The name a job's checkpoints register under unless told otherwise, `<adapter_name>-ckpt`:
    a checkpoint never becomes the newest version of the job's own adapter."""
    return adapter_name + CHECKPOINTS_SUFFIX


def _install(target: Path, adapter: Path, manifest: dict[str, Any], reference: Path) -> Path:
    """Writes the two peft files of `adapter`, `manifest` and the drift `reference` (if the
    trainer wrote one) to a staging directory, then renames it into place at `target`, so a
    reader never sees half of it. Blocking file I/O."""
    staging = fresh_staging(target)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        shutil.copy2(adapter / name, staging / name)
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    if reference.is_file():  # trainers before drift wrote none
        shutil.copy2(reference, staging / REFERENCE_FILE)
    return publish_dir(staging, target)


def install_job_adapter(job_dir: Path, adapter_root: Path, job_id: str) -> str:
    """Installs a finished job's adapter, manifest and drift reference at `jobs/<job id>`
    under the adapter root. Returns the path relative to the root. Blocking file I/O."""
    relative = f"{JOB_ADAPTERS}/{job_id}"
    manifest = json.loads((job_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    _install(adapter_root / relative, job_dir / ADAPTER, manifest, job_dir / REFERENCE_FILE)
    return relative


def install_checkpoint(checkpoint: Path, job_dir: Path, adapter_root: Path, job_id: str) -> str:
    """Installs one of a job's checkpoints (its adapter, its manifest naming the job, the job's
    drift reference) at `checkpoints/<job id>/step-<N>` under the adapter root, once: a
    checkpoint installed before is reused, its files never change. Returns the path relative
    to the root. Blocking file I/O."""
    relative = f"{JOB_CHECKPOINTS}/{job_id}/{checkpoint.name}"
    target = adapter_root / relative
    if not target.is_dir():
        manifest = json.loads((checkpoint / MANIFEST_FILE).read_text(encoding="utf-8"))
        manifest["checkpoint"]["job_id"] = job_id
        _install(target, checkpoint / ADAPTER, manifest, job_dir / REFERENCE_FILE)
    return relative


Register = Callable[[str, str], Awaitable[str]]
"""Registers the adapter at a path (relative to the adapter root) as the next version of a
qualified name; returns its ref ("tenant/name@N")."""


async def register_job_adapter(
    job: Job, job_dir: Path, adapter_root: Path, register: Register
) -> dict[str, Any]:
    """What a finished job adds to its result: its adapter installed (`install_job_adapter`)
    and registered, when its spec names one and trains (`adapter_version`), or why the
    registration was refused (`registration_error`); nothing otherwise. A serving replica
    registers into its engine, a worker only publishes."""
    spec = JobSpec.of(job)
    if not spec.registers:
        return {}
    relative = await asyncio.to_thread(install_job_adapter, job_dir, adapter_root, job.id)
    try:
        registered = JobResult(adapter_version=await register(spec.adapter_name, relative))
    except AdapterdError as exc:
        registered = JobResult(registration_error=str(exc))
    return registered.additions()


async def publish(
    store: Store, limits: AdapterLimits, name: str, path: str, *, pin: bool, created: float
) -> tuple[CheckedAdapter, AdapterRecord]:
    """Checks the adapter at `path` (relative to the root) and records it as the next version
    of the qualified `name`.

    Raises:
        InvalidArgumentError: naming what is refused; nothing is recorded then.
        NotFoundError: when `path` does not exist.
    """
    check_name(name, "name")
    checked = await asyncio.to_thread(partial(check_adapter, path, limits))
    record = AdapterRecord(
        name=name,
        version=await store.next_adapter_version(name),
        path=checked.path,
        sha256=checked.sha256,
        rank=checked.rank,
        base_model=checked.base_model,
        created=created,
        pinned=pin,
    )
    await store.save_adapter(record)
    return checked, record
