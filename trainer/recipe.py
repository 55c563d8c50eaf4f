"""The training recipe: setup, train, save, read top to bottom. One loop for both objectives
(`trainer.objectives`): supervised fine-tuning, and DPO, IPO or ORPO on preference pairs.

Our own loop rather than TRL's SFTTrainer: measured on these CPUs (bench/train_throughput.py),
TRL at its defaults (gradient checkpointing, padded batches, full-vocabulary logits and
per-step metrics over them) trains at under 60% of this loop's rate. The loop computes in the
precision `trainer.hardware` picks (bf16 autocast where the device computes bf16 natively, plain
fp32 where it does not) over fp32 adapter weights, only where labels train, with exactly the
loss masks of `trainer.masking`. The result is a standard peft adapter.

Events, exit codes and failure reasons are `trainer.contract`'s (75: interrupted by SIGTERM after
writing a checkpoint; run it again to resume).
"""

import math
import random
import signal
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import get_scheduler

from trainer.artifacts import identity, install_adapter, write_loss_curve, write_manifest
from trainer.batching import Batch, padded, padding_free
from trainer.checkpoints import (
    LoopState,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    superseded,
    take_over,
)
from trainer.config import TrainConfig
from trainer.contract import ExitCode, FailureReason, TrainerEvent
from trainer.data import MAX_PROBLEMS_SHOWN, DataRejectedError, PreparedData, preparer
from trainer.distributed import ALONE, Group
from trainer.drift import REFERENCE_FILE, write_reference
from trainer.events import EventWriter
from trainer.files import fresh_staging, publish_dir
from trainer.hardware import resolve_precision
from trainer.layout import BEST, CHECKPOINTS, attempt_dir, latest_checkpoint
from trainer.masking import Example, TemplateError
from trainer.model import DTYPES, attach_lora, device, load_base, resolve_quantization
from trainer.objectives import Dpo, Objective, Sft, measure, reference_logps, referenced
from trainer.schedule import Schedule, Stage
from trainer.templates import load_tokenizer

OOM_HINT = (
    "lower training.batch_size or data.max_length, or turn on training.gradient_checkpointing "
    "or 4-bit quantization (quantization.mode nf4)"
)
SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


class _StopFlag:
    """Set by SIGTERM: finish the current step, checkpoint, exit."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._set)

    def _set(self, signum: int, frame: Any) -> None:
        self.requested = True


@dataclass(frozen=True)
class Batching:
    """How micro-batches are built, and where and in which precision they run."""

    packing: bool
    """Padding-free rows if True, right-padded length-grouped batches if False."""
    pad_id: int
    """Token id that fills padding (never trained: padding carries no label)."""
    device: torch.device
    """The model's device."""
    dtype: torch.dtype
    """The compute dtype: autocast to it, or no autocast for fp32."""

    def make(self, examples: list[Example]) -> Batch:
        """A micro-batch of `examples` on the model's device."""
        batch = padding_free(examples) if self.packing else padded(examples, self.pad_id)
        return batch.to(self.device)

    def autocast(self) -> AbstractContextManager[Any]:
        """Compute in `dtype` over the fp32 adapter weights (the optimizer's master copy)."""
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


def run(config: TrainConfig, events: EventWriter, fence: int = 0, group: Group = ALONE) -> int:
    """Trains an adapter as `config` says, as the attempt under `fence` (see
    `trainer.checkpoints`), as one rank of `group` (see `trainer.distributed`; `events` writes
    nothing on the other ranks); returns the exit code."""
    # ---- setup: data first (no model is loaded for bad data), then the model
    settings = config.training
    random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    _check_superseded(config, fence, events, 0, group)
    tokenizer = load_tokenizer(config.base_model, config.chat_template)
    preference = settings.method == "dpo"
    objective: Objective[Any] = (
        Dpo(settings.beta, settings.preference_loss) if preference else Sft()
    )
    try:
        data: PreparedData[Any] = preparer(settings.method)(config.data, tokenizer, settings.seed)
    except DataRejectedError as exc:
        report = exc.report
        events.emit(
            TrainerEvent.FAILED,
            reason=FailureReason.DATA_REJECTED,
            message=str(exc).split("\n")[0],
            problem_counts=report.problem_counts,
            problems=[vars(p) for p in report.problems[:MAX_PROBLEMS_SHOWN]],
        )
        return ExitCode.DATA
    except TemplateError as exc:
        events.emit(TrainerEvent.FAILED, reason=FailureReason.CHAT_TEMPLATE, message=str(exc))
        return ExitCode.TEMPLATE
    events.emit(
        TrainerEvent.DATA, **{k: v for k, v in data.report.to_json().items() if k != "problems"}
    )
    if config.validate_only:
        events.emit(TrainerEvent.DONE, status="validated", metrics={})
        return ExitCode.OK

    precision = resolve_precision(settings.precision, "train", torch.get_num_threads())
    quantization = resolve_quantization(config.quantization)
    base = load_base(
        config.base_model,
        precision.dtype,
        quantization,
        config.quantization,
        settings.gradient_checkpointing,
    )
    model = attach_lora(
        base, config.lora, config.init_adapter.path if config.init_adapter else None
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=0.0)
    on_cuda = device().type == "cuda"
    batching = Batching(
        packing=not preference
        and (settings.packing == "on" or (settings.packing == "auto" and on_cuda)),
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        device=next(model.parameters()).device,
        dtype=DTYPES[precision.dtype],
    )
    staged = bool(config.data.stages)
    schedule = Schedule(
        [Stage(s.name, n, s.epochs) for s, n in zip(config.data.stages, data.stages, strict=True)]
        if staged
        else [Stage("", len(data.train), settings.epochs)],
        [objective.length(item) for item in data.train],
        settings.batch_size,
        settings.seed,
        group_by_length=not batching.packing,
    )
    total_steps = settings.max_steps or math.ceil(
        schedule.micro_batches / settings.gradient_accumulation
    )
    scheduler = get_scheduler(
        SCHEDULERS[settings.scheduler],
        optimizer,
        num_warmup_steps=round(settings.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    # fp16 gradients underflow without loss scaling; its scale is not checkpointed (a resumed
    # run starts from the default scale, which adapts within a few steps).
    scaler = torch.amp.GradScaler(batching.device.type, enabled=precision.dtype == "float16")
    # What every adapter of this run is (the checkpoints' and the final one's), hashed once, on
    # the rank that writes them.
    summary = {k: v for k, v in data.report.to_json().items() if k not in ("problems", "sample")}
    manifest = (
        identity(
            config,
            precision=precision,
            adapter_dtype=str(trainable[0].dtype).removeprefix("torch."),
            quantization=quantization,
            data_summary=summary,
        )
        if group.main
        else {}
    )
    if group.main:
        # The same data and seed give the same reference: an attempt that resumes keeps it.
        if not (config.output_dir / REFERENCE_FILE).is_file():
            write_reference(data.prompts, config.output_dir)
        take_over(config.output_dir, fence)
    group.barrier()
    work = attempt_dir(config.output_dir, fence)
    checkpoints = work / CHECKPOINTS
    state = LoopState()
    if (latest := latest_checkpoint(checkpoints)) is not None:
        state = load_checkpoint(latest, model, optimizer, scheduler, group.rank)
        events.emit(TrainerEvent.RESUMED, step=state.step, checkpoint=str(latest))
    reference_seconds = 0.0  # DPO's pass over the training pairs (the eval pairs' is apart)
    if isinstance(objective, Dpo) and objective.needs_reference:
        if not state.reference:  # DPO's reference: the model as it starts, before it moves
            reference_started = time.monotonic()
            measured = reference_logps(model, data.train, settings.batch_size, batching)
            reference_seconds = time.monotonic() - reference_started
            measured += reference_logps(model, data.eval, settings.batch_size, batching)
            state.reference = [list(logps) for logps in measured]
        train_rows = len(data.train)
        data.train = referenced(data.train, state.reference[:train_rows])
        data.eval = referenced(data.eval, state.reference[train_rows:])
    events.emit(
        TrainerEvent.STARTED,
        total_steps=total_steps,
        method=settings.method,
        reference_seconds=round(reference_seconds, 2),
        precision=precision.to_json(),
        quantization=quantization,
        packing=batching.packing,
        trainable_parameters=sum(p.numel() for p in trainable),
        devices=group.world,
        train_rows=len(data.train),
        eval_rows=len(data.eval),
    )
    stop = _StopFlag()

    # ---- train
    model.train()
    run_started, run_start_tokens, start_step = time.monotonic(), state.input_tokens, state.step
    patience = settings.early_stopping_patience

    def should_stop_early() -> bool:  # derived from the saved state: survives a resume
        return patience is not None and state.evals_without_improvement >= patience

    while state.step < total_steps and not should_stop_early():
        step_started = time.monotonic()
        first = state.micro_batch
        batches = []  # this rank's micro-batches of the step
        for position in range(settings.gradient_accumulation):
            if staged and schedule.starts_stage(state.micro_batch):
                index = schedule.stage_at(state.micro_batch)
                begun = schedule.stages[index]
                events.emit(TrainerEvent.STAGE, stage=begun.name, index=index,
                            step=state.step + 1, rows=begun.size, epochs=begun.epochs)  # fmt: skip
            if group.mine(position):
                items = [data.train[i] for i in schedule.batch(state.micro_batch)]
                batches.append(objective.make(items, batching))
            state.micro_batch += 1
        units, trained, step_tokens = map(int, group.sum(
            [sum(m.units for m in batches), sum(m.batch.trained_tokens for m in batches),
             sum(m.batch.input_tokens for m in batches)]
        ))  # fmt: skip
        own = dict.fromkeys(("loss", *objective.metrics), 0.0)
        for micro in batches:
            with batching.autocast():
                summed_loss, metrics = objective.loss(model, micro)
                loss = summed_loss / units
            scaler.scale(loss).backward()
            own["loss"] += loss.detach().item()
            for name, value in metrics.items():
                own[name] += float(value) / units
        group.sum_gradients(trainable)
        # One SIGTERM (the agent forwards it to every rank) stops all ranks after the same step.
        *summed, stopping = group.sum([*own.values(), float(stop.requested)])
        step = dict(zip(own, summed, strict=True))
        scaler.unscale_(optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, settings.max_grad_norm))
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        state.step += 1
        state.stage = schedule.stage_at(state.micro_batch - 1)
        # A stage ended within this step: it is measured and checkpointed as its last step.
        stage_ended = schedule.stage_at(state.micro_batch) > schedule.stage_at(first)
        state.trained_tokens += int(trained)
        state.input_tokens += int(step_tokens)
        elapsed = time.monotonic() - run_started
        rate = (state.input_tokens - run_start_tokens) / max(elapsed, 1e-9)
        record: dict[str, Any] = {
            "step": state.step,
            "epoch": round(schedule.epochs_done(state.micro_batch), 4),
            **({"stage": schedule.stages[state.stage].name} if staged else {}),
            **({"stage_end": True} if stage_ended else {}),
            "loss": round(step["loss"], 5),
            "learning_rate": scheduler.get_last_lr()[0],
            **{name: round(step[name], 5) for name in objective.metrics},
        }
        events.emit(
            TrainerEvent.PROGRESS,
            **record,
            total_steps=total_steps,
            grad_norm=round(grad_norm, 4),
            trained_tokens=state.trained_tokens,
            input_tokens=state.input_tokens,
            tokens_per_second=round(rate, 1),
            step_tokens_per_second=round(step_tokens / (time.monotonic() - step_started), 1),
            eta_seconds=round(elapsed / (state.step - start_step) * (total_steps - state.step), 1),
        )
        at_interval = state.step % settings.eval_interval == 0
        if data.eval and (at_interval or state.step == total_steps or stage_ended):
            scores = measure(model, objective, data.eval, settings.batch_size, batching)
            evaluated = {f"eval_{name}": round(value, 5) for name, value in scores.items()}
            record |= evaluated
            events.emit(TrainerEvent.EVAL, step=state.step, **evaluated)
            if state.best_eval_loss is None or record["eval_loss"] < state.best_eval_loss:
                state.best_eval_loss, state.best_step = record["eval_loss"], state.step
                state.evals_without_improvement = 0
                if group.main:
                    _save_adapter(model, work / BEST)
            else:
                state.evals_without_improvement += 1
        state.history.append(record)
        last = state.step == total_steps or should_stop_early()
        if state.step % settings.checkpoint_interval == 0 or last or stopping or stage_ended:
            _check_superseded(config, fence, events, state.step, group)
            rng_states = group.gather(rng_state())
            if group.main:
                path = save_checkpoint(
                    checkpoints, model, optimizer, scheduler, state, manifest=manifest,
                    keep=(settings.keep_checkpoints, settings.keep_best_checkpoints),
                    rng_states=rng_states,
                )  # fmt: skip
                events.emit(TrainerEvent.CHECKPOINT, step=state.step, path=str(path))
        if stopping:
            events.emit(TrainerEvent.INTERRUPTED, step=state.step)
            return ExitCode.INTERRUPTED
    if should_stop_early():
        events.emit(TrainerEvent.EARLY_STOPPED, step=state.step, best_step=state.best_step)

    # ---- save: the chosen adapter, the manifest, the loss curve
    _check_superseded(config, fence, events, state.step, group)
    if not group.main:
        return ExitCode.OK
    use_best = settings.select == "best" and state.best_step is not None
    if not use_best:
        _save_adapter(model, work / "last")
    adapter = install_adapter(work / (BEST if use_best else "last"), config.output_dir)
    metrics = _final_metrics(state, use_best, time.monotonic() - run_started, run_start_tokens)
    manifest_path = write_manifest(manifest | {"metrics": metrics}, config.output_dir)
    curve_csv, curve_png = write_loss_curve(state, config.output_dir)
    events.emit(
        TrainerEvent.DONE,
        status="succeeded",
        adapter=str(adapter),
        manifest=str(manifest_path),
        loss_csv=str(curve_csv),
        loss_png=str(curve_png),
        metrics=metrics,
    )
    return ExitCode.OK


class SupersededError(Exception):
    """A later attempt of the job has started: this run must write nothing more."""


def _check_superseded(
    config: TrainConfig, fence: int, events: EventWriter, step: int, group: Group
) -> None:
    """Raises SupersededError on every rank when a later attempt has started (this trainer's
    owner lost the job), saying so first in this attempt's events file, which nobody reads any
    more."""
    if group.agree(superseded(config.output_dir, fence)):
        events.emit(TrainerEvent.INTERRUPTED, step=step, superseded=True)
        raise SupersededError(f"attempt {fence} of {config.output_dir} was superseded")


def _save_adapter(model: Any, target: Path) -> None:
    staging = fresh_staging(target)
    model.save_pretrained(staging)
    publish_dir(staging, target)


def _final_metrics(
    state: LoopState, used_best: bool, seconds: float, start_tokens: int
) -> dict[str, Any]:
    last = state.history[-1] if state.history else {}
    last_epoch = math.ceil(last["epoch"]) - 1 if last else 0
    last_epoch_losses = [  # of the last stage's last epoch
        r["loss"]
        for r in state.history
        if r.get("stage") == last.get("stage") and r["epoch"] > last_epoch
    ]
    evals = [r["eval_loss"] for r in state.history if "eval_loss" in r]
    return {
        "steps": state.step,
        "train_loss": sum(last_epoch_losses) / max(len(last_epoch_losses), 1),
        "final_eval_loss": evals[-1] if evals else None,
        "best_eval_loss": state.best_eval_loss,
        "best_step": state.best_step,
        "selected": "best" if used_best else "last",
        "trained_tokens": state.trained_tokens,
        "input_tokens": state.input_tokens,
        "tokens_per_second": (state.input_tokens - start_tokens) / max(seconds, 1e-9),
    }
