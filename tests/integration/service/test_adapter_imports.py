"""Adapters trained elsewhere, on the real server and engine (tiny model, shared `server`):
written without peft, packed and uploaded by adapterctl, checked against the base model's layers,
registered in the caller's tenant and served."""

import json
import shutil

import grpc
import pytest

from adapterd.v1 import inference_pb2, jobs_pb2
from service.basemodel import linear_layers
from service.client.api import Client
from service.client.cli import adapter_archive, main
from tests.support import ADMIN_TOKEN, USER_TOKEN, edit_json, make_lora

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
