"""adapterctl: drive an adapterd server from the command line.

    adapterctl health [--service NAME] [--wait SECONDS]
    adapterctl info
    adapterctl generate [--adapter NAME] [--max-tokens N] [--temperature T] [--raw] TEXT
    adapterctl adapters list
    adapterctl adapters load NAME PATH [--pin]
    adapterctl adapters import NAME DIR|ARCHIVE   (a peft adapter trained elsewhere)
    adapterctl adapters import NAME PATH --from SOURCE [--sha256 HEX]   (downloaded by the server)
    adapterctl adapters unload NAME[@VERSION]
    adapterctl adapters pin|unpin NAME@VERSION
    adapterctl adapters alias ALIAS [NAME@VERSION]   (no target: remove the alias)
    adapterctl upload FILE [--kind dataset|task-archive|prompts|schema] | validate-data --dataset ID
    adapterctl submit JOB.yaml [--watch]
    adapterctl get|cancel|watch JOB_ID | list [--state STATE]
    adapterctl checkpoints list JOB_ID | checkpoints register JOB_ID STEP [--name NAME]
    adapterctl eval run SPEC.yaml [--adapter NAME] [--watch] | eval report JOB_ID [--out DIR]
    adapterctl capture set|unset|list|show|traffic|export ... | feedback CAPTURE_ID ...

Global flags (or ADAPTERCTL_* variables): --target, --token, --timeout, --output text|json.
"""

import argparse
import io
import json
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import grpc
from google.protobuf import json_format

from adapterd.v1 import adapters_pb2, inference_pb2, jobs_pb2
from service.client.api import Client
from service.client.capture_commands import add_capture_commands
from service.client.job_commands import add_job_commands, show
from service.errors import ConfigError
from service.settings import ClientSettings, add_settings_flags, settings_from_args


def _health(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    if args.wait is not None:
        client.wait_until_serving(args.service, timeout=float(args.wait))
    status = client.health(args.service)
    if as_json:
        print(json.dumps({"service": args.service, "status": status}))
    else:
        print(f"{args.service or '(overall)'}: {status}")
    return 0 if status == "SERVING" else 1


def _info(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    info = client.server_info()
    if as_json:
        print(json_format.MessageToJson(info, always_print_fields_with_no_presence=True))
        return 0
    data = json_format.MessageToDict(info, always_print_fields_with_no_presence=True)
    base = data.pop("baseModel")
    libraries = data.pop("libraries")
    for key, value in data.items():
        print(f"{key:>20}: {value}")
    print(
        f"{'baseModel':>20}: {base['name']} ({base['architecture']}, {base['parameters']} params)"
    )
    print(f"{'weightsSha256':>20}: {base['weightsSha256']}")
    print(f"{'libraries':>20}: " + ", ".join(f"{x['name']}=={x['version']}" for x in libraries))
    return 0


def _generate(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    sampling = inference_pb2.SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature
    )
    request = inference_pb2.GenerateRequest(adapter=args.adapter, sampling=sampling)
    if args.raw:
        request.prompt = args.text
    else:
        request.chat.messages.add(role="user", content=args.text)
    if as_json:
        show(client.generate(request), as_json=True)
        return 0
    version, captured = "", ""
    for delta in client.generate_stream(request):  # print as it comes
        print(delta.text, end="", flush=True)
        version, captured = delta.adapter_version, delta.capture_id
    note = f"; captured as {captured}" if captured else ""
    print(f"\n[answered by {version or 'the base model'}{note}]", file=sys.stderr)
    return 0


PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")


def adapter_archive(source: Path) -> tuple[str, bytes]:
    """An adapter to upload as (file name, bytes): an archive as it is, or a directory's two
    peft files packed into a .tar.gz (nothing else of it: no pickles, no stray files)."""
    if not source.is_dir():
        return source.name, source.read_bytes()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in PEFT_FILES:
            archive.add(source / name, arcname=name)
    return f"{source.resolve().name or 'adapter'}.tar.gz", buffer.getvalue()


def _adapters(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    action = args.action
    if action == "list":
        listing = client.list_adapters()
        if as_json:
            show(listing, as_json=True)
            return 0
        print(f"{'ref':<28}{'state':<10}{'where':<8}{'rank':>5}{'pinned':>8}  aliases")
        for a in listing.adapters:
            state = adapters_pb2.AdapterState.Name(a.state).removeprefix("ADAPTER_STATE_")
            where = adapters_pb2.Residency.Name(a.residency).removeprefix("RESIDENCY_")
            print(
                f"{a.ref:<28}{state.lower():<10}{where.lower():<8}{a.rank:>5}"
                f"{'yes' if a.pinned else 'no':>8}  {', '.join(a.aliases)}"
            )
        print(f"engine capacity: {listing.engine_capacity}")
        return 0
    if action == "load":
        show(client.load_adapter(args.name, args.path, args.pin), as_json)
    elif action == "import" and args.remote:
        download = adapters_pb2.AdapterDownload(
            source=args.remote, path=args.source, sha256=args.sha256
        )
        show(client.import_adapter(args.name, download=download), as_json)
    elif action == "import" and args.sha256:
        raise ConfigError("--sha256 checks a download: give --from SOURCE too")
    elif action == "import":
        file_name, data = adapter_archive(Path(args.source))
        upload = client.upload_bytes(file_name, data, jobs_pb2.UPLOAD_KIND_ADAPTER_ARCHIVE)
        show(client.import_adapter(args.name, upload.upload_id), as_json)
    elif action == "unload":
        print("\n".join(client.unload_adapter(args.adapter)))
    elif action in ("pin", "unpin"):
        show(client.pin_adapter(args.adapter, action == "pin"), as_json)
    else:
        show(client.set_alias(args.alias, args.alias_target), as_json)
    return 0


COMMANDS: dict[str, Callable[[Client, argparse.Namespace, bool], int]] = {
    "health": _health,
    "info": _info,
    "generate": _generate,
    "adapters": _adapters,
}


def build_parser() -> argparse.ArgumentParser:
    """The adapterctl argument parser."""
    parser = argparse.ArgumentParser(prog="adapterctl", description=__doc__.split("\n\n")[0])
    add_settings_flags(parser, ClientSettings)
    commands = parser.add_subparsers(dest="command", required=True)
    health = commands.add_parser("health", help="Show a service's gRPC health status.")
    health.add_argument(
        "--service", default="", help="Service name, e.g. adapterd.v1.Server (default: overall)."
    )
    health.add_argument(
        "--wait", metavar="SECONDS", help="Wait up to SECONDS for the status to become SERVING."
    )
    commands.add_parser("info", help="Show the server's version, base model and limits.")
    generate = commands.add_parser("generate", help="Answer a chat message (streamed).")
    generate.add_argument("text", help="The user's message (or, with --raw, the prompt).")
    generate.add_argument("--adapter", default="", help="Adapter, alias or name@N (default: base).")
    generate.add_argument("--max-tokens", type=int, default=256, help="Most tokens to generate.")
    generate.add_argument("--temperature", type=float, default=0.0, help="0 is greedy.")
    generate.add_argument("--raw", action="store_true", help="Send TEXT as a raw prompt.")
    adapters = commands.add_parser("adapters", help="List and manage served adapters.")
    actions = adapters.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="Every registered adapter version.")
    load = actions.add_parser("load", help="Register an adapter directory as NAME's next version.")
    load.add_argument("name", help="Adapter name.")
    load.add_argument("path", help="Directory relative to the server's adapter root.")
    load.add_argument("--pin", action="store_true", help="Never evict it.")
    imported = actions.add_parser(
        "import", help="Upload a peft adapter trained elsewhere and register it as NAME."
    )
    imported.add_argument("name", help="Adapter name.")
    imported.add_argument(
        "source",
        help="A peft adapter directory (adapter_config.json, adapter_model.safetensors) or an "
        "archive of one (.tar, .tar.gz, .tgz, .zip); with --from, the archive's path under "
        "that source.",
    )
    imported.add_argument(
        "--from", dest="remote", metavar="NAME",
        help="The server downloads the archive from this source of its --import-urls.",
    )  # fmt: skip
    imported.add_argument("--sha256", default="", help="The archive's sha256 (with --from).")
    unload = actions.add_parser("unload", help="Unregister NAME@N, or every version of NAME.")
    unload.add_argument("adapter", help="NAME or NAME@N.")
    for verb in ("pin", "unpin"):
        actions.add_parser(verb, help=f"{verb.capitalize()} NAME@N.").add_argument("adapter")
    alias = actions.add_parser("alias", help="Point ALIAS at NAME@N, or remove it.")
    alias.add_argument("alias", help="Alias name.")
    alias.add_argument(
        "alias_target", metavar="target", nargs="?", default="", help="NAME@N; omit to remove it."
    )
    COMMANDS.update(add_job_commands(commands))
    COMMANDS.update(add_capture_commands(commands))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `adapterctl`; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(ClientSettings, args)
    except ConfigError as exc:
        print(f"adapterctl: error: {exc}", file=sys.stderr)
        return 2
    try:
        ca = settings.tls_ca_file.read_bytes() if settings.tls_ca_file else None
        with Client(
            settings.target, settings.token, settings.timeout, ca, settings.load_balancing
        ) as client:
            return COMMANDS[args.command](client, args, settings.output == "json")
    except grpc.RpcError as exc:
        print(f"adapterctl: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except (TimeoutError, ConfigError, OSError) as exc:
        print(f"adapterctl: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
