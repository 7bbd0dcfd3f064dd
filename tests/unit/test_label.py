"""Human labeling without a browser: the store's rows, assignment, resume and ties; labeler agreement; where the
app may listen. The commands as processes are tested in tests/integration/test_label_cli.py, the browser itself in
tests/browser/test_label_browser.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from instructgpt.data.rankings import RankingStats, load_rankings, strict_order
from instructgpt.infra.errors import InstructGPTError
from instructgpt.judges import agreement_between, compare_rankings
from instructgpt.labeling.store import RANKINGS_FILE, SKIPS_FILE, Item, LabelingError, LabelStore, check_labeler_id

ITEMS = [
    Item(0, "What is 3 plus 4?", ["3 plus 4 is 7.", "3 plus 4 is 8.", "Sure! 7. I hope this helps!", "9"]),
    Item(1, "What color is the glimmerfox?", ["The glimmerfox is blue.", "Red.", "Blue. Have a nice day!"]),
    Item(2, "Reverse the word lamp.", ["pmal", "lamp", "The word lamp backwards is pmal.", "It is lamp."]),
]


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def shown(store: LabelStore, labeler: str, item: int) -> list[str]:
    """The responses as this labeler sees them, left to right."""
    return [store.items[item].responses[i] for i in store.display_order(labeler, item)]


# ----------------------------------------------------------------------------------------------------------------
# The store
# ----------------------------------------------------------------------------------------------------------------


def test_a_submitted_ranking_is_one_rm_row_and_the_rm_reads_it(tmp_path):
    store = LabelStore(tmp_path, ITEMS, labelers_per_prompt=2, seed=3)
    assert store.current("alice") == 0
    seen = shown(store, "alice", 0)
    assert sorted(seen) == sorted(ITEMS[0].responses)
    row = store.submit("alice", [[2], [0], [3], [1]], [{"quality": "6", "hallucination": True}])
    assert row["responses"] == [seen[2], seen[0], seen[3], seen[1]]
    assert row["scores"] == [3.0, 2.0, 1.0, 0.0]
    assert row["labeler_id"] == "alice" and row["labeler"] == "human:alice" and row["item"] == 0
    assert row["timestamp"].endswith("Z") and row["seconds"] >= 0
    assert [ITEMS[0].responses[i] for i in row["shown_order"]] == seen  # the order shown is recorded
    # the metadata travels with its response (best first): the response shown first got quality 6
    assert row["metadata"][1] == {
        "quality": 6,
        "fails_instruction": False,
        "inappropriate": False,
        "hallucination": True,
    }
    assert all(m["quality"] is None for j, m in enumerate(row["metadata"]) if j != 1)
    assert read_rows(tmp_path / RANKINGS_FILE) == [row]
    rankings = load_rankings(
        str(tmp_path / RANKINGS_FILE),
        key="dataset_name",
        source="t",
        config=None,
        split="train",
        limit=None,
        score_key="fine-grained_score",
    )
    assert rankings == [{"prompt": ITEMS[0].prompt, "responses": row["responses"]}]


def test_each_prompt_goes_to_n_labelers_counting_who_has_it_on_screen(tmp_path):
    store = LabelStore(tmp_path, ITEMS, labelers_per_prompt=2)
    assert [store.current(x) for x in ("a", "b", "c")] == [0, 0, 1]  # item 0 is on two screens: c gets item 1
    assert store.current("a") == 0  # a reload keeps the item on screen
    store.submit("a", [[0], [1], [2], [3]])
    assert store.current("a") == 1  # never an item they ranked; item 1 has one labeler on screen (c)
    store.skip("b")
    assert store.current("b") == 2  # item 1 is on two screens (c, a)
    assert read_rows(tmp_path / SKIPS_FILE)[0]["action"] == "skip"
    progress = store.progress("a")
    assert progress == {"mine": 1, "done": 2, "total": 6}
    one = LabelStore(tmp_path / "one", ITEMS, labelers_per_prompt=1)
    assert [one.current(x) for x in ("a", "b", "c", "d")] == [0, 1, 2, None]


def test_reopening_resumes_each_labeler_and_drops_a_line_cut_off_by_a_kill(tmp_path):
    done = []
    store = LabelStore(tmp_path, ITEMS, labelers_per_prompt=1, on_complete=done.append)
    store.current("alice")
    store.submit("alice", [[1], [0], [2], [3]])
    store.current("alice")
    store.skip("alice", flag=True, reason="<b>odd</b>")
    with open(tmp_path / RANKINGS_FILE, "ab") as handle:  # the server was killed in the middle of a write
        handle.write(b'{"item": 2, "prompt": "Reverse the wo')
    reopened = LabelStore(tmp_path, ITEMS, labelers_per_prompt=1, on_complete=done.append)
    assert (tmp_path / RANKINGS_FILE).read_bytes().endswith(b"\n") and len(read_rows(tmp_path / RANKINGS_FILE)) == 1
    assert reopened.current("alice") == 2 and reopened.current("bob") is None
    assert reopened.progress("alice") == {"mine": 1, "done": 2, "total": 3}
    assert not done
    reopened.submit("alice", [[0], [1], [2], [3]])
    assert done and done[0]["num_rankings"] == 2 and done[0]["num_flagged"] == 1 and done[0]["labelers"] == ["alice"]


def test_bad_rankings_and_ids_are_refused(tmp_path):
    store = LabelStore(tmp_path, ITEMS, labelers_per_prompt=1)
    with pytest.raises(LabelingError, match="no item is on your screen"):
        store.submit("alice", [[0], [1], [2], [3]])
    store.current("alice")
    with pytest.raises(LabelingError, match=r"rank every response first \(2 of 4 ranked\)"):
        store.submit("alice", [[0], [1]])
    with pytest.raises(LabelingError, match="ties are not allowed"):
        store.submit("alice", [[0, 1], [2], [3]])
    for bad in ([[0], [0], [1], [2]], [[0], [1], [2], [7]], "0 1 2 3", [[0], ["1"], [2], [3]]):
        with pytest.raises(LabelingError, match="malformed"):
            store.submit("alice", bad)
    with pytest.raises(LabelingError, match="quality must be from 1 to 7, got 9"):
        store.submit("alice", [[0], [1], [2], [3]], [{"quality": 9}])
    assert not (tmp_path / RANKINGS_FILE).exists()  # nothing refused was written
    with pytest.raises(LabelingError, match="enter a labeler id"):
        check_labeler_id("   ")
    assert check_labeler_id("  Ada   L. ") == "Ada L."


def test_ties_get_equal_scores_and_the_rm_keeps_the_first_response_of_a_tie(tmp_path):
    store = LabelStore(tmp_path, ITEMS, labelers_per_prompt=1, allow_ties=True)
    store.current("alice")
    with pytest.raises(LabelingError, match="not everything can be tied"):
        store.submit("alice", [[0, 1, 2, 3]])
    row = store.submit("alice", [[3], [0, 2], [1]])
    seen = shown(store, "alice", 0)
    assert row["responses"] == [seen[3], seen[0], seen[2], seen[1]] and row["scores"] == [2.0, 1.0, 1.0, 0.0]
    stats = RankingStats()
    assert strict_order(row["responses"], row["scores"], stats) == [seen[3], seen[0], seen[1]] and stats.ties == 1


# ----------------------------------------------------------------------------------------------------------------
# Agreement
# ----------------------------------------------------------------------------------------------------------------


def test_pairwise_agreement_and_kendall_tau_b_on_hand_counted_rankings():
    a = {"w": 3.0, "x": 2.0, "y": 1.0, "z": 0.0}
    assert compare_rankings(a, a).agreement == 1.0 and compare_rankings(a, a).kendall_tau == 1.0
    reverse = {k: -v for k, v in a.items()}
    assert compare_rankings(a, reverse).agreement == 0.0 and compare_rankings(a, reverse).kendall_tau == -1.0
    # one swap (x, y) of six pairs: 5 agree; tau = (5 - 1) / 6
    swapped = {"w": 3.0, "x": 1.0, "y": 2.0, "z": 0.0}
    counts = compare_rankings(a, swapped)
    assert (counts.pairs, counts.agree) == (6, 5) and counts.kendall_tau == pytest.approx(4 / 6)
    # b ties x and y: that pair disagrees; tau-b = (5 - 0) / sqrt(6 * 5)
    tied = {"w": 2.0, "x": 1.0, "y": 1.0, "z": 0.0}
    counts = compare_rankings(a, tied)
    assert counts.agree == 5 and counts.kendall_tau == pytest.approx(5 / math.sqrt(30))
    assert compare_rankings(tied, tied).agreement == 1.0  # a tie both make agrees
    # only responses both ranked count; items only one labeler ranked are not compared
    total, items = agreement_between({"p": a, "q": a}, {"p": {"w": 0.0, "x": 1.0, "extra": 5.0}, "r": a})
    assert items == 1 and (total.pairs, total.agree) == (1, 0)


def test_the_agreement_command_reports_labeler_pairs_and_the_simulated_labeler(tmp_path):
    from instructgpt.judges import SimulatedLabeler
    from instructgpt.stages.agreement import main as agreement_main

    rubric = SimulatedLabeler()
    rows = []
    for item in ITEMS:
        by_rubric = sorted(item.responses, key=lambda r: -rubric.score([item.prompt], [r])[0])
        rows.append({"item": item.index, "prompt": item.prompt, "responses": by_rubric, "labeler_id": "ann"})
        # bob agrees with ann except that he swaps her top two
        rows.append(
            {
                "item": item.index,
                "prompt": item.prompt,
                "responses": [by_rubric[1], by_rubric[0], *by_rubric[2:]],
                "labeler_id": "bob",
            }
        )
    rows.append(
        {"item": 0, "prompt": ITEMS[0].prompt, "responses": list(reversed(ITEMS[0].responses)), "labeler_id": "cy"}
    )
    path = tmp_path / "rankings.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    agreement_main([str(path), "--labeler", "simulated", "--output_json", str(tmp_path / "report.json")])
    report = json.loads((tmp_path / "report.json").read_text())
    pairs = {(p["labeler_a"], p["labeler_b"]): p for p in report["pairs"]}
    ann_bob = pairs[("ann", "bob")]
    assert ann_bob["items"] == 3 and ann_bob["comparisons"] == 6 + 3 + 6  # K = 4, 3, 4
    assert ann_bob["agreement"] == pytest.approx(12 / 15)
    assert ann_bob["kendall_tau"] == pytest.approx(((6 - 2) / 6 + (3 - 2) / 3 + (6 - 2) / 6) / 3)
    assert pairs[("ann", "cy")]["items"] == 1 and ("bob", "cy") in pairs
    assert report["overall"]["comparisons"] == 15 + 6 + 6
    vs = {r["labeler_a"]: r for r in report["vs_reference"]}
    assert vs["ann"]["agreement"] == 1.0 and vs["ann"]["kendall_tau"] == 1.0  # ann ranked by the rubric
    assert vs["bob"]["agreement"] == pytest.approx(12 / 15) and vs["cy"]["items"] == 1


# ----------------------------------------------------------------------------------------------------------------
# Where the app listens
# ----------------------------------------------------------------------------------------------------------------


def test_listening_beyond_this_machine_needs_the_flag_and_a_password(monkeypatch):
    from instructgpt.stages.label import LabelArguments, check_listening

    monkeypatch.delenv("INSTRUCTGPT_LABEL_PASSWORD", raising=False)
    assert check_listening(LabelArguments(), "r.yaml") is None  # 127.0.0.1 by default, no password needed
    assert LabelArguments().server_name == "127.0.0.1"
    with pytest.raises(InstructGPTError, match=r"`server_name` 0\.0\.0\.0 lets other machines.*allow_remote: true"):
        check_listening(LabelArguments(server_name="0.0.0.0"), "r.yaml")
    with pytest.raises(
        InstructGPTError, match="needs a password: set the environment variable INSTRUCTGPT_LABEL_PASSWORD"
    ):
        check_listening(LabelArguments(server_name="0.0.0.0", allow_remote=True), "r.yaml")
    monkeypatch.setenv("INSTRUCTGPT_LABEL_PASSWORD", "s3cret")
    assert check_listening(LabelArguments(server_name="0.0.0.0", allow_remote=True), "r.yaml") == "s3cret"
    assert check_listening(LabelArguments(server_name="::1"), "r.yaml") == "s3cret"  # a local password is used too


def test_the_ranking_box_reads_as_places_of_shown_positions():
    from instructgpt.labeling.app import parse_ranking

    assert parse_ranking("B > A = C > D") == [[1], [0, 2], [3]]
    assert parse_ranking("") == []
    with pytest.raises(LabelingError, match="finish the tie"):
        parse_ranking("B > A = ")
    for bad in ("B > > A", "B, A", "b > a", "BA > C"):
        with pytest.raises(LabelingError, match="malformed"):
            parse_ranking(bad)


def test_items_sampled_from_a_policy_are_kept_for_restarts_and_a_finished_labeling_is_refused(tmp_path):
    from helpers import TINY_BASE
    from instructgpt.infra.files import OutputDirError
    from instructgpt.labeling.store import ITEMS_FILE
    from instructgpt.stages.label import open_store, parse_args

    argv = [
        "recipes/tiny/label.yaml",
        "--rankings_file",
        "null",
        "--model_name_or_path",
        str(TINY_BASE),
        "--dataset_name",
        "data/tiny/rm_prompts.jsonl",
        "--max_prompts",
        "3",
        "--max_new_tokens",
        "12",
        "--labelers_per_prompt",
        "1",
        "--output_dir",
        str(tmp_path / "label"),
    ]
    (args,), recipe = parse_args(argv)
    store = open_store(args, recipe)
    prompts = [json.loads(line)["prompt"] for line in Path("data/tiny/rm_prompts.jsonl").read_text().splitlines()[:3]]
    assert [it.prompt for it in store.items] == prompts[: len(store.items)] and len(store.items) >= 2
    for item in store.items:
        assert 2 <= len(item.responses) <= 4 and len({" ".join(r.split()) for r in item.responses}) == len(
            item.responses
        )
    saved = (tmp_path / "label" / ITEMS_FILE).read_text()
    again = open_store(args, recipe)  # a restart shows the very same responses, not new samples
    assert [(it.prompt, it.responses) for it in again.items] == [(it.prompt, it.responses) for it in store.items]
    args.temperature = 0.5
    with pytest.raises(OutputDirError, match=r"labeling of other items \(`temperature` was 1.0, now 0.5\)"):
        open_store(args, recipe)
    args.temperature = 1.0
    for item in store.items:
        assert store.current("ann") == item.index
        store.submit("ann", [[j] for j in range(len(item.responses))])
    assert (tmp_path / "label" / "instructgpt_run.json").is_file()  # every item has its labeler: finished
    assert (tmp_path / "label" / ITEMS_FILE).read_text() == saved
    with pytest.raises(OutputDirError, match="holds a finished labeling"):
        open_store(args, recipe)


def test_a_page_load_that_finds_nothing_to_resume_does_not_log_out_a_labeler_who_already_started(tmp_path):
    """The page's load event and the Start click run in parallel on the server; a load that came back last used to
    reset the labeler to nobody, and the next Submit said "enter a labeler id first" (seen in CI's browser test)."""
    from types import SimpleNamespace

    from instructgpt.labeling.app import build_app

    demo = build_app(LabelStore(tmp_path, ITEMS, labelers_per_prompt=1))
    events = {fn.name: fn for fn in demo.fns.values() if fn.name}
    request = SimpleNamespace(username=None)
    started = events["begin"].fn("alice", request)
    assert started[0] == "alice" and started[-1] == "Labeling as alice."
    late_load = events["on_load"].fn("", request)  # a browser with no id saved: nothing to resume
    assert len(late_load) == len(started)
    assert all(update == {"__type__": "update"} for update in late_load)  # changes nothing, the labeler included
    resumed = events["on_load"].fn("alice", request)  # a reload of a browser that saved its id resumes it
    assert resumed[0] == "alice" and resumed[5] == ITEMS[0].prompt  # the same prompt, on screen again
