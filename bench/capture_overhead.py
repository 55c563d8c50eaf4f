"""Capture overhead: serving throughput with capture at 100% over capture off, on one server.

The default SmolLM2-135M in the dtype `auto` picks for the engine (or --engine-dtype), one
random rank-16 adapter, the load of `bench/serve_throughput.py` (16 concurrent GenerateStream
calls on GSM8K chats, 64 new tokens, greedy). The capture policy on the adapter is toggled at
runtime through the API (SetCapturePolicy at rate 1, DeleteCapturePolicy), alternating off and
on ROUNDS times after a warm-up of each; the ratio is the median tokens/s with capture over the
median without (larger is better: 1.0 is no cost). Every captured request is then counted in
the store (the writer is asynchronous: it may still be storing the last round, and gets
SETTLE_SECONDS), so a capture that silently lost requests cannot pass for a cheap one.

    .venv/bin/python bench/capture_overhead.py
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.results import report  # noqa: E402 (needs ROOT on the path)
from bench.serve_throughput import CONCURRENCY, grpc_rate  # noqa: E402
from service.client.api import Client  # noqa: E402
from trainer.hardware import available_cpus, describe_machine, resolve_precision  # noqa: E402

ROUNDS = 8
TARGET = "a0"
SETTLE_SECONDS = 60.0


def stored_captures(client: Client, expected: int) -> tuple[int, float]:
    """The captures in the store once `expected` are there (or SETTLE_SECONDS passed), and how
    long after the traffic ended that was."""
    from adapterd.v1 import capture_pb2

    began = time.monotonic()
    while True:
        listed = client.list_captures(capture_pb2.ListCapturesRequest(page_size=1000))
        elapsed = time.monotonic() - began
        if len(listed.captures) >= expected or elapsed > SETTLE_SECONDS:
            return len(listed.captures), elapsed
        time.sleep(0.2)


def measure(data: Path, threads: int, dtype: str) -> tuple[list[float], list[float], int, float]:
    """tokens/s with capture off and on, per round, the captures stored and how long the writer
    took to store the last ones after the traffic ended."""
    from tests.support import ServerProcess

    flags = ["--engine-threads", str(threads), "--engine-dtype", dtype]
    server = ServerProcess(data, "smollm2-135m-instruct", extra_flags=flags).start()
    try:
        with Client(server.target, timeout=300) as client:
            client.load_adapter(TARGET, TARGET)
            off, on = [], []
            for round_ in range(ROUNDS + 1):  # round 0 warms both up, unmeasured
                print(f"round {round_} ...", file=sys.stderr, flush=True)
                rate = grpc_rate(client, [TARGET])
                if round_:
                    off.append(rate)
                client.set_capture_policy(TARGET, rate=1.0, retention_seconds=3600)
                rate = grpc_rate(client, [TARGET])
                if round_:
                    on.append(rate)
                client.delete_capture_policy(TARGET)
            expected = (ROUNDS + 1) * CONCURRENCY
            stored, settled = stored_captures(client, expected)
    finally:
        server.stop()
    if stored != expected:
        sys.exit(f"{stored} captures stored, {expected} expected: capture lost requests")
    return off, on, stored, settled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine-threads", type=int, default=available_cpus())
    parser.add_argument(
        "--engine-dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"]
    )
    args = parser.parse_args()

    from service.basemodel import resolve_base_model
    from service.settings import ServerSettings
    from tests.support import make_adapter

    model = resolve_base_model("smollm2-135m-instruct", ServerSettings().model_cache_dir)
    precision = resolve_precision(args.engine_dtype, "serve", args.engine_threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        make_adapter(
            data / "adapters" / TARGET, model.path, seed=0, rank=16, target_modules="all-linear"
        )
        off, on, stored, settled = measure(data, args.engine_threads, precision.dtype)
    median = statistics.median
    figures = {
        "capture_off_tokens_per_second": median(off),
        "capture_on_tokens_per_second": median(on),
        "capture_off_min": min(off),
        "capture_on_min": min(on),
        "captures_stored": float(stored),
        "writer_settled_s": settled,
    }
    ratios = {"capture_vs_off": median(on) / median(off)}
    print(f"\n{ROUNDS} rounds off/on; engine {precision.dtype} ({precision.reason})")
    report(
        "capture_overhead",
        figures,
        ratios,
        describe_machine(engine=precision, engine_threads=args.engine_threads),
    )


if __name__ == "__main__":
    main()
