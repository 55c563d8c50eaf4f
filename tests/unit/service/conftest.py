"""Fixtures of the service's unit tests."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.store.sqlite import SqliteStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """A real SQLite store on a fresh file."""
    store = SqliteStore(tmp_path / "adapterd.db")
    await store.open()
    yield store
    await store.close()
