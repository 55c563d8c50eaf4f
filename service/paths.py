"""Paths a client names, confined under a server directory."""

from pathlib import Path, PurePosixPath

from service.errors import InvalidArgumentError, NotFoundError


def confined(root: Path, relative: str, field_name: str) -> Path:
    """`relative` resolved under `root`, refusing what could lead out of it.

    Raises:
        InvalidArgumentError: naming `field_name`, for an empty, absolute or '..' path, or one
            that resolves (through a symlink) outside `root`.
        NotFoundError: when nothing exists there.
    """
    if not relative:
        raise InvalidArgumentError(
            f"{field_name}: empty; give a path relative to the server's root"
        )
    pure = PurePosixPath(relative)
    if pure.is_absolute():
        raise InvalidArgumentError(
            f"{field_name}: {relative!r} is absolute; give it relative to the server's root"
        )
    if ".." in pure.parts:
        raise InvalidArgumentError(f"{field_name}: {relative!r} contains '..'")
    candidate = (root / pure).resolve()
    if not candidate.is_relative_to(root.resolve()):
        raise InvalidArgumentError(
            f"{field_name}: {relative!r} leads outside the server's root (through a symlink)"
        )
    if not candidate.exists():
        raise NotFoundError(f"{field_name}: nothing at {relative!r} under the server's root")
    return candidate
