"""XGBoost's legacy binary model format (0.x to 2.x `save_model` without a .json/.ubj suffix, and the
model inside 0.90 to 1.2 pickles), read without XGBoost, which dropped it in 3.1.

The layout is C structs written in memory order (little-endian on every platform SageMaker ran):
an optional "binf" magic; LearnerModelParam (136 bytes); objective and booster names (u64 length +
bytes); the booster's own part; then, when flagged, string attributes. A gbtree part is
GBTreeModelParam (160 bytes), per tree a TreeParam (148 bytes), its nodes (20 bytes each) and node
statistics (16 bytes each), then one int32 output group per tree; dart appends its tree weights, and
gblinear is a 136-byte parameter block and a float vector. Every length is checked against the bytes
left before anything is allocated.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import orjson

from handler.errors import ModelLoadError
from handler.forest import MULTICLASS, Forest, Tree

MAGIC = b"binf"
_LEARNER = struct.Struct("<fIiiiIIIi")  # base_score .. boost_from_average, then 25 reserved int32
_LEARNER_SIZE = 136
_GBTREE = struct.Struct("<iiiiqii")  # num_trees, num_parallel_tree (num_roots in 0.x), .., size_leaf_vector
_GBTREE_SIZE = 160
_TREE = struct.Struct(
    "<iiiiii"
)  # num_roots, num_nodes, num_deleted, max_depth, num_feature, size_leaf_vector
_TREE_SIZE = 148
_GBLINEAR_SIZE = 136
_NODE = np.dtype([("parent", "<i4"), ("left", "<i4"), ("right", "<i4"), ("index", "<u4"), ("value", "<f4")])
_STAT = np.dtype([("loss_change", "<f4"), ("sum_hessian", "<f4"), ("base_weight", "<f4"), ("leaves", "<i4")])
_DELETED = 0xFFFFFFFF
_DEFAULT_LEFT = 1 << 31
_MAX_NAME = 256

# XGBoost < 1.0 stored base_score as a margin; these are the objectives' margin -> probability
# transforms (PredTransform) and back (ProbToMargin), as XGBoost 1.x applies when it reads such a file.
_LOGIT = (lambda m: 1 / (1 + math.exp(-m)), lambda p: -math.log(1 / p - 1))
_LOG = (math.exp, math.log)
_TRANSFORMS = {
    "binary:logistic": _LOGIT, "reg:logistic": _LOGIT,
    "count:poisson": _LOG, "reg:gamma": _LOG, "reg:tweedie": _LOG, "survival:cox": _LOG, "survival:aft": _LOG,
}  # fmt: skip


class _Stream:
    __slots__ = ("data", "pos", "source")

    def __init__(self, data: bytes, source: str) -> None:
        self.data, self.pos, self.source = data, 0, source

    def fail(self, problem: str) -> ModelLoadError:
        return ModelLoadError(f"{self.source} is not a readable legacy binary XGBoost model: {problem}")

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"it ends inside {what} (byte {self.pos} of {len(self.data)}, {n} more wanted)")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, layout: struct.Struct, size: int, what: str) -> tuple:
        return layout.unpack_from(self.take(size, what))

    def array(self, dtype: np.dtype, count: int, what: str) -> np.ndarray:
        if count < 0 or count * dtype.itemsize > len(self.data) - self.pos:
            raise self.fail(f"{what} claims {count} entries, more than the file holds")
        return np.frombuffer(self.take(count * dtype.itemsize, what), dtype=dtype)

    def count(self, what: str) -> int:
        (n,) = struct.unpack("<Q", self.take(8, f"the length of {what}"))
        if n > len(self.data) - self.pos:
            raise self.fail(f"{what} claims {n} bytes, more than the file holds")
        return n

    def text(self, what: str, limit: int | None = None) -> str:
        n = self.count(what)
        if limit is not None and n > limit:
            raise self.fail(f"{what} is {n} bytes long")
        raw = self.take(n, what)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not text (it starts with {raw[:8]!r})") from None


def looks_legacy(data: bytes) -> bool:
    """Whether `data` opens as a legacy model does: the learner block, then a short objective name."""
    start = _LEARNER_SIZE + (4 if data[:4] == MAGIC else 0)
    name_length = int.from_bytes(data[start : start + 8], "little")
    name = data[start + 8 : start + 8 + name_length]
    return 0 < name_length <= _MAX_NAME and len(name) == name_length and name.isascii() and b":" in name


def read(data: bytes, source: str) -> Forest:
    """The Forest in a legacy binary model; ModelLoadError naming what is wrong where."""
    stream = _Stream(data, source)
    if data[:4] == MAGIC:
        stream.pos = 4
    base, num_feature, num_class, extra_attrs, _, major, minor, _, _ = stream.unpack(
        _LEARNER, _LEARNER_SIZE, "the learner parameters"
    )
    objective = stream.text("the objective name", _MAX_NAME)
    booster = stream.text("the booster name", _MAX_NAME)
    fields: dict = {}
    if booster in ("gbtree", "dart"):
        fields = _gbtree(stream, num_class, booster == "dart")
    elif booster == "gblinear":
        stream.take(_GBLINEAR_SIZE, "the gblinear parameters")
        fields = {"linear_weights": stream.array(np.dtype("<f4"), stream.count("the weights"), "weights")}
    else:
        raise stream.fail(f"booster {booster[:40]!r} is not gbtree, dart or gblinear")
    attributes = _attributes(stream) if extra_attrs else {}
    config = _objective_config(attributes, stream)
    version = f"{major}.{minor}" if major else "before 1.0"
    return Forest(
        booster=booster,
        objective=objective,
        objective_config=config,
        base_score=np.array([_base_score(base, objective, (major, minor))], dtype=np.float32),
        num_feature=num_feature,
        num_class=num_class,
        attributes=attributes,
        source_format=f"legacy binary model (XGBoost {version})",
        version=(major, minor),
        **fields,
    )


def _gbtree(stream: _Stream, num_class: int, dart: bool) -> dict:
    num_trees, num_parallel_tree, _, _, _, groups, _ = stream.unpack(
        _GBTREE, _GBTREE_SIZE, "the gbtree parameters"
    )
    if num_trees < 0 or num_trees * (_TREE_SIZE + 36) > len(stream.data) - stream.pos:
        raise stream.fail(f"it claims {num_trees} trees, more than the file holds")
    if groups not in (0, max(num_class, 1)):  # 0 from XGBoost 1.0 on, which keeps it in num_class
        raise stream.fail(f"{groups} output groups for num_class {num_class}")
    trees = tuple(_tree(stream, i) for i in range(num_trees))
    tree_info = stream.array(np.dtype("<i4"), num_trees, "tree_info").astype(np.int32)
    weight_drop = None
    if dart:
        weight_drop = np.zeros(0, np.float32)
        if num_trees:
            n = stream.count("the dart weights")
            weight_drop = stream.array(np.dtype("<f4"), n, "the dart weights").astype(np.float32)
    return {
        "trees": trees,
        "tree_info": tree_info,
        "num_parallel_tree": max(num_parallel_tree, 1),
        "weight_drop": weight_drop,
    }


def _tree(stream: _Stream, index: int) -> Tree:
    _, num_nodes, _, _, _, leaf_vector = stream.unpack(_TREE, _TREE_SIZE, f"tree {index}'s parameters")
    if leaf_vector > 1:
        raise stream.fail(f"tree {index} has vector leaves, which XGBoost never served from this format")
    nodes = stream.array(_NODE, num_nodes, f"tree {index}'s nodes")
    stats = stream.array(_STAT, num_nodes, f"tree {index}'s node statistics")
    index_bits = nodes["index"]
    deleted = index_bits == _DELETED
    left = np.where(deleted, -1, nodes["left"]).astype(np.int32)
    right = np.where(deleted, -1, nodes["right"]).astype(np.int32)
    leaf = left == -1
    return Tree(
        left=left,
        right=right,
        feature=np.where(leaf, 0, index_bits & (_DEFAULT_LEFT - 1)).astype(np.int32),
        threshold=nodes["value"].astype(np.float32),
        default_left=((index_bits & _DEFAULT_LEFT) != 0).astype(np.uint8),
        loss_change=stats["loss_change"].astype(np.float32),
        sum_hessian=stats["sum_hessian"].astype(np.float32),
        base_weight=stats["base_weight"].astype(np.float32),
    )


def _attributes(stream: _Stream) -> dict[str, str]:
    n = stream.count("the attributes")
    pairs = {}
    for _ in range(n):
        key = stream.text("an attribute name")
        pairs[key] = stream.text(f"attribute {key[:40]!r}")
    return pairs


def _objective_config(attributes: dict[str, str], stream: _Stream) -> dict:
    """The objective's parameters: 1.0+ saves them as JSON in the "objective" attribute; earlier files
    keep only Poisson's max_delta_step. Bookkeeping attributes that XGBoost consumed are removed."""
    for key in [k for k in attributes if k.startswith("SAVED_PARAM_") or k == "metrics"]:
        del attributes[key]
    if "count_poisson_max_delta_step" in attributes:
        step = attributes.pop("count_poisson_max_delta_step")
        return {"poisson_regression_param": {"max_delta_step": step}}
    if "objective" not in attributes:
        return {}
    try:
        saved = orjson.loads(attributes.pop("objective"))
    except orjson.JSONDecodeError:
        raise stream.fail("its objective attribute is not JSON") from None
    if not isinstance(saved, dict):
        raise stream.fail("its objective attribute is not an object")
    return {key: value for key, value in saved.items() if key != "name"}


def _base_score(stored: float, objective: str, version: tuple[int, int]) -> np.float32:
    """base_score in probability space, as every later format stores it.

    Files from XGBoost < 1.0 hold the margin: it is turned into the probability whose margin, as XGBoost
    computes it again on load, is exactly the stored float32, so predictions keep every bit.
    """
    stored32 = np.float32(stored)
    if objective == "binary:logitraw" and (1, 0) <= version < (1, 3) and 0 < stored < 1:
        # 1.0-1.2 turned logitraw's base_score into a margin with the logit; 3.x takes it as it is.
        return np.float32(-math.log(1 / float(stored32) - 1))
    transform = _TRANSFORMS.get(objective)
    if version >= (1, 0) or objective in MULTICLASS or transform is None or not math.isfinite(stored):
        return stored32
    forward, back = transform
    try:
        guess = np.float32(forward(float(stored32)))
    except (OverflowError, ValueError):
        return stored32
    for candidate in _neighbours(guess):
        try:
            if np.float32(back(float(candidate))) == stored32:
                return candidate
        except (ValueError, ZeroDivisionError):
            continue
    return guess


def _neighbours(value: np.float32, steps: int = 4) -> list[np.float32]:
    """value, then the floats up to `steps` ulps either side, nearest first."""
    out, up, down = [value], value, value
    for _ in range(steps):
        up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(-np.inf))
        out += [up, down]
    return out
