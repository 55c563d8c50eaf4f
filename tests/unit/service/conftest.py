"""Fixtures of the service's unit tests."""

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from service.store.base import Store
from service.store.postgres import PostgresStore
from service.store.sqlite import SqliteStore


@pytest.fixture(params=["sqlite", "postgres"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    """Makes (unopened) stores on one fresh location: a new SQLite file, or a new database on
    the session's PostgreSQL server. Every test that uses it runs on both."""
    if request.param == "sqlite":
        return lambda: SqliteStore(tmp_path / "adapterd.db")
    url = request.getfixturevalue("postgres").create_database()
    return lambda: PostgresStore(url)


@pytest.fixture
async def store(new_store: Callable[[], Store]) -> AsyncIterator[Store]:
    """An open store on a fresh location (`new_store`): the store contract runs on both."""
    opened = new_store()
    await opened.open()
    yield opened
    await opened.close()
