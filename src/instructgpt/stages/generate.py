"""Try any causal LM by hand: one-shot generation and an interactive chat.

    instructgpt generate runs/tiny/ppo --prompt "What color is the glimmerfox?" --num_samples 3
    instructgpt chat runs/tiny/ppo

Both format prompts with the model's chat template (the SFT model saves one; a base model without one gets it from
``--prompt_template``, as in SFT) and sample through :func:`instructgpt.sampling.generate_responses`, the same code
that collection and evaluation use, so what you see here is what the pipeline sampled.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from instructgpt.data.formats import load_prompts
from instructgpt.infra.entrypoint import run_cli
from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.validation import range_problems
from instructgpt.modeling import DEFAULT_PROMPT_TEMPLATE, load_policy
from instructgpt.sampling import generate_responses


@dataclass
class Sampling:
    """How responses are sampled (see :func:`instructgpt.sampling.generate_responses`)."""

    max_new_tokens: int = field(default=64, metadata={"range": ">= 1"})
    temperature: float = field(default=0.7, metadata={"range": ">= 0"})  # 0 decodes greedily
    top_k: int = field(default=0, metadata={"range": ">= 0"})
    top_p: float = field(default=1.0, metadata={"range": "[0, 1]"})
    seed: int | None = None  # any integer

    def __post_init__(self) -> None:
        if problems := range_problems(self):
            raise InstructGPTError("; ".join(problems))


def sample(model: Any, tokenizer: Any, prompts: list[Any], settings: Sampling, num_samples: int = 1) -> list[list[str]]:
    """``responses[prompt][sample]`` with the shared sampler."""

    return generate_responses(
        model,
        tokenizer,
        prompts,
        num_samples=num_samples,
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_k=settings.top_k,
        top_p=settings.top_p,
        seed=settings.seed,
    )


def _sampling_arguments(parser: argparse.ArgumentParser, temperature: float) -> None:
    parser.add_argument("--max_new_tokens", type=int, default=64, help="Longest response, in tokens (default 64).")
    parser.add_argument(
        "--temperature",
        type=float,
        default=temperature,
        help=f"Sampling temperature; 0 decodes greedily (default {temperature}).",
    )
    parser.add_argument("--top_k", type=int, default=0, help="Sample among the k most likely tokens (0: all).")
    parser.add_argument("--top_p", type=float, default=1.0, help="Nucleus sampling mass (1.0: no truncation).")
    parser.add_argument("--seed", type=int, default=None, help="Seed the sampling for repeatable output.")
    parser.add_argument(
        "--prompt_template",
        default=DEFAULT_PROMPT_TEMPLATE,
        help="Prompt format for a model whose tokenizer has no chat template (SFT models save one).",
    )


def _settings(args: argparse.Namespace) -> Sampling:
    return Sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)


# --------------------------------------------------------------------------------------------------------------
# instructgpt generate
# --------------------------------------------------------------------------------------------------------------


def generate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instructgpt generate", description="Sample responses from any causal LM to one or more prompts."
    )
    parser.add_argument("model", metavar="MODEL", help="A model directory (SFT, PPO, any causal LM) or Hub id.")
    parser.add_argument("--prompt", action="append", default=[], help="A prompt (repeat for several).")
    parser.add_argument("--prompts_file", default=None, help="A .jsonl file with a `prompt` column: its prompts too.")
    parser.add_argument("--num_samples", type=int, default=1, help="Responses per prompt (default 1).")
    _sampling_arguments(parser, temperature=0.7)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = generate_parser().parse_args(sys.argv[1:] if argv is None else argv)

    def _run() -> None:
        prompts: list[Any] = list(args.prompt)
        if args.prompts_file:
            prompts += load_prompts(args.prompts_file, key="--prompts_file", source="instructgpt generate")
        if not prompts:
            raise InstructGPTError("instructgpt generate: give at least one --prompt (or --prompts_file)")
        if args.num_samples < 1:
            raise InstructGPTError(f"--num_samples must be >= 1, got {args.num_samples}")
        settings = _settings(args)
        model, tokenizer = load_policy(args.model, prompt_template=args.prompt_template)
        responses = sample(model, tokenizer, prompts, settings, num_samples=args.num_samples)
        for prompt, samples in zip(prompts, responses):
            print(f"### Prompt\n{prompt}")
            for i, text in enumerate(samples):
                header = "### Response" + (f" {i + 1}" if len(samples) > 1 else "")
                print(f"{header}\n{text}")
            print()

    run_cli(_run)


# --------------------------------------------------------------------------------------------------------------
# instructgpt chat
# --------------------------------------------------------------------------------------------------------------

CHAT_HELP = "Type a message and press Enter. /reset starts a new conversation, /quit (or Ctrl-D) leaves."


def chat_loop(
    model: Any,
    tokenizer: Any,
    settings: Sampling,
    read: Callable[[str], str] = input,
    write: Callable[[str], None] = print,
    system: str | None = None,
) -> list[dict[str, str]]:
    """Talk with a model turn by turn; returns the conversation when the user leaves.

    The whole conversation is the prompt of every turn (rendered by the chat template); when it outgrows the
    model's context, :func:`instructgpt.sampling.generate_responses` keeps its end.
    """

    def fresh() -> list[dict[str, str]]:
        return [{"role": "system", "content": system}] if system else []

    messages = fresh()
    write(CHAT_HELP)
    while True:
        try:
            line = read("you> ")
        except (EOFError, KeyboardInterrupt):
            write("")
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            break
        if text == "/reset":
            messages = fresh()
            write("(new conversation)")
            continue
        messages.append({"role": "user", "content": text})
        (reply,) = generate_responses(
            model,
            tokenizer,
            [messages],
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=settings.top_p,
            seed=settings.seed,
        )[0]
        messages.append({"role": "assistant", "content": reply})
        write(f"model> {reply}")
    return messages


def chat_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="instructgpt chat", description="Chat with any causal LM in the terminal.")
    parser.add_argument("model", metavar="MODEL", help="A model directory (SFT, PPO, any causal LM) or Hub id.")
    parser.add_argument("--system", default=None, help="A system message at the start of the conversation.")
    _sampling_arguments(parser, temperature=0.7)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    def _run() -> None:
        settings = _settings(args)
        model, tokenizer = load_policy(args.model, prompt_template=args.prompt_template)
        chat_loop(model, tokenizer, settings, system=args.system)

    run_cli(_run)


if __name__ == "__main__":
    main(sys.argv[1:])
