"""Loading tokenizers the same way in every stage, and the prompt format they carry.

The prompt format lives in the tokenizer. A base model without a chat template (GPT-2 has none) gets one built
from the recipe's ``prompt_template`` before SFT, and it is saved with the SFT model, so that collection, the
reward model, PPO and evaluation format prompts exactly as SFT did, with no template setting of their own.

The pad token, EOS and chat template come from the tokenizer (the recipe may override each).
"""

from __future__ import annotations

import json
from typing import Any

from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.log import get_logger
from instructgpt.modeling.config import ModelLoadError, load_pretrained

logger = get_logger(__name__)

DEFAULT_PROMPT_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"


def prompt_template_to_chat_template(prompt_template: str) -> str:
    """Turn ``"...{prompt}..."`` into an equivalent Jinja chat template for a base model.

    A user turn renders as the template around its content; an assistant turn renders as its content followed by
    the EOS token, so the model learns to stop; a system turn is a paragraph before the first instruction. The
    rendering of a prompt with ``add_generation_prompt=True`` is a prefix of the rendering of prompt + response,
    which is what SFT's response-only loss and generation both rely on.
    """
    if prompt_template.count("{prompt}") != 1:
        raise InstructGPTError(f"prompt_template must contain `{{prompt}}` exactly once, got {prompt_template!r}")
    prefix, suffix = prompt_template.split("{prompt}")
    return (
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'system' -%}{{ message['content'] + " + json.dumps("\n\n") + " }}"
        "{%- elif message['role'] == 'user' -%}{{ "
        + json.dumps(prefix)
        + " + message['content'] + "
        + json.dumps(suffix)
        + " }}"
        "{%- elif message['role'] == 'assistant' -%}{{ message['content'] + eos_token }}"
        "{%- endif -%}"
        "{%- endfor -%}"
    )


def load_tokenizer(
    name_or_path: str,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    chat_template: str | None = None,
    prompt_template: str | None = DEFAULT_PROMPT_TEMPLATE,
    pad_token: str | None = None,
    padding_side: str = "right",
    key: str = "model_name_or_path",
    source: str = "recipe",
) -> Any:
    """Load a tokenizer and give it what our stages need: a pad token and a chat template.

    - pad token: the recipe's ``pad_token`` if set, else the tokenizer's own, else its EOS token (GPT-2 has no pad
      token; with attention masks, padding with EOS is safe, and labels on padding are ignored anyway);
    - chat template: the recipe's ``chat_template`` if set, else the tokenizer's own, else one built from
      ``prompt_template``.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = load_pretrained(
            AutoTokenizer, name_or_path, key=key, source=source, revision=revision, trust_remote_code=trust_remote_code
        )
    except OSError as err:
        raise ModelLoadError(f"{source}: `{key}`: cannot load a tokenizer from {name_or_path}: {err}") from None
    if pad_token is not None:
        tokenizer.pad_token = pad_token
    elif tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    elif not tokenizer.chat_template:
        if prompt_template is None:
            raise ModelLoadError(
                f"{name_or_path}: the tokenizer has no chat template; set `prompt_template` or `chat_template`"
            )
        tokenizer.chat_template = prompt_template_to_chat_template(prompt_template)
    tokenizer.padding_side = padding_side
    return tokenizer


def stage_tokenizer(
    model_path: str, script_args: Any, model_args: Any, source: str, trust_remote_code: bool = False
) -> Any:
    """The tokenizer of a training stage, from the recipe's ``prompt_template``, ``chat_template`` and ``pad_token``
    (see :func:`load_tokenizer`); ``source`` is the recipe, named in an error."""
    return load_tokenizer(
        model_path,
        source=source,
        revision=getattr(model_args, "model_revision", None),
        trust_remote_code=trust_remote_code,
        chat_template=script_args.chat_template,
        prompt_template=script_args.prompt_template,
        pad_token=script_args.pad_token,
    )


def format_prompt(tokenizer: Any, prompt: str | list[dict[str, str]]) -> str:
    """The text a model sees before its response: the chat template applied with a generation prompt."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def end_of_turn_token(tokenizer: Any) -> str | None:
    """The special token the chat template writes right after an assistant's answer, or None if it writes none.

    GPT-2's template (built from ``prompt_template``) ends an answer with EOS. ChatML (Qwen) ends it with
    ``<|im_end|>`` and Llama 3 with ``<|eot_id|>``, while the *base* tokenizers' EOS is ``<|endoftext|>`` /
    ``<|end_of_text|>``: a model fine-tuned on that template learns to write the end-of-turn token, so that token,
    not the base EOS, is where sampling must stop. Found by rendering a one-turn chat around a marker answer.
    """
    marker = "Zq9XmarkerXq9Z"
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": marker}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # a template that needs something else (a system turn, tools): no answer to give
        return None
    if marker not in text:
        return None
    suffix = text[text.rindex(marker) + len(marker) :]
    ids = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
    if not ids:
        return None
    special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    return tokenizer.convert_ids_to_tokens(ids[0]) if ids[0] in special else None


def eos_mismatch(tokenizer: Any) -> str | None:
    """The end-of-turn token when it differs from the tokenizer's EOS (set ``eos_token`` to it for SFT), else None."""
    token = end_of_turn_token(tokenizer)
    return token if token is not None and token != tokenizer.eos_token else None


def tokenizer_difference(tokenizer: Any, other: Any) -> str | None:
    """How two tokenizers differ, in a few words (None when their vocabularies are the same): the sizes when they
    differ, else the first token id that means something else in each."""
    vocab, other_vocab = tokenizer.get_vocab(), other.get_vocab()
    if vocab == other_vocab:
        return None
    if len(vocab) != len(other_vocab):
        return f"{len(vocab)} tokens against {len(other_vocab)}"
    by_id, other_by_id = {i: t for t, i in vocab.items()}, {i: t for t, i in other_vocab.items()}
    first = min(i for i in set(by_id) | set(other_by_id) if by_id.get(i) != other_by_id.get(i))
    return f"token id {first} is {by_id.get(first)!r} in one and {other_by_id.get(first)!r} in the other"


def check_same_tokenizer(tokenizer: Any, name: str, other: Any, other_name: str, *, source: str, why: str) -> None:
    """Fail before any training or sampling, naming both models and how their tokenizers differ, when two models
    that must read the same token ids (``why`` says what reads them) do not."""
    difference = tokenizer_difference(tokenizer, other)
    if difference is not None:
        raise ModelLoadError(f"{source}: {other_name} and {name} have different tokenizers ({difference}); {why}")


def warn_other_tokenizer(tokenizer: Any, name: str, other: Any, other_name: str) -> None:
    """Say, once and before any sampling, that a reward model scoring a policy's text has another tokenizer: it
    re-encodes the text, so it works, but it was trained from another base model than this policy."""
    difference = tokenizer_difference(tokenizer, other)
    if difference is not None:
        logger.warning(
            f"{other_name} and {name} have different tokenizers ({difference}): it scores the decoded text, so it "
            "works, but it was trained from another base model"
        )


def check_embeddings_cover(model: Any, name: str, tokenizer: Any, tokenizer_name: str, *, source: str) -> None:
    """Fail before any training or sampling when ``model`` has no embedding for some token id of ``tokenizer``:
    the first batch holding such an id would stop with an ``IndexError`` deep inside the model."""
    rows = model.get_input_embeddings().num_embeddings
    if rows < len(tokenizer):
        raise ModelLoadError(
            f"{source}: {name} has embeddings for {rows} token ids, but {tokenizer_name}'s tokenizer has "
            f"{len(tokenizer)}: ids {rows} and up would fail mid-run; use models trained from the same base"
        )
