"""What the drift monitor reads of a capture."""

from service.capture.drift import captured_prompt
from service.capture.model import Capture


def captured(request) -> Capture:
    return Capture(
        id="cap-1", tenant="acme", target="acme/bot", adapter_version="acme/bot@1",
        request=request, answer="4", finish_reason="stop", prompt_tokens=3,
        completion_tokens=1, latency_seconds=0.1, redacted={}, created=1.0, expires=2.0,
    )  # fmt: skip


def test_a_captured_prompt_is_read_as_a_training_rows_prompt():
    chat = captured(
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": "4"},
                      {"role": "user", "content": "And 3+3?"}]}
    )  # fmt: skip
    assert captured_prompt(chat) == "2+2?\nAnd 3+3?"
    assert captured_prompt(captured({"prompt": "2+2="})) == "2+2="
