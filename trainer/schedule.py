"""The order a run takes its training items in: epochs of shuffled micro-batches, stage after
stage of a curriculum (`data.stages`). A function of the seed and the position alone, so a
resumed run, which knows only how many micro-batches it consumed, takes exactly the same ones
as the run it goes on from. Pure.

Without stages a run is one stage of `training.epochs`. With `training.max_steps` past the
stages' own length, the last stage goes on for more epochs.
"""

import math
import random
from dataclasses import dataclass

GROUP_WINDOW = 16
"""Micro-batches whose examples are sorted by length together."""
STAGE_STRIDE = 2**40
"""Separates the stages' shuffles (stage 0 shuffles as a run without stages does)."""


def epoch_order(
    lengths: list[int],
    batch_size: int,
    seed: int,
    epoch: int,
    *,
    group_by_length: bool,
    stage: int = 0,
) -> list[list[int]]:
    """The micro-batches of one epoch (of one stage) as example indices; a function of (seed,
    stage, epoch) alone.

    With `group_by_length`, the shuffled examples are sorted by length within windows of
    GROUP_WINDOW micro-batches (less padding) and the micro-batches shuffled again.
    """
    rng = random.Random(seed * 1_000_003 + epoch + stage * STAGE_STRIDE)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        window = batch_size * GROUP_WINDOW
        order = [
            i
            for start in range(0, len(order), window)
            for i in sorted(order[start : start + window], key=lengths.__getitem__)
        ]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


@dataclass(frozen=True)
class Stage:
    """One stage of a run's items."""

    name: str
    """"" for a run without stages."""
    size: int
    """Its items: the run's items from the end of the stage before."""
    epochs: float


class Schedule:
    """Which items each micro-batch of a run takes (`batch`) and where in the run it is."""

    def __init__(
        self,
        stages: list[Stage],
        lengths: list[int],
        batch_size: int,
        seed: int,
        group_by_length: bool,
    ) -> None:
        self.stages = stages
        self._lengths = lengths
        self._batch_size = batch_size
        self._seed = seed
        self._group = group_by_length
        self._per_epoch = [math.ceil(s.size / batch_size) for s in stages]
        self._items_before = [sum(s.size for s in stages[:k]) for k in range(len(stages))]
        own = [math.ceil(s.epochs * n) for s, n in zip(stages, self._per_epoch, strict=True)]
        self._micro_before = [sum(own[:k]) for k in range(len(stages))]
        self.micro_batches = sum(own)
        """The stages' micro-batches, each stage for its epochs."""
        self._orders: dict[tuple[int, int], list[list[int]]] = {}

    def stage_at(self, micro_batch: int) -> int:
        """The stage of the micro-batch at 0-based position `micro_batch` (past the end: the
        last)."""
        return max(k for k, before in enumerate(self._micro_before) if before <= micro_batch)

    def starts_stage(self, micro_batch: int) -> bool:
        """Whether that micro-batch is the first of its stage."""
        return micro_batch in self._micro_before

    def batch(self, micro_batch: int) -> list[int]:
        """The item indices of the micro-batch at position `micro_batch`."""
        stage = self.stage_at(micro_batch)
        epoch, index = divmod(micro_batch - self._micro_before[stage], self._per_epoch[stage])
        order = self._orders.get((stage, epoch))
        if order is None:
            start = self._items_before[stage]
            lengths = self._lengths[start : start + self.stages[stage].size]
            order = epoch_order(
                lengths, self._batch_size, self._seed, epoch, group_by_length=self._group,
                stage=stage,
            )  # fmt: skip
            self._orders = {(stage, epoch): order}  # one epoch at a time is all a run needs
        return [self._items_before[stage] + i for i in order[index]]

    def epochs_done(self, consumed: int) -> float:
        """Epochs of the current stage done once `consumed` micro-batches were."""
        stage = self.stage_at(max(consumed - 1, 0))
        return (consumed - self._micro_before[stage]) / self._per_epoch[stage]
