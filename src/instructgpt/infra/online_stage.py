"""The lifecycle of the online RL stages on TRL's trainers (RLOO, GRPO), written once.

Both sample ``num_generations`` responses per prompt from the policy, score them with this project's frozen reward
model (or ensemble) through TRL's reward-function interface (:class:`~instructgpt.modeling.reward.
RewardModelReward`), and update the policy under a KL penalty to the SFT model; they differ only in how TRL turns
the rewards into advantages (RLOO: each response against the mean of the others of its prompt; GRPO: against the
group's mean, divided by its standard deviation). A stage module names its TRL trainer and config, its card, and
calls :func:`run_online_stage`.

What is shared:

- the prompts, read by the one row rule and kept only where they leave room for the response in the context
  (:func:`prompt_dataset`), at least one generation batch of them (:func:`check_batch`);
- the reward model, checked to share the policy's tokenizer, placed like PPO's (on this process's device, sharded
  under DeepSpeed and FSDP);
- checkpoints: ``checkpoint-N/`` is transformers' Trainer checkpoint (resume from it), and ``checkpoint-N/policy/``
  the policy alone, as PPO lays it out, which ``instructgpt eval`` reads for the reward-KL frontier; with
  ``save_policy_checkpoints`` the policies of checkpoints that ``save_total_limit`` rotates out are kept
  (:func:`policy_checkpoint_trainer`);
- the Trainer lifecycle every stage shares (:class:`~instructgpt.infra.trainer_stage.TrainerStage`).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instructgpt.data import DataError
from instructgpt.data.formats import Prompt, load_prompts
from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.log import get_logger
from instructgpt.infra.parser import Recipe, required
from instructgpt.infra.processes import prepare_frozen_model
from instructgpt.infra.trainer_stage import TrainerStage
from instructgpt.modeling import (
    check_model_path,
    check_same_tokenizer,
    format_prompt,
    load_tokenizer,
    lora_config,
    model_context_length,
    model_init_kwargs,
)
from instructgpt.modeling.config import load_pretrained
from instructgpt.modeling.loading import load_causal_lm
from instructgpt.modeling.reward import RewardModelReward, check_reward_model

logger = get_logger(__name__)

POLICY_DIR = "policy"
# what transformers' Trainer writes into a checkpoint besides the model and tokenizer: not part of `policy/`
TRAINER_FILES = re.compile(
    r"(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state.*\.pth|trainer_state\.json|training_args\.bin|README\.md|"
    r"trackers\.json)"
)


@dataclass(frozen=True)
class OnlineMethod:
    """What an online RL stage is: its name, TRL's trainer for it, and what its model card says."""

    name: str  # the stage: "rloo", "grpo"
    trainer: type  # TRL's trainer class
    title: str
    summary: str  # "trained with RLOO (Ahmadian et al. 2024)"
    settings: tuple[str, ...] = ()  # the config keys the card lists besides the shared ones


def as_conversation(prompt: Prompt) -> list[dict[str, str]]:
    """A prompt as chat messages, so that TRL applies the chat template SFT trained on (with the generation prompt)
    instead of tokenizing the bare instruction."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def prompt_dataset(prompts: list[Prompt], tokenizer: Any, max_prompt_tokens: int | None, name: str) -> Any:
    """TRL's conversational prompt dataset; prompts that leave no room for the response in the context are dropped,
    and the run says how many."""
    from datasets import Dataset

    keep = prompts
    if max_prompt_tokens is not None:
        lengths = [len(tokenizer(format_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]) for p in prompts]
        keep = [p for p, n in zip(prompts, lengths) if n <= max_prompt_tokens]
        if len(keep) < len(prompts):
            logger.info(
                f"{name}: dropped {len(prompts) - len(keep)} of {len(prompts)} prompts longer than "
                f"{max_prompt_tokens} tokens (the context minus `max_completion_length`)"
            )
        if not keep:
            raise DataError(
                f"{name}: every prompt is longer than {max_prompt_tokens} tokens; nothing left to train on "
                "(lower `max_completion_length`)"
            )
    return Dataset.from_dict({"prompt": [as_conversation(p) for p in keep]})


def check_batch(training_args: Any, num_prompts: int, source: str) -> None:
    """One generation batch holds ``generation_batch_size / num_generations`` distinct prompts; refuse a dataset that
    cannot fill one, naming the keys (TRL would otherwise stop with an empty dataloader)."""
    needed = training_args.generation_batch_size // training_args.num_generations
    if num_prompts < needed:
        raise InstructGPTError(
            f"{source}: `dataset_name` has {num_prompts} usable prompts, fewer than the {needed} that one generation "
            f"batch samples ({training_args.generation_batch_size} completions = per_device_train_batch_size x "
            f"steps_per_generation x processes, {training_args.num_generations} per prompt); use more prompts or a "
            "smaller batch"
        )


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link (no second copy of the weights on disk), or a copy where the filesystem has none."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_policy(checkpoint: Path) -> Path:
    """``checkpoint/policy``: the checkpoint's model and tokenizer files without the optimizer and trainer state, so
    that what evaluation reads survives the rotation of resume states. Written under a temporary name, then renamed."""
    final, tmp = checkpoint / POLICY_DIR, checkpoint / f".{POLICY_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for item in checkpoint.iterdir():
        if item.is_file() and not TRAINER_FILES.fullmatch(item.name):
            link_or_copy(item, tmp / item.name)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def rotate_resume_states(output_dir: Path, limit: int | None, keep_policies: bool) -> None:
    """``save_total_limit`` for resume states: all but the ``limit`` newest checkpoints lose everything except their
    ``policy/`` (or are removed whole without ``keep_policies``). A stripped checkpoint has no ``trainer_state.json``,
    so it is never a candidate to resume from."""
    if not limit or limit <= 0:
        return
    checkpoints = sorted(
        (int(m.group(1)), p)
        for p in output_dir.glob("checkpoint-*")
        if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name))
    )
    with_state = [p for _, p in checkpoints if (p / "trainer_state.json").is_file()]
    for path in with_state[:-limit]:
        if not keep_policies or not (path / POLICY_DIR).is_dir():
            shutil.rmtree(path, ignore_errors=True)
            continue
        (path / "trainer_state.json").unlink()  # first: from now on the folder is no resume state
        for item in path.iterdir():
            if item.name != POLICY_DIR:
                shutil.rmtree(item) if item.is_dir() else item.unlink()


def policy_checkpoint_trainer(base: type) -> type:
    """TRL's trainer ``base`` (``RLOOTrainer``, ``GRPOTrainer``) whose checkpoints also hold ``policy/`` and keep it
    past ``save_total_limit``."""

    class PolicyCheckpointTrainer(base):
        keep_policies: bool = True

        def _save_checkpoint(self, model, trial):
            limit, self.args.save_total_limit = self.args.save_total_limit, None  # rotated below, policies kept
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self.args.save_total_limit = limit
            if self.args.should_save:
                checkpoint = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
                write_policy(checkpoint)
                rotate_resume_states(checkpoint.parent, limit, self.keep_policies)

    PolicyCheckpointTrainer.__name__ = f"InstructGPT{base.__name__}"
    return PolicyCheckpointTrainer


def run_online_stage(
    method: OnlineMethod, script_args: Any, training_args: Any, model_args: Any, recipe: Recipe
) -> dict[str, Any]:
    """Run one online RL stage (``method``) as the recipe describes; returns the final metrics."""
    from transformers import AutoConfig

    source = recipe.source
    model_path = check_model_path(model_args.model_name_or_path, "model_name_or_path", source)
    required(script_args.reward_model_path, "reward_model_path", source, "the output_dir of instructgpt-rm")
    check_reward_model(script_args.reward_model_path, "reward_model_path", source)
    required(script_args.dataset, "dataset_name", source, "the prompts: a .jsonl file or a Hub id")
    required(training_args.output_dir, "output_dir", source)
    if training_args.use_vllm:
        raise InstructGPTError(f"{source}: `use_vllm` is not supported by this stage yet; sample with transformers")
    stage = TrainerStage(
        method.name, training_args, recipe, script_args.if_output_exists, what=f"{method.name.upper()} policy"
    )
    if (recovered := stage.begin()) is not None:
        return recovered

    trust = training_args.trust_remote_code
    tokenizer = load_tokenizer(
        model_path,
        revision=model_args.model_revision,
        trust_remote_code=trust,
        chat_template=script_args.chat_template,
        prompt_template=script_args.prompt_template,
        pad_token=script_args.pad_token,
        padding_side="left",
    )
    reward_path = script_args.reward_model_path
    check_same_tokenizer(
        tokenizer,
        f"the policy ({model_path})",
        load_tokenizer(reward_path, key="reward_model_path", source=source),
        f"`reward_model_path` ({reward_path})",
        source=source,
        why="a reward model trained from another base model was not trained on this policy's answers; train it "
        "from the SFT model (instructgpt-rm does)",
    )
    config = load_pretrained(AutoConfig, model_path, key="model_name_or_path", source=source, trust_remote_code=trust)
    context = model_context_length(config)
    max_completion = training_args.max_completion_length
    if context is not None and max_completion is not None and max_completion >= context:
        raise InstructGPTError(
            f"{source}: `max_completion_length` ({max_completion}) leaves no room for a prompt in the model's "
            f"context of {context} tokens"
        )
    max_prompt = None if context is None or max_completion is None else context - max_completion
    prompts = load_prompts(
        script_args.dataset,
        key="dataset_name",
        source=source,
        config=script_args.dataset_config,
        split=script_args.dataset_train_split,
        limit=script_args.max_train_samples,
    )
    train_dataset = prompt_dataset(prompts, tokenizer, max_prompt, f"{source}: `dataset_name`")
    check_batch(training_args, len(train_dataset), source)
    eval_dataset = None
    if script_args.eval_dataset_name or script_args.dataset_test_split:
        name = script_args.eval_dataset_name or script_args.dataset
        key = "eval_dataset_name" if script_args.eval_dataset_name else "dataset_test_split"
        eval_prompts = load_prompts(
            name,
            key=key,
            source=source,
            config=script_args.dataset_config,
            split=script_args.dataset_test_split or "test",
            limit=script_args.max_eval_samples,
        )
        eval_dataset = prompt_dataset(eval_prompts, tokenizer, max_prompt, f"{source}: `{key}`")
        generations = training_args.num_generations_eval or training_args.num_generations
        eval_batch = training_args.per_device_eval_batch_size * training_args.world_size
        if eval_batch % generations:  # TRL checks this only with eval_strategy; the final evaluation needs it too
            raise InstructGPTError(
                f"{source}: `per_device_eval_batch_size` x processes ({eval_batch}) must be a multiple of "
                f"`num_generations_eval` or `num_generations` ({generations}) to evaluate on `{key}`"
            )

    model = load_causal_lm(
        model_path,
        key="model_name_or_path",
        source=source,
        **model_init_kwargs(model_args, trust_remote_code=trust, source=source),
    )
    if Path(model_path).expanduser().is_dir():
        # peft records this as the adapter's base: absolute, so checkpoint-N/policy loads from any directory
        model.name_or_path = str(Path(model_path).expanduser().resolve())
    model.config.pad_token_id = tokenizer.pad_token_id
    eos_ids = {tokenizer.eos_token_id}
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    reward = RewardModelReward(
        script_args.reward_model_path,
        missing_eos_penalty=script_args.missing_eos_penalty,
        eos_token_ids=eos_ids,
        batch_size=script_args.reward_batch_size,
        source=source,
        aggregation=script_args.reward_aggregation,
        std_coef=script_args.reward_std_coef,
    )

    callbacks = stage.start_run()  # the dashboards' run starts once every input is checked
    trainer_class = policy_checkpoint_trainer(method.trainer)
    trainer_class.keep_policies = script_args.save_policy_checkpoints
    trainer = trainer_class(
        model=model,
        reward_funcs=reward,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
        peft_config=lora_config(model_args, "CAUSAL_LM", source=source, trust_remote_code=trust),
    )
    # the frozen reward model placed like PPO's: on this process's device, sharded under DeepSpeed and FSDP
    reward.model = prepare_frozen_model(reward.model, trainer.accelerator)
    metrics = stage.train(trainer)
    history = [row for row in trainer.state.log_history if "reward" in row]
    if history:
        metrics.update(
            {
                "first_logged_reward": history[0]["reward"],
                "last_logged_reward": history[-1]["reward"],
                "last_logged_kl": history[-1].get("kl"),
            }
        )
    if eval_dataset is not None:
        metrics.update(trainer.evaluate())
    # with LoRA: the merged model in output_dir, the adapter alone in output_dir/adapter
    stage.finish(
        trainer,
        metrics,
        tokenizer=tokenizer,
        keep_adapter=True,
        card=dict(
            title=method.title,
            trainer=f"instructgpt on TRL's `{method.trainer.__name__}`",
            kind="policy",
            base_model=model_path,
            datasets=script_args.dataset_names,
            example=prompts[0],
            summary=f"A policy: the SFT model {method.summary} against the frozen reward model "
            f"`{script_args.reward_model_path}` (normalized so that demonstrations score 0), under a KL penalty to the "
            "SFT policy. Its tokenizer carries the chat template it was trained with.",
            settings={
                "learning_rate": training_args.learning_rate,
                "beta (KL)": training_args.beta,
                "num_generations": training_args.num_generations,
                "max_completion_length": training_args.max_completion_length,
                "temperature": training_args.temperature,
                "missing_eos_penalty": script_args.missing_eos_penalty,
                "LoRA r": model_args.lora_r if model_args.use_peft else None,
                **{key: getattr(training_args, key) for key in method.settings},
            },
            results={
                k: metrics.get(k)
                for k in ("global_step", "first_logged_reward", "last_logged_reward", "last_logged_kl")
            },
        ),
    )
    return metrics
