"""The recipe on the tiny model, run as the service runs it: `python -m trainer train`."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest.mock import ANY

import pytest
import torch
from safetensors.torch import load_file

from trainer.contract import FENCE_VARIABLE
from trainer.drift import read_reference
from trainer.fingerprint import fingerprint
from trainer.templates import CHATML_TOOLS

ROOT = Path(__file__).resolve().parents[3]
GSM8K = ROOT / "data/gsm8k/train_slice.jsonl"


def write_config(tmp_path, model_dir, rows=32, **training):
    data_file = tmp_path / "rows.jsonl"
    data_file.write_text("".join(GSM8K.read_text().splitlines(keepends=True)[:rows]))
    config = {
        "base_model": str(model_dir),
        "output_dir": str(tmp_path / "out"),
        "data": {"datasets": [{"path": str(data_file)}], "eval_fraction": 0.125},
        "training": {
            "batch_size": 4,
            "eval_interval": 2,
            "checkpoint_interval": 2,
            "learning_rate": 1e-3,
            **training,
        },
    }
    quantization = training.pop("quantization", None)
    if quantization:
        config["quantization"] = quantization
        config["training"].pop("quantization")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def train(config, events, **kwargs):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trainer",
            "train",
            "--config",
            str(config),
            "--events",
            str(events),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def read_events(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_training_moves_the_adapter_not_the_base_and_writes_the_artifacts(tmp_path, tiny_model_dir):
    before = fingerprint(tiny_model_dir)
    config = write_config(tmp_path, tiny_model_dir, max_steps=4)
    process = train(config, tmp_path / "events.jsonl")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]

    out = tmp_path / "out"
    weights = load_file(out / "adapter" / "adapter_model.safetensors")
    assert weights and all("lora_" in name for name in weights)
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert all(torch.count_nonzero(t) > 0 for t in lora_b)  # B starts at zero: it trained
    assert fingerprint(tiny_model_dir) == before  # the base is never written

    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 16 and adapter_config["peft_type"] == "LORA"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["base_model"]["weights_sha256"] == before.weights_sha256
    assert manifest["quantization"]["mode"] == "none"
    assert len(manifest["datasets"][0]["sha256"]) == 64
    assert manifest["metrics"]["steps"] == 4
    assert {"torch", "transformers", "peft"} <= set(manifest["libraries"])
    assert (out / "loss.png").stat().st_size > 1000
    assert len((out / "loss.csv").read_text().splitlines()) == 5  # header + 4 steps
    reference = read_reference(out)  # the training prompts' statistics, for drift
    assert reference is not None and reference.sample.shape[1] == 384
    assert reference.prompts == len(reference.lengths) == len(reference.sample)

    events = read_events(tmp_path / "events.jsonl")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "data" and kinds[-1] == "done"
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["step"] for e in progress] == [1, 2, 3, 4]
    for field in (
        "loss",
        "learning_rate",
        "grad_norm",
        "trained_tokens",
        "tokens_per_second",
        "eta_seconds",
        "epoch",
    ):
        assert field in progress[-1]
    assert [e["step"] for e in events if e["event"] == "eval"] == [2, 4]
    started = next(e for e in events if e["event"] == "started")
    assert started["precision"]["requested"] == "auto"
    assert started["precision"]["dtype"] in {"bfloat16", "float32"}  # the CPU: never fp16
    assert manifest["precision"] == started["precision"] | {"adapter_weights": "float32"}

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), out / "adapter"
    )
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) > 0


def test_sigterm_checkpoints_and_the_next_attempt_resumes_from_the_next_step(
    tmp_path, tiny_model_dir
):
    config = write_config(tmp_path, tiny_model_dir, rows=64, max_steps=40, eval_interval=100)
    events_path = tmp_path / "events.jsonl"

    def attempt(fence):  # as the runner starts it, under a claim's fencing number
        return train(config, events_path, env={**os.environ, FENCE_VARIABLE: str(fence)})

    process = attempt(1)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if events_path.exists() and '"step": 3,' in events_path.read_text():
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 75, output[-3000:]
    first = read_events(events_path)
    interrupted = next(e for e in first if e["event"] == "interrupted")["step"]
    assert first[-2]["event"] == "checkpoint" and first[-2]["step"] == interrupted
    assert first[-2]["path"].endswith(f"attempts/0000001/checkpoints/step-{interrupted:07d}")

    events_path.unlink()
    process = attempt(2)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    second = read_events(events_path)
    assert next(e for e in second if e["event"] == "resumed")["step"] == interrupted
    steps = [e["step"] for e in second if e["event"] == "progress"]
    assert steps == list(range(interrupted + 1, 41))  # no step twice, none skipped
    checkpoints = sorted((tmp_path / "out" / "attempts" / "0000002" / "checkpoints").iterdir())
    assert [c.name for c in checkpoints] == ["step-0000038", "step-0000040"]  # newest 2 kept

    # The first attempt's trainer, run again (as by an owner that lost its lease), stops
    # before writing anything: the job is the second attempt's.
    adapter = tmp_path / "out" / "adapter" / "adapter_model.safetensors"
    written = (adapter.stat().st_mtime_ns, sorted((tmp_path / "out").rglob("*")))
    events_path.unlink()
    process = attempt(1)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 75, output[-3000:]
    assert read_events(events_path) == [
        {"event": "interrupted", "step": 0, "superseded": True, "time": ANY}
    ]
    assert (adapter.stat().st_mtime_ns, sorted((tmp_path / "out").rglob("*"))) == written


def test_two_processes_train_the_loss_curve_of_one_with_the_same_global_batch(
    tmp_path, tiny_model_dir
):
    # `training.devices: 2` on the CPU: two ranks of one thread each under
    # torch.distributed.run (gloo), each taking every other micro-batch of a step. In fp32 the
    # losses are those of one process to rounding, through a SIGTERM and a resume; rank 0
    # alone writes; the ranks' exit code (75) is the trainer's.
    def run(devices):
        out = tmp_path / f"devices-{devices}"
        out.mkdir(exist_ok=True)
        config = write_config(
            out, tiny_model_dir, rows=48, max_steps=12, batch_size=2, gradient_accumulation=4,
            precision="float32", checkpoint_interval=4, devices=devices,
        )  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "2"}
        return train(config, out / "events.jsonl", env=env), out / "events.jsonl"

    process, events = run(1)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    one = read_events(events)

    process, events = run(2)
    while not (events.exists() and '"step": 2,' in events.read_text()):
        assert process.poll() is None, process.communicate()[0][-3000:]
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)  # to the agent, which forwards it to both ranks
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 75, output[-3000:]
    stopped = read_events(events)
    interrupted = stopped[-1]["step"]
    assert [e["event"] for e in stopped[-2:]] == ["checkpoint", "interrupted"]
    process, _ = run(2)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    two = read_events(events)

    started = next(e for e in two if e["event"] == "started")
    assert started["devices"] == 2 and started["total_steps"] == 12
    assert next(e for e in two if e["event"] == "resumed")["step"] == interrupted
    single, parallel = ([e for e in run if e["event"] == "progress"] for run in (one, two))
    assert [e["step"] for e in parallel] == list(range(1, 13))  # rank 0's lines, each once
    for alone, together in zip(single, parallel, strict=True):
        assert together["loss"] == pytest.approx(alone["loss"], rel=1e-4)
        assert together["grad_norm"] == pytest.approx(alone["grad_norm"], rel=1e-3)
        assert together["trained_tokens"] == alone["trained_tokens"]  # the same global batch
    assert two[-1]["event"] == "done"


def test_qlora_nf4_trains_on_the_cpu_computing_in_the_training_precision(tmp_path, tiny_model_dir):
    config = write_config(
        tmp_path,
        tiny_model_dir,
        max_steps=2,
        precision="float32",
        quantization={"mode": "nf4", "double_quant": True},
    )
    process = train(config, tmp_path / "events.jsonl")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["quantization"] == {
        "mode": "nf4",
        "double_quant": True,
        "compute_dtype": "float32",  # "auto" follows training.precision
    }
    assert manifest["precision"]["dtype"] == "float32"


def test_rejected_data_fails_before_any_model_loads(tmp_path, tiny_model_dir):
    config = write_config(tmp_path, tiny_model_dir, max_steps=2)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(rows.read_text() + '{"prompt": "unfinished"\n')
    process = train(config, tmp_path / "events.jsonl")
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 3, output[-2000:]
    [failed] = read_events(tmp_path / "events.jsonl")
    assert failed["event"] == "failed" and failed["reason"] == "data_rejected"
    assert failed["problems"][0]["row"] == 33 and failed["problems"][0]["code"] == "invalid_json"
    assert "Loading weights" not in output


def train_with_config_file(path):
    """`python -m trainer train --config PATH`, run to completion."""
    command = [sys.executable, "-m", "trainer", "train", "--config", str(path)]
    return subprocess.run(command, capture_output=True, text=True, check=False)


@pytest.mark.parametrize("bad", [{"lora": {"rank": 64}}, {"training": {"learning_rate": 0}}])
def test_invalid_config_exits_2_naming_the_field(tmp_path, tiny_model_dir, bad):
    config = json.loads(write_config(tmp_path, tiny_model_dir).read_text())
    config.update(bad)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    result = train_with_config_file(path)
    assert result.returncode == 2
    assert ("lora.rank = 64" if "lora" in bad else "training.learning_rate = 0") in result.stderr


def test_unreadable_config_file_exits_2(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("base_model: [unclosed\n")
    result = train_with_config_file(path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"trainer: error: --config {path}:")


def test_a_curriculum_trains_its_stages_in_order_on_one_schedule(tmp_path, tiny_model_dir):
    lines = GSM8K.read_text().splitlines(keepends=True)
    files = {}
    for name, part in (("general", lines[:8]), ("format", lines[8:12]), ("held", lines[12:16])):
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("".join(part))
    config = {
        "base_model": str(tiny_model_dir),
        "output_dir": str(tmp_path / "out"),
        "data": {
            "stages": [
                {"name": "general", "datasets": [{"path": str(files["general"])}]},
                {"name": "format", "datasets": [{"path": str(files["format"])}], "epochs": 2},
            ],
            "eval_file": str(files["held"]),
        },
        "training": {"batch_size": 2, "eval_interval": 50, "checkpoint_interval": 50,
                     "keep_checkpoints": 1, "learning_rate": 1e-3, "scheduler": "linear",
                     "warmup_ratio": 0.0},
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    process = train(tmp_path / "config.json", tmp_path / "events.jsonl")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    events = read_events(tmp_path / "events.jsonl")

    data = next(e for e in events if e["event"] == "data")
    assert data["stage_rows"] == {"general": 8, "format": 4}
    # 8 rows in batches of 2 once, then 4 rows twice: 4 + 4 steps on one linear schedule.
    assert next(e for e in events if e["event"] == "started")["total_steps"] == 8
    stages = [(e["stage"], e["index"], e["step"]) for e in events if e["event"] == "stage"]
    assert stages == [("general", 0, 1), ("format", 1, 5)]
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["stage"] for e in progress] == ["general"] * 4 + ["format"] * 4
    assert [e["epoch"] for e in progress] == [0.25, 0.5, 0.75, 1.0, 0.5, 1.0, 1.5, 2.0]
    rates = [e["learning_rate"] for e in progress]
    assert rates == sorted(rates, reverse=True) and rates[-1] == 0.0  # one decay across both
    # Each stage's end is measured and checkpointed, and kept beside the newest checkpoint;
    # the saved loop state and the checkpoint's summary name the stage.
    assert [e["step"] for e in events if e["event"] == "eval"] == [4, 8]
    kept = sorted((tmp_path / "out").glob("attempts/*/checkpoints/step-*"))
    saved = [json.loads((p / "state.json").read_text()) for p in kept]
    assert [(state["step"], state["stage"]) for state in saved] == [(4, 0), (8, 1)]
    summaries = [json.loads((p / "manifest.json").read_text())["checkpoint"] for p in kept]
    assert [(c["stage"], c["stage_end"]) for c in summaries] == [("general", True),
                                                                 ("format", False)]  # fmt: skip
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [d["stage"] for d in manifest["datasets"]] == ["general", "format"]


def write_tool_rows(path: Path, count: int) -> None:
    """`count` chats in which the assistant calls `add` and then answers with its result."""
    add = {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"]}}}  # fmt: skip
    rows = []
    for a in range(count):
        call = {"type": "function", "function": {"name": "add", "arguments": {"a": a, "b": 2}}}
        rows.append({"tools": [add], "messages": [
            {"role": "user", "content": f"What is {a} + 2?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": str(a + 2)},
            {"role": "assistant", "content": f"{a} + 2 = {a + 2}."},
        ]})  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.mark.parametrize("template", ["model", "chatml_tools"])
def test_tool_call_rows_train_under_a_template_with_tools_and_fail_naming_it_otherwise(
    tmp_path, tiny_model_dir, template
):
    write_tool_rows(tmp_path / "tools.jsonl", 8)
    config = {
        "base_model": str(tiny_model_dir),
        "chat_template": template,
        "output_dir": str(tmp_path / "out"),
        "data": {"datasets": [{"path": str(tmp_path / "tools.jsonl")}]},
        "training": {"batch_size": 4, "max_steps": 2, "learning_rate": 1e-3},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    process = train(path, tmp_path / "events.jsonl")
    output, _ = process.communicate(timeout=300)
    events = read_events(tmp_path / "events.jsonl")
    if template == "model":  # SmolLM2's template drops tools: exit 4, before any model loads
        assert process.returncode == 4, output[-2000:]
        assert events[-1]["reason"] == "chat_template"
        assert "--chat-template chatml_tools" in events[-1]["message"]
        assert "Loading weights" not in output
        return
    assert process.returncode == 0, output[-3000:]
    [data] = [e for e in events if e["event"] == "data"]
    assert data["sample"].count("[[<tool_call>") == 1  # the call trains, the tool's answer not
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    shipped = hashlib.sha256(CHATML_TOOLS.encode()).hexdigest()
    assert manifest["base_model"]["chat_template_sha256"] == shipped
    assert fingerprint(tiny_model_dir).chat_template_sha256 != shipped
