"""The models every workload uses: a handful of trained seeds, copied under many names.

Two layouts of the same files: `contract/NAME/xgboost-model` (the folder a POST /models url names, for
both servers) and `artifacts/NAME.tar.gz` (the source of our local endpoint). Beyond the first DISTINCT
names, copies are hard links, so 10,000 names cost 10,000 directory entries, not 10,000 files' worth of
disk. The first DISTINCT are files of their own, each with an attribute of its own: a cold load (W2, the
in-process loads) of bytes no compiler has seen, since ours writes a seen file's form without compiling.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

LOCATION = "Chicago_IL"
SEEDS = (1, 2, 3, 4)
ROW = b"2006,2800,4,2.5,1.1,2"
DISTINCT = 40


@dataclass(frozen=True)
class ModelSet:
    contract: Path
    artifacts: Path
    count: int

    @staticmethod
    def name(i: int) -> str:
        return f"m{i:05d}"

    @staticmethod
    def target(i: int) -> str:
        """The TargetModel of name i at the local endpoint: its artifact's key, as under SageMaker."""
        return f"{ModelSet.name(i)}.tar.gz"

    def url(self, i: int) -> str:
        return str(self.contract / self.name(i))


def _train(seed_dir: Path, seed: int) -> Path:
    artifact = seed_dir / f"{LOCATION}.tar.gz"
    if not artifact.exists():
        mme = Path(sys.executable).parent / "mme"
        cmd = [str(mme), "train", "--locations", LOCATION, "--seed", str(seed), "--jobs", "1"]
        cmd += ["--out", str(seed_dir), "--data", str(seed_dir / "data")]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return artifact


def prepare(work: Path, count: int) -> ModelSet:
    """Train the seeds (once) and lay out `count` names in both layouts (kept between runs)."""
    root = work / "models"
    models = ModelSet(root / "contract", root / "artifacts", count)
    sources = []
    for seed in SEEDS:
        artifact = _train(root / f"seed{seed}", seed)
        booster = artifact.with_name("xgboost-model")
        if not booster.exists():
            with tarfile.open(artifact) as tar:
                tar.extract("xgboost-model", artifact.parent, filter="data")
        sources.append((booster, artifact))
    models.contract.mkdir(parents=True, exist_ok=True)
    models.artifacts.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        booster, artifact = sources[i % len(sources)]
        folder = models.contract / models.name(i)
        tarball = models.artifacts / models.target(i)
        if i < DISTINCT:
            _write_distinct(booster, i, folder, tarball)
            continue
        if not folder.exists():
            folder.mkdir()
            os.link(booster, folder / "xgboost-model")
        if not tarball.exists():
            os.link(artifact, tarball)
    return models


def _write_distinct(booster: Path, i: int, folder: Path, tarball: Path) -> None:
    """Copy i of `booster` with bytes of its own (an attribute naming the copy), in both layouts."""
    model_file = folder / "xgboost-model"
    if model_file.exists() and model_file.stat().st_nlink == 1 and tarball.exists():
        return
    import xgboost as xgb

    copy = xgb.Booster()
    copy.load_model(bytearray(booster.read_bytes()))  # from bytes: a path without a suffix draws a warning
    copy.set_attr(bench_copy=str(i))
    raw = bytes(copy.save_raw("ubj"))
    folder.mkdir(exist_ok=True)
    model_file.unlink(missing_ok=True)
    model_file.write_bytes(raw)
    tarball.unlink(missing_ok=True)
    with tarfile.open(tarball, "w:gz") as tar:
        member = tarfile.TarInfo("xgboost-model")
        member.size = len(raw)
        tar.addfile(member, io.BytesIO(raw))


def csv_rows(n: int) -> bytes:
    return b"\n".join([ROW] * n) + b"\n"
