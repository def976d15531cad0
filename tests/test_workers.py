"""`--workers N`: N serving processes answer as one server, against a real `mme serve` on 127.0.0.1.

Every check goes through fresh connections: the kernel hands each to whichever worker accepts it, so
a check that holds on 32 connections holds on every worker (a miss of one worker in 2**32).
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import xgboost as xgb
from conftest import ServerProcess, predict_artifact

from handler import compiled
from handler.forest import ModelLimits

ROW = "0.5,0.25,0.75,0.1,0.9,0.3"
X = np.array([[0.5, 0.25, 0.75, 0.1, 0.9, 0.3]], dtype=np.float32)
CSV = {"Content-Type": "text/csv"}
CONNECTIONS = 32


def expected(model_dir: Path) -> list[float]:
    booster = xgb.Booster(model_file=str(model_dir / "xgboost-model"))
    return booster.inplace_predict(X).tolist()


def on_fresh_connections(server: ServerProcess, method: str, path: str, **kwargs) -> list[httpx.Response]:
    """The same request on CONNECTIONS new connections at once, so they spread over the workers."""

    def one(_: int) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            return client.request(method, path, **kwargs)

    with concurrent.futures.ThreadPoolExecutor(CONNECTIONS) as pool:
        return list(pool.map(one, range(CONNECTIONS)))


def events(server: ServerProcess, name: str) -> list[dict]:
    """The server's log events called `name` (it logs with --log-format json)."""
    found = []
    for line in server.output().splitlines():
        if f'"event":"{name}"' in line:
            found.append(json.loads(line))
    return found


def worker_pids(server: ServerProcess) -> dict[int, int]:
    """Worker number -> pid of the workers started so far, the latest start of each."""
    return {event["worker"]: event["pid"] for event in events(server, "worker_started")}


def wait_workers(server: ServerProcess, count: int, timeout: float = 60.0) -> dict[int, int]:
    """The workers' pids, once `count` of them are alive and every one answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = worker_pids(server)
        alive = len(pids) == count and all(psutil.pid_exists(pid) for pid in pids.values())
        if alive and all(r.status_code == 200 for r in on_fresh_connections(server, "GET", "/ping")):
            return pids
        time.sleep(0.1)
    raise TimeoutError(f"{count} workers never all answered: {server.output()[-2000:]}")


def contract_server(start_server, root: Path, workers: int, *args: str) -> ServerProcess:
    server = start_server("--model-root", str(root), "--workers", str(workers), "--log-format", "json", *args)
    wait_workers(server, workers)
    return server


def load(client: httpx.Client, root: Path, name: str) -> httpx.Response:
    return client.post("/models", json={"model_name": name, "url": str(root / name / "model")})


@pytest.mark.parametrize("workers", [2, 4])
def test_the_contract_holds_across_workers(start_server, model_root, make_model_dir, workers):
    server = contract_server(start_server, model_root, workers)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert load(client, model_root, "m1").status_code == 200

    invoked = on_fresh_connections(server, "POST", "/models/m1/invoke", content=ROW, headers=CSV)
    assert [r.status_code for r in invoked] == [200] * CONNECTIONS, invoked[0].text
    assert all(r.json() == pytest.approx(expected(make_model_dir(1)), rel=1e-6) for r in invoked)

    # /status and /metrics report the whole server from any worker.
    totals = {r.json()["totals"]["invocations"] for r in on_fresh_connections(server, "GET", "/status")}
    assert totals == {CONNECTIONS}
    for answer in on_fresh_connections(server, "GET", "/metrics"):
        lines = answer.text.splitlines()
        assert "mme_loaded_models 1.0" in lines
        calls = [line for line in lines if line.startswith("mme_invocations_total")]
        assert sum(float(line.rsplit(" ", 1)[1]) for line in calls) == CONNECTIONS

    listed = on_fresh_connections(server, "GET", "/models")
    url = str(model_root / "m1" / "model")
    assert all(r.json()["models"] == [{"modelName": "m1", "modelUrl": url}] for r in listed)
    described = on_fresh_connections(server, "GET", "/models/m1")
    assert all(r.status_code == 200 for r in described)
    # One model to whoever asks, its counters those of the whole server.
    assert {(r.json()["modelUrl"], r.json()["invocations"]) for r in described} == {(url, CONNECTIONS)}

    again = on_fresh_connections(
        server, "POST", "/models", json={"model_name": "m1", "url": str(model_root / "m2" / "model")}
    )
    assert {r.status_code for r in again} == {409}

    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.delete("/models/m1").status_code == 200
    # Returned once no worker serves it: every connection sees it gone, its memory given back.
    assert {
        r.status_code for r in on_fresh_connections(server, "POST", "/models/m1/invoke", content=ROW)
    } == {404}
    assert {r.status_code for r in on_fresh_connections(server, "GET", "/models/m1")} == {404}
    assert all(r.json()["models"] == [] for r in on_fresh_connections(server, "GET", "/models"))
    status = httpx.get(server.url + "/status").json()["totals"]
    assert (status["models"], status["memoryUsedBytes"]) == (0, 0)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.delete("/models/m1").status_code == 404
        assert load(client, model_root, "m1").status_code == 200  # and loaded again
    invoked = on_fresh_connections(server, "POST", "/models/m1/invoke", content=ROW, headers=CSV)
    assert {r.status_code for r in invoked} == {200}


def test_concurrent_loads_of_one_model_through_every_worker_load_it_once(start_server, model_root):
    server = contract_server(start_server, model_root, 2)
    body = {"model_name": "m0", "url": str(model_root / "m0" / "model")}
    answers = on_fresh_connections(server, "POST", "/models", json=body)
    # As in one process: POSTs that joined the load in flight share its success, later ones find it loaded.
    statuses = [r.status_code for r in answers]
    assert set(statuses) <= {200, 409} and 200 in statuses, {r.text for r in answers}
    assert len({r.json()["sizeBytes"] for r in answers if r.status_code == 200}) == 1
    loads = [event for event in events(server, "load") if event["model"] == "m0"]
    assert len(loads) == 1, loads


def test_507_is_decided_once_for_the_whole_server(start_server, model_root):
    server = contract_server(start_server, model_root, 2, "--max-models", "2", "--eviction", "reject")
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert load(client, model_root, "m0").status_code == 200
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert load(client, model_root, "m1").status_code == 200
    full = [
        r.status_code
        for r in on_fresh_connections(
            server, "POST", "/models", json={"model_name": "m2", "url": str(model_root / "m2" / "model")}
        )
    ]
    assert set(full) == {507}
    # Copies on other workers never count twice: both models answer from every worker, and still 507.
    for name in ("m0", "m1"):
        invoked = on_fresh_connections(server, "POST", f"/models/{name}/invoke", content=ROW, headers=CSV)
        assert {r.status_code for r in invoked} == {200}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert load(client, model_root, "m2").status_code == 507
        assert client.delete("/models/m0").status_code == 200
        assert load(client, model_root, "m2").status_code == 200


def test_a_worker_killed_under_load_is_replaced_and_no_model_is_lost(
    start_server, model_root, make_model_dir
):
    server = contract_server(start_server, model_root, 2)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert load(client, model_root, "m3").status_code == 200
    want = pytest.approx(expected(make_model_dir(3)), rel=1e-6)
    stop = threading.Event()
    answered: list[int] = []

    def hammer() -> None:
        while not stop.is_set():
            try:
                with httpx.Client(base_url=server.url, timeout=30) as client:
                    for _ in range(20):
                        response = client.post("/models/m3/invoke", content=ROW, headers=CSV)
                        assert response.status_code == 200 and response.json() == want, response.text
                        answered.append(1)
            except httpx.TransportError:
                continue  # a connection to the killed worker: a client retries on a new one

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        before = worker_pids(server)
        os.kill(before[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while worker_pids(server).get(0) == before[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        after = wait_workers(server, 2)
        assert after[0] != before[0] and after[1] == before[1]
        count = len(answered)
        time.sleep(1.0)
        assert len(answered) > count, "the server stopped answering"
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    # The model the dead worker held is still loaded, and the new worker answers it.
    invoked = on_fresh_connections(server, "POST", "/models/m3/invoke", content=ROW, headers=CSV)
    assert {r.status_code for r in invoked} == {200}
    assert all(r.json() == want for r in invoked)
    assert [event["worker"] for event in events(server, "worker_died")] == [0]


def endpoint_server(start_server, source: Path, cache: Path, *args: str) -> ServerProcess:
    server = start_server(
        "--models", str(source), "--cache-dir", str(cache), "--workers", "2", "--log-format", "json", *args
    )
    wait_workers(server, 2)
    return server


def invoke_everywhere(server: ServerProcess, name: str) -> list[list[float]]:
    headers = {**CSV, "X-Amzn-SageMaker-Target-Model": name}
    answers = on_fresh_connections(server, "POST", "/invocations", content=ROW, headers=headers)
    assert {r.status_code for r in answers} == {200}, {r.text for r in answers}
    return [r.json() for r in answers]


def test_an_overwritten_model_is_compiled_once_and_every_worker_answers_its_new_version(
    start_server, tmp_path, artifact_bytes
):
    source, cache = tmp_path / "source", tmp_path / "cache"
    source.mkdir()
    (source / "m.tar.gz").write_bytes(artifact_bytes(0))
    server = endpoint_server(start_server, source, cache, "--revalidate-after", "0")
    old = predict_artifact(artifact_bytes(0), X)
    assert all(answer == pytest.approx(old, rel=1e-6) for answer in invoke_everywhere(server, "m.tar.gz"))

    (source / "m.tar.gz").write_bytes(artifact_bytes(5))
    new = predict_artifact(artifact_bytes(5), X)
    assert all(answer == pytest.approx(new, rel=1e-6) for answer in invoke_everywhere(server, "m.tar.gz"))
    forms = list(cache.glob(f"*/{compiled.FILE_NAME}"))
    assert len(forms) == 1  # one folder for the new version, the old one gone
    written = forms[0].stat().st_ino, forms[0].stat().st_mtime_ns
    assert all(answer == pytest.approx(new, rel=1e-6) for answer in invoke_everywhere(server, "m.tar.gz"))
    assert (forms[0].stat().st_ino, forms[0].stat().st_mtime_ns) == written  # compiled once


@pytest.mark.parametrize("disk", ["1GiB", "12KiB"], ids=["kept", "evicted"])
def test_workers_cycling_models_through_a_cache_of_one_answer_each_in_its_current_version(
    start_server, tmp_path, artifact_bytes, disk
):
    """Every call after the first round is a re-miss, which a worker reads from a folder it was handed
    before, without the hub: a changed artifact must not be answered from its old folder (kept on disk),
    and a disk cache of about one folder evicts those folders under the workers as they go."""
    source, cache = tmp_path / "source", tmp_path / "cache"
    source.mkdir()
    for seed in range(3):
        (source / f"m{seed}.tar.gz").write_bytes(artifact_bytes(seed))
    server = endpoint_server(start_server, source, cache, "--max-models", "1", "--disk-budget", disk)
    want = {f"m{seed}.tar.gz": predict_artifact(artifact_bytes(seed), X) for seed in range(3)}
    for _ in range(3):
        for name, answer in want.items():
            assert all(got == pytest.approx(answer, rel=1e-6) for got in invoke_everywhere(server, name))
    folders = [folder for folder in cache.iterdir() if folder.is_dir()]
    assert len(folders) == 3 if disk == "1GiB" else len(folders) < 3
    (source / "m1.tar.gz").write_bytes(artifact_bytes(7))
    mtime = (source / "m1.tar.gz").stat().st_mtime_ns + 10**9  # another version, however coarse the clock
    os.utime(source / "m1.tar.gz", ns=(mtime, mtime))
    want["m1.tar.gz"] = predict_artifact(artifact_bytes(7), X)
    for name in ("m0.tar.gz", "m1.tar.gz", "m2.tar.gz", "m1.tar.gz"):
        assert all(got == pytest.approx(want[name], rel=1e-6) for got in invoke_everywhere(server, name))


def test_a_damaged_compiled_form_is_rebuilt_never_served(start_server, tmp_path, artifact_bytes):
    source, cache = tmp_path / "source", tmp_path / "cache"
    source.mkdir()
    damages = {"truncated.tar.gz": 2, "corrupted.tar.gz": 3}
    for name, seed in damages.items():
        (source / name).write_bytes(artifact_bytes(seed))
    server = endpoint_server(start_server, source, cache)
    for name, seed in damages.items():
        invoke_everywhere(server, name)
        assert httpx.delete(f"{server.url}/models/{name}").status_code == 200  # from every worker
        (form,) = (
            f for f in cache.glob(f"*/{compiled.FILE_NAME}") if f.parent.name.endswith(name.split(".")[0])
        )
        data = bytearray(form.read_bytes())
        if name.startswith("truncated"):
            data = data[: len(data) // 2]
        else:
            data[len(data) // 2] ^= 0xFF
        form.write_bytes(bytes(data))

        want = predict_artifact(artifact_bytes(seed), X)
        assert all(answer == pytest.approx(want, rel=1e-6) for answer in invoke_everywhere(server, name))
        assert form.read_bytes() != bytes(data)  # written again, whole
        wanted = compiled.key(form.parent / "xgboost-model", allow_pickle=False, limits=ModelLimits())
        assert compiled.read(form.parent, wanted) is not None


def mapped_forms(pids: dict[int, int]) -> dict[int, set[tuple[str, int]]]:
    """Worker -> the compiled forms it has mapped, as (path, inode) from /proc/PID/maps."""
    found: dict[int, set[tuple[str, int]]] = {}
    for worker, pid in pids.items():
        found[worker] = set()
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and compiled.FILE_NAME in fields[5]:
                found[worker].add((fields[5], int(fields[4])))
    return found


@pytest.mark.parametrize("mode", ["contract", "endpoint"])
def test_every_worker_maps_one_shared_copy_of_a_compiled_form_until_it_is_unloaded(
    start_server, model_root, tmp_path, artifact_bytes, mode
):
    cache = tmp_path / "cache"
    if mode == "contract":
        server = contract_server(start_server, model_root, 2, "--cache-dir", str(cache))
        with httpx.Client(base_url=server.url, timeout=60) as client:
            assert load(client, model_root, "m1").status_code == 200
        invoked = on_fresh_connections(server, "POST", "/models/m1/invoke", content=ROW, headers=CSV)
        assert {r.status_code for r in invoked} == {200}
        name, shared = "m1", cache / "compiled"
    else:
        source = tmp_path / "source"
        source.mkdir()
        (source / "m.tar.gz").write_bytes(artifact_bytes(4))
        server = endpoint_server(start_server, source, cache)
        invoke_everywhere(server, "m.tar.gz")
        name, shared = "m.tar.gz", cache
    (form,) = shared.glob(f"*/{compiled.FILE_NAME}")
    one = {(str(form), form.stat().st_ino)}
    pids = worker_pids(server)
    assert mapped_forms(pids) == {0: one, 1: one}  # the same file's pages, not a private copy each

    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.delete(f"/models/{name}").status_code == 200
    assert mapped_forms(pids) == {0: set(), 1: set()}  # released by every worker before the answer
    if mode == "contract":
        assert not form.parent.exists()  # and the server's own copy on disk is gone


W3_MODELS = 10_000
W3_BOUND = 1.5 * 2**30


def server_pss(server: ServerProcess) -> int:
    """Proportional set size of the server and every process under it: shared pages counted once."""
    root = psutil.Process(server.proc.pid)
    return sum(proc.memory_full_info().pss for proc in [root, *root.children(recursive=True)])


def statuses(server: ServerProcess, requests: list[tuple[str, bytes, str]], connections: int) -> list[int]:
    """The status of each (path, body, content type) POST, spread over `connections` keep-alive connections
    (each bound to whichever worker accepted it). http.client: tens of thousands of requests in seconds."""

    def run(k: int) -> list[int]:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        try:
            found = []
            for path, body, content_type in requests[k::connections]:
                conn.request("POST", path, body, {"Content-Type": content_type})
                answer = conn.getresponse()
                answer.read()
                found.append(answer.status)
            return found
        finally:
            conn.close()

    with concurrent.futures.ThreadPoolExecutor(connections) as pool:
        return [status for found in pool.map(run, range(connections)) for status in found]


def test_w3s_ten_thousand_models_stay_under_1_5_gib_with_2_workers(start_server, tmp_path, make_model_dir):
    root = tmp_path / "models"
    artifact = make_model_dir(seed=3) / "xgboost-model"
    for i in range(W3_MODELS):  # hard links: the server sees 10,000 model files, the disk holds one
        (root / f"m{i}" / "model").mkdir(parents=True)
        os.link(artifact, root / f"m{i}" / "model" / "xgboost-model")
    server = contract_server(start_server, root, 2)
    loads = [("/models", json.dumps({"model_name": f"m{i}", "url": str(root / f"m{i}" / "model")}).encode(),
              "application/json") for i in range(W3_MODELS)]  # fmt: skip
    assert statuses(server, loads, 4) == [200] * W3_MODELS
    # Each model on 3 of 8 connections, so with 2 workers almost every one is served by both.
    invokes = [(f"/models/m{i // 3}/invoke", ROW.encode(), "text/csv") for i in range(3 * W3_MODELS)]
    assert statuses(server, invokes, 8) == [200] * len(invokes)
    pss = server_pss(server)
    assert pss < W3_BOUND, f"{pss / 2**20:,.0f} MiB for {W3_MODELS:,} models"
