"""The V2 (Open/KServe) inference protocol over REST, JSON tensors: for Triton, MLServer and KServe clients.

Routes, over the same model cache as the SageMaker routes (serve.app hands `/v2/...` here):
  GET  /v2                                   {"name", "version", "extensions": []}
  GET  /v2/health/live                       200 {"live": true}
  GET  /v2/health/ready                      200 {"ready": true}; 503 while starting or draining
  GET  /v2/models/{name}[/versions/{v}]        metadata: one FP32 input [-1, features], the outputs
  GET  /v2/models/{name}[/versions/{v}]/ready  200 {"name", "ready": true} when resident; 404 otherwise
  POST /v2/models/{name}[/versions/{v}]/infer  {"inputs": [...]} -> {"model_name", "outputs": [...]}
Errors answer {"error": message}, as the protocol has them. With --models a model loads on its first
infer (or metadata) call, as on the SageMaker runtime route.

On the SageMaker invoke routes, an application/json body that is an object with an "inputs" list (what
Triton's SageMaker mode takes) is a V2 request too, and gets a V2 response.

A request holds one input tensor: shape [rows, features] (or [features], one row), a numeric datatype,
its `data` flat or nested in row-major order, or its bytes after the JSON (the binary extension; the
JSON's size in Inference-Header-Content-Length, or in Triton SageMaker mode's content type). Outputs are
always JSON data. The outputs are `output__0` (the raw prediction, Triton FIL's name; `predict` is
accepted for MLServer's) or selectable inference keys (handler/outputs.py) named in "outputs"; without
"outputs" the keys the custom attributes, model or container select, else `output__0`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import orjson

from handler import outputs
from handler.errors import BadRequest, HandlerError
from handler.model import Context, LoadedModel
from serve.cache import CacheError
from serve.endpoint import ModelNotReady
from serve.http import HTTPError, Request, Response, json_response
from serve.source import SourceError

if TYPE_CHECKING:
    from serve.app import App

INPUT_NAME = "input__0"
OUTPUT_NAME = "output__0"
_RAW_NAMES = (OUTPUT_NAME, "predict")
# The numeric datatypes and their binary-extension layouts (little-endian, row-major).
_DTYPES = {"BOOL": "?", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "i1",
           "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
           "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}  # fmt: skip
# Triton's SageMaker mode: JSON then binary tensors, the JSON's size a parameter of the content type.
BINARY_JSON = "application/vnd.sagemaker-triton.binary+json"
_JSON = b"application/json"
Invoke = Callable[[bytes, "str | None", "str | None", Context], tuple[bytes, str]]


def may_be_request(content_type: str | None, body: bytes) -> bool:
    """Whether an invoke route's request could be V2 (a JSON object mentioning "inputs"); cheap."""
    return (
        content_type is not None
        and content_type[:16].lower() == "application/json"
        and body[:64].lstrip()[:1] == b"{"
        and b'"inputs"' in body
    )


def pick(request: Request, model: LoadedModel, body: bytes) -> Invoke:
    """What answers an invoke: the model's own invoke, unless the request is V2 (a /v2 route, or a V2
    body on a SageMaker route), which is answered in V2."""
    headers = request.headers
    if request.path.startswith("/v2/"):
        size = headers.get("inference-header-content-length")  # the binary extension's JSON size
        return _invoker(model, request.path.split("/")[3], required=True, json_size=size)
    # A model with its own input_fn reads every body of the SageMaker routes itself.
    if model.outputs is None:
        return model.invoke
    content_type = headers.get("content-type") or ""
    binary = content_type[: len(BINARY_JSON)].lower() == BINARY_JSON
    if binary or may_be_request(content_type, body):
        name = headers.get("x-amzn-sagemaker-target-model")
        if name is None:
            parts = request.path.split("/")
            name = parts[2] if parts[1] == "models" else "model"
        size = _parameter(content_type, "json-header-size") if binary else None
        return _invoker(model, name, required=binary, json_size=size or ("" if binary else None))
    return model.invoke


def _parameter(content_type: str, name: str) -> str | None:
    for parameter in content_type.split(";")[1:]:
        key, _, value = parameter.partition("=")
        if key.strip().lower() == name:
            return value.strip()
    return None


def _invoker(model: LoadedModel, name: str, *, required: bool, json_size: str | None) -> Invoke:
    def invoke(
        body: bytes, content_type: str | None, accept: str | None, context: Context
    ) -> tuple[bytes, str]:
        binary = None
        if json_size is not None:
            if not json_size.isdigit() or int(json_size) > len(body):
                raise BadRequest(f"the JSON header size {json_size!r} is not a byte count within the body")
            body, binary = body[: int(json_size)], memoryview(body)[int(json_size) :]
        document = _document(body, required=required)
        if document is None:  # JSON that only looked like V2: the model reads it as usual
            return model.invoke(body, content_type, accept, context)
        return infer(model, name, document, context, binary), "application/json"

    return invoke


def _document(body: bytes, *, required: bool) -> dict | None:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if required:
            raise BadRequest(f"the V2 request body is not valid JSON: {exc}") from None
        return None
    if isinstance(document, dict) and isinstance(document.get("inputs"), list):
        return document
    if required:
        raise BadRequest('a V2 request body is a JSON object with an "inputs" list')
    return None


def infer(
    model: LoadedModel, name: str, document: dict, context: Context, binary: memoryview | None
) -> bytes:
    info = model.outputs
    if info is None:
        raise BadRequest(
            "this model's code/inference.py has its own input_fn: V2 requests need the default one"
        )
    rows = rows_of(document["inputs"], info.n_features, binary)
    prediction = np.asarray(model.predict_rows(rows, context), dtype=np.float32)
    tensors = [_tensor(output_name, prediction, info) for output_name in _names(document, info, context)]
    response = {"model_name": name, "outputs": tensors}
    if "id" in document:
        response["id"] = document["id"]
    return orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)


def rows_of(inputs: list, n_features: int | None, binary: memoryview | None = None) -> np.ndarray:
    """The one input tensor as C-contiguous float32 rows; `binary`, the bytes after the JSON."""
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest(
            f"a V2 request needs exactly one input tensor [rows, features]; it has {len(inputs)}"
        )
    tensor = inputs[0]
    label = f"input {tensor.get('name', '?')!r}"
    shape, datatype, data = tensor.get("shape"), tensor.get("datatype"), tensor.get("data")
    if not (
        isinstance(shape, list) and 1 <= len(shape) <= 2 and all(type(d) is int and d >= 0 for d in shape)
    ):
        raise BadRequest(f"{label}: shape must be [rows, features] or [features], got {_short(shape)}")
    if datatype not in _DTYPES:
        raise BadRequest(
            f"{label}: datatype {_short(datatype)} is not numeric; use FP32 (or another number type)"
        )
    count = math.prod(shape)
    if count > outputs.recordio.MAX_CELLS:
        raise BadRequest(f"{label}: shape {shape} is over {outputs.recordio.MAX_CELLS} values")
    parameters = tensor.get("parameters")
    if isinstance(parameters, dict) and "binary_data_size" in parameters:
        values = _binary_values(label, parameters["binary_data_size"], datatype, count, binary)
    else:
        values = _json_values(label, data, datatype, count)
    rows = values.reshape(shape if len(shape) == 2 else (1, shape[0])).astype(np.float32)
    if rows.shape[0] == 0:
        raise BadRequest(f"{label}: no rows")
    if n_features is not None and rows.shape[1] != n_features:
        raise BadRequest(f"{label}: expected {n_features} features, got {rows.shape[1]}")
    if np.isinf(rows).any():
        raise BadRequest(f"{label}: a value is beyond float32's range")
    return np.ascontiguousarray(rows)


def _binary_values(
    label: str, size: object, datatype: str, count: int, binary: memoryview | None
) -> np.ndarray:
    dtype = np.dtype(_DTYPES[datatype])
    if binary is None:
        raise BadRequest(
            f"{label}: binary_data_size without a JSON header size (Inference-Header-Content-Length, or "
            f"json-header-size in {BINARY_JSON})"
        )
    if type(size) is not int or size != count * dtype.itemsize or size != len(binary):
        raise BadRequest(
            f"{label}: binary_data_size {_short(size)} must be the {count} values' {count * dtype.itemsize} "
            f"bytes, and the body holds {len(binary)} after its JSON"
        )
    return np.frombuffer(binary, dtype=dtype, count=count)


def _json_values(label: str, data: object, datatype: str, count: int) -> np.ndarray:
    if not isinstance(data, list):
        raise BadRequest(f"{label}: data must be a list of numbers")
    try:
        values = np.array(data)
    except ValueError:
        raise BadRequest(
            f"{label}: data is ragged; give it flat or as nested lists of equal length"
        ) from None
    if values.dtype.kind not in "biuf":
        raise BadRequest(f"{label}: data must hold only numbers (as {datatype})")
    if values.size != count:
        raise BadRequest(f"{label}: shape needs {count} values, data has {values.size}")
    return values


def _names(document: dict, info: outputs.ModelOutputs, context: Context) -> list[str]:
    requested = document.get("outputs")
    if requested is None:
        keys, _ = outputs.chosen(context.custom_attributes, info)
        return list(keys) or [OUTPUT_NAME]
    if not isinstance(requested, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in requested
    ):
        raise BadRequest('"outputs" must be a list of {"name": ...}')
    names = [o["name"] for o in requested]
    known = (*_RAW_NAMES, *outputs.allowed(info.objective))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise BadRequest(
            f"unknown output(s) {', '.join(map(repr, unknown))}; this model has {', '.join(known)}"
        )
    return names


def _tensor(name: str, prediction: np.ndarray, info: outputs.ModelOutputs) -> dict:
    if name in _RAW_NAMES:
        values = prediction
    else:
        column = outputs.select(prediction, info.objective, (name,), info.num_class, f"output {name!r}")
        values = np.array([row[name] for row in column])
    datatype = "INT64" if values.dtype.kind in "iub" else "FP32"
    values = values.astype(np.int64 if datatype == "INT64" else np.float32)
    return {"name": name, "shape": list(values.shape), "datatype": datatype, "data": values.ravel()}


def metadata(name: str, info: outputs.ModelOutputs | None) -> dict:
    width = info.n_features if info is not None and info.n_features is not None else -1
    tensors = []
    if info is not None:
        # Each output's datatype and shape as an infer call answers them: from a one-row prediction.
        sample = np.zeros((1, info.num_class) if info.objective == "multi:softprob" else 1, dtype=np.float32)
        for output_name in (OUTPUT_NAME, *outputs.allowed(info.objective)):
            tensor = _tensor(output_name, sample, info)
            tensors.append(
                {"name": output_name, "datatype": tensor["datatype"], "shape": [-1, *tensor["shape"][1:]]}
            )
    return {
        "name": name,
        "versions": ["1"],
        "platform": "xgboost",
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, width]}],
        "outputs": tensors,
    }


# --- routes -----------------------------------------------------------------------------------------


async def route(app: App, request: Request, parts: list[str]) -> Response:
    """Answer /v2/... (parts after "v2"); every error as {"error": message}."""
    try:
        return await _route(app, request, parts)
    except HTTPError as exc:
        return _error(exc.status, exc.message)
    except (HandlerError, CacheError) as exc:
        return _error(exc.status, str(exc))
    except ModelNotReady as exc:
        return _error(503, str(exc))
    except SourceError as exc:
        return _error(404 if exc.status == 400 else exc.status, str(exc))


async def _route(app: App, request: Request, parts: list[str]) -> Response:
    method = request.method
    if len(parts) >= 4 and parts[0] == "models" and parts[2] == "versions":
        parts = [parts[0], parts[1], *parts[4:]]  # one version per model: any version names it
    match parts:
        case [] | [""]:
            app._allow(method, "GET")
            return json_response({"name": "xgboost-mme", "version": "0.1.0", "extensions": []})
        case ["health", "live"]:
            app._allow(method, "GET")
            return json_response({"live": True})
        case ["health", "ready"]:
            app._allow(method, "GET")
            ready = app.ready and not app.draining
            return json_response({"ready": ready}, 200 if ready else 503)
        case ["models", name]:
            app._allow(method, "GET")
            await _resident(app, name)
            with app.cache.lease(name) as entry:
                return json_response(metadata(name, entry.model.outputs))
        case ["models", name, "ready"]:
            app._allow(method, "GET")
            if name in app.cache and not app.cache.is_loading(name):
                return json_response({"name": name, "ready": True})
            return _error(404, f"model {name!r} is not loaded")
        case ["models", name, "infer"]:
            app._allow(method, "POST")
            await _resident(app, name)
            return await app.invoke(request, name)
    raise HTTPError(404, f"no V2 route for {method} {request.path}")


async def _resident(app: App, name: str) -> None:
    if app.endpoint is not None:
        await app.endpoint.ensure(name)


def _error(status: int, message: str) -> Response:
    return Response(status, orjson.dumps({"error": message}), _JSON.decode())


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."
