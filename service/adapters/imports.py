"""Adapters trained elsewhere: a tenant's uploaded peft adapter (UPLOAD_KIND_ADAPTER_ARCHIVE,
extracted and its files checked on upload), or one downloaded from an allowlisted source
(`service.adapters.downloads`, stored as the tenant's upload), installed under the adapter root
with adapterd's manifest, then registered like every other version: `AdapterManager.load` runs
every check of `service.adapters.checks`, each tensor's name and shape against the served base
model's linear layers included.

The manifest is adapterd's, never the client's: the served base model's identity (the adapter
was just checked against its layers, the only proof there is; a path in adapter_config.json
proves nothing) and where the files came from. An archive's own manifest.json, if any, is left
behind with everything else but the two peft files.
"""

import asyncio
import json
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from service.adapters.checks import CONFIG_FILE, MANIFEST_FILE, WEIGHTS_FILE, AdapterLimits
from service.adapters.downloads import (
    Download,
    check_sha256,
    download_url,
    fetch,
    file_name_of,
)
from service.adapters.manager import AdapterManager, AdapterView
from service.auth import Principal
from service.authz import qualify_write
from service.errors import InvalidArgumentError
from service.store.base import UploadRecord
from service.uploads import UploadKind, UploadService, check_file_name
from trainer.files import fresh_staging, publish_dir

IMPORTS = "imports"
"""Where under the adapter root imported adapters are installed (`imports/<random id>`)."""


def import_manifest(limits: AdapterLimits, upload: UploadRecord, url: str) -> dict[str, Any]:
    """adapterd's manifest for an imported adapter: the served base model, and its origin (the
    upload, and the URL it was downloaded from, if it was)."""
    return {
        "base_model": limits.base.manifest_entry(limits.base_name),
        "imported": {
            "upload_id": upload.id,
            "file_name": upload.name,
            "archive_sha256": upload.sha256,
            "tenant": upload.tenant,
            **({"url": url} if url else {}),
        },
        "parent": None,
    }


def install_import(upload: UploadRecord, limits: AdapterLimits, url: str) -> str:
    """Copies an uploaded adapter's two peft files to a new directory under the adapter root,
    with adapterd's manifest, written to staging then renamed into place. Returns its path
    relative to the root. Blocking file I/O."""
    relative = f"{IMPORTS}/{uuid.uuid4().hex}"
    target = limits.root / relative
    staging = fresh_staging(target)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        shutil.copyfile(upload.path / name, staging / name)
    manifest = import_manifest(limits, upload, url)
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    publish_dir(staging, target)
    return relative


class AdapterImports:
    """Registers tenants' uploaded adapters (ImportAdapter)."""

    def __init__(
        self,
        *,
        adapters: AdapterManager,
        uploads: UploadService,
        limits: AdapterLimits,
        sources: Mapping[str, str],
    ) -> None:
        self._adapters = adapters
        self._uploads = uploads
        self._limits = limits
        self._sources = sources
        """The allowlisted download sources: name -> base URL (`--import-urls`)."""

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
        return await self._register(principal, name, upload, "")

    async def import_download(
        self, principal: Principal, name: str, download: Download
    ) -> AdapterView:
        """Downloads an adapter archive from an allowlisted source, stores it as the caller's
        upload (every upload check, the tenant's quota), then registers it as `import_for`
        does.

        Raises:
            InvalidArgumentError: a bad name, source, path or sha256, a body over the upload
                limit, or a tensor, file or field that is refused.
            FailedPreconditionError: the source answered an error status, or redirected
                outside the allowlist.
            UnavailableError: the source could not be reached.
            PermissionDeniedError, ResourceExhaustedError: as `import_for`.
        """
        qualify_write(principal, name, "name")
        url = download_url(self._sources, download.source, download.path)
        archive_name = check_file_name(
            file_name_of(download.path), UploadKind.ADAPTER_ARCHIVE, "download.path"
        )
        check_sha256(download.sha256)  # all before a byte is fetched
        with self._uploads.scratch() as scratch:
            archive = Path(scratch) / "archive"
            size, digest = await fetch(url, self._sources, archive, self._uploads.max_file_bytes)
            if download.sha256 and digest != download.sha256.lower():
                raise InvalidArgumentError(
                    f"download.sha256: {url} hashes to {digest}, not {download.sha256[:64]!r}"
                )
            upload, _ = await self._uploads.add_path(
                principal, UploadKind.ADAPTER_ARCHIVE, archive_name, archive, size, digest
            )
        return await self._register(principal, name, upload, url)

    async def _register(
        self, principal: Principal, name: str, upload: UploadRecord, url: str
    ) -> AdapterView:
        relative = await asyncio.to_thread(install_import, upload, self._limits, url)
        installed = (self._limits.root / relative).resolve()
        try:
            return await self._adapters.load_for(principal, name, relative, pin=False)
        except BaseException:
            if not self._adapters.holds(installed):  # refused before it was recorded
                await asyncio.to_thread(shutil.rmtree, installed, True)
            raise
