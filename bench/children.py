"""Benchmark variants each in a process of its own (so each one's peak RSS and warm-up are its
own): the parent runs `SCRIPT --child VARIANT ARGS...`, the child prints its figures as one
`RESULT <json>` line (`report_child`), and the parent reads that line (`run_child`; or
`start_child` and `child_result`, for children that run at the same time)."""

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULT = "RESULT "


def report_child(figures: Any) -> None:
    """The child's last word: its figures, on stdout."""
    print(RESULT + json.dumps(figures), flush=True)


def start_child(
    script: str, variant: str, *args: str, core: int | None = None
) -> subprocess.Popen[str]:
    """Starts `script` as the child `variant` with `args`, pinned to `core` when given."""
    command = [sys.executable, script, "--child", variant, *args]
    if core is not None:
        command = ["taskset", "--cpu-list", str(core), *command]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def child_result(variant: str, child: subprocess.Popen[str]) -> Any:
    """Waits for a started child; returns its figures. Exits naming the variant, with the
    ends of its output, when it fails."""
    stdout, stderr = child.communicate()
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT)]
    if child.returncode != 0 or not lines:
        sys.exit(f"{variant} failed:\n{stdout[-2000:]}\n{stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix(RESULT))


def run_child(script: str, variant: str, *args: str) -> Any:
    """Runs `script` as the child `variant` with `args`; returns its figures."""
    print(f"running {variant} ...", file=sys.stderr, flush=True)
    return child_result(variant, start_child(script, variant, *args))


def child_arguments(
    description: str, options: dict[str, tuple[str, ...]] | None = None
) -> argparse.Namespace:
    """The command line of a benchmark whose children each take the model, a dtype and a
    thread count (`--child` set: this process is one), and the benchmark's own `options`
    (`--name` with its choices, the first the default)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    for name, choices in (options or {}).items():
        parser.add_argument(f"--{name}", choices=choices, default=choices[0])
    return parser.parse_args()


def measure(
    script: str, variant: str, model_dir: Path, dtype: str, threads: int, *options: str
) -> Any:
    """`run_child` of such a benchmark's `variant`, passing on its `options` flags."""
    args = ("--model", str(model_dir), "--dtype", dtype, "--threads", str(threads), *options)
    return run_child(script, variant, *args)
