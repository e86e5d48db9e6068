"""WooCommerce's error answers, and the ready answer an authentication verdict carries out of a handler."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse, Response


class EmulatorError(Exception):
    """Answered with WooCommerce's error body `{"code", "message", "data": {"status"}}`."""

    def __init__(self, status: int, code: str, message: str, **data: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.data = data

    def response(self, headers: Mapping[str, str] | None = None) -> JSONResponse:
        body = {"code": self.code, "message": self.message, "data": {"status": self.status, **self.data}}
        return JSONResponse(body, status_code=self.status, headers=headers)



class Answer(Exception):
    """Not an error: a ready response (an authentication verdict) carried out of the handler."""

    def __init__(self, response: Response) -> None:
        super().__init__("answer")
        self.response = response
