"""Reward-model ensembles: the aggregations (values and float64 gradcheck), the folder, and the model as one."""

from __future__ import annotations

import json

import pytest
import torch
from torch.autograd import gradcheck
from transformers import GPT2Config, GPT2ForSequenceClassification

from instructgpt.modeling.ensemble import (
    ENSEMBLE_FILE,
    EnsembleError,
    EnsembleManifest,
    RewardEnsemble,
    aggregate_rewards,
    disagreement,
    member_paths,
    read_manifest,
    resolve_aggregation,
)


def test_each_aggregation_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 6.0], [0.5, 0.5, 0.5]])
    assert aggregate_rewards(rewards, "mean").tolist() == [3.0, 0.5]
    assert aggregate_rewards(rewards, "min").tolist() == [1.0, 0.5]
    std = (((1 - 3) ** 2 + (2 - 3) ** 2 + (6 - 3) ** 2) / 3) ** 0.5  # population std of 1, 2, 6
    torch.testing.assert_close(aggregate_rewards(rewards, "mean_minus_std", 0.5), torch.tensor([3 - 0.5 * std, 0.5]))
    torch.testing.assert_close(disagreement(rewards), torch.tensor([std, 0.0]))
    # one member: every aggregation is that member's reward, and no spread
    single = torch.tensor([[0.7], [-1.2]])
    for aggregation in ("mean", "min", "mean_minus_std"):
        assert aggregate_rewards(single, aggregation, 3.0).tolist() == pytest.approx([0.7, -1.2])
    assert disagreement(single).tolist() == [0.0, 0.0]
    with pytest.raises(EnsembleError, match="unknown reward aggregation 'max'"):
        aggregate_rewards(rewards, "max")


@pytest.mark.parametrize("aggregation", ["mean", "min", "mean_minus_std"])
def test_aggregation_gradcheck(aggregation):
    torch.manual_seed(0)
    rewards = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)  # distinct values: min and std are smooth
    assert gradcheck(lambda r: aggregate_rewards(r, aggregation, 0.7), (rewards,))
    assert gradcheck(disagreement, (rewards,))


def tiny_member(seed: int, shift: float) -> GPT2ForSequenceClassification:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=50, n_positions=16, n_embd=8, n_layer=1, n_head=2, num_labels=1, pad_token_id=0)
    model = GPT2ForSequenceClassification(config).eval()
    model.config.reward_shift = shift
    return model


def test_an_ensemble_module_scores_as_the_aggregate_of_its_shifted_members():
    members = [tiny_member(0, 0.3), tiny_member(1, -0.2), tiny_member(2, 0.0)]
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        each = torch.cat([m(input_ids=ids, attention_mask=mask).logits for m in members], dim=-1)
        each = each - torch.tensor([0.3, -0.2, 0.0])
        for aggregation in ("mean", "min", "mean_minus_std"):
            out = RewardEnsemble(members, aggregation, 2.0)(input_ids=ids, attention_mask=mask)
            assert out.logits.shape == (2, 1) and out.member_rewards.shape == (2, 3)
            torch.testing.assert_close(out.member_rewards, each)
            torch.testing.assert_close(out.logits.squeeze(-1), aggregate_rewards(each, aggregation, 2.0))
    ensemble = RewardEnsemble(members)
    assert ensemble.config.reward_shift == 0.0  # the members' shifts are applied inside
    assert members[0].config.reward_shift == 0.3  # and their own configs are left alone


def write_ensemble(tmp_path, members=("members/0", "members/1"), **extra):
    for member in members:
        (tmp_path / member).mkdir(parents=True, exist_ok=True)
    manifest = EnsembleManifest(members=tuple(members), diversity=("seed",), **extra)
    (tmp_path / ENSEMBLE_FILE).write_text(json.dumps(manifest.to_json()))
    return tmp_path


def test_the_manifest_names_the_members_and_the_default_aggregation(tmp_path):
    folder = write_ensemble(tmp_path, aggregation="min", std_coef=2.5)
    manifest = read_manifest(folder)
    assert manifest.members == ("members/0", "members/1") and manifest.diversity == ("seed",)
    assert member_paths(folder) == [str(folder / "members/0"), str(folder / "members/1")]
    assert member_paths("runs/one-rm") == ["runs/one-rm"]  # a single reward model is its own only member
    assert resolve_aggregation(folder, None, None) == ("min", 2.5)  # the ensemble's own default
    assert resolve_aggregation(folder, "mean_minus_std", 0.5) == ("mean_minus_std", 0.5)  # the recipe's choice
    assert resolve_aggregation(tmp_path / "single", None, None) == ("mean", 1.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", r"cannot read the ensemble manifest .*reward_ensemble.json"),
        (json.dumps({"members": []}), r"must list its `members`"),
        (json.dumps({"members": ["members/9"]}), r"names member 'members/9', which is not a folder there"),
        (json.dumps({"members": ["members/0"], "aggregation": "max"}), r"unknown aggregation 'max'"),
    ],
)
def test_a_broken_manifest_is_one_line_naming_the_file(tmp_path, text, message):
    write_ensemble(tmp_path)
    (tmp_path / ENSEMBLE_FILE).write_text(text)
    with pytest.raises(EnsembleError, match=r"recipe: `reward_model_path`: .*" + message):
        read_manifest(tmp_path)
