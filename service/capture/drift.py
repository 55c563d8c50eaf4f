"""Prompt drift of captured traffic, measured in the background.

Every --drift-interval-seconds, for each target a capture policy covers: the distinct prompts
captured in the last WINDOW_SECONDS (at most MAX_PROMPTS, every tenant's) against the drift
reference of
the version that answered most of them (`trainer.drift`; an adapter trained elsewhere has none,
and is skipped). Embedding and the statistics run in a worker thread, never per request. The
gauges `adapterd_drift{adapter, metric}` hold the last measurement; on a shared store every
replica measures the same window.
"""

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from service.adapters.manager import AdapterManager
from service.capture.model import Capture, CaptureFilter
from service.errors import AdapterdError
from service.metrics import Metrics
from service.store.base import Store
from trainer.drift import Drift, drift, prompt_text, read_reference

WINDOW_SECONDS = 3600.0
MAX_PROMPTS = 500
MIN_PROMPTS = 10
"""Fewer distinct captured prompts than this in the window say nothing yet."""

logger = logging.getLogger(__name__)


def captured_prompt(capture: Capture) -> str:
    """The prompt of a captured request, as `trainer.drift` reads a training row's."""
    messages = capture.request.get("messages")
    if messages is None:
        return str(capture.request.get("prompt", ""))
    return prompt_text((m["role"], m["content"]) for m in messages)


def _measure(adapter_dir: Path, prompts: list[str]) -> Drift | None:
    from trainer.embeddings import embed_rows

    reference = read_reference(adapter_dir)
    if reference is None:
        return None
    return drift(reference, embed_rows(prompts), [len(p) for p in prompts])


class DriftMonitor:
    """Measures each captured target's drift and keeps the gauges."""

    def __init__(
        self,
        *,
        store: Store,
        adapters: AdapterManager,
        metrics: Metrics,
        targets: Callable[[], Iterable[str]],
        interval: float,
    ) -> None:
        self._store = store
        self._adapters = adapters
        self._metrics = metrics
        self._targets = targets
        self._interval = interval

    async def run(self) -> None:
        """Measures every interval, until cancelled."""
        while True:
            await asyncio.sleep(self._interval)
            for target in self._targets():
                try:
                    await self.measure(target)
                except (AdapterdError, ValueError) as exc:  # the store is away; a bad file
                    logger.warning("drift of %s: %s", target, exc)

    async def measure(self, target: str) -> Drift | None:
        """`target`'s drift now, also set on the gauges; None when there is too little
        captured, or no reference to compare with."""
        selected = CaptureFilter(tenant=None, target=target, since=time.time() - WINDOW_SECONDS)
        page = await self._store.list_captures(selected, MAX_PROMPTS, 0)
        if len(page.captures) < MIN_PROMPTS:
            return None
        version = Counter(c.adapter_version for c in page.captures).most_common(1)[0][0]
        try:
            adapter_dir = self._adapters.resolve(version).path
        except AdapterdError:  # unloaded since
            return None
        # Distinct prompts: a question asked again is one draw of the distribution, and repeats
        # would break the test's independence (they alone make a window look unlike any other).
        prompts = list(dict.fromkeys(captured_prompt(c) for c in page.captures))
        if len(prompts) < MIN_PROMPTS:
            return None
        measured = await asyncio.to_thread(_measure, adapter_dir, prompts)
        if measured is not None:
            label = self._adapters.label(target)
            values: dict[str, Any] = asdict(measured)
            for metric, value in values.items():
                self._metrics.drift.labels(label, metric).set(value)
        return measured
