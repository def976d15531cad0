"""What the server calls: load_model(model_dir) once, then LoadedModel.invoke per request.

Each of sagemaker-inference-toolkit's four functions has a default (model_fn, input_fn and predict_fn in
handler/xgboost.py; output_fn is handler/outputs.respond, which also answers selectable inference
content) unless the model's code/inference.py defines it. Whether a function takes `context` is decided
once, at load time, as the toolkit does: a parameter named `context`, or one positional parameter more
than the usual signature.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from handler import codecs, compiled, outputs, treewalk, user_code
from handler import xgboost as defaults
from handler.errors import HandlerError, ModelLoadError
from handler.forest import Forest, ModelLimits

# A user's input_fn/output_fn expect a concrete media type where the request named none, as with the toolkit.
DEFAULT_CONTENT_TYPE = "text/csv"
DEFAULT_ACCEPT = "application/json"

# The usual signatures, without context.
_PARAMETERS = {
    "model_fn": "model_dir",
    "input_fn": "input_data, content_type",
    "predict_fn": "data, model",
    "output_fn": "prediction, accept",
}

Step = Callable[[Any, Any, "Context"], Any]
# Content types the default input_fn reads as CSV without parameters: a one-row body may take the fast path.
_PLAIN_CSV = (None, "text/csv")


class ModelFilesGone(HandlerError):
    """A walked model's file, needed for its Booster, is no longer the one it was loaded from."""

    status = 503  # the server's own state: reloading the model (a retry after revalidation) mends it


@dataclass
class Context:
    """Passed to user functions that accept a `context` parameter."""

    custom_attributes: str | None
    target_model: str | None


class LoadedModel:
    __slots__ = (
        "size_bytes",
        "outputs",
        "_model",
        "_input",
        "_predict",
        "_output",
        "_walking",
        "__weakref__",
    )

    def __init__(
        self,
        model: Any,
        input_step: Step,
        predict_step: Step,
        output_step: Step,
        size_bytes: int,
        walking: WalkingPredict | None = None,
        model_outputs: outputs.ModelOutputs | None = None,
    ):
        self.size_bytes = size_bytes  # estimated resident memory of this model
        self.outputs = model_outputs  # set when input_fn is the default: rows may be predicted directly
        self._model = model
        self._input = input_step
        self._predict = predict_step
        self._output = output_step
        self._walking = walking  # set when both input_fn and predict_fn are the defaults

    def invoke(
        self, body: bytes, content_type: str | None, accept: str | None, context: Context
    ) -> tuple[bytes, str]:
        """input_fn -> predict_fn -> output_fn; returns (response body, response content type).

        Raises HandlerError subclasses; their .status is the HTTP status to answer with.
        """
        walking = self._walking
        if walking is not None and content_type in _PLAIN_CSV:
            prediction = walking.csv_row(body)
            if prediction is not None:
                return self._output(prediction, accept, context)
        data = self._input(body, content_type, context)
        prediction = self._predict(data, self._model, context)
        return self._output(prediction, accept, context)

    def predict_rows(self, rows: np.ndarray, context: Context) -> np.ndarray:
        """predict_fn on rows as the default input_fn reads them (a V2 protocol request's tensor)."""
        return self._predict(rows, self._model, context)

    def booster(self) -> Any:
        """The model as its predict_fn sees it: for a walked model, its Booster, built now if need be."""
        if self._model is None and isinstance(self._predict, WalkingPredict):
            return self._predict.booster()
        return self._model

    def on_growth(self, reserve: Callable[[int], bool]) -> None:
        """Have the model ask `reserve(nbytes)` before taking memory beyond size_bytes (a hot model's
        generated code); it goes without when the answer is no."""
        if isinstance(self._predict, WalkingPredict):
            self._predict.reserve = reserve


def load_model(
    model_dir: Path,
    *,
    allow_pickle: bool = False,
    allow_user_code: bool = False,
    policy: outputs.Policy = outputs.Policy(),  # noqa: B008 - frozen, so one shared default is safe
    limits: ModelLimits = defaults.DEFAULT_LIMITS,
    ensemble: bool = True,
    persist: bool = False,
    compiler: Compiler | None = None,
    compiled_dir: Path | None = None,
) -> LoadedModel:
    """The model in model_dir, with its handler functions bound; ModelLoadError saying why it cannot load.

    With `persist`, a folder the server owns (the local endpoint's disk cache, one per artifact version),
    the model's compiled form is kept in it and read back by later loads (see handler/compiled.py); a
    `compiler` then writes it when it is missing (in a process of its own: see compile_model). With
    `compiled_dir`, a folder the server owns, the compiled form is kept there
    instead, whatever `persist` says: how the workers of a multi-model server share a model's form.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(f"model folder {model_dir} does not exist")
    user = user_code.load_user_functions(model_dir, allowed=allow_user_code)
    walking = None
    if "model_fn" in user:
        model = _user_model(user["model_fn"], model_dir)
        if isinstance(model, xgb.Booster):  # only the Booster can say its width and size
            n_features = model.num_features()
            model.set_param({"nthread": 1})
            ubjson_size = _on_a_short_lived_thread(lambda: len(model.save_raw("ubj")))
            size_bytes = defaults.size_bytes(ubjson_size)
            if "predict_fn" not in user:
                size_bytes += treewalk.estimated_nbytes(ubjson_size)  # counted now: the walker may come later
                walking = WalkingPredict(_OnDemand(lambda: model, 0, model), n_features)
        else:
            # A user's own model type: its width and size are unknowable, so judge by its files.
            n_features = None
            size_bytes = sum(path.stat().st_size for path in model_dir.rglob("*") if path.is_file())
    else:
        files = _model_files(model_dir, ensemble)
        read = functools.partial(defaults.read_forest, allow_pickle=allow_pickle, limits=limits)
        if len(files) == 1 and "predict_fn" not in user:
            store = compiled_dir or (model_dir if persist else None)
            served = _compiled_model(store, files[0], allow_pickle, limits, compiler)
            model, walking, n_features, size_bytes, described = served
        else:
            forests = [read(path) for path in files]
            raws = [defaults.to_ubjson(one) for one in forests]
            boosters = [defaults.booster_from_ubjson(raw) for raw in raws]
            model = boosters[0] if len(boosters) == 1 else boosters
            n_features = boosters[0].num_features()
            size_bytes = defaults.size_bytes(sum(len(raw) for raw in raws))
            described = forests[0]

    # Each step takes (first, second, context), bound here once so invoke does no per-request dispatch.
    if "input_fn" in user:
        user_input = _user_step("input_fn", user["input_fn"])
        input_step = lambda body, content_type, context: user_input(  # noqa: E731
            body, content_type or DEFAULT_CONTENT_TYPE, context
        )
    else:
        input_step = _DefaultInput(n_features)
    if "predict_fn" in user:
        predict_step = _user_step("predict_fn", user["predict_fn"])
    elif walking is not None:
        predict_step = walking
    elif isinstance(model, list):  # an ensemble: AWS's image's mean or vote, with no walker
        predict_step = _ensemble_step(forests, boosters)
    else:
        predict_step = _plain_predict
    info = outputs.describe(model if "model_fn" in user else described, n_features, model_dir, policy)
    if "output_fn" in user:
        output_step = _user_output_step(_user_step("output_fn", user["output_fn"]), policy.default_accept)
    else:
        output_step = _DefaultOutput(info)
    fast = walking if "input_fn" not in user else None
    default_input = None if "input_fn" in user else info
    return LoadedModel(model, input_step, predict_step, output_step, size_bytes, fast, default_input)


# The default steps as slotted objects rather than closures: one object a model each, where a closure
# is a function and its cells, and every object a resident model holds is one more for each collection of
# the cyclic collector to walk.
class _DefaultInput:
    __slots__ = ("_n_features",)

    def __init__(self, n_features: int | None) -> None:
        self._n_features = n_features

    def __call__(self, body: bytes, content_type: str | None, context: Context) -> Any:
        return defaults.input_fn(body, content_type, self._n_features)


class _DefaultOutput:
    __slots__ = ("_info",)

    def __init__(self, info: outputs.ModelOutputs) -> None:
        self._info = info

    def __call__(self, prediction: Any, accept: str | None, context: Context) -> tuple[bytes, str]:
        return outputs.respond(prediction, accept, context.custom_attributes, self._info)


def load_compiled(
    model_dir: Path,
    *,
    allow_pickle: bool,
    limits: ModelLimits,
    ensemble: bool,
    names: Sequence[str] | None = None,
) -> LoadedModel | None:
    """load_model(model_dir, persist=True) when that is only a read of the folder's current compiled form
    of a walked model: a file mapped and hashed, no XGBoost, no compiling, no user code, so cheap enough
    for the event loop. None when the load needs more (a load thread then does it all, and says what
    is wrong, if anything is).

    For folders that nothing changes once unpacked, the local endpoint's disk cache: one listing says
    the folder holds one model file and neither code/ nor an inference_output file, which a full load
    would read (every re-miss costs those few lookups less). `names` is that listing when the caller
    remembers it (reading the directory was a third of the re-miss in a W5 profile); read otherwise."""
    try:
        if names is None:
            names = os.listdir(model_dir)
        chosen = defaults.find_artifacts(names, model_dir.name, ensemble=ensemble)
    except (OSError, ModelLoadError):
        return None
    if len(chosen) != 1 or user_code.CODE_FOLDER in names or outputs.MODEL_FILE in names:
        return None
    model_file = model_dir / chosen[0]
    try:
        wanted = compiled.key(model_file, allow_pickle=allow_pickle, limits=limits)
    except OSError:
        return None
    form = compiled.read(model_dir, wanted)
    if form is None or form.walker is None:
        return None
    walking = _walking(form, model_dir, model_file, wanted, allow_pickle, limits)
    info = outputs.ModelOutputs(form.objective, form.num_class, form.width)
    size = _WALKED_MODEL_OVERHEAD + form.walker.nbytes
    return LoadedModel(None, _DefaultInput(form.width), walking, _DefaultOutput(info), size, walking, info)


# What a model served by its walker takes besides the walker's arrays: the Python objects of the model,
# its steps and its walk (measured with psutil over 200 loads, see tests/test_handler.py).
_WALKED_MODEL_OVERHEAD = 6 * 1024


def _model_files(model_dir: Path, ensemble: bool) -> list[Path]:
    try:
        # scandir: the directory entries' own types, not a stat per file, on every re-miss's path.
        with os.scandir(model_dir) as entries:
            names = [entry.name for entry in entries if entry.is_file()]
    except OSError as exc:
        raise ModelLoadError(f"cannot read model folder {model_dir}: {exc.strerror}") from None
    chosen = defaults.find_artifacts(names, f"model folder {model_dir.name!r}", ensemble=ensemble)
    return [model_dir / name for name in chosen]


# Compiles (folder, model file) as compile_model does, elsewhere: the caller waits for it.
Compiler = Callable[[Path, Path], None]


def compile_model(folder: Path, model_file: Path, *, allow_pickle: bool, limits: ModelLimits) -> None:
    """Write the compiled form of `model_file` into `folder`, as load_model(persist=True) would, without
    running the folder's code: what a compiler process does for the server.

    The same bytes compiled with the same options make the same form, so a file seen before (a copy or
    a hard link under another name) gets the form it got then, without being compiled again.
    """
    wanted = compiled.key(model_file, allow_pickle=allow_pickle, limits=limits)
    try:
        seen = (hashlib.sha256(model_file.read_bytes()).digest(), allow_pickle, limits)
    except OSError:
        seen = None  # read_forest says why, below
    form = _SEEN.get(seen) if seen is not None else None
    if form is None:
        read = functools.partial(defaults.read_forest, allow_pickle=allow_pickle, limits=limits)
        form = _compile(model_file, read)[0]
        if seen is not None:
            _remember(seen, form)
    else:
        _SEEN.move_to_end(seen)
    if compiled.key(model_file, allow_pickle=allow_pickle, limits=limits) == wanted:  # unchanged meanwhile
        compiled.write(folder, wanted, form)


# Forms compiled by this process by the content they came from, most recently used last, to a bound;
# the running total keeps a compile's bookkeeping constant however many forms are remembered.
_SEEN: OrderedDict[tuple[bytes, bool, ModelLimits], compiled.Compiled] = OrderedDict()
_SEEN_BYTES = 64 << 20
_seen_total = 0


def _remember(seen: tuple[bytes, bool, ModelLimits], form: compiled.Compiled) -> None:
    global _seen_total
    _SEEN[seen] = form  # only ever a key not held: compile_model reuses a held one
    _seen_total += _form_bytes(form)
    while _seen_total > _SEEN_BYTES and len(_SEEN) > 1:
        _seen_total -= _form_bytes(_SEEN.popitem(last=False)[1])


def _form_bytes(form: compiled.Compiled) -> int:
    return (form.walker.nbytes if form.walker is not None else 0) + len(form.ubjson) + len(form.code)


def _compile(model_file: Path, read: Callable[[Path], Forest]) -> tuple[compiled.Compiled, xgb.Booster]:
    """The compiled form of a model file, and the Booster that checked its walker against XGBoost."""
    forest = read(model_file)
    raw = defaults.to_ubjson(forest)
    booster = defaults.booster_from_ubjson(raw)
    walker = treewalk.TreeWalker.compile(forest, booster.inplace_predict)
    kept = b"" if walker else raw
    return compiled.Compiled(
        forest.num_feature, forest.objective, forest.num_class, len(raw), walker, ubjson=kept
    ), booster


def _compiled_model(
    folder: Path | None, model_file: Path, allow_pickle: bool, limits: ModelLimits, compiler: Compiler | None
) -> tuple[xgb.Booster | None, WalkingPredict | None, int, int, Forest]:
    """(Booster, walking step, width, size, outline) of a one-file model, from its compiled form: read
    back from `folder` when persisted there for this very file, else compiled (and persisted there, if
    there is a `folder`). The outline is a Forest of no trees with the model's objective and classes,
    for outputs.describe."""
    wanted = compiled.key(model_file, allow_pickle=allow_pickle, limits=limits)
    form = compiled.read(folder, wanted) if folder is not None else None
    if form is None and folder is not None and compiler is not None:
        compiler(folder, model_file)
        form = compiled.read(folder, wanted)  # None if the compiler could not write it: compiled here
    booster = None
    if form is None:
        read = functools.partial(defaults.read_forest, allow_pickle=allow_pickle, limits=limits)
        form, booster = _compile(model_file, read)
        if folder is not None and compiled.write(folder, wanted, form):
            # Served from the file, as every later load is: its pages are the copy other processes share.
            form = compiled.read(folder, wanted) or form
    outline = Forest("gbtree", form.objective, {}, np.zeros(1, np.float32), form.width, form.num_class)
    if form.walker is None:  # XGBoost serves every request: its Booster is the model
        booster = booster or defaults.booster_from_ubjson(form.ubjson)
        return booster, None, form.width, defaults.size_bytes(form.ubjson_size), outline

    walking = _walking(form, folder, model_file, wanted, allow_pickle, limits)
    return None, walking, form.width, _WALKED_MODEL_OVERHEAD + form.walker.nbytes, outline


def _walking(
    form: compiled.Compiled,
    folder: Path | None,
    model_file: Path,
    wanted: bytes,
    allow_pickle: bool,
    limits: ModelLimits,
) -> WalkingPredict:
    """The predict step of a model its compiled form's walker serves. The Booster that checked the walker
    is dropped by the caller, on the thread that used it (see _on_a_short_lived_thread): requests that
    need XGBoost build their own from `model_file` when they come."""
    store = _CodeStore(folder, wanted, form) if folder is not None else None
    build = _Rebuild(model_file, wanted, allow_pickle, limits)
    return WalkingPredict(
        _OnDemand(build, defaults.size_bytes(form.ubjson_size)), form.width, form.walker, store
    )


class _Rebuild:
    """A walked model's Booster from its file, once a check shows the file is still the one compiled."""

    __slots__ = ("_model_file", "_wanted", "_allow_pickle", "_limits")

    def __init__(self, model_file: Path, wanted: bytes, allow_pickle: bool, limits: ModelLimits) -> None:
        self._model_file = model_file
        self._wanted = wanted
        self._allow_pickle = allow_pickle
        self._limits = limits

    def __call__(self) -> xgb.Booster:
        model_file, options = self._model_file, {"allow_pickle": self._allow_pickle, "limits": self._limits}
        try:
            current = compiled.key(model_file, **options)
        except OSError:
            current = None
        if current != self._wanted:
            raise ModelFilesGone(f"{model_file.name} changed or left the disk since the model was loaded")
        return defaults.booster_from_ubjson(defaults.to_ubjson(defaults.read_forest(model_file, **options)))


class _CodeStore:
    """A hot model's generated code in its compiled form on disk: read back by a later load of the
    same file instead of being generated (and checked against XGBoost) again."""

    __slots__ = ("_folder", "_key", "_form")

    def __init__(self, folder: Path, key: bytes, form: compiled.Compiled) -> None:
        self._folder = folder
        self._key = key
        self._form = form

    @property
    def in_hand(self) -> bool:
        """Whether the form this model was loaded from holds its code already."""
        return bool(self._form.code)

    def load(self, nodes: int) -> treewalk.TreeCode | None:
        code = self._form.code
        if not code:  # another load of the same file may have saved it since
            form = compiled.read(self._folder, self._key)
            if form is None or not form.code:
                return None
            code = form.code
        try:
            return treewalk.TreeCode.from_marshal(code, nodes)
        except (ValueError, EOFError, TypeError):
            return None

    def save(self, code: treewalk.TreeCode) -> None:
        compiled.write(self._folder, self._key, self._form.with_code(code.to_marshal()))


class _OnDemand:
    """A model's Booster, built by the first request that needs XGBoost (a batch, a DMatrix) and kept
    if the cache grants its memory; without that grant, built for that request only."""

    __slots__ = ("_build", "_booster", "_lock", "nbytes")

    def __init__(self, build: Callable[[], xgb.Booster], nbytes: int, booster: xgb.Booster | None = None):
        self._build = build
        self._booster = booster
        self._lock = threading.Lock()
        self.nbytes = nbytes

    def get(self, reserve: Callable[[int], bool] | None) -> xgb.Booster:
        booster = self._booster
        if booster is not None:
            return booster
        with self._lock:
            if self._booster is not None:
                return self._booster
            if reserve is not None and not reserve(self.nbytes):
                return self._build()
            self._booster = self._build()
            return self._booster

    def reference(self) -> treewalk.Reference:
        """XGBoost's batch prediction of the model, to check generated code against: the resident
        Booster's, or one built for the check (and freed with it, on the checking thread)."""
        return (self._booster or self._build()).inplace_predict


def _on_a_short_lived_thread(work: Callable[[], Any]) -> Any:
    """work() on a thread that ends right after.

    XGBoost keeps the last buffer each C-API call returned (a serialised model, a prediction) in a
    per-thread cache that only the thread freeing the Booster clears: done on a long-lived pool thread,
    it would double every model's memory for as long as that thread lives.
    """
    with ThreadPoolExecutor(max_workers=1) as scratch:
        return scratch.submit(work).result()


def _ensemble_step(forests: list[Forest], boosters: list[xgb.Booster]) -> Step:
    objective = forests[0].objective

    def predict(data: Any, model: Any, context: Context) -> np.ndarray:
        return defaults.combine_ensemble(
            [defaults.predict_fn(data, booster) for booster in boosters], objective
        )

    return predict


def _plain_predict(data: Any, model: Any, context: Context) -> Any:
    return defaults.predict_fn(data, model)


class _Latch:
    """threading.Event's set/is_set/wait on one bare lock, held until set: a re-miss makes two per model,
    and an Event (a Condition and its lock) costs ~20 µs to make."""

    __slots__ = ("_lock",)

    def __init__(self, *, done: bool = False) -> None:
        self._lock = threading.Lock()
        if not done:
            self._lock.acquire()

    def set(self) -> None:
        if self._lock.locked():
            self._lock.release()

    def is_set(self) -> bool:
        return not self._lock.locked()

    def wait(self, timeout: float) -> bool:
        if not self._lock.acquire(timeout=timeout):
            return False
        self._lock.release()
        return True


_DONE = _Latch(done=True)  # shared by every model loaded with its walker: nothing is left to wait for


class WalkingPredict:
    """The default predict step of a one-Booster model: a tree walker for small requests and XGBoost
    for the rest; generated code once the model is in heavy use (HOT_AFTER calls), or at once
    (STORED_AFTER calls) when its compiled form kept the code from an earlier load. A one-row CSV request
    skips numpy altogether (csv_row).

    A model read by the project's own readers comes with its walker (its compiled form); a user's
    model_fn Booster gets one at its WARM_AFTER-th call, built from XGBoost's dump. Builds run beside
    the request path on a thread of their own; the code takes several times the walker's memory, so it
    is kept only if `reserve(nbytes)` grants that memory.
    """

    WARM_AFTER = 2
    HOT_AFTER = 256
    # A model whose compiled form holds its code (it was hot before) takes it at this call: loading it
    # costs ~20 µs, and each call with it ~13 µs less (4 against 17 µs a row for a city model).
    STORED_AFTER = 4
    __slots__ = ("_booster", "_width", "_store", "_calls", "_due", "_walker", "_walk", "_walk_row",
                 "walker_built", "code_built", "reserve")  # fmt: skip

    def __init__(
        self,
        booster: _OnDemand,
        width: int,
        walker: treewalk.TreeWalker | None = None,
        store: _CodeStore | None = None,
    ) -> None:
        self._booster = booster
        self._width = width  # the model's feature count
        self._store = store  # where the generated code is kept between loads, if anywhere
        self._calls = 0
        # When the next build starts: a walker's, its code's, or (kept in its form) loading that code.
        if walker is None:
            self._due = self.WARM_AFTER
        else:
            self._due = self.STORED_AFTER if store is not None and store.in_hand else self.HOT_AFTER
        self._walker = walker
        self._walk: Callable[[np.ndarray], np.ndarray] | None = None if walker is None else walker.predict
        self._walk_row: Callable[[list[float]], np.ndarray] | None = (
            None if walker is None else walker.predict_row
        )
        self.walker_built = _DONE if walker is not None else _Latch()  # set once tried, walker or not
        self.code_built = _Latch()
        self.reserve: Callable[[int], bool] | None = None

    def __call__(self, data: Any, model: Any, context: Context) -> Any:
        self._count()
        walk = self._walk
        # A real-time request is a row or a few: walking them beats XGBoost's fixed per-call cost.
        if walk is not None and type(data) is np.ndarray and len(data) <= treewalk.MAX_ROWS:
            return walk(data)
        return defaults.predict_fn(data, self.booster())

    def booster(self) -> xgb.Booster:
        return self._booster.get(self.reserve)

    def csv_row(self, body: bytes) -> np.ndarray | None:
        """What input_fn then this step would predict for a one-row CSV body, walked (by the walker or
        its generated code) without numpy; None for any other body, or with no walker yet, and the full
        path answers."""
        walk_row = self._walk_row
        if walk_row is None:
            return None
        row = codecs.csv_row(body, self._width)
        if row is None:
            return None
        self._count()
        return walk_row(row)

    def _count(self) -> None:
        self._calls += 1
        if self._calls >= self._due:
            self._due = sys.maxsize  # one build at a time; a build that succeeds sets the next
            if self._walker is not None and self._store is not None and self._store.in_hand:
                self._build()  # unmarshalling code in hand (~20 µs) costs less than a thread's start
            else:
                threading.Thread(target=self._build, name="walker", daemon=True).start()

    def _build(self) -> None:
        if self._walker is None:
            try:
                booster = self.booster()
                forest = defaults.forest_of(booster)
                self._walker = treewalk.TreeWalker.compile(forest, booster.inplace_predict)
                if self._walker is not None:
                    self._walk = self._walker.predict
                    self._walk_row = self._walker.predict_row
                    self._due = self.HOT_AFTER
            finally:
                self.walker_built.set()
            return
        try:
            store = self._store
            code = None if store is None else store.load(self._walker.nodes)
            if code is None:
                code = self._walker.to_code(self._booster.reference())
                if code is not None and store is not None:
                    store.save(code)
            if code is not None and (self.reserve is None or self.reserve(code.nbytes)):
                self._walk = code.predict
                self._walk_row = code.predict_row
        finally:
            self.code_built.set()


def _user_model(model_fn: Callable[..., Any], model_dir: Path) -> Any:
    # No request yet, so no custom attributes, and MME names the target model only per request.
    context = Context(custom_attributes=None, target_model=None)
    style = _context_style(model_fn, "model_fn")
    try:
        if style == "keyword":
            return model_fn(str(model_dir), context=context)
        if style == "positional":
            return model_fn(str(model_dir), context)
        return model_fn(str(model_dir))
    except HandlerError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"code/inference.py model_fn failed: {type(exc).__name__}: {exc}") from exc


def _user_step(name: str, function: Callable[..., Any]) -> Step:
    """A user function as a step; whatever it raises besides HandlerError becomes one (500) naming it."""
    style = _context_style(function, name)
    if style == "keyword":
        call = lambda first, second, context: function(first, second, context=context)  # noqa: E731
    elif style == "positional":
        call = function
    else:
        call = lambda first, second, context: function(first, second)  # noqa: E731

    def step(first: Any, second: Any, context: Context) -> Any:
        try:
            return call(first, second, context)
        except HandlerError:
            raise
        except Exception as exc:
            raise HandlerError(f"code/inference.py {name} failed: {type(exc).__name__}: {exc}") from exc

    return step


def _user_output_step(user_output: Step, default_accept: str | None) -> Step:
    """A user output_fn may return bytes or str (then typed as the Accept asked) or (body, content type)."""

    def step(prediction: Any, accept: str | None, context: Context) -> tuple[bytes, str]:
        if not accept or accept.strip() in ("", "*/*"):
            accept = default_accept or DEFAULT_ACCEPT
        result = user_output(prediction, accept, context)
        body, content_type = result if isinstance(result, tuple) and len(result) == 2 else (result, accept)
        if isinstance(body, str):
            body = body.encode()
        if not isinstance(body, bytes | bytearray | memoryview) or not isinstance(content_type, str):
            raise HandlerError(
                f"code/inference.py output_fn returned {type(result).__name__}; "
                "expected bytes, str or (bytes, content_type)"
            )
        return bytes(body), content_type

    return step


def _context_style(function: Callable[..., Any], name: str) -> str:
    """How a user function takes context: "keyword" (a `context` parameter), "positional" (one parameter
    more than usual, as sagemaker-inference-toolkit counts) or "plain" (not at all)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return "plain"  # no introspectable signature: call it the usual way
    if any(parameter.name == "context" for parameter in parameters):
        return "keyword"
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    usual = len(_PARAMETERS[name].split(","))
    if len(positional) == usual or any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return "plain"
    if len(positional) == usual + 1:
        return "positional"
    raise ModelLoadError(
        f"code/inference.py {name} takes {len(positional)} arguments; "
        f"expected ({_PARAMETERS[name]}[, context])"
    )
