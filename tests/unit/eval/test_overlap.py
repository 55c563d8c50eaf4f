import pytest

from eval.overlap import ngrams, overlap

TRAIN = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
    "in May. How many clips did Natalia sell altogether in April and May?",
]


def test_an_item_that_repeats_thirteen_training_words_is_contaminated_whatever_its_case():
    evaluation = [
        "NATALIA sold clips to 48 of her friends in April -- and then she sold half as many!",
        "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of it.",
        "She sold half as many clips",  # too short to hold a 13-gram
    ]
    report = overlap(TRAIN, evaluation)
    assert (report.items, report.contaminated, report.examples) == (3, 1, [0])
    assert report.rate == pytest.approx(1 / 3)


def test_a_smaller_n_finds_shorter_shared_spans():
    assert overlap(TRAIN, ["she sold half as many clips"], n=5).contaminated == 1
    assert overlap(TRAIN, ["she sold half as many clips"], n=13).contaminated == 0


def test_ngrams_normalize_punctuation_and_case():
    assert list(ngrams("A, b! C", 2)) == [("a", "b"), ("b", "c")]
    assert list(ngrams("one two", 3)) == []


def test_bad_n_and_empty_sets():
    with pytest.raises(ValueError, match="at least 1"):
        overlap(TRAIN, ["x"], n=0)
    assert overlap([], []).rate == 0.0
