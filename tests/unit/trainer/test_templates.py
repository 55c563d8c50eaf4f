"""Shipped chat templates: chosen by name, part of the base model's fingerprint."""

import copy
import hashlib

from trainer.fingerprint import ModelFingerprint
from trainer.masking import supports_tools
from trainer.templates import CHATML_TOOLS, MODEL, renders_hermes_calls, with_template


def test_the_template_chosen_is_in_the_fingerprint_adapters_are_checked_against():
    base = ModelFingerprint("w" * 64, "t" * 64, "LlamaForCausalLM", 10)
    assert with_template(base, MODEL) == base
    served = with_template(base, "chatml_tools")
    assert served.weights_sha256 == base.weights_sha256
    assert served.chat_template_sha256 == hashlib.sha256(CHATML_TOOLS.encode()).hexdigest()
    assert served != base


def test_without_tools_chatml_tools_renders_plain_chatml(tools_tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    text = tools_tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
    )


def test_only_a_template_rendering_hermes_blocks_serves_tools(tokenizer, tools_tokenizer):
    assert renders_hermes_calls(tools_tokenizer) and not renders_hermes_calls(tokenizer)
    # A template that renders tools and calls its own way trains them but cannot serve them.
    own_way = copy.copy(tools_tokenizer)
    own_way.chat_template = CHATML_TOOLS.replace("<tool_call>", "[CALL]")
    assert supports_tools(own_way) and not renders_hermes_calls(own_way)
