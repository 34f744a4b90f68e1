"""One error hierarchy for the CLI, the jobs and both serving transports.

Every error the platform raises on purpose is a :class:`PlatformError`. Each class
knows its gRPC status and HTTP status, so one gRPC adapter and one HTTP handler turn
any of them into a response; a client never sees ``UNKNOWN`` or 500 for bad input.
"""

from __future__ import annotations

import grpc

__all__ = [
    "PlatformError",
    "InvalidArgument",
    "NotFound",
    "FailedPrecondition",
    "Unauthenticated",
    "Unavailable",
    "ConfigError",
    "DataContractError",
]


class PlatformError(Exception):
    """Base of every deliberate platform error.

    Args:
        message: A sentence a user can act on; never contains personal data.
        field: The request or settings field at fault, when there is one.
    """

    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    http_status: int = 500
    #: Stable machine-readable name, used as ``error.code`` in HTTP bodies.
    code: str = "internal"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def grpc_status_code(self) -> grpc.StatusCode:
        """The gRPC status this error is answered with."""
        return self.grpc_code

    def http_status_code(self) -> int:
        """The HTTP status this error is answered with."""
        return self.http_status

    def to_dict(self) -> dict[str, str]:
        """The JSON body of an HTTP error response."""
        body = {"code": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        return body


class InvalidArgument(PlatformError):
    """A request or command argument is malformed; the message names the field."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 422
    code = "invalid_argument"


class NotFound(PlatformError):
    """The thing asked for does not exist (unknown user, no model yet)."""

    grpc_code = grpc.StatusCode.NOT_FOUND
    http_status = 404
    code = "not_found"


class FailedPrecondition(PlatformError):
    """The request is well formed but the platform's state does not allow it."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 409
    code = "failed_precondition"


class Unauthenticated(PlatformError):
    """Missing or wrong credentials."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401
    code = "unauthenticated"


class Unavailable(PlatformError):
    """A back-end (store, lake, cluster) cannot be reached; retrying may help."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    http_status = 503
    code = "unavailable"


class ConfigError(PlatformError):
    """The settings file or an environment override is invalid (raised at load time)."""

    code = "config_error"


class DataContractError(PlatformError):
    """An input folder or file breaks the data contract as a whole (not a single row)."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 422
    code = "data_contract"
