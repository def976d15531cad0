"""The HTTP floor: a raw ASGI app on the same stack as ours (uvicorn, serve.protocol, uvloop) answering b"".

Run as its own process: `python -m bench.floor_app PORT`. Whatever our server spends above this
floor is routing, parsing and the model.
"""

from __future__ import annotations

import sys

import uvicorn

from serve.protocol import Protocol

HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"0")]


async def app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    if scope["method"] == "POST":
        while (await receive()).get("more_body"):
            pass
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": b""})


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http=Protocol,
        lifespan="off",
        access_log=False,
        log_level="warning",
    )
