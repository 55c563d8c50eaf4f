"""Who may do what: the one authorization table, and the tenant rights on objects. Pure.

Two layers, both here and nowhere else:
- `POLICY`: every gRPC method and HTTP route, and who may call it (`Access`). The gRPC
  interceptor and the HTTP middleware both ask `authorize`; a method or route without a row is
  refused (deny by default), and a test walks the server's services and routes so that a new one
  without a row fails.
- Tenant rights on what a call names. Every adapter name, version and alias, job, dataset,
  upload, capture policy and capture belongs to a tenant. A user reads its own tenant's objects
  and the `shared` tenant's (captures: its own only), and changes only its own; an admin reads
  and changes any, naming it `tenant/name` (feedback on a capture is its own tenant's alone).
  What a caller may not read does not exist for it: `qualify_read` answers NOT_FOUND exactly as
  for a name that does not exist, so no other tenant's names are confirmed. What it may read
  but not change is PERMISSION_DENIED.
"""

import enum

from service.adapters.registry import NOT_REGISTERED, qualify, tenant_of
from service.auth import SHARED_TENANT, Principal, Role
from service.errors import NotFoundError, PermissionDeniedError, UnauthenticatedError


class Access(enum.Enum):
    """Who may call a method or route."""

    PUBLIC = "public"
    """No credentials (Kubernetes probes send none)."""
    USER = "user"
    """Any authenticated caller; what it names is checked against its tenant in the domain."""
    ADMIN = "admin"
    """The admin role only."""


_SERVER, _INFER, _ADAPTERS, _JOBS, _CAPTURE = (
    "/adapterd.v1.Server/",
    "/adapterd.v1.Inference/",
    "/adapterd.v1.Adapters/",
    "/adapterd.v1.Jobs/",
    "/adapterd.v1.Capture/",
)
POLICY: dict[str, Access] = {
    "/grpc.health.v1.Health/Check": Access.PUBLIC,
    "/grpc.health.v1.Health/Watch": Access.PUBLIC,
    "/grpc.health.v1.Health/List": Access.PUBLIC,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": Access.PUBLIC,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": Access.PUBLIC,
    _SERVER + "GetServerInfo": Access.USER,
    _INFER + "Generate": Access.USER,
    _INFER + "GenerateStream": Access.USER,
    # A server path names the files: admins only. Users register versions by training.
    _ADAPTERS + "LoadAdapter": Access.ADMIN,
    _ADAPTERS + "UnloadAdapter": Access.USER,
    _ADAPTERS + "ListAdapters": Access.USER,
    # Pins hold slots of the one engine every tenant shares.
    _ADAPTERS + "PinAdapter": Access.ADMIN,
    _ADAPTERS + "SetAlias": Access.USER,
    # The files are the caller's own upload, checked tensor by tensor against the base model.
    _ADAPTERS + "ImportAdapter": Access.USER,
    _JOBS + "UploadDataset": Access.USER,
    _JOBS + "Upload": Access.USER,
    _JOBS + "ValidateDataset": Access.USER,
    _JOBS + "SubmitJob": Access.USER,
    _JOBS + "GetJob": Access.USER,
    _JOBS + "ListJobs": Access.USER,
    _JOBS + "CancelJob": Access.USER,
    _JOBS + "WatchJob": Access.USER,
    _JOBS + "Evaluate": Access.USER,
    _JOBS + "GetEvaluationReport": Access.USER,
    _JOBS + "GetHumanEvalSheet": Access.USER,
    _JOBS + "ImportHumanRatings": Access.USER,
    # A job's own checkpoints, registered in the job's tenant (`JobService.register_checkpoint`).
    _JOBS + "ListCheckpoints": Access.USER,
    _JOBS + "RegisterCheckpoint": Access.USER,
    # A tenant captures, reads, rates and exports its own traffic only (`service.capture`).
    _CAPTURE + "SetCapturePolicy": Access.USER,
    _CAPTURE + "ListCapturePolicies": Access.USER,
    _CAPTURE + "DeleteCapturePolicy": Access.USER,
    _CAPTURE + "GetCapture": Access.USER,
    _CAPTURE + "ListCaptures": Access.USER,
    _CAPTURE + "SubmitFeedback": Access.USER,
    _CAPTURE + "ExportCaptures": Access.USER,
    "GET /v1/models": Access.USER,
    "POST /v1/chat/completions": Access.USER,
    "POST /v1/completions": Access.USER,
    "POST /v1/feedback": Access.USER,
}
"""Every gRPC method ("/package.Service/Method") and HTTP route ("METHOD /path")."""


def access_of(route: str) -> Access | None:
    """The row of a method or route; None when it has none (then nobody may call it)."""
    return POLICY.get(route)


def authorize(route: str, principal: Principal | None) -> None:
    """Whether `principal` (None: no valid credentials) may call `route`.

    Raises:
        UnauthenticatedError: the route needs credentials and there are none.
        PermissionDeniedError: the route has no row, or needs the admin role.
    """
    access = access_of(route)
    if access is Access.PUBLIC:
        return
    if principal is None:
        raise UnauthenticatedError("missing 'authorization: Bearer <token>' metadata")
    if access is None:
        raise PermissionDeniedError(f"{route} is not open to any caller")
    if access is Access.ADMIN and principal.role is not Role.ADMIN:
        raise PermissionDeniedError(f"{route} needs the admin role")


def is_admin(principal: Principal) -> bool:
    """Whether the caller sees and changes every tenant's objects."""
    return principal.role is Role.ADMIN


def can_read(principal: Principal, tenant: str) -> bool:
    """Whether the caller may see and use objects of `tenant`."""
    return is_admin(principal) or tenant in (principal.tenant, SHARED_TENANT)


def visible_tenant(principal: Principal) -> str | None:
    """The one tenant whose jobs and uploads a listing shows; None for all (an admin)."""
    return None if is_admin(principal) else principal.tenant


def qualify_read(principal: Principal, text: str, field: str) -> str:
    """An adapter or alias reference as `tenant/name[@N]`, if the caller may read it.

    Raises:
        InvalidArgumentError: not a valid reference.
        NotFoundError: another tenant's (not shared), worded as for a name never registered.
    """
    qualified = qualify(text, principal.tenant, field)
    if not can_read(principal, tenant_of(qualified)):
        raise NotFoundError(f"{field}: " + NOT_REGISTERED.format(ref=repr(qualified)))
    return qualified


def qualify_write(principal: Principal, text: str, field: str) -> str:
    """A name the caller creates or changes, as `tenant/name[@N]`: its own tenant's (any, for
    an admin; `shared` is for admins).

    Raises:
        InvalidArgumentError: not a valid reference.
        PermissionDeniedError: another tenant's, or `shared` for a user.
    """
    qualified = qualify(text, principal.tenant, field)
    tenant = tenant_of(qualified)
    if not is_admin(principal) and tenant != principal.tenant:
        raise PermissionDeniedError(
            f"{field}: {qualified!r} is in tenant {tenant!r}; a user changes only its own "
            f"tenant {principal.tenant!r}"
        )
    return qualified
