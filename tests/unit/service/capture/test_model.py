"""Capture policies, feedback checks, redaction of captures and feedback, and the rows an
export makes of them."""

import json

import pytest

from service.capture.model import (
    Capture,
    CapturePolicy,
    ExportFormat,
    Feedback,
    check_feedback,
    check_policy,
    export_rows,
    issued_at,
    new_request_id,
    policy_for,
    redact_capture,
    redact_feedback,
)
from service.errors import InvalidArgumentError
from trainer.formats import normalize

POLICIES = {
    ("acme", "acme/bot"): CapturePolicy("acme", "acme/bot", 1.0, 3600.0, 0.0),
    ("acme", "shared/base"): CapturePolicy("acme", "shared/base", 0.5, 3600.0, 0.0),
}


@pytest.mark.parametrize(
    ("tenant", "requested", "target"),
    [
        ("acme", "acme/bot", "acme/bot"),
        ("acme", "acme/bot@3", "acme/bot"),  # every version of the name
        ("acme", "shared/base@1", "shared/base"),
        ("globex", "acme/bot", None),  # another tenant's policy never covers its requests
        ("acme", "acme/other", None),
        ("acme", "", None),  # the base model
    ],
)
def test_a_policy_covers_its_tenants_requests_for_any_version_of_its_target(
    tenant, requested, target
):
    policy = policy_for(POLICIES, tenant, requested)
    assert (policy.target if policy else None) == target


@pytest.mark.parametrize(
    ("rate", "retention", "field"),
    [(0.0, 3600, "rate"), (1.5, 3600, "rate"), (0.5, 59, "retention_seconds"),
     (0.5, 367 * 86400, "retention_seconds")],
)  # fmt: skip
def test_a_policy_out_of_range_names_its_field(rate, retention, field):
    with pytest.raises(InvalidArgumentError, match=f"^{field}: "):
        check_policy(rate, retention)
    check_policy(1.0, 60)


@pytest.mark.parametrize(
    ("feedback", "words"),
    [
        (Feedback(6, False, "", None, 0), "score: 6 must be 1 to 5"),
        (Feedback(None, False, "", None, 0), "give a rating, a flag or a correction"),
        (Feedback(3, False, "why", None, 0), "flag_reason: given without flagged"),
        (Feedback(None, True, "x" * 1001, None, 0), "flag_reason: longer than 1000"),
        (Feedback(None, False, "", "", 0), "correction: must be 1 to"),
    ],
)
def test_feedback_that_says_nothing_or_too_much_is_refused(feedback, words):
    with pytest.raises(InvalidArgumentError, match=words):
        check_feedback(feedback)


def captured(request, answer, feedback=None, redacted=None) -> Capture:
    return Capture(
        id="cap-1", tenant="acme", target="acme/bot", adapter_version="acme/bot@1",
        request=request, answer=answer, finish_reason="stop", prompt_tokens=3,
        completion_tokens=2, latency_seconds=0.1, redacted=redacted or {}, created=1.0,
        expires=2.0, feedback=feedback,
    )  # fmt: skip


def test_redaction_replaces_personal_data_in_every_message_the_prompt_and_the_answer():
    chat = captured(
        {"messages": [{"role": "system", "content": "Reply to ann@example.com."},
                      {"role": "user", "content": "Call +44 20 7946 0958 or bob@example.org"}],
         "sampling": {"max_tokens": 4}, "json_schema": None},
        "Card 4111 1111 1111 1111 from 192.168.0.1",
    )  # fmt: skip
    redacted = redact_capture(chat)
    text = json.dumps([redacted.request, redacted.answer])
    assert "example" not in text and "4111" not in text and "192.168" not in text
    assert redacted.request["messages"][1]["content"] == "Call [PHONE] or [EMAIL]"
    assert redacted.answer == "Card [CARD] from [IP]"
    assert redacted.redacted == {"card": 1, "email": 2, "ip": 1, "phone": 1}
    assert redacted.request["sampling"] == {"max_tokens": 4}
    prompt = redact_capture(captured({"prompt": "Mail x@example.com"}, "ok"))
    assert (prompt.request["prompt"], prompt.redacted) == ("Mail [EMAIL]", {"email": 1})


def test_feedback_is_redacted_and_its_counts_add_to_the_captures():
    chat = captured({"prompt": "hi"}, "ok", redacted={"email": 1})
    feedback = Feedback(None, True, "leaked 123-45-6789", "Write to c@example.com", 5.0)
    result = redact_feedback(feedback, chat)
    assert result.feedback.flag_reason == "leaked [SSN]"
    assert result.feedback.correction == "Write to [EMAIL]"
    assert (result.added, result.total) == ({"ssn": 1, "email": 1}, {"email": 2, "ssn": 1})


CHAT = {"messages": [{"role": "user", "content": "2+2?"}]}


def test_an_sft_export_takes_good_answers_and_corrections_and_skips_the_rest():
    captures = [
        captured(CHAT, "4", Feedback(5, False, "", None, 1.0)),
        captured(CHAT, "5", Feedback(1, True, "wrong", "4, since 2+2=4", 1.0)),
        captured(CHAT, "four", Feedback(3, False, "", None, 1.0)),  # below the bar
        captured(CHAT, "4!", Feedback(5, True, "rude", None, 1.0)),  # flagged, no correction
        captured({"prompt": "2+2="}, "4", Feedback(4, False, "", None, 1.0)),
        captured(CHAT, "4"),  # unrated
    ]
    exported = export_rows(captures, ExportFormat.SFT, min_rating=4, corrections=True)
    assert exported.rows == [
        {"messages": [*CHAT["messages"], {"role": "assistant", "content": "4"}]},
        {"messages": [*CHAT["messages"], {"role": "assistant", "content": "4, since 2+2=4"}]},
        {"prompt": "2+2=", "completion": "4"},
    ]
    assert exported.skipped == 3
    without = export_rows(captures, ExportFormat.SFT, min_rating=4, corrections=False)
    assert len(without.rows) == 2
    again = export_rows(captures * 2, ExportFormat.SFT, min_rating=4, corrections=True)
    assert again.rows == exported.rows  # the same question answered alike: one row
    assert again.skipped == 3 + len(captures)


def test_a_preference_export_pairs_each_correction_over_its_answer():
    captures = [
        captured(CHAT, "5", Feedback(1, True, "wrong", "4", 1.0)),
        captured(CHAT, "4", Feedback(5, False, "", None, 1.0)),
        captured({"prompt": "2+2="}, "5", Feedback(1, False, "", "4", 1.0)),  # no chat
    ]
    exported = export_rows(captures, ExportFormat.PREFERENCE, min_rating=0, corrections=False)
    assert exported.rows == [
        {"prompt": CHAT["messages"], "chosen": [{"role": "assistant", "content": "4"}],
         "rejected": [{"role": "assistant", "content": "5"}]},
    ]  # fmt: skip
    assert exported.skipped == 2


def test_nul_characters_are_stored_as_a_stand_in_everywhere():
    chat = captured(
        {"messages": [{"role": "user", "content": "a\x00b"}],
         "sampling": {"stop": ["\x00"]}, "json_schema": {"k\x00": "v"}},
        "c\x00d",
    )  # fmt: skip
    stored = redact_capture(chat)
    assert "\x00" not in json.dumps([stored.request, stored.answer], ensure_ascii=False)
    assert stored.answer == "c\ufffdd"
    feedback = redact_feedback(Feedback(None, True, "x\x00", "y\x00", 1.0), chat).feedback
    assert (feedback.flag_reason, feedback.correction) == ("x\ufffd", "y\ufffd")


def test_a_request_id_carries_when_it_was_issued():
    issued = new_request_id("chatcmpl", now=1_790_000_000.123)
    assert issued.startswith("chatcmpl-") and len(issued) == len("chatcmpl-") + 27
    assert issued_at(issued) == pytest.approx(1_790_000_000.123, abs=1e-3)
    assert new_request_id("gen") != new_request_id("gen")
    for other in ("gen-abc", "chatcmpl-" + "z" * 27, "cap-1", ""):
        assert issued_at(other) is None


def test_a_chat_that_offered_tools_exports_a_row_that_trains_with_them():
    add = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}
    answer = '<tool_call>\n{"name": "add", "arguments": {"a": 2}}\n</tool_call>'
    chat = {**CHAT, "tools": [add], "tool_choice": "auto"}
    [row] = export_rows(
        [captured(chat, answer, Feedback(5, False, "", None, 1.0))], ExportFormat.SFT, 4, True
    ).rows
    assert row == {"tools": [add], "messages": [*CHAT["messages"],
                                                {"role": "assistant", "content": answer}]}  # fmt: skip
    _, turns, tools = normalize(row, "auto", {})
    assert [t.name for t in tools] == ["add"] and turns[-1].content == answer
