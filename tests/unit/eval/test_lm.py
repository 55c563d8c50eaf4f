"""EngineLM: lm-eval requests to engine calls and back, with a scripted batch function."""

from lm_eval.api.instance import Instance

from eval.lm import EngineCall, EngineLM, EngineReply


def instance(kind, *args):
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


class Recorder:
    """A batch function that records calls and answers each prompt token with logprob -i/10
    (i its position), the last token not being the most likely one."""

    def __init__(self):
        self.calls: list[EngineCall] = []

    def __call__(self, calls):
        self.calls += calls
        return [
            EngineReply(
                text="forty-two",
                prompt_logprobs=tuple(
                    (-i / 10, i != len(c.prompt_ids) - 1) for i in range(len(c.prompt_ids))
                ),
            )
            for c in calls
        ]


def test_a_pair_is_encoded_as_lm_evals_hf_backend_does(tokenizer):
    lm = EngineLM(Recorder(), tokenizer, max_length=64, name="t")
    context, continuation = lm.encode_pair("Question: 2+2?\nAnswer: ", "4")
    # The trailing space moves to the continuation, and the whole is what the parts make.
    assert tokenizer.decode(continuation) == " 4"
    whole = tokenizer("Question: 2+2?\nAnswer: 4", add_special_tokens=False)["input_ids"]
    assert context + continuation == whole
    assert lm.encode_pair("", "hi")[0] == [tokenizer.bos_token_id or tokenizer.eos_token_id]


def test_loglikelihood_sums_the_continuation_tokens_and_reports_greediness(tokenizer):
    batch = Recorder()
    lm = EngineLM(batch, tokenizer, max_length=64, name="t")
    ((logprob, greedy),) = lm.loglikelihood(
        [instance("loglikelihood", "The sky is", " blue today")]
    )
    call = batch.calls[0]
    n = len(call.prompt_ids)
    continuation = lm.encode_pair("The sky is", " blue today")[1]
    expected = sum(-i / 10 for i in range(n - len(continuation), n))
    assert logprob == expected and greedy is False  # the last token was not the top one
    assert call.prompt_logprobs and call.max_tokens == 1


def test_long_contexts_are_cut_from_the_left_and_generation_keeps_its_stops(tokenizer):
    batch = Recorder()
    lm = EngineLM(batch, tokenizer, max_length=16, name="t")
    lm.loglikelihood([instance("loglikelihood", "word " * 40, "end")])
    assert len(batch.calls[0].prompt_ids) == 15  # room for the one generated token
    texts = lm.generate_until(
        [instance("generate_until", "word " * 40, {"until": ["\n\n"], "max_gen_toks": 6})]
    )
    assert texts == ["forty-two"]
    call = batch.calls[1]
    assert call.stop == ("\n\n",) and call.max_tokens == 6 and len(call.prompt_ids) == 10


def test_rolling_loglikelihood_covers_every_token_once(tokenizer):
    batch = Recorder()
    lm = EngineLM(batch, tokenizer, max_length=8, name="t")
    text = "one two three four five six seven eight nine ten eleven twelve"
    (total,) = lm.loglikelihood_rolling([instance("loglikelihood_rolling", text)])
    tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert len(batch.calls) > 1  # several windows
    assert total < 0 and sum(1 for _ in batch.calls) >= tokens // 7
