"""Uploads of every kind on a real SQLite store: checks per kind, ownership, the quota, staging."""

import hashlib
import io
import json
import tarfile

import pytest

from eval.spec import parse_eval_spec
from service.auth import Principal, Role
from service.errors import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from service.uploads import Announced, UploadKind, UploadLimits, UploadService
from tests.unit.eval.test_taskyaml import STOCK_GSM8K

ACME, GLOBEX = Principal("acme", Role.USER), Principal("globex", Role.USER)
ADMIN = Principal("ops", Role.ADMIN)
ROWS = b'{"question": "What is 1 + 1?", "answer": "1 + 1 = 2\\n#### 2"}\n'


@pytest.fixture
def make(tmp_path, store):
    def make(quota=1 << 20, staging="host-1"):
        limits = UploadLimits(
            root=tmp_path / "datasets" / "uploads", data_root=tmp_path / "datasets",
            max_file_bytes=1 << 16, tenant_quota_bytes=quota,
        )  # fmt: skip
        service = UploadService(store=store, limits=limits, staging=staging)
        service.clean_staging()
        return service

    return make


async def send(service, principal, kind, name, data, *, sha=None):
    async def chunks():
        for start in range(0, len(data), 7):
            yield data[start : start + 7]

    header = Announced(kind, name, len(data), sha or hashlib.sha256(data).hexdigest())
    return await service.upload(principal, header, chunks())


def tar_gz(files):
    """A .tar.gz of {name: text or bytes}."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in files.items():
            data = content if isinstance(content, bytes) else content.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


NO_TENSORS = b"\x02\x00\x00\x00\x00\x00\x00\x00{}"
"""A valid safetensors file holding nothing: the tensors are checked on import, not here."""
LORA = json.dumps({"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"]})


def adapter_archive(**changes):
    files = {"adapter_config.json": LORA, "adapter_model.safetensors": NO_TENSORS}
    return tar_gz({k: v for k, v in {**files, **changes}.items() if v is not None})


async def test_an_adapter_archive_is_extracted_and_its_peft_files_checked(make):
    uploads = make()
    data = adapter_archive(**{"README.md": "trained elsewhere"})
    record, _ = await send(uploads, ACME, UploadKind.ADAPTER_ARCHIVE, "mine.tar.gz", data)
    assert record.id.startswith("adapter-") and record.files == 3
    found = await uploads.record_of(ACME, record.id, UploadKind.ADAPTER_ARCHIVE, "upload_id")
    assert found.path.is_dir() and (found.path / "adapter_model.safetensors").is_file()
    assert found.sha256 == hashlib.sha256(data).hexdigest()
    with pytest.raises(NotFoundError, match="upload_id: no adapter_archive upload"):
        await uploads.record_of(GLOBEX, record.id, UploadKind.ADAPTER_ARCHIVE, "upload_id")


async def test_a_task_archive_is_extracted_checked_and_found_only_by_its_tenant(make):
    uploads = make()
    data = tar_gz(
        {"gsm8k.yaml": STOCK_GSM8K, "train.jsonl": ROWS.decode(), "test.jsonl": ROWS.decode()}
    )
    record, total = await send(uploads, ACME, UploadKind.TASK_ARCHIVE, "gsm8k.tgz", data)
    assert record.id.startswith("task-") and record.files == 3
    assert total == record.stored == len(STOCK_GSM8K) + 2 * len(ROWS)
    directory = await uploads.path_of(ACME, record.id, UploadKind.TASK_ARCHIVE, "f")
    assert (directory / "gsm8k.yaml").is_file()
    spec = parse_eval_spec(
        {"benchmarks": {"tasks": ["gsm8k"], "task_upload": record.id}}, training=False
    )
    assert (await uploads.client_files(ACME, spec, "spec")).task_dir == directory
    with pytest.raises(
        NotFoundError, match=r"spec\.benchmarks\.task_upload: no task_archive upload"
    ):
        await uploads.client_files(GLOBEX, spec, "spec")
    with pytest.raises(NotFoundError):  # the right id as another kind is no upload either
        await uploads.path_of(ACME, record.id, UploadKind.PROMPT_SET, "f")
    assert await uploads.path_of(ADMIN, record.id, UploadKind.TASK_ARCHIVE, "f") == directory


@pytest.mark.parametrize(
    ("kind", "name", "data", "message"),
    [
        (UploadKind.TASK_ARCHIVE, "t.tgz", tar_gz({"evil.yaml": "task: x\nclass: os.system\n"}),
         "t.tgz: evil.yaml: class: unknown field"),
        (UploadKind.TASK_ARCHIVE, "t.tgz", tar_gz({"../up.yaml": "task: x\n"}), "'..'"),
        (UploadKind.TASK_ARCHIVE, "t.tgz", tar_gz({"notes.txt": "hi"}), "no task YAML"),
        (UploadKind.TASK_ARCHIVE, "t.tgz", b"not a tarball", "not a readable tar archive"),
        (UploadKind.ADAPTER_ARCHIVE, "a.safetensors", adapter_archive(), "header.file_name"),
        (UploadKind.ADAPTER_ARCHIVE, "a.tgz", adapter_archive(**{"extra/adapter.bin": b"\x80"}),
         r"extra/adapter\.bin is a pickle file"),
        (UploadKind.ADAPTER_ARCHIVE, "a.tgz", adapter_archive(**{"adapter_model.safetensors": None}),
         "adapter_model.safetensors: missing from the archive's top level"),
        (UploadKind.ADAPTER_ARCHIVE, "a.tgz", adapter_archive(**{"adapter_model.safetensors": b"x"}),
         "adapter_model.safetensors: not a safetensors file"),
        (UploadKind.ADAPTER_ARCHIVE, "a.tgz", adapter_archive(**{"adapter_config.json": None}),
         "adapter_config.json: missing"),
        (UploadKind.ADAPTER_ARCHIVE, "a.tgz",
         adapter_archive(**{"adapter_config.json": '{"peft_type": "IA3"}'}),
         "adapter_config.json: peft_type is 'IA3', not 'LORA'"),
        (UploadKind.PROMPT_SET, "p.jsonl", b'{"prompt": "a"}\n{broken\n', "p.jsonl: p.jsonl:2"),
        (UploadKind.PROMPT_SET, "p.jsonl", b'{"messages": [{"role": "assistant", "content": "a"}]}',
         r"p.jsonl:1: messages\[0\].role: 'assistant', expected user"),
        (UploadKind.SAFETY_FAMILIES, "f.jsonl", b'{"category": "fraud", "kind": "evil", "prompt": "a"}',
         "f.jsonl:1 kind: 'evil' is not 'harmful' or 'benign'"),
        (UploadKind.SAFETY_FAMILIES, "f.json", b"{}", "header.file_name"),
        (UploadKind.JSON_SCHEMA, "s.json",
         json.dumps({"properties": {"a": {"pattern": "(a)\\1"}}}).encode(),
         "/properties/a/pattern: .*RE2"),
        (UploadKind.JSON_SCHEMA, "s.json", b"[" * 60_000, "nested too deep"),
        (UploadKind.DATASET, "rows.exe", ROWS, "header.file_name"),
        (UploadKind.DATASET, "../rows.jsonl", ROWS, "header.file_name"),
        (UploadKind.DATASET, "a\x00.jsonl", ROWS, "header.file_name"),
        (UploadKind.DATASET, "x" * 300 + ".jsonl", ROWS, "header.file_name"),
    ],
)  # fmt: skip
async def test_bad_uploads_are_refused_naming_what_and_keep_nothing(  # noqa: PLR0917
    make, tmp_path, kind, name, data, message
):
    uploads = make()
    with pytest.raises(InvalidArgumentError, match=message):
        await send(uploads, ACME, kind, name, data)
    root = tmp_path / "datasets" / "uploads"
    assert [p.name for p in root.iterdir()] == [".staging"]
    assert list((root / ".staging" / "host-1").iterdir()) == []


async def test_size_and_checksum_are_checked(make):
    uploads = make()
    with pytest.raises(InvalidArgumentError, match=r"header\.sha256"):
        await send(uploads, ACME, UploadKind.DATASET, "r.jsonl", ROWS, sha="0" * 64)
    header = Announced(UploadKind.DATASET, "r.jsonl", 1 << 20, "0" * 64)
    with pytest.raises(InvalidArgumentError, match=r"header\.size: 1048576 must be 1 to 65536"):
        await uploads.upload(ACME, header, None)


async def test_the_quota_counts_each_tenants_bytes_in_the_store(make, store):
    uploads = make(quota=2 * len(ROWS))
    await send(uploads, ACME, UploadKind.DATASET, "a.jsonl", ROWS)
    await send(uploads, ACME, UploadKind.DATASET, "b.jsonl", ROWS)
    with pytest.raises(
        ResourceExhaustedError, match=f"upload quota: tenant 'acme' holds {2 * len(ROWS)} bytes"
    ):
        await send(uploads, ACME, UploadKind.DATASET, "c.jsonl", ROWS)
    await send(uploads, GLOBEX, UploadKind.DATASET, "c.jsonl", ROWS)  # its own quota
    # A second process (replica) on the same store sees the same count.
    other = make(quota=2 * len(ROWS), staging="host-2")
    with pytest.raises(ResourceExhaustedError):
        await send(other, ACME, UploadKind.DATASET, "d.jsonl", ROWS)
    assert await store.tenant_upload_bytes("acme") == 2 * len(ROWS)


async def test_raw_paths_are_for_admins(make, tmp_path):
    uploads = make()
    (tmp_path / "datasets" / "p.jsonl").write_text('{"prompt": "x", "reference": "y"}\n')
    spec = parse_eval_spec({"win_rate": {"prompts": "p.jsonl"}}, training=False)
    with pytest.raises(PermissionDeniedError, match=r"spec\.win_rate\.prompts: raw server paths"):
        await uploads.client_files(ACME, spec, "spec")
    files = await uploads.client_files(ADMIN, spec, "spec")
    assert files.win_rate_prompts == tmp_path / "datasets" / "p.jsonl"


def test_a_process_cleans_only_its_own_staging(make, tmp_path):
    first = make(staging="host-1")
    staging = tmp_path / "datasets" / "uploads" / ".staging"
    (staging / "host-1" / "ds-left").mkdir()
    (staging / "host-2").mkdir()
    (staging / "host-2" / "ds-inflight").mkdir()
    first.clean_staging()
    assert list((staging / "host-1").iterdir()) == []
    assert (staging / "host-2" / "ds-inflight").is_dir()


async def test_safety_families_and_conversations_are_uploads_a_spec_names_by_id(make):
    uploads = make()
    families = b"".join(
        json.dumps({"category": "fraud", "kind": kind, "prompt": prompt}).encode() + b"\n"
        for kind, prompt in (("harmful", "Forge a cheque."), ("benign", "Spot a forged cheque."))
    )
    record, _ = await send(uploads, ACME, UploadKind.SAFETY_FAMILIES, "fraud.jsonl", families)
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
             {"role": "user", "content": "Bye?"}]  # fmt: skip
    chats, _ = await send(
        uploads,
        ACME,
        UploadKind.PROMPT_SET,
        "chats.jsonl",
        json.dumps({"messages": turns}).encode(),
    )
    assert record.id.startswith("safety-") and chats.id.startswith("prompts-")
    spec = parse_eval_spec(
        {"safety": {"families_upload": record.id}, "rubric": {"prompts_upload": chats.id}},
        training=False,
    )
    files = await uploads.client_files(ACME, spec, "evaluation")
    assert files.safety_families == record.path and files.rubric_prompts == chats.path
    with pytest.raises(NotFoundError, match=r"evaluation\.safety\.families_upload"):
        await uploads.client_files(GLOBEX, spec, "evaluation")
