"""Every request and response type through a real server: the SageMaker SDK's own serializers and
deserializers, AWS's single-model shapes, malformed bodies of every format, and the environment variables."""

from __future__ import annotations

import io
import json
import os

import boto3
import httpx
import numpy as np
import pytest
import xgboost as xgb
from bodies import MALFORMED
from conftest import N_FEATURES, train_booster

from training.package import tar_gz

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")

ROWS = np.random.default_rng(7).random((3, N_FEATURES), dtype=np.float32)
X = np.random.default_rng(8).random((200, N_FEATURES), dtype=np.float32)
CSV_BODY = "\n".join(",".join(map(repr, row.tolist())) for row in ROWS)


def classifier() -> xgb.Booster:
    label = (X[:, 0] > 0.5).astype(int)
    return xgb.train({"objective": "binary:logistic", "nthread": 1}, xgb.DMatrix(X, label=label), 5)


@pytest.fixture(scope="module")
def boosters() -> dict[str, xgb.Booster]:
    return {"reg.tar.gz": train_booster(4), "clf.tar.gz": classifier(), "other.tar.gz": train_booster(5)}


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory, boosters):
    """A local endpoint (--models) serving each booster as a .tar.gz."""
    from conftest import ServerProcess

    folder = tmp_path_factory.mktemp("artifacts")
    for name, booster in boosters.items():
        (folder / name).write_bytes(tar_gz(bytes(booster.save_raw("ubj"))))
    server = ServerProcess(["--models", str(folder)])
    yield server
    server.stop()


def predictor(server, serializer, deserializer):
    import sagemaker
    from sagemaker.predictor import Predictor

    runtime = boto3.client("sagemaker-runtime", endpoint_url=server.url, region_name="us-east-1")
    session = sagemaker.Session(
        boto_session=boto3.Session(region_name="us-east-1"), sagemaker_runtime_client=runtime
    )
    return Predictor("local", sagemaker_session=session, serializer=serializer, deserializer=deserializer)


def libsvm(rows: np.ndarray) -> str:
    return "\n".join("0 " + " ".join(f"{i + 1}:{float(v)!r}" for i, v in enumerate(row)) for row in rows)


def serializers():
    from sagemaker.amazon.common import RecordSerializer
    from sagemaker.serializers import CSVSerializer, JSONSerializer, LibSVMSerializer, NumpySerializer

    return {
        "CSVSerializer": (CSVSerializer(), ROWS),
        "LibSVMSerializer": (LibSVMSerializer(), libsvm(ROWS)),
        "JSONSerializer": (JSONSerializer(), ROWS.tolist()),
        "NumpySerializer": (NumpySerializer(), ROWS),
        "RecordSerializer": (RecordSerializer(), ROWS),
    }


@pytest.mark.parametrize("name", ["CSVSerializer", "LibSVMSerializer", "JSONSerializer", "NumpySerializer",
                                  "RecordSerializer"])  # fmt: skip
def test_each_sdk_serializer_gets_xgboost_own_prediction(endpoint, boosters, name: str) -> None:
    from sagemaker.deserializers import JSONDeserializer

    serializer, data = serializers()[name]
    got = predictor(endpoint, serializer, JSONDeserializer()).predict(data, target_model="reg.tar.gz")
    np.testing.assert_allclose(got, boosters["reg.tar.gz"].inplace_predict(ROWS), rtol=1e-6)


def test_each_sdk_deserializer_reads_the_answer(endpoint, boosters) -> None:
    from sagemaker.amazon.common import RecordDeserializer
    from sagemaker.deserializers import CSVDeserializer, JSONDeserializer, NumpyDeserializer
    from sagemaker.serializers import CSVSerializer

    want = boosters["reg.tar.gz"].inplace_predict(ROWS)
    csv = predictor(endpoint, CSVSerializer(), CSVDeserializer()).predict(ROWS, target_model="reg.tar.gz")
    np.testing.assert_allclose(np.array(csv, dtype=float).ravel(), want, rtol=1e-6)
    npy = predictor(endpoint, CSVSerializer(), NumpyDeserializer()).predict(ROWS, target_model="reg.tar.gz")
    assert npy.dtype == np.float32
    np.testing.assert_array_equal(npy, want)
    records = predictor(endpoint, CSVSerializer(), RecordDeserializer()).predict(
        ROWS, target_model="reg.tar.gz"
    )
    np.testing.assert_array_equal([r.label["score"].float32_tensor.values[0] for r in records], want)
    got = predictor(endpoint, CSVSerializer(), JSONDeserializer()).predict(ROWS, target_model="reg.tar.gz")
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_sdk_predictor_selects_outputs_per_request(endpoint, boosters) -> None:
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.serializers import CSVSerializer

    p = boosters["clf.tar.gz"].inplace_predict(ROWS)
    sdk = predictor(endpoint, CSVSerializer(), JSONDeserializer())
    got = sdk.predict(
        ROWS, target_model="clf.tar.gz", custom_attributes="inference_output=predicted_label,probability"
    )
    assert [row["predicted_label"] for row in got["predictions"]] == (p > 0.5).astype(int).tolist()
    np.testing.assert_allclose([row["probability"] for row in got["predictions"]], p, rtol=1e-6)


def invoke(server, model: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(
        f"{server.url}/invocations", content=body, headers={"X-Amzn-SageMaker-Target-Model": model, **headers}
    )


CASES = [(kind, *case) for kind, cases in MALFORMED.items() for case in cases]


def test_malformed_bodies_are_400s_naming_the_problem_and_harm_nothing(endpoint, boosters) -> None:
    # Through the runtime route, as an SDK client sees them: ModelError (424) wrapping the container's 400.
    row = ",".join(map(repr, ROWS[0].tolist())).encode()
    before = invoke(endpoint, "other.tar.gz", row, {"Content-Type": "text/csv"}).json()
    wrong = []
    for kind, content_type, body, message in CASES:
        response = invoke(
            endpoint, "reg.tar.gz", body, {"Content-Type": content_type} if content_type else {}
        )
        answer = response.json()
        if not (response.status_code == 424 and answer.get("OriginalStatusCode") == 400):
            wrong.append((kind, message, response.status_code, answer))
        elif message not in answer["OriginalMessage"]:
            wrong.append((kind, message, answer["OriginalMessage"]))
    assert wrong == []
    assert httpx.get(endpoint.url + "/ping").status_code == 200
    assert invoke(endpoint, "other.tar.gz", row, {"Content-Type": "text/csv"}).json() == before
    assert before == pytest.approx(boosters["other.tar.gz"].inplace_predict(ROWS[:1]).tolist(), rel=1e-6)


def test_a_libsvm_body_that_is_not_libsvm_is_refused(endpoint) -> None:
    # What the SDK's XGBoostPredictor sends by default: its text/libsvm type on a CSV row.
    response = invoke(endpoint, "reg.tar.gz", b"2006,2800,4,2.5,1.1,2", {"Content-Type": "text/libsvm"})
    assert response.status_code == 424 and response.json()["OriginalStatusCode"] == 400
    assert "neither a label" in response.json()["OriginalMessage"]


def test_curl_default_content_type_is_read_as_the_body_looks(endpoint, boosters) -> None:
    want = boosters["reg.tar.gz"].inplace_predict(ROWS).tolist()
    csv = CSV_BODY.encode()
    for body in (csv, libsvm(ROWS).encode()):
        response = invoke(endpoint, "reg.tar.gz", body, {"Content-Type": "application/x-www-form-urlencoded"})
        assert response.json() == pytest.approx(want, rel=1e-6)


# --- single-model mode: AWS's single-model endpoint's shapes -------------------------------------------


def single_model(start_server, tmp_path, booster, **env):
    folder = tmp_path / "opt-ml-model"
    folder.mkdir()
    booster.save_model(str(folder / "xgboost-model.json"))
    return start_server("--model-dir", str(folder), env={"SAGEMAKER_MULTI_MODEL": "false", **env})


def deserialize(deserializer, response: httpx.Response):
    return deserializer.deserialize(io.BytesIO(response.content), response.headers["content-type"])


def test_single_model_answers_as_aws_single_model_endpoint(start_server, tmp_path) -> None:
    from sagemaker.amazon.common import RecordDeserializer
    from sagemaker.deserializers import CSVDeserializer, JSONDeserializer, NumpyDeserializer

    booster = train_booster(9)
    server = single_model(start_server, tmp_path, booster)
    want = booster.inplace_predict(ROWS)
    body = CSV_BODY

    def post(accept: str | None) -> httpx.Response:
        headers = {"Content-Type": "text/csv", **({"Accept": accept} if accept else {})}
        response = httpx.post(server.url + "/invocations", content=body, headers=headers)
        assert response.status_code == 200, response.text
        return response

    for accept in (None, "*/*"):  # AWS's default: text/csv, one line per row, each ending in a newline
        response = post(accept)
        assert response.headers["content-type"] == "text/csv" and response.text.endswith("\n")
        np.testing.assert_allclose(
            np.array(deserialize(CSVDeserializer(), response), float).ravel(), want, rtol=1e-6
        )
    document = deserialize(JSONDeserializer(), post("application/json"))
    np.testing.assert_allclose([entry["score"] for entry in document["predictions"]], want, rtol=1e-6)
    np.testing.assert_array_equal(deserialize(NumpyDeserializer(), post("application/x-npy")), want)
    records = deserialize(RecordDeserializer(), post("application/x-recordio-protobuf"))
    np.testing.assert_array_equal([r.label["score"].float32_tensor.values[0] for r in records], want)
    lines = post("application/jsonlines").text.splitlines()
    np.testing.assert_allclose([json.loads(line)["score"] for line in lines], want, rtol=1e-6)


def test_the_environment_selects_outputs_and_the_default_accept(start_server, tmp_path) -> None:
    booster = classifier()
    env = {
        "SAGEMAKER_INFERENCE_OUTPUT": "predicted_label, probabilities",
        "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "application/jsonlines",
    }
    server = single_model(start_server, tmp_path, booster, **env)
    p = booster.inplace_predict(ROWS)
    body = CSV_BODY
    response = httpx.post(server.url + "/invocations", content=body, headers={"Content-Type": "text/csv"})
    assert response.headers["content-type"] == "application/jsonlines"
    rows = [json.loads(line) for line in response.text.splitlines()]
    assert [row["predicted_label"] for row in rows] == (p > 0.5).astype(int).tolist()
    np.testing.assert_allclose([row["probabilities"][1] for row in rows], p, rtol=1e-6)
    selected = httpx.post(
        server.url + "/invocations",
        content=body,
        headers={
            "Content-Type": "text/csv",
            "X-Amzn-SageMaker-Custom-Attributes": "inference_output=predicted_score",
        },
    )
    assert selected.status_code == 400
    assert (
        "a binary:logistic model answers predicted_label, labels, probability" in selected.json()["message"]
    )


@pytest.mark.parametrize(
    "variable, value, words",
    [
        ("SAGEMAKER_INFERENCE_OUTPUT", "predicted_class", "unknown key(s) predicted_class"),
        ("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "image/png", "cannot answer in 'image/png'"),
    ],
)
def test_a_bad_variable_is_refused_naming_it(variable: str, value: str, words: str) -> None:
    import argparse

    from serve import config
    from serve.errors import CommandError

    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    with pytest.raises(CommandError) as caught:
        config.from_args(parser.parse_args([]), {variable: value})
    assert f"{variable}={value!r}" in str(caught.value) and words in str(caught.value)


def test_distinct_huge_content_type_and_accept_headers_are_not_retained(start_server, tmp_path) -> None:
    """The codecs memoize parsed Content-Type and Accept values; a memo keyed by raw headers kept every
    distinct value (256 per memo), so 512 distinct 1 MiB headers would keep ~512 MiB. Values over
    MEMO_MAX_CHARS (256) are parsed per request instead: the memos stay under 2 x 256 x 256 characters."""
    import psutil

    from handler.codecs import MEMO_MAX_CHARS

    booster = train_booster(2)
    # Headers this large need the header bound raised: the memo must hold even then.
    server = single_model(start_server, tmp_path, booster, MME_MAX_HEADER_BYTES="4MiB")
    process = psutil.Process(server.proc.pid)
    row = ",".join(map(repr, ROWS[0].tolist()))
    padding = "x" * (1 << 20)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for i in range(20):  # warm up: allocator arenas and the model's hot paths
            client.post(
                "/invocations", content=row, headers={"Content-Type": f"text/csv;p={i}", "Accept": "*/*"}
            )
        before = process.memory_info().rss
        for i in range(256):
            typed = client.post(
                "/invocations", content=row, headers={"Content-Type": f"text/csv;p={i}{padding}"}
            )
            assert typed.status_code == 200
            accept = client.post(
                "/invocations",
                content=row,
                headers={"Content-Type": "text/csv", "Accept": f"text/csv;x={i}{padding}"},
            )
            assert accept.status_code == 200
        after = process.memory_info().rss
        unknown = client.post("/invocations", content=row, headers={"Content-Type": f"a/b{padding}"})
        assert unknown.status_code == 415 and len(unknown.content) < 1000  # the message quotes it cut short
    assert after - before < 64 * 2**20, (
        f"RSS grew {(after - before) / 2**20:.0f} MiB over 512 distinct 1 MiB headers"
    )
    assert len(padding) > MEMO_MAX_CHARS  # every header above is one the memos must not keep
