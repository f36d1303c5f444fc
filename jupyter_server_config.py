"""JupyterLab for this repository: `jupyter lab --config jupyter_server_config.py`, from its root.

The notebooks under notebooks/ are the source of the study; their outputs belong to the session that made them (the
report's executed copies are under results/notebooks/). Saved from JupyterLab, a notebook there keeps its code and
markdown and loses its outputs and execution counts, by the same nbstripout rules as the git filter of
.gitattributes, so it is byte for byte what git holds until a cell's source changes: `git status` stays clean after a
session. Outputs stay on the page until it is reloaded. Notebooks anywhere else are saved as they are.
"""
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"


def strip_source_notebooks(model, path, contents_manager, **kwargs):
    if model.get("type") != "notebook" or not model.get("content"):
        return
    if (Path(contents_manager.root_dir) / path).resolve().parent != NOTEBOOKS:
        return
    import nbformat
    from nbstripout import strip_output
    model["content"] = strip_output(nbformat.from_dict(model["content"]), keep_output=False, keep_count=False,
                                    keep_id=True, extra_keys=["metadata.language_info"])


c.FileContentsManager.pre_save_hook = strip_source_notebooks  # noqa: F821 (`c` is Jupyter's config object)
