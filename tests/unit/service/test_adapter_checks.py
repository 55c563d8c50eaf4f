"""Every refusal of an adapter directory, on a real peft adapter for the tiny model."""

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from service.adapters.checks import AdapterLimits, check_adapter
from service.basemodel import linear_layers, lora_target_modules
from service.errors import InvalidArgumentError, NotFoundError
from tests.support import adapter_limits, edit_json, make_lora


@pytest.fixture
def root(tmp_path, tiny_adapter):
    root = tmp_path / "adapters"
    shutil.copytree(tiny_adapter, root / "good")
    return root


@pytest.fixture
def limits(root, tiny_model_dir):
    return adapter_limits(root, tiny_model_dir, max_bytes=10 * 2**20)


def test_the_base_models_linear_layers_are_the_allowed_targets(tiny_model_dir):
    assert lora_target_modules(tiny_model_dir) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    }  # fmt: skip


def test_targets_named_by_full_module_path_pass(root, limits):
    config = root / "good" / "adapter_config.json"
    paths = [
        f"model.layers.{n}.{module}"
        for n in (0, 1)
        for module in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")
    ]
    edit_json(config, target_modules=paths)
    assert check_adapter("good", limits).rank == 8


def test_the_base_models_linear_layers_have_their_shapes(tiny_model_dir):
    layers = linear_layers(tiny_model_dir)
    assert len(layers) == 2 * 7  # two decoder layers, seven projections each; no output head
    assert layers["model.layers.1.self_attn.q_proj"] == (64, 64)  # 2 heads of 32
    assert layers["model.layers.1.self_attn.k_proj"] == (32, 64)  # 1 key-value head
    assert layers["model.layers.0.mlp.down_proj"] == (64, 128)


def edit_tensors(weights, change):
    """Rewrites the weights file with `change` applied to its {name: tensor} dict."""
    tensors = load_file(weights)
    change(tensors)
    save_file(tensors, weights)


Q_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
Q_B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda t: t.update({Q_A: torch.zeros(8, 96)}),
            r"layers\.0\.self_attn\.q_proj: lora_A is \[8, 96\] and lora_B is \[64, 8\]; the base "
            r"model's layer is 64 x 64 \(out x in\), so they must be \[r, 64\] and \[64, r\]",
        ),
        (lambda t: t.pop(Q_B), r"q_proj: lora_A is \[8, 64\] and lora_B is None"),
        (
            lambda t: t.update({Q_A: torch.zeros(4, 64), Q_B: torch.zeros(64, 4)}),
            r"with r one of adapter_config\.json's ranks \[8\]",
        ),
        (
            lambda t: t.update({Q_A.replace("layers.0", "layers.7"): torch.zeros(8, 64)}),
            r"'model\.layers\.7\.self_attn\.q_proj' is not a linear layer of the base model tiny",
        ),
        (
            lambda t: t.update({"base_model.model.lm_head.weight": torch.zeros(4, 4)}),
            r"tensor 'base_model\.model\.lm_head\.weight' is not a LoRA matrix",
        ),
        (
            lambda t: t.update({Q_A.replace("q_proj", "k_proj"): torch.zeros(8, 64)}),
            r"'model\.layers\.0\.self_attn\.k_proj' is not among adapter_config\.json's target",
        ),
        (
            lambda t: t.update({Q_A: torch.zeros(8, 64, dtype=torch.int8)}),
            r"dtype 'I8' is not one of",
        ),
        (lambda t: t.clear(), "holds no LoRA matrices"),
    ],
)
def test_tensors_that_do_not_fit_the_base_models_layers_are_refused(root, limits, change, message):
    edit_tensors(root / "good" / "adapter_model.safetensors", change)
    with pytest.raises(InvalidArgumentError, match=f"adapter_model.safetensors: .*{message}"):
        check_adapter("good", limits)


def test_an_adapter_of_a_wider_model_is_refused_whatever_its_manifest_says(
    root, limits, tmp_path, tiny_model_dir
):
    """Same architecture, same layer names, a claimed base that matches: only the shapes tell
    that it was trained on another model."""
    wider = tmp_path / "wider"
    shutil.copytree(tiny_model_dir, wider)
    edit_json(wider / "config.json", hidden_size=128)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (root / "good" / name).unlink()
    make_lora(root / "good", linear_layers(wider), rank=8)
    refusal = (
        r"layers\.0\.mlp\.down_proj: lora_A is \[8, 128\] and lora_B is \[128, 8\]; "
        r"the base model's layer is 64 x 128"
    )
    with pytest.raises(InvalidArgumentError, match=refusal):
        check_adapter("good", limits)


def test_a_good_adapter_passes_with_its_sha256_and_rank(root, limits):
    checked = check_adapter("good", limits)
    weights = root / "good" / "adapter_model.safetensors"
    assert checked.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert (checked.rank, checked.base_model, checked.path) == (8, "tiny", root / "good")


@pytest.mark.parametrize(
    ("path", "error", "message"),
    [
        ("", InvalidArgumentError, "path: empty"),
        ("/etc", InvalidArgumentError, "'/etc' is absolute"),
        ("good/../../x", InvalidArgumentError, "contains '..'"),
        ("missing", NotFoundError, "nothing at 'missing'"),
    ],
)
def test_paths_outside_the_root_or_missing_are_refused(limits, path, error, message):
    with pytest.raises(error, match=message):
        check_adapter(path, limits)


def test_symlinks_that_lead_out_of_the_root_are_refused(root, limits, tmp_path, tiny_adapter):
    outside = tmp_path / "outside"
    shutil.copytree(tiny_adapter, outside)
    (root / "linked").symlink_to(outside)
    with pytest.raises(InvalidArgumentError, match="'linked' leads outside the server's root"):
        check_adapter("linked", limits)
    weights = root / "good" / "adapter_model.safetensors"
    weights.unlink()
    weights.symlink_to(outside / "adapter_model.safetensors")
    with pytest.raises(InvalidArgumentError, match=r"adapter_model\.safetensors is a symlink"):
        check_adapter("good", limits)


def test_pickle_files_are_refused_even_beside_safetensors(root, limits):
    (root / "good" / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(InvalidArgumentError, match=r"adapter_model.bin is a pickle file"):
        check_adapter("good", limits)


def test_weights_above_the_size_cap_are_refused(root, limits):
    small = AdapterLimits(**{**vars(limits), "max_bytes": 1000})
    with pytest.raises(InvalidArgumentError, match=r"bytes is above the cap of 1000 bytes"):
        check_adapter("good", small)


def test_a_rank_above_the_engines_limit_is_refused(root, limits):
    edit_json(root / "good" / "adapter_config.json", r=32)
    with pytest.raises(
        InvalidArgumentError, match="rank 32 is above the engine's max_lora_rank 16"
    ):
        check_adapter("good", limits)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"target_modules": ["q_proj", "conv1"]}, r"target_modules \['conv1'\] are not linear"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save .* cannot be hot-loaded"),
        ({"peft_type": "IA3"}, "peft_type is 'IA3', not 'LORA'"),
    ],
)
def test_adapter_configs_the_engine_cannot_serve_are_refused(root, limits, changes, message):
    edit_json(root / "good" / "adapter_config.json", **changes)
    with pytest.raises(InvalidArgumentError, match=f"adapter_config.json: {message}"):
        check_adapter("good", limits)


def test_an_adapter_trained_on_another_base_model_is_refused(root, limits):
    manifest = root / "good" / "manifest.json"
    base = json.loads(manifest.read_text())["base_model"]
    edit_json(manifest, base_model={**base, "weights_sha256": "0" * 64})
    with pytest.raises(InvalidArgumentError, match="trained on a different base model"):
        check_adapter("good", limits)
    manifest.unlink()
    with pytest.raises(InvalidArgumentError, match=r"manifest\.json: missing"):
        check_adapter("good", limits)


def test_weights_that_are_not_a_safetensors_file_are_refused(root, limits):
    (root / "good" / "adapter_model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(InvalidArgumentError, match="not a safetensors file"):
        check_adapter("good", limits)
