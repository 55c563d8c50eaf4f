"""Every refusal of an adapter directory, on a real peft adapter for the tiny model."""

import hashlib
import json
import shutil

import pytest

from service.adapters.checks import AdapterLimits, check_adapter
from service.basemodel import lora_target_modules
from service.errors import InvalidArgumentError, NotFoundError
from tests.support import adapter_limits


@pytest.fixture
def root(tmp_path, tiny_adapter):
    root = tmp_path / "adapters"
    shutil.copytree(tiny_adapter, root / "good")
    return root


@pytest.fixture
def limits(root, tiny_model_dir):
    return adapter_limits(root, tiny_model_dir, max_bytes=10 * 2**20)


def edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_the_base_models_linear_layers_are_the_allowed_targets(tiny_model_dir):
    assert lora_target_modules(tiny_model_dir) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    }  # fmt: skip


def test_targets_named_by_full_module_path_pass(root, limits):
    config = root / "good" / "adapter_config.json"
    edit_json(
        config, target_modules=["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.up_proj"]
    )
    assert check_adapter("good", limits).rank == 8


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
