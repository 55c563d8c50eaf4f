"""Session-wide fixtures. Engines cost ~30 s to start: reuse `server` and `default_server`."""

import os

# Nothing in the tests may reach for a model hub; set before transformers is imported.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.basemodel import BaseModel, resolve_base_model
from service.settings import ServerSettings
from tests.support import (
    TOKENS,
    PostgresServer,
    ServerProcess,
    build_tiny_llama,
    find_postgres_bin,
    make_adapter,
    postgres_bin,
    serve_adapter_files,
    serve_garbage_judge,
)

DEFAULT_MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session; each test takes a database of its own."""
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="adapterd-pg-")), postgres_bin()).start()
    yield server
    server.stop()
    shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="session")
def default_model() -> BaseModel:
    """The default SmolLM2-135M-Instruct checkpoint, converted once into the user cache."""
    return resolve_base_model(DEFAULT_MODEL, ServerSettings().model_cache_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, default_model: BaseModel) -> Path:
    """A 2-layer random Llama with the real tokenizer; loads in transformers, peft and vLLM."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), default_model.path)


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A random LoRA adapter (rank 8) for the tiny model, with adapterd's manifest. Copy it
    before changing it."""
    return make_adapter(tmp_path_factory.mktemp("tiny-adapter"), tiny_model_dir, seed=1)


@pytest.fixture(scope="session")
def garbage_judge() -> Iterator[str]:
    """The base URL of an OpenAI-compatible judge that ignores response_format and rambles."""
    judge = serve_garbage_judge()
    yield f"http://127.0.0.1:{judge.server_address[1]}/v1"
    judge.shutdown()


@pytest.fixture(scope="session")
def adapter_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A directory and the URL of a file server over it (`serve_adapter_files`): the `server`
    fixture's allowlisted download sources are its /files ("files") and /moved ("moved")."""
    root = tmp_path_factory.mktemp("adapter-files")
    files = serve_adapter_files(root)
    yield root, f"http://127.0.0.1:{files.server_address[1]}"
    files.shutdown()


def shared_store_flags(request: pytest.FixtureRequest) -> list[str]:
    """`--store-url` of a fresh database on the session's PostgreSQL server; none (SQLite)
    where PostgreSQL is not installed, outside CI."""
    if find_postgres_bin() is None and not os.environ.get("CI"):
        return []
    return ["--store-url", request.getfixturevalue("postgres").create_database()]


@pytest.fixture(scope="session")
def server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model_dir: Path,
    garbage_judge: str,
    adapter_files: tuple[Path, str],
) -> Iterator[ServerProcess]:
    """One real server for the session: vLLM on the tiny model, auth on with `TOKENS`, its
    store on the session's PostgreSQL (so every test through it runs on the shared store; the
    other servers keep SQLite); its allowlisted LLM judges are its own HTTP API ("self") and
    `garbage_judge` ("garbage"); its download sources are `adapter_files`' ("files", "moved")."""
    process = ServerProcess(
        data_dir=tmp_path_factory.mktemp("server"), base_model=str(tiny_model_dir), tokens=TOKENS
    )
    process.extra_flags += [
        "--judge-urls", f"self={process.http_url},garbage={garbage_judge}",
        "--judge-api-key", TOKENS[0]["token"],
        "--drift-interval-seconds", "2",
        "--import-urls", f"files={adapter_files[1]}/files,moved={adapter_files[1]}/moved",
        *shared_store_flags(request),
    ]  # fmt: skip
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def default_server(
    tmp_path_factory: pytest.TempPathFactory, default_model: BaseModel
) -> Iterator[ServerProcess]:
    """A real server on the default model, auth off; started only when a test first asks."""
    process = ServerProcess(
        data_dir=tmp_path_factory.mktemp("default-server"), base_model=DEFAULT_MODEL
    ).start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def tokenizer(default_model: BaseModel):  # type: ignore[no-untyped-def]
    """The default model's tokenizer and ChatML template (SmolLM2: no generation markers)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model.path)


@pytest.fixture(scope="session")
def tools_tokenizer(default_model: BaseModel):  # type: ignore[no-untyped-def]
    """The default model's tokenizer under the shipped `chatml_tools` template."""
    from trainer.templates import load_tokenizer

    return load_tokenizer(default_model.path, "chatml_tools")
