"""The labeling app under load: 20 labelers ranking at once over HTTP, the server killed in the middle of a burst.

Each labeler is a ``gradio_client.Client`` of its own, which talks to the app as a browser page does (the same
``/gradio_api`` queue and session; a new client is a reloaded page). The test runs three bursts:

1. every labeler logs in and submits ``BURST_1`` rankings, all at once;
2. every labeler ranks on until the server is gone: after ``KILL_AFTER`` acknowledged rankings of this burst the
   server's process group gets SIGKILL, with rankings in flight;
3. the same command starts the app again; every labeler reloads, is shown how many rankings the file holds for
   them and a prompt they have not ranked, and ranks until nothing is left for them.

Then it checks what the issue asks for: every acknowledged ranking is on disk exactly once, no line is partial, each
labeler resumed where they stopped, and every prompt has exactly ``labelers_per_prompt`` different labelers. It
prints acknowledged, stored, lost and duplicated submissions and the median and 95th-percentile seconds to an
acknowledgement (``-rP`` shows the print; ``$INSTRUCTGPT_LOAD_REPORT`` names a JSON file to write them to).

About a minute on 2 cores. Not in the default tiers (marker ``load``); scripts/test.sh runs it in a pytest process
of its own: ``python -m pytest -q -rP -m load``.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from helpers import APP_DEADLINE, wait_for

pytestmark = pytest.mark.load
gradio_client = pytest.importorskip("gradio_client", reason="the [label] extra (Gradio) is not installed")

LABELERS = 20
ITEMS = 60
PER_PROMPT = 2  # recipes/tiny/label.yaml's labelers_per_prompt
BURST_1 = 2  # rankings each labeler submits in the first burst
KILL_AFTER = 20  # rankings acknowledged in the second burst before the server is killed
RANKING = "B > A > D > C"
NO_RATINGS = [None] * 4 + [[]] * 4  # the quality dropdowns and problem checkboxes, left empty
# where each value sits in what /begin and /save return (the app's outputs less its gr.State and layout blocks)
PROGRESS, PROMPT, STATUS = 1, 2, -1


def write_items(path: Path) -> list[str]:
    """ITEMS prompts with 4 responses each, as a collect output; their prompt texts, in item order."""
    prompts = [f"Prompt {i}: say something about the number {i}." for i in range(ITEMS)]
    rows = [
        {"prompt": p, "responses": [f"response {j} to prompt {i}" for j in range(4)]} for i, p in enumerate(prompts)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return prompts


class ServerGone(Exception):
    """A request that got no answer because the server died under it."""


class Labeler:
    """One person at a browser: a client session, what the server acknowledged, and the request it had in flight."""

    def __init__(self, name: str):
        self.name = name
        self.client = None
        self.screen: tuple = ()
        self.acked: list[str] = []  # prompts whose ranking the server acknowledged ("Saved. Next prompt.")
        self.unanswered: list[str] = []  # prompts whose ranking got no answer, the server killed: stored or not
        self.ack_seconds: list[float] = []

    def open_page(self, url: str) -> None:
        """A (re)loaded page: a new session, logged in as this labeler."""
        try:
            self.client = gradio_client.Client(url, verbose=False, analytics_enabled=False, max_workers=2)
        except Exception as error:  # noqa: BLE001 - connection errors surface as several httpx/gradio types
            raise ServerGone(str(error)) from error
        self.screen = self._call("/begin", self.name)
        assert self.screen[STATUS] == f"Labeling as {self.name}.", self.screen[STATUS]

    def _call(self, api: str, *inputs):
        try:
            return self.client.submit(*inputs, api_name=api).result(timeout=APP_DEADLINE)
        except TimeoutError:
            raise  # an answer that never came from a live server is a failure, not a kill
        except Exception as error:  # noqa: BLE001 - a killed server shows as a connection error of some type
            raise ServerGone(str(error)) from error

    @property
    def done(self) -> bool:
        return self.screen[STATUS].startswith(f"All done, {self.name}")

    def rank(self) -> None:
        """Submit a ranking of the prompt on screen; record it as acknowledged, or in flight if the server died."""
        prompt = self.screen[PROMPT]
        began = time.monotonic()
        try:
            screen = self._call("/save", RANKING, *NO_RATINGS)
        except ServerGone:
            self.unanswered.append(prompt)
            raise
        self.ack_seconds.append(time.monotonic() - began)
        assert screen[STATUS] == "Saved. Next prompt." or screen[STATUS].startswith("All done"), screen[STATUS]
        self.acked.append(prompt)
        self.screen = screen


def all_at_once(labelers: list[Labeler], work, timeout: float) -> list[BaseException]:
    """Run ``work(labeler)`` in a thread per labeler, released together; the errors other than ServerGone."""
    release = threading.Barrier(len(labelers))
    errors: list[BaseException] = []

    def body(labeler: Labeler) -> None:
        try:
            release.wait(timeout)
            work(labeler)
        except ServerGone:
            pass
        except BaseException as error:  # noqa: BLE001 - handed to the main thread, which fails the test
            errors.append(error)

    threads = [threading.Thread(target=body, args=(lab,), daemon=True) for lab in labelers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
        assert not thread.is_alive(), "a labeler's requests did not end in time"
    return errors


def stored_rows(path: Path) -> list[dict]:
    """Every line of the rankings file, each of which must be a whole JSON object."""
    text = path.read_text()
    assert text.endswith("\n"), "the last line is partial"
    return [json.loads(line) for line in text.splitlines()]


def test_twenty_labelers_at_once_and_a_kill_lose_nothing(tmp_path, label_app):
    items, out = tmp_path / "items.jsonl", tmp_path / "label"
    prompts = write_items(items)
    app = label_app(items, out, "--max_prompts", str(ITEMS))
    labelers = [Labeler(f"labeler-{n:02d}") for n in range(LABELERS)]
    rankings = out / "rankings.jsonl"

    # burst 1: everyone logs in, then submits BURST_1 rankings at the same time
    for labeler in labelers:
        labeler.open_page(app.url)

    def burst_1(labeler: Labeler) -> None:
        for _ in range(BURST_1):
            labeler.rank()

    assert all_at_once(labelers, burst_1, APP_DEADLINE) == []
    assert len(stored_rows(rankings)) == LABELERS * BURST_1

    # burst 2: everyone ranks on until the server is killed, KILL_AFTER acknowledgements in
    def burst_2(labeler: Labeler) -> None:
        while not labeler.done:
            labeler.rank()

    before = sum(len(lab.acked) for lab in labelers)
    killer_errors: list[BaseException] = []

    def killer() -> None:
        try:
            wait_for(
                lambda: sum(len(lab.acked) for lab in labelers) - before >= KILL_AFTER,
                APP_DEADLINE,
                f"{KILL_AFTER} acknowledged rankings in the second burst",
                poll=0.02,
            )
        except BaseException as error:  # noqa: BLE001
            killer_errors.append(error)
        assert app.stop(signal.SIGKILL) == -signal.SIGKILL

    kill = threading.Thread(target=killer, daemon=True)
    kill.start()
    assert all_at_once(labelers, burst_2, 2 * APP_DEADLINE) == []
    kill.join(APP_DEADLINE)
    assert killer_errors == []
    at_kill = stored_rows(rankings)  # whole lines only, even with writes cut off by the kill
    assert len(at_kill) < ITEMS * PER_PROMPT, "the labeling was over before the kill; nothing was in the middle"

    # burst 3: the same command again; every labeler reloads, continues where they stopped, and ranks to the end
    app.start()
    stored = stored_rows(rankings)
    for labeler in labelers:
        labeler.open_page(app.url)
        mine = [r["prompt"] for r in stored if r["labeler_id"] == labeler.name]
        assert labeler.screen[PROGRESS].split("</div>")[0].endswith(f"you ranked {len(mine)}"), labeler.screen[PROGRESS]
        assert labeler.done or labeler.screen[PROMPT] not in mine, f"{labeler.name} is shown a prompt they ranked"

    def burst_3(labeler: Labeler) -> None:
        while not labeler.done:
            labeler.rank()

    assert all_at_once(labelers, burst_3, 2 * APP_DEADLINE) == []
    wait_for(lambda: (out / "instructgpt_run.json").exists(), APP_DEADLINE, "the run marker")
    assert app.stop() in (143, -signal.SIGTERM)

    rows = stored_rows(rankings)
    pairs = Counter((r["labeler_id"], r["prompt"]) for r in rows)
    acked = Counter((lab.name, p) for lab in labelers for p in lab.acked)
    unanswered = {(lab.name, p) for lab in labelers for p in lab.unanswered}
    stored_unacknowledged = set(pairs) - set(acked)
    seconds = sorted(s for lab in labelers for s in lab.ack_seconds)
    report = {
        "labelers": LABELERS,
        "prompts": ITEMS,
        "labelers_per_prompt": PER_PROMPT,
        "acknowledged": sum(acked.values()),
        "stored": len(rows),
        "unanswered_at_kill": len(unanswered),
        "stored_unacknowledged": len(stored_unacknowledged),
        "lost": sum(1 for pair in acked if pair not in pairs),
        "duplicated": sum(n - 1 for n in pairs.values() if n > 1),
        "acknowledged_twice": sum(n - 1 for n in acked.values() if n > 1),
        "median_ack_s": round(statistics.median(seconds), 3),
        "p95_ack_s": round(statistics.quantiles(seconds, n=20)[-1], 3),
    }
    print("labeling load:", json.dumps(report))
    if os.environ.get("INSTRUCTGPT_LOAD_REPORT"):
        Path(os.environ["INSTRUCTGPT_LOAD_REPORT"]).write_text(json.dumps(report, indent=2) + "\n")

    assert report["lost"] == 0 and report["duplicated"] == 0 and report["acknowledged_twice"] == 0
    assert len(rows) == ITEMS * PER_PROMPT
    assert stored_unacknowledged <= unanswered  # a row nobody was told of was a request the kill cut off
    per_prompt = Counter(r["prompt"] for r in rows)
    assert per_prompt == {p: PER_PROMPT for p in prompts}  # labelers_per_prompt held through the kill
    assert {r["responses"][0] for r in rows} <= {f"response {j} to prompt {i}" for i in range(ITEMS) for j in range(4)}
