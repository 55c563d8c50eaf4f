"""`adapterd worker`'s settings: the store it needs, the flags it takes."""

import pytest

from service.cli import build_parser, main
from service.errors import ConfigError
from service.settings import ServerSettings, load_settings
from service.worker import build_worker


def test_a_worker_refuses_a_store_it_cannot_share(tmp_path):
    settings = load_settings(ServerSettings, {"data_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"--store-url: a worker takes its jobs from the store"):
        build_worker(settings)


def test_the_worker_command_exits_2_naming_the_store_and_takes_no_serving_flags(tmp_path, capsys):
    assert main(["worker", "--data-dir", str(tmp_path)]) == 2
    assert "--store-url: a worker takes its jobs" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # an engine setting is not a worker's
        build_parser().parse_args(["worker", "--engine-threads", "1"])
    assert "unrecognized arguments: --engine-threads" in capsys.readouterr().err
