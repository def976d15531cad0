"""SageMaker's multi-model container contract, against a real `mme serve` on 127.0.0.1."""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import xgboost as xgb

ROW = "0.5,0.25,0.75,0.1,0.9,0.3"


def expected(model_dir: Path, rows: str = ROW) -> list[float]:
    booster = xgb.Booster(model_file=str(model_dir / "xgboost-model"))
    x = np.array([[float(v) for v in line.split(",")] for line in rows.splitlines()], dtype=np.float32)
    return booster.inplace_predict(x).tolist()


def url(root: Path, name: str) -> str:
    return str(root / name / "model")


@pytest.fixture
def server(start_server, model_root):
    return start_server("--model-root", str(model_root))


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def load(client: httpx.Client, root: Path, name: str, model_name: str | None = None) -> httpx.Response:
    return client.post("/models", json={"model_name": model_name or name, "url": url(root, name)})


def test_ping_and_empty_list_answer_at_once(client):
    assert client.get("/ping").status_code == 200
    response = client.get("/models")
    assert response.status_code == 200
    assert response.json() == {"models": [], "nextPageToken": None}


def test_load_describe_invoke_unload(client, model_root, make_model_dir):
    response = load(client, model_root, "m1")
    assert response.status_code == 200, response.text
    described = client.get("/models/m1").json()
    assert described["modelName"] == "m1" and described["modelUrl"] == url(model_root, "m1")
    assert described["sizeBytes"] > 0 and described["invocations"] == 0

    invoked = client.post("/models/m1/invoke", content=ROW, headers={"Content-Type": "text/csv"})
    assert invoked.status_code == 200, invoked.text
    assert invoked.headers["content-type"].startswith("application/json")
    assert invoked.json() == pytest.approx(expected(make_model_dir(1)), rel=1e-6)
    assert client.get("/models/m1").json()["invocations"] == 1

    assert client.delete("/models/m1").status_code == 200
    assert client.delete("/models/m1").status_code == 404
    assert client.post("/models/m1/invoke", content=ROW).status_code == 404
    assert client.get("/models/m1").status_code == 404


def test_load_status_codes(client, model_root, tmp_path):
    assert load(client, model_root, "m0").status_code == 200
    again = load(client, model_root, "m0")
    assert again.status_code == 409 and "already loaded" in again.json()["message"]

    missing = client.post("/models", json={"model_name": "x", "url": str(model_root / "nope" / "model")})
    assert missing.status_code == 404

    (model_root / "junk" / "model").mkdir(parents=True)
    (model_root / "junk" / "model" / "xgboost-model").write_bytes(b"definitely not a model")
    junk = client.post("/models", json={"model_name": "junk", "url": url(model_root, "junk")})
    assert junk.status_code == 400 and junk.json()["message"]

    # Nothing broke: the first model still answers and nothing else was loaded.
    assert [m["modelName"] for m in client.get("/models").json()["models"]] == ["m0"]
    assert client.post("/models/m0/invoke", content=ROW).status_code == 200


def test_loads_are_confined_to_the_model_root(client, model_root, tmp_path, make_model_dir):
    outside = tmp_path / "outside" / "model"
    shutil.copytree(make_model_dir(3), outside)
    (model_root / "link").symlink_to(outside.parent)
    for bad in [
        str(outside),
        str(model_root / ".." / "outside" / "model"),
        str(model_root / "link" / "model"),
    ]:
        response = client.post("/models", json={"model_name": "evil", "url": bad})
        assert response.status_code == 400, bad
        assert "model root" in response.json()["message"] or ".." in response.json()["message"]
    assert client.get("/models").json()["models"] == []


def test_pagination_walks_every_model_once(client, model_root):
    for seed in range(8):
        assert load(client, model_root, f"m{seed}").status_code == 200
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        params = {"page_size": 3} | ({"next_page_token": token} if token else {})
        body = client.get("/models", params=params).json()
        seen += [m["modelName"] for m in body["models"]]
        pages += 1
        token = body["nextPageToken"]
        if token is None:
            break
    assert pages == 3 and seen == [f"m{s}" for s in range(8)]
    assert client.get("/models", params={"next_page_token": "bogus"}).status_code == 400
    assert client.get("/models", params={"page_size": "0"}).status_code == 400


def test_custom_attributes_round_trip_and_body_limit(start_server, model_root):
    server = start_server("--model-root", str(model_root), "--max-body", "1KiB")
    with httpx.Client(base_url=server.url) as client:
        assert load(client, model_root, "m2").status_code == 200
        headers = {"X-Amzn-SageMaker-Custom-Attributes": "trace=abc", "Content-Type": "text/csv"}
        response = client.post("/models/m2/invoke", content=ROW, headers=headers)
        assert response.headers["x-amzn-sagemaker-custom-attributes"] == "trace=abc"
        big = client.post("/models/m2/invoke", content=(ROW + "\n") * 100, headers=headers)
        assert big.status_code == 413 and "limit" in big.json()["message"]
        assert client.post("/models/m2/invoke", content=ROW, headers=headers).status_code == 200


def test_reject_policy_answers_507_and_lru_evicts(start_server, model_root):
    size = int(load_size(start_server, model_root))
    # Room for two models: the third is refused under reject, and evicts the oldest under lru.
    budget = str(int(size * 2.5))
    with httpx.Client(
        base_url=start_server(
            "--model-root", str(model_root), "--memory-budget", budget, "--eviction", "reject"
        ).url
    ) as client:
        assert load(client, model_root, "m0").status_code == 200
        assert load(client, model_root, "m1").status_code == 200
        refused = load(client, model_root, "m2")
        assert refused.status_code == 507, refused.text
        assert sorted(m["modelName"] for m in client.get("/models").json()["models"]) == ["m0", "m1"]
    with httpx.Client(
        base_url=start_server(
            "--model-root", str(model_root), "--memory-budget", budget, "--eviction", "lru"
        ).url
    ) as client:
        for name in ["m0", "m1"]:
            assert load(client, model_root, name).status_code == 200
        client.post("/models/m0/invoke", content=ROW)  # m1 is now least recently used
        assert load(client, model_root, "m2").status_code == 200
        assert sorted(m["modelName"] for m in client.get("/models").json()["models"]) == ["m0", "m2"]


def load_size(start_server, model_root: Path) -> int:
    with httpx.Client(base_url=start_server("--model-root", str(model_root)).url) as client:
        load(client, model_root, "m0")
        return client.get("/models/m0").json()["sizeBytes"]


def test_sagemaker_multi_model_env_defaults_to_reject(start_server, model_root):
    size = load_size(start_server, model_root)
    server = start_server(
        "--model-root",
        str(model_root),
        env={"SAGEMAKER_MULTI_MODEL": "true", "MME_MEMORY_BUDGET": str(int(size * 1.5))},
    )
    with httpx.Client(base_url=server.url) as client:
        assert load(client, model_root, "m0").status_code == 200
        assert load(client, model_root, "m1").status_code == 507


def test_concurrent_loads_of_one_model_all_succeed_and_load_once(client, model_root):
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda _: load(client, model_root, "m4").status_code, range(16)))
    # Callers that joined the one load in flight share its success; later ones find it loaded.
    assert set(statuses) <= {200, 409} and 200 in statuses
    assert client.get("/models/m4").json()["invocations"] == 0
    assert len(client.get("/models").json()["models"]) == 1


def test_unload_during_in_flight_invokes_breaks_none(client, model_root):
    assert load(client, model_root, "m5").status_code == 200
    # Large batches take the thread-pool path, so an unload really overlaps them.
    batch = "\n".join([ROW] * 20000)

    def invoke(_):
        return client.post("/models/m5/invoke", content=batch, headers={"Content-Type": "text/csv"})

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(invoke, i) for i in range(4)]
        deleted = pool.submit(lambda: client.delete("/models/m5"))
        results = [f.result() for f in futures]
    assert deleted.result().status_code == 200
    for response in results:
        # Each invoke either ran to completion on the model, or arrived after the unload.
        assert response.status_code in (200, 404)
        if response.status_code == 200:
            assert len(response.json()) == 20000
    assert client.get("/models/m5").status_code == 404


def test_single_model_mode(start_server, make_model_dir, tmp_path):
    model_dir = tmp_path / "opt-ml-model"
    shutil.copytree(make_model_dir(6), model_dir)
    server = start_server("--model-dir", str(model_dir), env={"SAGEMAKER_MULTI_MODEL": "false"})
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/ping").status_code == 200
        response = client.post("/invocations", content=ROW, headers={"Content-Type": "text/csv"})
        # AWS's single-model XGBoost endpoint answers CSV by default, one line per row.
        assert response.status_code == 200 and response.headers["content-type"] == "text/csv"
        assert [float(response.text.rstrip("\n"))] == pytest.approx(expected(model_dir), rel=1e-6)


def test_single_model_that_cannot_load_keeps_ping_red(start_server, tmp_path):
    model_dir = tmp_path / "broken"
    model_dir.mkdir()
    (model_dir / "xgboost-model").write_bytes(b"\x00garbage")
    server = start_server("--model-dir", str(model_dir), wait_ready=False)
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/ping").status_code == 503
        assert client.post("/invocations", content=ROW).status_code == 404


def test_multi_model_mode_has_no_single_model(client):
    response = client.post("/invocations", content=ROW)
    assert response.status_code == 404 and "models" in response.json()["message"]


def test_unloading_many_models_gives_memory_back(start_server, model_root, make_model_dir):
    import psutil

    # City-model sized (25 trees of depth 5), so the models, not per-entry bookkeeping, are what is measured.
    shutil.copytree(make_model_dir(0, name="city", rounds=25, max_depth=5), model_root / "city" / "model")
    server = start_server("--model-root", str(model_root))
    process = psutil.Process(server.proc.pid)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        before = process.memory_info().rss
        for i in range(300):
            response = client.post("/models", json={"model_name": f"b{i}", "url": url(model_root, "city")})
            assert response.status_code == 200
        loaded = process.memory_info().rss
        for i in range(300):
            assert client.delete(f"/models/b{i}").status_code == 200
        after = process.memory_info().rss
    grew = loaded - before
    assert grew > 0
    # Most of what the models took is given back to the system, not kept in the allocator.
    assert after - before < grew * 0.5, (before, loaded, after)


def test_accounted_bytes_track_real_memory(start_server, model_root):
    import psutil

    server = start_server("--model-root", str(model_root))
    process = psutil.Process(server.proc.pid)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        warm = client.post("/models", json={"model_name": "warm", "url": url(model_root, "m7")})
        assert warm.status_code == 200
        client.post("/models/warm/invoke", content=ROW)
        before = process.memory_info().rss
        accounted = 0
        for i in range(300):
            name = f"r{i}"
            assert (
                client.post(
                    "/models", json={"model_name": name, "url": url(model_root, f"m{i % 8}")}
                ).status_code
                == 200
            )
            client.post(f"/models/{name}/invoke", content=ROW)
            accounted += client.get(f"/models/{name}").json()["sizeBytes"]
        grew = process.memory_info().rss - before
    assert grew / 2 <= accounted <= grew * 2, (accounted, grew)


def test_env_var_port_and_workers_are_honoured(start_server, model_root):
    server = start_server("--model-root", str(model_root), env={"SAGEMAKER_MODEL_SERVER_WORKERS": "1"})
    assert httpx.get(server.url + "/ping").status_code == 200
    assert str(server.port) == server.url.rsplit(":", 1)[1]


def test_bad_configuration_is_one_line(tmp_path):
    import subprocess
    import sys

    for args, env, needle in [
        (["--memory-budget", "lots"], {}, "--memory-budget"),
        (["--max-models", "0"], {}, "--max-models"),
        ([], {"SAGEMAKER_MODEL_SERVER_WORKERS": "many"}, "SAGEMAKER_MODEL_SERVER_WORKERS"),
        ([], {"SAGEMAKER_MODEL_SERVER_TIMEOUT": "-3"}, "SAGEMAKER_MODEL_SERVER_TIMEOUT"),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "serve.cli", "serve", *args],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], result.stderr


def test_json_bodies_are_parsed_strictly(client, model_root):
    response = client.post(
        "/models", content=b'{"model_name": "a", "url": ', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400 and "JSON" in response.json()["message"]
    assert orjson.loads(client.get("/ping").content)["status"] == "healthy"


def test_a_hot_model_counts_the_memory_of_its_generated_code(client, model_root, make_model_dir):
    from handler.model import WalkingPredict

    assert load(client, model_root, "m3").status_code == 200
    loaded_size = client.get("/models/m3").json()["sizeBytes"]
    want = pytest.approx(expected(make_model_dir(3)), rel=1e-6)
    for _ in range(WalkingPredict.HOT_AFTER + 5):
        assert (
            client.post("/models/m3/invoke", content=ROW, headers={"Content-Type": "text/csv"}).json() == want
        )
    deadline = time.monotonic() + 30
    while client.get("/models/m3").json()["sizeBytes"] == loaded_size:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.get("/models/m3").json()["sizeBytes"] > loaded_size
    assert client.post("/models/m3/invoke", content=ROW, headers={"Content-Type": "text/csv"}).json() == want
