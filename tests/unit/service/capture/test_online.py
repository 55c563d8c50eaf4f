"""The online quality windows: schema adherence and ratings over the last captures."""

from eval.schema import validator_of
from service.capture.online import OnlineQuality, SchemaOutcome, schema_outcome
from service.metrics import Metrics

V, BAD, N = SchemaOutcome.VALID, SchemaOutcome.INVALID, SchemaOutcome.NOT_JSON


def gauge(metrics: Metrics, adapter: str, metric: str) -> float | None:
    return metrics.registry.get_sample_value(
        "adapterd_online_quality", {"adapter": adapter, "metric": metric}
    )


def test_an_answer_is_valid_invalid_or_no_json():
    validator = validator_of({"type": "object", "required": ["a"]})
    assert [schema_outcome(validator, t) for t in ('{"a": 1}', '{"b": 1}', "a: 1")] == [V, BAD, N]


def test_the_schema_rates_cover_only_the_last_window_of_each_adapter():
    metrics = Metrics()
    online = OnlineQuality(metrics, window=4)
    online.schema_checked("acme/bot", [N, N, BAD, V])
    assert gauge(metrics, "acme/bot", "schema_valid_rate") == 0.25
    assert gauge(metrics, "acme/bot", "schema_parse_rate") == 0.5
    online.schema_checked("acme/bot", [V, V])  # the two oldest leave the window
    assert gauge(metrics, "acme/bot", "schema_valid_rate") == 0.75
    assert gauge(metrics, "acme/bot", "schema_parse_rate") == 1.0
    assert gauge(metrics, "acme/other", "schema_valid_rate") is None


def test_ratings_give_the_mean_and_flags_the_flagged_share():
    metrics = Metrics()
    online = OnlineQuality(metrics, window=3)
    online.feedback_given("acme/bot", 5, False)
    online.feedback_given("acme/bot", None, True)  # a flag without a rating
    online.feedback_given("acme/bot", 2, True)
    assert gauge(metrics, "acme/bot", "mean_rating") == 3.5
    assert gauge(metrics, "acme/bot", "flag_rate") == 2 / 3
    online.feedback_given("acme/bot", 4, False)  # the first leaves the window
    assert gauge(metrics, "acme/bot", "mean_rating") == 3.0
    assert gauge(metrics, "acme/bot", "flag_rate") == 2 / 3
