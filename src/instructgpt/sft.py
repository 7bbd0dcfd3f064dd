"""Step 1 of InstructGPT: supervised fine-tuning on demonstrations, wrapping TRL's ``SFTTrainer``.

    instructgpt-sft recipes/tiny/sft.yaml [--key value ...]
    accelerate launch --config_file accelerate_config.yaml -m instructgpt recipes/tiny/sft.yaml

Data: ``prompt``/``completion`` (plain strings) or ``messages`` (chat turns; the last assistant turn is the
response). Both become conversational prompt/completion pairs, so TRL masks the prompt and the loss falls on the
response tokens only (InstructGPT trains on labeler demonstrations of the response).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from instructgpt.config import ScriptArguments
from instructgpt.data import DataError, find_empty, load_data, require_columns, require_rows
from instructgpt.errors import InstructGPTError
from instructgpt.losses import IGNORE_INDEX, masked_token_nll
from instructgpt.modeling import (
    check_model_path,
    eos_mismatch,
    load_tokenizer,
    lora_config,
    model_context_length,
    model_init_kwargs,
)
from instructgpt.outputs import mark_complete, prepare_output_dir
from instructgpt.recipe import Recipe, parse_stage_args
from instructgpt.tracking import finish_wandb, start_wandb


@dataclass
class SFTScriptArguments(ScriptArguments):
    long_examples: Literal["truncate", "drop"] = field(
        default="truncate",
        metadata={
            "help": "Examples longer than `max_length` (itself capped at the model's context): `truncate` them "
            "(keeping the start, TRL's `truncation_mode`) or `drop` them. Either way the run says how many."
        },
    )


def to_prompt_completion(example: dict[str, Any]) -> dict[str, Any]:
    """One demonstration as TRL's conversational prompt/completion pair.

    ``messages`` (e.g. HuggingFaceH4/no_robots) splits before the last assistant turn: everything before it is the
    prompt (system and earlier turns included), the last turn is the completion.
    """
    if "messages" in example and example.get("messages"):
        messages = example["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        return {"prompt": messages[:last], "completion": [messages[last]]}
    return {
        "prompt": [{"role": "user", "content": example["prompt"]}],
        "completion": [{"role": "assistant", "content": example["completion"]}],
    }


def load_demonstrations(name: str, script_args: ScriptArguments, split: str, key: str, source: str, limit: int | None):
    """Load, validate and convert one demonstration dataset; errors name the key, the column and the row."""
    dataset = load_data(name, key=key, source=source, config=script_args.dataset_config, split=split)
    fmt = require_columns(dataset, [("prompt", "completion"), ("messages",)], name=f"`{key}` ({name})", source=source)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    require_rows(dataset, name=f"`{key}` ({name})", source=source)
    if fmt == ("messages",):
        for row, messages in enumerate(dataset["messages"]):
            if not any(m.get("role") == "assistant" for m in messages or []):
                raise DataError(f"{source}: `{key}` ({name}) row {row}: `messages` has no assistant turn")
    else:
        for column in fmt:
            row = find_empty(dataset[column])
            if row is not None:
                raise DataError(f"{source}: `{key}` ({name}) row {row}: empty `{column}`")
    return dataset.map(to_prompt_completion, remove_columns=dataset.column_names, desc=f"Formatting {key}")


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
        print(f"[instructgpt] {name}: dropped {len(too_long)} of {len(dataset)} examples longer than max_length={max_length}")
        if not keep:
            raise DataError(f"{name}: every example is longer than max_length={max_length}; nothing left to train on")
        return dataset.select(keep)
    print(
        f"[instructgpt] {name}: {len(too_long)} of {len(dataset)} examples are longer than max_length={max_length}; "
        "they are truncated (set `long_examples: drop` to drop them instead)"
    )
    return dataset


def build_trainer_class():
    """``SFTTrainer`` with the loss computed by :func:`instructgpt.losses.masked_token_nll`.

    The loss is the same masked next-token cross-entropy as TRL's; computing it with the project's own function
    makes the exact function that trains the model the one the gradient check verifies, and it is shared with
    PPO-ptx. Defined lazily so importing this module does not import TRL.
    """
    from trl import SFTTrainer

    class InstructSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            labels = inputs["labels"]
            model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
            outputs = model(**model_inputs, use_cache=False)
            loss = masked_token_nll(outputs.logits, labels, num_items_in_batch=num_items_in_batch)
            # Trainer counts `num_items_in_batch` over all processes while DDP averages gradients across them,
            # so the per-process loss is scaled back up (as transformers' own causal-LM loss does).
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            with torch.no_grad():
                mask = labels[:, 1:] != IGNORE_INDEX
                correct = (outputs.logits[:, :-1].argmax(-1) == labels[:, 1:]) & mask
                totals = self.accelerator.gather_for_metrics(torch.stack([correct.sum(), mask.sum()]).reshape(1, 2))
                totals = totals.reshape(-1, 2).sum(0)
                self._metrics[mode]["mean_token_accuracy"].append((totals[0] / totals[1].clamp(min=1)).item())
            return (loss, outputs) if return_outputs else loss

    return InstructSFTTrainer


def save_final_model(trainer: Any, output_dir: str) -> None:
    """Save a standard causal LM that every later stage and ``AutoModelForCausalLM`` load as it is.

    With LoRA, the adapter is merged into a full model in ``output_dir`` (the RM and PPO stages start from a
    complete model) and the adapter alone is kept in ``output_dir/adapter`` for ``PeftModel.from_pretrained``.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not hasattr(model, "merge_and_unload"):
        trainer.save_model(output_dir)  # handles sharded (FSDP / ZeRO-3) weights
        return
    trainer.save_model(f"{output_dir}/adapter")
    if trainer.is_world_process_zero():
        merged = model.merge_and_unload()
        merged.save_pretrained(output_dir)


def run_sft(script_args: SFTScriptArguments, training_args: Any, model_args: Any, recipe: Recipe) -> dict[str, Any]:
    """Run one SFT stage as the recipe describes; returns the final metrics."""
    from transformers import AutoConfig, AutoModelForCausalLM

    source = recipe.source
    model_path = check_model_path(model_args.model_name_or_path, "model_name_or_path", source)
    if not script_args.dataset_name:
        raise InstructGPTError(f"{source}: `dataset_name` is required (a Hub dataset id or a local .jsonl file)")
    if not training_args.output_dir:
        raise InstructGPTError(f"{source}: `output_dir` is required")
    resume_from = prepare_output_dir(training_args.output_dir, script_args.if_output_exists, source)

    train_dataset = load_demonstrations(
        script_args.dataset_name, script_args, script_args.dataset_train_split, "dataset_name", source,
        script_args.max_train_samples,
    )
    eval_dataset = None
    if script_args.eval_dataset_name or script_args.dataset_test_split:
        name = script_args.eval_dataset_name or script_args.dataset_name
        key = "eval_dataset_name" if script_args.eval_dataset_name else "dataset_test_split"
        eval_dataset = load_demonstrations(
            name, script_args, script_args.dataset_test_split or "test", key, source, script_args.max_eval_samples
        )

    tokenizer = load_tokenizer(
        model_path,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        chat_template=script_args.chat_template,
        prompt_template=script_args.prompt_template,
        pad_token=script_args.pad_token,
    )
    if training_args.eos_token is None and (end_of_turn := eos_mismatch(tokenizer)) is not None:
        # Chat bases (Qwen's <|im_end|>, Llama 3's <|eot_id|>) end an answer with a token that is not their EOS;
        # the model learns to write it, so it is where generation in later stages must stop. TRL makes it the EOS.
        print(
            f"[instructgpt] the chat template ends an answer with {end_of_turn}, not the EOS {tokenizer.eos_token}: "
            f"using {end_of_turn} as EOS (set `eos_token` to choose another)"
        )
        training_args.eos_token = end_of_turn
    config = AutoConfig.from_pretrained(model_path, trust_remote_code=training_args.trust_remote_code)
    context = model_context_length(config)
    if context is not None and (training_args.max_length is None or training_args.max_length > context):
        print(f"[instructgpt] max_length={training_args.max_length} exceeds the model's context; using {context}")
        training_args.max_length = context
    if training_args.max_length is not None:
        train_dataset = handle_long_examples(
            train_dataset, tokenizer, training_args.max_length, script_args.long_examples, f"{source}: train data"
        )
        if eval_dataset is not None:
            eval_dataset = handle_long_examples(
                eval_dataset, tokenizer, training_args.max_length, script_args.long_examples, f"{source}: eval data"
            )

    model = AutoModelForCausalLM.from_pretrained(
        model_path, **model_init_kwargs(model_args, trust_remote_code=training_args.trust_remote_code, source=source)
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id

    run = start_wandb(
        training_args.report_to, training_args.project, training_args.run_name, "sft", recipe.data,
        training_args.output_dir,
    )
    trainer = build_trainer_class()(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=lora_config(
            model_args, "CAUSAL_LM", source=source, trust_remote_code=training_args.trust_remote_code
        ),
    )
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    metrics: dict[str, Any] = dict(result.metrics)
    accelerator = trainer.accelerator
    metrics["num_processes"] = accelerator.num_processes
    metrics["global_step"] = trainer.state.global_step
    print(f"[instructgpt] process {accelerator.process_index}/{accelerator.num_processes}: {trainer.state.global_step} optimizer steps")
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    if losses:
        metrics["first_logged_loss"], metrics["last_logged_loss"] = losses[0], losses[-1]
    if eval_dataset is not None:
        metrics.update(trainer.evaluate())
    save_final_model(trainer, training_args.output_dir)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(training_args.output_dir)
        mark_complete(training_args.output_dir, "sft", recipe.data, metrics)
        print(f"[instructgpt] SFT model saved to {training_args.output_dir}")
    trainer.accelerator.wait_for_everyone()
    finish_wandb(run)
    return metrics


def parse_args(argv: list[str] | None = None):
    from trl import ModelConfig, SFTConfig

    return parse_stage_args(argv, "sft", (SFTScriptArguments, SFTConfig, ModelConfig))


def main(argv: list[str] | None = None) -> None:
    from instructgpt.cli import run_cli

    def _run() -> None:
        (script_args, training_args, model_args), recipe = parse_args(argv)
        run_sft(script_args, training_args, model_args, recipe)

    run_cli(_run)


if __name__ == "__main__":
    main(sys.argv[1:])
