"""The domain errors of adapterd.

Each class stands for one gRPC status; `service.grpc.status` maps them in exactly one table.
The domain code raises these without knowing about gRPC. Messages name the field and the value
("max_lora_rank: 12 is not one of 8, 16, 32, ..."), because they go to the caller verbatim.
"""


class AdapterdError(Exception):
    """An error the caller can act on. Anything else is a bug and becomes INTERNAL."""

    reason = "internal"
    """Short name of the error kind, for metric labels."""


class InvalidArgumentError(AdapterdError):
    """A request field or setting has a value that can never be valid."""

    reason = "invalid_argument"


class NotFoundError(AdapterdError):
    """The named object does not exist, or the caller may not know that it exists."""

    reason = "not_found"


class AlreadyExistsError(AdapterdError):
    """The object the caller tried to create exists already."""

    reason = "already_exists"


class FailedPreconditionError(AdapterdError):
    """The request is valid, but the system is not in a state that allows it."""

    reason = "failed_precondition"


class ResourceExhaustedError(AdapterdError):
    """A quota, queue or capacity limit was reached."""

    reason = "resource_exhausted"


class UnauthenticatedError(AdapterdError):
    """The request carries no valid credentials."""

    reason = "unauthenticated"


class PermissionDeniedError(AdapterdError):
    """The caller is known but its role does not allow the request."""

    reason = "permission_denied"


class UnavailableError(AdapterdError):
    """The service cannot take the request now (warming up, draining); retrying may work."""

    reason = "unavailable"


class ConfigError(AdapterdError):
    """A setting is invalid. Raised at start-up; the CLI prints it as one line and exits 2."""
