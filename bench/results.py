"""How a benchmark ends: its figures and ratios as a table, then the one JSON line."""

import json
from typing import Any


def report(
    benchmark: str, figures: dict[str, float], ratios: dict[str, float], **extra: Any
) -> None:
    """Prints each figure and ratio (ratios oriented so that larger is better for adapterd),
    then `{"benchmark", "figures", "ratios"}` as the last line; `extra` joins the figures
    unrounded (labels such as the backend that ran)."""
    for name, value in figures.items():
        print(f"{name:<40}{value:>10.3f}")
    for name, value in ratios.items():
        print(f"{name:<40}{value:>10.2f}x")
    rounded = {k: round(v, 4) for k, v in figures.items()}
    print(
        json.dumps(
            {
                "benchmark": benchmark,
                "figures": {**rounded, **extra},
                "ratios": {k: round(v, 3) for k, v in ratios.items()},
            }
        )
    )
