"""Errors a client sees, in OpenAI's shape (SPEC 5b): ``{"error": {"message", "type", "param", "code"}}``.

Everything a client sent that we refuse is an :class:`APIError` with a 4xx status, raised by the
request handling (:mod:`depthmux.serve.handlers`) and turned into a response by whatever hosts it;
a 500 is only ever our own fault.
"""

from __future__ import annotations

HTTP_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_server_error",
    503: "service_unavailable_error",
}


class APIError(Exception):
    """A refused request: HTTP ``status``, one-line ``message``, the offending field ``param`` (dotted, e.g.
    ``messages.0.content``), a short ``code``, and extra response ``headers`` (``Retry-After``)."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": HTTP_TYPES.get(self.status, "invalid_request_error"),
                "param": self.param,
                "code": self.code if self.code is not None else self.status,
            }
        }


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param, "invalid_value")


def unknown_model(name) -> APIError:
    return APIError(404, f"The model `{name}` does not exist.", "model", "model_not_found")


def overloaded(what: str, retry_after_s: int = 1) -> APIError:
    return APIError(503, f"{what} is full; retry later", None, "overloaded", {"Retry-After": str(retry_after_s)})
