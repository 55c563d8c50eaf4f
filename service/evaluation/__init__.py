"""Evaluations on the serving engine: `Evaluator` runs an evaluation job (`evaluator.py`); the
measurements, the engine access, judge selection, scores, gauges and the report each have a
module of their own."""

from service.evaluation.engine import EvaluationLimits
from service.evaluation.evaluator import Evaluator

__all__ = ["EvaluationLimits", "Evaluator"]
