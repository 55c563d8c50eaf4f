"""What an adapter directory must satisfy before the engine sees it.

Files: the directory resolves inside the adapter root (no absolute paths, no '..', no symlink
that leads out), holds adapter_config.json, adapter_model.safetensors and adapterd's
manifest.json, and no pickle file anywhere (a pickle runs code when it is loaded); the weights
are at most the size cap. Shape: a LoRA adapter whose rank is within the engine's maximum,
whose target modules the base model has, with nothing saved besides the LoRA matrices. Identity:
the manifest's base-model weights and chat-template hashes equal those of the served base model
(the path in adapter_config.json proves nothing). Every refusal names the file and the value.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.errors import InvalidArgumentError, NotFoundError
from service.paths import confined
from trainer.fingerprint import ModelFingerprint, safetensors_header

if TYPE_CHECKING:
    from service.basemodel import BaseModel
    from service.settings import ServerSettings

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MANIFEST_FILE = "manifest.json"
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})


@dataclass(frozen=True)
class CheckedAdapter:
    """An adapter that passed every check."""

    path: Path
    """Resolved directory."""
    sha256: str
    """sha256 of adapter_model.safetensors."""
    rank: int
    """Largest rank of any of its modules."""
    base_model: str
    """The base model's name in the manifest."""


@dataclass(frozen=True)
class AdapterLimits:
    """What the server accepts."""

    root: Path
    """The adapter root; every adapter file resolves inside it."""
    max_rank: int
    """The engine's max_lora_rank."""
    max_bytes: int
    """Size cap of adapter_model.safetensors."""
    base: ModelFingerprint
    """The served base model's identity."""
    base_name: str
    """The served base model's name, for messages."""
    target_modules: frozenset[str]
    """Linear modules of the base model that LoRA may target (e.g. "q_proj")."""

    @classmethod
    def for_server(cls, settings: "ServerSettings", base_model: "BaseModel") -> "AdapterLimits":
        """What a server (or worker) with `settings` on `base_model` accepts."""
        from service.basemodel import lora_target_modules

        return cls(
            root=settings.resolved_adapter_root,
            max_rank=settings.max_lora_rank,
            max_bytes=settings.max_adapter_mib * 2**20,
            base=base_model.fingerprint,
            base_name=base_model.name,
            target_modules=lora_target_modules(base_model.path),
        )


def resolve_directory(root: Path, relative: str) -> Path:
    """The adapter directory `relative` names, resolved and checked to lie inside `root`.

    Raises:
        InvalidArgumentError: for an empty, absolute or '..' path, or one that leads out.
        NotFoundError: when there is no such directory.
    """
    candidate = confined(root, relative, "path")
    if not candidate.is_dir():
        raise NotFoundError(f"path: {relative!r} is not a directory")
    real_root = root.resolve()
    for entry in candidate.rglob("*"):
        name = entry.relative_to(candidate)
        if entry.is_symlink() and not entry.resolve().is_relative_to(real_root):
            raise InvalidArgumentError(
                f"path: {relative}/{name} is a symlink that leads outside the adapter root"
            )
        if entry.suffix in PICKLE_SUFFIXES:
            raise InvalidArgumentError(
                f"path: {relative}/{name} is a pickle file, which is refused (loading one runs "
                "code); save the adapter with safetensors"
            )
    return candidate


def _read_json(directory: Path, name: str) -> dict[str, Any]:
    path = directory / name
    if not path.is_file():
        raise InvalidArgumentError(f"{name}: missing from {directory.name}")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"{name}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"{name}: expected a JSON object")
    return value


def _check_config(config: dict[str, Any], limits: AdapterLimits) -> int:
    """The adapter's largest rank, once its config is something the engine can serve."""
    if config.get("peft_type") != "LORA":
        raise InvalidArgumentError(
            f"{CONFIG_FILE}: peft_type is {config.get('peft_type')!r}, not 'LORA'"
        )
    ranks = [config.get("r"), *(config.get("rank_pattern") or {}).values()]
    if not all(isinstance(r, int) and r >= 1 for r in ranks):
        raise InvalidArgumentError(
            f"{CONFIG_FILE}: r must be a positive integer, got {config.get('r')!r}"
        )
    rank = int(max(ranks))
    if rank > limits.max_rank:
        raise InvalidArgumentError(
            f"{CONFIG_FILE}: rank {rank} is above the engine's max_lora_rank {limits.max_rank}"
        )
    if config.get("modules_to_save"):
        raise InvalidArgumentError(
            f"{CONFIG_FILE}: modules_to_save {config['modules_to_save']} cannot be hot-loaded; "
            "train without it"
        )
    targets = config.get("target_modules")
    names = [targets] if isinstance(targets, str) else targets
    if not isinstance(names, list) or not names:
        raise InvalidArgumentError(
            f"{CONFIG_FILE}: target_modules must list module names, got {targets!r}"
        )
    # peft matches a target by its last name component; "all-linear" adapters list full paths
    unknown = sorted(n for n in names if str(n).rsplit(".", 1)[-1] not in limits.target_modules)
    if unknown:
        raise InvalidArgumentError(
            f"{CONFIG_FILE}: target_modules {unknown} are not linear modules of the base model "
            f"(it has {sorted(limits.target_modules)})"
        )
    return rank


def _check_weights(path: Path, limits: AdapterLimits) -> str:
    """The sha256 of the weights file, once its size and header are acceptable."""
    if not path.is_file():
        raise InvalidArgumentError(f"{WEIGHTS_FILE}: missing (safetensors weights are required)")
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise InvalidArgumentError(
            f"{WEIGHTS_FILE}: {size} bytes is above the cap of {limits.max_bytes} bytes "
            "(--max-adapter-mib)"
        )
    try:
        header = safetensors_header(path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"{WEIGHTS_FILE}: {exc}") from None
    foreign = sorted(n for n in header if "lora_A" not in n and "lora_B" not in n)
    if foreign:
        raise InvalidArgumentError(
            f"{WEIGHTS_FILE}: holds tensors that are not LoRA matrices: {foreign[:3]}"
        )
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _check_base(manifest: dict[str, Any], limits: AdapterLimits) -> str:
    """The base model's name in the manifest, once its hashes match the served base."""
    base = manifest.get("base_model")
    if not isinstance(base, dict):
        raise InvalidArgumentError(f"{MANIFEST_FILE}: no base_model object")
    for key, served in (
        ("weights_sha256", limits.base.weights_sha256),
        ("chat_template_sha256", limits.base.chat_template_sha256),
    ):
        if base.get(key) != served:
            raise InvalidArgumentError(
                f"{MANIFEST_FILE}: base_model.{key} is {str(base.get(key))[:12]}..., but the "
                f"served base model {limits.base_name} has {served[:12]}...: the adapter was "
                "trained on a different base model"
            )
    return str(base.get("name", ""))


def check_adapter(relative: str, limits: AdapterLimits) -> CheckedAdapter:
    """Runs every check on the adapter directory `relative` (blocking file I/O and hashing).

    Raises:
        InvalidArgumentError: naming the file, field and value that are refused.
        NotFoundError: when the directory does not exist.
    """
    directory = resolve_directory(limits.root, relative)
    rank = _check_config(_read_json(directory, CONFIG_FILE), limits)
    base_name = _check_base(_read_json(directory, MANIFEST_FILE), limits)
    sha256 = _check_weights(directory / WEIGHTS_FILE, limits)
    return CheckedAdapter(path=directory, sha256=sha256, rank=rank, base_model=base_name)
