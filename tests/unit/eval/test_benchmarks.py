"""Task loading (restricted, data files confined and checked) and lm-eval's results parsed."""

import json

import pytest

from eval.benchmarks import (
    BUNDLED_TASKS,
    BenchmarkError,
    TaskScore,
    load_task,
    parse_results,
    run_tasks,
)


def test_bundled_tasks_load_with_their_data_files_resolved():
    config = load_task("adapterd_gsm8k", [BUNDLED_TASKS])
    data = config["dataset_kwargs"]["data_files"]["test"]
    assert data == str(BUNDLED_TASKS / "gsm8k_heldout.jsonl")


@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        ("task: t\ndataset_path: json\n", "dataset_kwargs.data_files must map splits"),
        ("task: t\ndataset_path: gsm8k\n", "dataset_path = .gsm8k.: Input should be .json."),
        ("task: t\ndataset_path: json\ndataset_kwargs: {data_files: {test: gone.jsonl}}\n",
         "data_files.test: gone.jsonl does not exist"),
        ("task: t\ndataset_path: json\ndataset_kwargs: {data_files: {test: ../x.jsonl}}\n",
         "data_files.test"),
        ("task: t\nprocess_docs: !function utils.x\n", "YAML tag"),
    ],
)  # fmt: skip
def test_a_task_that_cannot_run_is_refused_naming_it(tmp_path, yaml, message):
    (tmp_path / "t.yaml").write_text(yaml)
    with pytest.raises(BenchmarkError, match=message):
        load_task("t", [tmp_path])


def test_an_unknown_task_lists_the_known_ones(tmp_path):
    with pytest.raises(BenchmarkError, match="'nope' is unknown; known tasks: adapterd_arith_mc"):
        load_task("nope", [tmp_path, BUNDLED_TASKS])


def test_results_keep_metric_filter_and_stderr():
    results = {
        "gen": {"alias": "gen", "exact_match,strict-match": 0.25,
                "exact_match_stderr,strict-match": 0.1, "exact_match,flexible-extract": 0.5,
                "exact_match_stderr,flexible-extract": "N/A"},
        "mc": {"acc,none": 0.75, "acc_stderr,none": 0.05},
    }  # fmt: skip
    assert parse_results(results) == [
        TaskScore("gen", "exact_match,flexible-extract", 0.5, None),
        TaskScore("gen", "exact_match,strict-match", 0.25, 0.1),
        TaskScore("mc", "acc", 0.75, 0.05),
    ]


def test_lm_evals_stock_gsm8k_runs_sandboxed_with_its_filters_in_re2(tmp_path, tokenizer):
    from eval.lm import EngineLM, EngineReply
    from eval.sandbox import SANDBOX
    from tests.unit.eval.test_taskyaml import STOCK_GSM8K

    rows = [
        {"question": f"What is {n} + {n}?", "answer": f"{n} + {n} = {2 * n}\n#### {2 * n}"}
        for n in range(1, 9)
    ]
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "gsm8k.yaml").write_text(STOCK_GSM8K)
    prompts: list[str] = []

    def batch(calls):
        # Right for the first four questions only; every prompt carries 5 shots.
        out = []
        for call in calls:
            text = tokenizer.decode(call.prompt_ids)
            prompts.append(text)
            n = int(text.rsplit("What is ", 1)[1].split(" ")[0])
            out.append(EngineReply(text=f" so #### {2 * n if n <= 4 else 0}", prompt_logprobs=()))
        return out

    lm = EngineLM(batch, tokenizer, 2048, "scripted")
    scores = run_tasks(
        lm, [load_task("gsm8k", [tmp_path])], limit=None, num_fewshot=None, seed=0,
        chat_template=False,
    )  # fmt: skip
    by_metric = {s.metric: s.value for s in scores}
    assert by_metric["exact_match,strict-match"] == 0.5
    assert all(p.count("Question: ") == 6 for p in prompts)  # 5 shots and the question
    import lm_eval.filters.extraction
    import lm_eval.utils
    import re2

    assert lm_eval.utils.env is SANDBOX and lm_eval.filters.extraction.re is re2


def test_a_run_starts_no_program(tmp_path, tokenizer, monkeypatch):
    # lm-eval's environment report runs `pip list` and more: a second of a core per run.
    import subprocess

    from eval.lm import EngineLM, EngineReply

    def refuse(*args, **kwargs):
        raise AssertionError(f"lm-eval started a program: {args[0]!r}")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    lm = EngineLM(
        lambda calls: [EngineReply("", tuple((-1.0, True) for _ in c.prompt_ids)) for c in calls],
        tokenizer, 1024, "scripted",
    )  # fmt: skip
    scores = run_tasks(
        lm, [load_task("adapterd_arith_mc", [BUNDLED_TASKS])], limit=8, num_fewshot=None,
        seed=0, chat_template=False,
    )  # fmt: skip
    assert {s.metric for s in scores} >= {"acc"}
