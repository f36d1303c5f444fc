"""The first code cell of every notebook, kept in this one place, and the command that writes it into them.

    python colab_setup.py    # after changing REPO (e.g. in a fork): rewrites that cell and every "Open in Colab" badge

In Colab, and only there (not in a local Jupyter, not under papermill), the cell fetches the repository, installs
what Colab lacks (never torch or torchvision: Colab's own builds match its CUDA) and, if DRIVE_FOLDER is set, keeps
the results on Google Drive. Everywhere, it puts the repository root on the import path, wherever the kernel started.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

REPO = "https://github.com/lottery-ticket-lab/lottery-ticket-cifar10"  # the one place that names the repository
BRANCH = "main"
ROOT = Path(__file__).resolve().parent

CELL = '''# Setup: the same cell in every notebook (source: colab_setup.py). Outside Colab it only finds helpers.py.
import importlib.util, os, re, subprocess, sys
from pathlib import Path
REPO, BRANCH = "{repo}", "{branch}"
DRIVE_FOLDER = None  # Colab: e.g. "lottery-ticket" keeps results in MyDrive/lottery-ticket, safe from disconnects
if "google.colab" in sys.modules and not os.environ.get("LTH_BATCH"):  # Colab, not a batch run inside it
    root = Path.cwd() / Path(REPO).name.removesuffix(".git")
    if not (root / "helpers.py").exists():
        subprocess.run(["git", "clone", "-q", "--depth", "1", "-b", BRANCH, REPO, str(root)], check=True)
    wanted = [r.strip() for r in open(root / "requirements.txt") if r.strip() and not r.startswith("#")]
    missing = [r for r in wanted if re.split(r"[<>=!~; ]", r)[0] not in ("torch", "torchvision")
               and importlib.util.find_spec(re.split(r"[<>=!~; ]", r)[0]) is None]
    if missing:  # never torch or torchvision: Colab's own builds match its CUDA
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)
    if DRIVE_FOLDER:
        from google.colab import drive
        drive.mount("/content/drive")
        os.environ["LTH_RESULTS"] = f"/content/drive/MyDrive/{{DRIVE_FOLDER}}"
else:  # the repository holding this notebook: from the kernel's directory, Jupyter's notebook path, or $LTH_ROOT
    starts = [Path.cwd(), Path(os.environ.get("JPY_SESSION_NAME", ".")).resolve(),
              Path(os.environ.get("LTH_ROOT", "."))]
    root = next((p for s in starts for p in (s, *s.parents) if (p / "helpers.py").is_file()), None)
    if root is None:
        raise RuntimeError("helpers.py not found above this directory: start Jupyter inside the repository, or "
                           "set LTH_ROOT to the repository's path.")
sys.path.insert(0, str(root))'''


def cell(repo: str = REPO, branch: str = BRANCH) -> str:
    return CELL.format(repo=repo, branch=branch)


def badge(notebook: str, repo: str = REPO, branch: str = BRANCH) -> str:
    path = re.sub(r"^https://github.com/", "", repo).removesuffix(".git")
    return (f"[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{path}/blob/{branch}/notebooks/{notebook}.ipynb)")


BADGE = re.compile(r"\[!\[Open in Colab\]\([^)]*\)\]\(https://colab\.research\.google\.com/github/[^)]*/notebooks/"
                   r"([\w.-]+)\.ipynb\)")


def stamp() -> None:
    """Write the setup cell first in every notebook and a badge atop each, and update the README's badges."""
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        setup = {"cell_type": "code", "execution_count": None, "id": "colab-setup",
                 "metadata": {"tags": ["colab-setup"]}, "outputs": [],
                 "source": cell().splitlines(keepends=True)}
        if "colab-setup" in code[0]["metadata"].get("tags", []):
            code[0].update(setup)
        else:
            nb["cells"].insert(nb["cells"].index(code[0]), setup)
        title = nb["cells"][0]
        text = BADGE.sub("", "".join(title["source"])).lstrip("\n")
        title["source"] = (badge(path.stem) + "\n\n" + text).splitlines(keepends=True)
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    readme = ROOT / "README.md"
    readme.write_text(BADGE.sub(lambda m: badge(m.group(1)), readme.read_text()))


if __name__ == "__main__":
    stamp()
