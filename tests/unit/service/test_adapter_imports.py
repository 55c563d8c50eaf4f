"""Imports of uploaded adapters over the fake engine, on a real SQLite store and real uploads:
what is installed, the manifest adapterd writes, and what a refusal leaves."""

import hashlib

import pytest

from service.adapters.imports import IMPORTS, AdapterImports
from service.adapters.manager import AdapterManager
from service.auth import Principal, Role
from service.client.cli import adapter_archive
from service.errors import InvalidArgumentError, NotFoundError, PermissionDeniedError
from service.inference.fake import FakeEngine
from service.metrics import AdapterLabels, Metrics
from service.uploads import Announced, UploadKind, UploadLimits, UploadService
from tests.support import adapter_limits, edit_json

ACME, GLOBEX = Principal("acme", Role.USER), Principal("globex", Role.USER)


@pytest.fixture
def setup(tmp_path, tiny_model_dir, store):
    limits = adapter_limits(tmp_path / "adapters", tiny_model_dir, max_bytes=2**30)
    metrics = Metrics()
    manager = AdapterManager(
        engine=FakeEngine(), store=store, limits=limits, capacity=4, metrics=metrics,
        labels=AdapterLabels(metrics, 8),
    )  # fmt: skip
    uploads = UploadService(
        store=store,
        limits=UploadLimits(
            root=tmp_path / "uploads", data_root=tmp_path, max_file_bytes=2**24,
            tenant_quota_bytes=2**26,
        ),
        staging="host-1",
    )  # fmt: skip
    uploads.clean_staging()
    return (
        AdapterImports(adapters=manager, uploads=uploads, limits=limits, sources={}),
        uploads,
        limits,
    )


async def upload(uploads, principal, directory):
    name, data = adapter_archive(directory)
    header = Announced(
        UploadKind.ADAPTER_ARCHIVE, name, len(data), hashlib.sha256(data).hexdigest()
    )

    async def chunks():
        yield data

    record, _ = await uploads.upload(principal, header, chunks())
    return record


async def test_an_import_installs_the_peft_files_with_adapterds_manifest(setup, tiny_adapter):
    imports, uploads, limits = setup
    record = await upload(uploads, ACME, tiny_adapter)
    view = await imports.import_for(ACME, "mine", record.id)
    assert (view.entry.ref, view.entry.rank) == ("acme/mine@1", 8)
    installed = view.entry.path
    assert installed.parent == (limits.root / IMPORTS).resolve()
    # tiny_adapter's own manifest.json is not packed: adapterd writes its own
    assert sorted(p.name for p in installed.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "manifest.json",
    ]  # fmt: skip
    manifest = (installed / "manifest.json").read_text()
    assert limits.base.weights_sha256 in manifest and record.sha256 in manifest


async def test_a_refusal_names_the_field_and_leaves_nothing_installed(
    setup, tiny_adapter, tmp_path
):
    imports, uploads, limits = setup
    lying = tmp_path / "lying"
    lying.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (lying / name).write_bytes((tiny_adapter / name).read_bytes())
    edit_json(lying / "adapter_config.json", r=4)  # the tensors are rank 8
    record = await upload(uploads, ACME, lying)
    with pytest.raises(
        InvalidArgumentError, match=r"with r one of adapter_config\.json's ranks \[4\]"
    ):
        await imports.import_for(ACME, "lying", record.id)
    with pytest.raises(PermissionDeniedError, match="name"):
        await imports.import_for(ACME, "globex/stolen", record.id)
    with pytest.raises(NotFoundError, match="upload_id: no adapter_archive upload"):
        await imports.import_for(GLOBEX, "mine", record.id)
    assert list((limits.root / IMPORTS).iterdir()) == []
