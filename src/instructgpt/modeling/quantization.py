"""Quantized loading (QLoRA): a bitsandbytes config from the recipe's ``load_in_4bit`` / ``load_in_8bit``."""

from __future__ import annotations

import importlib.util
from typing import Any

from instructgpt.modeling.config import ModelLoadError


class QuantizationError(ModelLoadError):
    """``load_in_4bit`` / ``load_in_8bit`` asked for where bitsandbytes cannot run it."""


def quantization_config(model_args: Any, source: str = "recipe", *, trainable: bool = True) -> Any | None:
    """A ``BitsAndBytesConfig`` from TRL's ``ModelConfig`` fields, or None when the recipe asks for no quantization.

    QLoRA (Dettmers et al. 2023): the frozen base weights are stored in 4-bit NormalFloat (``bnb_4bit_quant_type:
    nf4``), optionally with the quantization constants quantized too (``use_bnb_nested_quant``, "double
    quantization"), and LoRA adapters are trained on top in 16-bit. Matrix products run in ``dtype`` when it is
    bfloat16 or float16, else in bfloat16 (float16 on a GPU without bf16). 8-bit (``load_in_8bit``) is LLM.int8().

    bitsandbytes needs a CUDA GPU; quantized weights cannot be trained, so a model that is trained (``trainable``)
    needs ``use_peft: true``. Each failure names the recipe key.
    """
    four, eight = bool(getattr(model_args, "load_in_4bit", False)), bool(getattr(model_args, "load_in_8bit", False))
    if not (four or eight):
        return None
    key = "load_in_4bit" if four else "load_in_8bit"  # TRL's ModelConfig already refuses both at once
    import torch

    if not torch.cuda.is_available():
        raise QuantizationError(
            f"{source}: `{key}: true` loads the model through bitsandbytes, which needs a CUDA GPU, and this machine "
            f"has none; set `{key}: false` (and pick a smaller model or LoRA) to run here"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise QuantizationError(f"{source}: `{key}: true` needs bitsandbytes: `pip install bitsandbytes`")
    if trainable and not model_args.use_peft:
        raise QuantizationError(
            f"{source}: `{key}: true` freezes the base weights in quantized form, which cannot be trained; set "
            "`use_peft: true` to train LoRA adapters on top of them (QLoRA)"
        )
    from transformers import BitsAndBytesConfig

    if eight:
        return BitsAndBytesConfig(load_in_8bit=True)
    dtype = getattr(model_args, "dtype", None)
    if dtype not in ("bfloat16", "float16", torch.bfloat16, torch.float16):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_quant_type=model_args.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=model_args.use_bnb_nested_quant,
        bnb_4bit_quant_storage=getattr(model_args, "bnb_4bit_quant_storage", None),
    )
