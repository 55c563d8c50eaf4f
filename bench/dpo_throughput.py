"""DPO throughput: adapterd's DPO against TRL's DPOTrainer at its defaults.

One run, the default SmolLM2-135M, the same 64 GSM8K preference pairs (`bench/preferences.py`:
the answer chosen over the same answer with its final number changed), LoRA r=16, alpha=32,
all-linear, every variant in its own process on the CPUs `available_cpus` counts:
  reference  TRL DPOTrainer(model, args=DPOConfig(bf16=<auto picked bf16>, use_cpu=True,
             num_train_epochs=1), train_dataset, peft_config=lora): DPOConfig's defaults
             otherwise (batch 8, sigmoid loss, beta 0.1, gradient checkpointing on, the
             reference as the adapter-off model in every step), one epoch instead of its
             default three to keep the run short (the rate is per second of training);
  adapterd   the trainer's DPO (`training.method: dpo`, beta 0.1, batch 8, one epoch, the
             precision `auto` picks), the reference measured once before the first step.
With `--loss ipo`, both train IPO (TRL: `DPOConfig(loss_type=["ipo"])`); with `--loss orpo`,
ORPO against TRL's `trl.experimental.orpo.ORPOTrainer` at `ORPOConfig`'s defaults (batch 8,
beta 0.1, gradient checkpointing on; no reference model) but the same three, and adapterd's
`preference_loss: orpo` (no reference pass).
The rate is pairs trained per second: TRL's `train_runtime`, and adapterd's training loop (the
last progress event's rate, which leaves out the evaluation after the last step) plus its
reference pass over the training pairs (the `started` event's `reference_seconds`).
Quality, on 100 held-out pairs: adapterd's preference accuracy after training (the share of
pairs whose implicit reward margin is above 0; before training every margin is 0, since the
policy is the reference), and the likelihood accuracy (the share of pairs whose chosen answer
is the more probable) of the base model and of the trained adapter, measured in the same
process after training. The last line
is one JSON object with the machine.

    .venv/bin/python bench/dpo_throughput.py [--loss sigmoid|ipo|orpo]
"""

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.children import child_arguments, measure, report_child  # noqa: E402
from bench.preferences import gsm8k_preferences  # noqa: E402 (needs ROOT on the path)
from bench.results import report  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

PAIRS, HELD_OUT = 64, 100
ADAPTERD_TRAINING = {"method": "dpo", "beta": 0.1, "epochs": 1, "batch_size": 8,
                     "learning_rate": 1e-4, "warmup_ratio": 0.0}  # fmt: skip


def conversational(pair: dict[str, str]) -> dict[str, list[dict[str, str]]]:
    return {
        "prompt": [{"role": "user", "content": pair["prompt"]}],
        "chosen": [{"role": "assistant", "content": pair["chosen"]}],
        "rejected": [{"role": "assistant", "content": pair["rejected"]}],
    }


def run_reference(model_dir: Path, dtype: str, loss: str) -> dict[str, float]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    dataset = Dataset.from_list([conversational(p) for p in gsm8k_preferences(0, PAIRS)])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    with tempfile.TemporaryDirectory() as out:
        kept = {"output_dir": out, "bf16": dtype == "bfloat16", "use_cpu": True,
                "num_train_epochs": 1}  # fmt: skip
        if loss == "orpo":
            from trl.experimental.orpo import ORPOConfig, ORPOTrainer

            trainer_class, args = ORPOTrainer, ORPOConfig(**kept)
        else:
            trainer_class, args = DPOTrainer, DPOConfig(**kept, loss_type=[loss])
        trainer = trainer_class(
            model,
            args=args,
            train_dataset=dataset,
            peft_config=lora,
            processing_class=AutoTokenizer.from_pretrained(model_dir),
        )
        result = trainer.train()
    seconds = result.metrics["train_runtime"]
    return {"pairs_per_second": PAIRS / seconds, "seconds": seconds}


def run_adapterd(model_dir: Path, loss: str) -> dict[str, float]:
    from trainer.config import load_config
    from trainer.contract import ExitCode
    from trainer.events import EventWriter
    from trainer.recipe import run

    with tempfile.TemporaryDirectory() as out:
        train, held_out = Path(out) / "pairs.jsonl", Path(out) / "held_out.jsonl"
        for path, pairs in ((train, gsm8k_preferences(0, PAIRS)),
                            (held_out, gsm8k_preferences(PAIRS, HELD_OUT))):  # fmt: skip
            path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
        config = load_config(
            {
                "base_model": str(model_dir),
                "output_dir": out,
                "data": {"datasets": [{"path": str(train)}], "eval_file": str(held_out)},
                "lora": {"rank": 16, "alpha": 32, "target_modules": "all-linear"},
                "quantization": {"mode": "none"},
                "training": {**ADAPTERD_TRAINING, "preference_loss": loss,
                             "eval_interval": 10_000, "checkpoint_interval": 10_000},
            }
        )  # fmt: skip
        events = Path(out) / "events.jsonl"
        with EventWriter(events) as writer:
            assert run(config, writer) == ExitCode.OK
        feed = [json.loads(line) for line in events.read_text().splitlines()]
        before, after = likelihood_accuracy(config, Path(out) / "adapter", held_out)
    started = next(e for e in feed if e["event"] == "started")
    [evaluated] = [e for e in feed if e["event"] == "eval"]  # after the last step only
    last = [e for e in feed if e["event"] == "progress"][-1]  # its rate leaves out the eval
    seconds = last["input_tokens"] / last["tokens_per_second"] + started["reference_seconds"]
    return {
        "pairs_per_second": PAIRS / seconds,
        "seconds": seconds,
        "reference_seconds": started["reference_seconds"],
        "preference_accuracy_after": evaluated["eval_reward_accuracy"],
        "reward_margin_after": evaluated["eval_reward_margin"],
        "eval_loss_after": evaluated["eval_loss"],
        "likelihood_accuracy_before": before,
        "likelihood_accuracy_after": after,
    }


def likelihood_accuracy(config: Any, adapter: Path, pairs_file: Path) -> tuple[float, float]:
    """The share of `pairs_file`'s pairs whose chosen answer is the more probable, under the
    base model and under it with `adapter`."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.batching import padded
    from trainer.config import DataSpec
    from trainer.data import prepare_preferences
    from trainer.objectives import pair_batch, pair_logps

    tokenizer = AutoTokenizer.from_pretrained(config.base_model)
    pairs = prepare_preferences(DataSpec(datasets=[{"path": pairs_file}]), tokenizer, 0).train
    base = AutoModelForCausalLM.from_pretrained(config.base_model, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter).eval()

    def share_preferring_chosen() -> float:
        wins = 0
        for start in range(0, len(pairs), 8):
            chunk = pairs[start : start + 8]
            batch = pair_batch(chunk, lambda examples: padded(examples, 0))
            chosen, rejected = pair_logps(model, batch, len(chunk))
            wins += int((chosen > rejected).sum())
        return wins / len(pairs)

    with torch.no_grad():
        with model.disable_adapter():
            before = share_preferring_chosen()
        return before, share_preferring_chosen()


def child(variant: str, model_dir: Path, dtype: str, threads: int, loss: str) -> None:
    import torch

    torch.set_num_threads(threads)
    if variant == "reference":
        figures = run_reference(model_dir, dtype, loss)
    else:
        figures = run_adapterd(model_dir, loss)
    report_child(figures)


def main() -> None:
    args = child_arguments(__doc__.split("\n\n")[0], {"loss": ("sigmoid", "ipo", "orpo")})
    if args.child:
        child(args.child, Path(args.model), args.dtype, args.threads, args.loss)
        return

    from service.basemodel import resolve_base_model
    from service.settings import ServerSettings
    from trainer.hardware import available_cpus, describe_machine, resolve_precision

    threads = available_cpus()
    auto = resolve_precision("auto", "train", threads)
    model = resolve_base_model("smollm2-135m-instruct", ServerSettings().model_cache_dir)
    results = {
        v: measure(__file__, v, model.path, auto.dtype, threads, "--loss", args.loss)
        for v in ("reference", "adapterd")
    }
    ours = results["adapterd"]
    figures = {
        "reference_pairs_per_second": results["reference"]["pairs_per_second"],
        "reference_seconds": results["reference"]["seconds"],
        "adapterd_pairs_per_second": ours["pairs_per_second"],
        "adapterd_seconds": ours["seconds"],
        "adapterd_reference_seconds": ours["reference_seconds"],
        "preference_accuracy_after": ours["preference_accuracy_after"],
        "likelihood_accuracy_before": ours["likelihood_accuracy_before"],
        "likelihood_accuracy_after": ours["likelihood_accuracy_after"],
        "reward_margin_after": ours["reward_margin_after"],
        "eval_loss_after": ours["eval_loss_after"],
    }
    ratios = {"vs_reference": ours["pairs_per_second"] / results["reference"]["pairs_per_second"]}
    machine = describe_machine(trainer=auto, trainer_threads=threads)
    report("dpo_throughput", figures, ratios, machine, loss=args.loss)


if __name__ == "__main__":
    main()
