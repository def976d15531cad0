"""Shared fixtures: real parts only — small XGBoost models trained here, moto's S3 server on loopback."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import numpy as np
import pytest
import xgboost as xgb

N_FEATURES = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def train_booster(seed: int = 0, rounds: int = 5, n_features: int = N_FEATURES, **params) -> xgb.Booster:
    """A small regression model whose predictions differ by seed, so mixed-up models are caught."""
    rng = np.random.default_rng(seed)
    x = rng.random((200, n_features), dtype=np.float32)
    y = x @ np.arange(1, n_features + 1) * (seed + 1) * 1000
    params = {"max_depth": 3, "eta": 0.3, "nthread": 1, **params}
    return xgb.train(params, xgb.DMatrix(x, label=y), rounds)


@pytest.fixture(scope="session")
def make_model_dir(tmp_path_factory) -> Callable[..., Path]:
    """make_model_dir(seed) -> a folder holding `xgboost-model`, as SageMaker unpacks an artifact."""
    root = tmp_path_factory.mktemp("models")

    def make(seed: int = 0, name: str | None = None, **params) -> Path:
        folder = root / (name or f"model-{seed}")
        if not (folder / "xgboost-model").exists():
            folder.mkdir(parents=True, exist_ok=True)
            train_booster(seed, **params).save_model(str(folder / "xgboost-model.json"))
            (folder / "xgboost-model.json").rename(folder / "xgboost-model")
        return folder

    return make


@contextlib.contextmanager
def python_server(args: list[str], port: int) -> Iterator[str]:
    """`python ARGS` serving on 127.0.0.1:port for the block; yields its URL and stops it after."""
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def moto_server(port: int) -> contextlib.AbstractContextManager[str]:
    return python_server(["-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], port)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's standalone server on 127.0.0.1, one per test session."""
    with moto_server(free_port()) as url:
        yield url


@pytest.fixture(scope="session", autouse=True)
def _aws_env() -> None:
    # Fake credentials so boto3 never looks for real ones; every client in tests names a loopback endpoint.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ.pop("AWS_PROFILE", None)


@pytest.fixture
def s3(moto_endpoint: str):
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(s3, request) -> str:
    """A fresh bucket per test, so tests never see each other's objects."""
    name = "t-" + request.node.name.lower().replace("_", "-").replace("[", "-").replace("]", "")[:40]
    name = name.strip("-") + f"-{os.getpid() % 10000}-{time.monotonic_ns() % 100000}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def model_root(tmp_path: Path, make_model_dir) -> Path:
    """/opt/ml/models as SageMaker lays it out: <root>/<name>/model/<artifact files>."""
    root = tmp_path / "models"
    for seed in range(8):
        shutil.copytree(make_model_dir(seed), root / f"m{seed}" / "model")
    return root


class ServerProcess:
    """`mme serve` as a real subprocess on 127.0.0.1, exactly as a user starts it."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, wait_ready: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # One serving process unless a test asks for more (--workers or the variable): every worker
        # costs a test server its start-up time, and the tests of several workers ask for them.
        one = {"SAGEMAKER_MODEL_SERVER_WORKERS": "1"}
        full_env = {**one, **os.environ, "SAGEMAKER_BIND_TO_PORT": str(self.port), **(env or {})}
        # A file, not a pipe: a chatty server must never block on a full pipe nobody reads.
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serve.cli", "serve", "--host", "127.0.0.1", *args],
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            wait_for_port(self.port)
            if wait_ready:
                self.wait_ready()
        except BaseException:
            self.stop()  # never leave a server running that no test will stop
            raise

    def wait_ready(self, timeout: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.output()}")
            # Long: with several workers, a connection waits in the backlog until one has started.
            if httpx.get(self.url + "/ping", timeout=timeout).status_code == 200:
                return
            time.sleep(0.05)
        raise TimeoutError("server never became ready")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> str:
        """Stop with SIGTERM, as SageMaker does; returns everything the server printed."""
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=60)
        return self.output()


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerProcess]]:
    servers: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, wait_ready: bool = True) -> ServerProcess:
        server = ServerProcess(list(args), env, wait_ready)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def artifact_bytes() -> Callable[[int], bytes]:
    """artifact_bytes(seed) -> a SageMaker XGBoost model.tar.gz holding `xgboost-model`."""
    from training.package import tar_gz

    made: dict[int, bytes] = {}

    def make(seed: int) -> bytes:
        if seed not in made:
            made[seed] = tar_gz(bytes(train_booster(seed).save_raw("ubj")))
        return made[seed]

    return make


def predict_artifact(data: bytes, rows: np.ndarray) -> list[float]:
    """What the artifact predicts in-process: the reference every served prediction must equal."""
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.extractfile("xgboost-model")
        assert member is not None
        booster = xgb.Booster()
        booster.load_model(bytearray(member.read()))
    return booster.inplace_predict(rows).tolist()
