"""Recipes as users bring them: files with the keys and structure of alignment-handbook's zephyr-7b-beta and smollm2
recipes (SFT and DPO) and of TRL's CLI configs (``tests/fixtures/recipes/``, our own values).

Each is read under our entry points as it is (renamed keys read as their current form, the mixture built), and then
run end to end with its models and datasets pointed at the tiny world and only what this machine cannot do
(FlashAttention needs a GPU, bf16 on a CPU needs `use_cpu`, pushes need the Hub) set on the command line, as a
CPU user would.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from helpers import collect, one_line_error, python_m, rm, run_cli
from instructgpt.infra.parser import RecipeError, RecipeParser
from instructgpt.stages import load_stage

RECIPES = Path("tests/fixtures/recipes")
FIXTURES = Path("tests/fixtures")

# Where each Hub dataset of the recipes points in the tiny world: local folders and files of the same schema.
TINY_DATASETS = {
    "HuggingFaceH4/ultrachat_200k": str(FIXTURES / "ultrachat_200k"),
    "HuggingFaceH4/ultrafeedback_binarized": str(FIXTURES / "ultrafeedback_binarized"),
    "HuggingFaceTB/smoltalk": str(FIXTURES / "no_robots"),
    "trl-lib/Capybara": str(FIXTURES / "no_robots"),
    "stanfordnlp/imdb": "data/tiny/sft_train.jsonl",
    "trl-lib/ultrafeedback_binarized": str(FIXTURES / "ultrafeedback_binarized"),
}
# What a CPU machine without the Hub cannot do, set on the command line as a user would (bf16 stays: on a CPU,
# transformers runs it when asked with `use_cpu`).
ON_THIS_MACHINE = ["--use_cpu", "true", "--push_to_hub", "false", "--report_to", "none", "--dataset_num_proc", "1"]
SHORT = ["--max_steps", "2", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4"]


def stage_of(recipe: Path) -> str:
    return "dpo" if "dpo" in recipe.name else "sft"


def load(name: str) -> dict:
    return yaml.safe_load((RECIPES / name).read_text())


@pytest.mark.parametrize("name", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_a_recipe_from_the_ecosystem_is_read_as_it_is(name):
    """Parsed and validated as written: every key is a setting of the stage or an alias of one."""
    recipe = RECIPES / name
    parser = RecipeParser(stage_of(recipe), load_stage(stage_of(recipe)).arguments())
    raw = load(name)
    if raw.get("bf16") and not torch.cuda.is_available():  # transformers' check: CPU bf16 is asked for by name
        with pytest.raises(RecipeError, match=r"doesn't support bf16/gpu.*use_cpu"):
            parser.parse(["--config", str(recipe)])
        args = parser.parse(["--config", str(recipe), "--use_cpu", "true"])
    else:
        args = parser.parse(["--config", str(recipe)])
    parts = {type(part).__name__: part for part in args.parts}
    script = next(p for p in parts.values() if hasattr(p, "if_output_exists"))
    training = next(p for p in parts.values() if hasattr(p, "learning_rate"))
    model = next(p for p in parts.values() if hasattr(p, "model_name_or_path"))
    assert model.model_name_or_path == raw["model_name_or_path"].strip()
    assert training.learning_rate == raw["learning_rate"]
    if "torch_dtype" in raw:
        assert model.dtype == raw["torch_dtype"]
    if "max_seq_length" in raw:
        assert training.max_length == raw["max_seq_length"]
    if "warmup_ratio" in raw:
        assert training.warmup_steps == raw["warmup_ratio"]
    if raw.get("overwrite_output_dir"):
        assert script.if_output_exists == "overwrite"
    if "dataset_mixture" in raw:
        mixture = raw["dataset_mixture"]
        assert script.mixture.style == "handbook" and script.mixture.seed == mixture["seed"]
        assert [m.split for m in script.mixture.members] == [d["split"] for d in mixture["datasets"]]
        assert script.mixture.test_split_size == mixture["test_split_size"] and script.dataset_test_split == "test"
    if "datasets" in raw:
        assert script.mixture.style == "trl"
        assert [m.fraction for m in script.mixture.members] == [d["fraction"] for d in raw["datasets"]]


def pointed_at_tiny_world(name: str, tmp_path: Path, model: str) -> Path:
    """The recipe with its model and datasets in the tiny world; every other key as the user wrote it."""
    raw = load(name)
    raw["model_name_or_path"] = model
    raw["output_dir"] = str(tmp_path / "out")
    if "dataset_name" in raw:
        raw["dataset_name"] = TINY_DATASETS[raw["dataset_name"].strip()]
        raw.pop("dataset_config", None)  # smoltalk's `all`: the stand-in has one configuration
        if "ultrafeedback_binarized" in raw["dataset_name"]:  # TRL's copy names its splits train/test
            raw |= {"dataset_train_split": "train_prefs", "dataset_test_split": "test_prefs"}
    for entry in raw.get("dataset_mixture", {}).get("datasets", []):
        entry["id"] = TINY_DATASETS[entry["id"]]
    if "dataset_mixture" in raw:
        raw["dataset_mixture"]["test_split_size"] = 6  # of the tiny stand-ins' 40-odd rows
    for entry in raw.get("datasets", []):
        if entry["path"] in TINY_DATASETS:
            entry["path"] = TINY_DATASETS[entry["path"]]
        elif entry.get("data_files") == "extra_demonstrations.jsonl":
            entry["data_files"] = "data/tiny/sft_eval.jsonl"
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run(stage: str, recipe: Path, *extra: str):
    return run_cli(python_m(f"instructgpt.stages.{stage}", str(recipe), *ON_THIS_MACHINE, *SHORT, *extra))


def finished(result, out: Path) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "model.safetensors").is_file(), sorted(p.name for p in out.iterdir())
    return json.loads((out / "instructgpt_run.json").read_text())  # written last, once the output is sound


@pytest.fixture(scope="module")
def zephyr_sft(tmp_path_factory) -> Path:
    """The zephyr SFT recipe (a handbook mixture of two ultrachat splits, its chat template, FlashAttention asked
    for) on the tiny base model."""
    tmp = tmp_path_factory.mktemp("zephyr-sft")
    recipe = pointed_at_tiny_world("handbook-zephyr-sft.yaml", tmp, "data/tiny/base-model")
    result = run("sft", recipe, "--attn_implementation", "sdpa")
    finished(result, tmp / "out")
    output = result.stdout + result.stderr
    # each renamed key said its current form, once
    for old, current in (
        ("torch_dtype", "dtype: bfloat16"),
        ("max_seq_length", "max_length: 2048"),
        ("warmup_ratio", "warmup_steps: 0.1"),
        ("overwrite_output_dir", "if_output_exists: overwrite"),
        ("gradient_checkpointing", "activation_checkpointing: true"),
    ):
        assert output.count(f"read `{old}` as `{current}`") == 1, old
    # 32 + 8 ultrachat rows mixed with weight 1, and 6 held out as `test`: training saw 34 rows, evaluation 6
    assert "Num examples = 34" in output and "Num examples = 6" in output
    return tmp / "out"


def test_the_handbook_zephyr_sft_recipe_trains_on_its_mixture(zephyr_sft):
    template = (zephyr_sft / "chat_template.jinja").read_text()
    assert "<|assistant|>" in template  # the recipe's own template is saved with the model
    assert json.loads((zephyr_sft / "config.json").read_text())["dtype"] == "bfloat16"  # the recipe's torch_dtype
    assert "ultrachat_200k" in (zephyr_sft / "README.md").read_text()  # the card names the mixture's dataset


def test_the_handbook_zephyr_dpo_recipe_trains_on_implicit_prompt_pairs(zephyr_sft, tmp_path):
    recipe = pointed_at_tiny_world("handbook-zephyr-dpo.yaml", tmp_path, str(zephyr_sft))
    result = run("dpo", recipe, "--eval_steps", "2")
    run_record = finished(result, tmp_path / "out")
    output = result.stdout + result.stderr
    assert "read `warmup_ratio` as `warmup_steps: 0.1`" in output
    # 40 train_prefs + 16 test_prefs pairs, 6 held out as the mixture's `test` part, which was evaluated
    assert "Num examples = 50" in output and "Num examples = 6" in output
    assert 0 <= run_record["metrics"]["eval_rewards/accuracies"] <= 1


def test_the_handbook_smollm2_recipes_run_on_the_single_dataset_keys(zephyr_sft, tmp_path):
    sft = pointed_at_tiny_world("handbook-smollm2-sft.yaml", tmp_path / "sft", "data/tiny/base-model")
    finished(run("sft", sft, "--attn_implementation", "sdpa"), tmp_path / "sft" / "out")
    dpo = pointed_at_tiny_world("handbook-smollm2-dpo.yaml", tmp_path / "dpo", str(tmp_path / "sft" / "out"))
    finished(run("dpo", dpo), tmp_path / "dpo" / "out")


def test_the_trl_cli_recipes_run(tmp_path):
    mixture = pointed_at_tiny_world("trl-cli-sft-mixture.yaml", tmp_path / "mix", "data/tiny/base-model")
    finished(run("sft", mixture, "--prompt_template", "Q: {prompt}\nA: "), tmp_path / "mix" / "out")
    plain = pointed_at_tiny_world("trl-cli-sft.yaml", tmp_path / "plain", "data/tiny/base-model")
    finished(run("sft", plain), tmp_path / "plain" / "out")
    dpo = pointed_at_tiny_world("trl-cli-dpo.yaml", tmp_path / "dpo", str(tmp_path / "plain" / "out"))
    finished(run("dpo", dpo, "--eval_steps", "2"), tmp_path / "dpo" / "out")


def test_what_this_machine_cannot_do_is_refused_in_one_line(tmp_path):
    """The recipe's FlashAttention and bf16 need a GPU: each is refused saying what to write, before any training."""
    recipe = pointed_at_tiny_world("handbook-zephyr-sft.yaml", tmp_path, "data/tiny/base-model")
    line = one_line_error(run_cli(python_m("instructgpt.stages.sft", str(recipe), *ON_THIS_MACHINE, *SHORT)))
    assert "`attn_implementation: flash_attention_2` needs" in line and "sdpa" in line
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_collect_rm_and_ppo_read_a_mixture(sft_model, tmp_path):
    """The other stages that read a dataset take TRL's `datasets:` too: collection samples the mixed prompts, the
    reward model trains on collected rankings mixed with implicit-prompt pairs, PPO draws its prompts from a mix."""
    lines = Path("data/tiny/rm_prompts.jsonl").read_text().splitlines()
    (tmp_path / "a.jsonl").write_text("\n".join(lines[:4]) + "\n")
    (tmp_path / "b.jsonl").write_text("\n".join(lines[10:20]) + "\n")
    prompts = f"[{{path: {tmp_path / 'a.jsonl'}, fraction: 0.5}}, {{path: {tmp_path / 'b.jsonl'}, fraction: 0.5}}]"
    metrics = collect(
        tmp_path / "collect", sft_model, "--dataset_name", "null", "--datasets", prompts, "--num_responses", "2"
    )
    rows = [json.loads(line) for line in (tmp_path / "collect" / "rankings.jsonl").read_text().splitlines()]
    # equal shares of 4 and 10 rows, none repeated: the 4 of a.jsonl and the first 4 of b.jsonl
    expected = [json.loads(line)["prompt"] for line in lines[:4] + lines[10:14]]
    assert sorted(row["prompt"] for row in rows) == sorted(expected), metrics
    pairs = f"{FIXTURES}/ultrafeedback_binarized/data/train_prefs-00000-of-00001.jsonl"
    mixture = f"[{{path: {tmp_path / 'collect' / 'rankings.jsonl'}}}, {{path: {pairs}, columns: [chosen, rejected]}}]"
    rm_metrics = rm(
        tmp_path / "rm",
        tmp_path / "collect" / "rankings.jsonl",
        sft_model,
        "--dataset_name",
        "null",
        "--datasets",
        mixture,
        "--max_steps",
        "2",
    )
    assert (tmp_path / "rm" / "model.safetensors").is_file(), rm_metrics
    ppo = python_m(
        "instructgpt.stages.ppo.run",
        "recipes/tiny/ppo.yaml",
        "--model_name_or_path",
        str(sft_model),
        "--reward_model_path",
        str(tmp_path / "rm"),
        "--output_dir",
        str(tmp_path / "ppo"),
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--dataset_name",
        "null",
        "--datasets",
        prompts,
        "--total_episodes",
        "8",
        "--per_device_train_batch_size",
        "4",
        "--gradient_accumulation_steps",
        "2",
        "--num_ppo_epochs",
        "1",
        "--response_length",
        "8",
        "--num_sample_generations",
        "0",
        "--eval_num_prompts",
        "0",
    )
    result = run_cli(ppo)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "ppo" / "instructgpt_run.json").is_file()
