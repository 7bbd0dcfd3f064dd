"""PPO's algorithm: :class:`PPOTrainer`, one update after another (rollout, advantages, PPO epochs, the β update).

The stage's entry (the command line, the registry's ``run``) is :mod:`instructgpt.stages.ppo.run`, whose docstring
(the ``--help``) describes each update step by step and names the modules beside this one.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from tqdm.auto import tqdm
from transformers import set_seed

from instructgpt.data.padding import pad_sequences
from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.files import PPO_METRICS_FILE as METRICS_FILE
from instructgpt.infra.files import append_jsonl
from instructgpt.infra.guards import fault_point
from instructgpt.infra.hub import take_push_to_hub
from instructgpt.infra.log import get_logger
from instructgpt.infra.outputs import prepare_output_dir
from instructgpt.infra.parser import Recipe
from instructgpt.infra.processes import no_accelerator, prepare_frozen_model
from instructgpt.infra.tracking import StageTracker
from instructgpt.losses import ppo as core
from instructgpt.modeling import check_model_path
from instructgpt.modeling.ensemble import aggregate_rewards, disagreement, member_paths, resolve_aggregation
from instructgpt.modeling.reward import check_reward_model
from instructgpt.stages.ppo import divergence, models, objective
from instructgpt.stages.ppo import rollout as hf_rollout
from instructgpt.stages.ppo.checkpointing import (
    Progress,
    load_checkpoint,
    restore_resume_state,
    resume_state,
    save_policy,
    write_checkpoint,
)
from instructgpt.stages.ppo.config import PPOConfig, PPOScriptArguments, steps_of
from instructgpt.stages.ppo.data import PromptOrder, load_prompt_data
from instructgpt.stages.ppo.metrics import (
    COMPLETIONS_FILE,
    completion_rows,
    global_mean,
    held_out_metrics,
    truncate_log,
    update_metrics,
)
from instructgpt.stages.ppo.models import (
    Sequences,
    length_groups,
    load_models,
    response_logits,
    score_parts,
    supports_logits_to_keep,
    trim_padding,
)
from instructgpt.stages.ppo.optimization import build_kl_controller, build_optimizer, build_scheduler
from instructgpt.stages.ppo.output import begin, finish
from instructgpt.stages.ppo.rollout import Batch, join_chunks
from instructgpt.stages.ppo.vllm_rollout import VLLMRollout, check_vllm_settings

logger = get_logger(__name__)


class PPOTrainer:
    """InstructGPT's PPO trainer. ``PPOTrainer(script_args, args, model_args, recipe).train()`` runs a recipe."""

    def __init__(self, script_args: PPOScriptArguments, args: PPOConfig, model_args: Any, recipe: Recipe):
        self.script_args, self.args, self.model_args, self.recipe = script_args, args, model_args, recipe
        self.source = recipe.source
        self._check_paths()
        self.output_dir = Path(args.output_dir)
        self.resume_from = prepare_output_dir(self.output_dir, script_args.if_output_exists, self.source, stage="ppo")
        self.push = take_push_to_hub(args)  # pushed once the output is finished
        self.tracker = StageTracker([], {})  # the dashboards, started with the loop in train()
        mixed = "bf16" if args.bf16 else "fp16" if args.fp16 else "no"
        self.accelerator = Accelerator(
            gradient_accumulation_steps=args.micro_batches_per_mini_batch,
            mixed_precision=mixed,
            cpu=no_accelerator(),
            # several nodes without a shared filesystem: each node keeps a full checkpoint on its own disk
            project_config=ProjectConfiguration(save_on_each_node=args.save_on_each_node),
        )
        set_seed(args.seed)
        data = load_prompt_data(
            script_args, args, model_args, self.policy_path, self.accelerator.process_index, self.source
        )
        self.tokenizer, self.prompts, self.prompt_ids = data.tokenizer, data.prompts, data.prompt_ids
        self.eval_prompts, self.eval_prompt_ids = data.eval_prompts, data.eval_prompt_ids
        self.ptx, self.stop_token_ids = data.ptx, data.stop_token_ids
        loaded = load_models(
            self.policy_path,
            script_args.reward_model_path,
            self.value_path,
            self.tokenizer,
            model_args,
            args,
            self.source,
        )
        self.model, self.ref_model, self.reward_model = loaded.model, loaded.ref_model, loaded.reward_model
        self.reward_shifts, self.reward_pad_id = loaded.reward_shifts, loaded.reward_pad_id
        self.rm_parts, self.is_peft = loaded.rm_parts, loaded.is_peft
        self._build_optimization()
        self.progress = Progress()
        self.vllm = None
        if args.use_vllm:  # the engine's context: the longest prompt plus `response_length`
            self.vllm = VLLMRollout(
                args,
                self.accelerator,
                self.policy_path,
                model_args,
                longest_prompt=max(len(ids) for ids in self.prompt_ids + self.eval_prompt_ids),
                stop_token_ids=self.stop_token_ids,
                pad_token_id=self.tokenizer.pad_token_id,
                source=self.source,
            )
        # a different sampling stream per process (TRL's `local_seed`), restored from checkpoints with the RNG state
        torch.manual_seed(args.seed + self.accelerator.process_index * 100003)

    # ----------------------------------------------------------------------------------------------------------
    # Setup
    # ----------------------------------------------------------------------------------------------------------

    def _check_paths(self) -> None:
        sa, source = self.script_args, self.source
        if self.args.use_vllm:
            check_vllm_settings(self.args, self.model_args, source)  # first: nothing is loaded or written without it
        self.policy_path = check_model_path(self.model_args.model_name_or_path, "model_name_or_path", source)
        if not sa.reward_model_path:
            raise InstructGPTError(f"{source}: `reward_model_path` is required (the output_dir of instructgpt-rm)")
        check_reward_model(sa.reward_model_path, "reward_model_path", source)
        self.reward_aggregation, self.reward_std_coef = resolve_aggregation(
            sa.reward_model_path, sa.reward_aggregation, sa.reward_std_coef, "reward_model_path", source
        )
        # InstructGPT: the value function starts from the reward model (an ensemble's first member)
        self.value_path = sa.value_model_path or member_paths(sa.reward_model_path, "reward_model_path", source)[0]
        check_reward_model(self.value_path, "value_model_path" if sa.value_model_path else "reward_model_path", source)
        if not sa.dataset:
            raise InstructGPTError(f"{source}: `dataset_name` is required (the PPO prompts: a .jsonl file or a Hub id)")
        if not self.args.output_dir:
            raise InstructGPTError(f"{source}: `output_dir` is required")
        if self.args.ptx_coef > 0 and not sa.ptx_dataset_name:
            raise InstructGPTError(f"{source}: `ptx_coef` is {self.args.ptx_coef} but no `ptx_dataset_name` is set")

    def _build_optimization(self) -> None:
        args, acc = self.args, self.accelerator
        self.batch_size = args.batch_size(acc.num_processes)
        if len(self.prompts) < self.batch_size:
            dataset = self.script_args.dataset  # a file or Hub id, or a mixture (which names its key itself)
            named = f"`dataset_name` ({dataset})" if isinstance(dataset, str) else str(dataset)
            raise InstructGPTError(
                f"{self.source}: {named} has {len(self.prompts)} prompts, "
                f"fewer than one rollout batch of {self.batch_size} episodes (per_device_train_batch_size x "
                "gradient_accumulation_steps x processes); use more prompts or a smaller batch"
            )
        self.num_total_batches = args.num_total_batches(len(self.prompts), acc.num_processes)
        self.optimizer = build_optimizer(self.model, args)
        self.scheduler = build_scheduler(self.optimizer, args, self.num_total_batches)
        self.kl_controller = build_kl_controller(args)
        self.model, self.optimizer = acc.prepare(self.model, self.optimizer)
        # the frozen models sharded like the trained one under DeepSpeed and FSDP, not copied whole to every device
        self.reward_model = prepare_frozen_model(self.reward_model, acc)
        self.ref_model = prepare_frozen_model(self.ref_model, acc)

    # ----------------------------------------------------------------------------------------------------------
    # Rollout
    # ----------------------------------------------------------------------------------------------------------

    @property
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    def _reference_logprobs(self, seqs, response: torch.Tensor) -> torch.Tensor:
        policy = self.unwrapped.policy
        model = self.ref_model if self.ref_model is not None else policy
        context = policy.disable_adapter() if self.ref_model is None else nullcontext()
        with context:
            logits = response_logits(model, seqs, self.args.temperature, supports_logits_to_keep(model))
        return core.logprobs_from_logits(logits, response)

    @torch.no_grad()
    def _score_chunk(self, query, query_mask, samples) -> dict[str, torch.Tensor]:
        """Reference log-probs, old values and normalised scores for one chunk of sampled responses.

        The three forwards run on groups of ``per_device_train_batch_size`` sequences of similar length, each group
        trimmed to its own longest prompt and response (:func:`~instructgpt.stages.ppo.models.length_groups`), as
        the update's micro-batches are: prompts and responses vary in length, and a chunk padded to its longest
        sequence forwards mostly padding. Padding is masked out of attention and positions count real tokens, so
        every real position gets the numbers the untrimmed chunk would give (up to float rounding).
        """
        batch, width = samples.response.shape
        device = samples.response.device
        ref_logprobs = torch.zeros((batch, width), device=device)
        values = torch.zeros((batch, width), device=device)
        scores = torch.zeros(batch, device=device)
        spread = torch.zeros(batch, device=device)
        value_parts = score_parts(self.unwrapped.value_model, "value_model_path", self.value_path)
        lengths = query_mask.sum(1) + samples.mask.sum(1)
        for idx in length_groups(lengths, self.args.per_device_train_batch_size):
            query_g, query_mask_g, response_g, mask_g = trim_padding(
                query[idx], query_mask[idx], samples.response[idx], samples.mask[idx]
            )
            seqs = Sequences.build(query_g, query_mask_g, response_g, mask_g)
            w = response_g.shape[1]
            with self.accelerator.autocast():
                ref_logprobs[idx, :w] = self._reference_logprobs(seqs, response_g).float()
                # through the module, so that a benchmark's timers see these calls
                values[idx, :w] = models.response_values(*value_parts, seqs).float()
                members = models.member_rewards(self.rm_parts, self.reward_shifts, seqs, self.reward_pad_id).float()
                scores[idx] = aggregate_rewards(members, self.reward_aggregation, self.reward_std_coef)
                spread[idx] = disagreement(members)
        mask = samples.mask
        zero = torch.zeros((), device=mask.device)
        return {
            "ref_logprobs": torch.where(mask, ref_logprobs, zero),
            "values": torch.where(mask, values, zero),
            "scores": scores,
            "disagreement": spread,
        }

    @torch.no_grad()
    def sample_and_score(
        self, prompt_ids: list[list[int]], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Sample responses to ``prompt_ids`` and score them, in chunks of ``local_rollout_forward_batch_size``.

        With ``use_vllm`` the whole batch is sampled by vLLM at once (it batches continuously); the chunks then
        only bound the scoring forwards."""
        from trl.models.utils import unwrap_model_for_generation

        args, acc = self.args, self.accelerator
        pad_id = self.tokenizer.pad_token_id
        chunks: list[dict[str, torch.Tensor]] = []
        self.model.eval()
        drawn = None
        if self.vllm is not None:
            drawn = self.vllm.generate(self.unwrapped.policy, self.progress.global_step, prompt_ids, generator)
        for start in range(0, len(prompt_ids), args.local_rollout_forward_batch_size):
            query, query_mask = pad_sequences(
                prompt_ids[start : start + args.local_rollout_forward_batch_size], pad_id, side="left"
            )
            query, query_mask = query.to(acc.device), query_mask.bool().to(acc.device)
            if drawn is not None:
                samples = self.vllm.samples(
                    self.unwrapped.policy,
                    drawn[start : start + args.local_rollout_forward_batch_size],
                    query,
                    query_mask,
                )
            else:
                with (
                    unwrap_model_for_generation(
                        self.model, acc, gather_deepspeed3_params=args.ds3_gather_for_generation
                    ) as unwrapped,
                    acc.autocast(),
                ):
                    samples = hf_rollout.sample_responses(
                        unwrapped.policy,
                        query,
                        query_mask,
                        max_new_tokens=args.response_length,
                        stop_token_ids=self.stop_token_ids,
                        pad_token_id=pad_id,
                        temperature=args.temperature,
                        top_k=args.top_k,
                        top_p=args.top_p,
                        generator=generator,
                    )
            chunk = {
                "query": query,
                "query_mask": query_mask,
                "response": samples.response,
                "mask": samples.mask,
                "logprobs": samples.logprobs,
                "ended": samples.ended,
            }
            chunk.update(self._score_chunk(query, query_mask, samples))
            chunks.append(chunk)
        self.model.train()
        return join_chunks(chunks, pad_id)

    def rollout(self, indices: list[int]) -> Batch:
        if self.vllm is not None:
            self.vllm.gaps.clear()  # the gaps logged with an update are those of its own rollout
        data = self.sample_and_score([self.prompt_ids[i] for i in indices])
        return Batch(prompts=[self.prompts[i] for i in indices], **data)

    # ----------------------------------------------------------------------------------------------------------
    # Advantages and the PPO update
    # ----------------------------------------------------------------------------------------------------------

    def penalised_scores(self, batch: Batch) -> torch.Tensor:
        """The RM score, minus ``missing_eos_penalty`` where the response never produced the stop token."""
        scores = batch.scores
        if self.args.missing_eos_penalty is not None and self.stop_token_ids:
            scores = scores - self.args.missing_eos_penalty * (~batch.ended).float()
        return scores

    def _micro_batch_loss(
        self, batch: Batch, idx: torch.Tensor, advantages, returns, weight: float
    ) -> tuple[torch.Tensor, dict]:
        """Loss of one micro-batch (:func:`~instructgpt.stages.ppo.objective.micro_batch_loss`), with the next ptx
        texts under PPO-ptx; ``weight`` rescales its token-mean terms (see :meth:`ppo_update`)."""
        args = self.args
        ptx_ids = None
        if self.ptx is not None:
            ptx_ids = self.ptx.next_batch(args.ptx_batch_size or args.per_device_train_batch_size)
        return objective.micro_batch_loss(
            self.model, args, batch, idx, advantages, returns, weight, ptx_ids, self.tokenizer.pad_token_id
        )

    def ppo_update(self, batch: Batch, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, torch.Tensor]:
        """``num_ppo_epochs`` x ``num_mini_batches`` optimizer steps on one rollout batch; returns stacked stats.

        Each epoch reshuffles the batch into minibatches (one optimizer step each). Inside a minibatch the sequences
        are sorted by length before being cut into micro-batches of ``per_device_train_batch_size``, so that each
        micro-batch, trimmed to its own longest sequence (:func:`~instructgpt.stages.ppo.models.trim_padding`), carries
        little padding. Grouping must not change the objective, so the policy and value terms are token means over
        the whole *minibatch*, not over each micro-batch: micro-batch ``i`` with ``n_i`` of the minibatch's ``N``
        response tokens is weighted by ``n_i / N`` (times the number of micro-batches, which accelerate's
        gradient accumulation divides by). The gradient is then exactly that of one unsplit minibatch.
        """
        args, acc = self.args, self.accelerator
        collected: dict[str, list[torch.Tensor]] = {}
        local = batch.response.shape[0]
        response_lengths = batch.mask.sum(1)
        total_lengths = response_lengths + batch.query_mask.sum(1)
        micro = args.per_device_train_batch_size
        for _ in range(args.num_ppo_epochs):
            order = torch.randperm(local, device=batch.response.device)
            for mb_start in range(0, local, args.local_mini_batch_size):
                mini = order[mb_start : mb_start + args.local_mini_batch_size]
                mini = mini[torch.argsort(total_lengths[mini], descending=True, stable=True)]
                tokens = response_lengths[mini].sum().clamp(min=1).item()
                num_micro = math.ceil(len(mini) / micro)
                for mc_start in range(0, len(mini), micro):
                    idx = mini[mc_start : mc_start + micro]
                    weight = response_lengths[idx].sum().item() / tokens * num_micro
                    with acc.accumulate(self.model):
                        loss, stats = self._micro_batch_loss(batch, idx, advantages, returns, weight)
                        acc.backward(loss)
                        if acc.sync_gradients:
                            divergence.check_gradients(
                                self.model.parameters(), self.progress.global_step + 1, self.output_dir
                            )
                            if args.max_grad_norm and args.max_grad_norm > 0:
                                acc.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
                        self.optimizer.step()
                        self.optimizer.zero_grad()
                    for key, value in stats.items():
                        collected.setdefault(key, []).append(value.float())
        return {key: torch.stack(values) for key, values in collected.items()}

    # ----------------------------------------------------------------------------------------------------------
    # Safety checks, metrics, logging
    # ----------------------------------------------------------------------------------------------------------

    def _ensemble_note(self) -> str:
        members = len(self.reward_shifts)
        return f" ({members} reward-model members, aggregated by {self.reward_aggregation})" if members > 1 else ""

    def _global_mean(self, value: torch.Tensor) -> float:
        return global_mean(self.accelerator, value)

    def metrics(
        self, batch: Batch, scores, non_score_reward, kl, stats, elapsed: float, episodes: int
    ) -> dict[str, float]:
        """TRL's PPO metrics (:func:`~instructgpt.stages.ppo.metrics.update_metrics`), and vLLM's log-prob gaps."""
        metrics = update_metrics(
            self.accelerator,
            batch,
            scores,
            non_score_reward,
            kl,
            stats,
            elapsed=elapsed,
            episodes=episodes,
            lr=self.scheduler.get_last_lr()[0],
            episode=self.progress.episode,
        )
        if self.vllm is not None:  # this update's rollout: vLLM's copy against the trainer's
            metrics.update(self.vllm.gap_metrics())
        if len(self.rm_parts) > 1:  # an ensemble: how far the members disagree on what the policy now writes
            metrics["objective/rm_disagreement"] = self._global_mean(batch.disagreement.mean())
        return metrics

    def check_update(self, metrics: dict[str, float]) -> None:
        """Stop on a non-finite loss of this update (:func:`~instructgpt.stages.ppo.divergence.check_update`)."""
        divergence.check_update(metrics, self.progress.global_step, self.output_dir)

    def log(self, metrics: dict[str, float]) -> None:
        if not self.accelerator.is_main_process:
            return
        append_jsonl(self.output_dir / METRICS_FILE, [{"step": self.progress.global_step, **metrics}])
        self.tracker.log(metrics, step=self.progress.global_step)

    def log_completions(self, batch: Batch, scores: torch.Tensor) -> None:
        """A table of sample completions with their scores (W&B ``completions``, and ``completions.jsonl``)."""
        if not self.accelerator.is_main_process:
            return
        rows = completion_rows(self.tokenizer, batch, scores, self.progress.global_step)
        append_jsonl(self.output_dir / COMPLETIONS_FILE, rows)
        self.tracker.log_table("completions", rows, step=self.progress.global_step)

    # ----------------------------------------------------------------------------------------------------------
    # Evaluation on held-out prompts
    # ----------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean normalised score, KL to the reference, length and EOS rate of the policy on held-out prompts.

        Sampling uses its own generator, seeded the same way at every evaluation, so the global RNG (and with it
        a resumed run) is untouched and successive evaluations differ by the policy, not by the sampling noise.
        """
        if not self.eval_prompt_ids:
            return {}
        acc = self.accelerator
        shard = self.eval_prompt_ids[acc.process_index :: acc.num_processes]
        generator = torch.Generator(device=acc.device).manual_seed(self.args.seed + 1 + acc.process_index)
        data = self.sample_and_score(shard, generator=generator) if shard else None
        return held_out_metrics(acc, data, len(shard))

    # ----------------------------------------------------------------------------------------------------------
    # Checkpoints and the final model
    # ----------------------------------------------------------------------------------------------------------

    def save_policy(self, directory: Path, merged: bool) -> None:
        """The policy as a model directory (see :func:`~instructgpt.stages.ppo.checkpointing.save_policy`);
        ``merged`` folds a LoRA adapter into the weights."""
        save_policy(self.accelerator, self.model, self.tokenizer, directory, is_peft=self.is_peft, merged=merged)

    def save_checkpoint(self, last_metrics: dict[str, float] | None = None) -> Path:
        """``checkpoint-<step>/``: accelerate's state, the resume state with the current beta and the update's
        metrics, and the policy (:func:`~instructgpt.stages.ppo.checkpointing.write_checkpoint`)."""
        args = self.args
        state = lambda: {  # noqa: E731
            **resume_state(self.progress, self.kl_controller, self.scheduler, self.ptx),
            "kl_coef": self.kl_controller.value,
            "num_total_batches": self.num_total_batches,
            "metrics": last_metrics or {},
        }
        return write_checkpoint(
            self.accelerator,
            self.output_dir,
            self.progress.global_step,
            trainer_state=state,
            save_policy=lambda directory: self.save_policy(directory, merged=False),
            tracker=self.tracker,
            save_on_each_node=args.save_on_each_node,
            save_total_limit=args.save_total_limit,
            keep_policies=args.save_policy_checkpoints,
        )

    def resume(self, checkpoint: Path) -> None:
        """Continue from ``checkpoint``: weights, optimizer, RNG, this trainer's state; the logs cut back to it."""
        restore_resume_state(
            load_checkpoint(self.accelerator, checkpoint, self.source),
            checkpoint,
            self.source,
            progress=self.progress,
            kl_controller=self.kl_controller,
            scheduler=self.scheduler,
            optimizer=self.optimizer,
            ptx=self.ptx,
        )
        if self.accelerator.is_main_process:
            for name in (METRICS_FILE, COMPLETIONS_FILE):
                truncate_log(self.output_dir / name, self.progress.global_step)
            logger.info(f"resumed at update {self.progress.global_step} (episode {self.progress.episode})")

    def save_final(self, metrics: dict[str, Any]) -> None:
        """The end of the stage: the finished output directory (:func:`instructgpt.stages.ppo.output.finish`)."""
        finish(self, metrics)

    # ----------------------------------------------------------------------------------------------------------
    # The loop
    # ----------------------------------------------------------------------------------------------------------

    def train(self) -> dict[str, Any]:
        args, acc = self.args, self.accelerator
        order = PromptOrder(len(self.prompts), self.batch_size, args.local_batch_size, acc.process_index, args.seed)
        begin(self)  # resumed, or fresh logs; the output directory marked started; the dashboards started
        total = self.num_total_batches
        logging_steps = steps_of(args.logging_steps, total) or 1
        save_steps = steps_of(args.save_steps, total) if args.save_strategy in ("steps", "epoch") else None
        eval_steps = steps_of(args.eval_steps or args.logging_steps, total) if args.eval_strategy == "steps" else None
        sample_every = max(1, total // args.num_sample_generations) if args.num_sample_generations > 0 else None
        if acc.is_main_process:
            logger.info(
                f"PPO: {total} updates of {self.batch_size} episodes ({acc.num_processes} process(es)), "
                f"{args.num_ppo_epochs} epochs x {args.num_mini_batches} minibatches each; "
                f"reward shift {', '.join(f'{b:+.4f}' for b in self.reward_shifts)}{self._ensemble_note()}; "
                f"{'LoRA policy' if self.is_peft else 'full policy'}"
            )
        summary: dict[str, Any] = {}
        if self.progress.global_step == 0 and self.eval_prompt_ids:
            start_eval = self.evaluate()
            summary.update({f"{k}_start": v for k, v in start_eval.items()})
            self.log(start_eval)

        bar = tqdm(
            total=total,
            initial=self.progress.global_step,
            desc="PPO",
            unit="update",
            disable=not acc.is_main_process or bool(args.disable_tqdm),
        )
        start_time, start_episode = time.time(), self.progress.episode
        last_metrics: dict[str, float] = {}
        while self.progress.global_step < total:
            t0 = time.time()
            batch = self.rollout(order.indices(self.progress.global_step))
            scores = self.penalised_scores(batch)
            kl_coef = self.kl_controller.value
            with torch.no_grad():
                advantages, returns, non_score_reward, kl = objective.advantages(batch, scores, kl_coef, args)
            mean_kl = self._global_mean(kl.sum(1).mean())
            divergence.check_rollout(acc, scores, mean_kl, args.max_kl, self.progress.global_step + 1, self.output_dir)
            t1 = time.time()
            stats = self.ppo_update(batch, advantages, returns)
            t2 = time.time()
            self.progress.global_step += 1
            self.progress.episode += self.batch_size
            fault_point("ppo_update")
            metrics = self.metrics(
                batch,
                scores,
                non_score_reward,
                kl,
                stats,
                time.time() - start_time,
                self.progress.episode - start_episode,
            )
            metrics["objective/kl_coef"] = kl_coef
            metrics["time/rollout_s"], metrics["time/update_s"] = t1 - t0, t2 - t1
            self.check_update(metrics)
            self.kl_controller.update(mean_kl, self.batch_size)
            self.scheduler.step()
            step = self.progress.global_step
            if eval_steps and step % eval_steps == 0 and step < total:
                metrics.update(self.evaluate())
            if step % logging_steps == 0 or step == total:
                self.log(metrics)
            if sample_every and (step - 1) % sample_every == 0:
                self.log_completions(batch, scores)
            last_metrics = metrics
            bar.update(1)
            bar.set_postfix(score=f"{metrics['objective/scores']:.3f}", kl=f"{metrics['objective/kl']:.2f}")
            if save_steps and step % save_steps == 0 and step < total:
                self.save_checkpoint(metrics)
        bar.close()
        summary.update({k: v for k, v in last_metrics.items()})
        summary.update(self.progress.state_dict())
        summary["num_processes"] = acc.num_processes
        if self.eval_prompt_ids:
            end_eval = self.evaluate()
            summary.update(end_eval)
            self.log(end_eval)
        if save_steps:
            self.save_checkpoint(last_metrics)  # the final policy also appears among the checkpoints
        self.save_final(summary)
        return summary
