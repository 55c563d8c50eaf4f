"""SIGTERM: health off, calls drained, engine stopped, no child process left behind."""

import psutil
import pytest

from tests.support import ServerProcess

pytestmark = pytest.mark.engine


def test_sigterm_exits_cleanly_and_leaves_no_child(tmp_path, tiny_model_dir):
    server = ServerProcess(data_dir=tmp_path, base_model=str(tiny_model_dir)).start()
    children = server.children()
    assert children, "vLLM starts its engine core in a child process"
    code = server.stop(timeout=60)
    assert code == 0, server.log_path.read_text()[-2000:]
    alive = [
        child.pid
        for child in children
        if child.is_running() and child.status() != psutil.STATUS_ZOMBIE
    ]
    assert alive == []
    log = server.log_path.read_text()
    assert "shutting down" in log and "stopped" in log
    assert "Traceback" not in log
