"""Adapters trained elsewhere: a tenant's uploaded peft adapter (UPLOAD_KIND_ADAPTER_ARCHIVE,
extracted and its files checked on upload) installed under the adapter root with adapterd's
manifest, then registered like every other version: `AdapterManager.load` runs every check of
`service.adapters.checks`, each tensor's name and shape against the served base model's linear
layers included.

The manifest is adapterd's, never the client's: the served base model's identity (the adapter
was just checked against its layers, the only proof there is; a path in adapter_config.json
proves nothing) and where the files came from. An archive's own manifest.json, if any, is left
behind with everything else but the two peft files.
"""

import asyncio
import json
import shutil
import uuid
from typing import Any

from service.adapters.checks import CONFIG_FILE, MANIFEST_FILE, WEIGHTS_FILE, AdapterLimits
from service.adapters.manager import AdapterManager, AdapterView
from service.auth import Principal
from service.authz import qualify_write
from service.store.base import UploadRecord
from service.uploads import UploadKind, UploadService
from trainer.files import fresh_staging, publish_dir

IMPORTS = "imports"
"""Where under the adapter root imported adapters are installed (`imports/<random id>`)."""


def import_manifest(limits: AdapterLimits, upload: UploadRecord) -> dict[str, Any]:
    """adapterd's manifest for an imported adapter: the served base model, and its origin."""
    return {
        "base_model": limits.base.manifest_entry(limits.base_name),
        "imported": {
            "upload_id": upload.id,
            "file_name": upload.name,
            "archive_sha256": upload.sha256,
            "tenant": upload.tenant,
        },
        "parent": None,
    }


def install_import(upload: UploadRecord, limits: AdapterLimits) -> str:
    """Copies an uploaded adapter's two peft files to a new directory under the adapter root,
    with adapterd's manifest, written to staging then renamed into place. Returns its path
    relative to the root. Blocking file I/O."""
    relative = f"{IMPORTS}/{uuid.uuid4().hex}"
    target = limits.root / relative
    staging = fresh_staging(target)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        shutil.copyfile(upload.path / name, staging / name)
    manifest = import_manifest(limits, upload)
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    publish_dir(staging, target)
    return relative


class AdapterImports:
    """Registers tenants' uploaded adapters (ImportAdapter)."""

    def __init__(
        self, *, adapters: AdapterManager, uploads: UploadService, limits: AdapterLimits
    ) -> None:
        self._adapters = adapters
        self._uploads = uploads
        self._limits = limits

    async def import_for(self, principal: Principal, name: str, upload_id: str) -> AdapterView:
        """Registers the caller's adapter upload as the next version of `[tenant/]name`, in a
        tenant it may change, loaded in the engine. Refused by a check, nothing stays installed;
        refused by the engine after it was recorded, it stays as a FAILED version, as after
        LoadAdapter.

        Raises:
            InvalidArgumentError: a bad name, or a tensor, file or field that is refused.
            NotFoundError: no such upload of the caller's.
            PermissionDeniedError: a tenant the caller may not change.
            ResourceExhaustedError: the engine's cache is full of held adapters.
        """
        qualify_write(principal, name, "name")  # before any file is written
        upload = await self._uploads.record_of(
            principal, upload_id, UploadKind.ADAPTER_ARCHIVE, "upload_id"
        )
        relative = await asyncio.to_thread(install_import, upload, self._limits)
        installed = (self._limits.root / relative).resolve()
        try:
            return await self._adapters.load_for(principal, name, relative, pin=False)
        except BaseException:
            if not self._adapters.holds(installed):  # refused before it was recorded
                await asyncio.to_thread(shutil.rmtree, installed, True)
            raise
