"""One validated description of an XGBoost model, whichever format it was read from.

Every format reader (handler/formats/) produces a Forest; XGBoost's Booster, the tree walker and the
generated code are all made from one. `build` checks everything native code would trust: child
indices in range, every tree a tree (no node with two parents, no cycle, no path back to the root),
split features below num_feature, category sets bounded, sizes within ModelLimits. After `build`, a
model cannot make libxgboost read out of bounds or allocate without bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from handler.errors import ModelLoadError

BOOSTERS = ("gbtree", "dart", "gblinear")
# Objectives whose output is a class (or a row of class probabilities) from num_class groups of trees.
MULTICLASS = ("multi:softmax", "multi:softprob")


@dataclass(frozen=True)
class ModelLimits:
    """Bounds on what one model may declare; each is an `mme serve` flag (see serve/config.py)."""

    max_trees: int = 100_000
    max_nodes: int = 20_000_000  # over all trees
    max_features: int = 1_000_000
    max_classes: int = 10_000
    max_category: int = 1 << 20  # XGBoost allocates a bit per category up to the largest one named
    max_depth: int = 4096
    max_model_bytes: int = 1 << 30  # the model file itself


@dataclass(frozen=True)
class Tree:
    """One tree as XGBoost stores it: node i is a leaf when left[i] == -1; a leaf's value is threshold[i]."""

    left: np.ndarray  # int32
    right: np.ndarray  # int32
    feature: np.ndarray  # int32; 0 at leaves
    threshold: np.ndarray  # float32: split condition, or the leaf's value
    default_left: np.ndarray  # uint8: where a missing value goes
    # Node statistics: unused by prediction, kept so a converted model keeps its gain/cover importance.
    loss_change: np.ndarray  # float32
    sum_hessian: np.ndarray  # float32
    base_weight: np.ndarray  # float32
    # Categorical splits: per node, the sorted categories that go right (XGBoost's JSON layout).
    categorical_nodes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    categories: tuple[np.ndarray, ...] = ()

    @property
    def num_nodes(self) -> int:
        return len(self.left)


@dataclass(frozen=True)
class Forest:
    booster: str  # one of BOOSTERS
    objective: str
    objective_config: dict  # the objective's parameter blocks as XGBoost's JSON holds them, name excluded
    base_score: np.ndarray  # float32, in probability space as XGBoost >= 1.0 stores it; 1 or per class
    num_feature: int
    num_class: int  # 0 unless multi-class
    trees: tuple[Tree, ...] = ()
    tree_info: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # output group per tree
    num_parallel_tree: int = 1
    weight_drop: np.ndarray | None = None  # dart: each tree's weight
    linear_weights: np.ndarray | None = None  # gblinear: (num_feature + 1) x groups, bias last
    feature_names: tuple[str, ...] = ()
    feature_types: tuple[str, ...] = ()
    attributes: dict[str, str] = field(default_factory=dict)
    source_format: str = ""  # for messages: "legacy binary (XGBoost 0.90)", "UBJSON", ...
    version: tuple[int, int] = (3, 0)  # (major, minor) of the XGBoost that wrote it; 0.90 reads as (0, 0)

    @property
    def num_groups(self) -> int:
        return max(self.num_class, 1)

    @property
    def num_nodes(self) -> int:
        return sum(tree.num_nodes for tree in self.trees)

    @property
    def leaves_first(self) -> bool:
        """Whether the XGBoost that wrote (and, in its SageMaker image, served) this model added up the
        leaves first and base_score after: gbtree before 1.3, dart before 1.4 (checked on each version's
        own predictions). Later versions start the float32 sum at base_score, a last-bit difference."""
        if self.booster == "gblinear":
            return False
        return self.version < ((1, 4) if self.booster == "dart" else (1, 3))

    def base_margin(self) -> np.ndarray:
        """base_score as the margin XGBoost adds (float32), through the objective's link."""
        to_margin = _LINKS.get(self.objective, (None, 0.0))[0]
        if to_margin is None:
            return self.base_score
        with np.errstate(all="ignore"):
            return to_margin(self.base_score.astype(np.float64)).astype(np.float32)

    def base_added_last(self) -> Forest:
        """The same predictions summed as XGBoost < 1.3 summed them (leaves_first), for any XGBoost: the
        base margin moves into one more one-leaf tree per output group, which today's XGBoost adds last,
        and base_score becomes the value whose margin is exactly 0."""
        margins = self.base_margin()
        groups = self.num_groups
        leaves = tuple(_leaf(margins[g % len(margins)]) for g in range(groups))
        zero = np.full(len(self.base_score), _LINKS.get(self.objective, (None, 0.0))[1], np.float32)
        drop = (
            None
            if self.weight_drop is None
            else np.concatenate([self.weight_drop, np.ones(groups, np.float32)])
        )
        return replace(
            self,
            trees=self.trees + leaves,
            tree_info=np.concatenate([self.tree_info, np.arange(groups, dtype=np.int32)]),
            weight_drop=drop,
            base_score=zero,
            version=(3, 0),
        )

    def weights_applied(self) -> Forest:
        """A dart model as the gbtree it predicts like: each tree's weight multiplied into its leaves and
        rounded to float32, as XGBoost 0.90-2.x did per prediction (3.x rounds elsewhere)."""
        if self.weight_drop is None:
            return self
        trees = tuple(
            replace(
                tree,
                threshold=np.where(tree.left == -1, tree.threshold * weight, tree.threshold).astype(
                    np.float32
                ),
            )
            for tree, weight in zip(self.trees, self.weight_drop.astype(np.float32), strict=True)
        )
        return replace(self, booster="gbtree", trees=trees, weight_drop=None)

    def limited(self, ntree_limit: int) -> Forest:
        """The model XGBoost < 1.4 predicted with `ntree_limit`: its first ntree_limit x groups trees.

        ntree_limit counts boosting rounds times num_parallel_tree, as best_ntree_limit does; 0 or a
        limit past the end means every tree, as in XGBoost.
        """
        keep = ntree_limit * self.num_groups
        if self.booster == "gblinear" or ntree_limit <= 0 or keep >= len(self.trees):
            return self
        drop = None if self.weight_drop is None else self.weight_drop[:keep]
        return replace(self, trees=self.trees[:keep], tree_info=self.tree_info[:keep], weight_drop=drop)


def _leaf(value: np.float32) -> Tree:
    def one(dtype, fill=0):
        return np.full(1, fill, dtype)

    return Tree(one(np.int32, -1), one(np.int32, -1), one(np.int32), one(np.float32, value), one(np.uint8),
                one(np.float32), one(np.float32), one(np.float32))  # fmt: skip


# Objective -> (probability -> margin, the base_score whose margin is 0), as XGBoost >= 1.0 links them;
# every other objective's margin is its base_score.
_LOGIT = (lambda p: -np.log(1 / p - 1), 0.5)
_LOG = (np.log, 1.0)
_LINKS = {
    "binary:logistic": _LOGIT, "reg:logistic": _LOGIT,
    "count:poisson": _LOG, "reg:gamma": _LOG, "reg:tweedie": _LOG, "survival:cox": _LOG, "survival:aft": _LOG,
}  # fmt: skip


def build(forest: Forest, limits: ModelLimits) -> Forest:
    """`forest` checked against everything native code trusts, with unreachable (deleted) nodes dropped;
    ModelLoadError naming the first problem."""
    where = forest.source_format or "model"

    def bad(problem: str) -> ModelLoadError:
        return ModelLoadError(f"invalid {where}: {problem}")

    if forest.booster not in BOOSTERS:
        raise bad(f"booster {forest.booster!r} is not one of {', '.join(BOOSTERS)}")
    if not forest.objective or len(forest.objective) > 64:
        raise bad("no objective")
    if not 0 < forest.num_feature <= limits.max_features:
        raise bad(f"num_feature {forest.num_feature} is outside 1..{limits.max_features} (--max-features)")
    if forest.num_class < 0 or forest.num_class == 1 or forest.num_class > limits.max_classes:
        raise bad(f"num_class {forest.num_class} is outside 0 or 2..{limits.max_classes}")
    if forest.objective in MULTICLASS and forest.num_class < 2:
        raise bad(f"{forest.objective} needs num_class >= 2")
    if len(forest.base_score) not in (1, forest.num_groups) or forest.base_score.dtype != np.float32:
        raise bad(f"base_score has {len(forest.base_score)} values for {forest.num_groups} outputs")
    if forest.booster == "gblinear":
        return _build_linear(forest, bad)
    if not 0 < forest.num_parallel_tree <= limits.max_trees:
        raise bad(f"num_parallel_tree {forest.num_parallel_tree} is outside 1..{limits.max_trees}")
    if len(forest.trees) > limits.max_trees:
        raise bad(f"{len(forest.trees)} trees, more than {limits.max_trees} (--max-trees)")
    if forest.num_nodes > limits.max_nodes:
        raise bad(f"{forest.num_nodes} nodes, more than {limits.max_nodes} (--max-nodes)")
    info = forest.tree_info
    if len(info) != len(forest.trees) or (
        len(info) and not (info.min() >= 0 and info.max() < forest.num_groups)
    ):
        raise bad(
            f"tree_info does not give each of {len(forest.trees)} trees a group below {forest.num_groups}"
        )
    weights = forest.weight_drop
    if forest.booster == "dart" and (weights is None or len(weights) != len(forest.trees)):
        raise bad("a dart model needs one weight_drop value per tree")
    trees = _all_sound(forest.trees, forest.num_feature, limits.max_depth)
    if trees is None:  # something to report or to drop: tree by tree, to say which
        trees = tuple(
            _checked_tree(tree, i, forest.num_feature, limits, bad) for i, tree in enumerate(forest.trees)
        )
    return replace(forest, trees=trees, tree_info=info.astype(np.int32))


def _all_sound(trees: tuple[Tree, ...], num_feature: int, max_depth: int) -> tuple[Tree, ...] | None:
    """The trees (leaf features zeroed) if every check _checked_tree makes passes for all of them at
    once, every node reached and no categorical split; else None. The same checks on the concatenated
    arrays cost a few dozen numpy calls for the whole model instead of per tree."""
    if not trees:
        return ()
    sizes = np.array([tree.num_nodes for tree in trees], dtype=np.int64)
    for tree in trees:
        n = tree.num_nodes
        if n == 0 or len(tree.categorical_nodes) or any(len(a) != n for a in (
                tree.right, tree.feature, tree.threshold, tree.default_left, tree.loss_change,
                tree.sum_hessian, tree.base_weight)):  # fmt: skip
            return None
    starts = np.cumsum(sizes) - sizes
    start_of, size_of = np.repeat(starts, sizes), np.repeat(sizes, sizes)
    left = np.concatenate([tree.left for tree in trees]).astype(np.int64)
    right = np.concatenate([tree.right for tree in trees]).astype(np.int64)
    feature = np.concatenate([tree.feature for tree in trees]).astype(np.int64)
    leaf = left == -1
    if not np.array_equal(leaf, right == -1):
        return None
    inner = ~leaf
    local = np.concatenate([left[inner], right[inner]])
    limit = np.concatenate([size_of[inner], size_of[inner]])
    if len(local) and (local.min() < 1 or np.any(local >= limit)):
        return None
    children = local + np.concatenate([start_of[inner], start_of[inner]])
    if len(children) and np.bincount(children, minlength=len(left)).max() > 1:
        return None
    if inner.any() and not (feature[inner].min() >= 0 and feature[inner].max() < num_feature):
        return None
    reached = _reachable(left + start_of, right + start_of, leaf, max_depth, starts)
    if reached is None or not reached.all():
        return None
    feature = np.where(leaf, 0, feature).astype(np.int32)
    return tuple(
        replace(tree, feature=feature[start : start + tree.num_nodes])
        for tree, start in zip(trees, starts.tolist(), strict=True)
    )


def _build_linear(forest: Forest, bad) -> Forest:
    weights = forest.linear_weights
    expected = (forest.num_feature + 1) * forest.num_groups
    if weights is None or len(weights) != expected:
        got = 0 if weights is None else len(weights)
        raise bad(f"gblinear has {got} weights; (num_feature + 1) x groups = {expected}")
    return replace(
        forest, trees=(), tree_info=np.zeros(0, np.int32), linear_weights=weights.astype(np.float32)
    )


def _checked_tree(tree: Tree, index: int, num_feature: int, limits: ModelLimits, bad) -> Tree:
    n = tree.num_nodes
    arrays = (tree.right, tree.feature, tree.threshold, tree.default_left, tree.loss_change,
              tree.sum_hessian, tree.base_weight)  # fmt: skip
    if n == 0 or any(len(a) != n for a in arrays):
        raise bad(f"tree {index} has node arrays of different lengths (or none)")
    left, right = tree.left.astype(np.int64), tree.right.astype(np.int64)
    leaf = left == -1
    if not np.array_equal(leaf, right == -1):
        raise bad(f"tree {index} has a node with only one child")
    inner = ~leaf
    children = np.concatenate([left[inner], right[inner]])
    if len(children) and (children.min() < 1 or children.max() >= n):
        raise bad(f"tree {index} has a child index outside 1..{n - 1}")
    if len(children) and np.bincount(children, minlength=n).max() > 1:
        raise bad(f"tree {index} is not a tree: a node has two parents")
    features = tree.feature.astype(np.int64)
    if inner.any() and not (features[inner].min() >= 0 and features[inner].max() < num_feature):
        raise bad(f"tree {index} splits on feature {int(features[inner].max())}, not below {num_feature}")
    reached = _reachable(left, right, leaf, limits.max_depth, np.zeros(1, np.int64))
    if reached is None:
        raise bad(f"tree {index} is deeper than {limits.max_depth}")
    categorical = _checked_categories(tree, index, n, inner, limits, bad)
    if reached.all():
        return replace(tree, feature=np.where(leaf, 0, features).astype(np.int32), **categorical)
    return _compacted(tree, reached, leaf, categorical)


def _reachable(
    left: np.ndarray, right: np.ndarray, leaf: np.ndarray, max_depth: int, roots: np.ndarray
) -> np.ndarray | None:
    """Which nodes a walk from the roots reaches (a level at a time); None if deeper than max_depth.

    With no node of two parents and none pointing at the root, a cycle can only sit apart from the root,
    so what this does not reach is dead (XGBoost's deleted nodes, or junk) and is dropped.
    """
    reached = np.zeros(len(left), dtype=bool)
    level = roots
    for _ in range(max_depth + 1):
        reached[level] = True
        level = level[~leaf[level]]
        if not len(level):
            return reached
        level = np.concatenate([left[level], right[level]])
    return None


def _checked_categories(tree: Tree, index: int, n: int, inner: np.ndarray, limits: ModelLimits, bad) -> dict:
    nodes = tree.categorical_nodes.astype(np.int64)
    if len(nodes) != len(tree.categories):
        raise bad(f"tree {index} lists {len(nodes)} categorical nodes but {len(tree.categories)} sets")
    if not len(nodes):
        return {}
    if nodes.min() < 0 or nodes.max() >= n or not inner[nodes].all() or len(np.unique(nodes)) != len(nodes):
        raise bad(f"tree {index} names a categorical split that is not one of its split nodes")
    sets = []
    for values in tree.categories:
        values = np.asarray(values, dtype=np.int64)
        if not len(values) or values.min() < 0 or values.max() >= limits.max_category:
            raise bad(f"tree {index} has a category set empty or outside 0..{limits.max_category - 1}")
        sets.append(np.unique(values).astype(np.int32))
    return {"categorical_nodes": nodes.astype(np.int32), "categories": tuple(sets)}


def _compacted(tree: Tree, keep: np.ndarray, leaf: np.ndarray, categorical: dict) -> Tree:
    """The tree without the nodes `keep` leaves out, renumbered in their order."""
    new_index = np.cumsum(keep) - 1

    def children(side: np.ndarray) -> np.ndarray:
        return np.where(leaf, -1, new_index[np.where(leaf, 0, side)])[keep].astype(np.int32)

    nodes = categorical.get("categorical_nodes", tree.categorical_nodes)
    kept = keep[nodes]
    sets = tuple(
        values for values, alive in zip(categorical.get("categories", ()), kept, strict=True) if alive
    )
    return replace(
        tree,
        left=children(tree.left.astype(np.int64)),
        right=children(tree.right.astype(np.int64)),
        feature=np.where(leaf, 0, tree.feature)[keep].astype(np.int32),
        threshold=tree.threshold[keep],
        default_left=tree.default_left[keep],
        loss_change=tree.loss_change[keep],
        sum_hessian=tree.sum_hessian[keep],
        base_weight=tree.base_weight[keep],
        categorical_nodes=new_index[nodes[kept]].astype(np.int32),
        categories=sets,
    )


def leaf_indices(forest: Forest, rows: np.ndarray) -> np.ndarray:
    """Per row and tree, the leaf a row reaches, walked here without XGBoost (numeric splits; a
    categorical node counts as going left): the reference `mme convert --check` holds XGBoost to."""
    out = np.zeros((len(rows), len(forest.trees)), dtype=np.int64)
    everyone = np.arange(len(rows))
    for t, tree in enumerate(forest.trees):
        node = np.zeros(len(rows), dtype=np.int64)
        for _ in range(len(tree.left)):
            inner = tree.left[node] != -1
            if not inner.any():
                break
            value = rows[everyone, tree.feature[node]]
            left = np.where(np.isnan(value), tree.default_left[node] != 0, value < tree.threshold[node])
            step = np.where(left, tree.left[node], tree.right[node])
            node = np.where(inner, step, node)
        out[:, t] = node
    return out


def check_rows(forest: Forest, count: int = 64, seed: int = 0) -> np.ndarray:
    """Rows that reach both sides of the model's thresholds, with missing values: for checking a
    compiled or converted form against XGBoost."""
    rng = np.random.default_rng(seed)
    splits = [tree.threshold[tree.left != -1] for tree in forest.trees]
    values = np.concatenate([*splits, np.zeros(1, np.float32)])
    rows = rng.choice(values, size=(count, forest.num_feature)).astype(np.float32)
    rows += rng.choice(np.array([-1e-3, 0, 1e-3], dtype=np.float32), size=rows.shape) * np.abs(rows)
    rows[rng.random(rows.shape) < 0.1] = np.nan
    return rows
