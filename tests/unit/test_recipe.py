"""Recipes: parsing, overrides, and the errors a user sees for bad recipes."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from instructgpt.infra.parser import RecipeError, load_yaml, recipe_stage, split_argv
from instructgpt.infra.validation import range_of
from instructgpt.stages.ppo.config import PPOConfig
from instructgpt.stages.ppo.run import main as ppo_main
from instructgpt.stages.ppo.run import parse_args as parse_ppo_args
from instructgpt.stages.sft import parse_args as parse_sft_args

MINIMAL = (
    "stage: sft\nmodel_name_or_path: data/tiny/base-model\ndataset_name: data/tiny/sft_train.jsonl\n"
    "output_dir: runs/x\n"
)


def _write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_recipe_and_command_line_overrides(tmp_path):
    path = _write(tmp_path, MINIMAL + "learning_rate: 3.0e-4\nnum_train_epochs: 2\nuse_peft: false\n")
    (script, training, model), recipe = parse_sft_args(
        [
            path,
            "--learning_rate",
            "1e-5",
            "--output_dir",
            "runs/y",
            "--use_peft",
            "--lora_target_modules",
            "c_attn,c_proj",
        ]
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


# ----------------------------------------------------------------------------------------------------------------
# One shape for every entry point: --help, --config, --version, the stage inferred from the entry point
# ----------------------------------------------------------------------------------------------------------------

ENTRY_POINTS = {
    "instructgpt": ("instructgpt.cli", []),
    "instructgpt-sft": ("instructgpt.stages.sft", []),
    "instructgpt-rm": ("instructgpt.stages.rm", []),
    "instructgpt-ppo": ("instructgpt.stages.ppo.run", []),
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
    "instructgpt-sft": [
        "--learning_rate",
        "--lora_r",
        "--long_examples",
        "--if_output_exists",
        "(default: resume)",
        "(range: >= 0) (default: 2e-05)",
        "(range: [0, 1]) (default: 0.05)",
    ],
    "instructgpt-rm": ["--demonstrations_dataset", "--eval_fraction", "--center_rewards_coefficient"],
    "instructgpt-ppo": ["--kl_coef", "--cliprange_value", "--reward_model_path", "--ptx_coef"],
    "instructgpt-rloo": ["--num_generations", "--beta", "--reward_model_path", "--missing_eos_penalty"],
    "instructgpt collect": [
        "--num_responses",
        "K: responses sampled and ranked per prompt",
        "(range: >= 2) (default: 4)",
        "(range: (0, 1]) (default: 0.9)",
    ],
    "instructgpt eval": ["--models", "--labeler", "--ppo_run"],
    "instructgpt pipeline": ["--rounds", "--sft", "--eval"],
    "instructgpt pretrain": ["--n_layer", "--block_size", "(range: [0, 0.5)) (default: 0.02)"],
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
    trl_recipe = _write(
        tmp_path,
        "model_name_or_path: data/tiny/base-model\ndataset_name: data/tiny/sft_train.jsonl\n"
        "output_dir: runs/trl\nlearning_rate: 2.0e-5\nnum_train_epochs: 1\nmax_length: 64\n"
        "packing: false\ngradient_checkpointing: true\nlogging_steps: 5\n",
    )
    (script, training, model), recipe = parse_sft_args(["--config", trl_recipe, "--learning_rate", "1e-4"])
    assert training.learning_rate == 1e-4 and training.max_length == 64 and training.gradient_checkpointing
    assert model.model_name_or_path == "data/tiny/base-model" and recipe.stage == "sft"
    with pytest.raises(RecipeError, match="two recipes given"):
        parse_sft_args([trl_recipe, "--config", trl_recipe])


def test_a_trl_recipe_env_sets_its_variables_and_a_bad_one_is_refused(tmp_path, monkeypatch):
    """TRL's CLI recipes may carry `env:` (its TrlParser sets them); so do ours."""
    monkeypatch.setenv("INSTRUCTGPT_TEST_VAR", "before")  # restored to absent after the test
    base = "model_name_or_path: data/tiny/base-model\ndataset_name: data/tiny/sft_train.jsonl\noutput_dir: runs/x\n"
    parse_sft_args([_write(tmp_path, base + "env:\n  INSTRUCTGPT_TEST_VAR: 3\n")])
    assert os.environ["INSTRUCTGPT_TEST_VAR"] == "3"
    with pytest.raises(RecipeError, match=r"recipe.yaml: `env` must be a mapping of environment variable names"):
        parse_sft_args([_write(tmp_path, base + "env: [A, B]\n")])
    with pytest.raises(RecipeError, match=r"`env.A` must be a single value"):
        parse_sft_args([_write(tmp_path, base + "env:\n  A: [1, 2]\n")])


def test_a_value_taking_key_without_its_value_is_an_error(tmp_path):
    path = _write(tmp_path, MINIMAL)
    with pytest.raises(RecipeError, match="`--output_dir` needs a value"):
        parse_sft_args([path, "--output_dir"])
    (script, training, model), _ = parse_sft_args([path, "--use_peft"])  # a bare boolean flag means true
    assert model.use_peft is True


def test_null_and_flow_lists_and_negative_values(tmp_path):
    path = _write(
        tmp_path, MINIMAL + "max_train_samples: null\nlora_target_modules: [c_attn, c_proj]\ndataset_test_split: null\n"
    )
    (script, training, model), _ = parse_sft_args([path, "--prompt_template=--- {prompt} ---"])
    assert script.max_train_samples is None and model.lora_target_modules == ["c_attn", "c_proj"]
    assert script.prompt_template == "--- {prompt} ---"  # a value that starts with dashes stays a value


def test_instructgpt_help_lists_every_stage_of_the_registry(capsys):
    from instructgpt import cli
    from instructgpt.stages import STAGES

    cli.main(["--help"])
    out = capsys.readouterr().out
    assert f"Stages: {', '.join(STAGES)}." in out and "dpo" in out and "rloo" in out


# ----------------------------------------------------------------------------------------------------------------
# Ranges: declared once, on the field (infra/validation.py); the name table only for TRL's and transformers' fields
# ----------------------------------------------------------------------------------------------------------------

# numeric fields of ours that truly have no range, and why
NO_RANGE = {
    "seed": "any integer seeds a generator",
    "labeler_seed": "any integer seeds the simulated labeler's noise",
}


def _numeric(annotation) -> bool:
    """``int``, ``float`` or an optional one (``bool`` is not a number here)."""
    import types
    import typing

    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(args) and all(a in (int, float) for a in args)
    return False


def _stage_fields():
    """``(stage, dataclass, field, annotation)`` for every field of every stage's recipe dataclasses."""
    import dataclasses
    import typing

    from instructgpt.stages import STAGES, load_stage

    for stage in STAGES:
        for cls in load_stage(stage).arguments():
            hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                yield stage, cls, f, hints.get(f.name, f.type)


def test_every_number_of_ours_declares_its_range_on_its_field():
    """A numeric field of a dataclass defined in instructgpt declares ``metadata["range"]``: its range is never
    guessed from its name, and parsing, --help and this test read it from one place."""
    from instructgpt.infra.validation import declared_in, is_ours

    missing = sorted(
        {
            f"{declared_in(cls, f.name).__qualname__}.{f.name}"
            for stage, cls, f, annotation in _stage_fields()
            if _numeric(annotation)
            and is_ours(declared_in(cls, f.name))
            and "range" not in f.metadata
            and f.name not in NO_RANGE
        }
    )
    assert not missing, f"numeric fields without a declared range: {missing}"


def test_the_name_table_ranges_only_foreign_fields():
    """The name rules give the range of TRL's, transformers' and peft's fields and of no field of ours; each rule
    still ranges some field a stage reads (no dead rules)."""
    import re

    from instructgpt.infra.validation import RULES, declared_in, is_ours, range_of

    used = set()
    for _stage, cls, f, annotation in _stage_fields():
        owner = declared_in(cls, f.name)
        if is_ours(owner):
            assert range_of(f, cls) == f.metadata.get("range"), f"{owner.__qualname__}.{f.name}"
        elif _numeric(annotation):
            used |= {pattern for pattern, _ in RULES if re.search(pattern, f.name)}
    assert used == {pattern for pattern, _ in RULES}


@pytest.mark.parametrize(
    "spec, inside, outside, words",
    [
        ("[0, 1]", [0, 0.5, 1], [-0.1, 1.1], "between 0 and 1"),
        ("(0, 1]", [1e-9, 1], [0, 1.5], "greater than 0 and at most 1"),
        ("[0, 0.5)", [0, 0.49], [0.5, -1], "at least 0 and less than 0.5"),
        (">= 2", [2, 3], [1], "at least 2"),
        ("> 0", [1e-9], [0, -1], "greater than 0"),
    ],
)
def test_range_forms(spec, inside, outside, words):
    from instructgpt.infra import validation

    assert all(validation.in_range(x, spec) for x in inside) and not any(validation.in_range(x, spec) for x in outside)
    assert validation.words(spec) == words


def test_a_declared_range_is_checked_when_parsed_and_when_built_directly():
    from instructgpt.stages.collect import CollectArguments
    from instructgpt.stages.collect import parse_args as collect_args
    from instructgpt.stages.pretrain import PretrainArguments

    with pytest.raises(
        RecipeError,
        match=r"collect\.yaml: `vllm_gpu_memory_utilization` must be greater than 0 and "
        r"at most 1, got 0\.0",
    ):
        collect_args(["recipes/tiny/collect.yaml", "--vllm_gpu_memory_utilization", "0"])
    with pytest.raises(RecipeError, match=r"`num_responses` must be at least 2, got 1"):
        collect_args(["recipes/tiny/collect.yaml", "--num_responses", "1"])
    with pytest.raises(ValueError, match=r"`num_responses` must be at least 2, got 1"):
        CollectArguments(num_responses=1)
    with pytest.raises(ValueError, match=r"`validation_fraction` must be at least 0 and less than 0\.5, got 0\.5"):
        PretrainArguments(validation_fraction=0.5)
