"""Evaluation throughput: 3 adapters scored through adapterd's warm engine, against lm-eval's
own CLI run once per adapter.

The default SmolLM2-135M, 3 random rank-16 all-linear adapters, the bundled multiple-choice task
`adapterd_arith_mc` (100 two-digit arithmetic questions, 4 options each: 400 log-likelihood
requests per adapter at the default --limit 100), no chat template, zero-shot.
  - adapterd: the server is started (its engine on every core, as the CLI uses them) and the
    adapters loaded first (a warm server is the point); the time is from the first Evaluate
    call to the third evaluation's end. Each evaluation also scores the base model as its
    baseline: measured once, then reused.
  - baseline: `python -m lm_eval --model vllm` with `lora_local_path`, once per adapter, each a
    new process that loads the model and its engine, as a user without adapterd would run it;
    if that backend fails here, `--model hf` with `peft=` (which one ran is printed).
The accuracies must agree within their standard errors. Also measured, to show what the engine
itself costs: the same requests (the base model's and each adapter's) sent straight to a vLLM
engine built with the server's engine arguments, each model's requests in one `LLM.generate`.
Every side runs in the dtype `auto` picks for the engine here, chosen once and passed to each.
The last line is one JSON object with the machine; the ratios are the CLI's time over
adapterd's and the direct engine's over adapterd's (larger is better for adapterd).

    .venv/bin/python bench/eval_throughput.py [--limit 100]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.results import report  # noqa: E402 (needs ROOT on the path)

if TYPE_CHECKING:
    from service.settings import ServerSettings
    from tests.support import ServerProcess

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TASK = "adapterd_arith_mc"
ADAPTERS = 3
RANK = 16


def run_cli(
    backend: str, model: Path, adapter: Path, limit: int, out: Path, *, dtype: str
) -> dict[str, float]:
    """One lm-eval CLI run on `adapter`; returns {"acc": ..., "acc_stderr": ...}.

    Raises:
        RuntimeError: with the tail of its output when the run fails.
    """
    if backend == "vllm":
        model_args = (
            f"pretrained={model},enable_lora=True,max_lora_rank={RANK},"
            f"lora_local_path={adapter},max_model_len=1024,dtype={dtype}"
        )
    else:
        model_args = f"pretrained={model},peft={adapter},dtype={dtype}"
    command = [
        sys.executable, "-m", "lm_eval", "--model", backend, "--model_args", model_args,
        "--tasks", TASK, "--include_path", str(ROOT / "eval/tasks"), "--limit", str(limit),
        "--batch_size", "auto" if backend == "vllm" else "8", "--output_path", str(out),
    ]  # fmt: skip
    # The bundled task names its data file relative to the task directory.
    result = subprocess.run(
        command, cwd=ROOT / "eval/tasks", capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"lm_eval --model {backend} failed:\n{result.stderr[-2000:]}")
    found = sorted(out.rglob("results_*.json"), key=lambda p: p.stat().st_mtime)
    scores = json.loads(found[-1].read_text())["results"][TASK]
    return {"acc": scores["acc,none"], "acc_stderr": scores["acc_stderr,none"]}


def measure_cli(
    model: Path, adapters: list[Path], limit: int, out: Path, dtype: str
) -> tuple[str, float, list[dict[str, float]]]:
    """(backend, seconds for all adapters, scores per adapter)."""
    for backend in ("vllm", "hf"):
        started, scores = time.perf_counter(), []
        try:
            for i, adapter in enumerate(adapters):
                print(f"lm_eval --model {backend}, adapter {i} ...", file=sys.stderr, flush=True)
                scores.append(
                    run_cli(backend, model, adapter, limit, out / f"{backend}-{i}", dtype=dtype)
                )
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            continue
        return backend, time.perf_counter() - started, scores
    raise RuntimeError("neither lm-eval backend ran")


def bench_server(data: Path, threads: int, dtype: str) -> "ServerProcess":
    """adapterd's server for the benchmark, not started yet: its engine gets every core, as the
    CLI's process does, in `dtype`."""
    from tests.support import ServerProcess

    flags = ["--engine-threads", str(threads), "--engine-dtype", dtype]
    return ServerProcess(data, "smollm2-135m-instruct", extra_flags=flags)


def server_settings(server: "ServerProcess") -> "ServerSettings":
    """The settings `server` runs with, parsed from its flags as `adapterd serve` parses them."""
    from service.cli import build_parser
    from service.settings import ServerSettings, settings_from_args

    args = build_parser().parse_args(["serve", *server.flags()])
    return settings_from_args(ServerSettings, args)


def measure_adapterd(server: "ServerProcess", limit: int) -> tuple[float, list[dict[str, float]]]:
    """(seconds for the three evaluations on the warm server, scores per adapter)."""
    from google.protobuf import json_format

    from adapterd.v1 import evaluation_pb2, jobs_pb2
    from service.client.api import Client

    server.start()
    try:
        with Client(server.target, timeout=300) as client:
            for i in range(ADAPTERS):
                client.load_adapter(f"a{i}", f"a{i}")
            evaluation = json_format.ParseDict(
                {"benchmarks": {"tasks": [TASK], "limit": limit, "chat_template": False}},
                evaluation_pb2.EvaluationSpec(),
            )
            started = time.perf_counter()
            jobs = [
                client.evaluate(jobs_pb2.EvaluateSpec(adapter=f"a{i}", evaluation=evaluation))
                for i in range(ADAPTERS)
            ]
            for job in jobs:
                for _ in client.watch_job(job.id):
                    pass
            seconds = time.perf_counter() - started
            scores = []
            for job in jobs:
                done = client.get_job(job.id)
                if done.state != jobs_pb2.JOB_STATE_SUCCEEDED:
                    raise RuntimeError(f"{job.id}: {done.error_message}")
                report = json_format.MessageToDict(client.evaluation_report(job.id).report)
                key = f"task:{TASK}/acc"
                scores.append(
                    {
                        "acc": report["scores"]["candidate"][key],
                        "acc_stderr": report["stderr"]["candidate"][key],
                    }
                )
    finally:
        server.stop()
    return seconds, scores


def evaluation_prompts(model: Path, max_model_len: int, limit: int) -> list[tuple[int, ...]]:
    """The prompts adapterd's evaluation of TASK sends the engine: lm-eval runs the task on
    `EngineLM` over a batch function that records the calls (and answers each with zeros)."""
    from transformers import AutoTokenizer

    from eval.benchmarks import BUNDLED_TASKS, load_task, run_tasks
    from eval.lm import EngineCall, EngineLM, EngineReply

    prompts: list[tuple[int, ...]] = []

    def record(calls: Sequence[EngineCall]) -> list[EngineReply]:
        prompts.extend(call.prompt_ids for call in calls)
        return [EngineReply("", tuple((0.0, True) for _ in call.prompt_ids)) for call in calls]

    lm = EngineLM(record, AutoTokenizer.from_pretrained(model), max_model_len, "recorder")
    configs = [load_task(TASK, [BUNDLED_TASKS])]
    run_tasks(lm, configs, limit=limit, num_fewshot=None, seed=0, chat_template=False)
    return prompts


def measure_engine_direct(
    settings: "ServerSettings", model: Path, adapters: list[Path], limit: int
) -> float:
    """Seconds for the requests adapterd's evaluations send (the base model's and each
    adapter's), sent straight to the vLLM engine of a server with `settings`; each model's
    requests in one `LLM.generate`, the adapters loaded beforehand."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    from service.app import engine_config
    from service.inference.vllm_engine import bind_engine_cpus, engine_arguments

    config = engine_config(settings, model)
    bind_engine_cpus(config)
    recorded = evaluation_prompts(model, settings.max_model_len, limit)
    prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in recorded]
    sampling = SamplingParams(max_tokens=1, prompt_logprobs=1)  # as adapterd's requests
    targets = [None] + [LoRARequest(f"a{i}", i + 1, str(a)) for i, a in enumerate(adapters)]
    llm = LLM(**engine_arguments(config))
    try:
        for target in targets:  # warm-up, and the adapters loaded, as on the warm server
            llm.generate(prompts[:8], sampling, lora_request=target, use_tqdm=False)
        started = time.perf_counter()
        for target in targets:
            llm.generate(prompts, sampling, lora_request=target, use_tqdm=False)
        return time.perf_counter() - started
    finally:
        # Without this the engine core outlives the run and the process never exits.
        llm.llm_engine.engine_core.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=100, help="Questions per adapter.")
    args = parser.parse_args()

    from service.basemodel import resolve_base_model
    from service.settings import ServerSettings
    from tests.support import make_adapter
    from trainer.hardware import available_cpus, describe_machine, resolve_precision

    model = resolve_base_model("smollm2-135m-instruct", ServerSettings().model_cache_dir)
    threads = available_cpus()
    precision = resolve_precision("auto", "serve", threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        root = data / "adapters"
        adapters = [
            make_adapter(root / f"a{i}", model.path, seed=i, rank=RANK, target_modules="all-linear")
            for i in range(ADAPTERS)
        ]
        server = bench_server(data, threads, precision.dtype)
        warm_seconds, ours = measure_adapterd(server, args.limit)
        settings = server_settings(server)
        direct_seconds = measure_engine_direct(settings, model.path, adapters, args.limit)
        backend, cli_seconds, theirs = measure_cli(
            model.path, adapters, args.limit, data / "cli", precision.dtype
        )

    agree = all(
        abs(a["acc"] - b["acc"]) <= max(a["acc_stderr"], b["acc_stderr"])
        for a, b in zip(ours, theirs, strict=True)
    )
    figures = {
        "adapterd_warm_engine_s": warm_seconds,
        "engine_direct_s": direct_seconds,
        "lm_eval_cli_s": cli_seconds,
        "questions_per_adapter": args.limit,
        "adapters": ADAPTERS,
    }
    ratios = {
        "cli_vs_warm_engine": cli_seconds / warm_seconds,
        "warm_vs_direct_engine": direct_seconds / warm_seconds,
    }
    print(f"\ntask {TASK}, limit {args.limit}; CLI backend {backend}; {precision.reason}")
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        print(f"adapter a{i}: acc adapterd {a['acc']:.3f} ± {a['acc_stderr']:.3f}, "
              f"lm-eval {b['acc']:.3f} ± {b['acc_stderr']:.3f}")  # fmt: skip
    print(f"scores agree within stderr: {agree}")
    machine = describe_machine(engine=precision, engine_threads=threads)
    report("eval_throughput", figures, ratios, machine, cli_backend=backend, scores_agree=agree)


if __name__ == "__main__":
    main()
