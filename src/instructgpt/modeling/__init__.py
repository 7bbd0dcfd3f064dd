"""Loading tokenizers and models the same way in every stage, for any architecture the Auto classes know.

Nothing here assumes GPT-2: the pad token, EOS, chat template and context length come from the model and its
tokenizer (the recipe may override each), LoRA targets default per architecture, and ``load_in_4bit`` /
``load_in_8bit`` load a base through bitsandbytes for QLoRA. One module per concern:

- :mod:`.config`: whether a path holds a model (of the kind a stage needs), its transformers config and context
  length (``ModelLoadError``), and ``load_pretrained``, through which every model, config and tokenizer loads;
- :mod:`.tokenizers`: the tokenizer of a stage, with its pad token and the chat template that carries the prompt
  format (built from the recipe's ``prompt_template`` for a base model without one), and the checks that models
  which must read the same token ids do;
- :mod:`.lora`: LoRA targets per architecture, the peft config, and merging an adapter before a stage saves;
- :mod:`.quantization`: the bitsandbytes config of QLoRA;
- :mod:`.loading`: ``from_pretrained`` arguments from the recipe, and a policy loaded for sampling;
- :mod:`.reward`: the reward model (a sequence classifier) and scoring with it.

This file only re-exports the first five, so ``from instructgpt.modeling import load_tokenizer`` keeps working.
"""

from instructgpt.modeling.config import (
    ModelLoadError,
    cap_max_length,
    check_causal_lm,
    check_model_path,
    load_pretrained,
    looks_local,
    model_context_length,
    read_model_config,
)
from instructgpt.modeling.loading import load_causal_lm, load_policy, model_init_kwargs
from instructgpt.modeling.lora import (
    check_lora_targets,
    default_lora_target_modules,
    is_lora,
    lora_config,
    lora_target_modules,
    merge_adapter,
    module_names,
    save_trained_model,
)
from instructgpt.modeling.quantization import QuantizationError, quantization_config
from instructgpt.modeling.tokenizers import (
    DEFAULT_PROMPT_TEMPLATE,
    check_embeddings_cover,
    check_same_tokenizer,
    end_of_turn_token,
    eos_mismatch,
    format_prompt,
    load_tokenizer,
    prompt_template_to_chat_template,
    stage_tokenizer,
    tokenizer_difference,
    warn_other_tokenizer,
)

__all__ = [
    "DEFAULT_PROMPT_TEMPLATE",
    "ModelLoadError",
    "QuantizationError",
    "cap_max_length",
    "check_causal_lm",
    "check_embeddings_cover",
    "check_lora_targets",
    "check_model_path",
    "check_same_tokenizer",
    "default_lora_target_modules",
    "end_of_turn_token",
    "eos_mismatch",
    "format_prompt",
    "is_lora",
    "load_causal_lm",
    "load_policy",
    "load_pretrained",
    "load_tokenizer",
    "looks_local",
    "lora_config",
    "lora_target_modules",
    "merge_adapter",
    "model_context_length",
    "model_init_kwargs",
    "module_names",
    "prompt_template_to_chat_template",
    "quantization_config",
    "read_model_config",
    "save_trained_model",
    "stage_tokenizer",
    "tokenizer_difference",
    "warn_other_tokenizer",
]
