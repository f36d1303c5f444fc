"""The report as a reader sees it, in pictures (docs/screenshots/): the executed summary (06) as static HTML, and
the explorer (07) in JupyterLab before and after training one quick run through its panel, on the committed study.

    python scripts/screenshots.py --data-dir DATA    # DATA: the study's CIFAR-10 copy (its hash finds results/)

Needs what tests/test_browser.py needs: JupyterLab, Playwright and a system Chromium."""
import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from test_browser import CHROMIUM, picture, run_all_cells, start_lab  # noqa: E402

OUT = ROOT / "docs" / "screenshots"


def summary_html(page, tmp: Path) -> None:
    import nbformat
    from nbconvert import HTMLExporter
    nb = nbformat.read(ROOT / "results" / "notebooks" / "06_summary.ipynb", as_version=4)
    html, _ = HTMLExporter().from_notebook_node(nb)
    (tmp / "06_summary.html").write_text(html)
    page.goto((tmp / "06_summary.html").as_uri())
    page.screenshot(path=str(OUT / "summary_study.png"))
    page.get_by_text("Findings, computed from the runs above").first.evaluate("e => e.scrollIntoView()")
    page.screenshot(path=str(OUT / "summary_findings.png"))


def explorer(page, url: str) -> None:
    before = run_all_cells(page, url, 300_000)
    page.locator("img.widget-image").first.scroll_into_view_if_needed()
    page.screenshot(path=str(OUT / "explorer_before_train.png"))
    page.locator(".widget-checkbox", has_text="quick").locator("input").first.check()  # 2,048 images, 1 epoch a phase
    page.get_by_role("button", name="train").click()
    page.locator(".widget-output", has_text="is saved in").first.wait_for(timeout=600_000)
    picture(page)
    page.get_by_role("button", name="train").scroll_into_view_if_needed()
    page.screenshot(path=str(OUT / "explorer_after_train.png"))
    assert picture(page)["height"] >= 0.9 * before["height"]


def main() -> None:
    import nbformat
    from playwright.sync_api import sync_playwright
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True)
    data = Path(p.parse_args().data_dir).resolve()
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lab_root = tmp / "lab"
        lab_root.mkdir()
        nb = nbformat.read(ROOT / "notebooks" / "07_explore.ipynb", as_version=4)
        params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        params.source = "results_dir = None\nquick = False\ndata_dir = None"
        nbformat.write(nb, lab_root / "07_explore.ipynb")  # a copy: the page's autosave never touches the source
        lab, url = start_lab(lab_root, {**os.environ, "LTH_ROOT": str(ROOT), "CIFAR10_DATA": str(data)})
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1400, "height": 1200})
                summary_html(page, tmp)
                page = browser.new_page(viewport={"width": 1400, "height": 1200})
                try:
                    explorer(page, url)
                except Exception:
                    page.screenshot(path=str(tmp.parent / "explorer_failed.png"))
                    raise
                browser.close()
        finally:
            lab.terminate()
            lab.wait(timeout=30)
    print(f"screenshots in {OUT.relative_to(ROOT)}/")


if __name__ == "__main__":
    main()
