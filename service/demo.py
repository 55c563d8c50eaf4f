"""`adapterd demo`: what a new user runs first.

Starts `adapterd serve` as a child process (as a user or Kubernetes would), waits until the engine
is warm, shows what the server reports about itself; uploads a slice of GSM8K, trains an adapter
on it through a job (live progress) that registers it with the engine and evaluates it against
the base model (two bundled benchmarks, schema adherence, win rate with the reference judge),
with gates an honestly trained adapter passes, so it is promoted to an alias; evaluates it again
with a deliberately strict gate to show a block; answers held-out questions with the base model
and the alias side by side; runs one round of the production loop (captures traffic through the
alias, rates each answer against the GSM8K reference and corrects the wrong ones, exports that as
a dataset and trains a second adapter on it); shows the metrics; then stops the server with
SIGTERM as a rollout would.
"""

import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client.parser import text_string_to_metric_families

from adapterd.v1 import capture_pb2, evaluation_pb2, inference_pb2, jobs_pb2, server_pb2
from service.capture.drift import MIN_PROMPTS
from service.client.api import Client
from service.client.job_commands import follow_job
from service.settings import ServerSettings

START_TIMEOUT_SECONDS = 600.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
GSM8K = Path(__file__).resolve().parents[1] / "data/gsm8k/train_slice.jsonl"
ADAPTER, ALIAS = "gsm8k", "gsm8k-prod"
TASKS = ["adapterd_gsm8k", "adapterd_arith_mc"]
LOOP_ADAPTER = "gsm8k-loop"
DRIFT_SECONDS = 5.0
"""The demo server's --drift-interval-seconds (unless given): the round shows drift at once."""
DRIFT_WAIT_SECONDS = 60.0
FINAL_NUMBER = re.compile(r"####\s*(-?[\d,.]+)")
"""A GSM8K answer's final line, `#### 72`."""
STRICT_GATE = {"metric": "GATE_METRIC_TASK", "task": "adapterd_gsm8k",
               "task_metric": "exact_match,strict-match", "comparator": "COMPARATOR_GE",
               "threshold": 0.9}  # fmt: skip


@dataclass(frozen=True)
class DemoPlan:
    """How much the demo trains and measures."""

    train_rows: int
    questions: int  # per benchmark and for the win rate
    schema_questions: int
    answer_tokens: int  # of each side-by-side answer
    expect_promotion: bool  # whether the honest gates must pass for the demo to succeed
    loop_steps: int  # of the second job, trained on the exported traffic


# The demo of `make demo`: an adapter trained on 256 rows passes the honest gates.
FULL = DemoPlan(train_rows=256, questions=20, schema_questions=10, answer_tokens=160,
                expect_promotion=True, loop_steps=3)  # fmt: skip
# `--quick`: the whole flow in a few minutes (and in CI on a tiny model); 16 rows teach
# too little to expect the gates to pass, so a block there is shown, not an error.
QUICK = DemoPlan(train_rows=16, questions=4, schema_questions=2, answer_tokens=24,
                 expect_promotion=False, loop_steps=1)  # fmt: skip

# Sizing the plan to the machine, so `make demo` ends within 15 minutes on a slow CPU too.
TOKENS_PER_ROW = 223
"""Mean tokens of the demo's GSM8K rows in SmolLM2's chat template (the first 256: 57,160)."""
TRAINER_EFFICIENCY = 0.4
"""The share of the matmul limit (probe FLOP/s over 4 x parameters per token) the trainer
reaches on the demo's rows beside the idle engine: 0.47 measured on the Intel machine (136
tokens/s from a one-thread fp32 probe of 154 GFLOP/s), rounded down."""
TRAINING_BUDGET_SECONDS = 540.0
"""Training's share of the demo's 15 minutes: the engine start, the evaluations and the
answers took 295 s on the Intel machine; a minute is left spare."""
MIN_TRAIN_ROWS = 64


@dataclass(frozen=True)
class MachineSpeed:
    """What the server measured about its trainer (GetServerInfo's machine)."""

    dtype: str
    """The precision `auto` picks for training jobs."""
    matmul_gflops: float
    """The probe's matmul rate in that precision on the trainer's threads (0: not measured)."""
    parameters: int
    """The base model's parameter count."""


def size_plan(plan: DemoPlan, speed: MachineSpeed) -> tuple[DemoPlan, str]:
    """`plan`, or fewer training rows where the measured speed says the plan's would not fit
    TRAINING_BUDGET_SECONDS; with a sentence saying which and why."""
    if speed.matmul_gflops <= 0:
        return plan, "the server measured no matmul rate (not a CPU): the plan is kept"
    rate = TRAINER_EFFICIENCY * speed.matmul_gflops * 1e9 / (4 * speed.parameters)
    seconds = plan.train_rows * TOKENS_PER_ROW / rate
    measured = f"{speed.matmul_gflops:.0f} GFLOP/s {speed.dtype} matmul"
    if seconds <= TRAINING_BUDGET_SECONDS:
        return plan, (
            f"training {plan.train_rows} rows: about {seconds:.0f} s at an estimated "
            f"{rate:.0f} tokens/s ({measured})"
        )
    rows = max(MIN_TRAIN_ROWS, int(TRAINING_BUDGET_SECONDS * rate / TOKENS_PER_ROW) // 4 * 4)
    shrunk = replace(plan, train_rows=min(rows, plan.train_rows), expect_promotion=False)
    return shrunk, (
        f"this machine trains at an estimated {rate:.0f} tokens/s ({measured}): "
        f"{plan.train_rows} rows would take about {seconds:.0f} s, so the demo trains on "
        f"{shrunk.train_rows}; fewer rows may not pass the gates, so a block is shown, not an error"
    )


def machine_speed(info: server_pb2.GetServerInfoResponse) -> MachineSpeed:
    """The trainer's measured speed from GetServerInfo."""
    machine = info.machine
    bf16 = machine.trainer.dtype == "bfloat16"
    return MachineSpeed(
        dtype=machine.trainer.dtype,
        matmul_gflops=machine.probe_bfloat16_gflops if bf16 else machine.probe_float32_gflops,
        parameters=info.base_model.parameters,
    )


def benchmarks(plan: DemoPlan) -> dict[str, Any]:
    """The benchmarks of both evaluations: the same spec, so the second reuses the first's
    scores."""
    return {"tasks": TASKS, "limit": plan.questions}


def evaluation(plan: DemoPlan) -> dict[str, Any]:
    """The evaluation after training: gates an honestly trained adapter passes, then promotion."""
    return {
        "benchmarks": benchmarks(plan),
        "schema_adherence": {"limit": plan.schema_questions, "max_tokens": 128},
        "win_rate": {"limit": plan.questions, "max_tokens": 256},
        "gates": [
            # No worse than the base model at GSM8K's answer format and result...
            {
                "metric": "GATE_METRIC_TASK",
                "task": "adapterd_gsm8k",
                "task_metric": "exact_match,strict-match",
                "comparator": "COMPARATOR_GE",
                "margin": 0.0,
            },
            # ...answers closer to the reference solutions than the base model's, more often...
            {"metric": "GATE_METRIC_WIN_RATE", "comparator": "COMPARATOR_GE", "threshold": 0.5},
            # ...and training converged.
            {"metric": "GATE_METRIC_TRAIN_LOSS", "comparator": "COMPARATOR_LT", "threshold": 1.5},
        ],
        "promote_alias": ALIAS,
    }


def strict_evaluation(plan: DemoPlan) -> dict[str, Any]:
    """A deliberately strict gate on the benchmarks measured already."""
    return {"benchmarks": benchmarks(plan), "gates": [STRICT_GATE]}


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def run_demo(
    settings: ServerSettings, server_flags: list[str], plan: DemoPlan, keep_running: bool
) -> int:
    """Runs the demo against a server started with `server_flags`; returns the exit code."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log_path = settings.data_dir / "demo-server.log"
    began = time.monotonic()
    if "--drift-interval-seconds" not in server_flags:
        server_flags = [*server_flags, "--drift-interval-seconds", f"{DRIFT_SECONDS:g}"]
    _say(f"starting `adapterd serve {' '.join(server_flags)}` (log: {log_path})")
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", *server_flags],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    target = f"{settings.host}:{settings.port}"
    metrics_url = f"http://{settings.host}:{settings.metrics_port}/metrics"
    try:
        with Client(target, timeout=300.0) as client:  # generous: answers run on the CPU
            seen = _wait_serving(client, server, log_path)
            if seen is None:
                return 1
            _say(f"health went {' -> '.join(seen)} in {time.monotonic() - began:.1f} s")
            info = client.server_info()
            base = info.base_model
            _say(
                f"adapterd {info.version}: base model {base.name} ({base.architecture}, "
                f"{base.parameters / 1e6:.1f}M parameters) in vLLM, "
                f"max_loras={info.max_loras}, max_lora_rank={info.max_lora_rank}"
            )
            _say(
                f"weights sha256 {base.weights_sha256[:16]}…, "
                f"chat template sha256 {base.chat_template_sha256[:16]}…"
            )
            machine = info.machine
            _say(
                f"machine: {machine.cpu_model or machine.device}, native bf16 "
                f"{'yes' if machine.native_bf16 else 'no'}; engine {machine.engine.dtype} "
                f"({machine.engine.reason}); training {machine.trainer.dtype}"
            )
            plan, sizing = size_plan(plan, machine_speed(info))
            _say(sizing)
            if _train_and_compare(client, settings.data_dir, plan, metrics_url) != 0:
                return 1
        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            page = response.read().decode()
        shown = [
            line
            for line in page.splitlines()
            if line.startswith(
                (
                    "adapterd_engine_ready",
                    "adapterd_generated_tokens_total",
                    "adapterd_captures_total",
                    "adapterd_feedback_rating_sum",
                    "adapterd_feedback_rating_count",
                    "adapterd_feedback_total",
                    "adapterd_capture_redactions_total",
                    "adapterd_online_quality",
                    "adapterd_drift",
                )
            )
        ]
        _say(f"{metrics_url}:\n  " + "\n  ".join(shown))
        if keep_running:
            _say(f"server running: try `adapterctl --target {target} info`; Ctrl-C stops it")
            _wait_for_stop(server)
    finally:
        code = _stop(server)
    _say(f"server stopped with exit code {code}; demo took {time.monotonic() - began:.1f} s")
    return 0 if code == 0 else 1


def _train_and_compare(client: Client, data_dir: Path, plan: DemoPlan, metrics_url: str) -> int:
    """Upload -> validate -> train and evaluate (followed live) -> promotion -> a strict gate
    that blocks -> the adapter answers beside the base."""
    rows = GSM8K.read_text(encoding="utf-8").splitlines()
    train_file = data_dir / "demo-gsm8k.jsonl"
    train_file.write_text("\n".join(rows[: plan.train_rows]) + "\n", encoding="utf-8")
    dataset = client.upload_dataset(train_file)
    data = jobs_pb2.DataSettings(datasets=[jobs_pb2.DatasetRef(dataset_id=dataset)])
    report = json_format.MessageToDict(client.validate_dataset(data).report)
    _say(
        f"uploaded {plan.train_rows} GSM8K rows as {dataset}: {report['train_rows']:.0f} valid, "
        f"{report['assistant_token_fraction']:.0%} of tokens are the assistant's (trained)"
    )
    spec = json_format.ParseDict(
        {
            "data": {"datasets": [{"dataset_id": dataset}]},
            "training": {"epochs": 1, "batch_size": 4, "learning_rate": 1e-3},
            "adapter_name": ADAPTER,
            "evaluation": evaluation(plan),
        },
        jobs_pb2.TrainSpec(),
    )
    job = client.submit_job(spec, request_id=f"demo-{dataset}")  # one job per upload
    _say(f"submitted {job.id}: train, then evaluate against the base model with 3 gates")
    if follow_job(client, job.id, as_json=False) != 0:
        return 1
    result = _report(client, job.id, data_dir)
    if result["evaluation"]["promoted"]:
        answering = ALIAS
    elif plan.expect_promotion:
        _say(f"the gates blocked the promotion: {result['evaluation']['failed_gates']}")
        return 1
    else:
        answering = result["adapter_version"]
        _say(f"the gates blocked the promotion to {ALIAS}; {answering} answers below")
    _say("evaluating it again with a deliberately strict gate (GSM8K exact match >= 0.9):")
    strict = client.evaluate(
        jobs_pb2.EvaluateSpec(
            adapter=ADAPTER,
            evaluation=json_format.ParseDict(
                strict_evaluation(plan), evaluation_pb2.EvaluationSpec()
            ),
        )
    )
    if follow_job(client, strict.id, as_json=False) != 0:
        return 1
    for question in (json.loads(line)["prompt"] for line in rows[-2:]):
        _say(f"Q: {question}")
        for adapter in ("", answering):
            request = inference_pb2.GenerateRequest(
                adapter=adapter,
                sampling=inference_pb2.SamplingParams(max_tokens=plan.answer_tokens),
            )
            request.chat.messages.add(role="user", content=question)
            reply = client.generate(request)
            answer = reply.text.strip().splitlines() or [""]
            who = f"{adapter} ({reply.adapter_version})" if adapter else "base model"
            _say(f"  {who:>22}: ... {answer[-1][:100]}")
    # A capture policy covers a name or alias (every version of it), not one version.
    target = ALIAS if answering == ALIAS else ADAPTER
    began = time.monotonic()
    code = _production_loop(client, target, plan, rows[-2 - MIN_PROMPTS : -2], metrics_url)
    _say(f"the production loop's round took {time.monotonic() - began:.1f} s")
    return code


def final_number(text: str) -> str | None:
    """The number of a GSM8K answer's `#### N` line, without thousands separators. Pure."""
    found = FINAL_NUMBER.findall(text)
    return found[-1].replace(",", "").rstrip(".") if found else None


def _production_loop(
    client: Client, target: str, plan: DemoPlan, rows: list[str], metrics_url: str
) -> int:
    """Traffic through `target` (concurrent, as users send it), captured and redacted; each
    answer rated against the GSM8K reference (a wrong one corrected with it); drift and online
    quality from /metrics; the rated traffic exported as a dataset that a second job trains on."""
    _say(f"production loop: capturing every request to {target}")
    client.set_capture_policy(target, rate=1.0, retention_seconds=86400)
    began = time.time()  # this round's captures: a reused data directory holds earlier ones
    questions = [json.loads(line) for line in rows]

    def ask(n: int) -> inference_pb2.GenerateResponse:
        question = questions[n]["prompt"]
        if n == 0:  # what a user might paste: it never reaches the store
            question = f"(reply to sam.doe@example.com) {question}"
        request = inference_pb2.GenerateRequest(
            adapter=target,
            sampling=inference_pb2.SamplingParams(max_tokens=plan.answer_tokens),
        )
        request.chat.messages.add(role="user", content=question)
        return client.generate(request)

    with ThreadPoolExecutor(len(questions)) as pool:
        replies = list(pool.map(ask, range(len(questions))))
    right = 0
    for row, reply in zip(questions, replies, strict=True):
        correct = final_number(reply.text) == final_number(row["completion"])
        right += correct
        feedback = capture_pb2.SubmitFeedbackRequest(capture_id=reply.capture_id)
        if correct:
            feedback.score = 5
        else:
            feedback.score, feedback.flagged = 1, True
            feedback.flag_reason = "wrong final answer"
            feedback.correction = row["completion"]
        client.submit_feedback(feedback)
    mine = capture_pb2.CaptureFilter(target=target, since=_stamp(began))
    first = client.get_capture(replies[0].capture_id)  # the one with an e-mail address
    stored = json_format.MessageToDict(first.request)["messages"][0]["content"]
    _say(
        f"  {len(rows)} answers captured and rated ({right} right, {len(rows) - right} corrected"
        f"); stored as: {stored[:60]!r}... (redacted: {dict(first.redacted)})"
    )
    drift = _wait_for_drift(metrics_url, f"{client.server_info().caller_tenant}/{target}")
    _say(
        "  drift of the last hour's captured questions from the training prompts: "
        + (", ".join(f"{k} {v:.3f}" for k, v in sorted(drift.items())) or "not measured yet")
    )
    exported = client.export_captures(
        capture_pb2.ExportCapturesRequest(filter=mine, min_rating=4, corrections=True)
    )
    client.delete_capture_policy(target)
    _say(f"  exported {exported.rows} rows as {exported.upload_id}; training {LOOP_ADAPTER} on it")
    spec = json_format.ParseDict(
        {
            "data": {"datasets": [{"dataset_id": exported.upload_id}]},
            "training": {"max_steps": plan.loop_steps, "batch_size": 2, "learning_rate": 1e-3},
            "adapter_name": LOOP_ADAPTER,
        },
        jobs_pb2.TrainSpec(),
    )
    return follow_job(client, client.submit_job(spec).id, as_json=False)


def _stamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _wait_for_drift(metrics_url: str, label: str) -> dict[str, float]:
    """The drift gauges of the adapter `label` once the server's background task measured them
    (at most DRIFT_WAIT_SECONDS)."""
    deadline = time.monotonic() + DRIFT_WAIT_SECONDS
    while time.monotonic() < deadline:
        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            page = response.read().decode()
        found = {
            sample.labels["metric"]: sample.value
            for family in text_string_to_metric_families(page)
            if family.name == "adapterd_drift"
            for sample in family.samples
            if sample.labels["adapter"] == label
        }
        if found:
            return found
        time.sleep(1.0)
    return {}


def _report(client: Client, job_id: str, data_dir: Path) -> dict[str, Any]:
    """Prints the evaluation's scores side by side, and where its report and loss plot are
    (the report as the API hands it to any client, written next to the demo's server log; the
    plot in the job's directory of the server the demo started); returns the job's result."""
    fetched = client.evaluation_report(job_id)
    report = json_format.MessageToDict(fetched.report)
    ours, base = report["scores"]["candidate"], report["scores"].get("baseline", {})
    _say(f"{'metric':<46}{'adapter':>9}{'base':>9}")
    for key in sorted(k for k in ours if k in base or k.startswith("win_rate")):
        shown = f"{base[key]:>9.3f}" if key in base else f"{'':>9}"
        _say(f"{key:<46}{ours[key]:>9.3f}{shown}")
    result = json_format.MessageToDict(client.get_job(job_id).result)
    local = data_dir / f"demo-report-{job_id}.html"
    local.write_text(fetched.html)
    _say(f"report: {local}")
    if "loss_png" in result:
        _say(f"loss plot: {data_dir / 'jobs' / job_id / result['loss_png']}")
    return result


def _wait_serving(client: Client, server: subprocess.Popen[bytes], log: Path) -> list[str] | None:
    try:
        return client.wait_until_serving(
            timeout=START_TIMEOUT_SECONDS, give_up=lambda: server.poll() is not None
        )
    except ConnectionAbortedError:
        tail = log.read_text().strip().splitlines()[-5:]
        _say("the server exited during start-up:\n  " + "\n  ".join(tail))
    except TimeoutError:
        _say(f"the server was not serving after {START_TIMEOUT_SECONDS:.0f} s; see {log}")
    return None


def _wait_for_stop(server: subprocess.Popen[bytes]) -> None:
    """Returns on Ctrl-C or SIGTERM, or when the server exits. The handlers are installed here
    because a shell starts a background job with SIGINT ignored, and Python then raises no
    KeyboardInterrupt."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in STOP_SIGNALS}
    try:
        while not stop.is_set() and server.poll() is None:
            stop.wait(0.5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop(server: subprocess.Popen[bytes]) -> int:
    if server.poll() is None:
        began = time.monotonic()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        _say(f"SIGTERM -> exit in {time.monotonic() - began:.1f} s")
    return server.returncode
