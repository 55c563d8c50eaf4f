"""Publishing without an engine: a job's adapter installed whole, checked, recorded."""

import shutil

import pytest

from service.adapters.publish import install_job_adapter, publish
from service.errors import InvalidArgumentError
from tests.support import adapter_limits
from trainer.drift import REFERENCE_FILE


def finished_job(tmp_path, tiny_adapter):
    job_dir = tmp_path / "jobs" / "job-1"
    shutil.copytree(tiny_adapter, job_dir / "adapter")
    shutil.move(job_dir / "adapter" / "manifest.json", job_dir / "manifest.json")
    return job_dir


async def test_a_jobs_adapter_is_installed_whole_and_recorded_as_the_next_version(
    tmp_path, tiny_adapter, tiny_model_dir, store
):
    root = tmp_path / "adapters"
    job_dir = finished_job(tmp_path, tiny_adapter)
    (job_dir / REFERENCE_FILE).write_text("{}")
    relative = install_job_adapter(job_dir, root, "job-1")
    assert relative == "jobs/job-1"
    assert (root / relative / "manifest.json").is_file()
    assert (root / relative / REFERENCE_FILE).read_text() == "{}"  # its drift reference too
    assert [p.name for p in (root / "jobs").iterdir()] == ["job-1"]  # no staging left behind
    limits = adapter_limits(root, tiny_model_dir, max_bytes=2**30)
    checked, record = await publish(store, limits, "t/bot", relative, pin=False, created=1.0)
    assert (record.version, record.sha256, record.path) == (1, checked.sha256, checked.path)
    assert (await store.adapters())[0] == [record]


async def test_an_adapter_that_fails_its_checks_is_not_recorded(
    tmp_path, tiny_adapter, tiny_model_dir, store
):
    root = tmp_path / "adapters"
    relative = install_job_adapter(finished_job(tmp_path, tiny_adapter), root, "job-1")
    (root / relative / "adapter_config.json").write_text("{}")
    limits = adapter_limits(root, tiny_model_dir, max_bytes=2**30)
    with pytest.raises(InvalidArgumentError, match=r"adapter_config\.json"):
        await publish(store, limits, "t/bot", relative, pin=False, created=1.0)
    assert await store.adapters() == ([], {})
