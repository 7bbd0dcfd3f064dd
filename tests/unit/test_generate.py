"""`instructgpt generate` and `instructgpt chat` on any causal LM."""

from __future__ import annotations

import pytest

from helpers import TINY_BASE
from instructgpt import cli
from instructgpt.modeling import load_policy
from instructgpt.stages import generate
from instructgpt.stages.generate import Sampling, chat_loop


def _responses(output: str) -> list[str]:
    blocks = output.split("### Response")[1:]
    return [b.split("\n", 1)[1].split("### ")[0].strip() for b in blocks]


def test_generate_prints_every_sample_and_is_repeatable_with_a_seed(capsys):
    argv = [
        "generate",
        str(TINY_BASE),
        "--prompt",
        "What color is the glimmerfox?",
        "--prompt",
        "What is 2 plus 3?",
        "--num_samples",
        "2",
        "--max_new_tokens",
        "8",
        "--seed",
        "3",
        "--temperature",
        "1.0",
    ]
    cli.main(argv)
    first = capsys.readouterr().out
    assert first.count("### Prompt") == 2 and first.count("### Response") == 4
    assert "What color is the glimmerfox?" in first
    cli.main(argv)
    assert capsys.readouterr().out == first


def test_generate_errors(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        generate.main([str(TINY_BASE)])
    assert exit_.value.code == 2 and "at least one --prompt" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        generate.main([str(tmp_path / "nope"), "--prompt", "hi"])
    assert exit_.value.code == 2 and "no model directory" in capsys.readouterr().err


def test_chat_keeps_the_conversation_and_resets_it(monkeypatch):
    model, tokenizer = load_policy(str(TINY_BASE))
    seen = []
    real = generate.generate_responses

    def spy(model, tokenizer, prompts, **kwargs):
        seen.append([list(p) for p in prompts])
        return real(model, tokenizer, prompts, **kwargs)

    monkeypatch.setattr(generate, "generate_responses", spy)  # the sampler the chat loop calls
    inputs = iter(["What is 2 plus 3?", "", "And 4 plus 4?", "/reset", "Tell me about the glimmerfox.", "/quit"])
    written = []
    messages = chat_loop(
        model,
        tokenizer,
        Sampling(max_new_tokens=6, seed=0),
        read=lambda _: next(inputs),
        write=written.append,
        system="Be brief.",
    )
    assert len(seen) == 3
    assert [m["role"] for m in seen[0][0]] == ["system", "user"]
    assert [m["role"] for m in seen[1][0]] == ["system", "user", "assistant", "user"]  # the history is the prompt
    assert seen[1][0][1]["content"] == "What is 2 plus 3?"
    assert [m["content"] for m in seen[2][0]] == ["Be brief.", "Tell me about the glimmerfox."]  # after /reset
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert sum(w.startswith("model> ") for w in written) == 3 and "(new conversation)" in written


def test_chat_ends_on_end_of_input():
    model, tokenizer = load_policy(str(TINY_BASE))

    def read(_):
        raise EOFError

    assert chat_loop(model, tokenizer, Sampling(max_new_tokens=4), read=read, write=lambda _: None) == []
