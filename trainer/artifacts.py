"""What a finished run leaves: the adapter, its manifest, and the loss curve."""

import csv
import json
import shutil
from pathlib import Path
from typing import Any

from trainer.checkpoints import LoopState
from trainer.config import TrainConfig
from trainer.files import fresh_staging, installed_versions, publish_dir
from trainer.fingerprint import fingerprint, sha256_files
from trainer.hardware import PrecisionChoice
from trainer.layout import ADAPTER, MANIFEST, PEFT_CONFIG, PEFT_WEIGHTS
from trainer.templates import with_template

LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "trl", "accelerate", "safetensors")


def install_adapter(source: Path, output_dir: Path) -> Path:
    """Copies a saved peft adapter (safetensors + config) to OUTPUT/adapter, atomically."""
    target = output_dir / ADAPTER
    staging = fresh_staging(target)
    for name in (PEFT_WEIGHTS, PEFT_CONFIG):
        shutil.copy2(source / name, staging / name)
    return publish_dir(staging, target)


def identity(
    config: TrainConfig,
    *,
    precision: PrecisionChoice,
    adapter_dtype: str,
    quantization: str,
    data_summary: dict[str, Any],
) -> dict[str, Any]:
    """What every adapter of a run shares in its manifest: base model identity, dataset hashes
    and weights, resolved config, library versions, the training precision (and why) beside
    the adapter weights' dtype (fp32 whatever the precision, so an engine in any dtype serves
    them), quantization, the parent of a warm start, and the data's summary. Hashes the base
    model's weights and the datasets."""
    base = with_template(fingerprint(config.base_model), config.chat_template)
    names = [stage.name for stage in config.data.stages]
    return {
        "base_model": base.manifest_entry(config.base_model_name or str(config.base_model)),
        "datasets": [
            {
                "path": str(d.spec.path),
                "sha256": sha256_files([d.spec.path]),
                "weight": d.spec.weight,
                **({"stage": names[d.stage]} if names else {}),
            }
            for d in config.data.sources()
        ],
        "eval_file_sha256": sha256_files([config.data.eval_file]) if config.data.eval_file else "",
        "config": json.loads(config.model_dump_json()),
        "precision": precision.to_json() | {"adapter_weights": adapter_dtype},
        "quantization": {
            "mode": quantization,
            "double_quant": config.quantization.double_quant if quantization != "none" else False,
            "compute_dtype": config.quantization.resolved_compute_dtype(precision.dtype),
        },
        "parent": (
            {"ref": config.init_adapter.ref, "sha256": config.init_adapter.sha256}
            if config.init_adapter
            else None
        ),
        "libraries": installed_versions(LIBRARIES),
        "data": data_summary,
    }


def write_manifest(manifest: dict[str, Any], output_dir: Path) -> Path:
    """OUTPUT/manifest.json: the run's `identity` with its final metrics."""
    path = output_dir / MANIFEST
    path.write_text(json.dumps(manifest, indent=2))
    return path


def write_loss_curve(state: LoopState, output_dir: Path) -> tuple[Path, Path]:
    """loss.csv (step, epoch, loss, learning_rate, eval_loss) and loss.png."""
    csv_path = output_dir / "loss.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(
            f, fieldnames=["step", "epoch", "loss", "learning_rate", "eval_loss"]
        )
        writer.writeheader()
        for record in state.history:
            writer.writerow({k: record.get(k, "") for k in writer.fieldnames})
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in state.history]
    axes.plot(steps, [r["loss"] for r in state.history], label="train loss")
    evals = [(r["step"], r["eval_loss"]) for r in state.history if "eval_loss" in r]
    if evals:
        axes.plot(*zip(*evals, strict=True), marker="o", label="eval loss")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.legend()
    axes.grid(alpha=0.3)
    png_path = output_dir / "loss.png"
    figure.savefig(png_path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return csv_path, png_path
