"""Training throughput: adapterd's trainer against TRL's SFTTrainer at its defaults.

One run, the default SmolLM2-135M in bf16, the same 64 GSM8K rows (conversational
prompt/completion), one epoch, LoRA r=16, alpha=32, all-linear:
  reference       TRL SFTTrainer(model, args=SFTConfig(per_device_train_batch_size=4,
                  packing=False, num_train_epochs=1, bf16=True, use_cpu=True), peft_config=lora),
                  everything else at TRL's defaults (use_cpu is what TRL needs to allow bf16 here);
  adapterd        the trainer with its own best settings, QLoRA off;
  adapterd-qlora  the same with an NF4, double-quantized base.
Each variant runs in its own process (peak RSS is that process's). Tokens/s counts non-padding
input tokens over the training loop's time; loss-carrying tokens are printed beside it. The
machine's bf16 matmul rate is measured in the same run: LoRA training costs about 4 x parameters
FLOPs per token, which bounds tokens/s. The last line is one JSON object.

    .venv/bin/python bench/train_throughput.py
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROWS = 64
DATA = ROOT / "data/gsm8k/train_slice.jsonl"
# adapterd's best settings on this machine: micro-batches of 8 rows (twice the reference's,
# halving the steps; one epoch over the same rows either way), batching chosen by "auto".
ADAPTERD_TRAINING = {"epochs": 1, "batch_size": 8, "packing": "auto", "learning_rate": 2e-4}


def rows() -> list[dict[str, str]]:
    with DATA.open() as f:
        return [json.loads(line) for _, line in zip(range(ROWS), f, strict=False)]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_reference(model_dir: Path) -> dict[str, float]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    dataset = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "completion": [{"role": "assistant", "content": r["completion"]}],
            }
            for r in rows()
        ]
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            output_dir=out,
            per_device_train_batch_size=4,
            packing=False,
            num_train_epochs=1,
            bf16=True,
            use_cpu=True,
        )
        trainer = SFTTrainer(
            model,
            args=args,
            train_dataset=dataset,
            peft_config=lora,
            processing_class=AutoTokenizer.from_pretrained(model_dir),
        )
        processed = trainer.train_dataset
        input_tokens = sum(len(ids) for ids in processed["input_ids"])
        trained = sum(sum(1 for label in labels if label != -100) for labels in processed["labels"])
        result = trainer.train()
    seconds = result.metrics["train_runtime"]
    return {
        "tokens_per_second": input_tokens / seconds,
        "input_tokens": input_tokens,
        "trained_tokens": trained,
        "seconds": seconds,
        "peak_rss_mib": peak_rss_mib(),
    }


def run_adapterd(model_dir: Path, quantization: str) -> dict[str, float]:
    from trainer.config import load_config
    from trainer.contract import ExitCode
    from trainer.events import EventWriter
    from trainer.sft import run

    with tempfile.TemporaryDirectory() as out:
        data = Path(out) / "rows.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows()))
        config = load_config(
            {
                "base_model": str(model_dir),
                "output_dir": out,
                "data": {"datasets": [{"path": str(data)}]},
                "lora": {"rank": 16, "alpha": 32, "target_modules": "all-linear"},
                "quantization": {"mode": quantization},
                "training": {**ADAPTERD_TRAINING, "checkpoint_interval": 10_000},
            }
        )
        events = Path(out) / "events.jsonl"
        with EventWriter(events) as writer:
            assert run(config, writer) == ExitCode.OK
        done = [json.loads(line) for line in events.read_text().splitlines()][-1]
    metrics = done["metrics"]
    return {
        "tokens_per_second": metrics["tokens_per_second"],
        "input_tokens": metrics["input_tokens"],
        "trained_tokens": metrics["trained_tokens"],
        "seconds": metrics["input_tokens"] / metrics["tokens_per_second"],
        "peak_rss_mib": peak_rss_mib(),
    }


def bf16_matmul_flops(size: int = 2048, repeats: int = 20) -> float:
    import torch

    a = torch.randn(size, size, dtype=torch.bfloat16)
    b = torch.randn(size, size, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def child(variant: str, model_dir: Path) -> None:
    if variant == "reference":
        figures = run_reference(model_dir)
    elif variant == "matmul":
        figures = {"bf16_flops": bf16_matmul_flops(), "peak_rss_mib": peak_rss_mib()}
    else:
        figures = run_adapterd(model_dir, "nf4" if variant == "adapterd-qlora" else "none")
    print("RESULT " + json.dumps(figures), flush=True)


def measure(variant: str, model_dir: Path) -> dict[str, float]:
    print(f"running {variant} ...", file=sys.stderr, flush=True)
    result = subprocess.run(
        [sys.executable, __file__, "--child", variant, "--model", str(model_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        sys.exit(f"{variant} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    figures: dict[str, float] = json.loads(lines[-1].removeprefix("RESULT "))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.model))
        return

    from service.basemodel import resolve_base_model
    from service.settings import ServerSettings

    model = resolve_base_model("smollm2-135m-instruct", ServerSettings().model_cache_dir)
    parameters = model.fingerprint.parameters
    results = {
        v: measure(v, model.path) for v in ("matmul", "reference", "adapterd", "adapterd-qlora")
    }
    limit = results["matmul"]["bf16_flops"] / (4 * parameters)
    ref, ours, qlora = results["reference"], results["adapterd"], results["adapterd-qlora"]

    print(
        f"\nmachine: {os.cpu_count()} CPUs, torch threads as configured; bf16 matmul "
        f"{results['matmul']['bf16_flops'] / 1e9:.0f} GFLOP/s -> limit {limit:.0f} tokens/s "
        f"for {parameters / 1e6:.1f}M parameters"
    )
    print(
        f"{'variant':<16}{'tokens/s':>10}{'input tok':>11}{'trained tok':>13}"
        f"{'seconds':>9}{'peak MiB':>10}"
    )
    for name in ("reference", "adapterd", "adapterd-qlora"):
        r = results[name]
        print(
            f"{name:<16}{r['tokens_per_second']:>10.1f}{r['input_tokens']:>11.0f}"
            f"{r['trained_tokens']:>13.0f}{r['seconds']:>9.1f}{r['peak_rss_mib']:>10.0f}"
        )
    ratios = {
        "vs_reference": round(ours["tokens_per_second"] / ref["tokens_per_second"], 2),
        "of_matmul_limit": round(ours["tokens_per_second"] / limit, 2),
        "qlora_vs_reference": round(qlora["tokens_per_second"] / ref["tokens_per_second"], 2),
    }
    print(
        f"adapterd / reference {ratios['vs_reference']}x, of the matmul limit "
        f"{ratios['of_matmul_limit']:.0%}, QLoRA / reference {ratios['qlora_vs_reference']}x"
    )
    figures = {
        "bf16_matmul_gflops": round(results["matmul"]["bf16_flops"] / 1e9, 1),
        "limit_tokens_per_second": round(limit, 1),
        **{
            f"{n}_{k}": round(v, 1)
            for n, r in results.items()
            if n != "matmul"
            for k, v in r.items()
        },
    }
    print(json.dumps({"benchmark": "train_throughput", "figures": figures, "ratios": ratios}))


if __name__ == "__main__":
    main()
