"""Small standard-library helpers shared by the trainer, the server and eval: atomic directory
publishing, installed package versions, files shipped inside packages, and paths confined under
a root."""

import importlib.util
import os
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path, PurePosixPath


class OutsideRootError(ValueError):
    """A path that is empty, absolute, contains '..' or resolves outside its root."""


MAX_PATH_CHARS = 1024
MAX_NAME_BYTES = 255
"""Linux's NAME_MAX: a longer component fails in the kernel, not in a check."""


def inside_root(root: Path, relative: str) -> Path:
    """`relative` resolved under `root` (it need not exist).

    Raises:
        OutsideRootError: saying why the path is refused, naming it.
    """
    if not relative:
        raise OutsideRootError("empty; give a path relative to the server's root")
    if "\x00" in relative:
        raise OutsideRootError(f"{relative!r} contains a NUL byte")
    if len(relative) > MAX_PATH_CHARS:
        raise OutsideRootError(f"longer than {MAX_PATH_CHARS} characters")
    pure = PurePosixPath(relative)
    if any(len(part.encode()) > MAX_NAME_BYTES for part in pure.parts):
        raise OutsideRootError(f"{relative!r} has a component longer than {MAX_NAME_BYTES} bytes")
    if pure.is_absolute():
        raise OutsideRootError(f"{relative!r} is absolute; give it relative to the server's root")
    if ".." in pure.parts:
        raise OutsideRootError(f"{relative!r} contains '..'")
    candidate = (root / pure).resolve()
    if not candidate.is_relative_to(root.resolve()):
        raise OutsideRootError(f"{relative!r} leads outside the server's root (through a symlink)")
    return candidate


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


def write_atomic(target: Path, text: str) -> None:
    """Writes `text` to `target` so that readers see the old file or the whole new one: a
    temporary file beside it, fsynced, then renamed over it."""
    staging = target.with_name(f".{target.name}.tmp")
    with staging.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    staging.replace(target)


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


def packaged_path(module: str, relative: str) -> Path | None:
    """`relative` inside the folder of installed package `module`, found without importing it
    (model-only packages import libraries adapterd does not install); None if it is not there."""
    spec = importlib.util.find_spec(module)
    for folder in list(spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / relative
        if path.exists():
            return path
    return None
