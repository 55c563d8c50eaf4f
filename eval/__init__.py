"""adapterd's evaluation: lm-eval benchmarks, JSON-schema adherence, win rate, gates."""
