"""Does training teach the answer format? GSM8K answers end with a line `#### <number>`.

Trains one epoch on 512 GSM8K rows with adapterd's trainer (default model, precision auto),
then answers 100 other rows (disjoint from those 512) greedily, at most 256 new tokens, with the
base model and with the adapter, both served by one vLLM engine in the dtype auto picks (the
adapter through a LoRARequest: this also shows that the trainer's output loads in vLLM). Counts
the answers whose last line matches `^#### -?[\\d,.]+$`. Goal: the adapter at least 0.8, and at
least 0.5 above the base.

    .venv/bin/python bench/gsm8k_format.py
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.results import report  # noqa: E402 (needs ROOT on the path)
from trainer.hardware import PrecisionChoice  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

DATA = ROOT / "data/gsm8k/train_slice.jsonl"
TRAIN_ROWS = slice(0, 512)
TEST_ROWS = slice(900, 1000)
ANSWER = re.compile(r"^#### -?[\d,.]+$")
TRAINING = {"epochs": 1, "batch_size": 4, "learning_rate": 1e-3, "checkpoint_interval": 10_000}


def format_rate(texts: list[str]) -> float:
    """Share of answers whose last non-empty line is `#### <number>`."""
    last_lines = [(t.strip().splitlines() or [""])[-1].strip() for t in texts]
    return sum(bool(ANSWER.match(line)) for line in last_lines) / len(texts)


def train(
    model_dir: Path, rows: list[dict[str, str]], out: Path
) -> tuple[Path, float, PrecisionChoice]:
    """Trains as the service does: `python -m trainer train` in its own process; returns the
    adapter, the seconds and the precision the trainer chose."""
    data = out / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = out / "config.json"
    config.write_text(
        json.dumps(
            {
                "base_model": str(model_dir),
                "output_dir": str(out),
                "data": {"datasets": [{"path": str(data)}]},
                "training": TRAINING,
            }
        )
    )
    started = time.monotonic()
    events = out / "events.jsonl"
    command = [sys.executable, "-m", "trainer", "train", "--config", str(config)]
    result = subprocess.run([*command, "--events", str(events)], cwd=ROOT, check=False)
    if result.returncode != 0:
        sys.exit(f"training failed ({result.returncode}): {events.read_text()[-2000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    precision = PrecisionChoice.from_json(manifest["precision"])
    return out / "adapter", time.monotonic() - started, precision


def answer(
    model_dir: Path, adapter: Path, questions: list[str], dtype: str
) -> tuple[list[str], list[str]]:
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        for q in questions
    ]
    llm = LLM(
        model=str(model_dir),
        dtype=dtype,
        enable_lora=True,
        max_loras=1,
        max_lora_rank=16,
        max_model_len=1024,
        kv_cache_memory_bytes=2 * 2**30,
        seed=0,
    )
    params = SamplingParams(temperature=0.0, max_tokens=256)
    try:
        base = [o.outputs[0].text for o in llm.generate(prompts, params)]
        lora = LoRARequest("gsm8k", 1, str(adapter))
        tuned = [o.outputs[0].text for o in llm.generate(prompts, params, lora_request=lora)]
    finally:
        # Without this the engine core outlives the answers and the process never exits.
        llm.llm_engine.engine_core.shutdown()
    return base, tuned


def main() -> None:
    from service.basemodel import resolve_base_model
    from service.settings import ServerSettings
    from trainer.hardware import available_cpus, describe_machine, resolve_precision

    model = resolve_base_model("smollm2-135m-instruct", ServerSettings().model_cache_dir)
    threads = available_cpus()
    engine = resolve_precision("auto", "serve", threads)
    with DATA.open() as f:
        rows = [json.loads(line) for line in f]
    test = rows[TEST_ROWS]
    with tempfile.TemporaryDirectory() as out:
        adapter, seconds, trained_in = train(model.path, rows[TRAIN_ROWS], Path(out))
        base, tuned = answer(model.path, adapter, [r["prompt"] for r in test], engine.dtype)
    base_rate, adapter_rate = format_rate(base), format_rate(tuned)
    print(
        f"trained on {len(rows[TRAIN_ROWS])} rows in {seconds:.0f} s; "
        f"answered {len(test)} held-out questions"
    )
    print(f"format rate: base {base_rate:.2f}, adapter {adapter_rate:.2f}")
    print("sample adapter answer:\n" + tuned[0].strip())
    print(f"trained in {trained_in.dtype}, served in {engine.dtype}")
    machine = describe_machine(
        engine=engine, trainer=trained_in, engine_threads=threads, trainer_threads=threads
    )
    report(
        "gsm8k_format",
        {"base_rate": base_rate, "adapter_rate": adapter_rate, "train_seconds": seconds},
        {"adapter_rate": adapter_rate, "adapter_minus_base": adapter_rate - base_rate},
        machine,
    )


if __name__ == "__main__":
    main()
