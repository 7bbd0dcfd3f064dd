"""The pipeline: wiring between stages, skip and resume, rounds, staleness, and a short end-to-end run.

The skip/resume/wiring tests swap every stage module for a cheap fake (``fake_stage`` below, registered in
``instructgpt.cli.STAGES``) that checkpoints, can be interrupted, resumes, and logs each call; so they test the
pipeline's logic in milliseconds. The smoke test runs the real stages with tiny settings.
"""

from __future__ import annotations

import json
import math
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from instructgpt import cli
from instructgpt.infra.files import RUN_MARKER, is_complete
from instructgpt.stages.pipeline import PipelineError, parse_args, run_pipeline
from instructgpt.stages.pipeline import main as pipeline_main
from instructgpt.stages.pipeline.settings import cli_value

FAKE_STAGE = textwrap.dedent('''
    """A stand-in for any stage: `steps` checkpoints, an optional interruption, resume, a call log."""
    import json
    import os
    from dataclasses import dataclass
    from pathlib import Path

    from instructgpt.infra.files import last_checkpoint
    from instructgpt.infra.outputs import mark_complete, prepare_output_dir
    from instructgpt.infra.parser import RecipeParser, recipe_stage


    @dataclass
    class FakeArgs:
        output_dir: str | None = None
        model_name_or_path: str | None = None
        dataset_name: str | None = None
        reward_model_path: str | None = None
        if_output_exists: str = "resume"
        steps: int = 3
        crash_at: int | None = None
        log: str | None = None
        report_to: str = "none"
        project: str = "p"
        run_name: str | None = None


    def arguments():
        return (FakeArgs,)


    def main(argv):
        from instructgpt.infra.entrypoint import run_cli

        run_cli(lambda: run(RecipeParser(recipe_stage(argv[0]), arguments()).parse(argv)))


    def run(parsed):
        (args,), recipe, stage = parsed.parts, parsed.recipe, parsed.recipe.stage
        out = Path(args.output_dir)
        resume = prepare_output_dir(out, args.if_output_exists, recipe.source)
        start = int(resume.name.split("-")[1]) if resume else 0
        with open(args.log, "a") as handle:
            handle.write(json.dumps({"stage": stage, "output_dir": args.output_dir, "resumed_from": start,
                                     "model": args.model_name_or_path, "data": args.dataset_name,
                                     "reward_model": args.reward_model_path, "run_name": args.run_name,
                                     "group": os.environ.get("WANDB_RUN_GROUP")}) + "\\n")
        for step in range(start + 1, args.steps + 1):
            if args.crash_at == step:
                raise KeyboardInterrupt(f"{stage} interrupted before step {step}")
            (out / f"checkpoint-{step}").mkdir(parents=True)
            (out / f"checkpoint-{step}" / "state.txt").write_text(str(step))
            (out / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")  # a checkpoint's last file
        if stage == "collect":
            (out / "rankings.jsonl").write_text(json.dumps({"prompt": str(out), "responses": ["a", "b"]}) + "\\n")
        if stage == "rm" and args.dataset_name:
            (out / "trained_on.txt").write_text(Path(args.dataset_name).read_text())
        mark_complete(out, stage, recipe.data, {"steps": args.steps})
''')


@pytest.fixture
def fake_stages(tmp_path, monkeypatch):
    """Every training stage runs the fake module; returns a function that reads the call log."""
    (tmp_path / "fake_stage.py").write_text(FAKE_STAGE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("fake_stage", None)
    for stage in ("pretrain", "sft", "collect", "rm", "ppo", "dpo", "rloo", "grpo"):
        monkeypatch.setitem(cli.STAGES, stage, "fake_stage")
    log = tmp_path / "calls.jsonl"
    for stage in ("pretrain", "sft", "collect", "rm", "ppo", "dpo", "rloo", "grpo"):
        (tmp_path / f"{stage}.yaml").write_text(f"stage: {stage}\nsteps: 3\nlog: {log}\nrun_name: fake-{stage}\n")

    def calls() -> list[dict]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return calls


def write_pipeline(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        stage: pipeline
        output_dir: {tmp_path / "run"}
        pretrain: {tmp_path / "pretrain.yaml"}
        sft: {tmp_path / "sft.yaml"}
        collect: {tmp_path / "collect.yaml"}
        rm: {tmp_path / "rm.yaml"}
        ppo: {tmp_path / "ppo.yaml"}
        eval: null
        report_to: none
        """)
        + extra
    )
    return path


def run(argv: list[str]) -> dict:
    args, recipe, per_stage = parse_args(argv)
    return run_pipeline(args, recipe, per_stage)


def test_wires_each_stage_to_the_outputs_before_it(tmp_path, fake_stages):
    run([str(write_pipeline(tmp_path))])
    root = tmp_path / "run"
    by_stage = {c["stage"]: c for c in fake_stages()}
    assert [c["stage"] for c in fake_stages()] == ["pretrain", "sft", "collect", "rm", "ppo"]
    assert by_stage["sft"]["model"] == str(root / "pretrain")
    assert by_stage["collect"]["model"] == str(root / "sft")
    assert by_stage["rm"]["model"] == str(root / "sft")
    assert by_stage["rm"]["data"] == str(root / "collect" / "rankings.jsonl")
    assert by_stage["ppo"]["model"] == str(root / "sft")
    assert by_stage["ppo"]["reward_model"] == str(root / "rm")
    for stage in ("pretrain", "sft", "collect", "rm", "ppo"):
        assert is_complete(root / stage)
    assert is_complete(root)  # the pipeline's own marker
    state = json.loads((root / "pipeline.json").read_text())
    assert set(state["stages"]) == {"pretrain", "sft", "collect", "rm", "ppo"}
    assert all(s["seconds"] >= 0 for s in state["stages"].values())
    # one W&B group for every stage, only while the pipeline runs
    assert {c["group"] for c in fake_stages()} == {state["wandb_group"]}
    assert os.environ.get("WANDB_RUN_GROUP") != state["wandb_group"]


def test_interrupted_stage_resumes_and_finished_stages_are_not_rerun(tmp_path, fake_stages):
    recipe = str(write_pipeline(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        run([recipe, "--sft.crash_at", "3"])  # SFT dies after writing checkpoint-2
    root = tmp_path / "run"
    assert is_complete(root / "pretrain") and not is_complete(root / "sft")
    assert (root / "sft" / "checkpoint-2").is_dir()
    assert [c["stage"] for c in fake_stages()] == ["pretrain", "sft"]

    run([recipe])
    calls = fake_stages()
    assert [c["stage"] for c in calls] == ["pretrain", "sft", "sft", "collect", "rm", "ppo"]  # pretrain not rerun
    assert calls[2]["resumed_from"] == 2  # the second SFT call continued from its last checkpoint
    assert all(is_complete(root / s) for s in ("pretrain", "sft", "collect", "rm", "ppo"))
    assert json.loads((root / "pipeline.json").read_text())["stages"]["sft"]["resumed"] is True

    run([recipe])  # everything finished: nothing runs again
    assert len(fake_stages()) == 6


def test_a_stage_finished_before_its_input_was_retrained_is_refused(tmp_path, fake_stages):
    recipe = str(write_pipeline(tmp_path))
    run([recipe])
    root = tmp_path / "run"
    later = time.time() + 10
    os.utime(root / "sft" / RUN_MARKER, (later, later))  # as if SFT had been trained again after the RM
    with pytest.raises(PipelineError, match=r"collect.*finished before its input .*sft"):
        run([recipe])


def test_rounds_collect_from_the_last_policy_and_retrain_on_all_comparisons(tmp_path, fake_stages):
    run([str(write_pipeline(tmp_path, "rounds: 2\n"))])
    root = tmp_path / "run"
    calls = fake_stages()
    assert [c["stage"] for c in calls] == ["pretrain", "sft", "collect", "rm", "ppo", "collect", "rm", "ppo"]
    round2 = calls[5:]
    assert round2[0]["model"] == str(root / "ppo")  # collect on round 1's PPO policy
    assert round2[0]["output_dir"] == str(root / "round2" / "collect")
    assert round2[1]["model"] == str(root / "sft")
    assert round2[2]["model"] == str(root / "sft") and round2[2]["reward_model"] == str(root / "round2" / "rm")
    assert round2[1]["run_name"] == "fake-rm-round2"
    trained_on = (root / "round2" / "rm" / "trained_on.txt").read_text().splitlines()
    assert [json.loads(line)["prompt"] for line in trained_on] == [
        str(root / "collect"),
        str(root / "round2" / "collect"),
    ]


def test_embedded_stage_recipe_and_command_line_overrides(tmp_path, fake_stages):
    extra = f"sft:\n  recipe: {tmp_path / 'sft.yaml'}\n  steps: 5\n"
    text = write_pipeline(tmp_path).read_text().replace(f"sft: {tmp_path / 'sft.yaml'}\n", "") + extra
    (tmp_path / "pipeline.yaml").write_text(
        text.replace(
            f"pretrain: {tmp_path / 'pretrain.yaml'}\n", f"pretrain:\n  steps: 1\n  log: {tmp_path / 'calls.jsonl'}\n"
        )
    )
    run([str(tmp_path / "pipeline.yaml"), "--ppo.steps", "2"])
    root = tmp_path / "run"
    assert sorted(p.name for p in (root / "sft").glob("checkpoint-*")) == [f"checkpoint-{i}" for i in range(1, 6)]
    assert sorted(p.name for p in (root / "ppo").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert sorted(p.name for p in (root / "pretrain").glob("checkpoint-*")) == ["checkpoint-1"]
    assert (root / "recipes" / "pretrain.yaml").is_file()  # the embedded recipe, written for the stage to parse


def test_bad_pipeline_recipes_get_clear_errors(tmp_path, fake_stages):
    recipe = write_pipeline(tmp_path)
    with pytest.raises(PipelineError, match=r"`sft`: `output_dir` is set by the pipeline"):
        run([str(recipe), "--sft.output_dir", "elsewhere"])
    with pytest.raises(Exception, match=r"--nosuchstage.steps"):
        run([str(recipe), "--nosuchstage.steps", "2"])
    (tmp_path / "bad.yaml").write_text(recipe.read_text().replace(str(tmp_path / "rm.yaml"), str(tmp_path / "no.yaml")))
    with pytest.raises(PipelineError, match=r"`rm`: stage recipe .*no.yaml not found"):
        run([str(tmp_path / "bad.yaml")])
    (tmp_path / "norm.yaml").write_text(recipe.read_text().replace(f"rm: {tmp_path / 'rm.yaml'}", "rm: null"))
    with pytest.raises(Exception, match=r"`ppo` needs `rm`"):
        run([str(tmp_path / "norm.yaml")])


def test_methods_start_from_the_same_sft_model_reward_model_and_rankings(tmp_path, fake_stages):
    from instructgpt.stages.pipeline.plan import Planner

    extra = (
        f"dpo: {tmp_path / 'dpo.yaml'}\nrloo: {tmp_path / 'rloo.yaml'}\ngrpo: {tmp_path / 'grpo.yaml'}\n"
        "methods: [ppo, dpo, rloo, grpo, best_of_4]\n"
    )
    recipe = write_pipeline(tmp_path, extra)
    run([str(recipe)])
    root = tmp_path / "run"
    by_stage = {c["stage"]: c for c in fake_stages()}
    assert [c["stage"] for c in fake_stages()] == ["pretrain", "sft", "collect", "rm", "ppo", "dpo", "rloo", "grpo"]
    assert by_stage["dpo"]["model"] == by_stage["rloo"]["model"] == by_stage["ppo"]["model"] == str(root / "sft")
    assert by_stage["grpo"]["model"] == str(root / "sft") and by_stage["grpo"]["reward_model"] == str(root / "rm")
    assert by_stage["dpo"]["data"] == by_stage["rm"]["data"] == str(root / "collect" / "rankings.jsonl")
    assert by_stage["rloo"]["reward_model"] == by_stage["ppo"]["reward_model"] == str(root / "rm")
    assert is_complete(root / "dpo") and is_complete(root / "rloo") and is_complete(root / "grpo")

    # the evaluation sees every method next to base and SFT, and sweeps PPO's and RLOO's checkpoints
    args, parsed, per_stage = parse_args([str(recipe), "--eval", '{"prompts": "p.jsonl"}'])
    _, settings = Planner(args, parsed, per_stage).plan()
    assert settings["models"] == [
        f"base={root / 'pretrain'}",
        f"sft={root / 'sft'}",
        f"ppo={root / 'ppo'}",
        f"dpo={root / 'dpo'}",
        f"rloo={root / 'rloo'}",
        f"grpo={root / 'grpo'}",
        f"best_of_4=best_of_4:{root / 'sft'}",
    ]
    assert settings["ppo_run"] == str(root / "ppo")
    assert settings["checkpoint_runs"] == [f"rloo={root / 'rloo'}", f"grpo={root / 'grpo'}"]

    # an explicit list chooses among the recipes given; the others are named in the log, not run
    args, parsed, per_stage = parse_args([str(recipe), "--methods", "[dpo]"])
    stages, _ = Planner(args, parsed, per_stage).plan()
    assert [s.stage for s in stages] == ["pretrain", "sft", "collect", "rm", "dpo"]


@pytest.mark.parametrize(
    "extra, message",
    [
        ("methods: [dpo]\n", r"`methods` lists dpo but `dpo` \(its stage recipe\) is not set"),
        ("methods: [ppo, best_of_0]\n", r"unknown method 'best_of_0'"),
        ("methods: [ppo, sgd]\n", r"unknown method 'sgd'"),
        ("methods: [ppo, ppo]\n", r"names a method twice"),
        ("methods: [ppo, best_of_4]\nrounds: 2\n", r"`rounds` > 1 runs InstructGPT's PPO loop only"),
    ],
)
def test_bad_methods_are_refused_with_the_reason(tmp_path, fake_stages, extra, message):
    recipe = write_pipeline(tmp_path, extra.replace("DPO", str(tmp_path / "dpo.yaml")))
    with pytest.raises(Exception, match=message):
        run([str(recipe)])
    assert fake_stages() == []


def test_a_bad_stage_recipe_stops_the_pipeline_before_any_stage_runs(tmp_path, fake_stages, capsys):
    (tmp_path / "rm.yaml").write_text("stage: rm\nsteps: 3\nunknown_key: 3\n")
    with pytest.raises(SystemExit) as exit_:
        pipeline_main([str(write_pipeline(tmp_path))])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "stage `rm`" in err and "unknown key `unknown_key`" in err and "Traceback" not in err
    assert fake_stages() == [] and not (tmp_path / "run" / "pretrain").exists()  # nothing trained first
    # a typo in a per-stage override of the last stage is caught before the first stage, too
    (tmp_path / "rm.yaml").write_text(f"stage: rm\nsteps: 3\nlog: {tmp_path / 'calls.jsonl'}\n")
    with pytest.raises(SystemExit):
        pipeline_main([str(write_pipeline(tmp_path)), "--ppo.stepz", "2"])
    assert "did you mean `steps`?" in capsys.readouterr().err and fake_stages() == []


def test_a_stage_that_fails_while_running_stops_the_pipeline_with_its_name(tmp_path, fake_stages, capsys):
    (tmp_path / "rm.yaml").write_text(f"stage: rm\nsteps: 3\nlog: {tmp_path / 'calls.jsonl'}\nmodel_name_or_path: x\n")
    with pytest.raises(SystemExit) as exit_:
        pipeline_main([str(write_pipeline(tmp_path)), "--rm.if_output_exists", "refuse"])
    assert exit_.value.code == 2
    assert "`if_output_exists` is set by the pipeline" in capsys.readouterr().err
    out = tmp_path / "run" / "rm"
    out.mkdir(parents=True)
    (out / "model.safetensors").write_text("a model trained elsewhere")
    with pytest.raises(SystemExit) as exit_:
        pipeline_main([str(write_pipeline(tmp_path))])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "stage `rm` failed" in err and "already holds a trained model" in err
    assert is_complete(tmp_path / "run" / "collect") and not is_complete(tmp_path / "run")


def test_cli_values_round_trip_through_the_stage_parser():
    from dataclasses import dataclass, field

    from instructgpt.infra.parser import RecipeParser, split_argv

    @dataclass
    class Args:
        a: list[str] = field(default_factory=list)
        b: bool = False
        c: float = 0.0
        d: str = ""
        e: int | None = 3

    values = {"a": ["x", "y z"], "b": True, "c": 1e-5, "d": "--looks like a flag\n### Response:", "e": None}
    _, raw = split_argv(["r.yaml"] + [f"--{k}={cli_value(v)}" for k, v in values.items()])
    (args,) = RecipeParser("test", (Args,)).build(raw, cli_keys=set(raw))
    assert (args.a, args.b, args.c, args.d, args.e) == (["x", "y z"], True, 1e-5, values["d"], None)


# ----------------------------------------------------------------------------------------------------------------
# The real stages, with tiny settings
# ----------------------------------------------------------------------------------------------------------------

SMOKE_OVERRIDES = [
    "--pretrain.max_documents",
    "200",
    "--pretrain.num_train_epochs",
    "1",
    "--pretrain.n_layer",
    "1",
    "--pretrain.n_embd",
    "32",
    "--pretrain.n_head",
    "2",
    "--pretrain.vocab_size",
    "400",
    "--pretrain.probe_tiny_world",
    "false",
    "--pretrain.save_strategy",
    "no",
    "--sft.max_train_samples",
    "64",
    "--sft.num_train_epochs",
    "1",
    "--sft.eval_strategy",
    "no",
    "--sft.save_strategy",
    "no",
    "--collect.max_prompts",
    "12",
    "--collect.max_new_tokens",
    "16",
    "--rm.max_train_samples",
    "12",
    "--rm.num_train_epochs",
    "1",
    "--rm.max_demonstrations",
    "16",
    "--rm.eval_strategy",
    "no",
    "--rm.save_strategy",
    "no",
    "--ppo.total_episodes",
    "16",
    "--ppo.per_device_train_batch_size",
    "8",
    "--ppo.gradient_accumulation_steps",
    "1",
    "--ppo.num_ppo_epochs",
    "1",
    "--ppo.num_mini_batches",
    "1",
    "--ppo.response_length",
    "16",
    "--ppo.save_steps",
    "1",
    "--dpo.max_steps",
    "2",
    "--dpo.per_device_train_batch_size",
    "8",
    "--dpo.save_strategy",
    "no",
    "--rloo.max_steps",
    "2",
    "--rloo.per_device_train_batch_size",
    "8",
    "--rloo.gradient_accumulation_steps",
    "1",
    "--rloo.max_completion_length",
    "16",
    "--rloo.save_steps",
    "1",
    "--eval.max_prompts",
    "8",
    "--eval.max_new_tokens",
    "16",
    "--eval.max_checkpoints",
    "2",
]


def test_smoke_run_of_the_whole_tiny_pipeline(tmp_path):
    """Every real stage with tiny settings; then a rerun that skips them all."""
    root = tmp_path / "pipeline"
    argv = ["recipes/tiny/pipeline.yaml", "--output_dir", str(root), "--report_to", "wandb", *SMOKE_OVERRIDES]
    os.environ["WANDB_MODE"] = "offline"
    summary = run(argv)
    for stage in ("pretrain", "sft", "collect", "rm", "ppo", "dpo", "rloo", "eval"):
        assert is_complete(root / stage), stage
    results = json.loads((root / "eval" / "results.json").read_text())
    assert list(results["models"]) == ["base", "sft", "ppo", "dpo", "rloo", "best_of_8"]
    # every method on the frontier, RLOO's checkpoints swept like PPO's
    assert results["metrics"]["best_of_8"]["kl_to_reference"] == pytest.approx(math.log(8) - 7 / 8)
    assert [p["label"] for p in results["sweeps"]["rloo"]] == ["sft", "step 1", "step 2"]
    assert (root / "eval" / results["plots"]["frontier"]).stat().st_size > 0
    assert "## Methods side by side (against sft)" in (root / "eval" / "report.md").read_text()
    assert results["models"]["sft"] == str(root / "sft")
    assert results["reference"]["name"] == "sft" and results["reward_model"] == str(root / "rm")
    for a, b in (("sft", "base"), ("ppo", "sft"), ("ppo", "base")):
        w = results["win_rate"][a][b]
        assert w["win_rate"] + results["win_rate"][b][a]["win_rate"] == pytest.approx(1.0)
        assert w["ci_low"] <= w["win_rate"] <= w["ci_high"] and w["n"] == 8
    assert results["metrics"]["sft"]["kl_to_reference"] == 0.0
    assert results["metrics"]["ppo"]["kl_to_reference"] is not None
    assert [h["model"] + "/" + h["baseline"] for h in summary["headline"]][:1] == ["ppo/sft"]
    for plot in ("win_rates", "training", "overoptimization"):
        assert (root / "eval" / results["plots"][plot]).stat().st_size > 0
    assert (root / "eval" / "report.md").read_text().startswith("# Evaluation report")
    group = json.loads((root / "pipeline.json").read_text())["wandb_group"]
    assert group.startswith("tiny-pipeline-")

    before = {
        s: (root / s / RUN_MARKER).stat().st_mtime for s in ("pretrain", "sft", "rm", "ppo", "dpo", "rloo", "eval")
    }
    run(argv)  # finished: every stage (and the evaluation, same settings) is skipped
    after = {s: (root / s / RUN_MARKER).stat().st_mtime for s in before}
    assert after == before
