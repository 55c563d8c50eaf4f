"""The one safe extractor for archives clients upload (.tar, .tar.gz, .tgz, .zip).

Every member is checked before a byte is written: a relative name without '..', without a NUL
byte, at most `MAX_DEPTH` directories deep; a regular file or a directory, never a link, device
or FIFO. Sizes are counted while the bytes are copied (a zip's declared sizes can lie), against
caps on the total and on the number of files. Anything else refuses the whole archive, naming
the member; the caller extracts into a staging directory and removes it on refusal.
"""

import lzma
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
MAX_DEPTH = 16
COPY_CHUNK = 1 << 16


class ArchiveError(ValueError):
    """The archive is refused; the message names the member and why."""


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps on what one archive may extract to."""

    max_bytes: int
    max_files: int = 1000


@dataclass(frozen=True)
class Extracted:
    """What an archive held."""

    files: int
    bytes: int


def _safe_name(name: str) -> PurePosixPath:
    if "\x00" in name:
        raise ArchiveError(f"{name!r}: a NUL byte in a name")
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("\\"):
        raise ArchiveError(f"{name!r}: an absolute name")
    if ".." in path.parts:
        raise ArchiveError(f"{name!r}: '..' in a name")
    parts = [p for p in path.parts if p not in ("", ".")]
    if len(parts) > MAX_DEPTH:
        raise ArchiveError(f"{name!r}: deeper than {MAX_DEPTH} directories")
    if any(len(p.encode()) > 255 for p in parts):
        raise ArchiveError(f"{name!r}: a name component longer than 255 bytes")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _copy(source: IO[bytes], target: Path, budget: int, name: str) -> int:
    written = 0
    with target.open("xb") as out:
        while chunk := source.read(COPY_CHUNK):
            written += len(chunk)
            if written > budget:
                raise ArchiveError(f"{name!r}: the archive extracts to more than its cap")
            out.write(chunk)
    return written


class _Counter:
    def __init__(self, limits: ArchiveLimits) -> None:
        self._limits = limits
        self.files = 0
        self.bytes = 0

    def add_file(self, name: str) -> int:
        """Counts a file; returns the bytes it may still take."""
        self.files += 1
        if self.files > self._limits.max_files:
            raise ArchiveError(f"{name!r}: more than {self._limits.max_files} files")
        return self._limits.max_bytes - self.bytes


_TAR_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)


def _members(archive: tarfile.TarFile, limits: ArchiveLimits) -> Iterator[tarfile.TarInfo]:
    """The members one header at a time (an archive of millions of entries stops at the cap)."""
    seen = 0
    while True:
        try:
            member = archive.next()
        except _TAR_ERRORS as exc:
            raise ArchiveError(f"not a readable tar archive ({exc})") from None
        if member is None:
            return
        seen += 1
        if seen > 2 * limits.max_files:
            raise ArchiveError(f"{member.name!r}: more than {2 * limits.max_files} entries")
        yield member


def _tar(path: Path, target: Path, counter: _Counter, limits: ArchiveLimits) -> None:
    try:
        archive = tarfile.open(path, mode="r:*")  # noqa: SIM115 (closed by the `with` below)
    except _TAR_ERRORS as exc:
        raise ArchiveError(f"not a readable tar archive ({exc})") from None
    with archive:
        for member in _members(archive, limits):
            relative = _safe_name(member.name)
            if member.isdir():
                (target / relative).mkdir(parents=True, exist_ok=True)
                continue
            if not member.isfile():
                raise ArchiveError(f"{member.name!r}: not a regular file or directory")
            budget = counter.add_file(member.name)
            if member.size > budget:
                raise ArchiveError(f"{member.name!r}: the archive extracts to more than its cap")
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            if source is None:
                raise ArchiveError(f"{member.name!r}: cannot be read")
            with source:
                try:
                    counter.bytes += _copy(source, destination, budget, member.name)
                except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:
                    raise ArchiveError(f"{member.name!r}: cannot be read ({exc})") from None


def _zip(path: Path, target: Path, counter: _Counter) -> None:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"not a readable zip archive ({exc})") from None
    with archive:
        for info in archive.infolist():
            relative = _safe_name(info.filename)
            mode = info.external_attr >> 16
            if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise ArchiveError(f"{info.filename!r}: not a regular file or directory")
            if info.is_dir():
                (target / relative).mkdir(parents=True, exist_ok=True)
                continue
            budget = counter.add_file(info.filename)
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(info) as source:
                    counter.bytes += _copy(source, destination, budget, info.filename)
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
                raise ArchiveError(f"{info.filename!r}: cannot be read ({exc})") from None


def extract(path: Path, target: Path, limits: ArchiveLimits) -> Extracted:
    """Extracts the archive at `path` into the new directory `target`.

    Raises:
        ArchiveError: the archive or one member is refused (`target` is removed then).
    """
    target.mkdir()
    counter = _Counter(limits)
    try:
        if path.name.endswith(".zip"):
            _zip(path, target, counter)
        else:
            _tar(path, target, counter, limits)
    except OSError as exc:  # a name twice, or a file where a directory must go
        shutil.rmtree(target, ignore_errors=True)
        name = Path(exc.filename or "").name
        raise ArchiveError(f"{name!r}: cannot be written ({exc.strerror})") from None
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return Extracted(files=counter.files, bytes=counter.bytes)
