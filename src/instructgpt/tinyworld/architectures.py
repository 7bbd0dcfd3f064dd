"""A second tiny architecture: a Llama- or Qwen2-family model that is everything GPT-2 is not.

The tiny world's base model is a GPT-2 (Conv1D projections, learned positions, no pad token, no chat template).
Real larger bases differ on each point, and code written against GPT-2 breaks on the first swap. This builds, from
a config and with random weights, a model that differs the same ways, so the test suite can run every stage on it:

- architecture: ``LlamaForCausalLM`` (or ``Qwen2ForCausalLM``): linear ``q_proj``/``k_proj``/``v_proj``/``o_proj``
  and gated MLP projections, rotary positions, RMSNorm, grouped-query attention (fewer key/value heads);
- tokenizer: the tiny world's byte-level BPE plus ``<|im_start|>``/``<|im_end|>`` and a pad token of its own
  (``<|pad|>``, not EOS), its maximum length taken from the config's ``max_position_embeddings``;
- chat template: ChatML, as Qwen2.5 writes it, so the stages take the tokenizer's own template rather than the
  ``prompt_template`` path. As in a Qwen2.5 *base* tokenizer, EOS stays ``<|endoftext|>`` while the template ends
  an assistant turn with ``<|im_end|>``: SFT must make ``<|im_end|>`` the EOS (``eos_token``), or sampling would
  never stop at the end of an answer.

    python -m instructgpt.tinyworld.architectures --output_dir runs/tiny/llama-base
    python -m instructgpt.tinyworld.architectures --architecture qwen2 --output_dir runs/tiny/qwen2-base
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from instructgpt.infra.entrypoint import run_cli
from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.log import get_logger
from instructgpt.infra.validation import range_problems

logger = get_logger(__name__)

DEFAULT_BASE_TOKENIZER = "data/tiny/base-model"
PAD_TOKEN = "<|pad|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"

# ChatML (OpenAI; the format of Qwen2 and many others): every turn is `<|im_start|>role\ncontent<|im_end|>\n`, and the
# generation prompt opens the assistant's turn. No default system turn, unlike Qwen2.5's own template.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


@dataclass
class TinyArchitecture:
    """Size of the tiny model. Defaults: 2 layers of width 64 with 4 query and 2 key/value heads (~0.2M parameters
    besides the embeddings), small enough for a test to train it in seconds on a CPU."""

    architecture: Literal["llama", "qwen2"] = field(
        default="llama", metadata={"help": "Model family: `llama` (LlamaForCausalLM) or `qwen2` (Qwen2ForCausalLM)."}
    )
    hidden_size: int = field(default=64, metadata={"range": ">= 1", "help": "Width of the residual stream."})
    num_hidden_layers: int = field(default=2, metadata={"range": ">= 1", "help": "Transformer blocks."})
    num_attention_heads: int = field(default=4, metadata={"range": ">= 1", "help": "Query heads."})
    num_key_value_heads: int = field(
        default=2,
        metadata={
            "range": ">= 1",
            "help": "Key/value heads (grouped-query attention when fewer than the query heads).",
        },
    )
    intermediate_size: int = field(default=128, metadata={"range": ">= 1", "help": "Width of the gated MLP."})
    max_position_embeddings: int = field(
        default=256, metadata={"range": ">= 1", "help": "Context length; also the tokenizer's model_max_length."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the random initialization."})  # any integer

    def __post_init__(self) -> None:
        if self.architecture not in ("llama", "qwen2"):
            raise InstructGPTError(f"`architecture` must be `llama` or `qwen2`, got {self.architecture!r}")
        if problems := range_problems(self):
            raise InstructGPTError("; ".join(problems))
        if self.hidden_size % self.num_attention_heads:
            raise InstructGPTError(
                f"`hidden_size` ({self.hidden_size}) must be a multiple of `num_attention_heads` "
                f"({self.num_attention_heads})"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise InstructGPTError(
                f"`num_attention_heads` ({self.num_attention_heads}) must be a multiple of `num_key_value_heads` "
                f"({self.num_key_value_heads})"
            )


def chat_tokenizer(base_tokenizer: str | Path, max_length: int) -> Any:
    """The tiny world's tokenizer with ChatML's special tokens, a pad token of its own and the ChatML template."""
    from transformers import AutoTokenizer

    path = Path(base_tokenizer)
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise InstructGPTError(
            f"no tokenizer at {path}: build the tiny world's base model first "
            "(`instructgpt recipes/tiny/pretrain.yaml`)"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN, "additional_special_tokens": [IM_START, IM_END]})
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.model_max_length = max_length
    tokenizer.padding_side = "right"
    return tokenizer


def build_config(settings: TinyArchitecture, tokenizer: Any) -> Any:
    """The transformers config: vocabulary and special-token ids from the tokenizer, sizes from ``settings``."""
    from transformers import LlamaConfig, Qwen2Config

    common = {
        "vocab_size": len(tokenizer),
        "hidden_size": settings.hidden_size,
        "intermediate_size": settings.intermediate_size,
        "num_hidden_layers": settings.num_hidden_layers,
        "num_attention_heads": settings.num_attention_heads,
        "num_key_value_heads": settings.num_key_value_heads,
        "max_position_embeddings": settings.max_position_embeddings,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }
    if settings.architecture == "qwen2":
        # Qwen2's attention has biases on q/k/v; small Qwen2.5 models tie the input and output embeddings
        return Qwen2Config(**{**common, "tie_word_embeddings": True}, use_sliding_window=False)
    return LlamaConfig(**common)


def build_tiny_model(
    output_dir: str | Path,
    base_tokenizer: str | Path = DEFAULT_BASE_TOKENIZER,
    settings: TinyArchitecture | None = None,
) -> Path:
    """Build the tiny model with random weights and save it with its tokenizer, loadable with the Auto classes."""
    import torch
    from transformers import AutoModelForCausalLM

    settings = settings or TinyArchitecture()
    tokenizer = chat_tokenizer(base_tokenizer, settings.max_position_embeddings)
    config = build_config(settings, tokenizer)
    torch.manual_seed(settings.seed)
    model = AutoModelForCausalLM.from_config(config)
    generation = model.generation_config
    generation.bos_token_id, generation.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    generation.pad_token_id = tokenizer.pad_token_id
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output_dir", required=True, help="Where to save the model and its tokenizer.")
    parser.add_argument(
        "--base_tokenizer",
        default=DEFAULT_BASE_TOKENIZER,
        help="Directory of the tokenizer to extend (default: the tiny world's base model).",
    )
    defaults = asdict(TinyArchitecture())
    for name, info in TinyArchitecture.__dataclass_fields__.items():
        parser.add_argument(f"--{name}", type=type(defaults[name]), default=defaults[name], help=info.metadata["help"])
    args = vars(parser.parse_args(argv))

    def _run() -> None:
        output_dir, base = args.pop("output_dir"), args.pop("base_tokenizer")
        settings = TinyArchitecture(**args)
        path = build_tiny_model(output_dir, base, settings)
        logger.info(f"tiny {settings.architecture} model saved to {path}")

    run_cli(_run)


if __name__ == "__main__":
    main()
