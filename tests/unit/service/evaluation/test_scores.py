"""Scores: the trainer's losses read for the kept adapter, and the cache per adapter version."""

import math

from eval.spec import SchemaSpec
from service.evaluation.scores import ScoreCache, Scores, percentile, trainer_losses


def test_the_trainers_losses_are_read_for_the_adapter_that_was_kept():
    metrics = {"train_loss": 0.9, "final_eval_loss": 1.2, "best_eval_loss": 1.0}
    best = trainer_losses({**metrics, "selected": "best"})
    assert best == {"train_loss": 0.9, "eval_loss": 1.0, "eval_perplexity": math.exp(1.0)}
    assert trainer_losses({**metrics, "selected": "last"})["eval_loss"] == 1.2
    assert trainer_losses({"train_loss": 0.5, "final_eval_loss": None}) == {"train_loss": 0.5}


def test_the_cache_keeps_bundled_sections_and_forgets_the_oldest():
    cache = ScoreCache(size=2)
    bundled = SchemaSpec()
    keys = [ScoreCache.key("schema", f"bot@{n}", bundled) for n in range(3)]
    for n, key in enumerate(keys):
        cache.put(key, Scores(values={"schema_valid_rate": n / 10}))
    assert cache.get(keys[0]) is None  # the oldest went
    assert cache.get(keys[2]).values == {"schema_valid_rate": 0.2}
    # A section that reads files by a server path is never cached: they may change.
    assert (
        ScoreCache.key("schema", "bot@1", SchemaSpec(prompts="p.jsonl", schema_file="s.json"))
        is None
    )


def test_percentiles_of_one_and_of_many():
    assert percentile([0.3], 95) == 0.3
    assert percentile([float(n) for n in range(1, 101)], 50) == 50.5
