"""No silent failure: faults injected for real (bad inputs, corrupted files, killed processes) and what follows.

Each fault is triggered as it happens to users: a recipe with a NaN, a file cut off or in another encoding, a real
stage subprocess killed with SIGKILL at the points where a crash hurts most (``INSTRUCTGPT_FAULT``, see
:func:`instructgpt.infra.guards.fault_point`), SIGINT and SIGTERM sent to a running stage. After every kill the
same command is run again and must reach the outputs of an uninterrupted run.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from helpers import (
    REPO,
    TINY_BASE,
    TINY_DATA,
    one_line_error,
    python_m,
    quick_ppo,
    quick_sft,
    run_cli,
    start,
    temporary_files,
)
from instructgpt.data import DataError
from instructgpt.infra.files import RUN_MARKER, OutputDirError, is_complete, last_checkpoint, read_jsonl
from instructgpt.infra.guards import FAULT_ENV, MEMORY_ENV, UnsoundOutput, check_weights
from instructgpt.infra.parser import RecipeError
from instructgpt.stages.sft import parse_args as sft_args

pytestmark = pytest.mark.faults

MINIMAL = f"model_name_or_path: {TINY_BASE}\ndataset_name: {TINY_DATA / 'sft_train.jsonl'}\noutput_dir: runs/x\n"
QUICK_SFT = [
    "--report_to",
    "none",
    "--max_train_samples",
    "48",
    "--per_device_train_batch_size",
    "8",
    "--num_train_epochs",
    "1",
    "--eval_strategy",
    "no",
    "--logging_steps",
    "2",
    "--disable_tqdm",
    "true",
]


def _write(tmp_path: Path, text: str | bytes, name: str = "recipe.yaml") -> str:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return str(path)


# ----------------------------------------------------------------------------------------------------------------
# Bad values, checked when the recipe is parsed
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, message",
    [
        ("learning_rate: .nan", "`learning_rate` must be a finite number, got nan"),
        ("max_grad_norm: .inf", "`max_grad_norm` must be a finite number, got inf"),
        ("weight_decay: -0.1", "`weight_decay` must be at least 0, got -0.1"),
        ("lora_dropout: 1.5", "`lora_dropout` must be between 0 and 1, got 1.5"),
        ("max_length: 0", "`max_length` must be at least 1, got 0"),
        ("per_device_train_batch_size: 0", "`per_device_train_batch_size` must be at least 1, got 0"),
    ],
)
def test_numbers_out_of_range_are_refused_when_parsed(tmp_path, line, message):
    with pytest.raises(RecipeError) as err:
        sft_args([_write(tmp_path, MINIMAL + line + "\n")])
    assert message in str(err.value) and "recipe.yaml" in str(err.value)


def test_ranges_of_other_stages_and_the_command_line(tmp_path):
    from instructgpt.stages.collect import parse_args as collect_args
    from instructgpt.stages.ppo.run import parse_args as ppo_args

    with pytest.raises(RecipeError, match=r"command-line override|`kl_coef` must be a finite number, got nan"):
        ppo_args(["recipes/tiny/ppo.yaml", "--kl_coef", "nan"])
    with pytest.raises(RecipeError, match=r"`temperature` must be greater than 0, got 0.0"):
        ppo_args(["recipes/tiny/ppo.yaml", "--temperature", "0"])
    with pytest.raises(RecipeError, match=r"`top_p` must be between 0 and 1, got 2.0"):
        collect_args(["recipes/tiny/collect.yaml", "--top_p", "2"])
    (args,), _ = collect_args(["recipes/tiny/collect.yaml", "--temperature", "0"])  # greedy sampling is allowed here
    assert args.temperature == 0.0


def test_every_shipped_recipe_and_every_default_passes_the_checks():
    """The range rules refuse nothing that the project itself ships (no false alarms)."""
    from instructgpt.infra.parser import RecipeParser, recipe_stage
    from instructgpt.stages import STAGES, load_stage

    for name in STAGES:
        if name in ("pipeline", "eval"):
            continue
        RecipeParser(name, load_stage(name).arguments()).build({"output_dir": "runs/defaults"})
    for path in sorted((REPO / "recipes").rglob("*.yaml")):
        if "accelerate" in path.parts:
            continue
        stage = recipe_stage(path)
        module = load_stage(stage)
        if stage == "pipeline":
            module.parse_args([str(path)])
        else:
            RecipeParser(stage, module.arguments()).parse([str(path)])


def test_duplicate_keys_and_non_utf8_recipes_and_data(tmp_path):
    with pytest.raises(RecipeError, match=r"recipe\.yaml: malformed YAML \(line 5.*`learning_rate` is given twice"):
        sft_args([_write(tmp_path, MINIMAL + "learning_rate: 1.0e-4\nlearning_rate: 1.0e-3\n")])
    with pytest.raises(RecipeError, match=r"latin\.yaml: not UTF-8 text \(byte 0xe9"):
        sft_args([_write(tmp_path, MINIMAL.encode() + b"run_name: caf\xe9\n", "latin.yaml")])
    data = _write(
        tmp_path, b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9", "completion": "c"}\n', "d.jsonl"
    )
    with pytest.raises(DataError, match=r"d\.jsonl: line 2 is not UTF-8 text"):
        from instructgpt.data import load_data

        load_data(data)


def test_rows_of_the_wrong_type_name_the_row(tmp_path):
    from instructgpt.data.formats import load_demonstrations, load_prompts
    from instructgpt.data.rankings import load_rankings

    prompts = _write(tmp_path, '{"prompt": "fine"}\n{"prompt": 5}\n', "p.jsonl")
    with pytest.raises(DataError, match=r"p\.jsonl\) line 2: the prompt must be a string or a list of chat turns"):
        load_prompts(prompts, key="dataset_name", source="r.yaml")
    chats = _write(tmp_path, '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}\n', "m.jsonl")
    with pytest.raises(DataError, match=r"m\.jsonl\) line 1: `messages` turn 2 must be"):
        load_demonstrations(chats, config=None, split="train", key="dataset_name", source="r.yaml", limit=None)
    ranks = _write(tmp_path, '{"prompt": "q", "responses": ["a", 3]}\n', "r.jsonl")
    with pytest.raises(DataError, match=r"r\.jsonl\) line 1: response 2 must be a string, got int"):
        load_rankings(ranks, key="dataset_name", source="r.yaml", config=None, split="train", limit=None, score_key="s")


def test_bad_input_on_the_command_line_is_one_line(tmp_path):
    recipe = _write(tmp_path, MINIMAL + "kl: 3\n")
    line = one_line_error(run_cli(python_m("instructgpt.stages.sft", recipe)))
    assert "unknown key `kl`" in line
    line = one_line_error(run_cli(python_m("instructgpt.stages.sft", recipe.replace("recipe", "x"), "--output_dir")))
    assert "`--output_dir` needs a value" in line


def test_pipeline_refuses_a_bad_override_of_its_last_stage_before_training(tmp_path):
    out = tmp_path / "run"
    result = run_cli(
        python_m(
            "instructgpt", "pipeline", "recipes/tiny/pipeline.yaml", "--output_dir", str(out), "--ppo.kl_coef", "nan"
        )
    )
    assert "`kl_coef` must be a finite number" in one_line_error(result)
    assert not out.exists() or not any((out / "pretrain").glob("*"))


# ----------------------------------------------------------------------------------------------------------------
# Marked finished only when sound
# ----------------------------------------------------------------------------------------------------------------


def _nan_model(tmp_path: Path) -> Path:
    """A copy of the tiny base model with one weight matrix set to NaN (a corrupted file, as users get them)."""
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "nan-model"
    shutil.copytree(TINY_BASE, broken)
    weights = load_file(str(broken / "model.safetensors"))
    name = next(k for k, v in weights.items() if v.ndim == 2 and "wte" not in k)
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    return broken


def test_non_finite_gradients_stop_training_before_the_step_and_nothing_is_finished(tmp_path):
    broken = _nan_model(tmp_path)
    out = tmp_path / "sft"
    result = run_cli(
        python_m(
            "instructgpt.stages.sft",
            "recipes/tiny/sft.yaml",
            "--model_name_or_path",
            str(broken),
            "--output_dir",
            str(out),
            "--save_strategy",
            "no",
            *QUICK_SFT,
        )
    )
    line = one_line_error(result)
    assert "hold NaN or inf" in line and "stopping before the step" in line and "No checkpoint was saved" in line
    assert not is_complete(out) and not (out / "model.safetensors").exists()
    with pytest.raises(UnsoundOutput, match="hold NaN or inf"):
        check_weights(broken)  # and a model directory with NaN weights is never marked finished


def test_collection_with_no_ranking_is_not_finished(sft_model, tmp_path):
    from instructgpt.stages.collect import parse_args, run_collect

    out = tmp_path / "collect"
    (args,), recipe = parse_args(
        [
            "recipes/tiny/collect.yaml",
            "--model_name_or_path",
            str(sft_model),
            "--output_dir",
            str(out),
            "--report_to",
            "none",
            "--max_prompts",
            "4",
            "--temperature",
            "0",
            "--max_sampling_rounds",
            "1",
            "--max_new_tokens",
            "8",
        ]
    )
    with pytest.raises(UnsoundOutput, match="not one ranking: every prompt got fewer than 2 distinct"):
        run_collect(args, recipe)
    assert not is_complete(out) and not (out / "rankings.jsonl").exists()


def test_resuming_a_collection_with_other_settings_is_refused(sft_model, tmp_path):
    from instructgpt.stages.collect import parse_args, run_collect

    out = tmp_path / "collect"
    common = [
        "recipes/tiny/collect.yaml",
        "--model_name_or_path",
        str(sft_model),
        "--output_dir",
        str(out),
        "--report_to",
        "none",
        "--max_prompts",
        "12",
        "--max_new_tokens",
        "8",
        "--batch_size",
        "8",
    ]
    env_kill = run_cli(python_m("instructgpt", *common), env={FAULT_ENV: "collect_row:3"})
    assert env_kill.returncode == -signal.SIGKILL
    (args,), recipe = parse_args([*common, "--num_responses", "3", "--labeler_noise", "0.5"])
    with pytest.raises(OutputDirError, match=r"other settings \(`num_responses` was 4, now 3; `labeler_noise` was"):
        run_collect(args, recipe)


def test_merge_keeps_one_row_per_prompt_and_needs_every_prompt(tmp_path):
    from instructgpt.stages.collect import merge_parts

    rows = [{"prompt_index": i, "prompt": f"p{i}", "responses": ["a", "b"]} for i in range(3)]
    (tmp_path / "rankings.part-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "rankings.part-1.jsonl").write_text(json.dumps(rows[1]) + "\n")  # prompt 1 collected twice
    merged = merge_parts(tmp_path, 3)
    assert [r["prompt_index"] for r in merged] == [0, 1, 2]
    assert len(read_jsonl(tmp_path / "rankings.jsonl")) == 3
    with pytest.raises(UnsoundOutput, match="1 of 4 prompts have no row"):
        merge_parts(tmp_path, 4)


# ----------------------------------------------------------------------------------------------------------------
# Resume: killed for real, rerun, same result
# ----------------------------------------------------------------------------------------------------------------


def _sft(out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run_cli(
        python_m(
            "instructgpt.stages.sft",
            "recipes/tiny/sft.yaml",
            "--output_dir",
            str(out),
            "--save_strategy",
            "steps",
            "--save_steps",
            "2",
            *QUICK_SFT,
            *extra,
        ),
        env=env,
    )


def test_sft_killed_mid_training_and_before_its_marker_resumes_to_the_same_end(tmp_path):
    reference = tmp_path / "reference"
    assert _sft(reference).returncode == 0
    expected = json.loads((reference / RUN_MARKER).read_text())["metrics"]["global_step"]

    out = tmp_path / "killed"
    assert _sft(out, env={FAULT_ENV: "train_step:3"}).returncode == -signal.SIGKILL  # mid-training
    assert last_checkpoint(out).name == "checkpoint-2" and not is_complete(out)
    (out / "checkpoint-2" / "trainer_state.json").unlink()  # as if the kill came while checkpoint-2 was written
    assert last_checkpoint(out) is None
    assert _sft(out, env={FAULT_ENV: "before_marker"}).returncode == -signal.SIGKILL  # final model saved, no marker
    assert (out / "model.safetensors").is_file() and not is_complete(out)
    result = _sft(out)
    assert result.returncode == 0, result.stderr[-2000:]
    marker = json.loads((out / RUN_MARKER).read_text())
    assert marker["metrics"] == {"recovered_after_interruption": True}  # verified and finished, not retrained
    assert "verified and marked finished" in result.stdout
    assert max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")) == expected
    assert not temporary_files(out)


def test_a_foreign_model_in_the_output_dir_is_still_refused(tmp_path):
    import shutil

    out = tmp_path / "foreign"
    shutil.copytree(TINY_BASE, out)
    line = one_line_error(_sft(out))
    assert "already holds a trained model; it was not touched" in line


def test_collect_killed_mid_collection_resumes_to_the_same_rankings(sft_model, tmp_path):
    common = [
        "--model_name_or_path",
        str(sft_model),
        "--report_to",
        "none",
        "--max_prompts",
        "12",
        "--max_new_tokens",
        "12",
        "--batch_size",
        "8",
        "--labeler_noise",
        "1.0",
    ]
    reference, out = tmp_path / "reference", tmp_path / "killed"
    assert (
        run_cli(
            python_m("instructgpt", "recipes/tiny/collect.yaml", "--output_dir", str(reference), *common)
        ).returncode
        == 0
    )
    killed = run_cli(
        python_m("instructgpt", "recipes/tiny/collect.yaml", "--output_dir", str(out), *common),
        env={FAULT_ENV: "collect_row:5"},
    )
    assert killed.returncode == -signal.SIGKILL
    part = out / "rankings.part-0.jsonl"
    part.write_bytes(part.read_bytes() + b'{"prompt_index": 5, "prompt": "cut o')  # a row cut off mid-write
    resumed = run_cli(python_m("instructgpt", "recipes/tiny/collect.yaml", "--output_dir", str(out), *common))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming: 5 of 12 prompts" in resumed.stdout and "dropping its last line" in resumed.stdout
    assert read_jsonl(out / "rankings.jsonl") == read_jsonl(reference / "rankings.jsonl")


def _ppo(out: Path, sft: Path, rm: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run_cli(quick_ppo(out, sft, rm), env=env)


def test_ppo_killed_mid_update_and_mid_checkpoint_resumes_to_the_same_counts(sft_model, tiny_rm, tmp_path):
    reference = tmp_path / "reference"
    assert _ppo(reference, sft_model, tiny_rm).returncode == 0
    expected = json.loads((reference / RUN_MARKER).read_text())["metrics"]

    out = tmp_path / "killed"
    assert _ppo(out, sft_model, tiny_rm, env={FAULT_ENV: "ppo_update:2"}).returncode == -signal.SIGKILL
    assert _ppo(out, sft_model, tiny_rm, env={FAULT_ENV: "mid_checkpoint:2"}).returncode == -signal.SIGKILL
    with (out / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 9, "objective/sco')  # the log's last line cut off by the kill
    result = _ppo(out, sft_model, tiny_rm)
    assert result.returncode == 0, result.stderr[-2000:]
    marker = json.loads((out / RUN_MARKER).read_text())["metrics"]
    assert (marker["global_step"], marker["episode"]) == (expected["global_step"], expected["episode"])
    steps = [row["step"] for row in read_jsonl(out / "metrics.jsonl") if "objective/kl" in row]
    assert steps == list(range(1, expected["global_step"] + 1))  # every update logged once
    assert not temporary_files(out)
    # the resume state is JSON, and no checkpoint holds a pickled Python object of ours
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert {"global_step", "episode", "kl_controller", "scheduler"} <= set(state)
    assert not list(out.rglob("custom_checkpoint_*.pkl"))


def test_out_of_memory_mid_training_is_one_line_and_the_same_command_finishes_after(tmp_path):
    """After step 1 the kernel gives the process 16 MiB more address space (RLIMIT_AS), less than step 2's batch of
    128 needs: torch's allocator fails for real, and the stage says so in one line with what to do."""
    out = tmp_path / "sft"
    command = quick_sft(out, "--max_steps", "2", "--per_device_train_batch_size", "128", "--save_strategy", "no")
    line = one_line_error(run_cli(command, env={FAULT_ENV: "train_step:1", MEMORY_ENV: "16"}))
    assert line == (
        f"error: sft training into {out} (with its checkpoints): out of memory; use a smaller batch "
        "(per_device_train_batch_size) or a smaller model"
    )
    assert not is_complete(out)
    result = run_cli(command)  # the cause gone (here: the limit), the same command
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((out / RUN_MARKER).read_text())["metrics"]["global_step"] == 2


# ----------------------------------------------------------------------------------------------------------------
# Ctrl-C and SIGTERM
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signal_ends_with_one_line_and_the_run_resumes(tmp_path, sig, code, word):
    out = tmp_path / "sft"
    args = python_m(
        "instructgpt.stages.sft",
        "recipes/tiny/sft.yaml",
        "--output_dir",
        str(out),
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        *QUICK_SFT[:-2],
        "--max_train_samples",
        "400",
    )
    # started with SIGINT ignored, as a shell starts a background job: the stage must still stop on it
    process = start(
        args,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    deadline = time.time() + 600  # a loaded machine can take minutes to the first checkpoint
    while last_checkpoint(out) is None and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr[-2000:]
    assert "Traceback" not in stderr and f"{word}" in stderr and "rerun the same command to resume" in stderr
    assert not temporary_files(out) and not is_complete(out)
    result = run_cli(args)
    assert result.returncode == 0 and "resuming the interrupted run" in result.stdout and is_complete(out)


# ----------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------


def test_eval_never_overwrites_a_finished_evaluation_and_a_failed_rerun_deletes_nothing(tmp_path):
    from instructgpt.stages import eval as evaluate

    out = tmp_path / "eval"
    common = [
        "--models",
        f"base={TINY_BASE}",
        "--prompts",
        str(TINY_DATA / "eval_prompts.jsonl"),
        "--output_dir",
        str(out),
        "--max_prompts",
        "4",
        "--max_new_tokens",
        "8",
        "--max_checkpoints",
        "1",
    ]
    evaluate.main(common)
    finished = (out / RUN_MARKER).read_text()
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(common)
    assert exit_.value.code == 2 and (out / RUN_MARKER).read_text() == finished
    with pytest.raises(SystemExit):
        evaluate.main([*common, "--if_output_exists", "overwrite", "--prompts", str(tmp_path / "missing.jsonl")])
    assert (out / RUN_MARKER).read_text() == finished  # a failed rerun, even with overwrite, touched nothing
    evaluate.main([*common, "--if_output_exists", "overwrite"])
    assert is_complete(out) and len(list(tmp_path.glob("eval.old-*"))) >= 1  # the old one kept aside, not deleted
