"""Publishing an adapter version, without an engine: its files installed under the adapter root
once and immutably, checked, and recorded in the store under the name's next version number.

A serving replica publishes and then loads into its engine (`AdapterManager.load`); a training
worker only publishes, and every serving replica picks the version up from the store
(`AdapterManager.refresh`), checking its files again before it serves them.
"""

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from service.adapters.checks import AdapterLimits, CheckedAdapter, check_adapter
from service.adapters.registry import check_name
from service.errors import AdapterdError
from service.jobs.model import Job, JobResult, JobSpec
from service.store.base import AdapterRecord, Store
from trainer.drift import REFERENCE_FILE
from trainer.files import fresh_staging, publish_dir

JOB_ADAPTERS = "jobs"
"""Where under the adapter root a training job's adapter is installed (`jobs/<job id>`)."""


def install_job_adapter(job_dir: Path, adapter_root: Path, job_id: str) -> str:
    """Copies a finished job's adapter, manifest and drift reference to `jobs/<job id>` under
    the adapter root: written to a staging directory, then renamed into place, so a reader
    never sees half of it. Returns the path relative to the root. Blocking file I/O."""
    relative = f"{JOB_ADAPTERS}/{job_id}"
    target = adapter_root / relative
    staging = fresh_staging(target)
    shutil.copytree(job_dir / "adapter", staging, dirs_exist_ok=True)
    shutil.copy2(job_dir / "manifest.json", staging / "manifest.json")
    if (job_dir / REFERENCE_FILE).is_file():  # trainers before drift wrote none
        shutil.copy2(job_dir / REFERENCE_FILE, staging / REFERENCE_FILE)
    return str(publish_dir(staging, target).relative_to(adapter_root))


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
