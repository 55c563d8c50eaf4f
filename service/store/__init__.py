"""Durable state: the Store protocol, its SQLite and PostgreSQL implementations, and the one
function that picks between them by URL."""

from pathlib import Path

from service.store.base import Store


def store_for(url: str) -> Store:
    """The (unopened) store a --store-url names: `sqlite:///FILE` (as SQLAlchemy spells it:
    `sqlite:///rel.db`, `sqlite:////abs/path.db`) or `postgresql://...` (psycopg is imported
    only then). The settings checked the URL."""
    scheme, _, rest = url.partition("://")
    if scheme == "sqlite":
        from service.store.sqlite import SqliteStore

        return SqliteStore(Path(rest[1:]))
    from service.store.postgres import PostgresStore

    return PostgresStore(url)


def describe_store(url: str) -> str:
    """The store a URL names, fit for a log line: a PostgreSQL URL without its password."""
    if url.startswith("sqlite:"):
        return url
    from service.store.postgres import redacted

    return redacted(url)
