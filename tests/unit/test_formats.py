"""One rule turns a row into a prompt, for every stage (SFT, RM, collection, PPO, evaluation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import instructgpt
from instructgpt.data import DataError
from instructgpt.data.formats import (
    load_demonstrations,
    load_prompts,
    prompt_of,
    split_conversation,
    to_prompt_completion,
)

SYSTEM = {"role": "system", "content": "Answer briefly."}
U1, A1 = {"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "content": "5."}
U2, A2 = {"role": "user", "content": "And 4 plus 4?"}, {"role": "assistant", "content": "8."}


def test_a_conversation_ending_with_a_user_turn_is_all_prompt():
    assert split_conversation([SYSTEM, U1, A1, U2]) == ([SYSTEM, U1, A1, U2], None)
    assert prompt_of({"messages": [SYSTEM, U1, A1, U2]}) == [SYSTEM, U1, A1, U2]


def test_a_conversation_ending_with_an_assistant_turn_is_a_demonstration():
    assert split_conversation([U1, A1, U2, A2]) == ([U1, A1, U2], A2)
    assert prompt_of({"messages": [U1, A1, U2, A2]}) == [U1, A1, U2]
    assert to_prompt_completion({"messages": [U1, A1, U2, A2]}) == {"prompt": [U1, A1, U2], "completion": [A2]}
    # a dataset with both columns (no_robots) is read through its messages, system turn included
    assert prompt_of({"prompt": "What is 2 plus 3?", "messages": [SYSTEM, U1, A1]}) == [SYSTEM, U1]
    assert prompt_of({"prompt": "plain"}) == "plain"


def test_every_stage_loads_prompts_and_demonstrations_through_the_one_rule(tmp_path):
    path = tmp_path / "chats.jsonl"
    rows = [{"messages": [SYSTEM, U1, A1, U2]}, {"messages": [U1, A1, U2, A2]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = load_prompts(str(path), key="dataset_name", source="test")
    assert prompts == [[SYSTEM, U1, A1, U2], [U1, A1, U2]]

    stages = Path(instructgpt.__file__).parent / "stages"
    for stage in (stages / "collect.py", stages / "eval", stages / "ppo"):
        # each reads its prompts with load_prompts, never a rule of its own (a package: all its modules)
        files = sorted(stage.rglob("*.py")) if stage.is_dir() else [stage]
        source = "".join(f.read_text(encoding="utf-8") for f in files)
        assert "load_prompts" in source, stage.name
        assert "_before_last_assistant" not in source and "prompt_from_row" not in source

    with pytest.raises(DataError, match=r"line 1: `messages` does not end with an assistant turn"):
        load_demonstrations(str(path), config=None, split="train", key="dataset_name", source="test", limit=None)
    path.write_text(json.dumps(rows[1]) + "\n")
    demos = load_demonstrations(str(path), config=None, split="train", key="dataset_name", source="test", limit=None)
    assert demos[0]["prompt"] == [U1, A1, U2] and demos[0]["completion"] == [A2]
