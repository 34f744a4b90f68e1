"""One error hierarchy for the CLI, the jobs and both serving transports.

Every error the platform raises on purpose is a :class:`PlatformError`. Each class
knows its gRPC status and HTTP status, so one gRPC adapter and one HTTP handler turn
any of them into a response; a client never sees ``UNKNOWN`` or 500 for bad input.
"""

from __future__ import annotations

import re

import grpc

__all__ = [
    "PlatformError",
    "InvalidArgument",
    "NotFound",
    "FailedPrecondition",
    "Unauthenticated",
    "PermissionDenied",
    "ResourceExhausted",
    "Unavailable",
    "ConfigError",
    "DataContractError",
    "describe",
    "unwrap",
    "INTERNAL_MESSAGE",
]

#: What the API answers for an unexpected failure (INTERNAL / 500), the details being in its log.
#: A client tells the API's own INTERNAL from one Serve's proxy makes up (a replica that died
#: in the middle of the call) by this message.
INTERNAL_MESSAGE = "internal error; the server log has the details"


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


class PermissionDenied(PlatformError):
    """The credentials are valid but do not allow the call (an API key without the call's scope)."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403
    code = "permission_denied"


class ResourceExhausted(PlatformError):
    """The request is larger than the server accepts (``serve.max_body_bytes`` / ``max_message_bytes``)."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 413
    code = "resource_exhausted"


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


# -- one line for an unexpected error ------------------------------------------------------------

_TRACEBACK = "Traceback (most recent call last):"
_QUOTED = re.compile(r"'([^'\n]*)'|\"([^\"\n]*)\"")
# Anything quoted may be a field value and is masked, unless it reads as a name: a column or
# setting (``'user_id'``, ``'serve.grpc_port'``), a Python type, or the key of a KeyError.
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:[._:][A-Za-z0-9_]+)+$|^[A-Za-z_][A-Za-z0-9]*_[A-Za-z0-9_]*$")
_TYPE_NAMES = frozenset({"int", "float", "str", "bytes", "bool", "list", "dict", "tuple", "set", "NoneType",
                         "object", "DataFrame", "Series", "Column", "ndarray"})
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")
_DIGIT_RUN = re.compile(r"[0-9]{3}")
# Phone and ID numbers outside quotes (11 to 18 digits, an ID may end in X).
_LONG_NUMBER = re.compile(r"(?<![0-9])[0-9]{11,17}[0-9Xx]?(?![0-9])")


def unwrap(exc: BaseException) -> BaseException:
    """The exception a Ray task or actor raised, for the wrapper Ray re-raises in the driver
    (``RayTaskError.cause``); ``exc`` itself otherwise."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        cause = getattr(exc, "cause", None)
        if not isinstance(cause, BaseException):
            break
        exc = cause
    return exc


def _message(exc: BaseException) -> str:
    # Spark's captured errors and Py4J's ask the JVM for their text in str(); the JVM may be
    # gone by the time the CLI reports (the demo stops Spark on the way out).
    desc = getattr(exc, "_desc", None)
    if isinstance(desc, str):
        return desc
    java = getattr(exc, "java_exception", None)
    if java is not None:
        try:
            return str(java.toString())
        except Exception:  # the JVM is gone: Py4J's own line names the call
            return str(getattr(exc, "errmsg", "") or "")
    if isinstance(exc, OSError) and exc.filename is not None:
        where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
        return f"{exc.strerror or 'cannot use'}: {where}"
    try:
        return str(exc)
    except Exception:
        return ""


def _first_line(text: str) -> str:
    if _TRACEBACK in text:
        # A Python error raised in a Spark or Ray worker: its last unindented line names it.
        tail = [ln for ln in text.rsplit(_TRACEBACK, 1)[1].splitlines() if ln.strip() and not ln[:1].isspace()]
        return tail[-1].strip() if tail else ""
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")


def _mask(text: str, keep: str | None = None) -> str:
    def quoted(m: re.Match) -> str:
        inner = m.group(1) if m.group(1) is not None else m.group(2)
        q = m.group(0)[0]
        name = inner == keep or inner in _TYPE_NAMES or _NAME.match(inner)
        return m.group(0) if name and not _DIGIT_RUN.search(inner) else f"{q}...{q}"

    return _LONG_NUMBER.sub("*" * 11, _QUOTED.sub(quoted, text))


def describe(exc: BaseException, limit: int = 300) -> str:
    """One line for an error the platform did not raise on purpose: its type and the first line
    of its message that means something.

    Spark and Py4J errors keep their message without the JVM stack trace; a Python traceback
    from a worker is reduced to its last line; Ray's wrapper gives way to the error it wraps.
    Quoted values and phone or ID numbers are masked (docs/data-contract.md section 6: error
    messages never contain field values); quoted names such as ``'user_id'``, type names and the
    key of a KeyError are kept.

    Args:
        exc: The error.
        limit: Longest line returned (longer ones end in ``...``).

    Returns:
        ``"Type: first line"``, or only ``"Type"`` when the message is empty.
    """
    exc = unwrap(exc)
    key = exc.args[0] if isinstance(exc, KeyError) and len(exc.args) == 1 else None
    line = _mask(_first_line(_message(exc)), keep=key if isinstance(key, str) and _KEY.match(key) else None)
    if len(line) > limit:
        line = line[: limit - 3] + "..."
    name = type(exc).__name__
    return f"{name}: {line}" if line else name
