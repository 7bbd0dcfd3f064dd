"""Step 1 of InstructGPT: supervised fine-tuning on demonstrations, wrapping TRL's ``SFTTrainer``.

    instructgpt-sft recipes/tiny/sft.yaml [--key value ...]
    accelerate launch --config_file accelerate_config.yaml -m instructgpt recipes/tiny/sft.yaml

Data: ``prompt``/``completion`` (plain strings) or ``messages`` (chat turns ending with the assistant turn that is
the demonstration; :func:`instructgpt.data.formats.split_conversation`). Both become conversational
prompt/completion pairs, so TRL masks the prompt and the loss falls on the response tokens only (InstructGPT trains
on labeler demonstrations of the response). The loss is TRL's own (its ``loss_type``, liger kernels and memory-saving
paths all apply); ``tests/integration/test_sft.py`` checks that it equals
:func:`instructgpt.losses.masked_token_nll`, the function the float64 gradient check verifies and PPO-ptx uses.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Literal

from instructgpt.arguments import ScriptArguments
from instructgpt.data import DataError
from instructgpt.data.formats import load_demonstrations, prompt_of
from instructgpt.infra.entrypoint import stage_main
from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.log import get_logger
from instructgpt.infra.parser import Recipe, StageArgs, parse_stage_args, required
from instructgpt.infra.trainer_stage import TrainerStage
from instructgpt.modeling import (
    cap_max_length,
    check_model_path,
    eos_mismatch,
    lora_config,
    model_init_kwargs,
    stage_tokenizer,
)
from instructgpt.modeling.loading import load_causal_lm

logger = get_logger(__name__)


@dataclass
class SFTScriptArguments(ScriptArguments):
    long_examples: Literal["truncate", "drop"] = field(
        default="truncate",
        metadata={
            "help": "Examples longer than `max_length` (itself capped at the model's context): `truncate` them "
            "(keeping the start, TRL's `truncation_mode`) or `drop` them. Either way the run says how many."
        },
    )


def handle_long_examples(dataset, tokenizer, max_length: int, mode: str, name: str):
    """Count demonstrations longer than ``max_length`` tokens; drop them or leave them to TRL's truncation."""
    lengths = [
        len(tokenizer.apply_chat_template(ex["prompt"] + ex["completion"], tokenize=True, return_dict=False))
        for ex in dataset
    ]
    too_long = [i for i, n in enumerate(lengths) if n > max_length]
    if not too_long:
        return dataset
    if mode == "drop":
        keep = sorted(set(range(len(dataset))) - set(too_long))
        logger.info(f"{name}: dropped {len(too_long)} of {len(dataset)} examples longer than max_length={max_length}")
        if not keep:
            raise DataError(f"{name}: every example is longer than max_length={max_length}; nothing left to train on")
        return dataset.select(keep)
    logger.info(
        f"{name}: {len(too_long)} of {len(dataset)} examples are longer than max_length={max_length}; "
        "they are truncated (set `long_examples: drop` to drop them instead)"
    )
    return dataset


def refuse_keys_that_cannot_apply(training_args: Any, source: str) -> None:
    """SFTConfig keys this stage would silently ignore are refused instead, each with the reason.

    Every demonstration becomes a conversational prompt/completion pair (:func:`instructgpt.data.formats.
    to_prompt_completion`), so there is no text column to read and the completion, not the assistant turns of a
    chat template, is what the loss masks in.
    """
    if training_args.dataset_text_field != "text":
        raise InstructGPTError(
            f"{source}: `dataset_text_field` does not apply: demonstrations are read as prompt/completion pairs "
            "(`prompt`/`completion` or `messages` columns), not as one text column"
        )
    if training_args.assistant_only_loss:
        raise InstructGPTError(
            f"{source}: `assistant_only_loss` does not apply: the loss is already on the response only "
            "(`completion_only_loss`, TRL's default for prompt/completion data)"
        )


def run_sft(script_args: SFTScriptArguments, training_args: Any, model_args: Any, recipe: Recipe) -> dict[str, Any]:
    """Run one SFT stage as the recipe describes; returns the final metrics."""

    source = recipe.source
    model_path = check_model_path(model_args.model_name_or_path, "model_name_or_path", source)
    required(script_args.dataset, "dataset_name", source, "a Hub dataset id or a local .jsonl file")
    required(training_args.output_dir, "output_dir", source)
    refuse_keys_that_cannot_apply(training_args, source)
    stage = TrainerStage("sft", training_args, recipe, script_args.if_output_exists, what="SFT model")
    if (recovered := stage.begin()) is not None:
        return recovered

    train_dataset = load_demonstrations(
        script_args.dataset,
        config=script_args.dataset_config,
        split=script_args.dataset_train_split,
        key="dataset_name",
        source=source,
        limit=script_args.max_train_samples,
    )
    eval_dataset = None
    if script_args.eval_dataset_name or script_args.dataset_test_split:
        name = script_args.eval_dataset_name or script_args.dataset
        key = "eval_dataset_name" if script_args.eval_dataset_name else "dataset_test_split"
        eval_dataset = load_demonstrations(
            name,
            config=script_args.dataset_config,
            split=script_args.dataset_test_split or "test",
            key=key,
            source=source,
            limit=script_args.max_eval_samples,
        )

    tokenizer = stage_tokenizer(model_path, script_args, model_args, source, training_args.trust_remote_code)
    if training_args.eos_token is None and (end_of_turn := eos_mismatch(tokenizer)) is not None:
        # Chat bases (Qwen's <|im_end|>, Llama 3's <|eot_id|>) end an answer with a token that is not their EOS;
        # the model learns to write it, so it is where generation in later stages must stop. TRL makes it the EOS.
        logger.info(
            f"the chat template ends an answer with {end_of_turn}, not the EOS {tokenizer.eos_token}: "
            f"using {end_of_turn} as EOS (set `eos_token` to choose another)"
        )
        training_args.eos_token = end_of_turn
    cap_max_length(training_args, model_path, source, training_args.trust_remote_code)
    if training_args.max_length is not None:
        train_dataset = handle_long_examples(
            train_dataset, tokenizer, training_args.max_length, script_args.long_examples, f"{source}: train data"
        )
        if eval_dataset is not None:
            eval_dataset = handle_long_examples(
                eval_dataset, tokenizer, training_args.max_length, script_args.long_examples, f"{source}: eval data"
            )

    model = load_causal_lm(
        model_path,
        key="model_name_or_path",
        source=source,
        **model_init_kwargs(model_args, trust_remote_code=training_args.trust_remote_code, source=source),
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id

    callbacks = stage.start_run()  # the dashboards' run starts once every input is checked
    from trl import SFTTrainer

    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
        peft_config=lora_config(
            model_args, "CAUSAL_LM", source=source, trust_remote_code=training_args.trust_remote_code
        ),
    )
    metrics = stage.train(trainer)
    if eval_dataset is not None:
        metrics.update(trainer.evaluate())
    # with LoRA: the merged model in output_dir (later stages start from a complete model), the adapter alone in
    # output_dir/adapter for PeftModel.from_pretrained
    stage.finish(
        trainer,
        metrics,
        tokenizer=tokenizer,
        keep_adapter=True,
        card=dict(
            title="supervised fine-tuning, InstructGPT step 1",
            trainer="instructgpt on TRL's `SFTTrainer`",
            kind="policy",
            base_model=model_path,
            datasets=script_args.dataset_names,
            example=prompt_of(train_dataset[0]),
            summary="A policy fine-tuned on demonstrations of the answers wanted, with the loss on the response "
            "tokens only. Its tokenizer carries the chat template it was trained with, so prompts given as chat "
            "messages are formatted as in training.",
            settings={
                "learning_rate": training_args.learning_rate,
                "epochs": training_args.num_train_epochs,
                "max_length": training_args.max_length,
                "LoRA r": model_args.lora_r if model_args.use_peft else None,
            },
            results={k: metrics.get(k) for k in ("global_step", "first_logged_loss", "last_logged_loss", "eval_loss")},
        ),
    )
    return metrics


def arguments() -> tuple[type, ...]:
    """The dataclasses an sft recipe fills: the script arguments, TRL's ``SFTConfig`` and ``ModelConfig``."""
    from trl import ModelConfig, SFTConfig

    return (SFTScriptArguments, SFTConfig, ModelConfig)


def parse_args(argv: list[str] | None = None) -> tuple[list[Any], Recipe]:
    """``RECIPE.yaml [--key value ...]`` as the stage's dataclass instances and the recipe."""
    return parse_stage_args(argv, "sft", arguments(), prog="instructgpt-sft", description=__doc__)


def run(args: StageArgs) -> dict[str, Any]:
    """Run the stage from its parsed recipe; returns its final metrics."""
    return run_sft(*args.parts, args.recipe)


def main(argv: list[str] | None = None) -> None:
    stage_main("sft", arguments, run, argv, prog="instructgpt-sft", description=__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
