"""Per-tenant limits on what one process holds open: WatchJob streams and generation requests.

These are counted in the process (they are connections and engine requests, not stored
things), so each replica enforces its own; the stored quotas (queued jobs, upload bytes) are
counted in the store and hold across replicas. One tenant reaching its limit leaves the others
untouched: the refusal is RESOURCE_EXHAUSTED, naming the limit and its setting.
"""

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from service.errors import ResourceExhaustedError


class PerTenant:
    """At most `limit` things of one kind open per tenant at once. Single-threaded (the
    event loop's), so a plain counter is exact."""

    def __init__(self, limit: int, what: str, setting: str) -> None:
        self._limit = limit
        self._what = what
        self._setting = setting
        self._open: Counter[str] = Counter()

    @contextmanager
    def hold(self, tenant: str) -> Iterator[None]:
        """Holds one place of `tenant`'s for the block.

        Raises:
            ResourceExhaustedError: when the tenant holds `limit` already.
        """
        if self._open[tenant] >= self._limit:
            raise ResourceExhaustedError(
                f"tenant {tenant!r} has {self._open[tenant]} {self._what} open, its limit "
                f"({self._setting}); retry when one ends"
            )
        self._open[tenant] += 1
        try:
            yield
        finally:
            self._open[tenant] -= 1
            if not self._open[tenant]:
                del self._open[tenant]

    def held(self, tenant: str) -> int:
        """Places `tenant` holds now."""
        return self._open[tenant]
