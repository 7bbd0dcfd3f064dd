"""LoRA: which modules an adapter targets on each architecture, its peft config, and saving what it trained as a
plain model directory (the one place adapters are merged).

Targets default per architecture (:func:`lora_target_modules`, peft's own table where it knows the model type),
and targets a recipe names are checked against the model's modules before the model loads.

Every stage's output loads with ``from_pretrained`` as it is, whatever trained it: a LoRA adapter is folded into
its base weights (peft's ``merge_and_unload``) before saving, so the next stage never needs peft to read it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from instructgpt.modeling.config import ModelLoadError, read_model_config

# --------------------------------------------------------------------------------------------------------------
# Targets and config
# --------------------------------------------------------------------------------------------------------------


def default_lora_target_modules(model_type: str | None) -> list[str] | str:
    """LoRA's default targets for an architecture: peft's own choice where it knows the model type, else every linear
    layer.

    peft's table (``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``) holds the attention projections that the
    LoRA paper adapts (Hu et al. 2021, section 7.1: W_q and W_v): ``c_attn`` for GPT-2 (a fused Conv1D),
    ``query_key_value`` for GPT-NeoX/Pythia, ``q_proj``/``v_proj`` for Llama, Qwen2, Mistral and Gemma. For an
    architecture it does not list, ``all-linear`` (QLoRA's choice, Dettmers et al. 2023) targets every linear layer
    except the output head, which works for any model and adapts more than the attention.
    """
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    if model_type is not None and model_type in PEFT_DEFAULTS:
        return list(PEFT_DEFAULTS[model_type])
    return "all-linear"


def module_names(config: Any, trust_remote_code: bool = False) -> dict[str, bool] | None:
    """Every submodule of the causal LM ``config`` describes, mapped to whether it is a linear layer (``nn.Linear`` or
    GPT-2's ``Conv1D``), built on the meta device (no memory, no weights), so recipe settings that name modules can be
    checked before the real model loads. None if the model cannot be built from its config alone."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    try:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception:  # e.g. remote code that is not trusted: skip the check, peft will still complain
        return None
    return {name: isinstance(m, (torch.nn.Linear, Conv1D)) for name, m in skeleton.named_modules() if name}


def check_lora_targets(targets: list[str], names: dict[str, bool], model_type: str | None, source: str) -> None:
    """Fail, naming ``lora_target_modules``, when a target matches no module (the usual mistake when a GPT-2 recipe
    keeps ``[c_attn, c_proj]`` for a Llama or Qwen model). peft's rule: a target matches a module whose name is the
    target or ends with ``.target``; a reward model's ``score`` head always exists."""
    names = {**names, "score": True}
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if not missing:
        return
    linear = sorted({n.rsplit(".", 1)[-1] for n, is_linear in names.items() if is_linear})
    default = default_lora_target_modules(model_type)
    raise ModelLoadError(
        f"{source}: `lora_target_modules`: {missing} match no module of this {model_type or 'model'}, whose linear "
        f"layers are {linear}; leave the key unset for the architecture's default ({default}) or write `all-linear`"
    )


def lora_target_modules(
    model_args: Any, model_type: str | None = None, *, source: str = "recipe", trust_remote_code: bool = False
) -> list[str] | str | None:
    """The LoRA targets of a run: the recipe's ``lora_target_modules`` (a list of module names, or ``all-linear``),
    else :func:`default_lora_target_modules` for the architecture of ``model_name_or_path``.

    Names from the recipe are checked against the model's modules, so a stale GPT-2 setting fails here, naming the
    key, instead of deep inside peft.
    """
    target = model_args.lora_target_modules
    if isinstance(target, str):
        target = [target]
    if target and len(target) == 1 and target[0].lower() == "all-linear":
        return "all-linear"
    config = None
    if model_type is None or target:
        config = read_model_config(
            model_args.model_name_or_path,
            revision=getattr(model_args, "model_revision", None),
            trust_remote_code=trust_remote_code,
        )
        if model_type is None and config is not None:
            model_type = config.model_type
    if not target:
        # a config that cannot be read (remote code that is not trusted, no network): peft chooses from the model
        return default_lora_target_modules(model_type) if model_type is not None else None
    names = module_names(config, trust_remote_code) if config is not None else None
    if names is not None:
        check_lora_targets(list(target), names, model_type, source)
    return list(target)


def lora_config(
    model_args: Any,
    task_type: str,
    model_type: str | None = None,
    *,
    source: str = "recipe",
    trust_remote_code: bool = False,
) -> Any | None:
    """A peft ``LoraConfig`` from TRL's ``ModelConfig`` LoRA fields, or None without ``use_peft``.

    Targets come from :func:`lora_target_modules`: the recipe's list, ``all-linear``, or (unset) the architecture's
    default (``c_attn`` for GPT-2, ``query_key_value`` for Pythia, ``q_proj``/``v_proj`` for Llama and Qwen2).
    ``model_type`` skips reading the model's config when the caller already knows it. For a reward model
    (``task_type="SEQ_CLS"``) peft trains the new ``score`` head fully besides the adapters.
    """
    if not model_args.use_peft:
        return None
    from peft import LoraConfig

    extra: dict[str, Any] = {}
    if getattr(model_args, "lora_target_parameters", None):
        extra["target_parameters"] = model_args.lora_target_parameters  # e.g. MoE expert weights (peft >= 0.17)
    return LoraConfig(
        task_type=task_type,
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=lora_target_modules(model_args, model_type, source=source, trust_remote_code=trust_remote_code),
        modules_to_save=model_args.lora_modules_to_save,
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
        **extra,
    )


# --------------------------------------------------------------------------------------------------------------
# Merging and saving
# --------------------------------------------------------------------------------------------------------------


def is_lora(model: Any) -> bool:
    """A peft model whose adapter can be merged into its base."""
    return hasattr(model, "merge_and_unload")


def merge_adapter(model: Any) -> Any:
    """The model with its LoRA adapter folded into the base weights; any other model as it is."""
    return model.merge_and_unload() if is_lora(model) else model


def save_trained_model(trainer: Any, output_dir: str | Path, *, model: Any = None, keep_adapter: bool = False) -> None:
    """Save a ``Trainer``'s model to ``output_dir`` as a plain model directory.

    - Without LoRA, ``trainer.save_model`` writes it (it gathers sharded FSDP / ZeRO-3 weights).
    - With LoRA, the merged model goes to ``output_dir`` (``model`` when the caller merged it already, e.g. to
      score with it first), and with ``keep_adapter`` the adapter alone to ``output_dir/adapter`` for
      ``PeftModel.from_pretrained``.
    """
    trained = trainer.accelerator.unwrap_model(trainer.model)
    if not is_lora(trained):
        trainer.save_model(str(output_dir))
        return
    if keep_adapter:
        trainer.save_model(str(Path(output_dir) / "adapter"))
    if trainer.is_world_process_zero():
        (model if model is not None else merge_adapter(trained)).save_pretrained(str(output_dir))
