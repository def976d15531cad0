"""Smoke tests of the benchmark's parts: each runs for about a second, and none asserts a timing."""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest

from bench import loadgen, mlserver, report, scaling, servers, targets, trace, workloads
from bench.mme_platform import PlatformEmulator
from bench.models import ROW, csv_rows
from bench.results import Row
from serve.app import ESTIMATE_FACTOR


@pytest.fixture
def ours(make_model_dir, tmp_path):
    folders = [make_model_dir(seed) for seed in range(3)]
    with servers.start_ours(tmp_path, ["--model-root", str(folders[0].parent)]) as server:
        yield server, folders


@pytest.mark.parametrize("tool", ["wrk", "python"])
def test_load_generator_drives_our_server(ours, tool):
    server, folders = ours
    # The bench installs wrk where it is missing (Debian's package), and so does this test: a fresh
    # machine runs the same load generator as the bench, never a skip.
    wrk = loadgen.ensure_wrk() if tool == "wrk" else None
    assert tool == "python" or wrk, "wrk is not installed and apt-get could not install it"
    httpx.post(f"{server.url}/models", json={"model_name": "a", "url": str(folders[0])}).raise_for_status()
    result = loadgen.fixed_load(wrk, server.url, "/models/a/invoke", ROW, 2, 1)
    assert result.tool == tool
    assert result.requests > 0 and result.errors == 0
    assert 0 < result.p50_ms <= result.p99_ms
    assert server.pss_bytes() > 0


def test_server_cpu_time_grows_with_the_requests_it_answers(ours):
    server, folders = ours
    httpx.post(f"{server.url}/models", json={"model_name": "a", "url": str(folders[0])}).raise_for_status()
    before = server.cpu_seconds()
    result = loadgen.run_python(server.url, "/models/a/invoke", ROW, 2, 0.5)
    used = server.cpu_seconds() - before
    assert result.errors == 0
    # The server did the work (more than its idle ticks) and no more than the cores could give it.
    assert 0 < used <= 0.5 * (os.cpu_count() or 1) + 0.2
    assert 0 < workloads.cpu_us(used, [result]) < 1e6


def test_v2_body_gets_the_csv_rows_predictions_from_our_v2_route(ours):
    """The body the bench sends MLServer and our V2 route: the same rows, the same predictions."""
    server, folders = ours
    httpx.post(f"{server.url}/models", json={"model_name": "a", "url": str(folders[0])}).raise_for_status()
    csv = csv_rows(3)
    by_csv = httpx.post(
        f"{server.url}/models/a/invoke",
        content=csv,
        headers={"Content-Type": "text/csv", "Accept": "text/csv"},
    )
    by_v2 = httpx.post(f"{server.url}/v2/models/a/infer", content=mlserver.v2_body(csv))
    by_v2.raise_for_status()
    (output,) = by_v2.json()["outputs"]
    assert output["shape"][0] == 3
    assert output["data"] == pytest.approx([float(x) for x in by_csv.text.split()])


def test_mlserver_repository_names_a_model_file_xgboost_loads(make_model_dir, tmp_path):
    """What MLServer reads: settings.json, and per model a model-settings.json whose uri is the model."""
    import json

    import xgboost

    model = make_model_dir(0) / "xgboost-model"
    mlserver.write_repository(tmp_path, {"warm": model}, 20001, 20002)
    settings = json.loads((tmp_path / "settings.json").read_text())
    assert settings["http_port"] == 20001 and settings["parallel_workers"] == 0
    model_settings = json.loads((tmp_path / "warm" / "model-settings.json").read_text())
    assert model_settings["name"] == "warm"
    uri = tmp_path / "warm" / model_settings["parameters"]["uri"]
    assert uri.suffix == ".json"  # the test models are JSON; the bench's are UBJSON
    xgboost.Booster(model_file=str(uri))  # as mlserver_xgboost's runtime loads it, by its ending
    assert settings["load_models_at_startup"] is True


def test_mlserver_repository_holds_only_this_runs_models(make_model_dir, tmp_path):
    """MLServer scans its whole repository: W3's 1,000 folders must not be loaded by the next W1."""
    import json

    model = make_model_dir(0) / "xgboost-model"
    root = tmp_path / "repository"
    mlserver.write_repository(root, {"a": model, "b": model}, 20001, 20002, at_startup=False)
    assert json.loads((root / "settings.json").read_text())["load_models_at_startup"] is False
    mlserver.write_repository(root, {"warm": model}, 20001, 20002)
    assert sorted(p.parent.name for p in root.glob(f"*/{mlserver.SETTINGS_FILE}")) == ["warm"]
    assert model.exists()


def test_load_generator_counts_errors(ours):
    server, _ = ours
    result = loadgen.run_python(server.url, "/models/missing/invoke", ROW, 1, 0.2)
    assert result.requests > 0 and result.errors == result.requests


def invoke_through(platform: PlatformEmulator, url: str, names: list[str]) -> list[bool]:
    """Each name invoked in turn through the emulator, on one connection to the server at `url`."""

    async def run() -> list[bool]:
        conn = loadgen.Connection(url)
        try:
            return [await platform.invoke(conn, name, ROW) for name in names]
        finally:
            conn.close()

    return asyncio.run(run())


def test_platform_emulator_loads_on_miss_and_evicts_lru(ours):
    """The baseline's SageMaker stand-in, against our server: it speaks the same contract."""
    server, folders = ours
    by_name = {f.name: str(f) for f in folders}
    platform = PlatformEmulator(2, by_name.__getitem__)
    names = [folders[i].name for i in (0, 1, 0, 2, 1)]

    def run(names: list[str]) -> list[bool]:
        return invoke_through(platform, server.url, names)

    assert run(names) == [True] * 5
    assert (platform.hits, platform.misses) == (1, 4)  # the 2nd model 0; model 1 was evicted by model 2
    assert not platform.failures
    listed = httpx.get(f"{server.url}/models").json()["models"]
    assert sorted(m["modelName"] for m in listed) == sorted([folders[2].name, folders[1].name])
    by_name["nowhere"] = str(folders[0].parent / "nowhere")  # a folder that does not exist: 404
    assert run(["nowhere"]) == [False]
    assert platform.failures == {"POST /models 404": 1}


def test_platform_emulator_unloads_on_our_507_until_the_load_fits(make_model_dir, tmp_path):
    """W5's contract mode: our server, full, answers 507; the emulator unloads least recently used
    models until the load fits (here all four small ones, for the big one), and no invoke meets a model
    the server dropped on its own (a 404)."""
    small = [make_model_dir(seed, name=f"small-{seed}", rounds=2) for seed in range(4)]
    big = make_model_dir(4, name="big", rounds=80, max_depth=6)
    folders = [*small, big]
    with servers.start_ours(tmp_path, ["--model-root", str(big.parent)], "sizes") as server:
        sizes = [
            httpx.post(f"{server.url}/models", json={"model_name": f.name, "url": str(f)}).json()["sizeBytes"]
            for f in small
        ]

    def estimate(folder) -> int:
        return int((folder / "xgboost-model").stat().st_size * ESTIMATE_FACTOR)

    budget = estimate(big) + min(sizes) - 1  # the big load needs every small one gone
    assert sum(sizes[:3]) + max(estimate(f) for f in small) <= budget  # the small ones fit together
    by_name = {f.name: str(f) for f in folders}
    platform = PlatformEmulator(10, by_name.__getitem__)  # never full by count: only a 507 unloads
    args = ["--model-root", str(big.parent), *scaling.contract_args(budget, 1)]
    with servers.start_ours(tmp_path, args, "contract") as contract:
        names = [f.name for f in (*small, small[0], big)]
        assert invoke_through(platform, contract.url, names) == [True] * 6
        assert not platform.failures
        assert (platform.hits, platform.misses) == (1, 5)
        listed = [m["modelName"] for m in httpx.get(f"{contract.url}/models").json()["models"]]
        assert listed == [big.name]


def test_lru_simulation_and_zipf_trace():
    assert trace.lru_hit_ratio([1, 2, 1, 3, 2, 1], 2) == pytest.approx(1 / 6)
    assert trace.lru_hit_ratio([1, 1, 1, 1], 1) == 0.75
    hot = trace.zipf_trace(1000, 5000)
    assert hot == trace.zipf_trace(1000, 5000)
    assert len(set(hot)) < 1000 and max(hot) < 1000
    assert trace.lru_hit_ratio(hot, 100) > trace.lru_hit_ratio(hot, 10)


def test_report_writes_table_markdown_and_chart(tmp_path, capsys):
    rows = [
        Row("w1.rps16", "W1 warm invoke", "req/s, concurrency 16", "req/s", 3000.0, 1000.0, True),
        Row("w1.p50_1", "W1 warm invoke", "p50, concurrency 1", "ms", 0.2, 0.6, False),
        Row("w2.load", "W2 cold load", "POST /models + invoke", "ms", 5.0, 400.0, False),
        Row("floor.predict", "Floor", "inplace_predict", "ms", 0.09, None, False),
    ]
    checks = targets.evaluate(rows)
    by_name = {t.name: t for t in checks}
    assert by_name["W1 throughput"].met is False and "3.0×" in by_name["W1 throughput"].actual
    assert by_name["W2 cold load"].met is True
    assert by_name["W3 residency"].met is None
    limits = targets.limits(rows)
    assert limits and "90 µs" in limits[-1]
    report.print_table(rows, checks, limits)
    assert "MISSED" in capsys.readouterr().out
    machine = {"date": "today", "command": "make bench", "cpu": "a CPU"}
    report.write_markdown(tmp_path / "b.md", machine, rows, checks, limits, "b.png")
    report.write_chart(tmp_path / "b.png", rows)
    text = (tmp_path / "b.md").read_text()
    assert "**Missed: W1 throughput, W1 latency.**" in text and "| W2 cold load |" in text
    assert (tmp_path / "b.png").read_bytes().startswith(b"\x89PNG")


def test_serving_process_targets_compare_two_workers_with_one():
    def workers(key, two, one, higher=False):
        return Row(f"workers.{key}", "2 workers vs 1", key, "", two, one, higher, peer="1 worker")

    rows = [
        workers("w1.rps", 20_000.0, 15_000.0, True),
        workers("w5.rps", 9_000.0, 5_000.0, True),
        workers("w5.errors", 0.0, 0.0),
        workers("w5c.errors", 0.0, 3.0),
        workers("memory.per_model_kib", 70.0, 35.0),
    ]
    by_name = {t.name: t for t in targets.evaluate(rows)}
    assert (
        by_name["W5 throughput, 2 workers"].met is False
        and by_name["W5 throughput, 2 workers"].margin == "45% of W1"
    )
    assert by_name["W5 errors, 2 workers"].met is True
    assert (
        by_name["W5 contract mode errors"].met is False
        and by_name["W5 contract mode errors"].actual == "3 errors"
    )
    memory = by_name["Memory per model, 2 workers"]
    assert memory.met is False and memory.margin == "2.00×"
    rows[-1] = workers("memory.per_model_kib", 38.0, 35.0)
    assert {t.name: t for t in targets.evaluate(rows)}["Memory per model, 2 workers"].met is True


def test_ours_must_end_ahead_of_mlserver_on_w4_and_first_load():
    rows = [
        Row("w4.mlserver.1000", "W4 batch", "1,000 rows", "ms", 4.0, 5.0, False, peer="MLServer"),
        Row("w4.mlserver.10000", "W4 batch", "10,000 rows", "ms", 16.0, 12.8, False, peer="MLServer"),
        Row("w2.mlserver.load", "W2 cold load", "load + infer", "ms", 10.0, 20.0, False, peer="MLServer"),
    ]
    by_name = {t.name: t for t in targets.evaluate(rows)}
    assert by_name["W4 vs MLServer"].met is False
    assert by_name["W4 vs MLServer"].actual == "1.25× slower at the closest"
    assert by_name["First load vs MLServer"].met is True
    assert "W4 vs MLServer" not in {t.name for t in targets.evaluate(rows[2:])}  # no MLServer W4 rows
