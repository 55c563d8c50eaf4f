"""Logging configuration, applied once at the entry point."""

import logging

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """Configures the root logger for a process entry point.

    Args:
        level: A level name such as "info" or "debug".
    """
    logging.basicConfig(level=level.upper(), format=_FORMAT, force=True)
    # grpc and urllib3 are chatty at INFO about things that are not ours.
    for noisy in ("urllib3", "filelock", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
