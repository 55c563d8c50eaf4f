"""Adapter archives downloaded from the sources an admin allowlisted (`--import-urls
name=url,...`, as `--judge-urls` names judges): a client names a source and a path under it,
never a URL, so the server fetches only from where the admin said it may.

The archive streams into a file of the upload staging area, capped at the upload size limit
(a longer body is cut off and refused), hashed as it arrives; redirects are followed only to
URLs under an allowlisted source (a hub's resolve URL that redirects to its own CDN works when
the CDN is allowlisted too). The file then goes through the upload path like any client's
archive (`UploadService.upload`: extraction, the peft files' checks, the tenant's quota).
"""

import asyncio
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote, urljoin, urlsplit

import httpx

from service.errors import FailedPreconditionError, InvalidArgumentError, UnavailableError

MAX_REDIRECTS = 5
TIMEOUT_SECONDS = 30.0
"""For connecting and for each read: a source that stalls longer is unavailable."""
TOTAL_SECONDS = 600.0
"""For the whole download: a source that trickles is unavailable too."""
SHA256 = re.compile(r"[0-9a-fA-F]{64}")
CHUNK_BYTES = 1 << 20
_FORBIDDEN = set("?#\\%") | {chr(c) for c in range(32)} | {"\x7f"}


@dataclass(frozen=True)
class Download:
    """An ImportAdapter's archive to download: an allowlisted source, a path under it, and the
    sha256 the client expects ("" checks none)."""

    source: str
    path: str
    sha256: str = ""


def download_url(sources: Mapping[str, str], source: str, path: str) -> str:
    """The URL of `path` under the allowlisted `source`. Pure.

    Raises:
        InvalidArgumentError: a source not on the allowlist, or a path that is not a plain
            relative path (naming `download.source` or `download.path`).
    """
    if source not in sources:
        known = ", ".join(sorted(sources)) or "none: --import-urls is empty"
        raise InvalidArgumentError(
            f"download.source: {source[:64]!r} is not an allowlisted source ({known})"
        )
    parts = path.split("/")
    if (
        not path
        or len(path) > 1024
        or any(part in ("", ".", "..") for part in parts)
        or _FORBIDDEN & set(path)
    ):
        raise InvalidArgumentError(
            f"download.path: {path[:200]!r} must be a relative path of at most 1024 characters, "
            "without empty, '.' or '..' parts, a query, a fragment, escapes or backslashes"
        )
    return f"{sources[source]}/{quote(path)}"


def check_sha256(sha256: str) -> None:
    """Raises InvalidArgumentError unless `sha256` is empty or 64 hex digits. Pure."""
    if sha256 and not SHA256.fullmatch(sha256):
        raise InvalidArgumentError(f"download.sha256: {sha256[:80]!r} is not 64 hex digits")


def file_name_of(path: str) -> str:
    """The archive's file name: the last part of its path. Pure."""
    return PurePosixPath(path).name


def allowlisted(url: str, sources: Mapping[str, str]) -> bool:
    """Whether `url` lies under one of the allowlisted sources' URLs, as a server resolves it:
    a path with a "." or ".." segment or an escaped dot or slash, which could climb out of the
    source's path after the prefix matched, is under none. Pure."""
    path = urlsplit(url).path
    if {".", ".."} & set(path.split("/")) or re.search(r"%2[eEfF]|%5[cC]", path):
        return False
    return any(url.startswith(f"{base}/") for base in sources.values())


async def fetch(
    url: str, sources: Mapping[str, str], target: Path, max_bytes: int
) -> tuple[int, str]:
    """Streams `url` into `target`; returns its size and sha256.

    Raises:
        InvalidArgumentError: the body is larger than `max_bytes`.
        FailedPreconditionError: the source answered something other than the file (a client
            error status, a redirect outside the allowlist, too many redirects).
        UnavailableError: the source could not be reached, stalled, took longer than
            TOTAL_SECONDS, or answered 429 or a server error.
    """
    try:
        async with (
            asyncio.timeout(TOTAL_SECONDS),
            httpx.AsyncClient(timeout=TIMEOUT_SECONDS, follow_redirects=False) as client,
        ):
            for _ in range(MAX_REDIRECTS + 1):
                async with client.stream("GET", url) as response:
                    if response.has_redirect_location:
                        location = urljoin(url, response.headers["location"])
                        if not allowlisted(location, sources):
                            raise FailedPreconditionError(
                                f"download: {url} redirects to {location[:300]}, which is under "
                                "no allowlisted source (--import-urls)"
                            )
                        url = location
                        continue
                    status = response.status_code
                    if status == httpx.codes.TOO_MANY_REQUESTS or httpx.codes.is_server_error(
                        status
                    ):
                        raise UnavailableError(f"download: {url} answered HTTP {status}")
                    if status != httpx.codes.OK:
                        raise FailedPreconditionError(f"download: {url} answered HTTP {status}")
                    return await _save(response, url, target, max_bytes)
    except httpx.HTTPError as exc:
        raise UnavailableError(f"download: {url}: {type(exc).__name__}: {exc}") from None
    except TimeoutError:
        raise UnavailableError(f"download: {url} took longer than {TOTAL_SECONDS:.0f} s") from None
    raise FailedPreconditionError(f"download: more than {MAX_REDIRECTS} redirects from {url}")


async def _save(
    response: httpx.Response, url: str, target: Path, max_bytes: int
) -> tuple[int, str]:
    too_large = InvalidArgumentError(
        f"download: {url} is larger than the {max_bytes} bytes an upload may be"
    )
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    digest, size = hashlib.sha256(), 0
    with target.open("wb") as out:
        async for chunk in response.aiter_bytes(CHUNK_BYTES):
            size += len(chunk)
            if size > max_bytes:
                raise too_large
            digest.update(chunk)
            out.write(chunk)
    return size, digest.hexdigest()
