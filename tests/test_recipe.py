"""Recipes: parsing, overrides, and the errors a user sees for bad recipes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from conftest import python_m, run_cli
from instructgpt.infra.parser import RecipeError, load_yaml, recipe_stage, split_argv
from instructgpt.infra.validation import range_of
from instructgpt.stages.ppo.config import PPOConfig
from instructgpt.stages.ppo.trainer import main as ppo_main
from instructgpt.stages.ppo.trainer import parse_args as parse_ppo_args
from instructgpt.stages.sft import parse_args as parse_sft_args

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
        recipe_stage(path)  # `instructgpt RECIPE.yaml` must be told the stage ...
    (script, training, model), recipe = parse_sft_args([path])  # ... the SFT entry point knows it
    assert recipe.stage == "sft" and training.output_dir == "runs/x"


def test_cli_prints_one_line_error_and_exits_2(tmp_path):
    path = _write(tmp_path, MINIMAL + "learnig_rate: 1.0e-4\n")
    for command in (python_m("instructgpt.stages.sft", path), python_m("instructgpt", path)):
        result = run_cli(command)
        assert result.returncode == 2, result.stderr
        assert "did you mean `learning_rate`?" in result.stderr
        assert "Traceback" not in result.stderr


# ----------------------------------------------------------------------------------------------------------------
# One shape for every entry point: --help, --config, --version, the stage inferred from the entry point
# ----------------------------------------------------------------------------------------------------------------

ENTRY_POINTS = {
    "instructgpt": ("instructgpt.cli", []),
    "instructgpt-sft": ("instructgpt.stages.sft", []),
    "instructgpt-rm": ("instructgpt.stages.rm", []),
    "instructgpt-ppo": ("instructgpt.stages.ppo.trainer", []),
    "instructgpt-rloo": ("instructgpt.stages.rloo", []),
    "instructgpt pretrain": ("instructgpt.cli", ["pretrain"]),
    "instructgpt collect": ("instructgpt.cli", ["collect"]),
    "instructgpt eval": ("instructgpt.cli", ["eval"]),
    "instructgpt pipeline": ("instructgpt.cli", ["pipeline"]),
    "instructgpt generate": ("instructgpt.cli", ["generate"]),
    "instructgpt chat": ("instructgpt.cli", ["chat"]),
}
# a field of each stage that --help must show, with its help text
HELP_SHOWS = {
    "instructgpt-sft": ["--learning_rate", "--lora_r", "--long_examples", "--if_output_exists", "(default: resume)"],
    "instructgpt-rm": ["--demonstrations_dataset", "--eval_fraction", "--center_rewards_coefficient"],
    "instructgpt-ppo": ["--kl_coef", "--cliprange_value", "--reward_model_path", "--ptx_coef"],
    "instructgpt-rloo": ["--num_generations", "--beta", "--reward_model_path", "--missing_eos_penalty"],
    "instructgpt collect": ["--num_responses", "K: responses sampled and ranked per prompt", "(default: 4)"],
    "instructgpt eval": ["--models", "--labeler", "--ppo_run"],
    "instructgpt pipeline": ["--rounds", "--sft", "--eval"],
    "instructgpt pretrain": ["--n_layer", "--block_size"],
    "instructgpt generate": ["--prompt", "--temperature"],
}


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_every_entry_point_prints_help_and_exits_0(name, capsys):
    import importlib

    module, argv = ENTRY_POINTS[name]
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(module).main([*argv, "--help"])
        raise SystemExit(0)  # instructgpt's own --help returns after printing
    out = capsys.readouterr().out
    assert exit_.value.code in (0, None), out
    assert out.strip(), f"{name} --help printed nothing"
    for text in HELP_SHOWS.get(name, []):
        assert text in " ".join(out.split()), f"{name} --help does not show {text!r}"


def test_help_comes_before_any_recipe_check(tmp_path, capsys):
    """`instructgpt-ppo recipes/tiny/ppo.yaml --help` prints help, it does not complain about the recipe."""
    with pytest.raises(SystemExit) as exit_:
        ppo_main(["recipes/tiny/ppo.yaml", "--help"])
    assert exit_.value.code == 0 and "--kl_coef" in capsys.readouterr().out


# PPO's two clip ranges, the adaptive controller's KL target and the max_kl stop are each "> 0", declared on the field:
# a clip range of 0 pins the ratio (or the value) to the old one, a target of 0 divides the controller's error by
# zero, and a max_kl of 0 stops the run at the first update's estimation noise (null turns the stop off).
@pytest.mark.parametrize("key", ["cliprange", "cliprange_value", "target", "max_kl"])
def test_ppo_clip_ranges_kl_target_and_max_kl_are_positive_and_refused_at_zero(key):
    field = next(f for f in dataclasses.fields(PPOConfig) if f.name == key)
    assert field.metadata["range"] == range_of(field) == "> 0"
    for refused in ("0", "-0.1"):
        with pytest.raises(RecipeError) as err:
            parse_ppo_args(["recipes/tiny/ppo.yaml", f"--{key}", refused])
        line = str(err.value)
        assert line == f"recipes/tiny/ppo.yaml: `{key}` must be greater than 0, got {float(refused)}", line
    for accepted in ("1e-06", "0.5"):
        (_, config, _), _ = parse_ppo_args(["recipes/tiny/ppo.yaml", f"--{key}", accepted])
        assert getattr(config, key) == float(accepted)
    if key == "max_kl":
        (_, config, _), _ = parse_ppo_args(["recipes/tiny/ppo.yaml", "--max_kl", "null"])
        assert config.max_kl is None


def test_version_everywhere(capsys):
    from instructgpt import __version__, cli
    from instructgpt.stages import sft

    cli.main(["--version"])
    with pytest.raises(SystemExit) as exit_:
        sft.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.split() == ["instructgpt", __version__, "instructgpt", __version__]


def test_config_flag_and_a_trl_recipe_without_stage(tmp_path):
    """`instructgpt-sft --config x.yaml` (TRL's and alignment-handbook's form) on a TRL SFT recipe: no `stage:` key."""
    trl_recipe = _write(tmp_path, "model_name_or_path: data/tiny/base-model\ndataset_name: data/tiny/sft_train.jsonl\n"
                        "output_dir: runs/trl\nlearning_rate: 2.0e-5\nnum_train_epochs: 1\nmax_length: 64\n"
                        "packing: false\ngradient_checkpointing: true\nlogging_steps: 5\n")
    (script, training, model), recipe = parse_sft_args(["--config", trl_recipe, "--learning_rate", "1e-4"])
    assert training.learning_rate == 1e-4 and training.max_length == 64 and training.gradient_checkpointing
    assert model.model_name_or_path == "data/tiny/base-model" and recipe.stage == "sft"
    with pytest.raises(RecipeError, match="two recipes given"):
        parse_sft_args([trl_recipe, "--config", trl_recipe])


def test_a_value_taking_key_without_its_value_is_an_error(tmp_path):
    path = _write(tmp_path, MINIMAL)
    with pytest.raises(RecipeError, match="`--output_dir` needs a value"):
        parse_sft_args([path, "--output_dir"])
    (script, training, model), _ = parse_sft_args([path, "--use_peft"])  # a bare boolean flag means true
    assert model.use_peft is True


def test_null_and_flow_lists_and_negative_values(tmp_path):
    path = _write(tmp_path, MINIMAL + "max_train_samples: null\nlora_target_modules: [c_attn, c_proj]\n"
                  "dataset_test_split: null\n")
    (script, training, model), _ = parse_sft_args([path, "--prompt_template=--- {prompt} ---"])
    assert script.max_train_samples is None and model.lora_target_modules == ["c_attn", "c_proj"]
    assert script.prompt_template == "--- {prompt} ---"  # a value that starts with dashes stays a value


def test_console_scripts_answer_help(tmp_path):
    """The installed commands themselves (not only their functions) answer --help with exit code 0."""
    import shutil
    import subprocess

    for command in (["instructgpt-sft", "--help"], ["instructgpt", "collect", "--help"]):
        exe = shutil.which(command[0])
        assert exe, f"{command[0]} is not installed"
        result = subprocess.run([exe, *command[1:]], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "--help" in result.stdout and "Traceback" not in result.stderr
