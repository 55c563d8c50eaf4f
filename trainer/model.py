"""The model: a frozen base (in the chosen precision, or 4-bit through bitsandbytes for QLoRA)
with a LoRA adapter."""

from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from trainer.config import LoraSpec, QuantizationSpec
from trainer.hardware import Dtype

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_quantization(spec: QuantizationSpec) -> str:
    """The 4-bit mode actually used: "auto" means NF4 on a CUDA GPU and none on the CPU."""
    if spec.mode != "auto":
        return spec.mode
    return "nf4" if torch.cuda.is_available() else "none"


def device() -> torch.device:
    """Where training runs: the first CUDA GPU if there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_base(
    path: Path, dtype: Dtype, quantization: str, spec: QuantizationSpec, checkpointing: bool
) -> Any:
    """Loads the base model frozen: in `dtype` (the checkpoint on disk is bf16 whatever the
    machine, so loading it in fp32 is exact), or NF4/FP4 with (optional) double quantization
    computing in `quantization.compute_dtype` ("auto": `dtype`).
    Attention is SDPA: flash kernels on CUDA, and on the CPU less memory than eager attention
    (no materialized probabilities) at the same speed or better (bench/train_throughput.py)."""
    attention = "sdpa"
    if quantization == "none":
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=DTYPES[dtype], attn_implementation=attention, device_map={"": device()}
        )
    else:
        bnb = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quantization,
            bnb_4bit_use_double_quant=spec.double_quant,
            bnb_4bit_compute_dtype=DTYPES[spec.resolved_compute_dtype(dtype)],
        )
        model = AutoModelForCausalLM.from_pretrained(
            path, quantization_config=bnb, dtype=DTYPES[dtype], attn_implementation=attention
        )
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    model.config.use_cache = False
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model


def attach_lora(model: Any, spec: LoraSpec, init: Path | None = None) -> Any:
    """Wraps the base in a peft LoRA model, fresh or with the weights of the adapter at `init`
    (a warm start, whose shape `spec` is); only the adapter trains. Its weights stay fp32 (the
    optimizer's master copy); the recipe computes under autocast in the base's dtype.

    peft casts each LoRA input to its weights' dtype (here fp32), which under autocast only
    copies every activation to fp32 and back: a seventh of the step on the CPU. Autocast picks
    the compute dtype, so that cast is turned off."""
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules,
        use_rslora=spec.use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model: Any
    if init is None:
        peft_model = get_peft_model(model, config, autocast_adapter_dtype=True)
    else:  # the parent's weights, in the shape `config` repeats (its dropout may differ)
        peft_model = PeftModel.from_pretrained(
            model, str(init), config=config, is_trainable=True, autocast_adapter_dtype=True
        )
    for module in peft_model.modules():
        if isinstance(module, BaseTunerLayer):
            # an attribute of peft's LoRA layers that its BaseTunerLayer stubs do not declare
            module.cast_input_dtype_enabled = False  # type: ignore[attr-defined]
    return peft_model
