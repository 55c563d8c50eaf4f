"""Paths a client names, confined under a server directory."""

from pathlib import Path

from service.errors import InvalidArgumentError, NotFoundError
from trainer.files import OutsideRootError, inside_root


def confined(root: Path, relative: str, field_name: str) -> Path:
    """`relative` resolved under `root`, refusing what could lead out of it.

    Raises:
        InvalidArgumentError: naming `field_name`, for an empty, absolute or '..' path, or one
            that resolves (through a symlink) outside `root`.
        NotFoundError: when nothing exists there.
    """
    try:
        candidate = inside_root(root, relative)
    except OutsideRootError as exc:
        raise InvalidArgumentError(f"{field_name}: {exc}") from None
    if not candidate.exists():
        raise NotFoundError(f"{field_name}: nothing at {relative!r} under the server's root")
    return candidate
