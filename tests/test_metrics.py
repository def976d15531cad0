"""GET /metrics after scripted traffic: exact counts of invocations, hits, misses, loads, evictions."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROW = "0.5,0.25,0.75,0.1,0.9,0.3"


def scrape(url: str) -> dict[str, dict[tuple, float]]:
    """sample name -> {sorted label items: value}."""
    response = httpx.get(url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[str, dict[tuple, float]], name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


def invoke(client: httpx.Client, target: str, body: str = ROW) -> int:
    headers = {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": target}
    return client.post("/invocations", content=body, headers=headers).status_code


def test_scripted_traffic_gives_exact_counts(start_server, tmp_path: Path, artifact_bytes):
    folder = tmp_path / "artifacts"
    folder.mkdir()
    for seed in range(3):
        (folder / f"m{seed}.tar.gz").write_bytes(artifact_bytes(seed))
    server = start_server(
        "--models", str(folder), "--max-models", "2", "--memory-budget", "64MiB", "--disk-budget", "32MiB"
    )
    with httpx.Client(base_url=server.url, timeout=60) as client:
        script = [
            ("m0.tar.gz", ROW, 200),  # miss: load m0
            ("m0.tar.gz", ROW, 200),  # hit
            ("m1.tar.gz", ROW, 200),  # miss: load m1
            ("m0.tar.gz", ROW, 200),  # hit; m1 is now the least recently used
            ("m2.tar.gz", ROW, 200),  # miss: load m2, evicting m1 (max_models)
            ("m0.tar.gz", "not,a,number,row,at,all", 424),  # hit, and the model rejects the body
            ("Missing.tar.gz", ROW, 400),  # miss: not in the folder, a failed load that evicts nothing
            ("m1.tar.gz", ROW, 200),  # miss: load m1 again, evicting m2 (m0 was used since)
        ]
        for target, body, status in script:
            assert invoke(client, target, body) == status, target
        assert client.delete("/models/m0.tar.gz").status_code == 200  # one unload
        assert client.get("/no-such-route").status_code == 404
        status = client.get("/status").json()

    samples = scrape(server.url)
    assert value(samples, "mme_invocations_total") == 8
    assert value(samples, "mme_invoke_latency_seconds_count") == 8
    assert value(samples, "mme_model_cache_hits_total") == 3
    assert value(samples, "mme_model_cache_misses_total") == 5
    assert value(samples, "mme_model_loading_wait_seconds_count") == 4  # the misses that got their model
    assert value(samples, "mme_model_loads_total") == 4
    assert value(samples, "mme_model_loading_seconds_count") == 4
    assert value(samples, "mme_model_downloading_seconds_count") == 4
    assert value(samples, "mme_model_load_failures_total") == 1
    assert value(samples, "mme_model_unloading_seconds_count") == 1
    assert samples["mme_model_evictions_total"] == {(("reason", "max_models"),): 2}
    assert samples["mme_errors_total"] == {
        (("status", "400"),): 1,
        (("status", "404"),): 1,
        (("status", "424"),): 1,
    }
    assert value(samples, "mme_loaded_models") == 1  # m1 alone: m0 unloaded, m2 evicted
    assert value(samples, "mme_requests_in_flight") == 1  # this scrape
    assert samples["mme_model_invocations"] == {(("model", "m1.tar.gz"),): 1}

    [m1] = status["models"]
    assert (m1["modelName"], m1["loads"], m1["invocations"], m1["hitRatio"]) == ("m1.tar.gz", 2, 1, 0.0)
    assert value(samples, "mme_model_memory_used_bytes") == m1["sizeBytes"] > 0
    assert samples["mme_model_size_bytes"] == {(("model", "m1.tar.gz"),): m1["sizeBytes"]}
    assert value(samples, "mme_model_memory_budget_bytes") == 64 * 1024**2
    assert value(samples, "mme_disk_cache_budget_bytes") == 32 * 1024**2
    assert value(samples, "mme_disk_cache_used_bytes") == status["totals"]["diskUsedBytes"] > 0
    latency_buckets = samples["mme_invoke_latency_seconds_bucket"]
    assert latency_buckets[(("le", "+Inf"),)] == 8


def test_per_model_series_are_capped_with_200_models(start_server, tmp_path: Path, artifact_bytes):
    folder = tmp_path / "artifacts"
    folder.mkdir()
    names = [f"m{i:03d}.tar.gz" for i in range(200)]
    for i, name in enumerate(names):
        (folder / name).write_bytes(artifact_bytes(i % 4))
    server = start_server("--models", str(folder), "--metrics-top-models", "5")
    # Five models get extra calls, so the top five are known: 6, 5, 4, 3 and 2 invocations.
    calls = names + [name for i, name in enumerate(names[:5]) for _ in range(5 - i)]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for name in calls:
            assert invoke(client, name) == 200, name

    samples = scrape(server.url)
    assert value(samples, "mme_loaded_models") == 200
    assert samples["mme_model_invocations"] == {
        **{(("model", name),): 6.0 - i for i, name in enumerate(names[:5])},
        (("model", "_other"),): 195.0,
    }
    assert len(samples["mme_model_size_bytes"]) == 6
    sizes = sum(samples["mme_model_size_bytes"].values())
    assert sizes == value(samples, "mme_model_memory_used_bytes")
    assert value(samples, "mme_invocations_total") == len(calls)
    assert value(samples, "mme_model_cache_misses_total") == 200
    assert value(samples, "mme_model_cache_hits_total") == len(calls) - 200
