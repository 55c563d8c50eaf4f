"""Serving on the real vLLM engine (tiny model, shared `server`): adapters hot-loaded,
unloaded and aliased while requests flow; streaming; refusals; per-adapter metrics."""

import json
import shutil
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from adapterd.v1 import inference_pb2
from service.client.api import Client
from service.client.cli import main
from tests.support import (
    ADMIN_TOKEN,
    DEPLOY,
    USER_TOKEN,
    assert_promtool_accepts,
    kustomize,
    make_adapter,
)

PROMPTS = ["The capital of France is", "1, 2, 3, 4,", "Once upon a time"]


@pytest.fixture(scope="module")
def admin(server):
    with Client(server.target, ADMIN_TOKEN, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def user(server):
    with Client(server.target, USER_TOKEN, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def adapter_dirs(server, tiny_model_dir, tiny_adapter):
    """Under the server's adapter root: two random adapters (seeds 1 and 2), and three that
    must be refused (another base model, rank 32 above the limit 16, a pickle file)."""
    root = server.data_dir / "adapters"
    shutil.copytree(tiny_adapter, root / "one")
    make_adapter(root / "two", tiny_model_dir, seed=2)
    shutil.copytree(tiny_adapter, root / "wrong-base")
    manifest = root / "wrong-base" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"weights_sha256": "', '"weights_sha256": "0'))
    make_adapter(root / "rank-32", tiny_model_dir, seed=3, rank=32)
    shutil.copytree(tiny_adapter, root / "pickled")
    (root / "pickled" / "adapter_model.bin").write_bytes(b"\x80\x04N.")
    return root


def request(prompt, adapter="", max_tokens=8, **fields):
    return inference_pb2.GenerateRequest(
        adapter=adapter,
        prompt=prompt,
        sampling=inference_pb2.SamplingParams(temperature=0.0, max_tokens=max_tokens),
        **fields,
    )


def code_of(call):
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


# How far a log-probability may move when a request is batched with others: vLLM promises no
# bitwise batch invariance on the CPU (a batch of another shape takes other matmul kernels and
# accumulation orders), so scores agree to the dtype's rounding, not to the bit.
BATCHING_TOLERANCE = {"bfloat16": 0.03, "float32": 1e-3}


def largest_gap(scores, others):
    """The largest difference between two equally long lists of log-probabilities."""
    return max(abs(a - b) for a, b in zip(scores, others, strict=True))


def test_concurrent_requests_for_base_and_two_adapters_score_as_each_alone(admin, adapter_dirs):
    """Mixing the base and two adapters in one batch (prefill through the CPU LoRA plugin's
    mixed path) changes no request's log-probabilities beyond rounding, on either kind of CPU.
    Greedy text is not compared: where two tokens tie within that rounding, batching may pick
    the other (seen with emulated bf16 on an Ice Lake Xeon; measured on an Emerald Rapids guest,
    fp32 products of 9 rows and of 1 row differ by 1.7e-7 relative, bf16 ones not at all)."""
    admin.load_adapter("one", "one")
    admin.load_adapter("two", "two")
    jobs = [(prompt, adapter) for prompt in PROMPTS for adapter in ("", "one", "two")]

    def score(job):
        reply = admin.generate(request(*job, max_tokens=1, prompt_logprobs=True))
        return [t.logprob for t in reply.prompt_tokens]

    alone = {job: score(job) for job in jobs}
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = dict(zip(jobs, pool.map(score, jobs), strict=True))
    tolerance = BATCHING_TOLERANCE[admin.server_info().machine.engine.dtype]
    for job in jobs:
        assert len(together[job]) == len(alone[job]) > 3
        moved = largest_gap(together[job], alone[job])
        assert moved <= tolerance, (job, moved)
    for prompt in PROMPTS:  # the adapters really differ: mixing them up would show
        scores = [alone[(prompt, adapter)] for adapter in ("", "one", "two")]
        gaps = [largest_gap(scores[i], scores[j]) for i, j in [(0, 1), (0, 2), (1, 2)]]
        assert min(gaps) > 3 * tolerance, (prompt, gaps)


def test_the_reply_names_the_version_that_answered(admin, adapter_dirs):
    reply = admin.generate(request(PROMPTS[0], "one"))
    assert reply.adapter_version.startswith("ops/one@")  # the admin's own tenant
    assert reply.usage.completion_tokens == len(reply.token_ids) == 8
    assert reply.finish_reason == inference_pb2.FINISH_REASON_LENGTH
    assert admin.generate(request(PROMPTS[0])).adapter_version == ""


def test_streaming_deltas_add_up_to_the_unary_answer(admin, adapter_dirs):
    deltas = list(admin.generate_stream(request(PROMPTS[1], "one", max_tokens=12)))
    unary = admin.generate(request(PROMPTS[1], "one", max_tokens=12))
    assert len(deltas) > 1
    assert "".join(d.text for d in deltas) == unary.text
    assert [t for d in deltas for t in d.token_ids] == list(unary.token_ids)
    assert deltas[-1].usage.completion_tokens == 12
    assert deltas[-1].finish_reason == inference_pb2.FINISH_REASON_LENGTH
    assert all(d.finish_reason == inference_pb2.FINISH_REASON_UNSPECIFIED for d in deltas[:-1])


def test_load_unload_and_reload_without_a_restart(admin, adapter_dirs):
    first = admin.load_adapter("cycle", "one")
    answer = admin.generate(request(PROMPTS[2], "cycle")).text
    assert admin.unload_adapter("cycle") == [first.ref]
    code, details = code_of(lambda: admin.generate(request(PROMPTS[2], "cycle")))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "cycle" in details
    second = admin.load_adapter("cycle", "one")
    assert (first.version, second.version) == (1, 2)  # never reused
    assert admin.generate(request(PROMPTS[2], "cycle")).text == answer
    admin.unload_adapter("cycle")


def test_an_alias_switch_under_32_streams_fails_no_request(admin, adapter_dirs):
    old = admin.load_adapter("switch", "one")
    new = admin.load_adapter("switch", "two")
    admin.set_alias("live", old.ref)
    started = threading.Barrier(33)

    def stream(i):
        if i < 32:
            started.wait()
        deltas = list(admin.generate_stream(request(PROMPTS[i % 3], "live", max_tokens=24)))
        return deltas[-1].adapter_version, sum(len(d.token_ids) for d in deltas)

    with ThreadPoolExecutor(32) as pool:
        running = [pool.submit(stream, i) for i in range(32)]
        started.wait()
        assert admin.set_alias("live", new.ref).previous == old.ref
        results = [f.result() for f in running]
    assert all(tokens == 24 for _, tokens in results)
    assert {version for version, _ in results} <= {old.ref, new.ref}
    assert admin.generate(request(PROMPTS[0], "live")).adapter_version == new.ref
    listed = {a.ref: a for a in admin.list_adapters().adapters}
    assert listed[new.ref].aliases == ["ops/live"]
    assert listed[new.ref].pinned


@pytest.mark.parametrize(
    ("path", "code", "message"),
    [
        ("../server.log", grpc.StatusCode.INVALID_ARGUMENT, "contains '..'"),
        ("/etc", grpc.StatusCode.INVALID_ARGUMENT, "is absolute"),
        ("nowhere", grpc.StatusCode.NOT_FOUND, "nothing at"),
        ("wrong-base", grpc.StatusCode.INVALID_ARGUMENT, "trained on a different base model"),
        ("rank-32", grpc.StatusCode.INVALID_ARGUMENT, "rank 32 is above"),
        ("pickled", grpc.StatusCode.INVALID_ARGUMENT, "is a pickle file"),
    ],
)
def test_unsafe_or_unfit_adapters_are_refused_and_nothing_is_loaded(
    admin, adapter_dirs, path, code, message
):
    before = admin.list_adapters().adapters
    got, details = code_of(lambda: admin.load_adapter("refused", path))
    assert got == code
    assert message in details
    assert admin.list_adapters().adapters == before


def test_unknown_adapters_are_not_found_and_users_cannot_manage_adapters(user, adapter_dirs):
    code, details = code_of(lambda: user.generate(request(PROMPTS[0], "no-such-adapter")))
    assert (code, "acme/no-such-adapter" in details) == (grpc.StatusCode.NOT_FOUND, True)
    code, _ = code_of(lambda: user.load_adapter("mine", "one"))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert user.generate(request(PROMPTS[0])).usage.completion_tokens == 8


def test_bad_sampling_values_are_invalid_arguments_naming_the_field(user):
    bad = request(PROMPTS[0])
    bad.sampling.temperature = -1
    code, details = code_of(lambda: user.generate(bad))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "sampling.temperature = -1.0" in details
    code, details = code_of(lambda: user.generate(request(PROMPTS[0], json_schema="{not json")))
    assert (code, "json_schema" in details) == (grpc.StatusCode.INVALID_ARGUMENT, True)
    code, details = code_of(lambda: user.generate(request(PROMPTS[0] * 400, max_tokens=8)))
    assert (code, "max_model_len" in details) == (grpc.StatusCode.INVALID_ARGUMENT, True)


def test_prompt_logprobs_cover_every_prompt_token_and_depend_on_the_adapter(admin, adapter_dirs):
    base = admin.generate(request(PROMPTS[0], max_tokens=1, prompt_logprobs=True))
    tuned = admin.generate(request(PROMPTS[0], "one", max_tokens=1, prompt_logprobs=True))
    assert len(base.prompt_tokens) == base.usage.prompt_tokens > 3
    assert [t.token_id for t in base.prompt_tokens] == [t.token_id for t in tuned.prompt_tokens]
    assert base.prompt_tokens[0].logprob == 0.0
    assert all(t.logprob <= 0.0 for t in base.prompt_tokens)
    assert [t.logprob for t in base.prompt_tokens] != [t.logprob for t in tuned.prompt_tokens]


def test_the_metrics_page_has_per_adapter_series_and_passes_promtool(server, admin, adapter_dirs):
    admin.generate(request(PROMPTS[0], "one"))
    page = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    for series in (
        'adapterd_time_to_first_token_seconds_count{adapter="ops/one"}',
        'adapterd_inter_token_latency_seconds_count{adapter="ops/one"}',
        'adapterd_generation_duration_seconds_count{adapter="base"}',
        'adapterd_generation_requests_total{adapter="ops/one",outcome="ok"}',
        'adapterd_generated_tokens_total{adapter="ops/one"}',
        'adapterd_adapter_loads_total{reason="register"}',
        'adapterd_adapters{tier="engine"}',
        "adapterd_engine_running_requests",
    ):
        assert series in page, series
    assert "@" not in "".join(line for line in page.splitlines() if "adapter=" in line)
    assert "vllm:" not in page
    assert_promtool_accepts(page)


def test_the_endpoint_pickers_metrics_show_the_adapter_version_running(server, admin, adapter_dirs):
    # What deploy/overlays/inference-pool tells the Inference Extension's endpoint picker to
    # read (queue, running batch, KV cache, LoRA info) is on the page; while a stream through
    # an adapter runs, the LoRA info series lists its version, with vLLM's labels.
    config = kustomize(DEPLOY / "overlays/inference-pool")[("ConfigMap", "adapterd-epp")]
    (extractor,) = [plugin for plugin in yaml.safe_load(config["data"]["config.yaml"])["plugins"]
                    if plugin["type"] == "core-metrics-extractor"]  # fmt: skip
    (engine,) = extractor["parameters"]["engineConfigs"]
    long = inference_pb2.GenerateRequest(adapter="one", prompt=PROMPTS[2],
        sampling=inference_pb2.SamplingParams(max_tokens=48, ignore_eos=True))  # fmt: skip
    version, running, page = "", [], ""
    for delta in admin.generate_stream(long):
        version = version or delta.adapter_version
        if not version or version not in running:  # scraped until a step shows the request
            page = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
            families = {f.name: f for f in text_string_to_metric_families(page)}
            # The newest series, as the picker takes it (a scrape may fall between two steps).
            info = max(families["adapterd_lora_requests_info"].samples, key=lambda s: s.value)
            running = info.labels["running_lora_adapters"].split(",")
    assert version.startswith("ops/one@") and version in running
    assert info.labels["max_lora"] == "4"  # the session server's --max-loras
    assert abs(info.value - time.time()) < 60  # the step's wall-clock time, as vLLM's
    for spec in ("queuedRequestsSpec", "runningRequestsSpec", "kvUsageSpec", "loraSpec"):
        assert engine[spec] in families, spec
    assert_promtool_accepts(page)


def test_adapterctl_loads_lists_aliases_and_generates(server, adapter_dirs, capsys):
    def ctl(*args):
        code = main(["--target", server.target, "--token", ADMIN_TOKEN, "--timeout", "120", *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, _ = ctl("--output", "json", "adapters", "load", "cli-bot", "one")
    assert code == 0
    assert json.loads(out)["ref"] == "ops/cli-bot@1"
    assert ctl("adapters", "alias", "cli-live", "cli-bot@1")[0] == 0
    code, out, _ = ctl("adapters", "list")
    row = next(line for line in out.splitlines() if line.startswith("ops/cli-bot@1"))
    assert row.split()[1:5] == ["ready", "engine", "8", "yes"]
    assert row.endswith("cli-live")
    code, out, err = ctl("generate", "--adapter", "cli-live", "--max-tokens", "5", "--raw", "Hi")
    expected = Client(server.target, ADMIN_TOKEN).generate(request("Hi", "cli-bot@1", 5)).text
    assert (code, out.rstrip("\n"), err.strip()) == (0, expected, "[answered by ops/cli-bot@1]")
    code, _, err = ctl("adapters", "load", "Bad Name", "one")
    assert code == 1
    assert err.startswith("adapterctl: INVALID_ARGUMENT: name: 'Bad Name' is not a valid name")
    assert ctl("adapters", "alias", "cli-live")[0] == 0
    assert ctl("adapters", "unload", "cli-bot")[1].split() == ["ops/cli-bot@1"]


def test_past_the_engine_capacity_the_lru_adapter_is_evicted_and_reloads_on_request(
    server, admin, adapter_dirs
):
    from adapterd.v1 import adapters_pb2

    def reloads():
        page = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
        line = next(
            (
                x
                for x in page.splitlines()
                if x.startswith('adapterd_adapter_loads_total{reason="reload"}')
            ),
            "0 0",
        )
        return float(line.split()[-1])

    listing = admin.list_adapters()
    capacity = listing.engine_capacity
    resident = sum(a.residency == adapters_pb2.RESIDENCY_ENGINE for a in listing.adapters)
    names = [f"fill-{i}" for i in range(capacity - resident + 2)]
    for name in names:
        admin.load_adapter(name, "one")  # same weights as "one"
    listing = admin.list_adapters()
    residency = {a.ref: a.residency for a in listing.adapters}
    assert sum(r == adapters_pb2.RESIDENCY_ENGINE for r in residency.values()) == capacity
    evicted = sorted(ref for ref, r in residency.items() if r == adapters_pb2.RESIDENCY_DISK)
    assert len(evicted) >= 2
    before = reloads()
    reply = admin.generate(request(PROMPTS[0], evicted[0]))
    assert reply.adapter_version == evicted[0]
    assert reloads() == before + 1
    after = {a.ref: a.residency for a in admin.list_adapters().adapters}
    assert after[evicted[0]] == adapters_pb2.RESIDENCY_ENGINE
    assert sum(r == adapters_pb2.RESIDENCY_ENGINE for r in after.values()) == capacity
    for name in names:
        admin.unload_adapter(name)
