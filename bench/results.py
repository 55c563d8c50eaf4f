"""How a benchmark ends: its figures and ratios as a table, then the one JSON line."""

import json
from typing import Any

from trainer.hardware import Machine


def report(
    benchmark: str,
    figures: dict[str, float],
    ratios: dict[str, float],
    machine: Machine,
    **extra: Any,
) -> None:
    """Prints the machine, each figure and ratio (ratios oriented so that larger is better for
    adapterd), then `{"benchmark", "machine", "figures", "ratios"}` as the last line; `extra`
    joins the figures unrounded (labels such as the backend that ran)."""
    record = machine.to_json()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in record.items() if k != "probe"))
    for name, value in figures.items():
        print(f"{name:<40}{value:>10.3f}")
    for name, value in ratios.items():
        print(f"{name:<40}{value:>10.2f}x")
    rounded = {k: round(v, 4) for k, v in figures.items()}
    print(
        json.dumps(
            {
                "benchmark": benchmark,
                "machine": record,
                "figures": {**rounded, **extra},
                "ratios": {k: round(v, 3) for k, v in ratios.items()},
            }
        )
    )
