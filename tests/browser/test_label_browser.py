"""The labeling app in a real browser: headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven by
Selenium against ``instructgpt label`` started on 127.0.0.1 by the test.

Two labelers rank three prompts each (one with the mouse, one with the keyboard, with a tie); one reloads the page
mid-way, the server is killed mid-way for the other, and both resume; a response holding ``<script>`` and
``<img onerror>`` runs nothing; ``rankings.jsonl`` then holds exactly the rankings made, in the RM's format, and
the tiny reward model trains on it. ``scripts/test.sh`` installs the browser when it can (root); without it these
tests are skipped, saying why.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from helpers import TINY_BASE, stop

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _why_skip() -> str | None:
    for module, extra in (("gradio", "label"), ("selenium", "label")):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install -e '.[{extra}]')"
    if not CHROMIUM or not CHROMEDRIVER:
        return "no headless browser: install Debian's chromium and chromium-driver (scripts/test.sh does, as root)"
    return None


if (reason := _why_skip()) is not None:
    pytest.skip(reason, allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import (  # noqa: E402
    ElementClickInterceptedException,
    ElementNotInteractableException,
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

SCRIPT = "<script>window.__xss = 1; alert('script')</script> 7"
IMG = '<img src="x" onerror="window.__xss = 2; alert(\'img\')"> blue'
ITEMS = [
    {
        "prompt": "What is 3 plus 4?",
        "responses": ["3 plus 4 is 7.", "3 plus 4 is 8.", "Sure! 7. I hope this helps!", SCRIPT],
    },
    {
        "prompt": "What color is the glimmerfox?",
        "responses": ["The glimmerfox is blue.", "Red.", IMG, "Blue. Have a nice day!"],
    },
    {
        "prompt": "Reverse the word lamp.",
        "responses": ["pmal", "lamp", "The word lamp backwards is pmal.", "It is lamp."],
    },
]
SCREENSHOT_DIR = os.environ.get("INSTRUCTGPT_SCREENSHOT_DIR")  # set to save the ranking screen (docs/images)
# How long the page may take to reach a state (an element shown, a text changed): generous, because a busy machine
# only makes the app slower. Every wait is for a state, with this deadline, never a count of tries.
DEADLINE = 120
# what Selenium raises while Gradio is still rendering or re-rendering an element: try again until the deadline
NOT_YET = (
    NoSuchElementException,
    StaleElementReferenceException,
    ElementNotInteractableException,
    ElementClickInterceptedException,
)


@pytest.fixture
def browser():
    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    # chromedriver and its Chromium in a process group of their own, killed whatever quit() managed
    service = Service(CHROMEDRIVER, popen_kw={"start_new_session": True})
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(DEADLINE)
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            if service.process is not None:
                stop(service.process, signal.SIGKILL)


def wait(driver, condition, timeout: float = DEADLINE):
    """Poll ``condition`` until it returns something true (an element found and not re-rendered in between counts
    only then); a timeout says what the page's status line and ranking box held."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=NOT_YET).until(condition)
    except TimeoutException:
        boxes = {
            b: [e.get_attribute("value") for e in driver.find_elements(By.CSS_SELECTOR, f"#{b} textarea")]
            for b in ("status", "ranking", "prompt")
        }
        progress_text = [e.text for e in driver.find_elements(By.ID, "progress-text")]
        raise AssertionError(f"timed out; page: {boxes}, progress {progress_text}") from None


def settled(driver, action, timeout: float = DEADLINE):
    """``action()`` (find an element, then read or use it) once it runs through: until the deadline, again when the
    element is not on the page yet, not yet usable, or was re-rendered by Gradio between the find and the use
    (Selenium's NoSuchElement and StaleElementReference say nothing about the app; both were seen in CI)."""
    return wait(driver, lambda d: (action(),), timeout)[0]  # a 1-tuple: an empty text is a result too


def value(driver, elem_id: str) -> str:
    return settled(
        driver,
        lambda: driver.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input").get_attribute("value"),
    )


def shown_responses(driver) -> list[str]:
    return [value(driver, f"response-{j}") for j in range(4)]


def progress(driver) -> str:
    return settled(driver, lambda: driver.find_element(By.ID, "progress-text").text)


def click(driver, elem_id: str) -> None:
    """Click the element once it is shown and enabled (on a busy machine Gradio renders the page piece by piece)."""

    def click_when_ready() -> bool:
        element = driver.find_element(By.ID, elem_id)
        if not (element.is_displayed() and element.is_enabled()):
            return False
        element.click()
        return True

    wait(driver, lambda d: click_when_ready())


def log_in(driver, url: str, name: str) -> None:
    driver.get(url)
    settled(
        driver, lambda: driver.find_element(By.CSS_SELECTOR, "#labeler-id textarea, #labeler-id input").send_keys(name)
    )
    click(driver, "start")
    wait(driver, lambda d: value(d, "prompt"))


def rank(driver, letters: str, mine_before: int, *, keyboard: bool) -> tuple[str, list[str]]:
    """Rank the item on screen (``"B>A=C>D"``, best first) with the mouse or the keys; returns the prompt and the
    responses as shown (A, B, C, D), read before submitting."""
    prompt, responses = value(driver, "prompt"), shown_responses(driver)
    if keyboard:
        keys = letters.replace(">", "").lower()  # "b>a=c>d" -> "ba=cd": `=` before a pick ties it
        undone = "b" if keys[0] == "a" else "a"  # a pick undone on the way: Backspace
        ActionChains(driver).send_keys(keys[0], undone, Keys.BACKSPACE, keys[1:]).perform()
        wait(driver, lambda d: value(d, "ranking") == letters.replace(">", " > ").replace("=", " = "))
        ActionChains(driver).send_keys(Keys.ENTER).perform()
    else:
        for letter in letters.split(">"):
            click(driver, f"pick-{'ABCD'.index(letter)}")
        wait(driver, lambda d: value(d, "ranking") == letters.replace(">", " > "))
        click(driver, "submit")
    wait(driver, lambda d: submitted(d, mine_before + 1))
    return prompt, responses


def submitted(driver, ranked: int) -> bool:
    """Whether the page shows the submission: "All done" in the status, or the labeler's count at ``ranked``.

    Reads what is on the page now, without waiting: once everything is done the progress line is gone, so a waiting
    read of it inside this condition would block until its own deadline (seen in CI on a loaded machine)."""
    status = driver.find_elements(By.CSS_SELECTOR, "#status textarea, #status input")
    if status and "All done" in (status[0].get_attribute("value") or ""):
        return True
    return progress_says(driver, f"you ranked {ranked}")


def progress_says(driver, text: str) -> bool:
    """Whether the progress line is on the page now and holds ``text`` (a read that does not wait)."""
    counter = driver.find_elements(By.ID, "progress-text")
    return bool(counter) and text in counter[0].text


def expected_row(prompt: str, responses: list[str], letters: str) -> dict:
    places = [place.split("=") for place in letters.split(">")]
    best_first = [responses["ABCD".index(x)] for place in places for x in place]
    scores = [float(len(places) - 1 - p) for p, place in enumerate(places) for _ in place]
    return {"prompt": prompt, "responses": best_first, "scores": scores}


def assert_nothing_ran(driver) -> None:
    assert driver.execute_script("return window.__xss") is None
    assert not driver.find_elements(By.CSS_SELECTOR, "[id^=response-] img, #prompt img")
    assert driver.find_elements(By.TAG_NAME, "body")  # no alert() is open, or this call would have raised


def test_two_labelers_rank_in_the_browser_resume_and_train_the_reward_model(tmp_path, browser, label_app):
    items = tmp_path / "collected.jsonl"
    items.write_text("".join(json.dumps(item) + "\n" for item in ITEMS))
    out = tmp_path / "label"
    app = label_app(items, out, "--labelers_per_prompt", "2", "--allow_ties", "true")
    made: dict[str, list[dict]] = {"alice": [], "bob": []}
    seen_payloads = set()

    def record(labeler: str, letters: str, keyboard: bool) -> None:
        prompt, responses = rank(browser, letters, len(made[labeler]), keyboard=keyboard)
        seen_payloads.update(r for r in responses if r in (SCRIPT, IMG))
        assert_nothing_ran(browser)
        made[labeler].append(expected_row(prompt, responses, letters))

    # alice, with the mouse: two prompts, then a reload, then the third
    log_in(browser, app.url, "alice")
    assert progress(browser).startswith("0 / 6 done")
    if SCREENSHOT_DIR:
        browser.save_screenshot(str(Path(SCREENSHOT_DIR) / "label_screen.png"))
    record("alice", "B>A>D>C", keyboard=False)
    record("alice", "A>C>B>D", keyboard=False)
    browser.refresh()  # the page remembers who labels in this browser and shows the next prompt
    wait(browser, lambda d: progress_says(d, "you ranked 2"))
    assert value(browser, "prompt") not in {row["prompt"] for row in made["alice"]}
    record("alice", "C>A>B>D", keyboard=False)
    assert "All done, alice" in value(browser, "status")

    # bob, with the keyboard and a tie: one prompt, then the server is killed and restarted
    browser.execute_script("window.localStorage.clear()")
    log_in(browser, app.url, "bob")
    record("bob", "D>A=B>C", keyboard=True)
    assert app.stop(signal.SIGKILL) == -signal.SIGKILL
    app.start()
    browser.refresh()
    wait(browser, lambda d: progress_says(d, "you ranked 1"))
    assert progress(browser).startswith("4 / 6 done")
    record("bob", "A>B>C>D", keyboard=True)
    record("bob", "B>C>A>D", keyboard=True)
    assert "All done, bob" in value(browser, "status")
    assert seen_payloads == {SCRIPT, IMG}  # the payloads were on screen, as text

    # request parameters never name files: Gradio's file route does not serve the rankings
    rankings_path = out / "rankings.jsonl"
    for route in ("gradio_api/file=", "file="):
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(app.url + route + urllib.parse.quote(str(rankings_path)), timeout=10)
    assert app.stop() in (143, -signal.SIGTERM)

    rows = [json.loads(line) for line in rankings_path.read_text().splitlines()]
    assert [r["labeler_id"] for r in rows] == ["alice"] * 3 + ["bob"] * 3
    assert [{k: r[k] for k in ("prompt", "responses", "scores")} for r in rows] == made["alice"] + made["bob"]
    assert all(
        r["seconds"] > 0 and r["timestamp"].endswith("Z") and r["labeler"] == f"human:{r['labeler_id']}" for r in rows
    )
    assert (out / "instructgpt_run.json").is_file()  # every item has its two labelers: the labeling is finished

    # the reward model trains on exactly these rankings (bob's tie keeps the first of the tied pair)
    from instructgpt.stages.rm import parse_args, run_rm

    (script, training, model), recipe = parse_args(
        [
            "recipes/tiny/rm.yaml",
            "--model_name_or_path",
            str(TINY_BASE),
            "--dataset_name",
            str(rankings_path),
            "--output_dir",
            str(tmp_path / "rm"),
            "--eval_fraction",
            "0",
            "--max_demonstrations",
            "8",
            "--report_to",
            "none",
            "--save_strategy",
            "no",
        ]
    )
    metrics = run_rm(script, training, model, recipe)
    assert metrics["train_rankings"] == 6 and (tmp_path / "rm" / "instructgpt_run.json").is_file()


def test_a_password_guards_the_app_and_the_login_is_the_labeler_id(tmp_path, browser, label_app):
    items = tmp_path / "collected.jsonl"
    items.write_text(json.dumps(ITEMS[2]) + "\n")
    app = label_app(items, tmp_path / "label", env={"INSTRUCTGPT_LABEL_PASSWORD": "correct horse"})
    try:
        browser.get(app.url)
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "input[type=password]"))
        assert not browser.find_elements(By.ID, "prompt")  # nothing to see before logging in
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(app.url + "config", timeout=10)  # nor to ask the API for
        login = urllib.parse.urlencode({"username": "carol", "password": "wrong"}).encode()
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(app.url + "login", data=login, timeout=10)
        settled(browser, lambda: browser.find_element(By.CSS_SELECTOR, "input[type=text]").send_keys("carol"))
        settled(
            browser,
            lambda: browser.find_element(By.CSS_SELECTOR, "input[type=password]").send_keys(
                "correct horse", Keys.ENTER
            ),
        )
        wait(browser, lambda d: d.find_elements(By.ID, "prompt") and value(d, "prompt"))
        assert value(browser, "prompt") == ITEMS[2]["prompt"]
        rank(browser, "A>C>D>B", 0, keyboard=False)
    finally:
        app.stop()
    row = json.loads((tmp_path / "label" / "rankings.jsonl").read_text())
    assert row["labeler_id"] == "carol"
