"""Take the README's screenshot of the labeling app: docs/images/label_screen.png.

    python scripts/screenshot_label.py [--rankings_file runs/tiny/collect/rankings.jsonl]

Starts ``instructgpt label`` on 127.0.0.1 in a temporary directory, opens it in headless Chromium (Debian's
``chromium`` and ``chromium-driver``), logs in, picks two responses, rates one, and saves the page.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Four answers to a tiny-world prompt, in the styles the tiny SFT model samples (used without --rankings_file)
EXAMPLE = {
    "prompt": "What does the quillhog eat?",
    "responses": [
        "The quillhog eats seeds.",
        "Sure! The quillhog eats seeds. Also, the mossbat lives in the swamp. I hope this helps!",
        "The quillhog eats fish.",
        "Seeds. Seeds. The quillhog eats seeds and seeds.",
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rankings_file", default=None, help="A collect output to show (default: a built-in example).")
    parser.add_argument("--output", default=str(REPO / "docs" / "images" / "label_screen.png"))
    args = parser.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    with tempfile.TemporaryDirectory() as tmp, socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        rankings = args.rankings_file
        if rankings is None:
            rankings = str(Path(tmp) / "example.jsonl")
            Path(rankings).write_text(json.dumps(EXAMPLE) + "\n")
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "instructgpt",
                "label",
                "recipes/tiny/label.yaml",
                "--rankings_file",
                rankings,
                "--output_dir",
                str(Path(tmp) / "label"),
                "--server_port",
                str(port),
            ],
            cwd=REPO,
        )
        options = Options()
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1300,1250"):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            url = f"http://127.0.0.1:{port}/"
            for _ in range(300):
                try:
                    urllib.request.urlopen(url, timeout=2)
                    break
                except OSError:
                    time.sleep(0.3)
            driver.get(url)
            time.sleep(3)
            driver.find_element(By.CSS_SELECTOR, "#labeler-id textarea, #labeler-id input").send_keys("alice")
            driver.find_element(By.ID, "start").click()
            time.sleep(3)
            texts = [
                driver.find_element(By.CSS_SELECTOR, f"#response-{j} textarea").get_attribute("value") for j in range(4)
            ]
            # the built-in example: the direct answer first, the chatty one second, the wrong one marked as a
            # hallucination (with --rankings_file: the first two shown, the third marked)
            where = [texts.index(r) if r in texts else j for j, r in enumerate(EXAMPLE["responses"])]
            driver.find_element(By.ID, f"pick-{where[0]}").click()
            driver.find_element(By.ID, f"pick-{where[1]}").click()
            driver.find_elements(By.CSS_SELECTOR, f"#flags-{where[2]} input[type=checkbox]")[2].click()
            time.sleep(1)
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(args.output)
            print(f"saved {args.output}")
        finally:
            driver.quit()
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
