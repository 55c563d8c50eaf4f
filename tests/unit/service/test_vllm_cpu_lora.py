"""The grouped CPU LoRA ops give what vLLM's reference ops give (with -1 meaning no adapter),
and replace them."""

import pytest
import torch
from vllm.lora.ops.torch_ops import lora_ops as reference

from service.inference import vllm_cpu_lora as grouped

T, H, R, OUT, L = 24, 64, 8, 96, 3


@pytest.fixture
def tensors():
    torch.manual_seed(0)
    return {
        "x": torch.randn(T, H, dtype=torch.bfloat16),
        "a": torch.randn(L, 1, R, H, dtype=torch.bfloat16),
        "b": torch.randn(L, 1, OUT, R, dtype=torch.bfloat16),
        "mixed": torch.tensor([0, 2, -1, 1] * (T // 4)),  # -1: vLLM's "no adapter"
        "runs": torch.tensor([0] * 8 + [2] * 8 + [-1] * 4 + [1] * 4),  # a prefill's requests
        "one": torch.full((T,), 1),
    }


# Every slot at once; per run or per adapter because the slots, or the rows, are too many.
PATHS = {"dense": (8, 64), "per adapter": (1, 64), "long batch": (8, 0)}


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    slots, rows = PATHS[request.param]
    monkeypatch.setattr(grouped, "DENSE_MAX_SLOTS", slots)
    monkeypatch.setattr(grouped, "FEW_ROWS", rows)


@pytest.mark.parametrize("indices", ["mixed", "runs", "one"])
@pytest.mark.usefixtures("path")
def test_shrink_and_expand_match_the_reference(tensors, indices):
    x, a, b, idx = tensors["x"], tensors["a"], tensors["b"], tensors[indices]
    # The reference, given an empty slot for "no adapter" (every slot of a, b holds one).
    ref_a = torch.cat([a, torch.zeros_like(a[:1])])
    ref_idx = torch.where(idx < 0, L, idx)
    want, got = torch.zeros(T, R), torch.zeros(T, R)
    reference.bgmv_shrink(x, ref_a, want, ref_idx, 0.5)
    grouped.bgmv_shrink(x, a, got, idx, 0.5)
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)
    for add in (False, True):
        want_out = torch.ones(T, OUT, dtype=torch.bfloat16)
        got_out = torch.ones(T, OUT, dtype=torch.bfloat16)
        reference.bgmv_expand(want, b, want_out, idx, add)
        grouped.bgmv_expand(want, b, got_out, idx, add)
        torch.testing.assert_close(got_out, want_out, rtol=2e-2, atol=2e-2)
        want_out, got_out = torch.zeros(T, OUT + 8), torch.zeros(T, OUT + 8)
        reference.bgmv_expand_slice(want, b, want_out, idx, 4, OUT, add)
        grouped.bgmv_expand_slice(want, b, got_out, idx, 4, OUT, add)
        torch.testing.assert_close(got_out, want_out, rtol=2e-2, atol=2e-2)


def test_rows_without_an_adapter_get_no_delta_when_every_slot_is_taken(tensors):
    # The reference would apply the last slot's adapter to them.
    x, a, idx = tensors["x"], tensors["a"], tensors["mixed"]
    got = torch.full((T, R), 7.0)
    grouped.bgmv_shrink(x, a, got, idx, 1.0)
    assert torch.count_nonzero(got[idx < 0]) == 0 and torch.count_nonzero(got[idx >= 0]) > 0
    none = torch.full((T, R), 7.0)
    grouped.bgmv_shrink(x, a, none, torch.full((T,), -1), 1.0)
    assert torch.count_nonzero(none) == 0
    stale = torch.zeros(T, R)
    reference.bgmv_shrink(x, a, stale, idx, 1.0)
    assert torch.count_nonzero(stale[idx < 0]) > 0  # what vLLM's own CPU path does


def test_one_index_applies_to_every_row_as_the_reference_broadcasts_it(tensors):
    x, a = tensors["x"], tensors["a"]
    want, got = torch.zeros(T, R), torch.zeros(T, R)
    reference.bgmv_shrink(x, a, want, torch.tensor([2]), 1.0)
    grouped.bgmv_shrink(x, a, got, torch.tensor([2]), 1.0)
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)


def _wrapper(indices: torch.Tensor):
    """vLLM's CPU Punica wrapper with `indices` as its batch's per-token slots."""
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    wrapper = PunicaWrapperCPU(max_num_batched_tokens=T, max_batches=T, device="cpu")
    wrapper._token_lora_indices[: indices.numel()].copy_(indices)
    wrapper.indices_len[:] = [indices.numel()] * 4
    wrapper._update_prefill_metadata(wrapper.token_lora_indices)
    wrapper.is_prefill = True  # as vLLM's V1 runner always sets it
    return wrapper


# The model's dtype: float32 agrees to float32's rounding; in bfloat16 the shrink rounds once
# where the reference's rounds to float32 and then to bfloat16 (about 2 of bfloat16's 8 bits).
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("dtype", TOLERANCE)
@pytest.mark.parametrize("indices", ["mixed", "runs", "one", "none"])
@pytest.mark.usefixtures("path")
def test_add_lora_linear_matches_the_wrappers_own_over_every_slice(tensors, indices, dtype):
    # q, k, v as three slices of one output, as vLLM stacks a fused projection.
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    slices = (OUT, 32, 16)
    torch.manual_seed(1)
    x = tensors["x"].to(dtype)
    a = tuple(torch.randn(L, 1, R, H, dtype=dtype) / H**0.5 for _ in slices)
    b = tuple(torch.randn(L, 1, size, R, dtype=dtype) / R**0.5 for size in slices)
    idx = {**tensors, "none": torch.full((T,), -1)}[indices]
    # The reference, with an empty slot for "no adapter" (as above).
    ref_a = tuple(torch.cat([w, torch.zeros_like(w[:1])]) for w in a)
    ref_b = tuple(torch.cat([w, torch.zeros_like(w[:1])]) for w in b)
    want = torch.ones(T, sum(slices), dtype=dtype)
    got = want.clone()
    reference_wrapper = _wrapper(torch.where(idx < 0, L, idx))
    PunicaWrapperCPU.add_lora_linear(reference_wrapper, want, x, ref_a, ref_b, 0.5, slices)
    grouped.add_lora_linear(_wrapper(idx), got, x, a, b, 0.5, slices)
    torch.testing.assert_close(got, want, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])
    assert torch.equal(got[idx < 0], torch.ones_like(got[idx < 0]))  # no adapter, no delta


def test_the_rows_slots_are_read_once_per_step_and_again_when_vllm_writes_the_next(tensors):
    wrapper = _wrapper(tensors["one"])
    first = grouped.step_slots(wrapper)
    assert grouped.step_slots(wrapper) is first and first.shared == 1
    wrapper._token_lora_indices[:T].copy_(tensors["mixed"])  # as update_metadata does
    after = grouped.step_slots(wrapper)
    assert after is not first and after.shared is None
    assert torch.equal(after.indices, tensors["mixed"])


def test_the_weights_layouts_follow_every_write_to_vllms_buffers(tensors):
    a = tuple(tensors["a"].float().clone() for _ in range(2))  # two slices, as q and k
    b = tensors["b"].float().clone()
    f32 = torch.float32

    def check():
        for s in range(L):  # one slot's matrices, transposed, slice beside slice
            assert torch.equal(grouped.weights_of(a, f32)[s], torch.cat([a[0][s, 0], a[1][s, 0]]).T)
            assert torch.equal(grouped.weights_of((b,), f32)[s], b[s, 0].T)
        every = torch.cat([a[0][:, 0], a[1][:, 0]]).reshape(-1, H).T  # slice after slice
        assert torch.equal(grouped.every_slot_shrinks(a, f32), every)
        every = torch.cat([b[s, 0, :40].T for s in range(L)])  # stacked, the first 40 outputs
        assert torch.equal(grouped.every_slot_expands(b, f32, 40), every)

    check()
    b[1, 0, :4].copy_(torch.zeros(4, R))  # how vLLM loads an adapter into a slot
    a[1][1, 0].copy_(torch.ones(R, H))
    check()
    b[2] = 0  # and how it clears one
    a[0][2] = 0
    check()


def test_register_replaces_the_ops_where_the_cpu_wrapper_looks_them_up(monkeypatch):
    from vllm.lora.punica_wrapper import punica_cpu

    wrapper = punica_cpu.PunicaWrapperCPU
    monkeypatch.setattr(wrapper, "add_lora_linear", wrapper.add_lora_linear)
    for name in grouped.REPLACEMENTS:
        monkeypatch.setattr(reference, name, getattr(reference, name))
        monkeypatch.setattr(punica_cpu, name, getattr(punica_cpu, name))
    grouped.register()
    assert punica_cpu.bgmv_shrink is grouped.bgmv_shrink
    assert reference.bgmv_expand_slice is grouped.bgmv_expand_slice
    assert punica_cpu.PunicaWrapperCPU.add_lora_linear is grouped.add_lora_linear


def test_the_derived_values_tell_equal_tensors_apart_follow_their_key_and_forget_dead_ones():
    cache = grouped.Derived[int, str]()
    first, second = torch.zeros(3), torch.zeros(3)
    assert cache.get(first, "bf16", 0, lambda: "first") == "first"
    assert cache.get(second, "bf16", 0, lambda: "second") == "second"
    assert cache.get(first, "fp32", 0, lambda: "first fp32") == "first fp32"  # kept apart
    assert cache.get(first, "bf16", 0, lambda: "rebuilt") == "first"
    assert cache.get(first, "bf16", 1, lambda: "rebuilt") == "rebuilt"  # the key moved
    assert cache.get(first, "fp32", 0, lambda: "rebuilt") == "first fp32"
    del first
    assert len(cache._entries) == 1
