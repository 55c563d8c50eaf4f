"""DPO on the tiny model, run as the service runs it: `python -m trainer train`."""

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.preferences import gsm8k_preferences
from tests.integration.trainer.test_sft import read_events, train
from trainer.batching import padded
from trainer.config import DataSpec
from trainer.data import prepare_preferences
from trainer.objectives import answer_logps, orpo_loss


def write_dpo_config(tmp_path, model_dir, rows=24, extra=None, **training):
    pairs = gsm8k_preferences(0, rows)
    data_file = tmp_path / "pairs.jsonl"
    data_file.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    config = {
        "base_model": str(model_dir),
        "output_dir": str(tmp_path / "out"),
        "data": {"datasets": [{"path": str(data_file)}], "eval_fraction": 0.25},
        "training": {
            "method": "dpo", "precision": "float32", "batch_size": 6, "eval_interval": 3,
            "checkpoint_interval": 3, "learning_rate": 5e-3, "warmup_ratio": 0.0, **training,
        },
        **(extra or {}),
    }  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path, data_file


def test_dpo_widens_the_margin_against_the_base_as_reference(tmp_path, tiny_model_dir):
    config, data_file = write_dpo_config(tmp_path, tiny_model_dir, max_steps=6)
    process = train(config, tmp_path / "events.jsonl")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    events = read_events(tmp_path / "events.jsonl")
    started = next(e for e in events if e["event"] == "started")
    assert (started["method"], started["train_rows"], started["eval_rows"]) == ("dpo", 18, 6)
    assert started["reference_seconds"] > 0
    progress = [e for e in events if e["event"] == "progress"]
    # The first step's policy is the reference: every margin is 0, the loss log 2.
    assert progress[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert progress[0]["reward_margin"] == pytest.approx(0.0, abs=1e-4)
    evals = [e for e in events if e["event"] == "eval"]
    assert [e["step"] for e in evals] == [3, 6]
    # Trained pairs end preferred, and held-out ones lean the same way.
    assert [p["reward_accuracy"] for p in progress[-3:]] == [1.0] * 3
    assert min(p["reward_margin"] for p in progress[-3:]) > 0.05
    last = evals[-1]
    assert last["eval_reward_margin"] > 0.01
    assert last["eval_reward_accuracy"] > 0.5
    assert last["eval_loss"] < math.log(2) - 0.004
    assert last["eval_chosen_reward"] - last["eval_rejected_reward"] == pytest.approx(
        last["eval_reward_margin"], abs=1e-4
    )

    # The reference kept in the loop state is the base model's own log-probabilities.
    kept = kept_reference(tmp_path / "out")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    spec = DataSpec(datasets=[{"path": data_file}], eval_fraction=0.25)
    pairs = prepare_preferences(spec, tokenizer, seed=0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, torch_dtype=torch.float32)
    chunk = pairs.train[:3]
    with torch.no_grad():
        logps = answer_logps(
            base, padded([p.chosen for p in chunk] + [p.rejected for p in chunk], 0)
        ).tolist()
    expected = [v for pair in zip(logps[:3], logps[3:], strict=True) for v in pair]
    assert [v for pair in kept[:3] for v in pair] == pytest.approx(expected, rel=1e-5)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["config"]["training"]["method"] == "dpo"
    assert manifest["metrics"]["final_eval_loss"] == last["eval_loss"]


def test_ipo_starts_at_the_square_of_its_target_and_moves_the_margin_towards_it(
    tmp_path, tiny_model_dir
):
    config, _ = write_dpo_config(
        tmp_path, tiny_model_dir, max_steps=3, beta=0.5, preference_loss="ipo"
    )
    process = train(config, tmp_path / "events.jsonl")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    progress = [e for e in read_events(tmp_path / "events.jsonl") if e["event"] == "progress"]
    # At the reference every log-ratio is 0: the loss is (1 / (2 beta))^2 = 1 per pair.
    assert progress[0]["loss"] == pytest.approx(1.0, abs=1e-4)
    assert progress[0]["reward_margin"] == pytest.approx(0.0, abs=1e-5)
    assert progress[-1]["loss"] < progress[0]["loss"] and progress[-1]["reward_margin"] > 0


def test_orpo_trains_without_a_reference_and_separates_the_answers(tmp_path, tiny_model_dir):
    # 6 training pairs, one micro-batch: every step sees the same pairs.
    config, data_file = write_dpo_config(
        tmp_path, tiny_model_dir, rows=8, max_steps=6, beta=1.0, preference_loss="orpo"
    )
    process = train(config, tmp_path / "events.jsonl")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    events = read_events(tmp_path / "events.jsonl")
    assert next(e for e in events if e["event"] == "started")["reference_seconds"] == 0
    assert kept_reference(tmp_path / "out") == []  # no reference pass, none kept
    progress = [e for e in events if e["event"] == "progress"]
    margins = [p["reward_margin"] for p in progress]
    assert margins == sorted(margins) and margins[-1] > 0 > margins[0]
    assert progress[-1]["loss"] < progress[0]["loss"]

    # The first step's loss is ORPO's on the base model's log-probabilities of the pairs.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    pairs = prepare_preferences(
        DataSpec(datasets=[{"path": data_file}], eval_fraction=0.25), tokenizer, seed=0
    ).train
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, torch_dtype=torch.float32)
    with torch.no_grad():
        logps = answer_logps(
            base, padded([p.chosen for p in pairs] + [p.rejected for p in pairs], 0)
        )
    tokens = torch.tensor([[p.chosen.trained_tokens, p.rejected.trained_tokens] for p in pairs])
    loss, _ = orpo_loss(logps[: len(pairs)], logps[len(pairs) :], tokens.float(), beta=1.0)
    assert progress[0]["loss"] == pytest.approx(float(loss) / len(pairs), rel=1e-4)


def kept_reference(out):
    [checkpoint] = sorted(out.glob("attempts/*/checkpoints/step-*"))[-1:]
    return json.loads((checkpoint / "state.json").read_text())["reference"]


def test_dpo_after_a_warm_start_takes_the_parent_adapter_as_its_reference(
    tmp_path, tiny_model_dir, tiny_adapter
):
    from peft import PeftModel

    parent = {
        "lora": {"rank": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj", "down_proj"]},
        "init_adapter": {"path": str(tiny_adapter), "ref": "acme/sft@1"},
    }
    config, data_file = write_dpo_config(tmp_path, tiny_model_dir, max_steps=1, extra=parent)
    process = train(config, tmp_path / "events.jsonl")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    progress = [e for e in read_events(tmp_path / "events.jsonl") if e["event"] == "progress"]
    assert progress[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # it starts at the parent

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    pairs = prepare_preferences(
        DataSpec(datasets=[{"path": data_file}], eval_fraction=0.25), tokenizer, seed=0
    ).train[:3]
    batch = padded([p.chosen for p in pairs] + [p.rejected for p in pairs], 0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, torch_dtype=torch.float32)
    with torch.no_grad():
        of_parent = answer_logps(PeftModel.from_pretrained(base, tiny_adapter), batch).tolist()
        with_parent = [v for pair in zip(of_parent[:3], of_parent[3:], strict=True) for v in pair]
    kept = [v for pair in kept_reference(tmp_path / "out")[:3] for v in pair]
    assert kept == pytest.approx(with_parent, rel=1e-5)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["parent"]["ref"] == "acme/sft@1"
