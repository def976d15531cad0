"""Synthetic house prices per location, their 60/30/10 split, and CSV files in SageMaker's channel layout."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import NamedTuple

import numpy as np

from serve.errors import CommandError
from training.package import write_atomic

LOCATIONS = (
    "NewYork_NY",
    "LosAngeles_CA",
    "Chicago_IL",
    "Houston_TX",
    "Dallas_TX",
    "Phoenix_AZ",
    "Philadelphia_PA",
    "SanAntonio_TX",
    "SanDiego_CA",
    "SanFrancisco_CA",
)
DEFAULT_LOCATIONS = LOCATIONS[:4]
COLUMNS = (
    "PRICE",
    "YEAR_BUILT",
    "SQUARE_FEET",
    "NUM_BEDROOMS",
    "NUM_BATHROOMS",
    "LOT_ACRES",
    "GARAGE_SPACES",
)
CHANNELS = ("train", "val", "test")
MIN_HOUSES = 10  # the smallest count whose 60/30/10 split leaves every channel non-empty


class Table(NamedTuple):
    """Rows of one channel: the label column apart from the feature columns."""

    labels: np.ndarray
    features: np.ndarray


def location_seed(seed: int, location: str) -> int:
    # hashlib, not hash(): Python salts str hashes per process, which would break reproducibility.
    digest = hashlib.sha256(f"{seed}:{location}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def generate(rng: np.random.Generator, houses: int) -> np.ndarray:
    """`houses` rows of COLUMNS, PRICE given by the notebook's formula."""
    square_feet = rng.normal(3000, 750, houses).astype(np.int64)
    bedrooms = rng.integers(2, 7, houses)
    bathrooms = rng.integers(2, 7, houses) / 2
    lot_acres = np.round(rng.normal(1.0, 0.25, houses), 2)
    garage = rng.integers(0, 4, houses)
    year_built = np.minimum(2019, rng.normal(1995, 10, houses).astype(np.int64))
    price = (
        square_feet * 150
        + 10000 * bedrooms
        + 15000 * bathrooms
        + 15000 * lot_acres
        + 15000 * garage
        - 5000 * (2019 - year_built)
    ).astype(np.int64)
    columns = [price, year_built, square_feet, bedrooms, bathrooms, lot_acres, garage]
    return np.column_stack(columns).astype(np.float64)


def split(rows: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle, then cut 60/30/10 into disjoint train, validation and test rows."""
    shuffled = rng.permutation(rows)
    n = len(rows)
    train_end, val_end = int(0.6 * n), int(0.9 * n)
    return shuffled[:train_end], shuffled[train_end:val_end], shuffled[val_end:]


def channel_file(data_dir: Path, location: str, channel: str) -> Path:
    return data_dir / location / channel / f"{location}_{channel}.csv"


def write_location(data_dir: Path, location: str, houses: int, seed: int) -> dict[str, Path]:
    """Generate, split and write one location as <data_dir>/<loc>/<channel>/<loc>_<channel>.csv."""
    rng = np.random.default_rng(location_seed(seed, location))
    parts = split(generate(rng, houses), rng)
    paths = {}
    for channel, part in zip(CHANNELS, parts, strict=True):
        buffer = io.BytesIO()
        np.savetxt(buffer, part, fmt="%.2f", delimiter=",")
        paths[channel] = channel_file(data_dir, location, channel)
        write_atomic(paths[channel], buffer.getvalue())
    return paths


def read_csv(path: Path) -> list[list[float]]:
    """Rows of one headerless numeric CSV file; a ragged row or a non-numeric cell names file and line."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read {path}: {exc}") from None
    rows: list[list[float]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        cells = line.split(",")
        if rows and len(cells) != len(rows[0]):
            raise CommandError(f"{path}:{number}: {len(cells)} columns, expected {len(rows[0])} like line 1")
        row = []
        for column, cell in enumerate(cells, start=1):
            try:
                row.append(float(cell))
            except ValueError:
                raise CommandError(f"{path}:{number}: column {column} is not a number: {cell!r}") from None
        rows.append(row)
    return rows


def read_channel(folder: Path, name: str) -> Table:
    """All *.csv files of a channel folder, label first, as one Table."""
    rows: list[list[float]] = []
    first: Path | None = None
    for path in sorted(folder.glob("*.csv")) if folder.is_dir() else []:
        file_rows = read_csv(path)
        if file_rows and rows and len(file_rows[0]) != len(rows[0]):
            raise CommandError(
                f"channel {name}: {path} has {len(file_rows[0])} columns but {first} has {len(rows[0])}"
            )
        if file_rows and not rows:
            first = path
        rows.extend(file_rows)
    if not rows:
        raise CommandError(f"channel {name} is empty: no CSV rows in {folder}")
    if len(rows[0]) < 2:
        raise CommandError(f"channel {name}: {first} needs a label column and at least one feature column")
    table = np.asarray(rows, dtype=np.float64)
    return Table(labels=table[:, 0], features=table[:, 1:])
