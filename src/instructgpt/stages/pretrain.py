"""Step 0 (tiny world only): a tokenizer and a GPT-2-architecture base model trained from scratch on a corpus.

    instructgpt recipes/tiny/pretrain.yaml [--key value ...]
    python -m instructgpt recipes/tiny/pretrain.yaml

InstructGPT starts from GPT-3, a model that knows a lot but was never taught to follow instructions. No machine of
ours can download one, so the tiny world grows its own in about a minute of CPU: the corpus states the world's
facts in prose and shows instructions only inside quiz sheets without answers, so the result knows the facts but
answers an instruction with more questions.

1. Tokenizer: byte-level BPE trained with ``tokenizers`` on the corpus, GPT-2 style (Radford et al. 2019,
   section 2.2): bytes as the base alphabet, no normalisation, no prefix space, and ``<|endoftext|>`` as the only
   special token, serving as BOS, EOS and UNK. Like GPT-2's, it has no pad token and no chat template; the SFT
   stage adds the template.
2. Data: every document is tokenized, followed by ``<|endoftext|>``, and the stream is cut into blocks of
   ``block_size`` tokens (the GPT-2/``run_clm`` packing): no padding anywhere.
3. Model: ``GPT2LMHeadModel`` from a ``GPT2Config``, trained with transformers' ``Trainer`` on the causal-LM loss.
4. Output: a standard model directory (``AutoModelForCausalLM`` / ``AutoTokenizer`` load it) plus, for the tiny
   world, knowledge probes in the run marker: how often greedy completion of a plain statement ("The color of
   the glimmerfox is") gives the world's answer.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any, Literal

from instructgpt.data import DataError, load_data, require_columns, require_rows, row_place
from instructgpt.infra.entrypoint import stage_main
from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.log import get_logger
from instructgpt.infra.parser import Recipe, StageArgs, parse_stage_args, required
from instructgpt.infra.trainer_stage import TrainerStage
from instructgpt.infra.validation import range_problems
from instructgpt.tinyworld.probes import knowledge_probes

logger = get_logger(__name__)

ENDOFTEXT = "<|endoftext|>"


@dataclass
class PretrainArguments:
    """The corpus, the tokenizer and the model's shape (the optimisation settings are TrainingArguments')."""

    dataset_name: str = field(
        default="data/tiny/corpus.jsonl",
        metadata={"help": "Pretraining text: a local .jsonl/.json/.csv/.parquet file or a Hub dataset id."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name, if any."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on (Hub datasets)."})
    text_column: str = field(default="text", metadata={"help": "Column holding the documents."})
    max_documents: int | None = field(
        default=None, metadata={"range": ">= 1", "help": "Use only the first N documents (quick runs, tests)."}
    )
    validation_fraction: float = field(
        default=0.02,
        metadata={
            "range": "[0, 0.5)",
            "help": "Share of the packed blocks held out to report a validation loss (0: none).",
        },
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Reuse this tokenizer instead of training one (must have an EOS token)."},
    )
    vocab_size: int = field(
        default=2048,
        metadata={
            "range": ">= 258",
            "help": "Largest vocabulary of the trained BPE tokenizer (256 byte tokens + merges + <|endoftext|>, "
            "so at least 258; a small corpus may stop earlier).",
        },
    )
    min_frequency: int = field(
        default=2, metadata={"range": ">= 1", "help": "A pair must occur this often to become a BPE merge."}
    )
    n_layer: int = field(default=4, metadata={"range": ">= 1", "help": "Transformer blocks."})
    n_head: int = field(
        default=4, metadata={"range": ">= 1", "help": "Attention heads per block (must divide n_embd)."}
    )
    n_embd: int = field(default=128, metadata={"range": ">= 1", "help": "Width of the residual stream."})
    n_positions: int = field(
        default=128, metadata={"range": ">= 1", "help": "Context length: the most tokens the model can see."}
    )
    block_size: int = field(
        default=128, metadata={"range": ">= 2", "help": "Tokens per training sequence (at most n_positions)."}
    )
    dropout: float = field(
        default=0.0,
        metadata={"range": "[0, 1]", "help": "Dropout on embeddings, attention and residual branches (GPT-2: 0.1)."},
    )
    probe_tiny_world: bool = field(
        default=True,
        metadata={
            "help": "After training, measure how many tiny-world facts the model completes correctly "
            "(only meaningful on the tiny world's corpus)."
        },
    )
    if_output_exists: Literal["resume", "refuse", "overwrite"] = field(
        default="resume",
        metadata={
            "help": "When output_dir is not empty: `resume` an interrupted run, `refuse`, or `overwrite` "
            "(the old directory is moved aside)."
        },
    )

    def __post_init__(self) -> None:
        if problems := range_problems(self):  # built directly, not parsed from a recipe
            raise ValueError("; ".join(problems))
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        if self.block_size > self.n_positions:
            raise ValueError(f"block_size ({self.block_size}) must be between 2 and n_positions ({self.n_positions})")


# --------------------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------------------


def train_tokenizer(texts: list[str], vocab_size: int, min_frequency: int, model_max_length: int) -> Any:
    """A GPT-2-style byte-level BPE tokenizer trained on ``texts``, as a transformers fast tokenizer.

    Byte-level: every string is first mapped to bytes, so nothing is ever out of vocabulary; the 256 byte symbols
    are the initial alphabet and BPE merges the most frequent adjacent pairs until ``vocab_size``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[ENDOFTEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=ENDOFTEXT,
        eos_token=ENDOFTEXT,
        unk_token=ENDOFTEXT,
        model_max_length=model_max_length,
    )


# --------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------


def load_corpus(args: PretrainArguments, source: str) -> list[str]:
    dataset = load_data(
        args.dataset_name, key="dataset_name", source=source, config=args.dataset_config, split=args.dataset_train_split
    )
    require_columns(dataset, [(args.text_column,)], name=f"`dataset_name` ({args.dataset_name})", source=source)
    if args.max_documents is not None:
        dataset = dataset.select(range(min(args.max_documents, len(dataset))))
    require_rows(dataset, name=f"`dataset_name` ({args.dataset_name})", source=source)
    texts = dataset[args.text_column]
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(
                f"{source}: `dataset_name` ({args.dataset_name}) {row_place(args.dataset_name, row)}: "
                f"`{args.text_column}` must be "
                f"a string, got {type(text).__name__}"
            )
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise DataError(f"{source}: `dataset_name` ({args.dataset_name}) has only empty `{args.text_column}` rows")
    return texts


def pack_blocks(texts: list[str], tokenizer: Any, block_size: int) -> list[list[int]]:
    """Tokenize, end every document with EOS, concatenate, and cut into full blocks (the remainder is dropped).

    Documents run across block boundaries, as in GPT-2's training; the EOS token tells the model where one ends.
    """
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(eos)
    usable = len(stream) // block_size * block_size
    return [stream[i : i + block_size] for i in range(0, usable, block_size)]


def block_datasets(blocks: list[list[int]], validation_fraction: float, seed: int) -> tuple[Any, Any | None]:
    """Train (and optional validation) datasets of packed blocks; labels are the inputs (the model shifts them)."""
    import datasets

    dataset = datasets.Dataset.from_dict({"input_ids": blocks, "labels": blocks})
    n_val = int(len(blocks) * validation_fraction)
    if n_val == 0:
        return dataset, None
    split = dataset.train_test_split(test_size=n_val, seed=seed)
    return split["train"], split["test"]


# --------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------


def build_model(args: PretrainArguments, tokenizer: Any) -> Any:
    """A randomly initialised GPT-2 whose BOS/EOS are the tokenizer's ``<|endoftext|>``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=args.n_positions,
        n_embd=args.n_embd,
        n_layer=args.n_layer,
        n_head=args.n_head,
        resid_pdrop=args.dropout,
        embd_pdrop=args.dropout,
        attn_pdrop=args.dropout,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    model.generation_config.bos_token_id = tokenizer.eos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.eos_token_id  # generate() needs one; the tokenizer has none
    return model


def get_tokenizer(args: PretrainArguments, texts: list[str], source: str) -> Any:
    if args.tokenizer_name_or_path is None:
        return train_tokenizer(texts, args.vocab_size, args.min_frequency, args.n_positions)
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name_or_path)
    except OSError as err:
        raise InstructGPTError(
            f"{source}: `tokenizer_name_or_path`: cannot load {args.tokenizer_name_or_path}: {err}"
        ) from None
    if tokenizer.eos_token_id is None:
        raise InstructGPTError(f"{source}: `tokenizer_name_or_path` ({args.tokenizer_name_or_path}) has no EOS token")
    return tokenizer


def run_pretrain(args: PretrainArguments, training_args: Any, recipe: Recipe) -> dict[str, Any]:
    """Train the tokenizer and the model as the recipe says; returns the final metrics."""
    from transformers import Trainer, default_data_collator, set_seed

    source = recipe.source
    required(training_args.output_dir, "output_dir", source)
    stage = TrainerStage("pretrain", training_args, recipe, args.if_output_exists, what="base model and tokenizer")
    if (recovered := stage.begin()) is not None:
        return recovered
    resume_from = stage.resume_from
    set_seed(training_args.seed)

    texts = load_corpus(args, source)
    if resume_from is not None and (resume_from / "tokenizer.json").is_file():
        args.tokenizer_name_or_path = str(resume_from)  # the tokenizer the interrupted run trained and saved
    tokenizer = get_tokenizer(args, texts, source)
    blocks = pack_blocks(texts, tokenizer, args.block_size)
    if not blocks:
        raise DataError(
            f"{source}: `dataset_name` ({args.dataset_name}) has fewer than block_size={args.block_size} "
            "tokens; lower block_size or add text"
        )
    train_dataset, eval_dataset = block_datasets(blocks, args.validation_fraction, training_args.seed)
    logger.info(
        f"corpus: {len(texts)} documents, {len(blocks) * args.block_size} tokens in {len(blocks)} "
        f"blocks of {args.block_size}; vocabulary {len(tokenizer)}"
    )

    model = build_model(args, tokenizer)
    logger.info(f"GPT-2 base model: {model.num_parameters() / 1e6:.2f}M parameters")
    callbacks = stage.start_run()  # the dashboards' run starts once every input is checked
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=default_data_collator,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    metrics = stage.train(trainer)
    metrics.update(num_parameters=model.num_parameters(), vocab_size=len(tokenizer), num_blocks=len(blocks))
    if eval_dataset is not None:
        evaluation = trainer.evaluate()
        metrics.update(evaluation)
        metrics["eval_perplexity"] = math.exp(min(evaluation["eval_loss"], 50.0))
    if args.probe_tiny_world and trainer.is_world_process_zero():
        probes = knowledge_probes(trainer.model, tokenizer)
        metrics.update({f"probe/{k}": v for k, v in probes.items()})
        logger.info(
            "knowledge probes (greedy completion of plain statements): "
            + ", ".join(f"{k} {v:.0%}" for k, v in probes.items())
        )
        if stage.run is not None:
            stage.run.summary.update({f"probe/{k}": v for k, v in probes.items()})
    stage.finish(
        trainer,
        metrics,
        tokenizer=tokenizer,
        card=dict(
            title="pretraining, the base model InstructGPT starts from",
            trainer="instructgpt on transformers' `Trainer`",
            kind="base",
            base_model=None,
            datasets=[args.dataset_name],
            example=" ".join(texts[0].split()[:6]),
            summary="A base model: a GPT-2 trained from scratch with the causal-LM loss. It knows its corpus's "
            "language and facts but does not follow instructions; it continues text.",
            settings={
                "layers": args.n_layer,
                "width": args.n_embd,
                "heads": args.n_head,
                "context": args.n_positions,
                "vocabulary": len(tokenizer),
                "learning_rate": training_args.learning_rate,
                "epochs": training_args.num_train_epochs,
            },
            results={
                k: metrics.get(k)
                for k in (
                    "num_parameters",
                    "global_step",
                    "eval_loss",
                    "eval_perplexity",
                    *(k for k in metrics if k.startswith("probe/")),
                )
            },
        ),
    )
    return metrics


def arguments() -> tuple[type, ...]:
    """The dataclasses a pretrain recipe fills: the model and corpus settings and ``TrainingArguments``."""
    from transformers import TrainingArguments

    return (PretrainArguments, TrainingArguments)


def parse_args(argv: list[str] | None = None) -> tuple[list[Any], Recipe]:
    """``RECIPE.yaml [--key value ...]`` as the stage's dataclass instances and the recipe."""
    return parse_stage_args(argv, "pretrain", arguments(), prog="instructgpt pretrain", description=__doc__)


def run(args: StageArgs) -> dict[str, Any]:
    """Run the stage from its parsed recipe; returns its final metrics."""
    return run_pretrain(*args.parts, args.recipe)


def main(argv: list[str] | None = None) -> None:
    stage_main("pretrain", arguments, run, argv, prog="instructgpt pretrain", description=__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
