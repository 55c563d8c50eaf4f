"""`adapterd worker`'s settings: the store it needs, the flags it takes, its slots'
accelerators."""

import pytest

from service.cli import build_parser, main
from service.errors import ConfigError
from service.settings import ServerSettings, load_settings
from service.worker import build_worker, slot_devices, visible_accelerators


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


def test_each_slot_gets_an_equal_block_of_the_accelerators():
    assert slot_devices(2, ["0", "1", "2", "3"]) == [("0", "1"), ("2", "3")]
    assert slot_devices(3, ["0", "1", "2", "3"]) == [("0",), ("1",), ("2",)]  # one left over
    assert slot_devices(1, ["GPU-a1", "GPU-b2"]) == [("GPU-a1", "GPU-b2")]
    assert slot_devices(2, []) == [None, None]  # no accelerator: the slots share the CPUs
    with pytest.raises(
        ConfigError,
        match=r"--slots 3: this worker sees 2 accelerator\(s\) "
        r"\(CUDA_VISIBLE_DEVICES=0,1\); run one slot per accelerator",
    ):
        slot_devices(3, ["0", "1"])


def test_the_visible_accelerators_come_from_the_environment_or_torch():
    assert visible_accelerators({"CUDA_VISIBLE_DEVICES": "2, 5,"}) == ("2", "5")
    assert visible_accelerators({"CUDA_VISIBLE_DEVICES": "-1"}) == ()
    assert visible_accelerators({"CUDA_VISIBLE_DEVICES": ""}) == ()
    assert visible_accelerators({}) == ()  # the CPU build of torch finds no device here
