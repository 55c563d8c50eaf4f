import json

import numpy as np
from safetensors.numpy import save_file

from trainer.fingerprint import ModelFingerprint, fingerprint


def make_checkpoint(path, template_in_jinja: bool):
    path.mkdir()
    save_file(
        {"a": np.zeros((3, 4), np.float32), "b": np.ones(5, np.float32)}, path / "model.safetensors"
    )
    (path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    if template_in_jinja:
        (path / "chat_template.jinja").write_text("{{ messages }}")
    else:
        (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    return path


def test_fingerprint_counts_parameters_and_hashes_template_wherever_it_lives(tmp_path):
    jinja = fingerprint(make_checkpoint(tmp_path / "a", template_in_jinja=True))
    config = fingerprint(make_checkpoint(tmp_path / "b", template_in_jinja=False))
    assert jinja.parameters == 17
    assert jinja.architecture == "LlamaForCausalLM"
    assert jinja == config  # same bytes, same template text
    assert ModelFingerprint.from_json(jinja.to_json()) == jinja


def test_fingerprint_changes_with_the_weights(tmp_path):
    path = make_checkpoint(tmp_path / "a", template_in_jinja=True)
    before = fingerprint(path)
    save_file(
        {"a": np.ones((3, 4), np.float32), "b": np.ones(5, np.float32)}, path / "model.safetensors"
    )
    after = fingerprint(path)
    assert after.weights_sha256 != before.weights_sha256
    assert after.chat_template_sha256 == before.chat_template_sha256
