"""The archil exception hierarchy.

Every error the SDK raises derives from :class:`ArchilError`. Errors that come
from the control plane are :class:`APIError` subclasses chosen by HTTP status;
transport failures are :class:`APIConnectionError` / :class:`APITimeoutError`.
Raw ``httpx`` exceptions never reach callers.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "ArchilError",
    "AuthenticationError",
    "BadRequestError",
    "ConfigurationError",
    "ConflictError",
    "ContainerError",
    "FunctionCallCancelledError",
    "FunctionTimeoutError",
    "ImageBuildError",
    "InsecureTransportWarning",
    "InternalServerError",
    "NotFoundError",
    "PermissionDeniedError",
    "ProcessError",
    "RateLimitError",
    "RemoteError",
    "SandboxError",
    "UnprocessableEntityError",
    "error_for_status",
]


class ArchilError(Exception):
    """Base class of every exception raised by archil."""


class ConfigurationError(ArchilError):
    """The SDK is not configured well enough to make a request (no API key, bad region...)."""


class InsecureTransportWarning(UserWarning):
    """The API key would travel unprotected: TLS verification is off, or plain HTTP off-host.

    Warned once per client. Silence it deliberately, if you must, with
    ``warnings.filterwarnings("ignore", category=archil.InsecureTransportWarning)``.
    """


class APIError(ArchilError):
    """The control plane answered with an error.

    Attributes:
        status_code: the HTTP status of the answer (``None`` for transport errors).
        message: the server's error message.
        code: the server's machine-readable error code, when it sent one.
        request_id: the server's request id, when it sent one.
        body: the answer's body (the decoded JSON, else its text), when there was one.
        headers: the answer's headers (lower-case names), when there was an answer.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        method: str | None = None,
        url: str | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code
        self.request_id = request_id
        self.method = method
        self.url = url
        self.body = body
        self.headers = dict(headers) if headers else {}

    def __str__(self) -> str:
        parts = [self.message]
        if self.status_code is not None:
            parts.insert(0, f"[{self.status_code}]")
        if self.code:
            parts.append(f"(code={self.code})")
        if self.request_id:
            parts.append(f"(request_id={self.request_id})")
        return " ".join(parts)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status_code={self.status_code!r}, "
            f"message={self.message!r}, code={self.code!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_api_error,
            (
                type(self),
                self.message,
                {
                    "status_code": self.status_code,
                    "code": self.code,
                    "request_id": self.request_id,
                    "method": self.method,
                    "url": self.url,
                    "body": self.body,
                    "headers": self.headers,
                },
            ),
        )


def _rebuild_api_error(cls: type[APIError], message: str, kwargs: dict[str, Any]) -> APIError:
    return cls(message, **kwargs)


class APIStatusError(APIError):
    """An HTTP error status from the control plane (the base of the per-status classes)."""


class BadRequestError(APIStatusError):
    """400: the request was invalid."""


class AuthenticationError(APIStatusError):
    """401: the API key is missing or wrong."""


class PermissionDeniedError(APIStatusError):
    """403: the API key may not do this."""


class NotFoundError(APIStatusError):
    """404: no such disk, container, image or token."""


class ConflictError(APIStatusError):
    """409: the request conflicts with existing state (for example a disk name in use)."""


class UnprocessableEntityError(APIStatusError):
    """422: the request was well-formed but could not be processed."""


class RateLimitError(APIStatusError):
    """429: too many requests."""


class InternalServerError(APIStatusError):
    """5xx: the control plane failed."""


class APIConnectionError(APIError):
    """The control plane could not be reached, or the connection broke."""


class APITimeoutError(APIConnectionError):
    """The request timed out."""


class ContainerError(ArchilError):
    """A container failed: it could not start, was killed, or its command exited non-zero.

    Attributes:
        container_id: the container's id, when one was created.
        exit_code: the process exit code, when it exited.
        logs: the tail of the container's output.
    """

    def __init__(
        self,
        message: str,
        *,
        container_id: str | None = None,
        exit_code: int | None = None,
        logs: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.container_id = container_id
        self.exit_code = exit_code
        self.logs = logs

    def __str__(self) -> str:
        text = self.message
        if self.logs:
            text += "\n--- last lines of the container's output ---\n" + self.logs.rstrip("\n")
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_container_error,
            (type(self), self.message, self.container_id, self.exit_code, self.logs),
        )


def _rebuild_container_error(
    cls: type[ContainerError], message: str, cid: str | None, code: int | None, logs: str
) -> ContainerError:
    return cls(message, container_id=cid, exit_code=code, logs=logs)


class FunctionTimeoutError(ArchilError, TimeoutError):
    """A function went past one of its time limits.

    ``limit`` names the limit (``"timeout"``: one attempt of the function;
    ``"startup_timeout"``: preparing its image and starting its sandbox) and
    ``seconds`` its value. It is also a builtin :class:`TimeoutError`.
    """

    def __init__(self, message: str, *, limit: str = "timeout", seconds: float = 0.0) -> None:
        super().__init__(message)
        self.message = message
        self.limit = limit
        self.seconds = seconds

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_timeout_error, (type(self), self.message, self.limit, self.seconds))


def _rebuild_timeout_error(
    cls: type[FunctionTimeoutError], message: str, limit: str, seconds: float
) -> FunctionTimeoutError:
    return cls(message, limit=limit, seconds=seconds)


class FunctionCallCancelledError(ArchilError):
    """The function call was cancelled with ``call.cancel()``; it has no result."""


class ImageBuildError(ArchilError):
    """An image could not be built. ``logs`` holds the end of the build output."""

    def __init__(self, message: str, *, image_id: str | None = None, logs: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.image_id = image_id
        self.logs = logs

    def __str__(self) -> str:
        text = self.message
        if self.logs:
            text += "\n--- last lines of the build output ---\n" + self.logs.rstrip("\n")
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_image_error, (type(self), self.message, self.image_id, self.logs))


def _rebuild_image_error(
    cls: type[ImageBuildError], message: str, image_id: str | None, logs: str
) -> ImageBuildError:
    return cls(message, image_id=image_id, logs=logs)


class SandboxError(ArchilError):
    """A sandbox did not reach the state it was asked for (it failed to start, or to pause).

    Attributes:
        sandbox_id: the sandbox's id.
        status: the state it was in instead.
        exit_reason: why, when the control plane said.
    """

    def __init__(
        self,
        message: str,
        *,
        sandbox_id: str | None = None,
        status: str | None = None,
        exit_reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.sandbox_id = sandbox_id
        self.status = status
        self.exit_reason = exit_reason

    @classmethod
    def stopped(cls, sandbox_id: str, when: str, conflict: ConflictError) -> SandboxError:
        """The sandbox was found stopped ``when`` (the control plane answered 409)."""
        return cls(
            f"sandbox {sandbox_id} stopped {when}: {conflict.message}",
            sandbox_id=sandbox_id,
            exit_reason=conflict.message,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_sandbox_error,
            (type(self), self.message, self.sandbox_id, self.status, self.exit_reason),
        )


def _rebuild_sandbox_error(
    cls: type[SandboxError], message: str, sid: str | None, status: str | None, reason: str | None
) -> SandboxError:
    return cls(message, sandbox_id=sid, status=status, exit_reason=reason)


class ProcessError(ArchilError):
    """The process protocol answered with an ``error`` event (or broke its own rules).

    Attributes:
        code: the error's machine-readable code (for example ``process_not_found``).
        process_id: the process concerned, when known.
    """

    def __init__(self, message: str, *, code: str | None = None, process_id: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.process_id = process_id

    def __str__(self) -> str:
        return f"{self.message} (code={self.code})" if self.code else self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_process_error, (type(self), self.message, self.code, self.process_id))


def _rebuild_process_error(
    cls: type[ProcessError], message: str, code: str | None, pid: str | None
) -> ProcessError:
    return cls(message, code=code, process_id=pid)


class RemoteError(ArchilError):
    """A remote function raised an exception that could not be rebuilt locally.

    ``remote_traceback`` holds the formatted traceback from the container and
    ``exception_type`` the qualified name of the original exception class.
    """

    def __init__(
        self, message: str, *, remote_traceback: str = "", exception_type: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.remote_traceback = remote_traceback
        self.exception_type = exception_type

    def __str__(self) -> str:
        if self.remote_traceback:
            return f"{self.message}\n\nRemote traceback:\n{self.remote_traceback.rstrip()}"
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_remote_error,
            (type(self), self.message, self.remote_traceback, self.exception_type),
        )


def _rebuild_remote_error(
    cls: type[RemoteError], message: str, tb: str, exc_type: str
) -> RemoteError:
    return cls(message, remote_traceback=tb, exception_type=exc_type)


_STATUS_CLASSES: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def error_for_status(
    status_code: int,
    message: str,
    *,
    code: str | None = None,
    request_id: str | None = None,
    method: str | None = None,
    url: str | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> APIStatusError:
    """Build the exception that matches an HTTP error status."""
    cls: type[APIStatusError]
    if status_code >= 500:
        cls = InternalServerError
    else:
        cls = _STATUS_CLASSES.get(status_code, APIStatusError)
    return cls(
        message,
        status_code=status_code,
        code=code,
        request_id=request_id,
        method=method,
        url=url,
        body=body,
        headers=headers,
    )
