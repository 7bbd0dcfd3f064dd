"""Recipes: parsing, overrides, and the errors a user sees for bad recipes."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import python_m, run_cli
from instructgpt.recipe import RecipeError, load_yaml, parse_stage_args, split_argv
from instructgpt.sft import parse_args as parse_sft_args

MINIMAL = "stage: sft\nmodel_name_or_path: data/tiny/base-model\ndataset_name: data/tiny/sft_train.jsonl\noutput_dir: runs/x\n"


def _write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_recipe_and_command_line_overrides(tmp_path):
    path = _write(tmp_path, MINIMAL + "learning_rate: 3.0e-4\nnum_train_epochs: 2\nuse_peft: false\n")
    (script, training, model), recipe = parse_sft_args(
        [path, "--learning_rate", "1e-5", "--output_dir", "runs/y", "--use_peft", "--lora_target_modules", "c_attn,c_proj"]
    )
    assert training.learning_rate == 1e-5  # "1e-5" is a string to YAML; the float field converts it
    assert training.output_dir == "runs/y"
    assert training.num_train_epochs == 2.0
    assert model.use_peft is True and model.lora_target_modules == ["c_attn", "c_proj"]
    assert script.dataset_name == "data/tiny/sft_train.jsonl"
    assert recipe.data["learning_rate"] == "1e-5" and recipe.stage == "sft"


def test_split_argv_forms():
    assert split_argv(["r.yaml", "--a", "1", "--b=2", "--flag"]) == ("r.yaml", {"a": "1", "b": "2", "flag": "true"})
    with pytest.raises(RecipeError, match="unexpected argument"):
        split_argv(["r.yaml", "other.yaml"])


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = _write(tmp_path, "stage: sft\nlearning_rate: [1, 2\noutput_dir: x\n")
    with pytest.raises(RecipeError, match=r"recipe\.yaml: malformed YAML \(line \d+"):
        load_yaml(path)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        parse_sft_args([str(tmp_path / "nope.yaml")])


def test_misspelled_key_suggests_the_closest(tmp_path):
    path = _write(tmp_path, MINIMAL + "learnig_rate: 1.0e-4\nlora_rank: 8\n")
    with pytest.raises(RecipeError) as err:
        parse_sft_args([path])
    message = str(err.value)
    assert path in message
    assert "unknown key `learnig_rate`; did you mean `learning_rate`?" in message
    assert "unknown key `lora_rank`; did you mean `lora_r`?" in message


def test_wrong_type_names_the_key(tmp_path):
    path = _write(tmp_path, MINIMAL + "num_train_epochs: three\n")
    with pytest.raises(RecipeError, match=r"key `num_train_epochs` must be a number, got 'three'"):
        parse_sft_args([path])
    path = _write(tmp_path, MINIMAL + "use_peft: maybe\n", "b.yaml")
    with pytest.raises(RecipeError, match=r"key `use_peft` must be true or false"):
        parse_sft_args([path])
    path = _write(tmp_path, MINIMAL, "c.yaml")
    with pytest.raises(RecipeError, match=r"command-line override `per_device_train_batch_size` must be an integer"):
        parse_sft_args([path, "--per_device_train_batch_size", "lots"])


def test_invalid_choice_and_stage_mismatch(tmp_path):
    path = _write(tmp_path, MINIMAL + "if_output_exists: clobber\n")
    with pytest.raises(RecipeError, match=r"if_output_exists` must be one of \['resume', 'refuse', 'overwrite'\]"):
        parse_sft_args([path])
    path = _write(tmp_path, MINIMAL.replace("stage: sft", "stage: ppo"), "ppo.yaml")
    with pytest.raises(RecipeError, match="this is a `stage: ppo` recipe, not `sft`"):
        parse_sft_args([path])
    path = _write(tmp_path, MINIMAL.replace("stage: sft\n", ""), "nostage.yaml")
    with pytest.raises(RecipeError, match="missing key `stage`"):
        parse_stage_args([path], "sft", ())


def test_cli_prints_one_line_error_and_exits_2(tmp_path):
    path = _write(tmp_path, MINIMAL + "learnig_rate: 1.0e-4\n")
    for command in (python_m("instructgpt.sft", path), python_m("instructgpt", path)):
        result = run_cli(command)
        assert result.returncode == 2, result.stderr
        assert "did you mean `learning_rate`?" in result.stderr
        assert "Traceback" not in result.stderr
