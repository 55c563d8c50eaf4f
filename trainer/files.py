"""Small standard-library helpers shared by the trainer and the server: atomic directory
publishing and installed package versions."""

import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def publish_dir(staging: Path, target: Path) -> Path:
    """Moves a completely written directory into place, replacing `target`.

    Readers see the old directory or the new one, never a half-written one; the old one is set
    aside by a rename before the new one takes its name, so a crash in between leaves it there.
    """
    retired = target.with_name(f".{target.name}.old")
    shutil.rmtree(retired, ignore_errors=True)
    if target.exists():
        target.rename(retired)
    staging.rename(target)
    shutil.rmtree(retired, ignore_errors=True)
    return target


def fresh_staging(target: Path) -> Path:
    """An empty hidden directory beside `target` to write into before `publish_dir`."""
    staging = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def installed_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of the distributions among `names`; absent ones are left out."""
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found
