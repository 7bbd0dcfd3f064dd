"""Loading tokenizers and models the same way in every stage, for any architecture the Auto classes know.

The prompt format lives in the tokenizer. A base model without a chat template (GPT-2 has none) gets one built
from the recipe's ``prompt_template`` before SFT, and it is saved with the SFT model, so that collection, the
reward model, PPO and evaluation format prompts exactly as SFT did, with no template setting of their own.

Nothing here assumes GPT-2: the pad token, EOS, chat template and context length come from the model and its
tokenizer (the recipe may override each), LoRA targets default per architecture (:func:`lora_target_modules`),
and ``load_in_4bit``/``load_in_8bit`` load a base through bitsandbytes for QLoRA (:func:`quantization_config`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.log import get_logger
from instructgpt.infra.processes import default_device

logger = get_logger(__name__)

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


def stage_tokenizer(model_path: str, script_args: Any, model_args: Any, trust_remote_code: bool = False) -> Any:
    """The tokenizer of a training stage, from the recipe's ``prompt_template``, ``chat_template`` and ``pad_token``
    (see :func:`load_tokenizer`)."""
    return load_tokenizer(
        model_path,
        revision=getattr(model_args, "model_revision", None),
        trust_remote_code=trust_remote_code,
        chat_template=script_args.chat_template,
        prompt_template=script_args.prompt_template,
        pad_token=script_args.pad_token,
    )


def cap_max_length(training_args: Any, model_path: str, trust_remote_code: bool = False) -> int | None:
    """Cap ``training_args.max_length`` at the model's context (unset counts as too long); returns the context."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    context = model_context_length(config)
    if context is not None and (training_args.max_length is None or training_args.max_length > context):
        logger.info(f"max_length={training_args.max_length} exceeds the model's context; using {context}")
        training_args.max_length = context
    return context


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
    suffix = text[text.rindex(marker) + len(marker):]
    ids = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
    if not ids:
        return None
    special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    return tokenizer.convert_ids_to_tokens(ids[0]) if ids[0] in special else None


def eos_mismatch(tokenizer: Any) -> str | None:
    """The end-of-turn token when it differs from the tokenizer's EOS (set ``eos_token`` to it for SFT), else None."""
    token = end_of_turn_token(tokenizer)
    return token if token is not None and token != tokenizer.eos_token else None


def model_context_length(config: Any) -> int | None:
    """The longest sequence the model's positions allow, whatever the architecture calls it."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(text_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


# --------------------------------------------------------------------------------------------------------------
# Architectures: what a stage needs to know about a model without assuming GPT-2
# --------------------------------------------------------------------------------------------------------------


def read_model_config(name_or_path: str | None, *, revision: str | None = None, trust_remote_code: bool = False) -> Any | None:
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
            model_args.model_name_or_path, revision=getattr(model_args, "model_revision", None),
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
    model_args: Any, task_type: str, model_type: str | None = None, *, source: str = "recipe",
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
# Quantized loading (QLoRA)
# --------------------------------------------------------------------------------------------------------------


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
    import importlib.util

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


def model_init_kwargs(
    model_args: Any, trust_remote_code: bool = False, *, quantize: bool = True, trainable: bool = True,
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
        kwargs["attn_implementation"] = model_args.attn_implementation
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    quantization = quantization_config(model_args, source, trainable=trainable) if quantize else None
    if quantization is not None:
        from instructgpt.infra.processes import process_state

        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": process_state().local_process_index}
    return kwargs


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
    from transformers import AutoConfig, AutoModelForCausalLM

    check_model_path(path, key, source)
    folder = Path(path).expanduser()
    if (folder / "config.json").is_file():
        config = AutoConfig.from_pretrained(path)
        architectures = list(getattr(config, "architectures", None) or [])
        if architectures and all(a.endswith("ForSequenceClassification") for a in architectures):
            raise ModelLoadError(
                f"{source}: `{key}`: {path} holds a reward model ({architectures[0]}), not a language model that "
                "generates text; give a policy (the SFT or PPO output_dir, or any causal LM)"
            )
    tokenizer = load_tokenizer(path, prompt_template=prompt_template)
    kwargs = {} if dtype is None else {"dtype": dtype}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{source}: `{key}`: cannot load a causal language model from {path}: {err}") from None
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(device if device is not None else default_device())
    model.eval()
    return model, tokenizer
