"""Serving throughput: adapterd over gRPC against transformers, one adapter, the bare engine.

The default SmolLM2-135M in the dtype `auto` picks for the engine here (or --engine-dtype),
every side in that same dtype, greedy, a fixed number of new tokens (ignore_eos), 16 GSM8K
questions as chats, max_loras=4, the client on the same machine. Each figure is the median of
RUNS runs, all in this one run:
  1. output tokens/s of 16 concurrent GenerateStream calls, over answering the same 16 prompts
     one by one with transformers `generate` (the seed guide's evaluation loop);
  2. the 16 streams spread over 4 adapters, over all 16 on one adapter; and one adapter over
     the base model;
  3. an engine restart with the adapter (server start to SERVING, then LoadAdapter), over a hot
     load through LoadAdapter (checks and hashing included);
  4. gRPC end to end over the engine driven directly through adapterd's engine seam (VllmEngine,
     same prompts as token ids, same concurrency), in a process of its own.
Adapters are random rank-16 all-linear LoRAs with adapterd's manifest. The last line is one
JSON object; every ratio is oriented so that larger is better for adapterd.

    .venv/bin/python bench/serve_throughput.py
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.children import report_child, run_child  # noqa: E402
from bench.results import report  # noqa: E402 (needs ROOT on the path)
from trainer.hardware import available_cpus, describe_machine, resolve_precision  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

CONCURRENCY = 16
NEW_TOKENS = 64
RUNS = 3
HOT_LOADS = 10
ADAPTERS = 4
DATA = ROOT / "data/gsm8k/train_slice.jsonl"


def questions() -> list[str]:
    with DATA.open() as f:
        return [json.loads(line)["prompt"] for _, line in zip(range(CONCURRENCY), f, strict=False)]


def prompt_ids(model_dir: Path) -> list[list[int]]:
    """The 16 chats as the server renders them."""
    from transformers import AutoTokenizer

    from trainer.masking import prompt_token_ids

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return [prompt_token_ids(tokenizer, [{"role": "user", "content": q}]) for q in questions()]


def run_hf(model_dir: Path, dtype: str) -> list[float]:
    """tokens/s of answering the prompts one by one with transformers generate, per run."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
    rates = []
    for _ in range(RUNS):
        started, produced = time.perf_counter(), 0
        for ids in prompt_ids(model_dir):
            with torch.no_grad():
                output = model.generate(
                    torch.tensor([ids]),
                    max_new_tokens=NEW_TOKENS,
                    min_new_tokens=NEW_TOKENS,
                    do_sample=False,
                )
            produced += output.shape[1] - len(ids)
        rates.append(produced / (time.perf_counter() - started))
    return rates


def run_direct(model_dir: Path, engine_threads: int, dtype: str) -> list[float]:
    """tokens/s of the 16 prompts at once on VllmEngine, without gRPC or the service, per run."""
    from service.app import engine_config
    from service.inference.engine import GenerationRequest, Sampling
    from service.inference.vllm_engine import VllmEngine
    from service.settings import ServerSettings

    settings = ServerSettings(
        max_loras=ADAPTERS,
        max_cpu_loras=2 * ADAPTERS,
        max_lora_rank=16,
        max_model_len=1024,
        engine_threads=engine_threads,
        engine_kv_cache_gib=1,
        engine_dtype=dtype,
    )
    config = engine_config(settings, model_dir)
    sampling = Sampling(max_tokens=NEW_TOKENS, ignore_eos=True)
    prompts = prompt_ids(model_dir)

    async def one(run: int, i: int, engine: VllmEngine) -> int:
        request = GenerationRequest(f"r{run}-{i}", tuple(prompts[i]), sampling)
        return sum([len(chunk.token_ids) async for chunk in engine.generate(request)])

    async def main() -> list[float]:
        engine = VllmEngine(config)
        await engine.start()
        try:
            await one(-1, 0, engine)  # warm-up
            rates = []
            for run in range(RUNS):
                started = time.perf_counter()
                counts = await asyncio.gather(*(one(run, i, engine) for i in range(len(prompts))))
                rates.append(sum(counts) / (time.perf_counter() - started))
            return rates
        finally:
            await engine.shutdown()

    return asyncio.run(main())


def child(variant: str, model_dir: Path, engine_threads: int, dtype: str) -> None:
    if variant == "hf":
        rates = run_hf(model_dir, dtype)
    else:
        rates = run_direct(model_dir, engine_threads, dtype)
    report_child(rates)


def in_subprocess(variant: str, model_dir: Path, engine_threads: int, dtype: str) -> list[float]:
    args = ("--model", str(model_dir), "--engine-threads", str(engine_threads))
    rates: list[float] = run_child(__file__, variant, *args, "--engine-dtype", dtype)
    return rates


def grpc_rate(client: object, adapters: list[str]) -> float:
    """Output tokens/s of CONCURRENCY concurrent streams, request i on adapters[i % len]."""
    from adapterd.v1 import inference_pb2

    def stream(i: int) -> int:
        request = inference_pb2.GenerateRequest(
            adapter=adapters[i % len(adapters)],
            sampling=inference_pb2.SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True),
        )
        request.chat.messages.add(role="user", content=questions()[i])
        return sum(len(d.token_ids) for d in client.generate_stream(request))  # type: ignore[attr-defined]

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        started = time.perf_counter()
        produced = sum(pool.map(stream, range(CONCURRENCY)))
        return produced / (time.perf_counter() - started)


def measure_server(
    data: Path, threads: int, dtype: str
) -> tuple[list[float], list[float], dict[str, list[float]]]:
    """Restart times with the adapter, hot-load times, and gRPC tokens/s per load shape."""
    from service.client.api import Client
    from tests.support import ServerProcess

    flags = ["--max-loras", str(ADAPTERS), "--engine-threads", str(threads)]
    flags += ["--engine-dtype", dtype]
    restarts, server = [], None
    for attempt in range(RUNS):  # an engine restart with the adapter, measured RUNS times
        print(f"engine restart {attempt + 1} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        server = ServerProcess(data, "smollm2-135m-instruct", extra_flags=flags).start()
        with Client(server.target, timeout=300) as client:
            client.load_adapter("a0", "a0")
        restarts.append(time.perf_counter() - started)
        if attempt < RUNS - 1:
            server.stop()
    assert server is not None
    try:
        with Client(server.target, timeout=300) as client:
            hot = []
            for _ in range(HOT_LOADS):
                started = time.perf_counter()
                info = client.load_adapter("hot", "a1")
                hot.append(time.perf_counter() - started)
                client.unload_adapter(info.ref)
            for i in range(1, ADAPTERS):
                client.load_adapter(f"a{i}", f"a{i}")
            print("gRPC runs ...", file=sys.stderr, flush=True)
            grpc_rate(client, [""])  # warm-up
            runs: dict[str, list[float]] = {"base": [], "one": [], "four": []}
            for _ in range(RUNS):
                runs["base"].append(grpc_rate(client, [""]))
                runs["one"].append(grpc_rate(client, ["a0"]))
                runs["four"].append(grpc_rate(client, [f"a{i}" for i in range(ADAPTERS)]))
    finally:
        server.stop()
    return restarts, hot, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--engine-threads", type=int, default=available_cpus())
    parser.add_argument(
        "--engine-dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"]
    )
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.model), args.engine_threads, args.engine_dtype)
        return

    from service.basemodel import resolve_base_model
    from service.settings import ServerSettings
    from tests.support import make_adapter

    model = resolve_base_model("smollm2-135m-instruct", ServerSettings().model_cache_dir)
    threads = args.engine_threads
    # Chosen once here and passed to every side, so a probe near a tie cannot split them.
    precision = resolve_precision(args.engine_dtype, "serve", threads)
    dtype = precision.dtype
    hf = in_subprocess("hf", model.path, threads, dtype)
    direct = in_subprocess("direct", model.path, threads, dtype)

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        for i in range(ADAPTERS):
            make_adapter(
                data / "adapters" / f"a{i}",
                model.path,
                seed=i,
                rank=16,
                target_modules="all-linear",
            )
        restarts, hot, runs = measure_server(data, threads, dtype)

    median = statistics.median
    figures = {
        "hf_sequential_tokens_per_second": median(hf),
        "direct_engine_tokens_per_second": median(direct),
        "grpc_base_tokens_per_second": median(runs["base"]),
        "grpc_one_adapter_tokens_per_second": median(runs["one"]),
        "grpc_four_adapters_tokens_per_second": median(runs["four"]),
        "restart_with_adapter_s": median(restarts),
        "hotload_p50_s": median(hot),
    }
    ratios = {
        "concurrent_vs_sequential_hf": figures["grpc_base_tokens_per_second"] / median(hf),
        "four_adapters_vs_one": median(runs["four"]) / median(runs["one"]),
        "adapter_vs_base": median(runs["one"]) / median(runs["base"]),
        "restart_vs_hotload": median(restarts) / median(hot),
        "grpc_vs_direct": median(runs["base"]) / median(direct),
    }
    print(f"\n{NEW_TOKENS} new tokens; engine {dtype} ({precision.reason})")
    report(
        "serve_throughput",
        figures,
        ratios,
        describe_machine(engine=precision, engine_threads=threads),
    )


if __name__ == "__main__":
    main()
