"""Human evaluation: blinding, the sheet, the ratings file and its errors, the scores and the
agreement with the judge (ratings made up here: the scorer's unit test; the round trip through
the server is in the integration tests)."""

import json
import random

import pytest

from eval.human import (
    KeyEntry,
    Rating,
    blind,
    key_json,
    read_key,
    read_ratings,
    score_human,
    sheet_html,
    sheet_jsonl,
)
from eval.prompts import PromptSetError
from eval.rubric import Conversation
from eval.winrate import Outcome

CONVERSATIONS = [Conversation(({"role": "user", "content": f"Question {i}?"},), f"ref {i}")
                 for i in range(8)]  # fmt: skip


def test_the_sheet_is_blinded_per_item_and_the_key_stays_apart(tmp_path):
    mine, theirs = [f"mine {i}" for i in range(8)], [f"theirs {i}" for i in range(8)]
    items, key = blind(CONVERSATIONS, mine, theirs, [Outcome.WIN] * 8, random.Random(3))
    assert [i.id for i in items] == [f"item-{n:03d}" for n in range(1, 9)]
    firsts = [key[i.id].candidate_first for i in items]
    assert True in firsts and False in firsts  # both orders occur
    for item, first in zip(items, firsts, strict=True):
        assert (item.a.startswith("mine"), item.b.startswith("mine")) == (first, not first)
    assert blind(CONVERSATIONS, mine, theirs, [None] * 8, random.Random(3))[0] == items
    orders = {tuple(k.candidate_first for k in blind(CONVERSATIONS, mine, theirs, [None] * 8)[1]
                    .values()) for _ in range(8)}  # fmt: skip
    assert len(orders) > 1  # the system's randomness: no seed reproduces a sheet
    rows = [json.loads(line) for line in sheet_jsonl(items).splitlines()]
    assert set(rows[0]) == {"item", "conversation", "reference", "a", "b"}
    assert "candidate" not in sheet_jsonl(items) and "mine" not in json.dumps(rows[0]["item"])
    (tmp_path / "key.json").write_text(key_json(key))
    assert read_key(tmp_path / "key.json") == key


def test_the_html_sheet_escapes_answers_and_is_self_contained():
    items, _ = blind(CONVERSATIONS[:1], ["<script>alert(1)</script>"], ["fine"], [None])
    page = sheet_html(items, "job-1 <sheet>")
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)" in page
    assert "job-1 &lt;sheet&gt;" in page and "http" not in page.lower().replace("ndjson", "")
    assert page.count('name="item-001-a"') == 5 and 'value="tie"' in page


def write(tmp_path, *rows):
    path = tmp_path / "ratings.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("{", "ratings.jsonl:2: invalid JSON"),
        ({"item": "item-009", "a": 3, "b": 3}, "ratings.jsonl:2 item: 'item-009' is not an item"),
        ({"item": "item-001", "a": 6, "b": 3}, "ratings.jsonl:2 a: '6' is not 1 to 5"),
        ({"item": "item-001", "a": 3, "b": True}, "ratings.jsonl:2 b: 'True' is not 1 to 5"),
        ({"item": "item-001", "a": 3, "b": 3, "preference": "C"}, "preference: 'C' is not A, B"),
        ({"item": "item-001", "a": 3, "b": 3, "rater": "x" * 65}, "rater: a name of at most 64"),
        ({"item": "item-001", "a": 3, "b": 3, "score": 1}, "unknown fields ['score']"),
    ],
)  # fmt: skip
def test_bad_ratings_name_the_line_and_field(tmp_path, row, message):
    path = write(tmp_path, {"item": "item-001", "a": 4, "b": 2}, row)
    with pytest.raises(PromptSetError) as caught:
        read_ratings(path, {"item-001", "item-002"})
    assert message in str(caught.value)


def test_ratings_are_read_without_a_sheet_for_the_upload_check(tmp_path):
    path = write(tmp_path, {"item": "anything", "a": 5, "b": 1, "preference": "A", "rater": "ann"})
    assert read_ratings(path) == [Rating("anything", 5, 1, "A", "ann")]
    with pytest.raises(PromptSetError, match="no ratings"):
        read_ratings(write(tmp_path, ""))


def test_scores_follow_the_key_and_agreement_compares_preferences_with_the_judge():
    key = {
        "item-001": KeyEntry(candidate_first=True, judged=Outcome.WIN),
        "item-002": KeyEntry(candidate_first=False, judged=Outcome.WIN),
        "item-003": KeyEntry(candidate_first=True, judged=Outcome.LOSS),
        "item-004": KeyEntry(candidate_first=False, judged=None),
    }
    ratings = [
        Rating("item-001", 5, 2, "A", "ann"),  # candidate A: 5, a win; the judge agrees
        Rating("item-002", 1, 4, "B", "ann"),  # candidate B: 4, a win; the judge agrees
        Rating("item-003", 4, 4, "tie", "bob"),  # candidate 4, a tie; the judge said loss
        Rating("item-004", 3, 5, None, "bob"),  # candidate B: 5; no preference
    ]
    report = score_human(ratings, key)
    assert report.candidate.value == pytest.approx(4.5)  # 5, 4, 4, 5
    assert report.baseline.value == pytest.approx(2.5)  # 2, 1, 4, 3
    assert report.win_rate == pytest.approx((1 + 1 + 0.5) / 3)
    assert report.agreement == pytest.approx(2 / 3)
    assert report.kappa is not None and -1 <= report.kappa < 1
    assert (report.ratings, report.raters) == (4, 2)
    own, base = report.values()
    assert own == {"human_score": 4.5, "human_score_lower": report.candidate.lower,
                   "human_win_rate": report.win_rate, "human_judge_agreement": report.agreement}  # fmt: skip
    assert base["human_score"] == pytest.approx(2.5)
    no_preferences = score_human([Rating("item-001", 5, 2, None, "")], key)
    assert no_preferences.values()[0].keys() == {"human_score", "human_score_lower"}
    assert no_preferences.kappa is None
