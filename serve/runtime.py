"""Error answers in the SageMaker runtime's wire shapes, so boto3 raises the exceptions AWS raises."""

from __future__ import annotations

from serve.http import Response, json_response


def runtime_error(status: int, code: str, message: str, *, original_status: int | None = None) -> Response:
    """`code` is the runtime's error shape: ValidationError, ModelError, ModelNotReadyException, ..."""
    body: dict[str, object] = {"message": message}
    if original_status is not None:
        # How SageMaker reports a container's own error: the container's status and message, wrapped.
        kind = "client" if original_status < 500 else "server"
        body["message"] = f'Received {kind} error ({original_status}) from model with message "{message}".'
        body["OriginalStatusCode"] = original_status
        body["OriginalMessage"] = message
    return json_response(body, status, [(b"x-amzn-errortype", f"{code}:".encode())])
