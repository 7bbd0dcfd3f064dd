"""What a model is before it loads: whether a path holds one, its transformers config, its context length.

Nothing here assumes GPT-2: the context length is read under whichever name the architecture gives it, and a LoRA
adapter directory stands for its base model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.library_errors import translating
from instructgpt.infra.log import get_logger

logger = get_logger(__name__)


class ModelLoadError(InstructGPTError):
    """A model or tokenizer path that does not hold what the recipe says it does."""


def looks_local(name_or_path: str) -> bool:
    """A path rather than a Hub id: it exists, starts like a path, or has more than one slash."""
    return Path(name_or_path).exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1


def check_model_path(name_or_path: str | None, key: str, source: str) -> str:
    """Fail early, naming the recipe key, for a missing local model directory (Hub ids are left to transformers)."""
    if not name_or_path:
        raise ModelLoadError(f"{source}: `{key}` is required")
    if looks_local(name_or_path) and not Path(name_or_path).expanduser().is_dir():
        raise ModelLoadError(f"{source}: `{key}`: no model directory at {name_or_path}")
    return name_or_path


def load_pretrained(auto_class: Any, name_or_path: str, *, key: str, source: str, **kwargs: Any) -> Any:
    """``auto_class.from_pretrained(name_or_path, **kwargs)``: every model, config and tokenizer a recipe names loads
    through here, so a file from elsewhere that cannot be loaded (weights that are an unsafe pickle, a cut-off
    safetensors file, a model that asks to run its own code) ends in one line naming the recipe key and the path
    (:mod:`instructgpt.infra.library_errors`). ``trust_remote_code`` is passed as False unless the recipe sets it,
    so that transformers refuses such a model at once rather than asking at a prompt whether to run its code."""
    kwargs["trust_remote_code"] = bool(kwargs.get("trust_remote_code"))
    with translating(f"{source}: `{key}`: {name_or_path}"):
        return auto_class.from_pretrained(name_or_path, **kwargs)


# the endings of transformers' class names for a model that generates text
CAUSAL_LM_HEADS = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def check_causal_lm(name_or_path: str, key: str, source: str, trust_remote_code: bool = False) -> None:
    """Fail early, naming the key, unless ``name_or_path`` holds a model that generates text: a reward model (a
    sequence classifier) would load with a random language-model head, and a bare backbone (``GPT2Model``) has
    none. A LoRA adapter directory stands for its base model; a config that cannot be read, or names no
    architecture, is left to the loading that follows (which says why in one line)."""
    check_model_path(name_or_path, key, source)
    config = read_model_config(name_or_path, trust_remote_code=trust_remote_code)
    architectures = list(getattr(config, "architectures", None) or [])
    if not architectures or any(a.endswith(CAUSAL_LM_HEADS) for a in architectures):
        return
    if all(a.endswith("ForSequenceClassification") for a in architectures):
        raise ModelLoadError(
            f"{source}: `{key}`: {name_or_path} holds a reward model ({architectures[0]}), not a language model that "
            "generates text; give a policy (the SFT or PPO output_dir, or any causal LM)"
        )
    raise ModelLoadError(
        f"{source}: `{key}`: {name_or_path} holds a {architectures[0]}, which has no language-model head to generate "
        "text with; give a causal LM (an architecture ending in ForCausalLM or LMHeadModel)"
    )


def read_model_config(
    name_or_path: str | None, *, revision: str | None = None, trust_remote_code: bool = False
) -> Any | None:
    """The transformers config of a model directory, Hub id or LoRA adapter directory; None when it cannot be read.

    An adapter directory (``adapter_config.json``, no ``config.json``) stands for its base model, whose config it
    names in ``base_model_name_or_path``. A Hub id is read from the local cache, where the stage that asks has
    already put it when it read the model's context length, so this adds no download of its own.
    """
    if not name_or_path:
        return None
    from transformers import AutoConfig

    folder = Path(name_or_path).expanduser()
    adapter = folder / "adapter_config.json"
    if folder.is_dir() and not (folder / "config.json").is_file() and adapter.is_file():
        try:
            base = json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path")
        except (OSError, ValueError):
            return None
        return read_model_config(base, trust_remote_code=trust_remote_code) if base else None
    try:
        return AutoConfig.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError):
        return None


def model_context_length(config: Any) -> int | None:
    """The longest sequence the model's positions allow, whatever the architecture calls it."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(text_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def cap_max_length(training_args: Any, model_path: str, source: str, trust_remote_code: bool = False) -> int | None:
    """Cap ``training_args.max_length`` at the model's context (unset counts as too long); returns the context.
    ``source``: the recipe, named in an error (a config that cannot be read)."""
    from transformers import AutoConfig

    config = load_pretrained(
        AutoConfig, model_path, key="model_name_or_path", source=source, trust_remote_code=trust_remote_code
    )
    context = model_context_length(config)
    if context is not None and (training_args.max_length is None or training_args.max_length > context):
        logger.info(f"max_length={training_args.max_length} exceeds the model's context; using {context}")
        training_args.max_length = context
    return context
