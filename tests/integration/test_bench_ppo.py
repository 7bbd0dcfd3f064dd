"""The PPO benchmark's own pieces: the GPT-2-size world, the phase timers, the matched-KL interpolation.

The benchmark itself (two trainers, minutes to hours) is not run by the default suite; the slow test below runs
one update of the GPT-2-size mode with our trainer only (about 5 minutes on 2 loaded CPU cores):

    python -m pytest -q -m slow tests/integration/test_bench_ppo.py
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time

import pytest
import torch

from helpers import REPO, run_cli


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


gpt2_world = _load("gpt2_world")
bench_ppo = _load("bench_ppo")


def test_gpt2_world_models_have_gpt2_small_shape():
    from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

    config = gpt2_world.gpt2_small_config(eos_token_id=0)
    with torch.device("meta"):  # shapes only: no 500 MB of weights
        policy = GPT2LMHeadModel(config)
        reward = GPT2ForSequenceClassification(gpt2_world.gpt2_small_config(0, 0, num_labels=1))
    params = sum(p.numel() for p in policy.parameters())
    assert abs(params - 124_000_000) / 124_000_000 < 0.01
    assert params == gpt2_world.GPT2_SMALL_PARAMS  # GPT-2 small's exact count, tied embedding
    assert (config.n_layer, config.n_embd, config.n_head, config.vocab_size, config.n_positions) == (
        12,
        768,
        12,
        50257,
        1024,
    )
    assert reward.score.out_features == 1


def test_gpt2_world_prompts_span_their_lengths(tmp_path):
    from transformers import AutoTokenizer

    path = gpt2_world.write_prompts(tmp_path / "prompts.jsonl", 24, min_tokens=16, max_tokens=128, seed=3)
    tokenizer = AutoTokenizer.from_pretrained(gpt2_world.TINY_BASE)
    lengths = [len(tokenizer(json.loads(line)["prompt"])["input_ids"]) for line in path.read_text().splitlines()]
    assert len(lengths) == 24
    assert min(lengths) >= 16 and max(lengths) <= 128 + 8  # a prompt ends on a whole word
    assert max(lengths) - min(lengths) > 48  # lengths vary within a batch, as real prompts do
    again = gpt2_world.write_prompts(tmp_path / "again.jsonl", 24, min_tokens=16, max_tokens=128, seed=3)
    assert again.read_text() == path.read_text()  # seeded


def test_timers_charge_calls_to_their_phase():
    import types

    module = types.SimpleNamespace(work=lambda seconds, grad=False: time.sleep(seconds) or seconds)
    timers = bench_ppo.Timers()
    timers.wrap(module, "work", lambda seconds, grad=False: None if grad else "rollout")
    assert module.work(0.05) == 0.05
    module.work(0.2, grad=True)  # not timed
    module.work(0.05)
    assert set(timers.seconds) == {"rollout"}
    assert 0.09 <= timers.seconds["rollout"] < 0.2


def test_phases_leave_the_rest_to_the_update():
    timers = bench_ppo.Timers()
    timers.seconds = {"generation": 2.0, "reference": 1.0, "value": 1.0, "reward": 0.5, "update_forward": 3.0}
    phases = bench_ppo._phases(timers, 10.0)
    assert phases["update"] == pytest.approx(5.5)
    assert phases["update_forward"] == 3.0


def test_interpolate_reads_our_gain_at_trl_kl():
    frontier = [(2.0, 0.8), (0.5, 0.3), (1.0, 0.5)]
    assert bench_ppo.interpolate(frontier, 1.5) == pytest.approx(0.65)
    assert bench_ppo.interpolate(frontier, 0.5) == pytest.approx(0.3)
    assert bench_ppo.interpolate(frontier, 3.0) is None  # outside our range: no claim
    assert bench_ppo.interpolate([(1.0, 0.4)], 1.0) == 0.4


def test_matched_kl_reads_our_curve_of_the_same_kl_coef_at_every_trl_policy():
    """Each run is a curve from the SFT policy (0, 0) through its saved policies; TRL's saved and final policies are
    compared with ours at their own KL, on our run of the same kl_coef, never beyond our curve."""

    def run(trainer, kl_coef, points, final):
        return {
            "trainer_key": trainer,
            "kl_coef": kl_coef,
            "episodes": 512,
            "kl": final[0],
            "gain": final[1],
            "trajectory": [{"episodes": 128 * (i + 1), "kl": kl, "gain": gain} for i, (kl, gain) in enumerate(points)],
        }

    report = {
        "runs": {
            "ours@0.05": run("ours", 0.05, [(0.2, 0.4), (0.6, 0.9)], (1.0, 1.2)),
            "ours@0.2": run("ours", 0.2, [(0.1, 0.1)], (0.5, 0.3)),  # a worse curve: must not be the one read
            "trl@0.05": run("trl", 0.05, [(0.1, 0.1), (0.3, 0.5)], (1.5, 1.0)),
        }
    }
    assert bench_ppo.trajectory(report["runs"]["ours@0.2"]) == [(0.0, 0.0), (0.1, 0.1), (0.5, 0.3)]
    rows = bench_ppo.matched_kl(report)
    assert [(r["trl"], r["ours"], r["episodes"]) for r in rows] == [
        ("trl@0.05", "ours@0.05", 128),
        ("trl@0.05", "ours@0.05", 256),
        ("trl@0.05", "ours@0.05", 512),
    ]
    assert rows[0]["ours_gain"] == pytest.approx(0.2)  # halfway from (0, 0) to (0.2, 0.4)
    assert rows[1]["ours_gain"] == pytest.approx(0.4 + 0.5 * 0.25)  # a quarter of the way from (0.2, 0.4) to (0.6, 0.9)
    assert rows[2]["ours_gain"] is None  # TRL's final KL 1.5 is past our last policy's 1.0
    assert rows[1]["closest_kl"] == 0.2 and not rows[1]["within_10pct"]
    assert rows[2]["closest_kl"] == 1.0 and not rows[2]["within_10pct"]
    report["runs"]["trl@0.05"]["kl"] = 0.95
    assert bench_ppo.matched_kl(report)[2]["within_10pct"]  # 1.0 is within 10% of 0.95


@pytest.mark.slow
def test_gpt2_mode_runs_one_update_of_ours(tmp_path):
    """One PPO update at GPT-2 size with our trainer only: the mode runs end to end and times every phase."""
    work = tmp_path / "bench"
    proc = run_cli(
        [
            sys.executable,
            "benchmarks/bench_ppo.py",
            "--size",
            "gpt2",
            "--only",
            "ours",
            "--episodes",
            "8",
            "--work_dir",
            str(work),
        ],
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((work / "report.json").read_text())
    run = report["runs"]["ours"]
    assert run["episodes"] == 8 and run["updates"] == 1
    assert all(run["phases"][phase] > 0 for phase in bench_ppo.PHASES)
    assert run["phases"]["update_forward"] < run["phases"]["ppo_update"] <= run["phases"]["update"] + 1e-6
