"""adapterctl: drive an adapterd server from the command line.

    adapterctl health [--service NAME] [--wait SECONDS]
    adapterctl info

Global flags (or ADAPTERCTL_* variables): --target, --token, --timeout, --output text|json.
"""

import argparse
import json
import sys
from collections.abc import Callable

import grpc
from google.protobuf import json_format

from service.client.api import Client
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


COMMANDS: dict[str, Callable[[Client, argparse.Namespace, bool], int]] = {
    "health": _health,
    "info": _info,
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
        with Client(settings.target, settings.token, settings.timeout) as client:
            return COMMANDS[args.command](client, args, settings.output == "json")
    except grpc.RpcError as exc:
        print(f"adapterctl: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except TimeoutError as exc:
        print(f"adapterctl: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
