import json
import re

import pytest

from trainer.config import TrainConfigError, load_config

BASE = {
    "base_model": "/models/m",
    "output_dir": "/out",
    "data": {"datasets": [{"path": "d.jsonl"}]},
}


def test_defaults_are_the_documented_recipe():
    config = load_config(BASE)
    assert (config.lora.rank, config.lora.alpha, config.lora.target_modules) == (
        16,
        32.0,
        "all-linear",
    )
    assert config.quantization.mode == "auto"
    assert config.data.policy == "reject"


def test_every_problem_is_reported_with_field_value_and_range():
    with pytest.raises(TrainConfigError) as caught:
        load_config({**BASE, "lora": {"rank": 0, "dropout": 1.5},
                     "training": {"learning_rate": -1, "warmup_ratio": 0.9, "bogus": 1}})  # fmt: skip
    message = str(caught.value)
    for expected in (
        "lora.rank = 0: Input should be greater than or equal to 1",
        "lora.dropout = 1.5: Input should be less than 1",
        "training.learning_rate = -1: Input should be greater than 0",
        "training.warmup_ratio = 0.9: Input should be less than or equal to 0.5",
        "training.bogus: unknown field",
    ):
        assert expected in message


def test_what_the_server_cannot_hot_load_is_refused_at_config_time():
    with pytest.raises(
        TrainConfigError, match=r"lora.rank = 32: above the server's max_lora_rank 16"
    ):
        load_config({**BASE, "lora": {"rank": 32}})
    assert load_config({**BASE, "lora": {"rank": 32}, "serving_max_lora_rank": 32}).lora.rank == 32
    with pytest.raises(
        TrainConfigError, match=r"lora.modules_to_save = \['lm_head'\]: .*plain LoRA"
    ):
        load_config({**BASE, "lora": {"modules_to_save": ["lm_head"]}})
    with pytest.raises(TrainConfigError, match=r"added_tokens = \['<x>'\]"):
        load_config({**BASE, "added_tokens": ["<x>"]})


def test_eval_file_and_fraction_are_exclusive():
    data = {"datasets": [{"path": "d"}], "eval_file": "e", "eval_fraction": 0.1}
    with pytest.raises(TrainConfigError, match="eval_file or eval_fraction, not both"):
        load_config({**BASE, "data": data})


@pytest.mark.parametrize(
    ("training", "field"),
    [
        ({"select": "best"}, "training.select"),
        ({"early_stopping_patience": 2}, "training.early_stopping_patience"),
    ],
)
def test_settings_that_need_eval_data_are_refused_without_it(training, field):
    with pytest.raises(TrainConfigError, match=f"{field}.*needs eval data"):
        load_config({**BASE, "training": training})
    with_eval = {**BASE, "data": {**BASE["data"], "eval_fraction": 0.1}, "training": training}
    load_config(with_eval)


def test_a_refused_value_is_shown_shortened_in_the_message():
    from pydantic import BaseModel, ValidationError

    from trainer.config import describe_validation_error

    class Model(BaseModel):
        n: int

    try:
        Model.model_validate({"n": "x" * 100_000})
    except ValidationError as exc:
        (line,) = describe_validation_error(exc)
    assert line.startswith("n = 'xxx") and "... (100002 characters)" in line and len(line) < 300


def test_each_device_needs_a_whole_micro_batch_of_every_step():
    with pytest.raises(
        TrainConfigError, match=r"training.devices = 4: .*gradient_accumulation >= 4 \(it is 2\)"
    ):
        load_config({**BASE, "training": {"devices": 4, "gradient_accumulation": 2}})
    config = load_config({**BASE, "training": {"devices": 2, "gradient_accumulation": 2}})
    assert config.training.devices == 2
    assert load_config(BASE).training.devices == 1


PARENT = {"r": 8, "lora_alpha": 16, "use_rslora": False,
          "target_modules": ["v_proj", "q_proj"], "lora_dropout": 0.0}  # fmt: skip


def test_a_warm_start_takes_its_parents_lora_shape():
    from trainer.config import warm_lora

    assert warm_lora(None, PARENT, "acme/bot@1") == {
        "rank": 8, "alpha": 16, "use_rslora": False, "target_modules": ["q_proj", "v_proj"]
    }  # fmt: skip
    same = {"rank": 8, "target_modules": ["q_proj", "v_proj"], "dropout": 0.1}
    assert warm_lora(same, PARENT, "acme/bot@1")["dropout"] == 0.1  # not part of the weights
    with pytest.raises(TrainConfigError) as caught:
        warm_lora({"rank": 16.0, "alpha": 32, "target_modules": "all-linear"}, PARENT, "acme/bot@1")
    problems = str(caught.value).split("; ")
    assert [p.split(" ")[0] for p in problems] == ["lora.alpha", "lora.rank", "lora.target_modules"]
    assert problems[1].startswith("lora.rank = 16: acme/bot@1 was trained with 8")
    # peft saves "all-linear" expanded; the parent's own job asked for it: the same shape
    same_ask = warm_lora({"target_modules": "all-linear"}, PARENT, "acme/bot@1", "all-linear")
    assert same_ask["target_modules"] == ["q_proj", "v_proj"]
    with pytest.raises(TrainConfigError, match=r"lora\.target_modules"):
        warm_lora({"target_modules": ["q_proj", 1]}, PARENT, "acme/bot@1")
    with pytest.raises(TrainConfigError, match=r"lora\.surprise"):
        warm_lora({"surprise": 1}, PARENT, "acme/bot@1")


def test_dpo_is_opt_in_and_a_datasets_format_must_fit_the_method():
    assert (load_config(BASE).training.method, load_config(BASE).training.beta) == ("sft", 0.1)
    dpo = {**BASE, "training": {"method": "dpo", "beta": 0.25}}
    assert load_config(dpo).training.beta == 0.25
    preference = {"datasets": [{"path": "d.jsonl"}, {"path": "p.jsonl", "format": "preference"}]}
    with pytest.raises(TrainConfigError) as caught:
        load_config({**BASE, "data": preference})
    assert str(caught.value) == (
        "data.datasets[1].format = 'preference': training.method 'sft' trains on "
        "conversations, not preferences"
    )
    chat = {"datasets": [{"path": "d.jsonl", "format": "messages"}]}
    with pytest.raises(TrainConfigError, match=r"datasets\[0\].format = 'messages'.*'dpo'"):
        load_config({**dpo, "data": chat})
    with pytest.raises(TrainConfigError, match=r"training.packing = 'on': DPO weighs"):
        load_config({**BASE, "training": {"method": "dpo", "packing": "on"}})
    with pytest.raises(TrainConfigError, match=r"training\.beta = 0"):
        load_config({**BASE, "training": {"method": "dpo", "beta": 0}})
    ipo = {**BASE, "training": {"method": "dpo", "preference_loss": "ipo"}}
    assert load_config(ipo).training.preference_loss == "ipo"
    with pytest.raises(TrainConfigError, match=r"preference_loss = 'ipo' is for training\.method"):
        load_config({**BASE, "training": {"preference_loss": "ipo"}})


def test_a_curriculum_gives_stages_instead_of_datasets_each_with_its_own_epochs():
    stages = {"stages": [
        {"name": "general", "datasets": [{"path": "g.jsonl"}], "epochs": 2},
        {"name": "format", "datasets": [{"path": "f.jsonl"}, {"path": "p.jsonl",
                                                              "format": "messages"}]},
    ]}  # fmt: skip
    data = load_config({**BASE, "data": stages, "training": {"method": "sft"}}).data
    assert [(s.field, s.stage, s.spec.path.name) for s in data.sources()] == [
        ("stages[0].datasets[0]", 0, "g.jsonl"),
        ("stages[1].datasets[0]", 1, "f.jsonl"),
        ("stages[1].datasets[1]", 1, "p.jsonl"),
    ]
    for data, message in [
        ({**stages, "datasets": [{"path": "d.jsonl"}]}, "give the training files, or data.stages"),
        ({"datasets": []}, "data.datasets: give the training files"),
        ({"stages": [stages["stages"][0]] * 2}, "data.stages: names must differ"),
        ({"stages": [{"name": "Bad Name", "datasets": [{"path": "g.jsonl"}]}]},
         "data.stages.0.name = 'Bad Name'"),
    ]:  # fmt: skip
        with pytest.raises(TrainConfigError, match=re.escape(message)):
            load_config({**BASE, "data": data})
    with pytest.raises(TrainConfigError, match=r"training\.epochs: with data\.stages each stage"):
        load_config({**BASE, "data": stages, "training": {"epochs": 3}})
    with pytest.raises(TrainConfigError, match=re.escape("data.stages[1].datasets[1].format")):
        load_config({**BASE, "data": stages, "training": {"method": "dpo"}})


def test_a_config_the_server_wrote_in_full_loads_again_in_the_trainer():
    # The server validates a job's config and writes every field for the trainer, defaults too.
    for data, training in [
        (BASE["data"], {}),
        (BASE["data"], {"method": "dpo", "preference_loss": "ipo"}),
        ({"stages": [{"name": "general", "datasets": [{"path": "g.jsonl"}]}]}, {}),
    ]:
        config = load_config({**BASE, "data": data, "training": training})
        assert load_config(json.loads(config.model_dump_json())) == config
