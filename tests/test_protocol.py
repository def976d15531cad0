"""serve.protocol holds a response's writes for one turn of the event loop: whatever it holds must still
go out, in order, on every path uvicorn writes by (interim 100 Continue, pipelining, close after an error)."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture(scope="module")
def server():
    from conftest import ServerProcess

    process = ServerProcess([])
    yield process
    process.stop()


def connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def read_until(sock: socket.socket, marker: bytes, count: int = 1) -> bytes:
    data = b""
    while data.count(marker) < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def read_to_eof(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_interim_100_continue_is_not_held(server):
    body = b'{"model_name": "m", "url": "/nowhere/model"}'
    with connect(server) as sock:
        sock.sendall(
            b"POST /models HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        # The client sends its body only after the interim answer: a held one would wait forever.
        assert read_until(sock, b"\r\n\r\n").startswith(b"HTTP/1.1 100 Continue\r\n")
        sock.sendall(body)
        answer = read_until(sock, b"}")
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"outside the model root" in answer


def test_pipelined_requests_answered_in_order(server):
    with connect(server) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\nGET /models/absent HTTP/1.1\r\nHost: x\r\n\r\n")
        answers = read_until(sock, b"HTTP/1.1 ", count=2)
        answers += read_until(sock, b"}") if not answers.endswith(b"}") else b""
    first, second = answers.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 ")
    assert second.startswith(b"404 ")
    assert b"absent" in second


def test_connection_close_sends_whole_answer_then_closes(server):
    with connect(server) as sock:
        sock.sendall(b"GET /models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = read_to_eof(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == b'{"models":[],"nextPageToken":null}'


def test_malformed_request_gets_its_400_before_the_close(server):
    # uvicorn answers a request it cannot parse and closes at once: the held answer must go out first.
    with connect(server) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost x-no-colon\r\n\r\n")
        answer = read_to_eof(sock)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"Invalid HTTP request" in answer


def test_concurrent_connections_each_get_their_own_answers_in_order(server):
    # With other requests in flight, answers wait for the end of the loop's turn: each must still arrive,
    # and well before the 5 s keep-alive timeout, whose close would also let held bytes out.
    socks = [connect(server) for _ in range(16)]
    try:
        for i, sock in enumerate(socks):
            sock.settimeout(3)
            requests = [b"GET /models/m-%d-%d HTTP/1.1\r\nHost: x\r\n\r\n" % (i, j) for j in range(3)]
            sock.sendall(b"".join(requests))
        for i, sock in enumerate(socks):
            answers = read_until(sock, b"}", count=3)
            names = [part.split(b"'")[1] for part in answers.split(b"HTTP/1.1 404 ")[1:]]
            assert names == [b"m-%d-%d" % (i, j) for j in range(3)]
    finally:
        for sock in socks:
            sock.close()
