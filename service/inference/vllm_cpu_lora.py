"""A faster LoRA path for vLLM's CPU backend, installed as a vLLM general plugin.

vLLM's CPU Punica wrapper applies LoRA with reference torch ops (`vllm.lora.ops.torch_ops`):
for every token they gather a copy of its adapter's weight matrix and multiply with einsum,
which is memory-bound: for 320 prompt tokens of the 135M model, 1.4 ms (shrink) and 3.1 ms
(expand) per projection where a matmul takes 0.2 to 0.3 ms. Here the same functions use plain
matmuls (see `lora_matmul`), with the reference's indexing and output semantics unchanged
(tests/unit/service/test_vllm_cpu_lora.py compares them), but for one thing: a row whose index
is -1, vLLM's mark for "no adapter", gets no LoRA delta. The reference indexes the weight stack
with it, that is the last of the `max_loras` slots, so once every slot holds an adapter, base
model requests batched with adapter requests were answered with the last slot's adapter (a
serving test saw the base model's greedy output change with what ran beside it).

vLLM calls `register` in each of its processes (entry point group `vllm.general_plugins`, see
pyproject.toml); it does nothing on other platforms, whose kernels are fused already.
"""

from typing import Any

import torch

DENSE_MAX_SLOTS = 8
"""Up to this many adapter slots, a batch mixing adapters multiplies by all of them at once."""


def lora_matmul(
    inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """Row t of the result is inputs[t] @ weights[indices[t]].T (weights [L, (1,) O, I]), and
    zero where indices[t] is negative (no adapter); a single index applies to every row, as the
    reference's einsum broadcasts it.

    One adapter in the batch: one matmul. Several, with few slots: one matmul against every
    slot's weights stacked, then each row's slot picked out (L times the FLOPs of one adapter,
    but no per-token copies and no Python loop). Many slots: one matmul per adapter present.
    """
    if weights.dim() == 4:
        weights = weights.squeeze(1)
    inputs = inputs.to(dtype)
    slots, out_features, in_features = weights.shape
    if indices.numel() == 1 or bool((indices == indices[0]).all()):
        if int(indices[0]) < 0:
            return inputs.new_zeros((inputs.shape[0], out_features))
        return inputs @ weights[indices[0]].to(dtype).T
    if indices.numel() != inputs.shape[0]:
        raise ValueError(f"{indices.numel()} LoRA indices for {inputs.shape[0]} rows")
    if slots <= DENSE_MAX_SLOTS:
        every = inputs @ weights.reshape(slots * out_features, in_features).to(dtype).T
        picked = every.view(-1, slots, out_features)[
            torch.arange(inputs.shape[0]), indices.clamp(min=0)
        ]
        return picked.masked_fill((indices < 0).unsqueeze(1), 0)
    outputs = inputs.new_zeros((inputs.shape[0], out_features))
    for index in torch.unique(indices).tolist():
        if index < 0:
            continue
        rows = torch.nonzero(indices == index).squeeze(1)
        outputs[rows] = inputs[rows] @ weights[index].to(dtype).T
    return outputs


def bgmv_shrink(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    scaling: float = 1.0,
) -> None:
    """As vllm.lora.ops.torch_ops.bgmv_shrink."""
    outputs = lora_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs


def bgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    add_inputs: bool = True,
) -> None:
    """As vllm.lora.ops.torch_ops.bgmv_expand."""
    outputs = lora_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1
    # The adapter and the model may pad their output dimensions differently.
    common = min(outputs.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :common] += outputs[:limit, :common]
    else:
        output_tensor[:, :common] = outputs[:limit, :common]


def bgmv_expand_slice(  # noqa: PLR0917 (vLLM's signature)
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    """As vllm.lora.ops.torch_ops.bgmv_expand_slice."""
    outputs = lora_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = outputs


REPLACEMENTS: dict[str, Any] = {
    "bgmv_shrink": bgmv_shrink,
    "bgmv_expand": bgmv_expand,
    "bgmv_expand_slice": bgmv_expand_slice,
}


def register() -> None:
    """Replaces the reference ops where vLLM's CPU LoRA path looks them up: the ops module
    (its sgmv_* functions call the bgmv_* ones) and the CPU Punica wrapper's own imports."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    for name, function in REPLACEMENTS.items():
        setattr(lora_ops, name, function)
        setattr(punica_cpu, name, function)
