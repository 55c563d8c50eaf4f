"""Per-process limits per tenant."""

import pytest

from service.errors import ResourceExhaustedError
from service.quotas import PerTenant


def test_a_tenant_at_its_limit_is_refused_and_others_are_not():
    streams = PerTenant(2, "WatchJob streams", "--tenant-max-watch-streams")
    with streams.hold("acme"), streams.hold("acme"):
        refused = pytest.raises(ResourceExhaustedError, match=r"'acme' has 2 WatchJob streams open")
        with refused, streams.hold("acme"):
            pass
        with streams.hold("globex"):
            assert (streams.held("acme"), streams.held("globex")) == (2, 1)
    assert streams.held("acme") == 0
    with pytest.raises(KeyError), streams.hold("acme"):  # a failing block gives its place back
        raise KeyError
    assert streams.held("acme") == 0
