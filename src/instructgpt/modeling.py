"""Loading tokenizers and models the same way in every stage, for any architecture the Auto classes know.

The prompt format lives in the tokenizer. A base model without a chat template (GPT-2 has none) gets one built
from the recipe's ``prompt_template`` before SFT, and it is saved with the SFT model, so that collection, the
reward model, PPO and evaluation format prompts exactly as SFT did, with no template setting of their own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from instructgpt.errors import InstructGPTError

DEFAULT_PROMPT_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"


class ModelLoadError(InstructGPTError):
    """A model or tokenizer path that does not hold what the recipe says it does."""


def looks_local(name_or_path: str) -> bool:
    """A path rather than a Hub id: it exists, starts like a path, or has more than one slash."""
    return (
        Path(name_or_path).exists()
        or name_or_path.startswith((".", "/", "~"))
        or name_or_path.count("/") > 1
    )


def check_model_path(name_or_path: str | None, key: str, source: str) -> str:
    """Fail early, naming the recipe key, for a missing local model directory (Hub ids are left to transformers)."""
    if not name_or_path:
        raise ModelLoadError(f"{source}: `{key}` is required")
    if looks_local(name_or_path) and not Path(name_or_path).expanduser().is_dir():
        raise ModelLoadError(f"{source}: `{key}`: no model directory at {name_or_path}")
    return name_or_path


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
        "{%- elif message['role'] == 'user' -%}{{ " + json.dumps(prefix) + " + message['content'] + "
        + json.dumps(suffix) + " }}"
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
) -> Any:
    """Load a tokenizer and give it what our stages need: a pad token and a chat template.

    - pad token: the recipe's ``pad_token`` if set, else the tokenizer's own, else its EOS token (GPT-2 has no pad
      token; with attention masks, padding with EOS is safe, and labels on padding are ignored anyway);
    - chat template: the recipe's ``chat_template`` if set, else the tokenizer's own, else one built from
      ``prompt_template``.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise ModelLoadError(f"cannot load a tokenizer from {name_or_path}: {err}") from None
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


def format_prompt(tokenizer: Any, prompt: str | list[dict[str, str]]) -> str:
    """The text a model sees before its response: the chat template applied with a generation prompt."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def model_context_length(config: Any) -> int | None:
    """The longest sequence the model's positions allow, whatever the architecture calls it."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(text_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def lora_config(model_args: Any, task_type: str) -> Any | None:
    """A peft ``LoraConfig`` from TRL's ``ModelConfig`` LoRA fields, or None without ``use_peft``.

    ``lora_target_modules`` left unset lets peft pick the attention projections it knows for the architecture
    (``c_attn`` for GPT-2, ``q_proj``/``v_proj`` for Llama and Qwen); ``all-linear`` targets every linear layer.
    """
    if not model_args.use_peft:
        return None
    from peft import LoraConfig

    target = model_args.lora_target_modules
    if isinstance(target, list) and len(target) == 1 and target[0] == "all-linear":
        target = "all-linear"
    return LoraConfig(
        task_type=task_type,
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=target,
        modules_to_save=model_args.lora_modules_to_save,
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
    )


def model_init_kwargs(model_args: Any, trust_remote_code: bool = False) -> dict[str, Any]:
    """from_pretrained keyword arguments from TRL's ``ModelConfig`` (dtype, attention implementation, revision)."""
    kwargs: dict[str, Any] = {"revision": model_args.model_revision}
    if model_args.dtype not in (None, "auto"):
        kwargs["dtype"] = model_args.dtype
    elif model_args.dtype == "auto":
        kwargs["dtype"] = "auto"
    if model_args.attn_implementation is not None:
        kwargs["attn_implementation"] = model_args.attn_implementation
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    return kwargs
