"""What only the SQLite store does: one server per file, its own schema upgrades."""

import sqlite3

import pytest

from service.errors import ConfigError
from service.store.sqlite import MIGRATIONS, SqliteStore
from tests.unit.service.store.test_contract import released_by_the_first_sweep


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


async def test_a_job_running_before_leases_existed_is_released_by_the_first_sweep(tmp_path):
    path = tmp_path / "adapterd.db"
    with sqlite3.connect(path) as db:  # a store of the release before leases, with a job running
        for script in MIGRATIONS[:3]:
            db.executescript(script)
        db.execute(
            "INSERT INTO jobs (id, seq, tenant, kind, state, spec, spec_digest, request_id, "
            "priority, created, updated) VALUES ('job-1', 1, 'acme', 'train', 'running', '{}', "
            "'d', '', 0, 1.0, 1.0)"
        )
        db.execute("PRAGMA user_version=3")
    store = SqliteStore(path)
    await store.open()
    await released_by_the_first_sweep(store)
