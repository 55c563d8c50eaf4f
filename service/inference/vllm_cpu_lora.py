"""A faster LoRA path for vLLM's CPU backend, installed as a vLLM general plugin.

vLLM's CPU Punica wrapper applies LoRA with reference torch ops (`vllm.lora.ops.torch_ops`):
for every token they gather a copy of its adapter's weight matrix and multiply with einsum,
which is memory-bound: for 320 prompt tokens of the 135M model, 1.4 ms (shrink) and 3.1 ms
(expand) per projection where a matmul takes 0.2 to 0.3 ms. Here the same functions use plain
matmuls, with the reference's indexing and output semantics unchanged
(tests/unit/service/test_vllm_cpu_lora.py compares them), but for one thing: a row whose index
is -1, vLLM's mark for "no adapter", gets no LoRA delta. The reference indexes the weight stack
with it, that is the last of the `max_loras` slots, so once every slot holds an adapter, base
model requests batched with adapter requests were answered with the last slot's adapter (a
serving test saw the base model's greedy output change with what ran beside it).

At decode a step multiplies only a handful of rows, so what counts there is the number and
kind of torch calls, not FLOPs. vLLM's wrapper runs, per slice of every linear, a buffer fill,
two `repeat_interleave`s (V1 always takes its "prefill" path) and a shrink and an expand of
about eight ops each. `add_lora_linear` replaces that for the linears (every projection of the
model): the rows' slots are read once per engine step (`step_slots`); one matmul shrinks every
slice of a fused projection at once (q, k and v; gate and up), and each slice's expand is one
more. A step of few rows (decode) multiplies in float32, whose small products cost a third of
bfloat16's (see FEW_ROWS). Rows are split by adapter three ways: one adapter in the batch,
plain matmuls; several over few rows, a shrink by every slot's A at once and an expand by
every slot's B stacked (see DENSE_MAX_SLOTS); otherwise (a prefill) a matmul per run of rows
with one adapter, or per adapter where the rows interleave (`shrink`, `expand`).

The weights are multiplied in the layouts those matmuls want, copies kept per vLLM buffer and
dtype and rebuilt when vLLM writes to the buffer (`layout`): the A matrices of a fused
projection side by side (as large as vLLM's A buffers; in float32, twice that), B in float32
(in the model's dtype it is used in place), and for the mixed decode path every slot's A and
B once more.

vLLM calls `register` in each of its processes (entry point group `vllm.general_plugins`, see
pyproject.toml); it does nothing on other platforms, whose kernels are fused already.
"""

import functools
import weakref
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

import torch

FEW_ROWS = 64
"""A batch of at most this many rows (a decode step) multiplies in float32: products this small
cost their call more than their FLOPs, and a bfloat16 one costs about 30 us a call against 6
to 15 in float32 (oneDNN against the BLAS). Longer batches (prefills) multiply in the model's
dtype, where bfloat16 is the faster one per FLOP."""

DENSE_MAX_SLOTS = 8
"""Up to this many slots, a batch of few rows mixing adapters multiplies by every slot at once:
L times the FLOPs of one adapter, in a handful of calls (a shrink by every slot's A, side by
side; each row's result kept in its slot's block, zeros elsewhere; times every slot's B
stacked). Grouping the rows by slot for one batched matmul (`torch.bmm`) instead, with its
gathers and scatters, took 1.4x as long for 16 rows over 4 adapters through 30 layers'
linears (under torch.profiler, which adds a little to every call)."""

Rows = slice | torch.Tensor
"""Some rows of a batch: a run of consecutive ones, or their numbers."""


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
        self.few = indices.numel() <= FEW_ROWS
        self._spread: dict[tuple[int, torch.dtype], torch.Tensor] = {}

    def dense(self, slots: int) -> bool:
        """Whether to multiply these mixed rows by all of `slots` slots at once."""
        return self.few and slots <= DENSE_MAX_SLOTS

    def spread(self, count: int, dtype: torch.dtype) -> torch.Tensor:
        """[rows, 1, count, 1]: 1 at each row's slot, 0 elsewhere (everywhere for no adapter)."""
        if (count, dtype) not in self._spread:
            present = self.indices.clamp(min=0).unsqueeze(1) == torch.arange(count)
            mask = present & (self.indices >= 0).unsqueeze(1)
            self._spread[count, dtype] = mask.to(dtype).view(-1, 1, count, 1)
        return self._spread[count, dtype]

    @functools.cached_property
    def segments(self) -> list[tuple[int, Rows]]:
        """(slot, its rows) for every slot present: as runs of consecutive rows, where they
        are few (vLLM keeps a request's tokens together, so a prefill has one per request);
        else one index list per slot (a gather and a scatter each, but no more matmuls)."""
        values, counts = torch.unique_consecutive(self.indices, return_counts=True)
        runs: list[tuple[int, Rows]] = []
        start = 0
        for slot, count in zip(values.tolist(), counts.tolist(), strict=True):
            if slot >= 0:
                runs.append((slot, slice(start, start + count)))
            start += count
        present = sorted({slot for slot, _ in runs})
        if len(runs) <= 2 * len(present):
            return runs
        return [(s, torch.nonzero(self.indices == s).squeeze(1)) for s in present]


K = TypeVar("K")
V = TypeVar("V")


class Derived(Generic[K, V]):
    """Values derived from objects (tensors, vLLM's wrapper), kept per object by identity (a
    tensor's == is elementwise) and kind (say, a dtype), and forgotten when the object dies;
    rebuilt when the key they were made under changes (say, the version counters of the
    buffers they were copied from)."""

    def __init__(self) -> None:
        self._entries: dict[int, dict[Hashable, tuple[K, V]]] = {}

    def get(self, owner: object, kind: Hashable, key: K, build: Callable[[], V]) -> V:
        entries = self._entries.get(id(owner))
        if entries is None:
            entries = self._entries[id(owner)] = {}
            weakref.finalize(owner, self._entries.pop, id(owner), None)
        entry = entries.get(kind)
        if entry is None or entry[0] != key:
            entry = entries[kind] = key, build()
        return entry[1]


_STEP_SLOTS = Derived[tuple[int, int, int], RowSlots]()


def step_slots(wrapper: Any) -> RowSlots:
    """The RowSlots of the wrapper's current batch, made once per engine step: vLLM writes
    each step's per-token slots into one buffer in place, which bumps its version."""
    indices = wrapper.token_lora_indices
    key = (indices.data_ptr(), indices._version, indices.numel())
    return _STEP_SLOTS.get(wrapper, None, key, lambda: RowSlots(indices))


def slot_weights(stacks: tuple[torch.Tensor, ...], dtype: torch.dtype) -> torch.Tensor:
    """[L, in, slices x out]: slot l's matrices of every slice side by side, transposed for
    `inputs @`; from vLLM's [L, 1, out, in] buffers (A: out is the rank; B: in is)."""
    slots, features = stacks[0].shape[0], stacks[0].shape[-1]
    flat = [stack.reshape(slots, stack.shape[-2], features).to(dtype) for stack in stacks]
    return (flat[0] if len(flat) == 1 else torch.cat(flat, 1)).transpose(1, 2)


_LAYOUTS = Derived[tuple[int, ...], torch.Tensor]()


def layout(
    stacks: tuple[torch.Tensor, ...], kind: Hashable, build: Callable[[], torch.Tensor]
) -> torch.Tensor:
    """The layout `build` makes of these vLLM buffers, one per kind, rebuilt when any buffer
    was written since (a tensor's version counter counts every in-place write: vLLM loading
    or clearing a slot)."""
    key = tuple(stack._version for stack in stacks)
    return _LAYOUTS.get(stacks[0], (len(stacks), kind), key, build)


def weights_of(stacks: tuple[torch.Tensor, ...], dtype: torch.dtype) -> torch.Tensor:
    """slot_weights of these buffers: a view where no copy is needed, else a kept copy."""
    return layout(stacks, dtype, lambda: slot_weights(stacks, dtype))


def every_slot_shrinks(stacks: tuple[torch.Tensor, ...], dtype: torch.dtype) -> torch.Tensor:
    """[in, slices x L x r]: every slot's A of the first slice, then of the next."""
    features = stacks[0].shape[-1]

    def build() -> torch.Tensor:
        return torch.cat([stack.reshape(-1, features) for stack in stacks]).to(dtype).T

    return layout(stacks, (dtype, "every slot"), build)


def every_slot_expands(stack: torch.Tensor, dtype: torch.dtype, width: int) -> torch.Tensor:
    """[L x r, width]: every slot's B (of one slice), transposed and stacked."""

    def build() -> torch.Tensor:
        return weights_of((stack,), dtype)[..., :width].reshape(-1, width)

    return layout((stack,), (dtype, "every slot", width), build)


def shrink_every_slot(
    inputs: torch.Tensor, stacks: tuple[torch.Tensor, ...], slots: RowSlots
) -> torch.Tensor:
    """[rows, slices, L x r]: for slice i, row t's inputs @ A_i of its slot in that slot's
    block of r columns, and zeros in the others (in all of them for a row without an
    adapter)."""
    count, rank = stacks[0].shape[0], stacks[0].shape[-2]
    every = (inputs @ every_slot_shrinks(stacks, inputs.dtype)).view(
        inputs.shape[0], -1, count, rank
    )
    return (every * slots.spread(count, inputs.dtype)).flatten(2)


def shrink(inputs: torch.Tensor, weights: torch.Tensor, slots: RowSlots) -> torch.Tensor:
    """Row t: inputs[t] @ weights[slot of t], and zero for rows without an adapter (weights
    as slot_weights makes them)."""
    rows, width = inputs.shape[0], weights.shape[-1]
    if slots.shared is not None:
        if slots.shared < 0:
            return inputs.new_zeros((rows, width))
        return inputs @ weights[slots.shared]
    if slots.indices.numel() != rows:
        raise ValueError(f"{slots.indices.numel()} LoRA indices for {rows} rows")
    shrunk = inputs.new_zeros((rows, width))
    for slot, members in slots.segments:
        shrunk[members] = inputs[members] @ weights[slot]
    return shrunk


def expand(
    target: torch.Tensor,
    shrunk: torch.Tensor,
    weights: torch.Tensor,
    slots: RowSlots,
    scale: float = 1.0,
) -> None:
    """Row t of target += scale * shrunk[t] @ weights[slot of t], in place (nothing for rows
    without an adapter)."""
    if slots.shared is not None:
        if slots.shared >= 0:
            accumulate(target, shrunk, weights[slots.shared], scale)
        return
    for slot, members in slots.segments:
        if isinstance(members, slice):
            accumulate(target[members], shrunk[members], weights[slot], scale)
        else:  # a gather and a scatter (index_add_ is 3x slower in bfloat16)
            target[members] += scale * (shrunk[members] @ weights[slot]).to(target.dtype)


def accumulate(
    target: torch.Tensor, inputs: torch.Tensor, weights: torch.Tensor, scale: float
) -> None:
    """target += scale * inputs @ weights, in place: one addmm_ where the dtypes agree."""
    if target.dtype == inputs.dtype:
        target.addmm_(inputs, weights, alpha=scale)
    else:
        target.add_(inputs @ weights, alpha=scale)


def bgmv_shrink(
    inputs: torch.Tensor,
    lora_a_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    scaling: float = 1.0,
) -> None:
    """As vllm.lora.ops.torch_ops.bgmv_shrink."""
    dtype = output_tensor.dtype
    weights = weights_of((lora_a_weights,), dtype)
    shrunk = shrink(inputs.to(dtype), weights, RowSlots(lora_indices_tensor))
    output_tensor[:, : shrunk.shape[1]] = scaling * shrunk


def bgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    add_inputs: bool = True,
) -> None:
    """As vllm.lora.ops.torch_ops.bgmv_expand (the adapter and the model may pad their
    output dimensions differently: the common ones are written)."""
    width = min(lora_b_weights.shape[-2], output_tensor.shape[1])
    bgmv_expand_slice(
        inputs, lora_b_weights, output_tensor, lora_indices_tensor, 0, width, add_inputs
    )


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
    dtype = output_tensor.dtype
    target = output_tensor[:, slice_offset : slice_offset + slice_size]
    if not add_inputs:
        target.zero_()
    weights = weights_of((lora_b_weights,), dtype)[..., :slice_size]
    expand(target, inputs.to(dtype), weights, RowSlots(lora_indices_tensor))


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
    scale) @ B_i.T with each row's adapter. A few rows are multiplied in float32, more in y's
    dtype (the reference shrinks in float32 and expands in y's dtype)."""
    slots = step_slots(wrapper)
    if slots.shared is not None and slots.shared < 0:
        return  # no adapter in the batch
    out = y.view(-1, y.shape[-1])
    dtype = torch.float32 if slots.few else out.dtype
    rows = x.view(-1, x.shape[-1]).to(dtype)
    dense = slots.shared is None and slots.dense(lora_a_stacked[0].shape[0])
    if dense:
        shrunk = shrink_every_slot(rows, lora_a_stacked, slots)
    else:
        shrunk = shrink(rows, weights_of(lora_a_stacked, dtype), slots)
    rank, offset = lora_a_stacked[0].shape[-2], 0
    for number, (lora_b, size) in enumerate(zip(lora_b_stacked, output_slices, strict=True)):
        width = min(size, lora_b.shape[-2])  # the adapter may pad its output differently
        target = out[:, offset : offset + width]
        offset += size
        if dense:
            accumulate(target, shrunk[:, number], every_slot_expands(lora_b, dtype, width), scale)
        else:
            part = shrunk[:, number * rank : (number + 1) * rank]
            expand(target, part, weights_of((lora_b,), dtype)[..., :width], slots, scale)


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
