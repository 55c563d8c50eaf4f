"""Task loading (restricted, data files confined and checked) and lm-eval's results parsed."""

import pytest

from eval.benchmarks import BUNDLED_TASKS, BenchmarkError, TaskScore, load_task, parse_results


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
