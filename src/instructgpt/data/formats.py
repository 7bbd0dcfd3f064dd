"""Row formats: the one rule that turns a dataset row into a prompt (and a demonstration into prompt + completion).

Every stage reads prompts through these functions, so SFT, the reward model, collection, PPO and evaluation agree on
what the model is asked. The formats are TRL's (https://huggingface.co/docs/trl/dataset_formats):

- ``prompt`` (a string, or chat turns) and ``prompt``/``completion``;
- ``messages``: a conversation, split by :func:`split_conversation`: when it ends with an assistant turn, that turn
  is the demonstration and every turn before it (system turns and earlier exchanges included) is the prompt; when
  it ends with any other turn, it is all prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from instructgpt.data.loading import DataError, find_empty, load_data, require_columns, require_rows, row_place
from instructgpt.data.mixtures import mixable

Prompt = str | list[dict[str, str]]


def turns_problem(value: Any) -> str | None:
    """Why ``value`` is not a list of chat turns (``{"role": str, "content": str}``), or None when it is."""
    if not isinstance(value, list):
        return f"must be a list of chat turns, got {type(value).__name__}"
    for i, turn in enumerate(value):
        if (
            not isinstance(turn, dict)
            or not isinstance(turn.get("role"), str)
            or not isinstance(turn.get("content"), str)
        ):
            return f'turn {i + 1} must be {{"role": ..., "content": ...}} with string values, got {turn!r:.80}'
    return None


def prompt_problem(value: Any) -> str | None:
    """Why ``value`` cannot be a prompt (a string, or chat turns), or None when it can."""
    if isinstance(value, str):
        return None
    if isinstance(value, list):
        return turns_problem(value)
    return f"must be a string or a list of chat turns, got {type(value).__name__} {value!r:.60}"


def split_conversation(messages: Sequence[dict[str, str]]) -> tuple[list[dict[str, str]], dict[str, str] | None]:
    """The one rule that splits a conversation: ``(prompt turns, the response turn or None)``.

    A conversation that ends with an assistant turn is a demonstration: that turn is the response and every turn
    before it (system, earlier exchanges) is the prompt. One that ends with any other turn is all prompt: the model
    is asked to write the next assistant turn. So ``[system, user, assistant, user]`` is a four-turn prompt and
    ``[user, assistant, user, assistant]`` is a three-turn prompt with its demonstration.
    """
    messages = list(messages)
    if messages and messages[-1].get("role") == "assistant":
        return messages[:-1], messages[-1]
    return messages, None


def prompt_of(row: dict[str, Any]) -> Prompt:
    """The prompt of any row: the prompt part of ``messages`` when the row has them (system turns included; a
    dataset such as no_robots has both columns), else ``prompt`` as it is (a string or chat turns)."""
    if row.get("messages"):
        return split_conversation(row["messages"])[0]
    return row["prompt"]


def to_prompt_completion(example: dict[str, Any]) -> dict[str, Any]:
    """One demonstration as TRL's conversational prompt/completion pair (``messages`` split by
    :func:`split_conversation`)."""
    if example.get("messages"):
        prompt, response = split_conversation(example["messages"])
        return {"prompt": prompt, "completion": [response]}
    return {
        "prompt": [{"role": "user", "content": example["prompt"]}],
        "completion": [{"role": "assistant", "content": example["completion"]}],
    }


@mixable
def load_demonstrations(name: str, *, config: str | None, split: str, key: str, source: str, limit: int | None) -> Any:
    """Load, validate and convert one demonstration dataset; errors name the key, the column and the row."""
    dataset = load_data(name, key=key, source=source, config=config, split=split)
    fmt = require_columns(dataset, [("prompt", "completion"), ("messages",)], name=f"`{key}` ({name})", source=source)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    require_rows(dataset, name=f"`{key}` ({name})", source=source)
    for row, example in enumerate(dataset):
        for column in fmt:
            problem = (
                turns_problem(example[column])
                if column == "messages"
                else (
                    None
                    if isinstance(example[column], str) or example[column] is None
                    else f"must be a string, got {type(example[column]).__name__}"
                )
            )
            if problem:
                raise DataError(f"{source}: `{key}` ({name}) {row_place(name, row)}: `{column}` {problem}")
    if fmt == ("messages",):
        for row, messages in enumerate(dataset["messages"]):
            if split_conversation(messages or [])[1] is None:
                raise DataError(
                    f"{source}: `{key}` ({name}) {row_place(name, row)}: `messages` does not end with an assistant "
                    "turn, so it "
                    "holds no demonstration"
                )
    else:
        for column in fmt:
            row = find_empty(dataset[column])
            if row is not None:
                raise DataError(f"{source}: `{key}` ({name}) {row_place(name, row)}: empty `{column}`")
    return dataset.map(to_prompt_completion, remove_columns=dataset.column_names, desc=f"Formatting {key}")


@mixable
def load_prompts(
    name: str,
    *,
    key: str,
    source: str,
    config: str | None = None,
    split: str = "train",
    limit: int | None = None,
) -> list[Prompt]:
    """Load and validate a prompt dataset (a ``prompt`` or a ``messages`` column); errors name the key and row."""
    dataset = load_data(name, key=key, source=source, config=config, split=split)
    fmt = require_columns(dataset, [("messages",), ("prompt",)], name=f"`{key}` ({name})", source=source)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    require_rows(dataset, name=f"`{key}` ({name})", source=source)
    prompts = [prompt_of(row) for row in dataset]
    for row, prompt in enumerate(prompts):
        problem = prompt_problem(prompt) if prompt is not None else None
        if problem:
            raise DataError(f"{source}: `{key}` ({name}) {row_place(name, row)}: the {fmt[0]} {problem}")
    empty = find_empty(prompts)
    if empty is not None:
        raise DataError(f"{source}: `{key}` ({name}) {row_place(name, empty)}: empty `{fmt[0]}`")
    for row, prompt in enumerate(prompts):
        if isinstance(prompt, list) and not any(m.get("role") == "user" for m in prompt):
            raise DataError(f"{source}: `{key}` ({name}) {row_place(name, row)}: no user turn to respond to")
    return prompts


def prompt_text(prompt: str | Sequence[dict[str, str]]) -> str:
    """A prompt as plain text: a string as it is, chat messages as the content of the last user turn."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise DataError(f"chat prompt {prompt!r} has no user turn")
    return users[-1]
