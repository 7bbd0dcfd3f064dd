"""Keys the libraries renamed or removed: read as their current form with one line, or refused saying what to write."""

from __future__ import annotations

import json
import logging

import datasets
import pytest
import torch

from instructgpt.infra.aliases import ALIASES, DONE_BY_US
from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.parser import RecipeError, RecipeParser
from instructgpt.modeling.loading import check_attention
from instructgpt.stages import load_stage
from instructgpt.stages.dpo import cut_prompts


def parse(tmp_path, stage: str, recipe: dict, argv: tuple[str, ...] = ()):
    path = tmp_path / "recipe.yaml"
    base = {"stage": stage, "model_name_or_path": "m", "output_dir": "o", "dataset_name": "d.jsonl"}
    path.write_text(json.dumps(base | recipe))
    return RecipeParser(stage, load_stage(stage).arguments()).parse(["--config", str(path), *argv])


def training_args(args):
    return next(part for part in args.parts if hasattr(part, "learning_rate"))


def script_args(args):
    return next(part for part in args.parts if hasattr(part, "if_output_exists"))


def model_args(args):
    return next(part for part in args.parts if hasattr(part, "model_name_or_path"))


def test_renamed_keys_keep_their_meaning_and_say_the_current_form(tmp_path, caplog):
    recipe = {
        "torch_dtype": "float32",
        "max_seq_length": 64,
        "warmup_ratio": 0.1,
        "overwrite_output_dir": True,
        "evaluation_strategy": "no",
        "per_gpu_train_batch_size": 3,
        "preprocessing_num_workers": 1,
        "gradient_checkpointing": False,
    }
    with caplog.at_level(logging.INFO):
        args = parse(tmp_path, "sft", recipe)
    training = training_args(args)
    assert model_args(args).dtype == "float32"
    assert training.max_length == 64 and training.warmup_steps == 0.1
    assert training.per_device_train_batch_size == 3 and training.dataset_num_proc == 1
    assert training.eval_strategy == "no"
    assert script_args(args).if_output_exists == "overwrite"
    lines = [r.getMessage() for r in caplog.records if "read `" in r.getMessage()]
    assert len(lines) == len(recipe)  # one line each, naming the current form and the release
    assert any("read `torch_dtype` as `dtype: float32`, its form since transformers 4.56" in line for line in lines)
    assert any("read `warmup_ratio` as `warmup_steps: 0.1`" in line for line in lines)
    assert any("read `overwrite_output_dir` as `if_output_exists: overwrite`" in line for line in lines)
    assert script_args(parse(tmp_path, "sft", {"overwrite_output_dir": False})).if_output_exists == "resume"


def test_a_renamed_key_is_read_in_every_stage_that_has_its_current_form(tmp_path):
    assert model_args(parse(tmp_path, "rm", {"torch_dtype": "bfloat16"})).dtype == "bfloat16"
    assert training_args(parse(tmp_path, "dpo", {"max_seq_length": 32})).max_length == 32
    assert script_args(parse(tmp_path, "dpo", {"max_prompt_length": 8})).max_prompt_length == 8


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ({"warmup_ratio": 1.5}, r"`warmup_ratio: 1.5` cannot move to `warmup_steps`.*write `warmup_steps: N`"),
        ({"warmup_ratio": 0.1, "warmup_steps": 10}, r"both set the warmup; keep `warmup_steps`"),
        ({"torch_dtype": "float32", "dtype": "bfloat16"}, r"`torch_dtype` \(renamed `dtype` in transformers 4.56\) "),
        ({"overwrite_output_dir": True, "if_output_exists": "fail"}, r"disagree; keep `if_output_exists`"),
        (
            {"dataset_mixer": {"HuggingFaceH4/ultrachat_200k": 1.0}, "dataset_splits": ["train_sft", "test_sft"]},
            r"write `dataset_mixture: \{datasets: \[\{id: HuggingFaceH4/ultrachat_200k, split: train_sft, "
            r"weight: 1.0\}\]",
        ),
    ],
)
def test_an_old_key_whose_meaning_cannot_be_given_is_refused_saying_what_to_write(tmp_path, recipe, message):
    with pytest.raises(RecipeError, match=r"recipe.yaml: .*" + message):
        parse(tmp_path, "sft", recipe)


def test_an_old_key_on_the_command_line_is_read_too(tmp_path):
    args = parse(tmp_path, "sft", {}, ("--max_seq_length", "48", "--torch_dtype", "float32"))
    assert training_args(args).max_length == 48 and model_args(args).dtype == "float32"


def test_an_old_key_a_stage_has_no_current_form_for_is_an_unknown_key(tmp_path):
    with pytest.raises(RecipeError, match=r"unknown key `max_seq_length`"):
        parse(tmp_path, "collect", {"max_seq_length": 64})


def test_the_table_names_a_release_for_every_key_and_no_key_twice():
    olds = [alias.old for alias in ALIASES + DONE_BY_US]
    assert len(olds) == len(set(olds))
    for alias in ALIASES + DONE_BY_US:
        assert alias.changed_in.split()[0] in {"transformers", "TRL", "alignment-handbook's"}, alias
        assert alias.old != alias.current


def test_flash_attention_without_its_package_or_a_gpu_is_refused_naming_what_is_missing(monkeypatch):
    check_attention("sdpa", "recipe.yaml")  # nothing to check
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(
        InstructGPTError, match=r"recipe.yaml: `attn_implementation: flash_attention_2` needs .*a CUDA GPU.*sdpa"
    ):
        check_attention("flash_attention_2", "recipe.yaml")


def test_max_prompt_length_keeps_the_end_of_each_prompt(caplog):
    dataset = datasets.Dataset.from_dict(
        {"prompt_ids": [[1, 2, 3, 4, 5], [6, 7]], "chosen_ids": [[8], [9]], "rejected_ids": [[10], [11]]}
    )
    assert cut_prompts(dataset, None, "train") is dataset
    with caplog.at_level(logging.INFO):
        cut = cut_prompts(dataset, 3, "train")
    assert cut["prompt_ids"] == [[3, 4, 5], [6, 7]]  # the turn being answered stays; the oldest context goes
    assert cut["chosen_ids"] == [[8], [9]] and cut["rejected_ids"] == [[10], [11]]
    assert any("1 of 2 prompts are longer than max_prompt_length=3" in r.getMessage() for r in caplog.records)
