"""`python -m trainer`: the trainer's command line.

    python -m trainer validate DATA... --tokenizer MODEL_DIR [--method sft|dpo] [options]
    python -m trainer validate --config CONFIG.json
    python -m trainer train --config CONFIG.json [--events EVENTS.jsonl]

validate exits 0 when the data is valid, 1 when it was rejected, 2 on invalid arguments.
train's exit codes are listed in trainer.recipe.
"""

import argparse
import ctypes
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, get_args

from trainer.config import (
    DataSpec,
    Method,
    TrainConfigError,
    describe_validation_error,
    load_config,
)
from trainer.contract import (
    DEVICES_VARIABLE,
    FENCE_VARIABLE,
    PARENT_PID_VARIABLE,
    RANK_VARIABLE,
    ExitCode,
    FailureReason,
    TrainerEvent,
)
from trainer.data import MAX_PROBLEMS_SHOWN, DataRejectedError, DataReport, preparer
from trainer.events import EventWriter
from trainer.hardware import available_cpus
from trainer.masking import TemplateError
from trainer.templates import MODEL, ChatTemplate, load_tokenizer


def _data_spec(args: argparse.Namespace) -> tuple[DataSpec, Path, ChatTemplate, int, Method]:
    if args.config:
        config = load_config(_load_config_file(args.config))
        training = config.training
        return config.data, config.base_model, config.chat_template, training.seed, training.method
    if not args.data or not args.tokenizer:
        raise TrainConfigError("give DATA files and --tokenizer, or --config")
    from pydantic import ValidationError

    try:
        columns = json.loads(args.columns)
    except json.JSONDecodeError as exc:
        raise TrainConfigError(f"--columns: not a JSON object ({exc})") from None
    try:
        spec = DataSpec(
            datasets=[{"path": p, "format": args.format, "columns": columns} for p in args.data],
            eval_file=args.eval_file,
            max_length=args.max_length,
            policy=args.policy,
            quality_filter=args.quality_filter,
            pii=args.pii,
        )
    except ValidationError as exc:
        raise TrainConfigError("; ".join(describe_validation_error(exc))) from None
    return spec, Path(args.tokenizer), args.chat_template, 0, args.method


def _print_report(report: DataReport) -> None:
    for source in [*report.sources, *([report.eval_source] if report.eval_source else [])]:
        formats = ", ".join(f"{k} {v}" for k, v in source.formats.items()) or "none"
        print(
            f"{source.path}: {source.rows} rows, {source.valid} valid ({formats}), "
            f"{source.held_out} held out, {source.used} used"
        )
    print(f"train rows {report.train_rows}, eval rows {report.eval_rows}")
    for label, counts in (
        ("quality filter removed", report.quality_filtered),
        ("personal data redacted", report.pii_redacted),
    ):
        if counts:
            print(f"{label}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if report.token_lengths:
        print(
            "tokens per conversation: "
            + ", ".join(f"{k} {v}" for k, v in report.token_lengths.items())
        )
        print(
            f"assistant (trained) tokens: {report.trained_tokens} of {report.total_tokens} "
            f"({report.assistant_token_fraction:.1%})"
        )
    for problem in report.problems[:MAX_PROBLEMS_SHOWN]:
        print(f"  {problem}")
    if len(report.problems) > MAX_PROBLEMS_SHOWN:
        print(f"  ... and {len(report.problems) - MAX_PROBLEMS_SHOWN} more")
    if report.sample:
        print("sample (trained text in [[...]]):\n" + report.sample)


def _validate(args: argparse.Namespace) -> int:
    spec, tokenizer_dir, template, seed, method = _data_spec(args)
    try:  # after the cheap checks: loading a tokenizer takes seconds
        tokenizer = load_tokenizer(tokenizer_dir, template)
    except OSError as exc:
        raise TrainConfigError(f"--tokenizer {tokenizer_dir}: {exc}") from None
    try:
        report = preparer(method)(spec, tokenizer, seed).report
    except DataRejectedError as exc:
        report = exc.report
    except TemplateError as exc:
        raise TrainConfigError(f"chat template of {tokenizer_dir}: {exc}") from None
    if args.output == "json":
        print(json.dumps(report.to_json(), indent=2))
    else:
        _print_report(report)
        print("OK" if report.ok else f"REJECTED: {len(report.problems)} problem(s)")
    return 0 if report.ok else 1


def _load_config_file(path: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise TrainConfigError(f"--config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise TrainConfigError(f"{path}: a config must be a JSON/YAML object")
    return data


_PR_SET_PDEATHSIG = 1


def _follow_parent(rank: bool) -> None:
    """When the server that started us dies (even by SIGKILL), get SIGTERM: the loop then
    writes a checkpoint and exits, and the restarted server resumes the job (Linux only). A
    rank of a run on several devices follows its agent (the trainer the server started, which
    forwards the signal to every rank) instead."""
    parent = os.environ.get(PARENT_PID_VARIABLE)
    if parent is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent) and not rank:  # it died before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)


def _launch(args: argparse.Namespace, devices: int) -> int:
    """Runs this training on `devices` local devices under torch.distributed.run, this process
    its agent: the ranks share its thread budget, and its exit code is theirs (75 when they
    stopped on a SIGTERM, which the agent forwards to each)."""
    import torch
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as distributed_run

    if torch.cuda.is_available() and torch.cuda.device_count() < devices:
        visible = os.environ.get(DEVICES_VARIABLE, "all")
        raise TrainConfigError(
            f"training.devices {devices}: only {torch.cuda.device_count()} CUDA device(s) "
            f"visible ({DEVICES_VARIABLE}={visible}); a worker slot has its share of them"
        )
    threads = int(os.environ.get("OMP_NUM_THREADS", "0")) or available_cpus()
    os.environ["OMP_NUM_THREADS"] = str(max(1, threads // devices))
    command = ["trainer", "train", "--config", args.config]
    command += ["--events", args.events] if args.events else []
    try:
        distributed_run(["--standalone", f"--nproc-per-node={devices}", "-m", *command])
    except ChildFailedError as exc:  # the first failed rank's code; a signal is a crash
        code = exc.failures[min(exc.failures)].exitcode
        return code if code > 0 else ExitCode.CRASHED
    except SignalException:  # the agent was stopped: each rank checkpointed and stopped
        return ExitCode.INTERRUPTED
    return ExitCode.OK


def _train(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    rank = RANK_VARIABLE in os.environ
    _follow_parent(rank)
    config = load_config(_load_config_file(args.config))
    if config.training.devices > 1 and not rank:
        return _launch(args, config.training.devices)
    import torch  # torch and transformers load only for training

    from trainer.distributed import Group
    from trainer.recipe import OOM_HINT, SupersededError, run

    group = Group.join()
    fence = int(os.environ.get(FENCE_VARIABLE, "0"))
    path = Path(args.events) if args.events else None
    with EventWriter(path if group.main else None) as events:
        try:
            return run(config, events, fence, group)
        except SupersededError:  # a later attempt owns the job: stopped, as on SIGTERM
            return ExitCode.INTERRUPTED
        except torch.OutOfMemoryError as exc:
            failed(events, path, group.rank, FailureReason.OUT_OF_MEMORY, f"{exc}; {OOM_HINT}")
            return ExitCode.OUT_OF_MEMORY
        except Exception as exc:
            failed(events, path, group.rank, FailureReason.CRASHED, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            group.leave()


def failed(
    events: EventWriter, path: Path | None, rank: int, reason: FailureReason, message: str
) -> None:
    """The run's `failed` event: rank 0's through its writer; another rank (which writes no
    other event) appends its own to the same file, with its rank, so that the service learns
    why whichever rank failed."""
    if rank == 0:
        events.emit(TrainerEvent.FAILED, reason=reason, message=message)
        return
    with EventWriter(path) as own:
        own.emit(TrainerEvent.FAILED, reason=reason, message=message, rank=rank)


def build_parser() -> argparse.ArgumentParser:
    """The trainer's argument parser."""
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser("validate", help="Validate data; report, do not train.")
    validate.add_argument("data", nargs="*", help="JSONL, JSON, CSV or Parquet files.")
    validate.add_argument("--config", help="A training config; validates its data section.")
    validate.add_argument("--tokenizer", help="Model directory whose tokenizer and template apply.")
    validate.add_argument(
        "--chat-template",
        choices=get_args(ChatTemplate),
        default=MODEL,
        help="The chat template to render with: the model's own (default) or a shipped one.",
    )
    validate.add_argument("--format", default="auto", help="Row format (default: detect).")
    validate.add_argument(
        "--method", choices=get_args(Method), default="sft",
        help="What the data is for: sft (conversations, the default) or dpo (preference rows).",
    )  # fmt: skip
    validate.add_argument(
        "--columns",
        default="{}",
        help='JSON field mapping, e.g. \'{"prompt": "question", "completion": "answer"}\'.',
    )
    validate.add_argument("--eval-file", help="Held-out file, checked for overlap too.")
    validate.add_argument("--max-length", type=int, default=1024, help="Token limit per row.")
    validate.add_argument("--policy", default="reject", help="reject (default) or drop.")
    validate.add_argument("--quality-filter", action="store_true", help="Apply the filter.")
    validate.add_argument(
        "--pii", default="keep", help="Personal data: keep (default), redact or reject."
    )
    validate.add_argument("--output", choices=("text", "json"), default="text")
    validate.set_defaults(run=_validate)
    train = commands.add_parser("train", help="Train an adapter.")
    train.add_argument("--config", required=True, help="Training config (JSON or YAML).")
    train.add_argument("--events", help="Append progress events here as JSON lines.")
    train.set_defaults(run=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except TrainConfigError as exc:
        print(f"trainer: error: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    return code


if __name__ == "__main__":
    sys.exit(main())
