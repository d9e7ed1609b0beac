"""Refusals as HTTP: each `HitlError` kind has one status, and its message — the words the CLI prints — is
the problem's `detail` (RFC 9457), or the notice on an inbox page."""

from __future__ import annotations

from http import HTTPStatus

from starlette.responses import JSONResponse

from hitl_mcp.errors import (
    AmbiguousId,
    ConfigError,
    Expired,
    HitlError,
    InvalidArguments,
    NotAllowed,
    NotFound,
    NotPending,
    StoreUnavailable,
)
from hitl_mcp.web.models import Problem

PROBLEM_JSON = "application/problem+json"
# First match wins: AmbiguousId is a refusal of the id, but the id names more than one request — a conflict.
STATUS_OF: tuple[tuple[type[HitlError], int], ...] = (
    (InvalidArguments, 400),
    (ConfigError, 400),
    (NotAllowed, 403),
    (NotFound, 404),
    (AmbiguousId, 409),
    (NotPending, 409),
    (Expired, 409),
    (StoreUnavailable, 503),
)


class Refused(HitlError):
    """A refusal of the web layer itself (no principal, a bad CSRF token, a body too large), with its
    status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def status_of(error: HitlError) -> int:
    if isinstance(error, Refused):
        return error.status
    return next((status for kind, status in STATUS_OF if isinstance(error, kind)), 400)


def problem(
    status: int, detail: str, headers: dict[str, str] | None = None, kind: str | None = None
) -> JSONResponse:
    body = Problem(title=HTTPStatus(status).phrase, status=status, detail=detail, hitl_error=kind)
    return JSONResponse(
        body.model_dump(exclude_none=True), status_code=status, headers=headers, media_type=PROBLEM_JSON
    )


def problem_of(error: HitlError) -> JSONResponse:
    status = status_of(error)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    # The web layer's own refusals carry only their status; a Gate's refusal names its kind too.
    kind = None if isinstance(error, Refused) else type(error).__name__
    return problem(status, str(error), headers, kind)
