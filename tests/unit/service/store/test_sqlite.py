"""What only the SQLite store does: one server per file."""

import pytest

from service.errors import ConfigError
from service.store.sqlite import SqliteStore


async def test_a_second_server_on_the_same_file_is_refused_until_the_first_closes(tmp_path):
    first = SqliteStore(tmp_path / "adapterd.db")
    await first.open()
    second = SqliteStore(tmp_path / "adapterd.db")
    with pytest.raises(
        ConfigError, match=r"adapterd\.db: another adapterd server uses this SQLite store"
    ):
        await second.open()
    await first.close()
    third = SqliteStore(tmp_path / "adapterd.db")
    await third.open()
    await third.close()
