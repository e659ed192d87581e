"""Regenerate docs/audit-report.png: the top of the demo audit's report.html in headless Chromium.

    .venv/bin/python docs/make_audit_figure.py [DATA_ROOT]

Builds the offline demo audit (``biasscope demo``, real MobileNetV2) under DATA_ROOT (default: a
temporary folder) and screenshots its report with Debian's chromium (``make browser``) via Playwright.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from biasscope.audit.demo import ensure_demo

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]


def main() -> None:
    from playwright.sync_api import sync_playwright

    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())
    run = ensure_demo(root)
    out = Path(__file__).with_name("audit-report.png")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1180, "height": 1500})
        problems: list[str] = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("request", lambda r: r.url.startswith(("file:", "data:")) or problems.append(r.url))
        page.goto((run / "report.html").resolve().as_uri())
        page.screenshot(path=str(out))
        browser.close()
    if problems:
        raise SystemExit(f"the report is not self-contained or has errors: {problems}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
