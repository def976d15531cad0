"""The models every workload uses: a handful of trained seeds, copied under many names.

Two layouts of the same files: `contract/NAME/xgboost-model` (the folder a POST /models url names, for
both servers) and `artifacts/NAME.tar.gz` (the source of our local endpoint). Copies are hard links,
so 10,000 names cost 10,000 directory entries, not 10,000 files' worth of disk.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

LOCATION = "Chicago_IL"
SEEDS = (1, 2, 3, 4)
ROW = b"2006,2800,4,2.5,1.1,2"


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
        if not folder.exists():
            folder.mkdir()
            os.link(booster, folder / "xgboost-model")
        tarball = models.artifacts / models.target(i)
        if not tarball.exists():
            os.link(artifact, tarball)
    return models


def csv_rows(n: int) -> bytes:
    return b"\n".join([ROW] * n) + b"\n"
