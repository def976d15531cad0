"""XGBoost's tree traversal for a few rows, without XGBoost's per-call overhead.

Each `inplace_predict` call builds a fresh XGBoost Context (reading cgroup files and compiling a regex)
and parses JSON array and config descriptions: ~50-90 µs of fixed cost, against ~5 µs of actual tree
walking for one row of a 25-tree model. Walking the trees from flat arrays here costs ~15-20 µs per row,
so for small batches (the typical real-time request) this is the faster path; large batches stay
with XGBoost, whose per-row cost is far lower. For a model in heavy use, `to_code` turns the same
trees into one generated Python function of nested comparisons, ~3x faster again.

Only models whose every detail this reproduces are compiled: gradient-boosted numeric trees with one
output and an identity link (the regression objectives). Anything else, and any model whose check
predictions differ from XGBoost's by a single bit, is left to XGBoost.
"""

from __future__ import annotations

import array
import marshal
import types
from collections.abc import Callable

import numpy as np

from handler.forest import Forest

# Objectives whose prediction is the raw margin: base_score plus the leaves, no transform.
IDENTITY_OBJECTIVES = {
    "reg:squarederror",
    "reg:linear",
    "reg:squaredlogerror",
    "reg:pseudohubererror",
    "reg:absoluteerror",
}
# Rows up to this many go through the walker; beyond, XGBoost's per-row speed wins.
MAX_ROWS = 4
_CHECK_ROWS = 16
# A walker takes ~20 bytes a node, a model's UBJSON ~60: a third of the UBJSON size, rounded up.
_NBYTES_PER_UBJSON_BYTE = 0.4
# Generated code walks a row ~4x faster than the arrays (4.2 against 17.4 µs for the Chicago model) but
# takes ~50 bytes a node against their 20 (tracemalloc of the code object, generated or unmarshalled, for
# ~1,000-node city models; 64 leaves a margin), so only models in use get it (see handler.model).
CODE_NBYTES_PER_NODE = 64
# Python's parser refuses code nested 100 deep; a deeper tree keeps the array walk.
_MAX_CODE_DEPTH = 60
_ONE_ZERO = bytes(4)
# The model's own batch prediction (XGBoost), which a walk must equal bit for bit.
Reference = Callable[[np.ndarray], np.ndarray]


def estimated_nbytes(ubjson_size: int) -> int:
    """What a walker of a model of this UBJSON size will take, before it is compiled."""
    return int(_NBYTES_PER_UBJSON_BYTE * ubjson_size)


class TreeWalker:
    """Flat arrays of every node of every tree; a leaf's feature is -1 and its threshold is its value."""

    __slots__ = (
        "_base",
        "_width",
        "_roots",
        "_feature",
        "_threshold",
        "_left",
        "_right",
        "_missing",
        "nbytes",
    )

    def __init__(
        self, base: float, width: int, roots: array.array, feature, threshold, left, right, missing
    ) -> None:
        self._base = base
        self._width = width
        self._roots = roots
        self._feature = feature
        self._threshold = threshold
        self._left = left
        self._right = right
        self._missing = missing
        arrays = (feature, threshold, left, right, missing)
        self.nbytes = sum(a.itemsize * len(a) for a in (*arrays, roots))

    @classmethod
    def compile(cls, forest: Forest, reference: Reference) -> TreeWalker | None:
        """A walker that predicts exactly what `reference` (the model's batch prediction) does, or None
        where it cannot promise that."""
        walker = cls.from_forest(forest)
        if walker is None or not walker._agrees_with(reference):
            return None
        return walker

    def arrays(self) -> tuple[array.array, ...]:
        """roots, feature, threshold, left, right, missing: what from_arrays takes back."""
        return self._roots, self._feature, self._threshold, self._left, self._right, self._missing

    @property
    def base(self) -> float:
        return self._base

    @classmethod
    def from_arrays(cls, base: float, width: int, arrays: tuple[array.array | memoryview, ...]) -> TreeWalker:
        """A walker of arrays read back from elsewhere (a file), checked as forest.build checks a model:
        ValueError unless every index is in range and every walk ends (a child's index is above its
        parent's, as from_forest lays trees out)."""
        roots, feature, threshold, left, right, missing = arrays
        n = len(feature)
        # Arrays built here, or views of a mapped compiled file (memoryviews, which name their format).
        codes = [(getattr(a, "typecode", None) or a.format, a.itemsize) for a in arrays]
        if codes != [("i", 4), ("i", 4), ("f", 4), ("i", 4), ("i", 4), ("i", 4)]:
            raise ValueError("walker arrays of the wrong types")
        if not n or not len(roots) or any(len(a) != n for a in (threshold, left, right, missing)):
            raise ValueError("walker arrays of different lengths (or none)")
        if width <= 0:
            raise ValueError(f"walker width {width}")
        starts = np.frombuffer(roots, dtype=np.int32).astype(np.int64)
        if starts[0] != 0 or (len(starts) > 1 and not (np.diff(starts) > 0).all()) or starts[-1] >= n:
            raise ValueError("walker roots out of order or range")
        f = np.frombuffer(feature, dtype=np.int32)
        inner = f >= 0
        if (f < -1).any() or (inner.any() and f[inner].max() >= width):
            raise ValueError("walker splits on a feature outside the model's width")
        index = np.arange(n)
        # Each tree's nodes run from its root to the next root: a child stays within its own tree.
        end = np.repeat(np.append(starts[1:], n), np.diff(np.append(starts, n)))
        lo, hi, default = (np.frombuffer(side, dtype=np.int32)[inner] for side in (left, right, missing))
        for child in (lo, hi):
            if len(child) and not ((child > index[inner]).all() and (child < end[inner]).all()):
                raise ValueError("walker child index out of its tree")
        if not ((default == lo) | (default == hi)).all():
            raise ValueError("walker default direction is neither child")
        return cls(base, width, roots, feature, threshold, left, right, missing)

    @classmethod
    def from_forest(cls, forest: Forest) -> TreeWalker | None:
        """The walker of a validated forest, or None if the walk would not reproduce XGBoost's sum."""
        if (
            forest.booster != "gbtree"
            or forest.objective not in IDENTITY_OBJECTIVES
            or forest.num_groups != 1
        ):
            return None
        if not forest.trees or any(len(tree.categorical_nodes) for tree in forest.trees):
            return None
        lengths = [tree.num_nodes for tree in forest.trees]
        starts = np.cumsum([0, *lengths[:-1]], dtype=np.int64)
        offset = np.repeat(starts, lengths)
        lo = np.concatenate([tree.left for tree in forest.trees]).astype(np.int64)
        hi = np.concatenate([tree.right for tree in forest.trees]).astype(np.int64)
        leaf = lo == -1
        default_left = np.concatenate([tree.default_left for tree in forest.trees]) != 0

        def ints(values: np.ndarray) -> array.array:
            # array.array indexes to plain Python numbers, several times faster per access than numpy's.
            return array.array("i", values.astype(np.int32).tobytes())

        return cls(
            float(forest.base_score[0]),
            forest.num_feature,
            ints(starts),
            ints(np.where(leaf, -1, np.concatenate([tree.feature for tree in forest.trees]))),
            array.array("f", np.concatenate([tree.threshold for tree in forest.trees]).tobytes()),
            ints(np.where(leaf, 0, lo + offset)),
            ints(np.where(leaf, 0, hi + offset)),
            ints(np.where(leaf, 0, np.where(default_left, lo, hi) + offset)),
        )

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Float32 predictions of float32 rows, summed in tree order from base_score as XGBoost sums."""
        out = array.array("f", bytes(4 * len(rows)))
        for i, row in enumerate(rows.tolist()):
            self._walk(row, out, i)
        return np.frombuffer(out, dtype=np.float32)

    def predict_row(self, row: list[float]) -> np.ndarray:
        """predict() of one row given as float32 values in a list: no numpy on the way in."""
        out = array.array("f", _ONE_ZERO)
        self._walk(row, out, 0)
        return np.frombuffer(out, dtype=np.float32)

    def _walk(self, row: list[float], out: array.array, i: int) -> None:
        feature, threshold, left, right, missing = (
            self._feature,
            self._threshold,
            self._left,
            self._right,
            self._missing,
        )
        # XGBoost adds each tree's leaf to a float32 total. Adding in double and storing into a float32
        # slot rounds each step to exactly that: double has more than twice float32's precision.
        out[i] = self._base
        for node in self._roots:
            f = feature[node]
            while f >= 0:
                value = row[f]
                # NaN compares false both ways: it takes the node's default direction.
                if value < threshold[node]:
                    node = left[node]
                elif value >= threshold[node]:
                    node = right[node]
                else:
                    node = missing[node]
                f = feature[node]
            out[i] = out[i] + threshold[node]

    @property
    def nodes(self) -> int:
        return len(self._feature)

    def to_code(self, reference: Reference) -> TreeCode | None:
        """The same trees as one generated function, or None (a tree too deep, a disagreement)."""
        lines = ["def walk(x, out, i):", f"    out[i] = {self._base!r}"]

        def emit(node: int, depth: int) -> None:
            pad = "    " * depth
            if self._feature[node] < 0:
                lines.append(f"{pad}v = {self._threshold[node]!r}")
                return
            if depth > _MAX_CODE_DEPTH:
                raise RecursionError
            f, t = self._feature[node], self._threshold[node]
            # NaN fails both comparisons: `not x >= t` sends it left, `x < t` sends it right.
            test = f"not x[{f}] >= {t!r}" if self._missing[node] == self._left[node] else f"x[{f}] < {t!r}"
            lines.append(f"{pad}if {test}:")
            emit(self._left[node], depth + 1)
            lines.append(f"{pad}else:")
            emit(self._right[node], depth + 1)

        try:
            for root in self._roots:
                emit(root, 1)
                lines.append("    out[i] = out[i] + v")  # the float32 slot rounds as XGBoost's sum does
        except RecursionError:
            return None
        scope: dict[str, object] = {}
        exec(compile("\n".join(lines), "<tree code>", "exec"), scope)  # noqa: S102 - our own generated code
        # Popped, not read: a function left in its own globals is a cycle only the cyclic GC frees.
        code = TreeCode(scope.pop("walk"), CODE_NBYTES_PER_NODE * self.nodes)  # type: ignore[arg-type]
        return code if self._agrees_with(reference, code.predict) else None

    def _agrees_with(self, reference: Reference, predict=None) -> bool:
        """Bit-for-bit equal to XGBoost on rows that reach every side of the thresholds, NaN included."""
        predict = predict or self.predict
        n_features = self._width
        rng = np.random.default_rng(0)
        thresholds = np.frombuffer(self._threshold, dtype=np.float32)
        splits = thresholds[np.frombuffer(self._feature, dtype=np.int32) >= 0]
        values = splits if len(splits) else np.zeros(1, dtype=np.float32)
        rows = rng.choice(values, size=(_CHECK_ROWS, n_features)).astype(np.float32)
        rows += rng.choice(np.array([-1e-3, 0, 1e-3], dtype=np.float32), size=rows.shape) * np.abs(rows)
        rows[rng.random(rows.shape) < 0.1] = np.nan
        ours = np.concatenate([predict(rows[i : i + MAX_ROWS]) for i in range(0, _CHECK_ROWS, MAX_ROWS)])
        return bool(np.array_equal(ours, reference(rows)))


class TreeCode:
    """A model's trees as generated Python: nested comparisons instead of array lookups."""

    __slots__ = ("_walk", "nbytes")

    def __init__(self, walk, nbytes: int) -> None:
        self._walk = walk
        self.nbytes = nbytes

    def to_marshal(self) -> bytes:
        """The function's code object as bytes: loading them back costs ~1/100 of generating it anew."""
        return marshal.dumps(self._walk.__code__)

    @classmethod
    def from_marshal(cls, data: bytes, nodes: int) -> TreeCode:
        """to_marshal's output back (for this Python only: marshal's format is per version); ValueError
        if it is not such a function."""
        code = marshal.loads(data)
        if not isinstance(code, types.CodeType) or code.co_name != "walk" or code.co_argcount != 3:
            raise ValueError("not a tree code function")
        # The generated function reads no globals: an empty namespace is all it needs.
        return cls(types.FunctionType(code, {}), CODE_NBYTES_PER_NODE * nodes)

    def predict(self, rows: np.ndarray) -> np.ndarray:
        out = array.array("f", bytes(4 * len(rows)))
        walk = self._walk
        for i, row in enumerate(rows.tolist()):
            walk(row, out, i)
        return np.frombuffer(out, dtype=np.float32)

    def predict_row(self, row: list[float]) -> np.ndarray:
        """predict() of one row given as float32 values in a list."""
        out = array.array("f", _ONE_ZERO)
        self._walk(row, out, 0)
        return np.frombuffer(out, dtype=np.float32)
