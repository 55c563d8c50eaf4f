"""What an adapter directory must satisfy before the engine sees it.

Files: the directory resolves inside the adapter root (no absolute paths, no '..', no symlink
that leads out), holds adapter_config.json, adapter_model.safetensors and adapterd's
manifest.json, and no pickle file anywhere (a pickle runs code when it is loaded); the weights
are at most the size cap. Shape: a LoRA adapter whose rank is within the engine's maximum,
whose target modules the base model has, and whose every tensor is the A or B matrix of one of
the base model's linear layers, of that layer's shape at the adapter's rank. Identity:
the manifest's base-model weights and chat-template hashes equal those of the served base model
(the path in adapter_config.json proves nothing). Every refusal names the file and the value.
"""

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.errors import InvalidArgumentError, NotFoundError
from service.paths import confined
from trainer.fingerprint import ModelFingerprint, safetensors_header
from trainer.layout import MANIFEST, PEFT_CONFIG, PEFT_WEIGHTS

if TYPE_CHECKING:
    from service.basemodel import BaseModel
    from service.settings import ServerSettings

CONFIG_FILE, WEIGHTS_FILE, MANIFEST_FILE = PEFT_CONFIG, PEFT_WEIGHTS, MANIFEST
"""peft's two files and adapterd's manifest beside them (the trainer's layout names them)."""
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})
PEFT_PREFIX = "base_model.model."
"""How peft names a saved LoRA tensor: this, the layer's module path, then `.lora_A.weight`."""
FLOAT_DTYPES = frozenset({"F32", "F16", "BF16"})


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
    layers: Mapping[str, tuple[int, int]]
    """The base model's linear layers that LoRA may target, by module path, with their
    (out_features, in_features) (`service.basemodel.linear_layers`)."""

    @cached_property
    def target_modules(self) -> frozenset[str]:
        """The short names of those layers ("q_proj", ...)."""
        from service.basemodel import target_names

        return target_names(self.layers)

    @classmethod
    def for_server(cls, settings: "ServerSettings", base_model: "BaseModel") -> "AdapterLimits":
        """What a server (or worker) with `settings` on `base_model` accepts."""
        from service.basemodel import linear_layers

        return cls(
            root=settings.resolved_adapter_root,
            max_rank=settings.max_lora_rank,
            max_bytes=settings.max_adapter_mib * 2**20,
            base=base_model.fingerprint,
            base_name=base_model.name,
            layers=linear_layers(base_model.path),
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
        _refuse_pickle(entry, f"path: {relative}/{name}")
    return candidate


def _refuse_pickle(entry: Path, shown: str) -> None:
    if entry.suffix in PICKLE_SUFFIXES:
        raise InvalidArgumentError(
            f"{shown} is a pickle file, which is refused (loading one runs code); save the "
            "adapter with safetensors"
        )


def check_peft_files(directory: Path) -> None:
    """What an uploaded adapter (an extracted archive) must hold, whatever the base model:
    adapter_config.json, a LoRA config, and adapter_model.safetensors, a safetensors file, at its
    top level, and no pickle file anywhere. Its tensors are checked against the served base
    model when it is imported (`check_adapter`). Blocking file I/O.

    Raises:
        InvalidArgumentError: naming the member and what is wrong with it.
    """
    for entry in directory.rglob("*"):
        _refuse_pickle(entry, str(entry.relative_to(directory)))
    _require_lora(read_json(directory, CONFIG_FILE))
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise InvalidArgumentError(
            f"{WEIGHTS_FILE}: missing from the archive's top level (safetensors weights are "
            "required)"
        )
    _read_header(weights)


def _read_header(weights: Path) -> dict[str, Any]:
    """The weights' safetensors header; a file that is not one is refused."""
    try:
        return safetensors_header(weights)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"{WEIGHTS_FILE}: {exc}") from None


def read_json(directory: Path, name: str) -> dict[str, Any]:
    path = directory / name
    if not path.is_file():
        raise InvalidArgumentError(f"{name}: missing")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"{name}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"{name}: expected a JSON object")
    return value


@dataclass(frozen=True)
class LoraShape:
    """What adapter_config.json declares about the tensors."""

    ranks: frozenset[int]
    """`r` and every rank of `rank_pattern`."""
    targets: frozenset[str]
    """The short names of `target_modules` ("q_proj", ...)."""


def _require_lora(config: dict[str, Any]) -> None:
    if config.get("peft_type") != "LORA":
        raise InvalidArgumentError(
            f"{CONFIG_FILE}: peft_type is {config.get('peft_type')!r}, not 'LORA'"
        )


def check_config(config: dict[str, Any], limits: AdapterLimits) -> LoraShape:
    """What the adapter's config declares, once it is something the engine can serve."""
    _require_lora(config)
    ranks = [config.get("r"), *(config.get("rank_pattern") or {}).values()]
    if not all(isinstance(r, int) and r >= 1 for r in ranks):
        raise InvalidArgumentError(
            f"{CONFIG_FILE}: r must be a positive integer, got {config.get('r')!r}"
        )
    if max(ranks) > limits.max_rank:
        raise InvalidArgumentError(
            f"{CONFIG_FILE}: rank {max(ranks)} is above the engine's max_lora_rank "
            f"{limits.max_rank}"
        )
    for key in ("modules_to_save", "use_dora"):
        if config.get(key):
            raise InvalidArgumentError(
                f"{CONFIG_FILE}: {key} {config[key]} cannot be hot-loaded; train without it"
            )
    targets = config.get("target_modules")
    names = [targets] if isinstance(targets, str) else targets
    if not isinstance(names, list) or not names:
        raise InvalidArgumentError(
            f"{CONFIG_FILE}: target_modules must list module names, got {targets!r}"
        )
    # peft matches a target by its last name component; "all-linear" adapters list full paths
    short = frozenset(str(n).rsplit(".", 1)[-1] for n in names)
    unknown = sorted(short - limits.target_modules)
    if unknown:
        raise InvalidArgumentError(
            f"{CONFIG_FILE}: target_modules {unknown} are not linear modules of the base model "
            f"(it has {sorted(limits.target_modules)})"
        )
    return LoraShape(ranks=frozenset(ranks), targets=short)


def _layer_of(name: str, tensor: Any, shape: LoraShape, limits: AdapterLimits) -> tuple[str, str]:
    """The base layer (module path) and matrix ("A" or "B") a saved tensor belongs to."""
    layer, _, matrix = name.removeprefix(PEFT_PREFIX).rpartition(".lora_")
    where = f"{WEIGHTS_FILE}: tensor {name[:200]!r}"
    if not name.startswith(PEFT_PREFIX) or matrix not in ("A.weight", "B.weight"):
        raise InvalidArgumentError(
            f"{where} is not a LoRA matrix (peft saves them as "
            f"{PEFT_PREFIX}<layer>.lora_A.weight and .lora_B.weight)"
        )
    if layer not in limits.layers:
        raise InvalidArgumentError(
            f"{where}: {layer[:200]!r} is not a linear layer of the base model {limits.base_name}"
        )
    if layer.rsplit(".", 1)[-1] not in shape.targets:
        raise InvalidArgumentError(
            f"{where}: {layer!r} is not among {CONFIG_FILE}'s target_modules "
            f"{sorted(shape.targets)}"
        )
    if not isinstance(tensor, dict) or tensor.get("dtype") not in FLOAT_DTYPES:
        dtype = tensor.get("dtype") if isinstance(tensor, dict) else None
        raise InvalidArgumentError(f"{where}: dtype {dtype!r} is not one of {sorted(FLOAT_DTYPES)}")
    return layer, matrix[0]


def check_tensors(header: dict[str, Any], shape: LoraShape, limits: AdapterLimits) -> int:
    """The adapter's largest rank, once every tensor in the weights' safetensors header is the A
    or B matrix of one of the base model's linear layers, of that layer's shape, at a rank its
    config declares, and every layer it adapts has both."""
    matrices: dict[str, dict[str, object]] = {}
    for name, tensor in header.items():
        layer, matrix = _layer_of(name, tensor, shape, limits)
        matrices.setdefault(layer, {})[matrix] = tensor.get("shape")
    if not matrices:
        raise InvalidArgumentError(f"{WEIGHTS_FILE}: holds no LoRA matrices")
    ranks: list[int] = []
    for layer, pair in sorted(matrices.items()):
        out_features, in_features = limits.layers[layer]
        a, b = pair.get("A"), pair.get("B")
        rank = a[0] if isinstance(a, list) and a and type(a[0]) is int else 0
        if rank not in shape.ranks or a != [rank, in_features] or b != [out_features, rank]:
            raise InvalidArgumentError(
                f"{WEIGHTS_FILE}: {layer}: lora_A is {a} and lora_B is {b}; the base model's "
                f"layer is {out_features} x {in_features} (out x in), so they must be "
                f"[r, {in_features}] and [{out_features}, r] with r one of {CONFIG_FILE}'s "
                f"ranks {sorted(shape.ranks)}"
            )
        ranks.append(rank)
    return max(ranks)


def _check_weights(path: Path, shape: LoraShape, limits: AdapterLimits) -> tuple[str, int]:
    """The sha256 of the weights file and the adapter's rank, once its size and tensors are
    acceptable."""
    if not path.is_file():
        raise InvalidArgumentError(f"{WEIGHTS_FILE}: missing (safetensors weights are required)")
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise InvalidArgumentError(
            f"{WEIGHTS_FILE}: {size} bytes is above the cap of {limits.max_bytes} bytes "
            "(--max-adapter-mib)"
        )
    rank = check_tensors(_read_header(path), shape, limits)
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest(), rank


def _check_base(manifest: dict[str, Any], limits: AdapterLimits) -> str:
    """The base model's name in the manifest, once its hashes match the served base."""
    base = manifest.get("base_model")
    if not isinstance(base, dict):
        raise InvalidArgumentError(f"{MANIFEST_FILE}: no base_model object")
    for key, served, differs in (
        ("weights_sha256", limits.base.weights_sha256, "on a different base model"),
        (
            "chat_template_sha256",
            limits.base.chat_template_sha256,
            "under a different chat template (--chat-template)",
        ),
    ):
        if base.get(key) != served:
            raise InvalidArgumentError(
                f"{MANIFEST_FILE}: base_model.{key} is {str(base.get(key))[:12]}..., but the "
                f"served base model {limits.base_name} has {served[:12]}...: the adapter was "
                f"trained {differs}"
            )
    return str(base.get("name", ""))


def check_adapter(relative: str, limits: AdapterLimits) -> CheckedAdapter:
    """Runs every check on the adapter directory `relative` (blocking file I/O and hashing).

    Raises:
        InvalidArgumentError: naming the file, field and value that are refused.
        NotFoundError: when the directory does not exist.
    """
    directory = resolve_directory(limits.root, relative)
    shape = check_config(read_json(directory, CONFIG_FILE), limits)
    base_name = _check_base(read_json(directory, MANIFEST_FILE), limits)
    sha256, rank = _check_weights(directory / WEIGHTS_FILE, shape, limits)
    return CheckedAdapter(path=directory, sha256=sha256, rank=rank, base_model=base_name)
