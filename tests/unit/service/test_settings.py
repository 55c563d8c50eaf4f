import argparse
from pathlib import Path

import pytest

from service.errors import ConfigError
from service.settings import (
    VLLM_LORA_RANKS,
    ClientSettings,
    ServerSettings,
    add_settings_flags,
    flag_name,
    load_settings,
    settings_from_args,
)


def test_defaults_are_valid_and_adapter_root_derives_from_data_dir(tmp_path):
    settings = load_settings(ServerSettings, {"data_dir": str(tmp_path)})
    assert settings.port == 50051
    assert settings.max_lora_rank == 16
    assert settings.resolved_adapter_root == tmp_path / "adapters"
    assert settings.engine_threads >= 1


def test_environment_is_read_and_flags_win(monkeypatch):
    monkeypatch.setenv("ADAPTERD_PORT", "6000")
    monkeypatch.setenv("ADAPTERD_MAX_LORAS", "8")
    settings = load_settings(ServerSettings, {"port": "7000", "max_loras": None})
    assert settings.port == 7000  # the flag
    assert settings.max_loras == 8  # the variable, since the flag was not given


def test_every_problem_is_reported_at_once_with_flag_variable_and_value():
    with pytest.raises(ConfigError) as caught:
        load_settings(
            ServerSettings, {"max_lora_rank": "12", "port": "70000", "drain_grace_seconds": "-1"}
        )
    message = str(caught.value)
    assert "--max-lora-rank (ADAPTERD_MAX_LORA_RANK) = '12'" in message
    assert ", ".join(str(r) for r in VLLM_LORA_RANKS) in message
    assert "--port (ADAPTERD_PORT) = '70000'" in message
    assert "--drain-grace-seconds" in message
    assert "\n" not in message


@pytest.mark.parametrize("rank", VLLM_LORA_RANKS)
def test_every_rank_vllm_accepts_is_accepted(rank):
    assert load_settings(ServerSettings, {"max_lora_rank": rank}).max_lora_rank == rank


def test_engine_threads_cannot_exceed_the_cpus_of_this_process():
    with pytest.raises(ConfigError, match="--engine-threads"):
        load_settings(ServerSettings, {"engine_threads": 10_000})


def test_a_job_lease_must_outlive_the_cancel_grace():
    with pytest.raises(ConfigError, match=r"--job-lease-seconds 10 must be longer than "
                       r"--cancel-grace-seconds 12"):  # fmt: skip
        load_settings(ServerSettings, {"job_lease_seconds": 10, "cancel_grace_seconds": 12})
    settings = load_settings(ServerSettings, {"job_lease_seconds": 13, "cancel_grace_seconds": 12})
    assert settings.job_lease_seconds == 13


def test_the_store_defaults_to_sqlite_in_the_data_dir_and_takes_a_url(tmp_path):
    settings = load_settings(ServerSettings, {"data_dir": str(tmp_path)})
    assert settings.resolved_store_url == f"sqlite:///{tmp_path}/adapterd.db"
    url = "postgresql://bob:hunter2@db/adapterd"
    assert load_settings(ServerSettings, {"store_url": url}).resolved_store_url == url
    assert "hunter2" not in repr(load_settings(ServerSettings, {"store_url": url}))


@pytest.mark.parametrize(
    "url", ["mysql://bob:hunter2@db/x", "bob:hunter2@db", "sqlite://", "sqlite:///"]
)
def test_a_bad_store_url_is_refused_without_showing_it(url):
    with pytest.raises(ConfigError, match=r"--store-url \(ADAPTERD_STORE_URL\): must be") as caught:
        load_settings(ServerSettings, {"store_url": url})
    assert "hunter2" not in str(caught.value)


def test_unknown_log_level_is_refused():
    with pytest.raises(ConfigError, match=r"--log-level \(ADAPTERD_LOG_LEVEL\) = 'loud'"):
        load_settings(ServerSettings, {"log_level": "loud"})


def test_flags_are_generated_for_every_field_with_help_naming_the_variable():
    parser = argparse.ArgumentParser()
    add_settings_flags(parser, ClientSettings)
    help_text = parser.format_help()
    for name in ClientSettings.model_fields:
        assert flag_name(name) in help_text
        assert f"ADAPTERCTL_{name.upper()}" in help_text
    args = parser.parse_args(["--target", "example:1", "--output", "json"])
    settings = settings_from_args(ClientSettings, args)
    assert settings.target == "example:1"
    assert settings.output == "json"
    assert settings.timeout == 30.0


def test_judge_urls_are_name_url_pairs_from_a_flag_or_the_environment(monkeypatch):
    settings = load_settings(
        ServerSettings, {"judge_urls": "gpt=https://api.example/v1/, me=http://h:8000/v1"}
    )
    assert settings.judge_urls == {"gpt": "https://api.example/v1", "me": "http://h:8000/v1"}
    monkeypatch.setenv("ADAPTERD_JUDGE_URLS", "env=http://e/v1")
    assert load_settings(ServerSettings, {}).judge_urls == {"env": "http://e/v1"}
    with pytest.raises(ConfigError, match=r"--judge-urls \(ADAPTERD_JUDGE_URLS\) = 'ftp://x'"):
        load_settings(ServerSettings, {"judge_urls": "ftp://x"})


@pytest.mark.parametrize("model", [ServerSettings, ClientSettings])
def test_the_readme_documents_every_setting_with_its_flag_and_variable(model):
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    prefix = model.model_config["env_prefix"]
    rows = [line for line in readme.splitlines() if line.startswith("| `--")]
    for name in model.model_fields:
        flag, variable = f"`{flag_name(name)}`", f"`{prefix}{name.upper()}`"
        assert any(flag in row and variable in row for row in rows), name
