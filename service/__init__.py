"""adapterd's server: gRPC API, job control, inference engine and metrics."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("adapterd")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0+unknown"
