"""adapterctl's capture commands: capture policies, captured traffic, feedback and exports.

Usage:
    adapterctl capture set TARGET --rate 0.1 --retention-days 30
    adapterctl capture list | unset TARGET | show CAPTURE_ID
    adapterctl capture traffic [--adapter T] [--min-rating N] [--flagged|--unflagged]
    adapterctl capture export [filters] [--format sft|preference] [--min-rating 4] [--corrections]
    adapterctl feedback CAPTURE_ID [--score N | --up | --down] [--flag REASON] [--correction T]
"""

import argparse
from typing import Any

from adapterd.v1 import capture_pb2
from service.client.api import Client
from service.client.job_commands import Command, show

FORMATS = {"sft": capture_pb2.EXPORT_FORMAT_SFT, "preference": capture_pb2.EXPORT_FORMAT_PREFERENCE}


def _filter(args: argparse.Namespace) -> capture_pb2.CaptureFilter:
    flag = capture_pb2.FLAG_FILTER_ANY
    if args.flagged:
        flag = capture_pb2.FLAG_FILTER_FLAGGED
    elif args.unflagged:
        flag = capture_pb2.FLAG_FILTER_UNFLAGGED
    return capture_pb2.CaptureFilter(
        target=args.adapter, min_rating=args.min_rating, flag=flag,
        with_correction=args.with_correction,
    )  # fmt: skip


def _capture(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    action = args.action
    if action == "set":
        policy = client.set_capture_policy(
            args.policy_target, args.rate, args.retention_days * 86400, args.schema_upload
        )
        show(policy, as_json)
    elif action == "unset":
        client.delete_capture_policy(args.policy_target)
    elif action == "list":
        for policy in client.capture_policies():
            show(policy, as_json)
    elif action == "show":
        show(client.get_capture(args.capture_id), as_json)
    elif action == "traffic":
        request = capture_pb2.ListCapturesRequest(filter=_filter(args), page_size=args.limit)
        for captured in client.list_captures(request).captures:
            show(captured, as_json)
    else:
        exported = client.export_captures(
            capture_pb2.ExportCapturesRequest(
                filter=_filter(args), format=FORMATS[args.format], min_rating=args.min_rating,
                corrections=args.corrections,
            )
        )  # fmt: skip
        if as_json:
            show(exported, as_json=True)
        else:
            print(exported.upload_id)
            print(f"{exported.rows} rows, {exported.skipped} captures skipped")
    return 0


def _feedback(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    request = capture_pb2.SubmitFeedbackRequest(
        capture_id=args.capture_id, flagged=args.flag is not None, flag_reason=args.flag or ""
    )
    if args.score is not None:
        request.score = args.score
    elif args.up or args.down:
        request.thumbs_up = args.up
    if args.correction is not None:
        request.correction = args.correction
    show(client.submit_feedback(request), as_json)
    return 0


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", default="", help="Only captures of this adapter or alias.")
    parser.add_argument("--min-rating", type=int, default=0, help="Rated at least this (1-5).")
    flags = parser.add_mutually_exclusive_group()
    flags.add_argument("--flagged", action="store_true", help="Only flagged captures.")
    flags.add_argument("--unflagged", action="store_true", help="Only unflagged captures.")
    parser.add_argument("--with-correction", action="store_true", help="Only corrected ones.")


def add_capture_commands(commands: Any) -> dict[str, Command]:
    """Adds the capture subcommands to adapterctl's parser; returns their handlers by name."""
    capture = commands.add_parser("capture", help="Capture policies, traffic and exports.")
    actions = capture.add_subparsers(dest="action", required=True)
    policy = actions.add_parser("set", help="Capture a share of your requests for TARGET.")
    # Not "target": the global --target names the server.
    policy.add_argument(
        "policy_target", metavar="TARGET", help="An adapter name or alias (every version)."
    )
    policy.add_argument("--rate", type=float, default=1.0, help="Share captured, in (0, 1].")
    policy.add_argument("--retention-days", type=float, default=30.0, help="Days kept.")
    policy.add_argument(
        "--schema-upload", default="", help="A JSON Schema upload the answers must satisfy."
    )
    unset = actions.add_parser("unset", help="Stop capturing TARGET.")
    unset.add_argument("policy_target", metavar="TARGET")
    actions.add_parser("list", help="Your capture policies.")
    actions.add_parser("show", help="One capture.").add_argument("capture_id")
    traffic = actions.add_parser("traffic", help="Captured requests, oldest first.")
    _add_filters(traffic)
    traffic.add_argument("--limit", type=int, default=100, help="Captures shown (at most 1000).")
    export = actions.add_parser("export", help="Write captures as a dataset; prints its id.")
    _add_filters(export)
    export.add_argument("--format", choices=sorted(FORMATS), default="sft")
    export.add_argument(
        "--corrections", action="store_true", help="Corrections in place of their answers."
    )
    feedback = commands.add_parser("feedback", help="Rate, flag or correct a captured answer.")
    feedback.add_argument("capture_id", help="The id the reply carried.")
    rating = feedback.add_mutually_exclusive_group()
    rating.add_argument("--score", type=int, help="1 to 5.")
    rating.add_argument("--up", action="store_true", help="Thumbs up (5).")
    rating.add_argument("--down", action="store_true", help="Thumbs down (1).")
    feedback.add_argument("--flag", metavar="REASON", help="Flag the answer, saying why.")
    feedback.add_argument("--correction", help="A better answer.")
    return {"capture": _capture, "feedback": _feedback}
