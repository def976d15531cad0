"""The model reader against Treelite's XGBoost frontends, side by side in one process: load time per
format and whether predictions keep every bit of the SageMaker fixtures. The README's design notes
quote its output.

Treelite is no dependency of the project; run this with a Python that has it and the project's
readers importable, e.g.
    python3 -m venv /tmp/tl && /tmp/tl/bin/pip install treelite==4.8.1 numpy orjson
    PYTHONPATH=. /tmp/tl/bin/python -m bench.reader_compare CITY_MODEL.tar.gz
"""

from __future__ import annotations

import json
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import treelite

from handler import formats
from handler.forest import ModelLimits

FIXTURES = Path(__file__).parent.parent / "tests" / "fixtures" / "sagemaker_images"
LIMITS = ModelLimits()


def best_of(repeats: int, work) -> float:
    """Fastest of `repeats` runs, in milliseconds: the least disturbed by a shared machine."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def main(city_archive: str) -> None:
    with tarfile.open(city_archive) as archive:
        city = archive.extractfile("xgboost-model").read()
    legacy = (FIXTURES / "image-1.7-1" / "regression" / "xgboost-model").read_bytes()
    with tempfile.TemporaryDirectory() as scratch:
        city_file, legacy_file = Path(scratch) / "city.ubj", Path(scratch) / "model.bin"
        city_file.write_bytes(city)
        legacy_file.write_bytes(legacy)
        rows = [
            (
                "city model, UBJSON",
                city,
                lambda: treelite.frontend.load_xgboost_model(str(city_file), format_choice="ubjson"),
            ),
            (
                "1.7-1 legacy binary",
                legacy,
                lambda: treelite.frontend.load_xgboost_model_legacy_binary(str(legacy_file)),
            ),
        ]
        print("| model | bytes | our reader (ms) | Treelite frontend (ms) |")
        print("| --- | --- | --- | --- |")
        for label, data, theirs in rows:
            ours = best_of(50, lambda data=data: formats.read(data, "model", LIMITS))
            print(f"| {label} | {len(data)} | {ours:.2f} | {best_of(50, theirs):.2f} |")
        print()
        exact = total = 0
        for case_file in sorted(FIXTURES.glob("image-1.[357]-1/*/case.json")):
            case = json.loads(case_file.read_text())
            model_file = case_file.parent / "xgboost-model"
            if case["booster"] != "gbtree" or not case.get("prediction_bits"):
                continue
            rows_in = np.array(
                [[np.nan if v is None else v for v in r] for r in case["rows"]], dtype=np.float32
            )
            want = np.array([int(h, 16) for h in np.ravel(case["prediction_bits"])], dtype=np.uint32)
            model = treelite.frontend.load_xgboost_model_legacy_binary(str(model_file))
            got = np.asarray(treelite.gtil.predict(model, rows_in), dtype=np.float32).ravel()
            total += 1
            exact += got.view(np.uint32).tolist() == want.tolist()
        print(f"Treelite GTIL bit-for-bit on {exact} of {total} legacy gbtree fixtures (1.3-1, 1.5-1, 1.7-1)")


if __name__ == "__main__":
    main(sys.argv[1])
