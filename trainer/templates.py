"""Chat templates adapterd ships, chosen by name for a deployment (`--chat-template`).

"model" is the base model's own template. "chatml_tools" is a ChatML template that renders tools
the Hermes way (function signatures in `<tools>` in the system message, calls as
`<tool_call>{"name": ..., "arguments": ...}</tool_call>` in the assistant's message, results as
`tool` messages in `<tool_response>`), for base models whose template has no tools (SmolLM2).
The template chosen is part of the base model's fingerprint (`chat_template_sha256`), so an
adapter trained under one template is refused by a server that renders another.
Tool definitions render as given (transformers' `tojson` does not escape '<'): like a chat's
messages, a chat's tools are its own client's prompt, and names are checked (`trainer.tools`).
"""

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from trainer.fingerprint import ModelFingerprint
from trainer.masking import render_probe

ChatTemplate = Literal["model", "chatml_tools"]
MODEL: ChatTemplate = "model"

CHATML_TOOLS = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    'arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{"name": '
    '<function-name>, "arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n\' }}'
    "{%- elif messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' and loop.first %}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' + (message.content or '') }}"
    "{%- for call in message.tool_calls or [] %}"
    "{%- if message.content or not loop.first %}{{- '\\n' }}{%- endif %}"
    '{{- \'<tool_call>\\n{"name": "\' + call.function.name + \'", "arguments": \' '
    "+ (call.function.arguments | tojson) + '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{{- '<|im_start|>tool\\n<tool_response>\\n' + message.content "
    "+ '\\n</tool_response><|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
"""Hermes-style ChatML with tools; without tools it renders plain ChatML."""

SHIPPED: dict[str, str] = {"chatml_tools": CHATML_TOOLS}


def with_template(fp: ModelFingerprint, name: ChatTemplate) -> ModelFingerprint:
    """The fingerprint of the base model as served under the template `name`."""
    if name == MODEL:
        return fp
    return replace(fp, chat_template_sha256=hashlib.sha256(SHIPPED[name].encode()).hexdigest())


HERMES_PROBE = '<tool_call>\n{"name": "adapterd_probe", "arguments": {"a": 1}}\n</tool_call>'


def renders_hermes_calls(tokenizer: Any) -> bool:
    """Whether the tokenizer's template renders tools and an assistant's call as the Hermes
    block `trainer.tools.parse_generated` reads back (as `CHATML_TOOLS` does): what serving
    tools needs, beyond a template that renders them some other way (enough for training)."""
    call = {"type": "function", "function": {"name": "adapterd_probe", "arguments": {"a": 1}}}
    tool = {"type": "function", "function": {"name": "adapterd_probe", "parameters": {}}}
    messages = [
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
    ]
    text = render_probe(tokenizer, messages, [tool])
    return HERMES_PROBE in text and '"adapterd_probe"' in text.split(HERMES_PROBE)[0]


def load_tokenizer(model_dir: Path, name: ChatTemplate) -> Any:
    """The checkpoint's tokenizer, rendering chats with the template `name` (what the trainer
    and the server both render with).

    Raises:
        OSError: when `model_dir` holds no tokenizer.
    """
    from transformers import AutoTokenizer  # takes seconds: only when a tokenizer is needed

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if name != MODEL:
        tokenizer.chat_template = SHIPPED[name]
    return tokenizer
