"""The explorer as a reader meets it: JupyterLab on 127.0.0.1 and headless Chromium (Debian's `chromium`, driven by
Playwright's Python package), the notebook run from the menu, widgets changed and a run trained through the page.
Needs `pip install playwright jupyterlab` and a system Chromium; skipped without them unless LTH_BROWSER=required."""
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

import helpers as H

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def needs_browser():
    missing = [what for what, ok in (("playwright", _has("playwright")), ("jupyterlab", _has("jupyterlab")),
                                     ("a chromium executable", CHROMIUM)) if not ok]
    if missing:
        message = (f"the browser test needs {', '.join(missing)}: pip install playwright jupyterlab; "
                   "apt install chromium")
        if os.environ.get("LTH_BROWSER") == "required":
            pytest.fail(message)
        pytest.skip(message)


def _has(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(root: Path, env: dict, notebook: str = "07_explore.ipynb", config: Path | None = None
              ) -> tuple[subprocess.Popen, str]:
    """JupyterLab serving `root`, on loopback only, with a token, and the page that opens `notebook`; its settings and
    workspaces in `root`'s parent; `config` as the README's `jupyter lab --config` gives it."""
    port, token = free_port(), secrets.token_hex(16)
    state = root.parent / "lab-state"
    news = state / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false"}))  # no news toast over the page
    env = {**env, "JUPYTERLAB_SETTINGS_DIR": str(state / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(state / "ws"),
           "JUPYTER_RUNTIME_DIR": str(state / "runtime")}
    log = open(root.parent / "lab.log", "w")
    lab = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                            *([f"--config={config}"] if config else []),
                            f"--ServerApp.port={port}", f"--IdentityProvider.token={token}",
                            f"--ServerApp.root_dir={root}", "--LabApp.news_url=", "--ServerApp.port_retries=0",
                            *(["--allow-root"] if os.geteuid() == 0 else [])],
                           env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            return lab, f"{url}/lab/tree/{notebook}?token={token}"
        except OSError:
            if lab.poll() is not None:
                raise RuntimeError(f"JupyterLab exited: {(root.parent / 'lab.log').read_text()[-2000:]}")
            time.sleep(0.5)
    raise RuntimeError("JupyterLab did not answer within 60 s")


def explorer_copy(folder: Path, results: Path, data: Path, quick: bool = True) -> Path:
    """07_explore as a user would open it, pointed at `results` and `data`, in a folder of its own: the page's
    autosave never touches the tracked notebook."""
    nb = nbformat.read(H.ROOT / "notebooks" / "07_explore.ipynb", as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = f"results_dir = {str(results)!r}\nquick = {quick}\ndata_dir = {str(data)!r}"
    folder.mkdir()
    nbformat.write(nb, folder / "07_explore.ipynb")
    return folder


def menu(page, top: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=top).first.click()
    page.locator(".lm-Menu-itemLabel", has_text=item).first.click()


def picture(page) -> dict:
    """The explorer's figure as the page shows it: its source and its natural size in pixels."""
    return page.locator("img.widget-image").first.evaluate(
        "img => ({src: img.src, width: img.naturalWidth, height: img.naturalHeight})")


def changed(page, before: dict, timeout_s: float) -> dict:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        now = picture(page)
        if now["src"] != before["src"] and now["width"]:
            return now
        page.wait_for_timeout(250)
    raise AssertionError(f"the explorer's figure did not change within {timeout_s} s")


def run_all_cells(page, url: str, timeout_ms: int, prepare=lambda page: None) -> dict:
    """Open the notebook at `url`, run every cell from the menu, and return the explorer's first figure; `prepare`
    runs once the kernel is idle, before the run."""
    idle = page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]')
    page.goto(url)
    idle.wait_for(timeout=120_000)
    prepare(page)
    page.wait_for_timeout(3000)  # the kernel idle before the page takes menu clicks
    menu(page, "Run", "Run All Cells")
    page.locator("img.widget-image").first.wait_for(timeout=timeout_ms)
    idle.wait_for(timeout=timeout_ms)
    return changed(page, {"src": None}, 60)


def log_console(page) -> list[dict]:
    """What JupyterLab's log console holds for this notebook at every level: each kernel output, its level and its
    type; the console's own notes ("Log level set to debug") left out."""
    panel = page.locator(".jp-LogConsolePanel")
    if not panel.count():
        menu(page, "View", "Show Log Console")
        panel.wait_for()
        page.locator("select:has(option[value='debug'])").first.select_option("debug")
    return panel.locator(".jp-OutputArea-child").evaluate_all("""els => els.map(e => ({
        level: e.querySelector('[data-log-level]').dataset.logLevel,
        mime: (e.querySelector('[data-mime-type]') || {dataset: {}}).dataset.mimeType || '',
        text: e.innerText.slice(0, 200)})).filter(e => e.level !== 'metadata')""")


def test_the_explorer_redraws_whole_in_a_real_browser_after_a_view_change_and_a_train(quick_study, tmp_path):
    needs_browser()
    from playwright.sync_api import sync_playwright
    common, results, out = quick_study
    assert out.returncode == 0, out.stderr[-2000:]
    shots = Path(os.environ["LTH_SCREENSHOTS"]) if os.environ.get("LTH_SCREENSHOTS") else tmp_path
    results = Path(shutil.copytree(results, tmp_path / "results"))  # the train below adds a run: to a copy
    root = explorer_copy(tmp_path / "lab", results, Path(common[common.index("--data-dir") + 1]))
    lab, url = start_lab(root, {**os.environ, "LTH_ROOT": str(H.ROOT), "OMP_NUM_THREADS": "2"})
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            first = run_all_cells(page, url, 180_000, prepare=log_console)
            page.locator("img.widget-image").first.scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "explorer_before_train.png"))

            view = page.locator(".widget-dropdown", has_text="view").locator("select").first
            view.select_option("accuracy curves")
            curves = changed(page, first, 60)

            seed = page.locator(".widget-text", has_text="seed").locator("input").first
            seed.fill("7")  # a run the study lacks: it trains, and the views gain a seed
            seed.press("Enter")
            before_train = len(log_console(page))
            page.get_by_role("button", name="train").click()
            page.locator(".widget-output", has_text="is saved in").first.wait_for(timeout=300_000)
            after = changed(page, curves, 60)
            page.locator("img.widget-image").first.scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "explorer_after_train.png"))
            page.wait_for_timeout(1000)
            after_train = log_console(page)[before_train:]
            browser.close()
    finally:
        lab.terminate()
        lab.wait(timeout=30)
    # the redrawn figure is whole: as large as the one before the train, not a title and a sliver of axes
    assert after["width"] >= 0.9 * curves["width"] and after["height"] >= 0.9 * curves["height"], (curves, after)
    assert after["height"] > 300, after
    # every kernel output is logged at level info; what matters is that the redraw sent no figure there (it is the
    # image widget's value, not an output) and that nothing went wrong
    assert [e for e in after_train if e["mime"].startswith("image/")] == [], after_train
    assert [e for e in after_train if e["level"] in ("warning", "error", "critical") or "stderr" in e["mime"]
            or e["mime"] == "application/vnd.jupyter.error"] == [], json.dumps(after_train)[:2000]


def test_on_data_of_its_own_the_explorer_opens_on_the_study_and_each_folder_brings_its_own_choices(fake_npz,
                                                                                                   tmp_path):
    """A user with CIFAR-10 of their own and nothing run yet: the page opens on the committed study (its figure, its
    sparsities), the user's folder offers only what it holds, and going back brings the study's choices back; no
    blank figure is written into the user's folder."""
    needs_browser()
    from playwright.sync_api import sync_playwright
    mine = tmp_path / "mine"
    root = explorer_copy(tmp_path / "lab", mine, fake_npz, quick=False)
    lab, url = start_lab(root, {**os.environ, "LTH_ROOT": str(H.ROOT), "OMP_NUM_THREADS": "2"})
    sparsities = lambda page: page.locator(".widget-dropdown").filter(
        has=page.locator("label", has_text=re.compile("^sparsity$"))).locator("option").count()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            first = run_all_cells(page, url, 240_000)
            said = page.locator(".jp-OutputArea-output", has_text="No runs in").first.text_content()
            study = sparsities(page)
            folder = page.locator(".widget-dropdown", has_text="folder").locator("select").first
            folder.select_option(index=0)  # the user's own folder: empty
            empty = changed(page, first, 60)
            theirs = sparsities(page)
            folder.select_option(index=1)  # back to the committed study
            changed(page, empty, 60)
            back = sparsities(page)
            browser.close()
    finally:
        lab.terminate()
        lab.wait(timeout=30)
    assert "the views show the committed study, as a reference" in said
    assert first["height"] > 300 and study > 5  # the study's figure and its sparsities, not a blank page
    assert theirs == 1 and back == study  # "all" alone in the empty folder; every choice rebuilt on the way back
    assert not (mine / "figures").exists()


def test_a_jupyterlab_session_on_a_source_notebook_leaves_git_status_clean(fake_npz, tmp_path):
    """07 opened, run and saved in JupyterLab started as the README says (`jupyter lab --config
    jupyter_server_config.py`): the outputs stay on the page, the file keeps none of them, and `git status` is clean,
    with no git filter set up. In a repository of its own holding the notebook (its parameters pointed at an empty
    folder and the user's data), the config file, .gitattributes and .gitignore."""
    needs_browser()
    from playwright.sync_api import sync_playwright
    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    for name in ("jupyter_server_config.py", ".gitattributes", ".gitignore"):
        shutil.copy(H.ROOT / name, repo / name)
    explorer_copy(tmp_path / "copy", tmp_path / "mine", fake_npz, quick=False)
    shutil.copy(tmp_path / "copy" / "07_explore.ipynb", repo / "notebooks" / "07_explore.ipynb")
    git = lambda *args: subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True)
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "the source")
    committed = (repo / "notebooks" / "07_explore.ipynb").read_bytes()
    lab, url = start_lab(repo, {**os.environ, "LTH_ROOT": str(H.ROOT), "OMP_NUM_THREADS": "2"},
                         "notebooks/07_explore.ipynb", config=repo / "jupyter_server_config.py")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            run_all_cells(page, url, 240_000)
            menu(page, "File", "Save Notebook")
            page.wait_for_timeout(3000)
            shown = page.locator(".jp-OutputArea-output").count()
            browser.close()
    finally:
        lab.terminate()
        lab.wait(timeout=30)
    assert shown > 0  # the session ran and showed its outputs
    assert git("status", "--porcelain").stdout == "", git("diff").stdout[:2000]
    assert (repo / "notebooks" / "07_explore.ipynb").read_bytes() == committed
