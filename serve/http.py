"""The few HTTP pieces the server needs on top of raw ASGI: a request, a response, an error.

A framework's routing and middleware cost tens of microseconds per request; the invoke path is
short enough that they would be most of it, so this stays a thin, explicit layer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = "application/json"


class HTTPError(Exception):
    """An error answer; `kind` names it in the JSON body so clients can branch on it."""

    def __init__(self, status: int, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind or _KINDS.get(status, "Error")


_KINDS = {
    400: "BadRequest",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    424: "ModelError",
    500: "InternalServerError",
    503: "ServiceUnavailable",
    504: "Timeout",
    507: "InsufficientStorage",
}


@dataclass
class Request:
    scope: Scope
    receive: Receive
    method: str
    path: str
    headers: dict[str, str]

    @classmethod
    def from_scope(cls, scope: Scope, receive: Receive) -> Request:
        # Header names arrive lower-cased from uvicorn; latin-1 is HTTP's own header charset.
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        return cls(scope, receive, scope["method"], scope["path"], headers)

    def utf8_header(self, name: str) -> str | None:
        """A header whose value is UTF-8 text (boto3 sends a TargetModel such as `café.tar.gz` so);
        UnicodeDecodeError when it is not."""
        value = self.headers.get(name)
        if value is None or value.isascii():
            return value
        return value.encode("latin-1").decode("utf-8")

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(self.scope.get("query_string", b"").decode("latin-1")))

    async def body(self, limit: int) -> bytes:
        declared = self.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPError(413, f"request body of {declared} bytes is over the {limit}-byte limit")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise HTTPError(400, "client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise HTTPError(413, f"request body is over the {limit}-byte limit")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def json(self, limit: int) -> Any:
        raw = await self.body(limit)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise HTTPError(400, f"request body is not valid JSON: {exc}") from None


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    async def __call__(self, send: Send) -> None:
        headers = [
            (b"content-type", self.content_type.encode("latin-1")),
            (b"content-length", str(len(self.body)).encode()),
            *self.headers,
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def json_response(
    value: Any, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None
) -> Response:
    return Response(status, orjson.dumps(value), JSON, headers or [])


def error_response(error: HTTPError, headers: list[tuple[bytes, bytes]] | None = None) -> Response:
    body = {"code": error.status, "type": error.kind, "message": error.message}
    return json_response(body, error.status, headers)
