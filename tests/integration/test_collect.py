"""Step 2 end to end on the tiny world: sample K responses from the SFT model, have the simulated labeler rank
them, train the reward model on the rankings; plus generation, resuming, deduplication and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import FAST_RM, NUM_PROMPTS, TINY_DATA, accelerate_launch, collect, run_cli
from instructgpt.data import DataError
from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.files import RUN_MARKER, OutputDirError
from instructgpt.modeling.reward import RewardModelError, load_reward_model, score_responses
from instructgpt.stages.collect import RANKINGS_FILE

# The end-to-end margin: the reward model must order held-out comparisons of the (noisy) simulated labeler
# correctly at least this often, against 50% for a reward model that learned nothing.
MIN_HELD_OUT_ACCURACY = 0.60
MIN_TWO_PROCESS_ACCURACY = 0.55


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------


def test_batched_left_padded_generation_matches_one_prompt_at_a_time(sft_model):
    from transformers import AutoModelForCausalLM

    from instructgpt.modeling import load_tokenizer
    from instructgpt.sampling import generate_responses

    model = AutoModelForCausalLM.from_pretrained(sft_model)
    tokenizer = load_tokenizer(str(sft_model))
    prompts = ["What is 3 plus 4?", "Please answer: what color is the glimmerfox? It is a long question.", "Hi"]
    batched = generate_responses(
        model, tokenizer, prompts, num_samples=2, max_new_tokens=24, temperature=0.0, batch_size=6
    )
    single = [generate_responses(model, tokenizer, [p], max_new_tokens=24, temperature=0.0)[0][0] for p in prompts]
    assert [len(r) for r in batched] == [2, 2, 2]
    assert [r[0] for r in batched] == single and [r[1] for r in batched] == single  # greedy: both samples agree
    assert all(tokenizer.eos_token not in r for rs in batched for r in rs)  # responses end before EOS
    sampled_a = generate_responses(model, tokenizer, prompts, num_samples=3, max_new_tokens=16, seed=7)
    sampled_b = generate_responses(model, tokenizer, prompts, num_samples=3, max_new_tokens=16, seed=7)
    assert sampled_a == sampled_b  # seeded


# ----------------------------------------------------------------------------------------------------------------
# Collection
# ----------------------------------------------------------------------------------------------------------------


def test_collection_writes_distinct_best_first_rankings(collected):
    from instructgpt.judges import SimulatedLabeler

    out, metrics = collected
    rows = read_jsonl(out / RANKINGS_FILE)
    assert metrics["num_prompts"] == NUM_PROMPTS and len(rows) == metrics["num_rankings"] > 0.9 * NUM_PROMPTS
    prompts = [json.loads(line)["prompt"] for line in (TINY_DATA / "rm_prompts.jsonl").read_text().splitlines()]
    rubric = SimulatedLabeler(noise=0.0)
    for row in rows:
        assert row["prompt"] == prompts[row["prompt_index"]]
        assert 2 <= len(row["responses"]) <= 4
        assert len({" ".join(r.split()) for r in row["responses"]}) == len(row["responses"])  # deduplicated
        assert row["scores"] == sorted(row["scores"], reverse=True)  # best first
        assert row["labeler"] == metrics["labeler"]
    # the noisy labeler's best response is usually also the best by the noiseless rubric
    agree = sum(
        max(rubric.score([r["prompt"]] * len(r["responses"]), r["responses"]))
        == rubric.score([r["prompt"]], [r["responses"][0]])[0]
        for r in rows
    )
    assert agree > 0.5 * len(rows)
    marker = json.loads((out / RUN_MARKER).read_text())
    assert marker["stage"] == "collect" and marker["metrics"]["num_rankings"] == len(rows)
    assert not list(out.glob("rankings.part-*"))  # merged


def test_finished_collection_is_refused(collected, sft_model):
    out, _ = collected
    before = (out / RANKINGS_FILE).read_bytes()
    with pytest.raises(OutputDirError, match="already holds a finished collection; it was not touched"):
        collect(out, sft_model, "--max_prompts", "4")
    assert (out / RANKINGS_FILE).read_bytes() == before


def test_interrupted_collection_resumes_where_it_stopped(collected, sft_model, tmp_path, capsys):
    done, _ = collected
    out = tmp_path / "resume"
    out.mkdir()
    rows = read_jsonl(done / RANKINGS_FILE)[:5]
    # an interrupted run: five prompts written by process 0, and a sixth line cut off mid-write
    (out / "rankings.part-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"prompt_index": 5, "pro')
    metrics = collect(out, sft_model, "--max_prompts", "8")
    printed = capsys.readouterr().out
    assert "resuming: 5 of 8 prompts already collected" in printed and "cut off by an interruption" in printed
    merged = read_jsonl(out / RANKINGS_FILE)
    assert [r["prompt_index"] for r in merged][:5] == [r["prompt_index"] for r in rows]
    assert merged[:5] == rows  # the earlier work is kept as it was, not redone
    assert metrics["num_prompts"] == 8

    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(out / RANKINGS_FILE, other / "rankings.part-0.jsonl")
    with pytest.raises(OutputDirError, match="holds rankings for other prompts"):
        collect(other, sft_model, "--dataset_name", str(TINY_DATA / "ppo_prompts.jsonl"), "--max_prompts", "8")


def test_identical_samples_are_discarded_and_a_prompt_without_two_is_skipped(sft_model, tmp_path):
    from instructgpt.infra.guards import UnsoundOutput

    # greedy decoding samples the same response every time: one distinct response per prompt, so none can be ranked,
    # and a collection without a single ranking is not finished
    with pytest.raises(UnsoundOutput, match="not one ranking"):
        collect(
            tmp_path / "greedy", sft_model, "--max_prompts", "3", "--temperature", "0", "--max_sampling_rounds", "2"
        )
    rows = read_jsonl(tmp_path / "greedy" / "rankings.part-0.jsonl")
    assert [r["prompt_index"] for r in rows] == [0, 1, 2] and all(r["skipped"] for r in rows)
    assert all(r["num_samples"] == 4 + 3 and r["num_discarded"] == 3 + 3 for r in rows)
    assert not (tmp_path / "greedy" / RANKINGS_FILE).exists()


def test_bad_collection_inputs_are_refused_before_anything_is_written(sft_model, tmp_path):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "What is 1 plus 1?"}\n{"prompt": " "}\n')
    with pytest.raises(DataError, match=r"prompts\.jsonl\) line 2: empty `prompt`"):
        collect(tmp_path / "a", sft_model, "--dataset_name", str(bad))
    with pytest.raises(InstructGPTError, match=r"`labeler`: unknown labeler 'oracle'"):
        collect(tmp_path / "b", sft_model, "--labeler", "oracle")
    with pytest.raises(RewardModelError, match=r"`labeler`: .* holds a GPT2LMHeadModel \(a causal language model"):
        collect(tmp_path / "c", sft_model, "--labeler", f"reward_model:{sft_model}")
    from instructgpt.infra.parser import RecipeError

    with pytest.raises(RecipeError, match=r"`num_responses` must be at least 2, got 1"):
        collect(tmp_path / "d", sft_model, "--num_responses", "1")
    assert not any((tmp_path / name).exists() for name in "abcd")


# ----------------------------------------------------------------------------------------------------------------
# The reward model trained on the collected rankings
# ----------------------------------------------------------------------------------------------------------------


def test_reward_model_beats_chance_on_held_out_comparisons(trained_rm):
    out, metrics = trained_rm
    assert metrics["eval_pairwise_accuracy"] >= MIN_HELD_OUT_ACCURACY, metrics
    assert metrics["eval_kendall_tau"] > 0.0
    marker = json.loads((out / RUN_MARKER).read_text())
    assert marker["metrics"]["eval_pairwise_accuracy"] == metrics["eval_pairwise_accuracy"]


def test_held_out_accuracy_is_also_measured_against_the_noiseless_rubric(trained_rm):
    """rm.yaml's `gold_labeler: simulated`: the held-out responses judged again without noise."""
    out, metrics = trained_rm
    assert metrics["gold_labeler"] == "simulated"
    # the same model on the same held-out pairs as the trainer's evaluation, computed independently
    assert metrics["eval_data_pairwise_accuracy"] == pytest.approx(metrics["eval_pairwise_accuracy"], abs=0.02)
    assert 0.5 < metrics["eval_gold_pairwise_accuracy"] <= 1.0
    # the noisy labels disagree with the noiseless rubric now and then (data/README.md: about 84% agreement)
    assert 0.7 < metrics["eval_gold_agrees_with_data"] < 0.97
    assert 0 < metrics["eval_gold_num_comparisons"] <= metrics["eval_num_comparisons"]
    marker = json.loads((out / RUN_MARKER).read_text())
    assert marker["metrics"]["eval_gold_pairwise_accuracy"] == metrics["eval_gold_pairwise_accuracy"]


def test_stored_shift_centres_the_demonstrations_when_loaded_fresh(trained_rm):
    out, metrics = trained_rm
    model, tokenizer, shift = load_reward_model(str(out))
    assert shift == pytest.approx(metrics["reward_shift"]) and shift != 0.0
    demos = read_jsonl(TINY_DATA / "sft_eval.jsonl")
    scores = score_responses(model, tokenizer, [d["prompt"] for d in demos], [d["completion"] for d in demos])
    assert abs(sum(scores) / len(scores)) < 1e-4
    raw = score_responses(
        model, tokenizer, [d["prompt"] for d in demos[:4]], [d["completion"] for d in demos[:4]], shift=0.0
    )
    assert raw == pytest.approx([s + shift for s in scores[:4]], abs=1e-5)


def test_reward_model_labeler_ranks_like_its_scores(trained_rm, collected):
    from instructgpt.judges import make_labeler

    labeler = make_labeler(f"reward_model:{trained_rm[0]}")
    row = read_jsonl(collected[0] / RANKINGS_FILE)[0]
    ranking = labeler.rank(row["prompt"], row["responses"])
    assert [ranking.scores[i] for i in ranking.order] == sorted(ranking.scores, reverse=True)
    assert labeler.best_of_n([row["prompt"]], [row["responses"]]) == [row["responses"][ranking.order[0]]]


# ----------------------------------------------------------------------------------------------------------------
# Command line and two processes
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.distributed
def test_collect_and_rm_under_two_process_accelerate_launch(sft_model, tmp_path):
    collect_dir = tmp_path / "collect"
    result = run_cli(
        accelerate_launch(
            "-m",
            "instructgpt",
            "recipes/tiny/collect.yaml",
            "--model_name_or_path",
            str(sft_model),
            "--output_dir",
            str(collect_dir),
            "--max_prompts",
            str(NUM_PROMPTS),
            "--report_to",
            "none",
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_jsonl(collect_dir / RANKINGS_FILE)
    assert [r["prompt_index"] for r in rows] == sorted({r["prompt_index"] for r in rows})
    assert len(rows) > 0.9 * NUM_PROMPTS
    # the two processes' shares add up to exactly the prompts one process collects: each once, none missing
    marker = json.loads((collect_dir / RUN_MARKER).read_text())["metrics"]
    assert marker["num_prompts"] == NUM_PROMPTS and marker["num_processes"] == 2

    rm_dir = tmp_path / "rm"
    result = run_cli(
        accelerate_launch(
            "-m",
            "instructgpt",
            "recipes/tiny/rm.yaml",
            "--model_name_or_path",
            str(sft_model),
            "--output_dir",
            str(rm_dir),
            "--dataset_name",
            str(collect_dir / RANKINGS_FILE),
            *FAST_RM,
            "--eval_fraction",
            "0.25",  # 40 held-out prompts (240 comparisons), as in the trained_rm fixture
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "process 0/2" in result.stdout or "process 0/2" in result.stderr
    metrics = json.loads((rm_dir / RUN_MARKER).read_text())["metrics"]
    assert metrics["num_processes"] == 2
    # above chance by more than its standard error (about 3 points on 240 comparisons); two processes halve the
    # optimizer steps of the 60-step SFT model's small collection, so the one-process margin is not expected here
    assert metrics["eval_pairwise_accuracy"] >= MIN_TWO_PROCESS_ACCURACY, metrics


def test_console_entry_points_report_bad_input_in_one_line(tmp_path):
    result = run_cli(
        [
            "instructgpt",
            "collect",
            "recipes/tiny/collect.yaml",
            "--output_dir",
            str(tmp_path / "x"),
            "--model_name_or_path",
            str(tmp_path / "missing"),
        ]
    )
    assert result.returncode == 2 and "`model_name_or_path`: no model directory" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_cli(
        [
            "instructgpt-rm",
            "recipes/tiny/rm.yaml",
            "--output_dir",
            str(tmp_path / "y"),
            "--model_name_or_path",
            "data/tiny/base-model",
            "--dataset_name",
            str(tmp_path / "none.jsonl"),
        ]
    )
    assert result.returncode == 2 and "none.jsonl not found" in result.stderr
