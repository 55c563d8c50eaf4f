"""Checkpoints: complete or absent, kept by the job's retention policy (the newest K, and the
K with the lowest eval loss), resumable exactly, one directory per attempt (`trainer.layout`).

A checkpoint is written into a hidden temporary directory and renamed into place when complete,
so a crash mid-write never leaves something that looks resumable. It holds the adapter with
its manifest (what the server registers as a version), the optimizer, the scheduler, every RNG
state and the loop state (step, data position, history).

Each attempt of a job works in a directory named by its claim's fencing number
(`attempts/<fence>/`: its checkpoints and its best and last adapters). A new attempt starts
from copies of the checkpoints the attempt before it kept (it resumes from the newest), so
nothing an earlier attempt's trainer writes afterwards (one whose owner lost its lease but which
still runs) is ever read; and such a trainer, seeing a later attempt's directory, stops before
its next write.
"""

import json
import math
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import set_peft_model_state_dict
from safetensors.torch import load_file

from trainer.files import fresh_staging, publish_dir
from trainer.layout import (
    ADAPTER,
    BEST,
    CHECKPOINTS,
    MANIFEST,
    PEFT_WEIGHTS,
    STATE,
    CheckpointSummary,
    attempt_dir,
    attempts,
    checkpoint_dir,
    complete_checkpoints,
    retained,
    step_of,
    summary_of,
)


@dataclass
class LoopState:
    """Where the training loop is; saved with every checkpoint."""

    step: int = 0
    """Optimizer steps completed."""
    micro_batch: int = 0
    """Micro-batches consumed in all (the data position)."""
    stage: int = 0
    """The curriculum stage of the last micro-batch consumed (`data.stages`; 0 without)."""
    trained_tokens: int = 0
    """Loss-carrying tokens seen."""
    input_tokens: int = 0
    """Non-padding input tokens seen."""
    best_eval_loss: float | None = None
    """Lowest eval loss so far."""
    best_step: int | None = None
    """Step of the lowest eval loss."""
    evals_without_improvement: int = 0
    """For early stopping."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """Per-step records: step, epoch, loss, lr, and eval_loss where measured."""
    reference: list[list[float]] = field(default_factory=list)
    """DPO: the reference's log-probabilities of each training pair's chosen and rejected
    answer, then each eval pair's (`trainer.objectives.reference_logps`)."""


def superseded(output_dir: Path, fence: int) -> bool:
    """Whether an attempt under a later fence has started: this one must write nothing more."""
    return any(later > fence for later, _ in attempts(output_dir))


def take_over(output_dir: Path, fence: int) -> Path:
    """The attempt's directory. An attempt that starts again under its own fence (a trainer run
    by hand, twice) continues in it; a new one gets it made from copies of the newest
    kept checkpoints and the best adapter of the latest earlier attempt, whatever that attempt's
    trainer still writes."""
    mine = attempt_dir(output_dir, fence)
    if mine.is_dir():
        return mine
    staging = fresh_staging(mine)
    earlier = [path for number, path in attempts(output_dir) if number < fence]
    if earlier:
        for kept in complete_checkpoints(earlier[-1] / CHECKPOINTS):
            shutil.copytree(kept, staging / CHECKPOINTS / kept.name)
        if (earlier[-1] / BEST).is_dir():
            shutil.copytree(earlier[-1] / BEST, staging / BEST)
    return publish_dir(staging, mine)


def rng_state() -> dict[str, Any]:
    """This process's random number generators, as a checkpoint keeps them."""
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def save_checkpoint(
    root: Path,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    state: LoopState,
    *,
    manifest: dict[str, Any],
    keep: tuple[int, int],
    rng_states: list[dict[str, Any]],
) -> Path:
    """Writes a complete checkpoint atomically, its adapter with `manifest` and the summary of
    the step just recorded in `state.history`, then prunes what `keep` (newest, best) does not
    retain (`trainer.layout.retained`); `rng_states` holds every rank's `rng_state()`, by
    rank."""
    target = checkpoint_dir(root, state.step)
    staging = fresh_staging(target)
    model.save_pretrained(staging / ADAPTER)
    summary = CheckpointSummary.of_record(state.history[-1])
    entry = {**manifest, "checkpoint": summary.to_json()}
    (staging / MANIFEST).write_text(json.dumps(entry, indent=2))
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_states,
        },
        staging / "training_state.pt",
    )
    (staging / STATE).write_text(json.dumps(asdict(state)))
    publish_dir(staging, target)
    prune(root, *keep)
    return target


def prune(root: Path, newest: int, best: int) -> None:
    """Deletes the checkpoints under `root` that the policy does not retain; one without a
    summary counts as one with no eval loss."""
    found = complete_checkpoints(root)
    summaries = [summary_of(p) or CheckpointSummary(step_of(p), 0.0, math.nan) for p in found]
    kept = retained(summaries, newest, best)
    for path, summary in zip(found, summaries, strict=True):
        if summary.step not in kept:
            shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(
    path: Path, model: Any, optimizer: Any, scheduler: Any, rank: int = 0
) -> LoopState:
    """Restores adapter weights, optimizer, scheduler and this rank's RNGs; returns the loop
    state."""
    weights = load_file(path / ADAPTER / PEFT_WEIGHTS)
    set_peft_model_state_dict(model, weights)
    # Tensors, numbers and containers only: a checkpoint file can never run code on load.
    saved = torch.load(path / "training_state.pt", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    random.setstate(saved["rng"][rank]["python"])
    torch.set_rng_state(saved["rng"][rank]["torch"])
    return LoopState(**json.loads((path / STATE).read_text()))
