"""Domain errors that map to AIP-193 gRPC errors (canonical code, ErrorInfo, BadRequest).

Domain and service-layer code raises these; the error interceptor turns them into a
`google.rpc.Status` in the trailing metadata. Messages are short and actionable and never
carry raw input (it may be PII).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request, named by its path (e.g. `identifiers[3].value`)."""

    field: str
    description: str


@dataclass
class RapportError(Exception):
    """Base of errors a client may see. `reason` is UPPER_SNAKE_CASE, stable, documented."""

    message: str
    reason: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    grpc_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class InvalidArgument(RapportError):
    def __init__(self, violations: Sequence[FieldViolation], message: str | None = None) -> None:
        self.violations = list(violations)
        first = self.violations[0] if self.violations else FieldViolation("request", "invalid")
        super().__init__(
            message or f"{first.field}: {first.description}",
            "INVALID_ARGUMENT",
            {"field": first.field},
            grpc.StatusCode.INVALID_ARGUMENT,
        )


class FailedPrecondition(RapportError):
    def __init__(self, message: str, reason: str, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message, reason, dict(metadata or {}), grpc.StatusCode.FAILED_PRECONDITION)


class NotFound(RapportError):
    def __init__(self, message: str, reason: str, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message, reason, dict(metadata or {}), grpc.StatusCode.NOT_FOUND)


class Aborted(RapportError):
    """Too much contention to finish in the budget; safe to retry."""

    def __init__(self, message: str, reason: str = "CONTENTION") -> None:
        super().__init__(message, reason, {}, grpc.StatusCode.ABORTED)


class Unavailable(RapportError):
    """A backing store could not be reached in time; safe to retry."""

    def __init__(self, message: str, reason: str = "BACKEND_UNAVAILABLE") -> None:
        super().__init__(message, reason, {}, grpc.StatusCode.UNAVAILABLE)


class Unauthenticated(RapportError):
    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message, reason, {}, grpc.StatusCode.UNAUTHENTICATED)


class PermissionDenied(RapportError):
    def __init__(self, message: str, reason: str, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message, reason, dict(metadata or {}), grpc.StatusCode.PERMISSION_DENIED)


class DeadlineExceeded(RapportError):
    def __init__(self, message: str = "the request deadline was exceeded") -> None:
        super().__init__(message, "DEADLINE_EXCEEDED", {}, grpc.StatusCode.DEADLINE_EXCEEDED)


def to_rpc_status(error: RapportError, domain: str, request_id: str) -> status_pb2.Status:
    """Build the google.rpc.Status carried in `grpc-status-details-bin`."""
    code_value: int = error.grpc_code.value[0]
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=domain, metadata={**error.metadata, "request_id": request_id}
    )
    details = [_pack(info)]
    if isinstance(error, InvalidArgument):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in error.violations
            ]
        )
        details.append(_pack(bad_request))
    return status_pb2.Status(code=code_value, message=error.message, details=details)


def internal_status(domain: str, request_id: str) -> status_pb2.Status:
    """An unexpected failure: a generic message, never the exception text."""
    info = error_details_pb2.ErrorInfo(reason="INTERNAL", domain=domain, metadata={"request_id": request_id})
    return status_pb2.Status(
        code=code_pb2.INTERNAL,
        message=f"internal error (request id {request_id}); it has been logged",
        details=[_pack(info)],
    )


def _pack(message: error_details_pb2.ErrorInfo | error_details_pb2.BadRequest) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed
