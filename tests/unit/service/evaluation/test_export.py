"""The gauges' labels stay bounded whatever tasks clients send."""

from service.evaluation.export import task_labels


def test_task_labels_stay_bounded():
    assert task_labels("adapterd_gsm8k", "exact_match,strict-match") == (
        "adapterd_gsm8k", "exact_match,strict-match"
    )  # fmt: skip
    assert task_labels("my_task", "acc_norm,none") == ("other", "acc_norm")
    assert task_labels("my_task", "rouge_secret") == ("other", "other")
