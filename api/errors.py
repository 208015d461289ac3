"""One error shape for every error: ``{"error": {"code", "message", "details"}}``.

quantcore's domain errors map to HTTP statuses in one table; validation errors name the field.
The OpenAPI document declares that shape for every operation's 4xx and 503 responses.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.storage import StorageFull
from quantcore.errors import QuantcoreError

log = logging.getLogger(__name__)

QUANTCORE_STATUS = {
    "invalid_model": 422,
    "unsafe_model_file": 422,
    "invalid_dataset": 422,
    "invalid_params": 422,
    "invalid_artifact": 422,
    "unknown_name": 422,
    "nothing_quantized": 422,
    "cancelled": 409,
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details or {}
        self.headers = headers


def not_found(kind: str, ident: object) -> ApiError:
    return ApiError(404, "not_found", f"{kind} {ident} does not exist", {"id": ident})


def _body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def _declare_errors(schema: dict[str, Any]) -> None:
    """Declare the one error body on every operation: as ``4XX`` and ``503``, and as ``422`` in
    place of FastAPI's own validation error schema, which describes a body this API never sends."""
    from api.schemas import ErrorBody  # the OpenAPI document is built on first use only

    body = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(body.pop("$defs", {}))
    components["ErrorBody"] = body
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            responses["422"] = {"description": "Invalid request", "content": content}
            responses.setdefault("4XX", {"description": "Refused", "content": content})
            responses.setdefault("503", {"description": "Busy; retry", "content": content})


def install(app: FastAPI) -> None:
    build_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _declare_errors(build_openapi())  # FastAPI caches what it builds in openapi_schema
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(ApiError)
    async def _api_error(_req: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            _body(exc.code, exc.message, exc.details), status_code=exc.status, headers=exc.headers
        )

    @app.exception_handler(QuantcoreError)
    async def _quantcore_error(_req: Request, exc: QuantcoreError) -> JSONResponse:
        status = QUANTCORE_STATUS.get(exc.code, 422)
        return JSONResponse(_body(exc.code, exc.message, exc.details), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"]}
            for e in exc.errors()
        ]
        text = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        return JSONResponse(
            _body("invalid_request", f"invalid request: {text}", {"errors": problems}),
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(_body(code, str(exc.detail)), status_code=exc.status_code)

    @app.exception_handler(SQLAlchemyTimeout)
    async def _busy(_req: Request, exc: SQLAlchemyTimeout) -> JSONResponse:
        log.warning("database pool exhausted: %s", exc)
        return JSONResponse(
            _body("busy", "the server is busy; retry in a moment"),
            status_code=503,
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(StorageFull)
    async def _full(_req: Request, exc: StorageFull) -> JSONResponse:
        log.error("blob store full: %s", exc.root)
        return JSONResponse(
            _body("storage_full", "the server has no disk space left for this; nothing was kept"),
            status_code=507,
        )

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(
            _body("internal_error", "internal error; see the server log"), status_code=500
        )
