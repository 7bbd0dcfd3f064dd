"""Loading models the same way in every stage, for any architecture the Auto classes know.

:func:`model_init_kwargs` turns TRL's ``ModelConfig`` into ``from_pretrained`` arguments (with ``load_in_4bit`` /
``load_in_8bit``, a bitsandbytes base for QLoRA: :mod:`instructgpt.modeling.quantization`); :func:`load_policy`
loads a causal LM and its tokenizer for sampling.
"""

from __future__ import annotations

from typing import Any

from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.processes import default_device, process_state
from instructgpt.modeling.config import ModelLoadError, check_causal_lm, check_model_path, load_pretrained
from instructgpt.modeling.quantization import quantization_config
from instructgpt.modeling.tokenizers import DEFAULT_PROMPT_TEMPLATE, load_tokenizer


def model_init_kwargs(
    model_args: Any,
    trust_remote_code: bool = False,
    *,
    quantize: bool = True,
    trainable: bool = True,
    source: str = "recipe",
) -> dict[str, Any]:
    """from_pretrained keyword arguments from TRL's ``ModelConfig`` (dtype, attention implementation, revision, and
    with ``load_in_4bit``/``load_in_8bit`` the bitsandbytes config, see :func:`quantization_config`).

    A quantized model is placed on this process's GPU (``device_map``), as bitsandbytes requires; ``quantize=False``
    loads in full precision whatever the recipe says (for a model that is trained without LoRA, such as PPO's value
    function).
    """
    kwargs: dict[str, Any] = {"revision": model_args.model_revision}
    if model_args.dtype not in (None, "auto"):
        kwargs["dtype"] = model_args.dtype
    elif model_args.dtype == "auto":
        kwargs["dtype"] = "auto"
    if model_args.attn_implementation is not None:
        check_attention(model_args.attn_implementation, source)
        kwargs["attn_implementation"] = model_args.attn_implementation
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    quantization = quantization_config(model_args, source, trainable=trainable) if quantize else None
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": process_state().local_process_index}
    return kwargs


def check_attention(implementation: str, source: str) -> None:
    """Refuse FlashAttention where it cannot run (the handbook's recipes ask for ``flash_attention_2``): it needs its
    package and a CUDA GPU, and transformers would otherwise fail deep inside ``from_pretrained``."""
    import importlib.util

    import torch

    if not implementation.startswith("flash_attention"):
        return
    package = "flash_attn_interface" if implementation == "flash_attention_3" else "flash_attn"
    missing = [
        what
        for what, present in (
            (f"the `{package}` package", importlib.util.find_spec(package) is not None),
            ("a CUDA GPU", torch.cuda.is_available()),
        )
        if not present
    ]
    if missing:
        raise InstructGPTError(
            f"{source}: `attn_implementation: {implementation}` needs {' and '.join(missing)}, which this machine "
            "lacks; use `attn_implementation: sdpa` (PyTorch's fused attention, the default) or remove the key"
        )


def load_causal_lm(name_or_path: str, *, key: str, source: str, **kwargs: Any) -> Any:
    """A causal LM for a stage to train or sample from, once its config says it is one (:func:`check_causal_lm`:
    not a reward model, not a bare backbone); a file from elsewhere that cannot be loaded ends in one line."""
    from transformers import AutoModelForCausalLM

    check_causal_lm(name_or_path, key, source, trust_remote_code=bool(kwargs.get("trust_remote_code")))
    return load_pretrained(AutoModelForCausalLM, name_or_path, key=key, source=source, **kwargs)


def load_policy(
    path: str,
    *,
    key: str = "MODEL",
    source: str = "command line",
    prompt_template: str | None = DEFAULT_PROMPT_TEMPLATE,
    device: Any = None,
    dtype: Any = None,
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer for sampling: ``(model in eval mode, tokenizer)``.

    Refuses a reward model (a sequence classifier), which would otherwise load with a random LM head and print
    noise. A LoRA adapter directory loads on top of its base model (transformers' peft integration).
    """
    check_model_path(path, key, source)
    tokenizer = load_tokenizer(path, prompt_template=prompt_template, key=key, source=source)
    kwargs = {} if dtype is None else {"dtype": dtype}
    try:
        model = load_causal_lm(path, key=key, source=source, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{source}: `{key}`: cannot load a causal language model from {path}: {err}") from None
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(device if device is not None else default_device())
    model.eval()
    return model, tokenizer
