import pytest

from service.basemodel import resolve_base_model
from service.errors import ConfigError


def test_unknown_name_names_the_flag_and_the_registered_models(tmp_path):
    with pytest.raises(ConfigError, match=r"--base-model 'nope'.*smollm2-135m-instruct"):
        resolve_base_model("nope", tmp_path)


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"has no config\.json"):
        resolve_base_model(str(tmp_path), tmp_path)


def test_directory_without_safetensors_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"no \*\.safetensors"):
        resolve_base_model(str(tmp_path), tmp_path)


def test_hub_id_without_network_fails_with_a_clear_message(tmp_path):
    # HF_HUB_OFFLINE=1 (conftest) stands for "no network", as on these machines.
    with pytest.raises(ConfigError, match=r"--base-model 'org/some-model'.*without a network"):
        resolve_base_model("org/some-model", tmp_path)


def test_registered_model_resolves_to_a_checkpoint_with_its_fingerprint(default_model):
    assert (default_model.path / "config.json").is_file()
    assert default_model.fingerprint.architecture == "LlamaForCausalLM"
    assert default_model.fingerprint.parameters == 134_515_008
    assert len(default_model.fingerprint.weights_sha256) == 64
