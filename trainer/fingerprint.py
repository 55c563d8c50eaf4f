"""Identity of a base model: the hashes an adapter's manifest records and the server checks.

A path in adapter_config.json proves nothing about the weights an adapter was trained on;
these hashes do. Pure standard library, so the server can use it without torch.
"""

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelFingerprint:
    """What identifies a Hugging Face checkpoint directory."""

    weights_sha256: str
    """sha256 over the bytes of every *.safetensors file, in file-name order."""
    chat_template_sha256: str
    """sha256 of the chat template text; empty when the tokenizer has none."""
    architecture: str
    """First entry of `architectures` in config.json, e.g. "LlamaForCausalLM"."""
    parameters: int
    """Number of parameters, counted from the safetensors headers."""

    def manifest_entry(self, name: str) -> dict[str, Any]:
        """The `base_model` object of an adapter's manifest.json, what the server's checks
        compare with the served base model (`service.adapters.checks`)."""
        return {"name": name, **asdict(self)}

    def to_json(self) -> str:
        """Serializes to JSON."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelFingerprint":
        """Parses what `to_json` wrote."""
        return cls(**json.loads(text))


def sha256_files(paths: list[Path]) -> str:
    """Hex sha256 of the concatenated bytes of files, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def chat_template(model_dir: Path) -> str:
    """The chat template of a checkpoint: chat_template.jinja, else tokenizer_config.json's."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = model_dir / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template") or ""
        return template if isinstance(template, str) else json.dumps(template, sort_keys=True)
    return ""


def safetensors_header(path: Path) -> dict[str, Any]:
    """The tensors of a safetensors file by name ({"dtype", "shape", "data_offsets"}), read from
    its header alone: an 8-byte little-endian length, then that much JSON.

    Raises:
        ValueError: when the file is too short or its header is not a JSON object.
    """
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{path.name}: not a safetensors file (shorter than its header)")
        size = int.from_bytes(prefix, "little")
        if size > path.stat().st_size - 8:
            raise ValueError(f"{path.name}: not a safetensors file (header length {size})")
        header = json.loads(f.read(size))
    if not isinstance(header, dict):
        raise ValueError(f"{path.name}: not a safetensors file (header is not an object)")
    header.pop("__metadata__", None)
    return header


def _safetensors_parameters(path: Path) -> int:
    return sum(math.prod(t["shape"]) for t in safetensors_header(path).values())


def fingerprint(model_dir: Path) -> ModelFingerprint:
    """Computes the fingerprint of a checkpoint directory.

    Raises:
        FileNotFoundError: when the directory has no config.json or no safetensors weights.
    """
    weights = sorted(model_dir.glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"{model_dir} has no *.safetensors weights")
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    template = chat_template(model_dir)
    return ModelFingerprint(
        weights_sha256=sha256_files(weights),
        chat_template_sha256=hashlib.sha256(template.encode()).hexdigest() if template else "",
        architecture=(config.get("architectures") or [""])[0],
        parameters=sum(_safetensors_parameters(p) for p in weights),
    )
