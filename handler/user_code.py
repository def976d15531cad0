"""A model's own `code/inference.py`: its handler functions replace the defaults for that model only."""

from __future__ import annotations

import importlib.util
import itertools
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from handler.errors import ModelLoadError

FUNCTION_NAMES = ("model_fn", "input_fn", "predict_fn", "output_fn")
CODE_FOLDER = "code"
USER_CODE_OPT_IN = "--allow-user-code (MME_ALLOW_USER_CODE=true)"

_module_numbers = itertools.count()
# sys.path and sys.modules are process-wide: models loading at the same time must import one after another.
_import_lock = threading.Lock()


def load_user_functions(model_dir: Path, *, allowed: bool) -> dict[str, Callable[..., Any]]:
    """The handler functions model_dir/code/inference.py defines (none if it has no such file)."""
    path = model_dir / CODE_FOLDER / "inference.py"
    if not path.is_file():
        return {}
    if not allowed:
        raise ModelLoadError(
            f"{model_dir.name} has code/inference.py; running a model's own code needs {USER_CODE_OPT_IN}"
        )
    module = _import_isolated(path)
    found = {name: getattr(module, name, None) for name in FUNCTION_NAMES}
    return {name: function for name, function in found.items() if callable(function)}


def _import_isolated(path: Path) -> Any:
    """Imports path under a name of its own, so two models' inference.py (and their helpers) never collide.

    The code folder is on sys.path during the import, as sagemaker-inference-toolkit has it, so inference.py
    can import its sibling modules; those are dropped from sys.modules afterwards, so the next model's
    same-named helper is imported afresh. The functions keep their modules alive through their globals.
    """
    name = f"mme_user_inference_{next(_module_numbers)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    code_dir = str(path.parent)
    with _import_lock:
        before = set(sys.modules)
        sys.path.insert(0, code_dir)
        sys.modules[name] = module  # dataclasses and the like look their module up while it executes
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise ModelLoadError(f"code/inference.py failed to import: {type(exc).__name__}: {exc}") from exc
        finally:
            sys.path.remove(code_dir)
            for added in set(sys.modules) - before:
                origin = getattr(sys.modules[added], "__file__", None) or ""
                if added == name or origin.startswith(code_dir + os.sep):
                    del sys.modules[added]
    return module
