"""Build the documentation site, serve it on 127.0.0.1, and save a screenshot of its getting-started page.

    python scripts/docs_screenshot.py                     # -> docs/images/docs_getting_started.png

It runs ``mkdocs build --strict`` into a temporary folder (needs ``pip install -e '.[docs]'``), serves that folder
with Python's ``http.server`` on a free port of 127.0.0.1, loads the page in Debian's ``chromium`` through
``chromium-driver`` and Selenium (headless), waits until the page shows its title and its first sections, and saves
the PNG. Exit code 0 and the PNG when it does; an error message and exit code 1 when it does not.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dashboard_screenshot import browser, free_port, wait_for_http  # this folder's headless-Chromium helpers

REPO = Path(__file__).resolve().parent.parent
EXPECTED = ["Getting started", "Install", "The tiny world", "The main job"]


def build(site_dir: Path) -> None:
    """``mkdocs build --strict`` of the repository's site into ``site_dir``."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"mkdocs build --strict failed:\n{done.stdout}{done.stderr}")


def serve(site_dir: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(site_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def screenshot(
    out: Path, page: str = "getting-started/", timeout: float = 60, width: int = 1280, height: int = 1000
) -> str:
    """Build, serve, load ``page``, wait for its expected headings, save the PNG; return the page's visible text."""
    with tempfile.TemporaryDirectory() as tmp:
        site_dir = Path(tmp) / "site"
        build(site_dir)
        port = free_port()
        server = serve(site_dir, port)
        driver = None
        try:
            url = f"http://127.0.0.1:{port}/{page}"
            wait_for_http(url, timeout)
            driver = browser(width, height)
            driver.get(url)
            deadline = time.time() + timeout
            while True:
                text = driver.find_element("tag name", "body").text
                missing = [word for word in EXPECTED if word not in text]
                if not missing:
                    break
                if time.time() > deadline:
                    raise TimeoutError(f"{url} does not show {missing} after {timeout:.0f} s")
                time.sleep(0.5)
            out.parent.mkdir(parents=True, exist_ok=True)
            if not driver.save_screenshot(str(out)):
                raise RuntimeError(f"could not save {out}")
            return text
        finally:
            if driver is not None:
                driver.quit()
            server.terminate()
            server.wait(timeout=10)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "images" / "docs_getting_started.png"))
    parser.add_argument("--page", default="getting-started/", help="the page's path under the site's root")
    parser.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args(argv)
    try:
        screenshot(Path(args.out), page=args.page, timeout=args.timeout)
    except Exception as err:  # a message, not a traceback: this is a command
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    print(args.out)


if __name__ == "__main__":
    main()
