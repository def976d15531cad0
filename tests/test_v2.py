"""The V2 inference protocol (KServe/Triton/MLServer) against a real server: its REST routes over the model
cache, and V2 bodies on SageMaker's invoke routes, as a KServe-style httpx client sends them."""

from __future__ import annotations

import json
import shutil

import httpx
import numpy as np
import pytest
import xgboost as xgb
from conftest import N_FEATURES, train_booster

from training.package import tar_gz

ROWS = np.random.default_rng(11).random((4, N_FEATURES), dtype=np.float32)
X = np.random.default_rng(12).random((300, N_FEATURES), dtype=np.float32)


def request(rows: np.ndarray, **extra) -> dict:
    return {
        "inputs": [
            {"name": "input__0", "shape": list(rows.shape), "datatype": "FP32", "data": rows.tolist()}
        ],
        **extra,
    }


def softprob() -> xgb.Booster:
    label = (X[:, 0] * 3).astype(int)
    params = {"objective": "multi:softprob", "num_class": 3, "nthread": 1}
    return xgb.train(params, xgb.DMatrix(X, label=label), 4)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The MME contract: two models loaded with POST /models."""
    from conftest import ServerProcess

    root = tmp_path_factory.mktemp("root")
    boosters = {"reg": train_booster(2), "soft": softprob()}
    for name, booster in boosters.items():
        (root / name).mkdir()
        booster.save_model(str(root / name / "xgboost-model.ubj"))
    server = ServerProcess(["--model-root", str(root)])
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for name in boosters:
            assert (
                client.post("/models", json={"model_name": name, "url": str(root / name)}).status_code == 200
            )
        yield client, boosters
    server.stop()


def test_health_and_server_metadata(served) -> None:
    client, _ = served
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2").json()["name"] == "xgboost-mme"


def test_model_metadata_and_readiness(served) -> None:
    client, _ = served
    metadata = client.get("/v2/models/soft").json()
    assert metadata["inputs"] == [{"name": "input__0", "datatype": "FP32", "shape": [-1, N_FEATURES]}]
    by_name = {tensor["name"]: tensor for tensor in metadata["outputs"]}
    assert by_name["output__0"] == {"name": "output__0", "datatype": "FP32", "shape": [-1, 3]}
    assert by_name["predicted_label"]["datatype"] == "INT64" and by_name["probabilities"]["shape"] == [-1, 3]
    assert client.get("/v2/models/reg/versions/1").json()["outputs"] == [
        {"name": "output__0", "datatype": "FP32", "shape": [-1]},
        {"name": "predicted_score", "datatype": "FP32", "shape": [-1]},
    ]
    assert client.get("/v2/models/reg/ready").json() == {"name": "reg", "ready": True}
    missing = client.get("/v2/models/nope/ready")
    assert missing.status_code == 404 and "nope" in missing.json()["error"]


def test_infer_answers_xgboost_own_prediction(served) -> None:
    client, boosters = served
    for name, booster in boosters.items():
        response = client.post(f"/v2/models/{name}/infer", json=request(ROWS, id="req-1"))
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["model_name"] == name and answer["id"] == "req-1"
        (output,) = answer["outputs"]
        want = booster.inplace_predict(ROWS)
        assert (
            output["name"] == "output__0"
            and output["shape"] == list(want.shape)
            and output["datatype"] == "FP32"
        )
        np.testing.assert_allclose(np.reshape(output["data"], output["shape"]), want, rtol=1e-6)


def test_flat_data_a_single_row_and_other_number_types(served) -> None:
    client, boosters = served
    want = boosters["reg"].inplace_predict(ROWS[:1])
    flat = {"inputs": [{"name": "x", "shape": [1, N_FEATURES], "datatype": "FP64", "data": ROWS[0].tolist()}]}
    one_row = {"inputs": [{"name": "x", "shape": [N_FEATURES], "datatype": "FP32", "data": ROWS[0].tolist()}]}
    for body in (flat, one_row):
        data = client.post("/v2/models/reg/versions/7/infer", json=body).json()["outputs"][0]["data"]
        np.testing.assert_allclose(data, want, rtol=1e-6)
    ints = {
        "inputs": [{"name": "x", "shape": [1, N_FEATURES], "datatype": "INT32", "data": [1, 0, 1, 0, 1, 0]}]
    }
    got = client.post("/v2/models/reg/infer", json=ints).json()["outputs"][0]["data"]
    np.testing.assert_allclose(
        got, boosters["reg"].inplace_predict(np.array([[1, 0, 1, 0, 1, 0]], np.float32))
    )


def test_requested_outputs_include_selectable_keys(served) -> None:
    client, boosters = served
    p = boosters["soft"].inplace_predict(ROWS)
    body = request(ROWS, outputs=[{"name": "predicted_label"}, {"name": "probability"}, {"name": "predict"}])
    label, probability, raw = client.post("/v2/models/soft/infer", json=body).json()["outputs"]
    assert label == {
        "name": "predicted_label",
        "shape": [4],
        "datatype": "INT64",
        "data": p.argmax(axis=1).tolist(),
    }
    np.testing.assert_allclose(probability["data"], p.max(axis=1), rtol=1e-6)
    np.testing.assert_allclose(np.reshape(raw["data"], raw["shape"]), p, rtol=1e-6)
    headers = {"X-Amzn-SageMaker-Custom-Attributes": "inference_output=labels"}
    (labels,) = client.post("/v2/models/soft/infer", json=request(ROWS[:1]), headers=headers).json()[
        "outputs"
    ]
    assert labels == {"name": "labels", "shape": [1, 3], "datatype": "INT64", "data": [0, 1, 2]}


def test_a_v2_body_on_sagemaker_invoke_routes_gets_a_v2_answer(served) -> None:
    client, boosters = served
    response = client.post("/models/reg/invoke", json=request(ROWS))
    assert response.status_code == 200 and response.json()["model_name"] == "reg"
    np.testing.assert_allclose(
        response.json()["outputs"][0]["data"], boosters["reg"].inplace_predict(ROWS), rtol=1e-6
    )
    # Ordinary JSON bodies still read as before.
    plain = client.post("/models/reg/invoke", json={"instances": ROWS.tolist()})
    np.testing.assert_allclose(plain.json(), boosters["reg"].inplace_predict(ROWS), rtol=1e-6)


def test_triton_sagemaker_mode_and_the_local_endpoint(start_server, tmp_path) -> None:
    # Triton's SageMaker mode: V2 JSON on /invocations, named by TargetModel. V2 routes load on demand.
    booster = train_booster(3)
    (tmp_path / "a.tar.gz").write_bytes(tar_gz(bytes(booster.save_raw("ubj"))))
    server = start_server("--models", str(tmp_path))
    want = booster.inplace_predict(ROWS)
    response = httpx.post(
        server.url + "/invocations", json=request(ROWS), headers={"X-Amzn-SageMaker-Target-Model": "a.tar.gz"}
    )
    assert response.status_code == 200 and response.json()["model_name"] == "a.tar.gz"
    np.testing.assert_allclose(response.json()["outputs"][0]["data"], want, rtol=1e-6)
    shutil.copy(tmp_path / "a.tar.gz", tmp_path / "b.tar.gz")
    fresh = httpx.post(server.url + "/v2/models/b.tar.gz/infer", json=request(ROWS))
    np.testing.assert_allclose(fresh.json()["outputs"][0]["data"], want, rtol=1e-6)
    missing = httpx.post(server.url + "/v2/models/zz.tar.gz/infer", json=request(ROWS))
    assert missing.status_code == 404 and "zz.tar.gz" in missing.json()["error"]


def test_single_model_mode_serves_its_model_as_model(start_server, tmp_path) -> None:
    folder = tmp_path / "opt-ml-model"
    folder.mkdir()
    booster = train_booster(6)
    booster.save_model(str(folder / "xgboost-model.json"))
    server = start_server("--model-dir", str(folder), env={"SAGEMAKER_MULTI_MODEL": "false"})
    for path in ("/v2/models/model/infer", "/invocations"):
        response = httpx.post(server.url + path, json=request(ROWS))
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(
            response.json()["outputs"][0]["data"], booster.inplace_predict(ROWS), rtol=1e-6
        )


def tensor(**fields) -> dict:
    return {
        "inputs": [
            {"name": "x", "shape": [1, N_FEATURES], "datatype": "FP32", "data": [1.0] * N_FEATURES, **fields}
        ]
    }


MALFORMED = [
    (b"{", "not valid JSON"),
    (b"[1,2,3]", 'JSON object with an "inputs" list'),
    (b'{"inputs": {}}', 'JSON object with an "inputs" list'),
    ({"inputs": []}, "exactly one input tensor"),
    ({"inputs": [tensor()["inputs"][0]] * 2}, "exactly one input tensor [rows, features]; it has 2"),
    ({"inputs": ["x"]}, "exactly one input tensor"),
    (tensor(shape=[1, 2, 3]), "shape must be [rows, features]"),
    (tensor(shape="1,6"), "shape must be [rows, features]"),
    (tensor(shape=[-1, 6]), "shape must be [rows, features]"),
    (tensor(shape=[1.5, 6]), "shape must be [rows, features]"),
    (tensor(datatype="BYTES", data=["a"] * 6), "datatype 'BYTES' is not numeric"),
    (tensor(datatype=None), "datatype None is not numeric"),
    (tensor(data="1,2,3"), "data must be a list of numbers"),
    (tensor(data=[1.0] * 5), "needs 6 values, data has 5"),
    (tensor(data=[[1.0] * 6, [1.0] * 2], shape=[2, 6]), "data is ragged"),
    (tensor(data=["1"] * 6), "data must hold only numbers"),
    (tensor(data=[None] * 6), "data must hold only numbers"),
    (tensor(shape=[1, 3], data=[1.0] * 3), "expected 6 features, got 3"),
    (tensor(shape=[0, 6], data=[]), "no rows"),
    (tensor(parameters={"binary_data_size": 24}), "binary_data_size without a JSON header size"),
    (tensor(shape=[1 << 20, 1 << 20]), "is over"),
    (tensor(data=[1e39] * 6), "beyond float32's range"),
    ({**tensor(), "outputs": [{"name": "probabilities"}]}, "unknown output(s) 'probabilities'"),
    ({**tensor(), "outputs": "output__0"}, '"outputs" must be a list'),
]


@pytest.mark.parametrize("body, words", MALFORMED, ids=[words[:30] for _, words in MALFORMED])
def test_malformed_v2_requests_are_400s_naming_the_problem(served, body, words: str) -> None:
    client, boosters = served
    content = body if isinstance(body, bytes) else None
    response = client.post("/v2/models/reg/infer", content=content, json=None if content else body)
    assert response.status_code == 400 and words in response.json()["error"], response.text
    ok = client.post("/v2/models/soft/infer", json=request(ROWS[:1])).json()["outputs"][0]["data"]
    np.testing.assert_allclose(ok, boosters["soft"].inplace_predict(ROWS[:1]).ravel(), rtol=1e-6)


def binary(rows: np.ndarray, datatype: str = "FP32", size: int | None = None) -> tuple[bytes, int]:
    """A binary-extension body (tritonclient's default): the JSON, then the tensor's raw bytes."""
    raw = rows.astype({"FP32": "<f4", "FP64": "<f8", "INT64": "<i8"}[datatype]).tobytes()
    parameters = {"binary_data_size": len(raw) if size is None else size}
    header = {
        "inputs": [
            {"name": "input__0", "shape": list(rows.shape), "datatype": datatype, "parameters": parameters}
        ]
    }
    text = json.dumps(header).encode()
    return text + raw, len(text)


def test_binary_tensor_data_on_the_v2_route_and_in_triton_sagemaker_mode(served) -> None:
    client, boosters = served
    want = boosters["reg"].inplace_predict(ROWS)
    for datatype in ("FP32", "FP64"):
        body, size = binary(ROWS, datatype)
        headers = {"Inference-Header-Content-Length": str(size), "Content-Type": "application/octet-stream"}
        response = client.post("/v2/models/reg/infer", content=body, headers=headers)
        np.testing.assert_allclose(response.json()["outputs"][0]["data"], want, rtol=1e-6)
        content_type = f"application/vnd.sagemaker-triton.binary+json;json-header-size={size}"
        response = client.post("/models/reg/invoke", content=body, headers={"Content-Type": content_type})
        np.testing.assert_allclose(response.json()["outputs"][0]["data"], want, rtol=1e-6)


@pytest.mark.parametrize(
    "body_size, header, words",
    [
        ((ROWS, "FP32", 5), None, "binary_data_size 5 must be the 24 values' 96 bytes"),
        ((ROWS[:1], "FP32", None), "9999", "not a byte count within the body"),
        ((ROWS[:1], "FP32", None), "x", "not a byte count within the body"),
        ((ROWS[:1], "INT64", None), "-", "binary_data_size 48 must be"),
    ],
)
def test_malformed_binary_tensor_data(served, body_size, header, words: str) -> None:
    client, _ = served
    body, size = binary(*body_size)
    if header == "-":  # the header is right, but extra bytes trail the tensor
        body, header = body + b"\0" * 8, str(size)
    response = client.post(
        "/v2/models/reg/infer", content=body, headers={"Inference-Header-Content-Length": header or str(size)}
    )
    assert response.status_code == 400 and words in response.json()["error"], response.text


def test_v2_route_errors(served) -> None:
    client, _ = served
    assert client.get("/v2/models/reg/infer").status_code == 405
    assert client.get("/v2/models/nope").status_code == 404
    assert client.get("/v2/repository").json() == {"error": "no V2 route for GET /v2/repository"}
