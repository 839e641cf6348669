"""Errors the API answers with: a status, a stable code for clients, and a message for people."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.body import BodyTimedOut, BodyTooLarge


class APIError(Exception):
    """An error response: `{"error": message, "code": code, ...extra}`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        **extra: object,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.extra = extra


def install_error_handlers(app: FastAPI) -> None:
    """Every error, ours or the framework's, leaves as JSON with an `error` message."""

    @app.exception_handler(APIError)
    async def api_error(_: Request, error: APIError) -> JSONResponse:
        body = {"error": error.message, "code": error.code, **error.extra}
        return JSONResponse(body, status_code=error.status, headers=error.headers)

    @app.exception_handler(BodyTimedOut)
    async def timed_out(_: Request, error: BodyTimedOut) -> JSONResponse:
        return JSONResponse(
            {"error": str(error), "code": "body_timeout"},
            status_code=408,
            headers={"Connection": "close"},
        )

    @app.exception_handler(BodyTooLarge)
    async def too_large(_: Request, error: BodyTooLarge) -> JSONResponse:
        return JSONResponse({"error": str(error), "code": "too_large"}, status_code=413)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        body = {"error": str(error.detail), "code": f"http_{error.status_code}"}
        return JSONResponse(body, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        messages = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
            for item in error.errors()
        )
        return JSONResponse({"error": messages, "code": "invalid_request"}, status_code=422)
