"""XGBoost's JSON/UBJSON model schema, both ways: a parsed document to a Forest, and a Forest to the
document the installed XGBoost loads.

Reading accepts every schema XGBoost 1.0 to 3.x wrote (typed arrays or plain lists, dart nesting its
gbtree, base_score as "5E-1" or "[5E-1]", pickled snapshots' {"Model": ..., "Config": ...}). Nothing
here trusts a value's type: a field of the wrong shape is a ModelLoadError naming it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from handler.errors import ModelLoadError
from handler.forest import Forest, Tree

# What XGBoost 3.x refuses to load an objective without; none of it changes a prediction.
_REQUIRED_BLOCKS: dict[str, dict[str, dict[str, str]]] = {
    "count:poisson": {"poisson_regression_param": {"max_delta_step": "0.7"}},
    "reg:tweedie": {"tweedie_regression_param": {"tweedie_variance_power": "1.5"}},
    "survival:aft": {
        "aft_loss_param": {"aft_loss_distribution": "normal", "aft_loss_distribution_scale": "1"}
    },
    "reg:quantileerror": {"quantile_loss_param": {"quantile_alpha": "[5E-1]"}},
}
_RENAMED = {"reg:linear": "reg:squarederror"}
_MAX_CONFIG_CHARS = 4096
_TREE_FLOATS = ("split_conditions", "loss_changes", "sum_hessian", "base_weights")


class _Fields:
    """Typed access to one JSON object of an untrusted document; `where` names it in messages."""

    def __init__(self, value: Any, where: str, source: str) -> None:
        if not isinstance(value, dict):
            raise ModelLoadError(f"invalid {source} model: {where} is not an object")
        self.value, self.where, self.source = value, where, source

    def fail(self, key: str, problem: str) -> ModelLoadError:
        return ModelLoadError(f"invalid {self.source} model: {self.where}.{key} {problem}")

    def get(self, key: str, default: Any = ...) -> Any:
        if key not in self.value:
            if default is ...:
                raise self.fail(key, "is missing")
            return default
        return self.value[key]

    def obj(self, key: str, default: Any = ...) -> _Fields:
        return _Fields(
            self.get(key, {} if default is not ... else default), f"{self.where}.{key}", self.source
        )

    def integer(self, key: str, default: Any = ...) -> int:
        """An integer, stored as a JSON number or (as XGBoost stores parameters) a decimal string."""
        value = self.get(key, default)
        try:
            if isinstance(value, str) and len(value) <= 20:
                return int(value)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        except ValueError:
            pass
        raise self.fail(key, f"is not an integer: {str(value)[:40]!r}")

    def numbers(self, key: str, dtype: type, default: Any = ...) -> np.ndarray:
        """A numeric array: a UBJSON typed array, or a JSON list of numbers in dtype's range."""
        value = self.get(key, default)
        if isinstance(value, np.ndarray) and value.dtype.kind in "iuf":
            values = value
        elif isinstance(value, list) and all(type(v) in (int, float, bool) for v in value):
            values = np.array(value, dtype=np.float64 if any(type(v) is float for v in value) else np.int64)
        else:
            raise self.fail(key, "is not a list of numbers")
        target = np.dtype(dtype)
        if values.dtype.kind == target.kind and values.dtype.itemsize <= target.itemsize:
            return values.astype(target)  # a typed array that fits: nothing to check
        integral = target.kind in "iu"
        if integral and values.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
            raise self.fail(key, "holds a value that is not an integer")
        if np.dtype(dtype).kind in "iu" and len(values):
            info = np.iinfo(dtype)
            if values.min() < info.min or values.max() > info.max:
                raise self.fail(key, f"holds a value outside {info.min}..{info.max}")
        return values.astype(dtype)

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, "is not a list of strings")
        return tuple(value)


def forest_from_document(document: Any, source: str) -> Forest:
    """The Forest a parsed XGBoost model (or pickled snapshot) describes."""
    top = _Fields(document, "document", source)
    if "Model" in top.value:  # a Booster's pickled state, 1.3 and later: {"Model": ..., "Config": ...}
        top = top.obj("Model")
    learner = top.obj("learner")
    params = learner.obj("learner_model_param")
    objective = learner.obj("objective")
    name = objective.get("name")
    if not isinstance(name, str):
        raise objective.fail("name", "is not a string")
    config = {key: value for key, value in objective.value.items() if key != "name"}
    booster = learner.obj("gradient_booster")
    kind = booster.get("name")
    trees_at, weight_drop, linear = booster, None, None
    if kind == "dart":
        weight_drop = booster.numbers("weight_drop", np.float32)
        trees_at = booster.obj("gbtree")
    forest_fields: dict[str, Any] = {}
    if kind == "gblinear":
        linear = booster.obj("model").numbers("weights", np.float32)
    elif kind in ("gbtree", "dart"):
        forest_fields = _trees(trees_at.obj("model"), source)
    else:
        raise booster.fail("name", f"is {str(kind)[:40]!r}, not gbtree, dart or gblinear")
    attributes = learner.get("attributes", {})
    if not isinstance(attributes, dict) or not all(isinstance(v, str) for v in attributes.values()):
        raise learner.fail("attributes", "is not an object of strings")
    return Forest(
        booster=kind,
        objective=name,
        objective_config=_checked_config(config, objective),
        base_score=_base_score(params),
        num_feature=params.integer("num_feature"),
        num_class=params.integer("num_class", "0"),
        weight_drop=weight_drop,
        linear_weights=linear,
        feature_names=learner.strings("feature_names"),
        feature_types=learner.strings("feature_types"),
        attributes=dict(attributes),
        source_format=source,
        version=_version(top),
        **forest_fields,
    )


def _version(top: _Fields) -> tuple[int, int]:
    version = top.get("version", [3, 0, 0])
    if isinstance(version, np.ndarray):
        version = version.tolist()
    if not isinstance(version, list) or len(version) < 2 or not all(type(v) is int for v in version[:2]):
        raise top.fail("version", "is not [major, minor, patch]")
    return (version[0], version[1])


def _checked_config(config: dict, objective: _Fields) -> dict:
    """Objective parameters as XGBoost stores them: blocks of string values, and small."""
    for block in config.values():
        if not isinstance(block, dict) or not all(isinstance(v, str) for v in block.values()):
            raise objective.fail("*", "is not an object of string parameters")
    if (
        sum(len(k) + sum(len(a) + len(b) for a, b in v.items()) for k, v in config.items())
        > _MAX_CONFIG_CHARS
    ):
        raise objective.fail("*", f"parameters are longer than {_MAX_CONFIG_CHARS} characters")
    return config


def _base_score(params: _Fields) -> np.ndarray:
    """ "5E-1", "[5E-1]" or "[a,b,c]" (XGBoost 2.0 and later) as float32, exactly as XGBoost parsed it."""
    raw = params.get("base_score", "5E-1")
    if not isinstance(raw, str) or len(raw) > 64 * 1024:
        raise params.fail("base_score", "is not a string")
    try:
        values = [np.float32(float(part)) for part in raw.strip().strip("[]").split(",")]
    except ValueError:
        raise params.fail("base_score", f"is not a number: {raw[:40]!r}") from None
    return np.array(values, dtype=np.float32)


def _trees(model: _Fields, source: str) -> dict[str, Any]:
    trees_json = model.get("trees")
    if not isinstance(trees_json, list):
        raise model.fail("trees", "is not a list")
    param = model.obj("gbtree_model_param")
    trees = tuple(_tree(_Fields(t, f"trees[{i}]", source)) for i, t in enumerate(trees_json))
    return {
        "trees": trees,
        "tree_info": model.numbers("tree_info", np.int32),
        "num_parallel_tree": param.integer("num_parallel_tree", "1"),
    }


def _tree(tree: _Fields) -> Tree:
    leaf_vector = tree.obj("tree_param").integer("size_leaf_vector", "1")
    if leaf_vector > 1:
        raise tree.fail("tree_param", "has vector leaves (multi_strategy=multi_output_tree), not served here")
    left = tree.numbers("left_children", np.int32)
    n = len(left)
    floats = {key: tree.numbers(key, np.float32, np.zeros(n, np.float32)) for key in _TREE_FLOATS}
    split_type = tree.numbers("split_type", np.uint8, np.zeros(n, np.uint8))
    nodes = tree.numbers("categories_nodes", np.int32, np.zeros(0, np.int32))
    if split_type.any() or len(nodes):
        categorical_nodes, categories = _categories(tree, nodes, split_type)
    else:
        categorical_nodes, categories = nodes, ()
    return Tree(
        left=left,
        right=tree.numbers("right_children", np.int32),
        feature=tree.numbers("split_indices", np.int32),
        threshold=floats["split_conditions"],
        default_left=tree.numbers("default_left", np.uint8),
        loss_change=floats["loss_changes"],
        sum_hessian=floats["sum_hessian"],
        base_weight=floats["base_weights"],
        categorical_nodes=categorical_nodes,
        categories=categories,
    )


def _categories(tree: _Fields, nodes: np.ndarray, split_type: np.ndarray) -> tuple[np.ndarray, tuple]:
    segments = tree.numbers("categories_segments", np.int64)
    sizes = tree.numbers("categories_sizes", np.int64)
    values = tree.numbers("categories", np.int32)
    if not (len(segments) == len(sizes) == len(nodes)):
        raise tree.fail("categories_nodes", "and its segments and sizes differ in length")
    if len(sizes) and (sizes.min() < 1 or segments.min() < 0 or (segments + sizes).max() > len(values)):
        raise tree.fail("categories_segments", "point outside the categories list")
    if len(nodes) and (nodes.min() < 0 or nodes.max() >= len(split_type) or not split_type[nodes].all()):
        raise tree.fail("categories_nodes", "do not match split_type")
    if int(split_type.astype(bool).sum()) != len(nodes):
        raise tree.fail("split_type", "marks categorical nodes that have no categories")
    return nodes, tuple(values[s : s + n] for s, n in zip(segments.tolist(), sizes.tolist(), strict=True))


def document_from_forest(forest: Forest) -> dict[str, Any]:
    """The model document (XGBoost's schema, typed arrays) that the installed XGBoost loads."""
    config = {**_REQUIRED_BLOCKS.get(forest.objective, {}), **forest.objective_config}
    if forest.objective.startswith("multi:"):
        config["softmax_multiclass_param"] = {"num_class": str(forest.num_class)}
    learner: dict[str, Any] = {
        "attributes": forest.attributes,
        "feature_names": list(forest.feature_names),
        "feature_types": list(forest.feature_types),
        "gradient_booster": _booster(forest),
        "learner_model_param": {
            "base_score": "[" + ",".join(_float(v) for v in forest.base_score) + "]",
            "boost_from_average": "0",
            "num_class": str(forest.num_class),
            "num_feature": str(forest.num_feature),
            "num_target": "1",
        },
        # reg:linear is reg:squarederror under its old name, which XGBoost 3 warns about on every load.
        "objective": {"name": _RENAMED.get(forest.objective, forest.objective), **config},
    }
    return {"learner": learner, "version": [2, 1, 0]}


def _float(value: np.float32) -> str:
    # repr of the float32 as a double: the shortest text that parses back to exactly this float32.
    return repr(float(value)) if np.isfinite(value) else str(float(value))


def _booster(forest: Forest) -> dict[str, Any]:
    if forest.booster == "gblinear":
        return {"name": "gblinear", "model": {"weights": forest.linear_weights}}
    trees = [_tree_document(i, tree, forest.num_feature) for i, tree in enumerate(forest.trees)]
    model = {
        "gbtree_model_param": {
            "num_parallel_tree": str(forest.num_parallel_tree),
            "num_trees": str(len(trees)),
        },
        "tree_info": forest.tree_info.tolist(),
        "trees": trees,
    }
    gbtree = {"name": "gbtree", "model": model}
    if forest.booster == "dart":
        return {"name": "dart", "gbtree": gbtree, "weight_drop": forest.weight_drop.tolist()}
    return gbtree


def _tree_document(index: int, tree: Tree, num_feature: int) -> dict[str, Any]:
    n = tree.num_nodes
    parents = np.full(n, 2147483647, dtype=np.int32)
    inner = np.flatnonzero(tree.left != -1)
    parents[tree.left[inner]] = inner
    parents[tree.right[inner]] = inner
    split_type = np.zeros(n, dtype=np.uint8)
    if tree.categories:
        split_type[tree.categorical_nodes] = 1
        sizes = np.array([len(c) for c in tree.categories], dtype=np.int64)
        categories = np.concatenate(tree.categories).astype(np.int32)
        segments = (np.cumsum(sizes) - sizes).astype(np.int64)
    else:  # the common case, without the concatenation and sums of nothing
        sizes = segments = _NO_INT64
        categories = _NO_INT32
    return {
        "base_weights": tree.base_weight,
        "categories": categories,
        "categories_nodes": tree.categorical_nodes.astype(np.int32, copy=False),
        "categories_segments": segments,
        "categories_sizes": sizes,
        "default_left": tree.default_left.astype(np.uint8, copy=False),
        "id": index,
        "left_children": tree.left,
        "loss_changes": tree.loss_change,
        "parents": parents,
        "right_children": tree.right,
        "split_conditions": tree.threshold,
        "split_indices": tree.feature,
        "split_type": split_type,
        "sum_hessian": tree.sum_hessian,
        "tree_param": {
            "num_deleted": "0",
            "num_feature": str(num_feature),
            "num_nodes": str(n),
            "size_leaf_vector": "1",
        },  # fmt: skip
    }


_NO_INT32 = np.zeros(0, np.int32)
_NO_INT64 = np.zeros(0, np.int64)
