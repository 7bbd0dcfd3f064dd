"""Open a run's Trackio dashboard in headless Chromium, check that it shows the PPO curves, and save a screenshot.

    python scripts/dashboard_screenshot.py --project instructgpt-tiny --out docs/images/trackio_dashboard.png \
        --scroll_to objective

It serves the project's dashboard on 127.0.0.1 (``trackio show``, from ``TRACKIO_DIR`` or Trackio's default
folder), loads it in Debian's ``chromium`` through ``chromium-driver`` and Selenium, and waits until the page shows
every metric section asked for (``--expect``, default: the PPO ``objective`` section with its ``kl`` and
``scores`` plots). Exit code 0 and the PNG when it does; one line and exit code 1 when it does not.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(project: str, port: int) -> subprocess.Popen:
    """``trackio show`` for one project on 127.0.0.1:port, in a child process (stopped by the caller)."""
    code = (
        f"import trackio; trackio.show(project={project!r}, open_browser=False, block_thread=True, "
        f"host='127.0.0.1', server_port={port:d})"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for_http(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"the dashboard did not answer at {url} within {timeout:.0f} s")


def browser(width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium:
        options.binary_location = chromium
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def page_shows(text: str, expected: list[str]) -> list[str]:
    """The expected words missing from the page's visible text (its lines, so `kl` is a plot title, not a
    substring of another word)."""
    lines = {line.strip() for line in text.splitlines()}
    return [word for word in expected if not any(line == word or line.startswith(word + " (") for line in lines)]


def screenshot(
    project: str,
    out: Path,
    expected: list[str],
    timeout: float = 120,
    width: int = 1400,
    height: int = 900,
    scroll_to: str | None = None,
) -> str:
    """Serve, load, wait for every expected section and plot, save the PNG; return the page's visible text."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/?project={project}"
    server = serve(project, port)
    driver = None
    try:
        wait_for_http(f"http://127.0.0.1:{port}/", timeout)
        driver = browser(width, height)
        driver.get(url)
        deadline = time.time() + timeout
        missing = expected
        while time.time() < deadline:
            text = driver.find_element("tag name", "body").text
            missing = page_shows(text, expected)
            if not missing:
                break
            time.sleep(1)
        else:
            raise TimeoutError(f"the dashboard of project {project!r} never showed {', '.join(missing)}")
        if scroll_to:  # bring one section (e.g. PPO's `objective`) to the top of the window
            heading = driver.find_elements(
                "xpath", f"//*[starts-with(normalize-space(text()), '{scroll_to}')][not(self::script)]"
            )
            if heading:
                driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", heading[0])
        time.sleep(2)  # the plots draw after their titles appear
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
        return text
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", required=True, help="The Trackio project (the recipes' `project`).")
    parser.add_argument("--out", type=Path, required=True, help="Where to write the PNG.")
    parser.add_argument(
        "--expect", nargs="+", default=["objective", "kl", "scores"], help="Section and plot titles the page must show."
    )
    parser.add_argument("--timeout", type=float, default=120, help="Seconds to wait for the server and the page.")
    parser.add_argument("--scroll_to", default=None, help="A section title to scroll to before the screenshot.")
    args = parser.parse_args(argv)
    if not (shutil.which("chromium") or shutil.which("chromium-browser")) or not shutil.which("chromedriver"):
        print(
            "dashboard_screenshot: needs Debian's chromium and chromium-driver (apt-get install chromium "
            "chromium-driver)",
            file=sys.stderr,
        )
        return 1
    try:
        screenshot(args.project, args.out, args.expect, args.timeout, scroll_to=args.scroll_to)
    except (TimeoutError, OSError) as err:
        print(f"dashboard_screenshot: {err}", file=sys.stderr)
        return 1
    print(f"the dashboard of {args.project} shows {', '.join(args.expect)}; screenshot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
