"""Training throughput: adapterd's trainer against TRL's SFTTrainer at its defaults.

One run, the default SmolLM2-135M, the same 64 GSM8K rows (conversational prompt/completion),
one epoch, LoRA r=16, alpha=32, all-linear, every variant on the CPUs `available_cpus` counts:
  reference       TRL SFTTrainer(model, args=SFTConfig(per_device_train_batch_size=4,
                  packing=False, num_train_epochs=1, bf16=<auto picked bf16>, use_cpu=True),
                  peft_config=lora), the model loaded in the dtype `auto` picks, everything else
                  at TRL's defaults (use_cpu is what TRL needs to allow bf16 here);
  adapterd-*      the trainer with its own best settings, QLoRA off, in bf16 and in fp32: the
                  one `auto` picks is "adapterd", and `auto_vs_slower_precision` says it was
                  the faster;
  adapterd-qlora  the same with an NF4, double-quantized base, precision `auto`.
Each variant runs in its own process (peak RSS is that process's). Tokens/s counts non-padding
input tokens over the training loop's time; loss-carrying tokens are printed beside it. The
machine's matmul rate in both dtypes is measured in the same run: LoRA training costs about
4 x parameters FLOPs per token, which bounds tokens/s in the precision `auto` picked
(`of_matmul_limit`). The last line is one JSON object with the machine.

    .venv/bin/python bench/train_throughput.py
"""

import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.children import child_arguments, measure, report_child  # noqa: E402
from bench.results import report  # noqa: E402 (needs ROOT on the path)

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


def run_reference(model_dir: Path, dtype: str) -> dict[str, float]:
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
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            output_dir=out,
            per_device_train_batch_size=4,
            packing=False,
            num_train_epochs=1,
            bf16=dtype == "bfloat16",
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


def run_adapterd(model_dir: Path, quantization: str, precision: str) -> dict[str, float]:
    from trainer.config import load_config
    from trainer.contract import ExitCode
    from trainer.events import EventWriter
    from trainer.recipe import run

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
                "training": {
                    **ADAPTERD_TRAINING,
                    "precision": precision,
                    "checkpoint_interval": 10_000,
                },
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


def matmul_flops(size: int = 2048, repeats: int = 10) -> dict[str, float]:
    """FLOP/s of square products in fp32 and bf16 (larger and longer than the precision probe)."""
    import torch

    rates = {}
    for dtype in ("float32", "bfloat16"):
        a = torch.randn(size, size, dtype=getattr(torch, dtype))
        b = torch.randn(size, size, dtype=getattr(torch, dtype))
        for _ in range(3):
            a @ b
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        rates[f"{dtype}_flops"] = 2 * size**3 * repeats / (time.perf_counter() - started)
    return rates


def child(variant: str, model_dir: Path, dtype: str, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    if variant == "reference":
        figures = run_reference(model_dir, dtype)
    elif variant == "matmul":
        figures = matmul_flops() | {"peak_rss_mib": peak_rss_mib()}
    elif variant == "adapterd-qlora":
        figures = run_adapterd(model_dir, "nf4", "auto")
    else:
        figures = run_adapterd(model_dir, "none", variant.removeprefix("adapterd-"))
    report_child(figures)


def main() -> None:
    args = child_arguments(__doc__.split("\n\n")[0])
    if args.child:
        child(args.child, Path(args.model), args.dtype, args.threads)
        return

    from service.basemodel import resolve_base_model
    from service.settings import ServerSettings
    from trainer.hardware import available_cpus, describe_machine, resolve_precision

    threads = available_cpus()
    auto = resolve_precision("auto", "train", threads)
    other = "float32" if auto.dtype == "bfloat16" else "bfloat16"
    model = resolve_base_model("smollm2-135m-instruct", ServerSettings().model_cache_dir)
    parameters = model.fingerprint.parameters
    variants = (
        "matmul",
        "reference",
        f"adapterd-{auto.dtype}",
        f"adapterd-{other}",
        "adapterd-qlora",
    )
    results = {v: measure(__file__, v, model.path, auto.dtype, threads) for v in variants}
    results["adapterd"] = results.pop(f"adapterd-{auto.dtype}")
    limit = results["matmul"][f"{auto.dtype}_flops"] / (4 * parameters)
    print(
        f"\nauto picked {auto.dtype} ({auto.reason}); matmul "
        + ", ".join(
            f"{d} {results['matmul'][f'{d}_flops'] / 1e9:.0f}" for d in ("float32", "bfloat16")
        )
        + f" GFLOP/s -> limit {limit:.0f} tokens/s for {parameters / 1e6:.1f}M parameters"
    )
    print(
        f"{'variant':<18}{'tokens/s':>10}{'input tok':>11}{'trained tok':>13}"
        f"{'seconds':>9}{'peak MiB':>10}"
    )
    for name in ("reference", "adapterd", f"adapterd-{other}", "adapterd-qlora"):
        r = results[name]
        print(
            f"{name:<18}{r['tokens_per_second']:>10.1f}{r['input_tokens']:>11.0f}"
            f"{r['trained_tokens']:>13.0f}{r['seconds']:>9.1f}{r['peak_rss_mib']:>10.0f}"
        )
    rate = {name: r["tokens_per_second"] for name, r in results.items() if name != "matmul"}
    ratios = {
        "vs_reference": rate["adapterd"] / rate["reference"],
        "of_matmul_limit": rate["adapterd"] / limit,
        "auto_vs_slower_precision": rate["adapterd"] / rate[f"adapterd-{other}"],
        "qlora_vs_reference": rate["adapterd-qlora"] / rate["reference"],
    }
    figures = {
        "float32_matmul_gflops": results["matmul"]["float32_flops"] / 1e9,
        "bfloat16_matmul_gflops": results["matmul"]["bfloat16_flops"] / 1e9,
        "limit_tokens_per_second": limit,
        **{f"{n}_{k}": v for n, r in results.items() if n != "matmul" for k, v in r.items()},
    }
    machine = describe_machine(trainer=auto, trainer_threads=threads)
    report("train_throughput", figures, ratios, machine)


if __name__ == "__main__":
    main()
