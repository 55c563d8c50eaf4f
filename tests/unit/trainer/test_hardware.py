"""The precision rule and the CPU count, with the capability sources faked."""

import os

import pytest
import torch

from trainer.hardware import (
    Device,
    Machine,
    MatmulRates,
    PrecisionChoice,
    available_cpus,
    cgroup_cpu_limit,
    choose_precision,
    measure_matmul,
    parse_cpuinfo,
)

ICE_LAKE = Device("cpu", "Intel Xeon Ice Lake", frozenset({"avx512f", "avx512_vnni"}))
EPYC = Device("cpu", "AMD EPYC", frozenset({"avx512f", "avx512_bf16"}))
SAPPHIRE = Device("cpu", "Intel Xeon Sapphire Rapids", frozenset({"amx_bf16", "amx_tile"}))
A100 = Device("cuda", "NVIDIA A100", cuda_bf16=True)
T4 = Device("cuda", "Tesla T4", cuda_bf16=False)


def rates(bf16_over_fp32):
    return MatmulRates(float32=100e9, bfloat16=100e9 * bf16_over_fp32, threads=1)


@pytest.mark.parametrize(
    ("device", "purpose", "expected"),
    [
        (A100, "train", "bfloat16"),
        (A100, "serve", "bfloat16"),
        (T4, "train", "float32"),  # fp16 training would need loss scaling on every step
        (T4, "serve", "float16"),
        (ICE_LAKE, "train", "float32"),
        (ICE_LAKE, "serve", "float32"),
        (EPYC, "train", "bfloat16"),
        (SAPPHIRE, "serve", "bfloat16"),
    ],
)
def test_auto_follows_the_device(device, purpose, expected):
    choice = choose_precision("auto", device, purpose)
    assert choice.dtype == expected
    assert choice.requested == "auto" and choice.reason


def test_a_cpu_without_the_flags_names_them():
    reason = choose_precision("auto", ICE_LAKE, "train").reason
    assert "amx_bf16" in reason and "avx512_bf16" in reason


def test_the_probe_confirms_or_overrules_the_flags():
    faster = choose_precision("auto", EPYC, "train", rates(4.5))
    assert faster.dtype == "bfloat16" and faster.rates == rates(4.5)
    # A KVM guest that shows avx512_bf16 but multiplies bf16 at 0.6x of fp32
    slower = choose_precision("auto", EPYC, "train", rates(0.6))
    assert slower.dtype == "float32"
    assert "0.60x" in slower.reason
    assert slower.to_json()["probe"] == {
        "float32_gflops": 100.0,
        "bfloat16_gflops": 60.0,
        "threads": 1,
    }


@pytest.mark.parametrize("device", [ICE_LAKE, EPYC, A100, T4])
@pytest.mark.parametrize("requested", ["bfloat16", "float16", "float32"])
def test_an_explicit_dtype_always_wins(device, requested):
    choice = choose_precision(requested, device, "train", rates(0.1))
    assert choice.dtype == requested
    assert choice.rates is None  # nothing measured decides it


def test_cpuinfo_gives_the_first_processors_model_and_flags():
    text = (
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n"
        "flags\t\t: fpu avx512f avx512_bf16\n\nprocessor\t: 1\nmodel name\t: other\n"
    )
    model, flags = parse_cpuinfo(text)
    assert model == "Intel(R) Xeon(R) Processor"
    assert flags == {"fpu", "avx512f", "avx512_bf16"}
    assert Device("cpu", model, flags).native_bf16


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "50000 100000\n"}, 0.5),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_the_cgroup_quota_is_read_from_v2_or_v1(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_limit(tmp_path) == expected


def test_a_pod_cpu_limit_caps_the_affinity_mask(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path) == affinity  # no quota file: the mask alone
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU still gets one thread
    assert available_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{(affinity + 3) * 100000} 100000\n")
    assert available_cpus(tmp_path) == affinity  # a quota above the mask changes nothing


def test_the_probe_measures_both_dtypes_and_restores_the_thread_count():
    before = torch.get_num_threads()
    measured = measure_matmul(threads=1)
    assert measured.float32 > 1e9 and measured.bfloat16 > 1e8  # FLOP/s, not seconds
    assert measured.threads == 1
    assert torch.get_num_threads() == before


def test_the_probe_is_recorded_even_where_the_flags_decide():
    choice = choose_precision("auto", ICE_LAKE, "train", rates(0.22))
    assert choice.dtype == "float32" and choice.rates == rates(0.22)


def test_a_choice_survives_its_json_and_the_machine_record_names_both_sides():
    choice = choose_precision("auto", EPYC, "train", rates(4.5))
    assert PrecisionChoice.from_json(choice.to_json()).to_json() == choice.to_json()
    machine = Machine("AMD EPYC", "cpu", True, None, choice, None, 1)
    assert machine.to_json() == {
        "cpu_model": "AMD EPYC",
        "device": "cpu",
        "native_bf16": True,
        "engine_dtype": None,  # a benchmark without an engine
        "trainer_dtype": "bfloat16",
        "engine_threads": None,
        "trainer_threads": 1,
        "probe": {"float32_gflops": 100.0, "bfloat16_gflops": 450.0, "threads": 1},
    }
