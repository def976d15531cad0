"""The local endpoint: models on demand from a folder or S3, through boto3's sagemaker-runtime client."""

from __future__ import annotations

import concurrent.futures
import io
import json
import tarfile
import time
from pathlib import Path

import boto3
import httpx
import numpy as np
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from conftest import free_port, moto_server, predict_artifact

ROW = "0.5,0.25,0.75,0.1,0.9,0.3"
X = np.array([[0.5, 0.25, 0.75, 0.1, 0.9, 0.3]], dtype=np.float32)


def runtime(url: str):
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=url,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, read_timeout=120),
    )


def invoke(client, target: str, body: str = ROW, **extra):
    response = client.invoke_endpoint(
        EndpointName="local", TargetModel=target, ContentType="text/csv", Body=body, **extra
    )
    return response


def error_of(call) -> tuple[str, dict]:
    with pytest.raises(ClientError) as info:
        call()
    return info.value.response["Error"]["Code"], info.value.response


@pytest.fixture
def folder(tmp_path: Path, artifact_bytes) -> Path:
    root = tmp_path / "artifacts"
    (root / "v2").mkdir(parents=True)
    for seed, name in enumerate(["Chicago_IL.tar.gz", "Houston_TX.tar.gz", "v2/Chicago_IL.tar.gz"]):
        (root / name).write_bytes(artifact_bytes(seed))
    return root


def hostile_tar(member: tarfile.TarInfo, data: bytes = b"x") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return buffer.getvalue()


def test_boto3_invoke_endpoint_with_target_model(start_server, folder, artifact_bytes):
    server = start_server("--models", str(folder))
    client = runtime(server.url)
    for seed, name in enumerate(["Chicago_IL.tar.gz", "Houston_TX.tar.gz", "v2/Chicago_IL.tar.gz"]):
        for _ in range(2):  # cold, then warm
            response = invoke(client, name, CustomAttributes="c=1")
            assert response["ContentType"] == "application/json"
            assert response["InvokedProductionVariant"] == "AllTraffic"
            assert response["CustomAttributes"] == "c=1"
            got = np.array(json.loads(response["Body"].read()))
            assert got.tolist() == pytest.approx(predict_artifact(artifact_bytes(seed), X), rel=1e-6)
    listed = httpx.get(server.url + "/models").json()["models"]
    assert sorted(m["modelName"] for m in listed) == sorted(
        ["Chicago_IL.tar.gz", "Houston_TX.tar.gz", "v2/Chicago_IL.tar.gz"]
    )


def test_curl_style_invocations_with_target_header(start_server, folder, artifact_bytes):
    server = start_server("--models", str(folder))
    response = httpx.post(
        server.url + "/invocations",
        content=ROW,
        headers={
            "Content-Type": "text/csv",
            "Accept": "text/csv",
            "X-Amzn-SageMaker-Target-Model": "Houston_TX.tar.gz",
        },
    )
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    assert float(response.text) == pytest.approx(predict_artifact(artifact_bytes(1), X)[0], rel=1e-6)


def test_bad_targets_and_artifacts_get_runtime_errors(start_server, folder, tmp_path):
    (folder / "corrupt.tar.gz").write_bytes(b"this is not gzip")
    (folder / "slip.tar.gz").write_bytes(hostile_tar(tarfile.TarInfo("../escaped")))
    link = tarfile.TarInfo("xgboost-model")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    (folder / "link.tar.gz").write_bytes(hostile_tar(link))
    empty_dir = tarfile.TarInfo("readme.txt")
    empty_dir.size = 1
    (folder / "nomodel.tar.gz").write_bytes(hostile_tar(empty_dir))
    cache_dir = tmp_path / "cache"
    server = start_server("--models", str(folder), "--cache-dir", str(cache_dir))
    client = runtime(server.url)
    assert invoke(client, "Chicago_IL.tar.gz")["Body"].read()

    for target in ["Missing_XX.tar.gz", "../artifacts/Chicago_IL.tar.gz", "/etc/passwd.tar.gz", "Chicago_IL"]:
        code, response = error_of(lambda t=target: invoke(client, t))
        assert code == "ValidationError", target
        assert response["ResponseMetadata"]["HTTPStatusCode"] == 400

    for target, needle in [
        ("corrupt.tar.gz", "gzip"),
        ("slip.tar.gz", "escaped"),
        ("link.tar.gz", "link"),
        ("nomodel.tar.gz", "model"),
    ]:
        code, response = error_of(lambda t=target: invoke(client, t))
        assert code == "ModelError", target
        assert response["ResponseMetadata"]["HTTPStatusCode"] == 424
        assert response["OriginalStatusCode"] == 400 and needle in response["OriginalMessage"].lower(), (
            response
        )

    code, response = error_of(lambda: invoke(client, "Chicago_IL.tar.gz", body="1,2,not-a-number,4,5,6"))
    assert code == "ModelError" and response["OriginalStatusCode"] == 400

    # Nothing escaped the cache, and every good model still answers.
    assert not (tmp_path / "escaped").exists()
    assert all(p.resolve().is_relative_to(cache_dir.resolve()) for p in cache_dir.rglob("*"))
    assert invoke(client, "Houston_TX.tar.gz")["Body"].read()
    assert httpx.get(server.url + "/ping").status_code == 200


def test_overwritten_artifact_is_picked_up_after_revalidation(start_server, folder, artifact_bytes):
    fresh = runtime(start_server("--models", str(folder), "--revalidate-after", "0").url)
    stale = runtime(start_server("--models", str(folder), "--revalidate-after", "off").url)
    first = predict_artifact(artifact_bytes(0), X)
    for client in (fresh, stale):
        assert np.allclose(json.loads(invoke(client, "Chicago_IL.tar.gz")["Body"].read()), first)
    time.sleep(0.01)  # a distinct mtime, as any real overwrite has
    (folder / "Chicago_IL.tar.gz").write_bytes(artifact_bytes(5))
    second = predict_artifact(artifact_bytes(5), X)
    assert np.allclose(json.loads(invoke(fresh, "Chicago_IL.tar.gz")["Body"].read()), second)
    assert np.allclose(json.loads(invoke(stale, "Chicago_IL.tar.gz")["Body"].read()), first)


def test_s3_source_through_moto(start_server, moto_endpoint, s3, bucket, artifact_bytes):
    s3.put_object(Bucket=bucket, Key="mme/Chicago_IL.tar.gz", Body=artifact_bytes(0))
    s3.put_object(Bucket=bucket, Key="mme/v2/Dallas_TX.tar.gz", Body=artifact_bytes(1))
    server = start_server(
        "--models", f"s3://{bucket}/mme/", "--s3-endpoint-url", moto_endpoint, "--revalidate-after", "0"
    )
    client = runtime(server.url)
    for seed, name in enumerate(["Chicago_IL.tar.gz", "v2/Dallas_TX.tar.gz"]):
        got = json.loads(invoke(client, name)["Body"].read())
        assert np.allclose(got, predict_artifact(artifact_bytes(seed), X))
    s3.put_object(Bucket=bucket, Key="mme/Chicago_IL.tar.gz", Body=artifact_bytes(7))
    got = json.loads(invoke(client, "Chicago_IL.tar.gz")["Body"].read())
    assert np.allclose(got, predict_artifact(artifact_bytes(7), X))
    assert error_of(lambda: invoke(client, "Nope.tar.gz"))[0] == "ValidationError"


def test_s3_store_down_is_503_and_recovers(start_server, artifact_bytes):
    port = free_port()

    def seed(endpoint: str) -> None:  # moto keeps nothing across restarts
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket="models")
        s3.put_object(Bucket="models", Key="A.tar.gz", Body=artifact_bytes(0))
        s3.put_object(Bucket="models", Key="B.tar.gz", Body=artifact_bytes(1))

    with moto_server(port) as endpoint:
        seed(endpoint)
        server = start_server("--models", "s3://models/", "--s3-endpoint-url", endpoint)
        client = runtime(server.url)
        assert invoke(client, "A.tar.gz")["Body"].read()
    code, response = error_of(lambda: invoke(client, "B.tar.gz"))
    assert code == "ServiceUnavailable" and response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert invoke(client, "A.tar.gz")["Body"].read()  # resident models keep answering
    with moto_server(port) as endpoint:
        seed(endpoint)
        assert invoke(client, "B.tar.gz")["Body"].read()


def test_cold_load_slower_than_the_ready_timeout_is_429_then_ready(start_server, folder):
    server = start_server("--models", str(folder), "--ready-timeout", "0.0001")
    client = runtime(server.url)
    code, response = error_of(lambda: invoke(client, "Houston_TX.tar.gz"))
    assert code == "ModelNotReadyException" and response["ResponseMetadata"]["HTTPStatusCode"] == 429
    deadline = time.monotonic() + 30
    while "Houston_TX.tar.gz" not in [
        m["modelName"] for m in httpx.get(server.url + "/models").json()["models"]
    ]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert invoke(client, "Houston_TX.tar.gz")["Body"].read()


def test_preload_loads_before_ping_turns_green(start_server, folder):
    server = start_server("--models", str(folder), "--preload", "Chicago_IL.tar.gz,v2/Chicago_IL.tar.gz")
    listed = httpx.get(server.url + "/models").json()["models"]
    assert sorted(m["modelName"] for m in listed) == ["Chicago_IL.tar.gz", "v2/Chicago_IL.tar.gz"]


def test_disk_budget_is_respected(start_server, tmp_path, artifact_bytes):
    root = tmp_path / "many"
    root.mkdir()
    for seed in range(12):
        (root / f"m{seed}.tar.gz").write_bytes(artifact_bytes(seed))
    unpacked = 4 * len(artifact_bytes(0)) * 3  # room for a few unpacked models only
    cache_dir = tmp_path / "disk"
    server = start_server(
        "--models", str(root), "--cache-dir", str(cache_dir), "--disk-budget", str(unpacked)
    )
    client = runtime(server.url)
    for seed in range(12):
        got = json.loads(invoke(client, f"m{seed}.tar.gz")["Body"].read())
        assert np.allclose(got, predict_artifact(artifact_bytes(seed), X))
        used = sum(p.stat().st_size for p in cache_dir.rglob("*") if p.is_file())
        assert used <= unpacked


def test_500_models_through_a_cache_of_50(start_server, tmp_path, artifact_bytes):
    root = tmp_path / "fleet"
    root.mkdir()
    for seed in range(500):
        (root / f"m{seed:03}.tar.gz").write_bytes(artifact_bytes(seed))
    server = start_server("--models", str(root), "--max-models", "50")
    client = runtime(server.url)
    rng = np.random.default_rng(1)
    order = list(range(500)) + rng.integers(0, 500, 300).tolist()

    def check(seed: int) -> bool:
        got = json.loads(invoke(client, f"m{seed:03}.tar.gz")["Body"].read())
        return np.allclose(got, predict_artifact(artifact_bytes(seed), X), rtol=1e-6)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert all(pool.map(check, order))
    assert len(httpx.get(server.url + "/models", params={"page_size": 1000}).json()["models"]) <= 50


def test_without_a_source_the_runtime_route_says_so(start_server, tmp_path):
    server = start_server("--model-root", str(tmp_path))
    code, response = error_of(lambda: invoke(runtime(server.url), "A.tar.gz"))
    assert code == "ValidationError" and "--models" in response["Error"]["Message"]


def test_concurrent_first_calls_download_and_load_once(start_server, folder, artifact_bytes):
    from prometheus_client.parser import text_string_to_metric_families

    server = start_server("--models", str(folder))
    client = runtime(server.url)
    want = predict_artifact(artifact_bytes(1), X)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        bodies = list(
            pool.map(lambda _: json.loads(invoke(client, "Houston_TX.tar.gz")["Body"].read()), range(16))
        )
    assert all(np.allclose(body, want) for body in bodies)
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(httpx.get(server.url + "/metrics").text)
        for sample in family.samples
    }
    assert samples["mme_model_loads_total"] == 1
    assert samples["mme_model_downloading_seconds_count"] == 1


def test_a_preload_that_fails_keeps_ping_red_and_says_why(start_server, folder):
    server = start_server("--models", str(folder), "--preload", "Missing.tar.gz", wait_ready=False)
    deadline = time.monotonic() + 30
    while "startup failed" not in server.output():
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.05)
    assert "Missing.tar.gz" in server.output()
    assert httpx.get(server.url + "/ping").status_code == 503


def test_nested_names_in_model_routes_with_or_without_escaping(start_server, folder: Path) -> None:
    server = start_server("--models", str(folder))
    invoke(runtime(server.url), "v2/Chicago_IL.tar.gz")
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for path in ("/models/v2/Chicago_IL.tar.gz", "/models/v2%2FChicago_IL.tar.gz"):
            described = client.get(path)
            assert described.status_code == 200, described.text
            assert described.json()["modelName"] == "v2/Chicago_IL.tar.gz"
        invoked = client.post("/models/v2/Chicago_IL.tar.gz/invoke", content=ROW)
        assert invoked.status_code == 200, invoked.text
        assert client.get("/models/v2/Chicago_IL.tar.gz/invoke").status_code == 405
        assert client.delete("/models/v2/Chicago_IL.tar.gz").status_code == 200
        assert client.get("/models/v2/Chicago_IL.tar.gz").status_code == 404


def test_model_url_is_the_artifacts_url(
    start_server, folder: Path, s3, bucket: str, moto_endpoint: str, artifact_bytes
) -> None:
    s3.put_object(Bucket=bucket, Key="mme/v2/Chicago_IL.tar.gz", Body=artifact_bytes(0))
    sources = [
        (str(folder), str(folder.resolve() / "v2" / "Chicago_IL.tar.gz")),
        (f"s3://{bucket}/mme/", f"s3://{bucket}/mme/v2/Chicago_IL.tar.gz"),
    ]
    for source, url in sources:
        server = start_server("--models", source, "--s3-endpoint-url", moto_endpoint)
        invoke(runtime(server.url), "v2/Chicago_IL.tar.gz")
        listed = httpx.get(server.url + "/models").json()["models"]
        assert listed == [{"modelName": "v2/Chicago_IL.tar.gz", "modelUrl": url}]
        assert httpx.get(server.url + "/models/v2/Chicago_IL.tar.gz").json()["modelUrl"] == url


def test_a_model_packed_in_a_folder_is_named_with_its_layout(start_server, tmp_path: Path) -> None:
    from conftest import train_booster

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = bytes(train_booster(0).save_raw("ubj"))
        member = tarfile.TarInfo("model/xgboost-model")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    (tmp_path / "Nested.tar.gz").write_bytes(buffer.getvalue())
    server = start_server("--models", str(tmp_path))
    code, response = error_of(lambda: invoke(runtime(server.url), "Nested.tar.gz"))
    assert code == "ModelError"
    message = response["OriginalMessage"]
    assert "'Nested.tar.gz'" in message and "holds only folder 'model/'" in message
    assert "SageMaker needs the model files at the archive root" in message
    assert "nested" not in message.replace("Nested.tar.gz", "")  # no internal cache folder name
