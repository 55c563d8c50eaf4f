"""adapterctl's job commands: upload, validate-data, submit, get, list, cancel, watch, eval.

A job file is the TrainSpec message as YAML or JSON (field names as in jobs.proto), e.g.

    data: {datasets: [{path: gsm8k/train.jsonl, columns: {prompt: question}}]}
    training: {epochs: 1, learning_rate: 0.0002}
    adapter_name: gsm8k-bot

An evaluation file is the EvaluationSpec message (evaluation.proto), e.g.

    benchmarks: {tasks: [adapterd_arith_mc], limit: 50}
    win_rate: {limit: 20}
    gates: [{metric: GATE_METRIC_WIN_RATE, comparator: COMPARATOR_GE, threshold: 0.5}]
    promote_alias: prod
"""

import argparse
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, get_args

import grpc
import yaml
from google.protobuf import json_format
from google.protobuf.message import Message
from tqdm import tqdm

from adapterd.v1 import evaluation_pb2, jobs_pb2
from service.client.api import Client
from service.errors import ConfigError
from service.jobs.model import FeedKind
from trainer.config import Method
from trainer.contract import TrainerEvent

Command = Callable[[Client, argparse.Namespace, bool], int]
M = TypeVar("M", bound=Message)


def show(message: Message, as_json: bool) -> None:
    """Prints a reply: pretty JSON with every field for --output json, else one compact line."""
    if as_json:
        print(json_format.MessageToJson(message, always_print_fields_with_no_presence=True))
    else:
        print(json_format.MessageToJson(message, indent=None, preserving_proto_field_name=True))


UPLOAD_KINDS: dict[str, jobs_pb2.UploadKind] = {
    "dataset": jobs_pb2.UPLOAD_KIND_DATASET,
    "task-archive": jobs_pb2.UPLOAD_KIND_TASK_ARCHIVE,
    "prompts": jobs_pb2.UPLOAD_KIND_PROMPT_SET,
    "schema": jobs_pb2.UPLOAD_KIND_JSON_SCHEMA,
    "safety-families": jobs_pb2.UPLOAD_KIND_SAFETY_FAMILIES,
    "ratings": jobs_pb2.UPLOAD_KIND_HUMAN_RATINGS,
    "adapter": jobs_pb2.UPLOAD_KIND_ADAPTER_ARCHIVE,
}


def _upload(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    reply = client.upload_file(Path(args.file), UPLOAD_KINDS[args.kind])
    if as_json:
        show(reply, as_json)
    else:
        print(reply.upload_id)
    return 0


def _data_settings(args: argparse.Namespace) -> jobs_pb2.DataSettings:
    refs = [jobs_pb2.DatasetRef(dataset_id=d) for d in args.dataset or []]
    refs += [jobs_pb2.DatasetRef(path=p) for p in args.path or []]
    if not refs:
        raise ConfigError("give at least one --dataset ID or --path PATH")
    return jobs_pb2.DataSettings(datasets=refs, max_length=args.max_length, pii=args.pii)


def _validate_data(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    response = client.validate_dataset(_data_settings(args), args.method)
    report = json_format.MessageToDict(response.report)
    if as_json:
        print(json.dumps({"valid": response.valid, "report": report}, indent=2))
    else:
        print(f"train rows {report.get('train_rows')}, eval rows {report.get('eval_rows')}")
        for problem in report.get("problems", []):
            print(f"  {problem['source']}:{problem['row']} {problem['field']}: "
                  f"{problem['message']} [{problem['code']}]")  # fmt: skip
        print("OK" if response.valid else "REJECTED")
    return 0 if response.valid else 1


def read_message(path: str, message: M) -> M:
    """A protobuf message from a YAML or JSON file (proto field and enum names).

    Raises:
        ConfigError: naming the file and the problem.
    """
    try:
        fields = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        return json_format.ParseDict(fields, message)
    except (OSError, yaml.YAMLError, json_format.ParseError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _submit(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    train = read_message(args.job_file, jobs_pb2.TrainSpec())
    job = client.submit_job(train, args.request_id, args.priority)
    return _queued(client, job, args.watch, as_json)


def _evaluate(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    if args.action == "report":
        return _report(client, args.job_id, Path(args.out), as_json)
    if args.action == "sheet":
        return _sheet(client, args.job_id, Path(args.out))
    if args.action == "rate":
        return _rate(client, args.job_id, Path(args.ratings), as_json)
    evaluation = read_message(args.spec_file, evaluation_pb2.EvaluationSpec())
    spec = jobs_pb2.EvaluateSpec(adapter=args.adapter, evaluation=evaluation)
    job = client.evaluate(spec, args.request_id, args.priority)
    status = _queued(client, job, args.watch, as_json)
    if args.watch and not as_json:
        with contextlib.suppress(grpc.RpcError):  # a failed evaluation has no report
            _report(client, job.id, Path(args.out), as_json)
    return status


def _sheet(client: Client, job_id: str, out: Path) -> int:
    """Writes the job's human evaluation sheet (JSONL and HTML) into `out`."""
    sheet = client.human_sheet(job_id)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{job_id}.sheet.jsonl").write_text(sheet.jsonl)
    (out / f"{job_id}.sheet.html").write_text(sheet.html)
    print(f"{sheet.items} items: {out / (job_id + '.sheet.html')} (save ratings.jsonl from it)")
    return 0


def _rate(client: Client, job_id: str, ratings: Path, as_json: bool) -> int:
    """Uploads a ratings file and imports it into the job's human evaluation."""
    upload = client.upload_file(ratings, jobs_pb2.UPLOAD_KIND_HUMAN_RATINGS)
    summary = json_format.MessageToDict(client.import_ratings(job_id, upload.upload_id).evaluation)
    if as_json:
        print(json.dumps(summary, indent=2))
        return 0
    scores = summary["scores"]
    print(f"human_score {scores['human_score']:.3f} (lower {scores['human_score_lower']:.3f})")
    for reason in summary["failed_gates"]:
        print(f"  gate FAIL: {reason}")
    print("promoted" if summary["promoted"] else "not promoted")
    return 0


def _report(client: Client, job_id: str, out: Path, as_json: bool) -> int:
    """Writes the job's report as JSON and HTML into `out`; prints the scores and gates."""
    reply = client.evaluation_report(job_id)
    report = json_format.MessageToDict(reply.report)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{job_id}.json").write_text(json.dumps(report, indent=2))
    (out / f"{job_id}.html").write_text(reply.html)
    if as_json:
        print(json.dumps(report, indent=2))
        return 0
    scores = report["scores"]
    print(f"{report['candidate']} against {report['baseline']}:")
    for key, value in sorted(scores["candidate"].items()):
        base = scores.get("baseline", {}).get(key)
        against = f"   baseline {base:8.4f}" if base is not None else ""
        print(f"  {key:<48} {value:8.4f}{against}")
    for gate in report["gates"]:
        print(f"  gate {'PASS' if gate['passed'] else 'FAIL'}: {gate['reason']}")
    print(f"report: {out / (job_id + '.html')}")
    return 0


def _queued(client: Client, job: jobs_pb2.Job, watch: bool, as_json: bool) -> int:
    """Follows a job just queued, or prints it."""
    if watch:
        return follow_job(client, job.id, as_json)
    if as_json:
        show(job, as_json)
    else:
        print(job.id)
    return 0


def _get(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    show(client.get_job(args.job_id), as_json)
    return 0


def _list(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    states = [f"JOB_STATE_{s.upper()}" for s in args.state or []]
    response = client.list_jobs(jobs_pb2.ListJobsRequest(states=states, page_size=args.limit))
    if as_json:
        show(response, True)
        return 0
    for job in response.jobs:
        state = jobs_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()
        print(f"{job.id}  {state:<11} {job.error_reason}")
    return 0


def _cancel(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    show(client.cancel_job(args.job_id), as_json)
    return 0


def _watch(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    return follow_job(client, args.job_id, as_json, args.after)


def _checkpoints(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    if args.action == "register":
        show(client.register_checkpoint(args.job_id, args.step, args.name), as_json)
        return 0
    checkpoints = client.list_checkpoints(args.job_id)
    if as_json:
        show(jobs_pb2.ListCheckpointsResponse(checkpoints=checkpoints), True)
        return 0
    print(f"{'step':>7}{'epoch':>9}{'train loss':>12}{'eval loss':>11}")
    for c in checkpoints:
        measured = f"{c.eval_loss:>11.4f}" if c.HasField("eval_loss") else f"{'-':>11}"
        print(f"{c.step:>7}{c.epoch:>9.3f}{c.train_loss:>12.4f}{measured}")
    return 0


def follow_job(client: Client, job_id: str, as_json: bool, after: int = 0) -> int:
    """Prints the job's events (JSON lines) or progress bars, then a summary; the exit code
    is 0 when the job succeeded."""
    view = _LiveView(job_id)
    try:
        for event in client.watch_job(job_id, after):
            data = json_format.MessageToDict(event.data)
            if as_json:
                print(json.dumps({"seq": event.seq, "kind": event.kind, **data}), flush=True)
            else:
                view.show(event.seq, event.kind, data)
    finally:
        view.close()
    job = client.get_job(job_id)
    if not as_json:
        _summary(job)
    return 0 if job.state == jobs_pb2.JOB_STATE_SUCCEEDED else 1


class _LiveView:
    """A job on the terminal: a bar for training steps, one per evaluation phase, and a line
    for each state change, curriculum stage, score and checkpoint."""

    def __init__(self, job_id: str) -> None:
        self._job_id = job_id
        self._training: tqdm[Any] | None = None
        self._phase: tqdm[Any] | None = None
        self._phase_name = ""  # not the bar's desc: a disabled bar (TQDM_DISABLE) has none

    def show(self, seq: int, kind: str, data: dict[str, Any]) -> None:
        if kind == TrainerEvent.STARTED:
            self._training = tqdm(total=int(data.get("total_steps", 0)), unit="step",
                                  desc=self._job_id)  # fmt: skip
        elif kind == TrainerEvent.PROGRESS and self._training is not None:
            self._training.update(int(data["step"]) - self._training.n)
            self._training.set_postfix(
                loss=data.get("loss"), tok_s=data.get("tokens_per_second"),
                eta_s=data.get("eta_seconds"),
            )  # fmt: skip
        elif kind == FeedKind.EVALUATION:
            self._eval(seq, data)
        elif kind == FeedKind.STATE:
            tqdm.write(f"[{seq}] {data['state']} {data.get('reason', '')}".rstrip())
        elif kind == TrainerEvent.STAGE:
            tqdm.write(f"[{seq}] stage {data['stage']} from step {int(data['step'])}: "
                       f"{int(data['rows'])} rows, {data['epochs']:g} epochs")  # fmt: skip
        elif kind in (TrainerEvent.CHECKPOINT, TrainerEvent.RESUMED, TrainerEvent.FAILED):
            tqdm.write(f"[{seq}] {kind}: {json.dumps(data)}")

    def _eval(self, seq: int, data: dict[str, Any]) -> None:
        if "total" in data:  # progress of one phase
            phase = f"{data['phase']} ({data['target']})"
            if self._phase is None or self._phase_name != phase:
                self.close_phase()
                self._phase = tqdm(total=int(data["total"]), unit="req", desc=phase)
                self._phase_name = phase
            self._phase.update(int(data["done"]) - self._phase.n)
        elif "scores" in data and data["phase"] != "done":
            self.close_phase()
            scores = ", ".join(f"{k} {v:.3f}" for k, v in data["scores"].items())
            cached = " (cached)" if data.get("cached") else ""
            tqdm.write(f"[{seq}] {data['phase']} of the {data['target']}{cached}: {scores}")

    def close_phase(self) -> None:
        if self._phase is not None:
            self._phase.close()
            self._phase = None

    def close(self) -> None:
        self.close_phase()
        if self._training is not None:
            self._training.close()


def _summary(job: jobs_pb2.Job) -> None:
    state = jobs_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()
    result = json_format.MessageToDict(job.result)
    metrics = result.get("metrics", {})
    print(f"{job.id}: {state}" + (f" ({job.error_reason})" if job.error_reason else ""))
    if job.error_message:
        print(job.error_message)
    for key in ("train_loss", "final_eval_loss", "steps", "tokens_per_second"):
        if metrics.get(key) is not None:
            print(f"  {key}: {metrics[key]:.4g}")
    for key in ("adapter_version", "registration_error", "loss_png"):
        if key in result:
            print(f"  {key}: {result[key]}")
    if evaluation := result.get("evaluation"):
        promoted = f", promoted to {evaluation['promote_alias']}" if evaluation["promoted"] else ""
        print(f"  evaluation: {'passed' if evaluation['passed'] else 'blocked'}{promoted}")
        for reason in evaluation["failed_gates"]:
            print(f"    failed gate: {reason}")


def add_job_commands(commands: Any) -> dict[str, Command]:
    """Adds the job subcommands to adapterctl's parser; returns their handlers by name."""
    upload = commands.add_parser("upload", help="Upload a file; prints its id.")
    upload.add_argument(
        "file",
        help="dataset: JSONL, JSON, CSV or Parquet; task-archive: .tar(.gz), .tgz or .zip of "
        "lm-eval task YAMLs and their data; prompts: JSONL; schema: a JSON Schema (.json).",
    )
    upload.add_argument("--kind", choices=sorted(UPLOAD_KINDS), default="dataset")
    validate = commands.add_parser("validate-data", help="The server's report on datasets.")
    validate.add_argument("--dataset", action="append", help="Uploaded dataset id (repeatable).")
    validate.add_argument("--path", action="append", help="File under the server's data root.")
    validate.add_argument("--max-length", type=int, default=1024, help="Token limit per row.")
    validate.add_argument(
        "--method", choices=get_args(Method), default="sft",
        help="What the data is for: sft (conversations, the default) or dpo (preference rows).",
    )  # fmt: skip
    validate.add_argument(
        "--pii", choices=("keep", "redact", "reject"), default="keep",
        help="Personal data in the rows: keep (default), redact (counted) or reject.",
    )  # fmt: skip
    submit = commands.add_parser("submit", help="Submit a job from a YAML/JSON job file.")
    submit.add_argument("job_file", help="A TrainSpec as YAML or JSON.")
    submit.add_argument("--request-id", default="", help="Idempotency key.")
    submit.add_argument("--priority", type=int, default=0, help="-100 to 100.")
    submit.add_argument("--watch", action="store_true", help="Follow it to its end.")
    for name, text in (("get", "Show a job."), ("cancel", "Cancel a job.")):
        commands.add_parser(name, help=text).add_argument("job_id")
    listing = commands.add_parser("list", help="List jobs.")
    listing.add_argument("--state", action="append", help="Only this state (repeatable).")
    listing.add_argument("--limit", type=int, default=50, help="Jobs per page.")
    watch = commands.add_parser("watch", help="Follow a job with a progress bar.")
    watch.add_argument("job_id")
    watch.add_argument("--after", type=int, default=0, help="Skip events up to this seq.")
    checkpoints = commands.add_parser("checkpoints", help="A job's checkpoints: list, register.")
    kept = checkpoints.add_subparsers(dest="action", required=True)
    kept.add_parser("list", help="Steps and losses of the checkpoints a job keeps.").add_argument(
        "job_id"
    )
    register = kept.add_parser("register", help="Register a checkpoint as an adapter version.")
    register.add_argument("job_id")
    register.add_argument("step", type=int, help="The checkpoint's step.")
    register.add_argument("--name", default="", help="Adapter name (default: the job's).")
    evaluate = commands.add_parser("eval", help="Evaluate an adapter, or fetch a report.")
    actions = evaluate.add_subparsers(dest="action", required=True)
    run = actions.add_parser("run", help="Queue an evaluation from an EvaluationSpec file.")
    run.add_argument("spec_file", help="An EvaluationSpec as YAML or JSON.")
    run.add_argument("--adapter", default="", help="Name, alias or NAME@N (default: base).")
    run.add_argument("--request-id", default="", help="Idempotency key.")
    run.add_argument("--priority", type=int, default=0, help="-100 to 100.")
    run.add_argument("--watch", action="store_true", help="Follow it, then write its report.")
    run.add_argument("--out", default=".", help="Directory for the report (with --watch).")
    report = actions.add_parser("report", help="Write a job's report (JSON and HTML).")
    report.add_argument("job_id")
    report.add_argument("--out", default=".", help="Directory to write JOB_ID.json/.html.")
    sheet = actions.add_parser("sheet", help="Write a job's human evaluation sheet.")
    sheet.add_argument("job_id")
    sheet.add_argument("--out", default=".", help="Directory for JOB_ID.sheet.jsonl/.html.")
    rate = actions.add_parser("rate", help="Upload and import ratings of a job's sheet.")
    rate.add_argument("job_id")
    rate.add_argument("ratings", help="ratings.jsonl, as the sheet's page saves it.")
    return {
        "eval": _evaluate,
        "checkpoints": _checkpoints,
        "upload": _upload,
        "validate-data": _validate_data,
        "submit": _submit,
        "get": _get,
        "list": _list,
        "cancel": _cancel,
        "watch": _watch,
    }
