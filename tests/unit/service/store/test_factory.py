"""`store_for`: the store a --store-url names."""

from pathlib import Path

import pytest

from service.store import describe_store, store_for
from service.store.postgres import PostgresStore
from service.store.sqlite import SqliteStore


@pytest.mark.parametrize(
    ("url", "path"),
    [("sqlite:////abs/dir/a.db", Path("/abs/dir/a.db")), ("sqlite:///rel/a.db", Path("rel/a.db"))],
)
def test_sqlite_urls_name_a_file_as_sqlalchemy_spells_them(url, path):
    store = store_for(url)
    assert isinstance(store, SqliteStore) and store.path == path


def test_a_postgresql_url_makes_the_shared_store():
    store = store_for("postgresql://bob@db/adapterd")
    assert isinstance(store, PostgresStore) and store.url == "postgresql://bob@db/adapterd"


def test_a_store_is_described_for_the_log_without_a_password():
    assert describe_store("sqlite:////data/adapterd.db") == "sqlite:////data/adapterd.db"
    assert (
        describe_store("postgresql://bob:hunter2@db/x") == "user=bob password=*** dbname=x host=db"
    )
