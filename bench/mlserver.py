"""The second peer: Seldon MLServer with its XGBoost runtime, in a virtualenv of its own, over V2 REST.

This module runs in ours: it builds that virtualenv, writes MLServer's settings.json and one
model-settings.json per model under the bench's work folder, builds the V2 request bodies both V2
servers are sent, and starts `mlserver start`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx

from bench import baseline, servers
from bench.models import ROW
from bench.servers import Server

MLSERVER_VERSION = "1.7.1"
# Its fastest settings on this machine: models served in the main process, XGBoost on one thread each.
PARALLEL_WORKERS = 0
OMP_THREADS = "1"
INPUT_NAME = "input-0"
SETTINGS_FILE = "model-settings.json"


def requirements() -> list[str]:
    import xgboost

    # uvloop 0.22 kills MLServer's workers at start (MLServer issue #2286). The same XGBoost as ours.
    return [
        f"mlserver=={MLSERVER_VERSION}",
        f"mlserver-xgboost=={MLSERVER_VERSION}",
        f"xgboost-cpu=={xgboost.__version__}",
        "uvloop<0.22",
    ]


def ensure_venv(venv: Path) -> Path | None:
    """MLServer's python, or None (said on one line) when it cannot be installed: the bench goes on."""
    try:
        return baseline.ensure_venv(venv, requirements(), "MLServer")
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"bench: MLServer could not be installed ({e}); going on without it", flush=True)
        return None


def v2_body(csv: bytes = ROW) -> bytes:
    """A V2 infer request of the CSV rows given: one FP32 tensor [rows, features], its data flat."""
    rows = [[float(x) for x in line.split(b",")] for line in csv.splitlines() if line]
    tensor = {
        "name": INPUT_NAME,
        "shape": [len(rows), len(rows[0])],
        "datatype": "FP32",
        "data": [x for row in rows for x in row],
    }
    return json.dumps({"inputs": [tensor]}, separators=(",", ":")).encode()


def write_repository(
    root: Path, models: dict[str, Path], http_port: int, grpc_port: int, *, at_startup: bool = True
) -> None:
    """settings.json and, per model name, NAME/model-settings.json beside a link to its XGBoost file;
    MLServer loads them all as it starts, or (`at_startup` false) each when asked to (`load`).

    The runtime reads a model's format from the file's ending: `.json` for JSON, else `.ubj` (UBJSON,
    the bench's models), told apart by the byte after the opening brace.
    """
    root.mkdir(parents=True, exist_ok=True)
    # MLServer scans every folder of its repository: one a former run laid out would be loaded too.
    for stale in root.glob(f"*/{SETTINGS_FILE}"):
        if stale.parent.name not in models:
            shutil.rmtree(stale.parent)
    settings = {
        "debug": False,
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "parallel_workers": PARALLEL_WORKERS,
        "metrics_endpoint": None,
        "model_repository_root": str(root),
        "load_models_at_startup": at_startup,
    }
    (root / "settings.json").write_text(json.dumps(settings, indent=2))
    for name, booster in models.items():
        folder = root / name
        folder.mkdir(exist_ok=True)
        with booster.open("rb") as f:
            ending = ".json" if f.read(64).lstrip()[1:].lstrip()[:1] in (b'"', b"}") else ".ubj"
        for old in folder.glob("model.*"):
            old.unlink()
        os.link(booster, folder / f"model{ending}")
        model_settings = {
            "name": name,
            "implementation": "mlserver_xgboost.XGBoostModel",
            "parameters": {"uri": f"./model{ending}"},
        }
        (folder / SETTINGS_FILE).write_text(json.dumps(model_settings, indent=2))


def start(
    work: Path, python: Path, models: dict[str, Path], name: str = "mlserver", *, at_startup: bool = True
) -> Server:
    """`mlserver start` over a fresh repository of `models` (name -> XGBoost file) under `work`."""
    port, grpc_port = servers.free_port(), servers.free_port(skip=1)
    root = work / "mlserver"
    write_repository(root, models, port, grpc_port, at_startup=at_startup)
    env = dict(os.environ, OMP_NUM_THREADS=OMP_THREADS, PATH=f"{python.parent}:{os.environ.get('PATH', '')}")
    env.pop("VIRTUAL_ENV", None)
    cmd = [str(python.parent.absolute() / "mlserver"), "start", str(root.absolute())]
    return servers.spawn(name, cmd, work / "logs" / f"{name}.log", env, root, port, ready="/v2/health/ready")


def load(client: httpx.Client, name: str) -> httpx.Response:
    """Load a model of the repository through V2's repository extension, as `POST /models` loads ours.
    MLServer finds it by reading every model-settings.json in the repository, on every load."""
    return client.post(f"/v2/repository/models/{name}/load")


def infer(client: httpx.Client, name: str, body: bytes = ROW) -> httpx.Response:
    return client.post(
        f"/v2/models/{name}/infer", content=v2_body(body), headers={"Content-Type": "application/json"}
    )
