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

At decode a step multiplies only a handful of rows, so what counts there is the number of torch
calls, not FLOPs: vLLM's wrapper runs, per slice of every linear, a buffer fill, two
`repeat_interleave`s (V1 always takes its "prefill" path) and a shrink and an expand of about
eight ops each. `add_lora_linear` replaces that for the linears (every projection of the
model): the rows' slots are read once per engine step (`step_slots`), and with one adapter in
the batch each slice is two matmuls and an add. With several, a shrink multiplies by every
slot's A at once and picks each row's; an expand multiplies the shrunk rows, spread into their
slot's block of a [rows, slots x rank] matrix, by every slot's B stacked ([slots x rank, out],
a copy kept per B buffer and refreshed when vLLM writes to it: about as much memory again as
the adapters' B weights).

vLLM calls `register` in each of its processes (entry point group `vllm.general_plugins`, see
pyproject.toml); it does nothing on other platforms, whose kernels are fused already.
"""

import functools
import weakref
from typing import Any, Generic, TypeVar

import torch

DENSE_MAX_SLOTS = 8
"""Up to this many adapter slots, a batch mixing adapters may multiply by all of them at once."""
DENSE_MAX_ELEMENTS = 1 << 18
"""... if the rows times every slot's outputs stay this small (decode steps; a long prefill
multiplies per adapter instead: L times the FLOPs would no longer be cheap)."""


class RowSlots:
    """Which adapter slot each row of a batch uses (negative: none), read once for all the
    matmuls that share the batch; a single index is every row's, as the reference's einsum
    broadcasts it."""

    def __init__(self, indices: torch.Tensor) -> None:
        self.indices = indices
        self.shared: int | None = None
        """The slot of every row, or None when they differ."""
        if indices.numel() == 1:
            self.shared = int(indices)
        else:
            lowest, highest = (int(bound) for bound in torch.aminmax(indices))
            self.shared = lowest if lowest == highest else None
        self._spread: dict[tuple[int, torch.dtype], torch.Tensor] = {}

    @functools.cached_property
    def picks(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Row numbers, each row's slot (0 for none) and, if any row has none, their mask."""
        absent = self.indices < 0
        mask = absent.unsqueeze(1) if bool(absent.any()) else None
        return torch.arange(self.indices.numel()), self.indices.clamp(min=0), mask

    @functools.cached_property
    def groups(self) -> list[tuple[int, torch.Tensor]]:
        """(slot, its rows) for every slot present."""
        slots = torch.unique(self.indices).tolist()
        return [(s, torch.nonzero(self.indices == s).squeeze(1)) for s in slots if s >= 0]

    def spread(self, count: int, dtype: torch.dtype) -> torch.Tensor:
        """[rows, count, 1]: 1 at each row's slot, 0 elsewhere (everywhere for no adapter)."""
        key = (count, dtype)
        if key not in self._spread:
            present = self.indices.clamp(min=0).unsqueeze(1) == torch.arange(count)
            self._spread[key] = (present & (self.indices >= 0).unsqueeze(1)).to(dtype)[..., None]
        return self._spread[key]


V = TypeVar("V")


class ByIdentity(Generic[V]):
    """A cache keyed by an object's identity, which forgets the object when it dies (a
    tensor's == is elementwise, so tensors cannot be keys by value)."""

    def __init__(self) -> None:
        self._entries: dict[int, V] = {}

    def get(self, key: object) -> V | None:
        return self._entries.get(id(key))

    def put(self, key: object, value: V) -> None:
        if id(key) not in self._entries:
            weakref.finalize(key, self._entries.pop, id(key), None)
        self._entries[id(key)] = value


_STEP_SLOTS = ByIdentity[tuple[tuple[int, int, int], RowSlots]]()
"""Per Punica wrapper: its indices' (address, version, length) and their RowSlots."""


def step_slots(wrapper: Any) -> RowSlots:
    """The RowSlots of the wrapper's current batch, made once per engine step: vLLM writes
    each step's per-token slots into one buffer in place, which bumps its version."""
    indices = wrapper.token_lora_indices
    key = (indices.data_ptr(), indices._version, indices.numel())
    cached = _STEP_SLOTS.get(wrapper)
    if cached is None or cached[0] != key:
        cached = key, RowSlots(indices)
        _STEP_SLOTS.put(wrapper, cached)
    return cached[1]


_STACKED = ByIdentity[tuple[tuple[int, torch.dtype], torch.Tensor]]()
"""Per weight buffer: (its version, the dtype) and its stacked copy."""


def stacked_by_input(weights: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Every slot's weights [L, (1,) O, I] as one [L * I, O] matrix in `dtype`, rebuilt only
    when the buffer was written since (its version counter counts every in-place write)."""
    key = (weights._version, dtype)
    cached = _STACKED.get(weights)
    if cached is None or cached[0] != key:
        slots, out_features, in_features = weights.shape[0], weights.shape[-2], weights.shape[-1]
        flat = weights.reshape(slots, out_features, in_features).transpose(1, 2)
        cached = key, flat.reshape(slots * in_features, out_features).to(dtype).contiguous()
        _STACKED.put(weights, cached)
    return cached[1]


def lora_matmul(
    inputs: torch.Tensor, weights: torch.Tensor, slots: RowSlots, dtype: torch.dtype
) -> torch.Tensor:
    """Row t of the result is inputs[t] @ weights[slot of t].T (weights [L, (1,) O, I]), and
    zero for rows without an adapter.

    One adapter in the batch: one matmul. Several, with few slots and rows (L times the FLOPs
    of one adapter, but no per-token copies and no Python loop): when the output is the wider
    side (an expand), the inputs spread into their slot's block times every slot's weights
    stacked; otherwise (a shrink) the inputs times every slot's weights, then each row's slot
    picked out. Otherwise one matmul per adapter present.
    """
    stack = weights.squeeze(1) if weights.dim() == 4 else weights
    inputs = inputs.to(dtype)
    count, out_features, in_features = stack.shape
    if slots.shared is not None:
        if slots.shared < 0:
            return inputs.new_zeros((inputs.shape[0], out_features))
        return inputs @ stack[slots.shared].to(dtype).T
    rows = inputs.shape[0]
    if slots.indices.numel() != rows:
        raise ValueError(f"{slots.indices.numel()} LoRA indices for {rows} rows")
    if count <= DENSE_MAX_SLOTS and rows * count * out_features <= DENSE_MAX_ELEMENTS:
        if out_features > in_features:
            spread = (inputs.unsqueeze(1) * slots.spread(count, dtype)).view(rows, -1)
            return spread @ stacked_by_input(weights, dtype)
        numbers, chosen, absent = slots.picks
        every = inputs @ stack.reshape(count * out_features, in_features).to(dtype).T
        picked = every.view(rows, count, out_features)[numbers, chosen]
        return picked if absent is None else picked.masked_fill(absent, 0)
    outputs = inputs.new_zeros((rows, out_features))
    for slot, members in slots.groups:
        outputs[members] = inputs[members] @ stack[slot].to(dtype).T
    return outputs


def bgmv_shrink(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    scaling: float = 1.0,
) -> None:
    """As vllm.lora.ops.torch_ops.bgmv_shrink."""
    slots = RowSlots(lora_indices_tensor)
    outputs = lora_matmul(inputs, lora_b_weights, slots, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs


def bgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    add_inputs: bool = True,
) -> None:
    """As vllm.lora.ops.torch_ops.bgmv_expand."""
    slots = RowSlots(lora_indices_tensor)
    outputs = lora_matmul(inputs, lora_b_weights, slots, output_tensor.dtype)
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
    slots = RowSlots(lora_indices_tensor)
    outputs = lora_matmul(inputs, lora_b_weights, slots, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = outputs


def add_lora_linear(  # noqa: PLR0917 (vLLM's signature)
    wrapper: Any,
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a_stacked: tuple[torch.Tensor, ...],
    lora_b_stacked: tuple[torch.Tensor, ...],
    scale: float,
    output_slices: tuple[int, ...],
    *,
    buffer: tuple[torch.Tensor, ...] | None = None,  # vLLM's; no buffer is needed here
    **kwargs: Any,
) -> None:
    """As PunicaWrapperCPU.add_lora_linear: for each slice i, y[:, slice i] += (x @ A_i.T *
    scale) @ B_i.T with each row's adapter. The shrunk rows are float32, as in the reference's
    buffer."""
    slots = step_slots(wrapper)
    if slots.shared is not None and slots.shared < 0:
        return  # no adapter in the batch
    rows = x.view(-1, x.shape[-1])
    out = y.view(-1, y.shape[-1])
    offset = 0
    for lora_a, lora_b, size in zip(lora_a_stacked, lora_b_stacked, output_slices, strict=True):
        target = out[:, offset : offset + size]
        offset += size
        shrunk = lora_matmul(rows, lora_a, slots, torch.float32)
        if scale != 1.0:
            shrunk.mul_(scale)
        delta = lora_matmul(shrunk, lora_b, slots, out.dtype)
        common = min(size, delta.shape[1])  # the adapter may pad its output differently
        target[:, :common] += delta[:, :common]


REPLACEMENTS: dict[str, Any] = {
    "bgmv_shrink": bgmv_shrink,
    "bgmv_expand": bgmv_expand,
    "bgmv_expand_slice": bgmv_expand_slice,
}


def register() -> None:
    """Replaces the reference ops where vLLM's CPU LoRA path looks them up: the ops module
    (its sgmv_* functions call the bgmv_* ones) and the CPU Punica wrapper's own imports; and
    the wrapper's `add_lora_linear`."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    for name, function in REPLACEMENTS.items():
        setattr(lora_ops, name, function)
        setattr(punica_cpu, name, function)
    # setattr: mypy refuses assigning to a method, which is what a plugin does.
    setattr(punica_cpu.PunicaWrapperCPU, "add_lora_linear", add_lora_linear)  # noqa: B010
