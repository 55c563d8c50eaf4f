"""Benchmark variants each in a process of its own (so each one's peak RSS and warm-up are its
own): the parent runs `SCRIPT --child VARIANT ARGS...`, the child prints its figures as one
`RESULT <json>` line (`report_child`), and the parent reads that line (`run_child`)."""

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


def run_child(script: str, variant: str, *args: str) -> Any:
    """Runs `script` as the child `variant` with `args`; returns its figures. Exits naming the
    variant, with the ends of its output, when it fails."""
    print(f"running {variant} ...", file=sys.stderr, flush=True)
    result = subprocess.run(
        [sys.executable, script, "--child", variant, *args],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT)]
    if result.returncode != 0 or not lines:
        sys.exit(f"{variant} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix(RESULT))


def child_arguments(description: str) -> argparse.Namespace:
    """The command line of a benchmark whose children each take the model, a dtype and a
    thread count (`--child` set: this process is one)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    return parser.parse_args()


def measure(script: str, variant: str, model_dir: Path, dtype: str, threads: int) -> Any:
    """`run_child` of such a benchmark's `variant`."""
    args = ("--model", str(model_dir), "--dtype", dtype, "--threads", str(threads))
    return run_child(script, variant, *args)
