"""The baseline: multi-model-server + sagemaker-inference in a virtualenv of its own, run by the bench.

The modules beside this one run inside that virtualenv; this one runs in ours and only builds it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MMS_VERSION = "1.1.11"
SAGEMAKER_INFERENCE_VERSION = "1.10.1"
HERE = Path(__file__).resolve().parent
LAUNCHER = HERE / "launch.py"


def requirements() -> list[str]:
    import xgboost

    # The same XGBoost as ours, so the comparison is of the serving stacks alone.
    return [
        f"multi-model-server=={MMS_VERSION}",
        f"sagemaker-inference=={SAGEMAKER_INFERENCE_VERSION}",
        f"xgboost-cpu=={xgboost.__version__}",
        "numpy",
    ]


def ensure_venv(venv: Path, wanted: list[str] | None = None, what: str = "the baseline") -> Path:
    """Create (once) a peer's virtualenv of `wanted` (default: the MMS baseline's); returns its python."""
    wanted = wanted or requirements()
    python = venv / "bin" / "python"
    stamp = venv / ".bench-installed"
    if stamp.exists() and stamp.read_text() == "\n".join(wanted):
        return python
    print(f"bench: installing {what} into {venv} (once) ...", flush=True)
    base_python = Path(sys.base_prefix) / "bin" / "python3"
    subprocess.run([str(base_python), "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, *wanted], check=True)
    stamp.write_text("\n".join(wanted))
    return python
