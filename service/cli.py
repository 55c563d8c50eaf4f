"""adapterd: the server and its admin commands.

adapterd serve            run the gRPC server (flags or ADAPTERD_* variables configure it)
adapterd worker           run training slots on a shared PostgreSQL store, without an engine
adapterd demo             start a server, show what it does, stop it
adapterd prepare-model    convert and cache the base model ahead of time
"""

import argparse
import asyncio
import sys
from collections.abc import Callable

from service.app import App, build_app
from service.basemodel import resolve_base_model
from service.demo import FULL, QUICK, run_demo
from service.errors import ConfigError
from service.logs import configure_logging
from service.process import run_until_signal
from service.settings import (
    ServerSettings,
    add_settings_flags,
    flag_name,
    settings_from_args,
)
from service.worker import Worker, build_worker

PREPARE_MODEL_FLAGS = ("base_model", "model_cache_dir", "log_level")
WORKER_FLAGS = (
    *PREPARE_MODEL_FLAGS, "host", "metrics_port", "data_dir", "adapter_root", "store_url",
    "slots", "trainer_threads", "max_job_attempts", "cancel_grace_seconds", "job_lease_seconds",
    "max_lora_rank", "max_adapter_mib", "drain_grace_seconds",
)  # fmt: skip
"""What configures `adapterd worker`: no API, engine or tenancy settings."""


def _run(build: Callable[[], App | Worker]) -> int:
    async def run() -> None:
        # grpc.aio objects belong to the loop they are made in: build the process inside it.
        process = build()
        await run_until_signal(process.start, process.stop)

    asyncio.run(run())
    return 0


def _serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(ServerSettings, args)
    configure_logging(settings.log_level)
    return _run(lambda: build_app(settings))


def _worker(args: argparse.Namespace) -> int:
    settings = settings_from_args(ServerSettings, args, only=WORKER_FLAGS)
    configure_logging(settings.log_level)
    return _run(lambda: build_worker(settings))


def _demo(args: argparse.Namespace) -> int:
    settings = settings_from_args(ServerSettings, args)
    given = [
        item
        for name in ServerSettings.model_fields
        if getattr(args, name) is not None
        for item in (flag_name(name), str(getattr(args, name)))
    ]
    plan = QUICK if args.quick else FULL
    return run_demo(settings, given, plan, keep_running=args.keep_running)


def _prepare_model(args: argparse.Namespace) -> int:
    settings = settings_from_args(ServerSettings, args, only=PREPARE_MODEL_FLAGS)
    configure_logging(settings.log_level)
    model = resolve_base_model(
        settings.base_model, settings.model_cache_dir, settings.chat_template
    )
    print(f"{model.name}: {model.path}")
    print(f"  weights sha256       {model.fingerprint.weights_sha256}")
    print(f"  chat template sha256 {model.fingerprint.chat_template_sha256}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The adapterd argument parser."""
    parser = argparse.ArgumentParser(
        prog="adapterd",
        description="Train, score and serve LoRA adapters behind one gRPC API.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="Run the gRPC server until SIGTERM.")
    add_settings_flags(serve, ServerSettings)
    serve.set_defaults(run=_serve)
    worker = commands.add_parser(
        "worker",
        help="Claim training jobs from a shared PostgreSQL store and run them until SIGTERM.",
    )
    add_settings_flags(worker, ServerSettings, only=WORKER_FLAGS)
    worker.set_defaults(run=_worker)
    demo = commands.add_parser(
        "demo", help="Start a server, show what it does, and stop it (takes the serve flags)."
    )
    add_settings_flags(demo, ServerSettings)
    demo.add_argument(
        "--keep-running", action="store_true", help="Leave the server up until Ctrl-C."
    )
    demo.add_argument(
        "--quick",
        action="store_true",
        help=f"Train on {QUICK.train_rows} rows and ask {QUICK.questions} questions per "
        f"evaluation section (not {FULL.train_rows} and {FULL.questions}): the whole flow in a "
        "few minutes, without expecting the gates to pass.",
    )
    demo.set_defaults(run=_demo)
    prepare = commands.add_parser(
        "prepare-model", help="Convert and cache the base model (serve does it on first use)."
    )
    add_settings_flags(prepare, ServerSettings, only=PREPARE_MODEL_FLAGS)
    prepare.set_defaults(run=_prepare_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `adapterd`; returns the exit code (2 for invalid settings)."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except ConfigError as exc:
        print(f"adapterd: error: {exc}", file=sys.stderr)
        return 2
    return code
