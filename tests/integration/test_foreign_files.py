"""Files from elsewhere end in one line that names them and says what to do, and never run the code they carry.

Every fault here is real: a pickle whose unpickling would run a shell command, a safetensors file cut in half, a
model directory whose config asks to import a Python file it ships, a reward model where a policy belongs, a bare
backbone with no head, and models whose tokenizers or embeddings do not fit together. The marker files those
payloads would write are checked to be absent.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from helpers import TINY_BASE, one_line_error, python_m, run_cli
from instructgpt.infra.errors import InstructGPTError

SFT = ["--max_steps", "1", "--report_to", "none", "--save_strategy", "no", "--eval_strategy", "no"]


class RunsAShellCommand:
    """Unpickled, this would run ``touch <marker>``: what a hostile checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def copy_of_base(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    shutil.copytree(TINY_BASE, folder)
    (folder / "instructgpt_run.json").unlink(missing_ok=True)
    return folder


def sft_error(model: Path, tmp_path: Path) -> str:
    """Run ``instructgpt-sft`` from ``model`` as a user would; its one-line error."""
    result = run_cli(
        python_m(
            "instructgpt.stages.sft",
            "recipes/tiny/sft.yaml",
            "--model_name_or_path",
            str(model),
            "--output_dir",
            str(tmp_path / "out"),
            *SFT,
        )
    )
    return one_line_error(result)


def test_weights_that_are_an_unsafe_pickle_are_refused_without_running_them(tmp_path):
    marker = tmp_path / "pickle-ran"
    model = copy_of_base(tmp_path, "pickled")
    (model / "model.safetensors").unlink()
    torch.save({"transformer.wte.weight": RunsAShellCommand(marker)}, model / "pytorch_model.bin")
    line = sft_error(model, tmp_path)
    assert "`model_name_or_path`" in line and str(model) in line
    assert "pickle that is not plain tensors" in line and "safetensors" in line
    assert "weights_only=False" not in line and "weights_only` set to `False" not in line
    assert not marker.exists()


def test_a_cut_off_safetensors_file_is_named(tmp_path):
    model = copy_of_base(tmp_path, "cut")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    line = sft_error(model, tmp_path)
    assert str(model) in line and "is not a whole safetensors file" in line and "copy or download it again" in line


def test_a_model_that_asks_to_run_its_own_code_is_refused_and_told_how_to_allow_it(tmp_path):
    marker = tmp_path / "remote-code-ran"
    model = copy_of_base(tmp_path, "remote")
    config = json.loads((model / "config.json").read_text())
    config.update(
        model_type="shipped_code",
        auto_map={"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XModel"},
    )
    (model / "config.json").write_text(json.dumps(config))
    for name in ("configuration_x.py", "modeling_x.py"):
        (model / name).write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    line = sft_error(model, tmp_path)
    assert str(model) in line and "asks to run code" in line and "`trust_remote_code: true`" in line
    assert not marker.exists()


def test_models_of_the_wrong_kind_are_refused_before_training(tmp_path):
    from transformers import AutoConfig, GPT2ForSequenceClassification, GPT2Model

    config = AutoConfig.from_pretrained(TINY_BASE)
    reward = tmp_path / "reward-model"
    GPT2ForSequenceClassification(AutoConfig.from_pretrained(TINY_BASE, num_labels=1)).save_pretrained(reward)
    shutil.copy(TINY_BASE / "tokenizer.json", reward)
    shutil.copy(TINY_BASE / "tokenizer_config.json", reward)
    line = sft_error(reward, tmp_path)
    assert f"`model_name_or_path`: {reward} holds a reward model (GPT2ForSequenceClassification)" in line

    backbone = tmp_path / "backbone"
    GPT2Model(config).save_pretrained(backbone)
    line = sft_error(backbone, tmp_path)
    assert f"{backbone} holds a GPT2Model, which has no language-model head" in line
    assert not (tmp_path / "out" / "instructgpt_run.json").exists()


def _ppo(sft_model: Path, reward: Path, tmp_path: Path) -> None:
    from instructgpt.stages.ppo.run import parse_args, run_ppo

    (script, config, model), recipe = parse_args(
        [
            "recipes/tiny/ppo.yaml",
            "--model_name_or_path",
            str(sft_model),
            "--reward_model_path",
            str(reward),
            "--output_dir",
            str(tmp_path / "ppo"),
            "--report_to",
            "none",
            "--total_episodes",
            "16",
            "--per_device_train_batch_size",
            "8",
            "--gradient_accumulation_steps",
            "2",
        ]
    )
    run_ppo(script, config, model, recipe)


def test_models_that_must_share_token_ids_are_checked_before_any_training(sft_model, trained_rm, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rm_path = trained_rm[0]
    # a reward model whose tokenizer has one token more than the policy's
    other = tmp_path / "other-tokenizer"
    shutil.copytree(rm_path, other)
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["<not-in-the-policy>"])
    tokenizer.save_pretrained(other)
    with pytest.raises(InstructGPTError) as err:
        _ppo(sft_model, other, tmp_path)
    size = len(AutoTokenizer.from_pretrained(sft_model))
    message = str(err.value)
    assert f"`reward_model_path` ({other})" in message and f"the policy ({sft_model})" in message
    assert f"({size} tokens against {size + 1})" in message
    assert not (tmp_path / "ppo" / "metrics.jsonl").exists()

    # the same tokenizer, but embeddings for fewer ids than it has: PPO used to die mid-rollout in an IndexError
    small = tmp_path / "small-embeddings"
    model = AutoModelForSequenceClassification.from_pretrained(rm_path)
    model.resize_token_embeddings(size - 10)
    model.save_pretrained(small)
    AutoTokenizer.from_pretrained(rm_path).save_pretrained(small)
    with pytest.raises(InstructGPTError, match=rf"has embeddings for {size - 10} token ids, but the policy"):
        _ppo(sft_model, small, tmp_path)
    assert not (tmp_path / "ppo" / "metrics.jsonl").exists()


def test_an_empty_data_file_says_it_is_empty(tmp_path):
    empty = tmp_path / "data.jsonl"
    empty.write_text("\n\n")
    result = run_cli(
        python_m(
            "instructgpt.stages.sft",
            "recipes/tiny/sft.yaml",
            "--dataset_name",
            str(empty),
            "--output_dir",
            str(tmp_path / "out"),
            *SFT,
        )
    )
    assert one_line_error(result).endswith(f"`dataset_name`: {empty} is empty: it holds no rows")
