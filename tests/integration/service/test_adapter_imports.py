"""Adapters trained elsewhere, on the real server and engine (tiny model, shared `server`):
written without peft or by peft itself, uploaded by adapterctl or downloaded by the server from
a real HTTP server on its allowlist, checked against the base model's layers, registered in the
caller's tenant and served."""

import hashlib
import json
import shutil

import grpc
import pytest

from adapterd.v1 import adapters_pb2, inference_pb2, jobs_pb2
from service.basemodel import linear_layers
from service.client.api import Client
from service.client.cli import adapter_archive, main
from tests.support import ADMIN_TOKEN, USER_TOKEN, edit_json, make_adapter, make_lora

PROMPT = "1, 2, 3, 4,"


def answer(client, adapter=""):
    request = inference_pb2.GenerateRequest(
        adapter=adapter,
        prompt=PROMPT,
        sampling=inference_pb2.SamplingParams(temperature=0.0, max_tokens=8),
    )
    return client.generate(request).text


def adapterctl(server, token, *args, capsys):
    code = main(["--target", server.target, "--token", token, "--timeout", "120", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_an_adapter_from_elsewhere_is_imported_into_the_callers_tenant_and_served(
    server, tiny_model_dir, tmp_path, capsys
):
    """A LoRA written without peft for every projection of the tiny model: adapterctl packs
    the directory, uploads and imports it; it answers as the same files loaded by path do."""
    layers = linear_layers(tiny_model_dir)
    source = make_lora(tmp_path / "elsewhere", layers, rank=4)
    (source / "adapter_model.bin").write_bytes(b"\x80\x04N.")  # left behind: never packed
    code, out, err = adapterctl(
        server, USER_TOKEN, "--output", "json", "adapters", "import", "elsewhere", str(source),
        capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    info = json.loads(out)
    assert (info["ref"], info["rank"], info["state"]) == (
        "acme/elsewhere@1", 4, "ADAPTER_STATE_READY",
    )  # fmt: skip

    installed = server.data_dir / "adapters" / info["path"]
    assert sorted(p.name for p in installed.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "manifest.json",
    ]  # fmt: skip
    manifest = json.loads((installed / "manifest.json").read_text())
    assert manifest["imported"]["tenant"] == "acme"
    assert manifest["imported"]["upload_id"].startswith("adapter-")
    with Client(server.target, ADMIN_TOKEN, timeout=120) as admin:
        by_path = admin.load_adapter("acme/elsewhere-by-path", info["path"])
        with Client(server.target, USER_TOKEN, timeout=120) as user:
            imported = answer(user, "elsewhere")
            assert imported == answer(user, by_path.ref)
            assert imported != answer(user)  # random B matrices: it changes the output
        admin.unload_adapter(by_path.ref)


def test_an_adapter_of_another_model_is_refused_by_its_shapes_and_leaves_nothing(
    server, tiny_model_dir, tmp_path
):
    """The same architecture and layer names at twice the width: only the tensors' shapes tell,
    and the refusal names the layer and both shapes."""
    wider = tmp_path / "wider-model"
    shutil.copytree(tiny_model_dir, wider)
    edit_json(wider / "config.json", hidden_size=128)
    source = make_lora(tmp_path / "wider-lora", linear_layers(wider), rank=4)
    imports = server.data_dir / "adapters" / "imports"
    before = sorted(imports.iterdir()) if imports.exists() else []
    with Client(server.target, USER_TOKEN, timeout=120) as user:
        upload = user.upload_bytes(*adapter_archive(source), jobs_pb2.UPLOAD_KIND_ADAPTER_ARCHIVE)
        with pytest.raises(grpc.RpcError) as caught:
            user.import_adapter("wider", upload.upload_id)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert (
            "adapter_model.safetensors: model.layers.0.mlp.down_proj: lora_A is [4, 128] and "
            "lora_B is [128, 4]; the base model's layer is 64 x 128"
        ) in caught.value.details()
        assert not [a for a in user.list_adapters().adapters if a.name == "wider"]
    assert (sorted(imports.iterdir()) if imports.exists() else []) == before


def test_an_adapter_peft_made_is_downloaded_from_an_allowlisted_source_and_served(
    server, adapter_files, tiny_model_dir, tmp_path, capsys
):
    root, _ = adapter_files
    made = make_adapter(tmp_path / "peft-lora", tiny_model_dir, seed=3, rank=4,
                        target_modules=["q_proj", "v_proj"])  # fmt: skip
    file_name, data = adapter_archive(made)  # its two peft files: peft wrote them
    (root / "org" / "peft-lora").mkdir(parents=True)
    (root / "org" / "peft-lora" / file_name).write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    # Through a redirect from one allowlisted source to another, with the sha256 checked.
    code, out, err = adapterctl(
        server, USER_TOKEN, "--output", "json", "adapters", "import", "from-hub",
        f"org/peft-lora/{file_name}", "--from", "moved", "--sha256", digest, capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    info = json.loads(out)
    assert (info["ref"], info["rank"], info["state"]) == (
        "acme/from-hub@1", 4, "ADAPTER_STATE_READY",
    )  # fmt: skip
    manifest = json.loads(
        (server.data_dir / "adapters" / info["path"] / "manifest.json").read_text()
    )
    assert manifest["imported"]["url"].endswith(f"/moved/org/peft-lora/{file_name}")
    assert manifest["imported"]["archive_sha256"] == digest
    assert manifest["imported"]["upload_id"].startswith("adapter-")  # the tenant's upload
    with Client(server.target, USER_TOKEN, timeout=120) as user:
        assert answer(user, "from-hub") != answer(user)


def test_a_download_is_refused_by_name_before_anything_is_kept(server, adapter_files, tmp_path):
    root, _ = adapter_files
    (root / "stray.tar.gz").write_bytes(b"not an archive")
    imports = server.data_dir / "adapters" / "imports"
    before = sorted(imports.iterdir()) if imports.exists() else []
    cases = [
        (("nowhere", "a.tar.gz", ""), grpc.StatusCode.INVALID_ARGUMENT,
         "download.source: 'nowhere' is not an allowlisted source (files, moved)"),
        (("files", "../etc/a.tar.gz", ""), grpc.StatusCode.INVALID_ARGUMENT, "download.path:"),
        (("files", "missing.tar.gz", ""), grpc.StatusCode.FAILED_PRECONDITION,
         "/files/missing.tar.gz answered HTTP 404"),
        (("files", "away/a.tar.gz", ""), grpc.StatusCode.FAILED_PRECONDITION,
         "/outside/a.tar.gz, which is under no allowlisted source"),
        (("files", "stray.tar.gz", "0" * 64), grpc.StatusCode.INVALID_ARGUMENT,
         "download.sha256: "),
        (("files", "stray.tar.gz", ""), grpc.StatusCode.INVALID_ARGUMENT, "stray.tar.gz: "),
        (("files", "notes.txt", ""), grpc.StatusCode.INVALID_ARGUMENT,
         "download.path: 'notes.txt' must be a plain file name"),
        (("files", "stray.tar.gz", "xyz"), grpc.StatusCode.INVALID_ARGUMENT,
         "download.sha256: 'xyz' is not 64 hex digits"),
    ]  # fmt: skip
    with Client(server.target, USER_TOKEN, timeout=120) as user:
        for (source, path, sha256), code, message in cases:
            download = adapters_pb2.AdapterDownload(source=source, path=path, sha256=sha256)
            with pytest.raises(grpc.RpcError) as caught:
                user.import_adapter("refused", download=download)
            assert (caught.value.code(), message in caught.value.details()) == (code, True), (
                caught.value.details()
            )
        assert not [a for a in user.list_adapters().adapters if a.name == "refused"]
    assert (sorted(imports.iterdir()) if imports.exists() else []) == before
