"""The training job's configuration: typed, validated, every problem reported at once.

`python -m trainer train --config CONFIG.json` reads a `TrainConfig`. Fields are validated with
their ranges; what the server could not hot-load (a rank above its maximum, saved modules, new
tokens) is refused here, before any data or model is touched.
"""

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from trainer.hardware import Dtype, Precision
from trainer.templates import MODEL, ChatTemplate


class TrainConfigError(ValueError):
    """An invalid configuration; the message lists every problem as `field = value: why`."""


MAX_SHOWN_VALUE = 120
"""How much of a refused value an error message repeats: a client's megabyte stays with it."""


def _short(value: Any) -> str:
    text = repr(value)
    return (
        text
        if len(text) <= MAX_SHOWN_VALUE
        else f"{text[:MAX_SHOWN_VALUE]}... ({len(text)} characters)"
    )


def describe_validation_error(
    exc: ValidationError, name_of: Any = None, secret: Collection[str] = ()
) -> list[str]:
    """One `field = value: message` line per pydantic error.

    Args:
        exc: the validation error.
        name_of: maps a location tuple to the name shown to the user (default: dotted path).
        secret: top-level fields whose value is never shown (a URL with a password).
    """
    problems = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if not loc:  # a check across fields: its message names them
            problems.append(message)
            continue
        name = name_of(loc) if name_of else ".".join(str(p) for p in loc)
        hidden = error["type"] == "missing" or str(loc[0]) in secret
        shown = "" if hidden else f" = {_short(error['input'])}"
        if error["type"] == "extra_forbidden":
            shown, message = "", "unknown field"
        problems.append(f"{name}{shown}: {message}")
    return problems


def _refuse_unservable(value: list[str] | None) -> None:
    if value:
        raise ValueError(
            "the serving engine hot-loads plain LoRA adapters only: no saved modules, no new tokens"
        )


# Fields users bring from other trainers, refused with a reason instead of "unknown field".
Unservable = Annotated[list[str] | None, AfterValidator(_refuse_unservable)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


DataFormat = Literal["auto", "messages", "prompt_completion", "alpaca", "sharegpt", "preference"]
Method = Literal["sft", "dpo"]
"""What a job trains with: supervised fine-tuning, or direct preference optimization."""
PreferenceLoss = Literal["sigmoid", "ipo", "orpo"]


class DatasetSpec(_Strict):
    """One training data file."""

    path: Path
    """JSONL, JSON (a list of objects), CSV or Parquet file."""
    weight: float = Field(1.0, gt=0, le=100)
    """Mixing weight relative to the other datasets; the share of training rows it supplies."""
    format: DataFormat = "auto"
    """Row format; "auto" detects it from the fields of each row. "preference" rows
    (prompt, chosen, rejected) are what training.method "dpo" trains on, and only that."""
    columns: dict[str, str] = Field(default_factory=dict)
    """Maps a format's fields to this file's columns, e.g. {"prompt": "question",
    "completion": "answer"} for GSM8K."""


STAGE_NAME = r"^[a-z][a-z0-9_-]{0,31}$"


class StageSpec(_Strict):
    """One stage of a curriculum: its own mixture of files, trained for its own epochs."""

    name: str = Field(pattern=STAGE_NAME)
    """Shown in the events and the data report: 1-32 lowercase letters, digits, '_' or '-'."""
    datasets: list[DatasetSpec] = Field(min_length=1, max_length=16)
    """The stage's files, mixed by weight."""
    epochs: float = Field(1.0, gt=0, le=100)
    """Passes over the stage's rows before the next stage begins."""


@dataclass(frozen=True)
class Source:
    """One training file of a job, with where the config names it."""

    field: str
    """Its place in the data section: "datasets[0]", "stages[1].datasets[0]"."""
    stage: int
    """Its stage's index (0 without stages)."""
    spec: DatasetSpec


class DataSpec(_Strict):
    """Where the data comes from and how it is checked."""

    datasets: list[DatasetSpec] = Field(default_factory=list, max_length=16)
    """Training files, mixed by weight."""
    stages: list[StageSpec] = Field(default_factory=list, max_length=8)
    """Instead of datasets, a curriculum: stages trained one after the other, in order, with
    one optimizer and one learning-rate schedule across all of them."""
    eval_file: Path | None = None
    """A held-out file for eval loss; exclusive with eval_fraction."""
    eval_fraction: float = Field(0.0, ge=0.0, le=0.5)
    """Share of the training rows held out for eval loss when no eval_file is given."""
    max_length: int = Field(1024, ge=32, le=32768)
    """Longest tokenized conversation; longer rows are a validation problem, never cut."""
    policy: Literal["reject", "drop"] = "reject"
    """On invalid rows: "reject" fails listing every problem, "drop" trains on the rest."""
    quality_filter: bool = False
    """Drop rows the quality heuristic flags (too short, sycophantic opener, far too long)."""
    pii: Literal["keep", "redact", "reject"] = "keep"
    """Personal data in the rows (e-mail addresses, phone, card and social security numbers,
    IBANs, IP addresses; `trainer.pii`): "keep" trains on it, "redact" replaces each with a
    placeholder ("[EMAIL]") and counts them, "reject" makes each row holding some a problem
    (naming the field and kinds, never the value) that `policy` then rejects or drops."""

    @model_validator(mode="after")
    def _one_eval_source(self) -> "DataSpec":
        if self.eval_file is not None and self.eval_fraction > 0:
            raise ValueError("give eval_file or eval_fraction, not both")
        return self

    @model_validator(mode="after")
    def _datasets_or_stages(self) -> "DataSpec":
        if bool(self.datasets) == bool(self.stages):
            raise ValueError(
                "data.datasets: give the training files, or data.stages (a curriculum) instead; "
                "one of them, not both"
            )
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"data.stages: names must differ, got {names}")
        return self

    def sources(self) -> list[Source]:
        """Every training file, stage by stage."""
        if not self.stages:
            return [Source(f"datasets[{i}]", 0, d) for i, d in enumerate(self.datasets)]
        return [
            Source(f"stages[{k}].datasets[{i}]", k, d)
            for k, stage in enumerate(self.stages)
            for i, d in enumerate(stage.datasets)
        ]


class LoraSpec(_Strict):
    """The adapter."""

    rank: int = Field(16, ge=1, le=512)
    """LoRA rank r."""
    alpha: int = Field(32, ge=1, le=4096)
    """LoRA alpha; the update is scaled by alpha / r (alpha / sqrt(r) with rslora)."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the LoRA input; 0 by default, since it costs a random mask per adapted
    module and step (measured 12% of a CPU step)."""
    target_modules: Literal["all-linear"] | list[str] = "all-linear"
    """Module names to adapt, or "all-linear" for every linear layer but the output head."""
    use_rslora: bool = False
    """Rank-stabilized LoRA scaling."""
    modules_to_save: Unservable = None
    """Refused: vLLM cannot hot-load adapters that carry whole modules."""


class QuantizationSpec(_Strict):
    """How the frozen base is held during training (QLoRA when 4-bit)."""

    mode: Literal["auto", "none", "nf4", "fp4"] = "auto"
    """"auto": NF4 on a CUDA GPU, none (the base in training.precision) on the CPU."""
    double_quant: bool = True
    """Quantize the quantization constants too (QLoRA's double quantization)."""
    compute_dtype: Precision = "auto"
    """Dtype of the matrix multiplies over de-quantized weights; "auto" follows
    training.precision."""

    def resolved_compute_dtype(self, precision: Dtype) -> Dtype:
        """The compute dtype when training runs in `precision`."""
        return precision if self.compute_dtype == "auto" else self.compute_dtype


class TrainingSpec(_Strict):
    """Optimization hyperparameters."""

    method: Method = "sft"
    """"sft": supervised fine-tuning on conversations. "dpo": direct preference optimization
    (sigmoid loss) on preference rows, against the adapter the job starts from (its warm start,
    or the base model for a fresh adapter) as the frozen reference (`trainer.objectives`)."""
    beta: float = Field(0.1, gt=0, le=10)
    """DPO's beta: how far the policy may move from the reference (TRL's default, 0.1)."""
    preference_loss: PreferenceLoss = "sigmoid"
    """The preference loss (TRL's `loss_type`): "sigmoid" (DPO), "ipo" (IPO: the squared
    distance of the length-normalized log-ratio margin from 1 / (2 beta)), or "orpo" (ORPO:
    the chosen answer's cross-entropy plus beta times the odds-ratio loss, with no reference);
    `trainer.objectives`."""
    precision: Precision = "auto"
    """Dtype of the frozen base and of the compute (adapter weights stay fp32): "auto" is bf16
    where the device computes it natively and fp32 otherwise (trainer.hardware)."""
    learning_rate: float = Field(2e-4, gt=0, le=1.0)
    """Peak learning rate (AdamW)."""
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warmup."""
    warmup_ratio: float = Field(0.03, ge=0.0, le=0.5)
    """Share of the steps spent warming up linearly."""
    epochs: float = Field(1.0, gt=0, le=100)
    """Passes over the training rows (ignored when max_steps is set)."""
    max_steps: int | None = Field(None, ge=1, le=1_000_000)
    """Optimizer steps to run instead of epochs."""
    batch_size: int = Field(4, ge=1, le=1024)
    """Conversations per micro-batch (per packed row budget when packing); under DPO, pairs:
    twice as many conversations."""
    gradient_accumulation: int = Field(1, ge=1, le=1024)
    """Micro-batches per optimizer step."""
    seed: int = Field(0, ge=0)
    """Seed of data order, dropout and initialization."""
    eval_interval: int = Field(50, ge=1)
    """Optimizer steps between eval-loss measurements (when there is eval data)."""
    early_stopping_patience: int | None = Field(None, ge=1, le=1000)
    """Stop after this many evaluations without a better eval loss."""
    select: Literal["best", "last"] = "last"
    """Which checkpoint becomes the adapter: lowest eval loss, or the final one."""
    packing: Literal["auto", "on", "off"] = "auto"
    """"on": padding-free rows (one per micro-batch, block-diagonal attention); "off": right-
    padded micro-batches grouped by length; "auto": padding-free on CUDA, where varlen attention
    makes it cheap, padded on the CPU, where attention over one long row costs more than the
    padding that length grouping leaves. DPO always pads."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient clipping norm."""
    checkpoint_interval: int = Field(50, ge=1)
    """Optimizer steps between checkpoints."""
    keep_checkpoints: int = Field(2, ge=1, le=100)
    """Newest checkpoints kept on disk."""
    keep_best_checkpoints: int = Field(0, ge=0, le=100)
    """Also keep this many checkpoints with the lowest eval loss (needs eval data, and
    checkpoint_interval a multiple of eval_interval, so that every checkpoint has one)."""
    devices: int = Field(1, ge=1, le=64)
    """Local devices to train on, one process each (torch.distributed.run; gloo on the CPU,
    NCCL on GPUs): each takes whole micro-batches of every step, so the global batch, the
    checkpoints and the events are those of one device."""

    @model_validator(mode="after")
    def _preference_loss_of_dpo(self) -> "TrainingSpec":
        if self.method != "dpo" and self.preference_loss != "sigmoid":
            raise ValueError(
                f"training.preference_loss = {self.preference_loss!r} is for training.method "
                f"'dpo' (the method is {self.method!r})"
            )
        return self

    @model_validator(mode="after")
    def _dpo_batches_are_padded(self) -> "TrainingSpec":
        if self.method == "dpo" and self.packing == "on":
            raise ValueError(
                "training.packing = 'on': DPO weighs each answer's log-probability on its own "
                "row, so its batches are padded (leave training.packing at auto or off)"
            )
        return self

    @model_validator(mode="after")
    def _a_micro_batch_per_device(self) -> "TrainingSpec":
        if self.devices > self.gradient_accumulation:
            raise ValueError(
                f"training.devices = {self.devices}: each device takes whole micro-batches of "
                f"a step, so it needs training.gradient_accumulation >= {self.devices} "
                f"(it is {self.gradient_accumulation})"
            )
        return self


class InitAdapter(_Strict):
    """A warm start: the adapter version a job goes on training (its LoRA shape is the job's)."""

    path: Path
    """Its directory: adapter_config.json and adapter_model.safetensors."""
    ref: str = ""
    """Its name and version ("tenant/name@N"), recorded in the new version's manifest."""
    sha256: str = ""
    """sha256 of its adapter_model.safetensors, recorded beside the ref."""


LORA_SHAPE = {"rank": "r", "alpha": "lora_alpha", "use_rslora": "use_rslora",
              "target_modules": "target_modules"}  # fmt: skip
"""The LoRA settings the weights depend on: LoraSpec's name -> peft's adapter_config.json key."""


def warm_lora(
    asked: dict[str, Any] | None,
    parent: dict[str, Any],
    ref: str,
    recorded_modules: object = None,
) -> dict[str, Any]:
    """The `lora` section of a job that warm starts from the adapter whose adapter_config.json
    is `parent`: the parent's shape, with what the job asked for where the weights allow it
    (dropout). `recorded_modules` is the target_modules its own job asked for (its manifest),
    so that "all-linear", which peft saves expanded, matches. Pure.

    Raises:
        TrainConfigError: a setting that is invalid, or that differs from the parent's shape,
            named.
    """
    try:
        given = LoraSpec.model_validate(asked or {})
    except ValidationError as exc:
        problems = describe_validation_error(exc)
        raise TrainConfigError("; ".join(f"lora.{p}" for p in problems)) from None
    shape: dict[str, Any] = {ours: parent.get(theirs) for ours, theirs in LORA_SHAPE.items()}
    if isinstance(shape["target_modules"], list | tuple):
        shape["target_modules"] = sorted(shape["target_modules"])
    problems = []
    for field in (asked or {}).keys() & shape.keys():
        value = getattr(given, field)
        wanted = sorted(value) if isinstance(value, list) else value
        if field == "target_modules" and value == recorded_modules:
            continue
        if wanted != shape[field]:
            problems.append(
                f"lora.{field} = {value!r}: {ref} was trained with {shape[field]!r}, and a "
                "warm start keeps its parent's LoRA shape (leave it out)"
            )
    if problems:
        raise TrainConfigError("; ".join(sorted(problems)))
    return {**(asked or {}), **shape}


class TrainConfig(_Strict):
    """A whole training job, as `python -m trainer train --config` reads it."""

    base_model: Path
    """Hugging Face checkpoint directory of the base model."""
    base_model_name: str = ""
    """The name the base model is served under (recorded in the manifest)."""
    chat_template: ChatTemplate = MODEL
    """The template chats render with, the server's `--chat-template`: "model" (the base
    model's own) or "chatml_tools" (`trainer.templates`); part of the base fingerprint."""
    output_dir: Path
    """Where checkpoints, the adapter and the manifest are written."""
    data: DataSpec
    """Data sources and checks."""
    lora: LoraSpec = LoraSpec()
    """The adapter's shape."""
    init_adapter: InitAdapter | None = None
    """Start from this adapter's weights instead of a fresh LoRA (`lora` is its shape)."""
    quantization: QuantizationSpec = QuantizationSpec()
    """QLoRA settings."""
    training: TrainingSpec = TrainingSpec()
    """Hyperparameters."""
    added_tokens: Unservable = None
    """Refused: new tokens change the embedding, which a served adapter cannot."""
    validate_only: bool = False
    """Check the data and the settings, report, and stop: nothing trains."""
    serving_max_lora_rank: int = Field(16, ge=1, le=512)
    """The serving engine's max_lora_rank: a larger rank could never be hot-loaded."""

    @model_validator(mode="after")
    def _eval_data_for_eval_settings(self) -> "TrainConfig":
        has_eval = self.data.eval_file is not None or self.data.eval_fraction > 0
        if not has_eval and self.training.select == "best":
            raise ValueError(
                "training.select = 'best' needs eval data (data.eval_file or data.eval_fraction)"
            )
        if not has_eval and self.training.early_stopping_patience is not None:
            raise ValueError(
                "training.early_stopping_patience needs eval data "
                "(data.eval_file or data.eval_fraction)"
            )
        training = self.training
        if training.keep_best_checkpoints:
            if not has_eval:
                raise ValueError(
                    "training.keep_best_checkpoints needs eval data "
                    "(data.eval_file or data.eval_fraction)"
                )
            if training.checkpoint_interval % training.eval_interval:
                raise ValueError(
                    f"training.keep_best_checkpoints ranks checkpoints by their eval loss: "
                    f"training.checkpoint_interval ({training.checkpoint_interval}) must be a "
                    f"multiple of training.eval_interval ({training.eval_interval})"
                )
        return self

    @model_validator(mode="after")
    def _epochs_of_the_stages(self) -> "TrainConfig":
        # By value, not by the fields set: the server writes the whole config for the trainer.
        if self.data.stages and self.training.epochs != TrainingSpec.model_fields["epochs"].default:
            raise ValueError(
                "training.epochs: with data.stages each stage has its own epochs "
                "(data.stages[N].epochs)"
            )
        return self

    @model_validator(mode="after")
    def _formats_of_the_method(self) -> "TrainConfig":
        preference = self.training.method == "dpo"
        for source in self.data.sources():
            dataset = source.spec
            if dataset.format != "auto" and (dataset.format == "preference") != preference:
                raise ValueError(
                    f"data.{source.field}.format = {dataset.format!r}: training.method "
                    f"{self.training.method!r} trains on "
                    + ("preference rows only" if preference else "conversations, not preferences")
                )
        return self

    @model_validator(mode="after")
    def _rank_within_serving_limit(self) -> "TrainConfig":
        if self.lora.rank > self.serving_max_lora_rank:
            raise ValueError(
                f"lora.rank = {self.lora.rank}: above the server's max_lora_rank "
                f"{self.serving_max_lora_rank}; the adapter could not be served"
            )
        return self


def load_config(data: dict[str, Any]) -> TrainConfig:
    """Validates a configuration mapping.

    Raises:
        TrainConfigError: listing every problem, one `field = value: why` per item.
    """
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise TrainConfigError("; ".join(describe_validation_error(exc))) from None
