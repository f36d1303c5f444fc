"""The models a run can name: `helpers.MODELS`, which holds the lab's CNN, and every file in models/, each adding its
networks there (`helpers.MODELS["name"] = Module`). Loading them is one import per file, once."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import helpers as H

MODELS_DIR = H.ROOT / "models"


def load_models(folder: Path = MODELS_DIR) -> dict:
    """Every model registered, once each file of `folder` has run; a file that fails names itself."""
    for path in sorted(folder.glob("*.py")):
        module = f"lth_models.{path.stem}"
        if path.stem.startswith("_") or module in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(module, path)
        sys.modules[module] = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(sys.modules[module])
        except Exception as e:
            del sys.modules[module]
            raise ImportError(f"models/{path.name} could not be loaded ({type(e).__name__}: {e}); fix it, or move it "
                              "out of models/.") from e
    return H.MODELS


load_models()  # whatever imports the package can name every model: a saved run may name any of them
