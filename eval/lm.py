"""An lm-eval `LM` over a running engine: benchmarks score through the engine that serves.

lm-eval calls `loglikelihood`, `loglikelihood_rolling` and `generate_until` with all of a task's
requests at once; `EngineLM` turns each into token ids the way lm-eval's own HF backend does
(so scores match it) and hands them to a batch function, which runs them on the engine
concurrently and returns in order. Log-likelihoods come from the engine's prompt
log-probabilities: the context and continuation go in as one prompt, and the continuation's
tokens' log-probabilities are summed. No engine code here: the batch function is the seam.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lm_eval.api.instance import Instance
from lm_eval.api.model import LM
from lm_eval.utils import get_rolling_token_windows

DEFAULT_MAX_GEN_TOKENS = 256


@dataclass(frozen=True)
class EngineCall:
    """One request to the engine."""

    prompt_ids: tuple[int, ...]
    max_tokens: int
    stop: tuple[str, ...] = ()
    prompt_logprobs: bool = False


@dataclass(frozen=True)
class EngineReply:
    """The engine's answer to an EngineCall."""

    text: str
    prompt_logprobs: tuple[tuple[float, bool], ...] = ()
    """Per prompt token: log P(token | before), and whether it was the most likely token."""


Batch = Callable[[Sequence[EngineCall]], list[EngineReply]]
"""Runs calls on the engine; returns one reply per call, in order."""


class EngineLM(LM):  # type: ignore[misc]
    """lm-eval's model interface over `batch`, with the served model's tokenizer."""

    def __init__(self, batch: Batch, tokenizer: Any, max_length: int, name: str) -> None:
        super().__init__()
        self._batch = batch
        self._tokenizer = tokenizer
        self._max_length = max_length
        self._name = name
        prefix = tokenizer.bos_token_id
        self._prefix_id = tokenizer.eos_token_id if prefix is None else prefix

    @property
    def tokenizer_name(self) -> str:
        """Keys lm-eval's chat-template cache."""
        return self._name

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """The model's own chat template, as in training and serving."""
        return str(
            self._tokenizer.apply_chat_template(
                chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        )

    def _encode(self, text: str) -> list[int]:
        return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation ids as lm-eval's HF backend makes them: trailing spaces of
        the context move to the continuation, and the continuation is what the whole adds to
        the context's tokens. An empty context is the prefix token."""
        if not context:
            return [self._prefix_id], self._encode(continuation)
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self._encode(context + continuation)
        context_ids = self._encode(context)
        return context_ids, whole[len(context_ids) :]

    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """Sum of the continuation's log-probabilities and whether greedy decoding would
        produce it, per (context, continuation); contexts are cut from the left to fit."""
        calls = []
        for context, continuation in pairs:
            prompt = (context + continuation)[-(self._max_length - 1) :]
            calls.append(EngineCall(tuple(prompt), max_tokens=1, prompt_logprobs=True))
        results = []
        for (_, continuation), reply in zip(pairs, self._batch(calls), strict=True):
            tail = reply.prompt_logprobs[-len(continuation) :] if continuation else ()
            results.append((sum(lp for lp, _ in tail), all(top for _, top in tail)))
        return results

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        return self._score([self.encode_pair(*r.args) for r in requests])

    def loglikelihood_rolling(self, requests: list[Instance]) -> list[float]:
        windows: list[tuple[list[int], list[int]]] = []
        owners: list[int] = []
        for index, request in enumerate(requests):
            for context, continuation in get_rolling_token_windows(
                token_list=self._encode(request.args[0]),
                prefix_token=self._prefix_id,
                max_seq_len=self._max_length - 1,
                context_len=1,
            ):
                windows.append((list(context), list(continuation)))
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._score(windows), strict=True):
            totals[owner] += logprob
        return totals

    def generate_until(self, requests: list[Instance]) -> list[str]:
        calls = []
        for request in requests:
            context, settings = request.args
            max_tokens = int(settings.get("max_gen_toks", DEFAULT_MAX_GEN_TOKENS))
            until = settings.get("until") or []
            stop = (until,) if isinstance(until, str) else tuple(until)
            prompt = self._encode(context)[-(self._max_length - max_tokens) :]
            calls.append(EngineCall(tuple(prompt), max_tokens=max_tokens, stop=stop))
        return [reply.text for reply in self._batch(calls)]
