"""Step 3 of InstructGPT: PPO of the SFT policy against the frozen reward model, under a KL penalty to the SFT policy.

    instructgpt-ppo recipes/tiny/ppo.yaml [--key value ...]
    accelerate launch --config_file recipes/accelerate/ddp.yaml -m instructgpt recipes/ppo.yaml

Each update (Ouyang et al. 2022, section 3.5; Ziegler et al. 2019; the N+ implementation details of Huang et al.):

1. **rollout** (no gradients): sample a response per prompt from the policy with the KV cache
   (:mod:`instructgpt.stages.ppo.rollout`, which also yields :math:`\\log\\pi_{old}`); one forward each of the reference
   (for the KL), the value function (:math:`V_{old}`) and the reward model (the score, normalised, minus
   ``missing_eos_penalty`` for a response that never ended). With ``use_vllm`` a colocated vLLM engine samples
   instead, holding the weights pushed after the last update, and :math:`\log\pi_{old}` comes from one forward of
   the policy (see :meth:`PPOTrainer._vllm_samples` for why);
2. **advantages**: per-token reward :math:`-\\beta\\,\\mathrm{kl}_t` plus the score on the last token, GAE, whitening
   (:mod:`instructgpt.losses.ppo`);
3. **PPO epochs**: ``num_ppo_epochs`` passes in ``num_mini_batches`` shuffled minibatches; per micro-batch one
   forward of policy and value (and the ptx text), clipped surrogate + ``vf_coef`` x clipped value loss - entropy
   bonus + ptx term; gradient accumulation, clipping, one optimizer step per minibatch;
4. β update (fixed, or the adaptive controller), learning-rate schedule step, logging, checkpoint.

Built on accelerate (DDP, DeepSpeed, FSDP, mixed precision, checkpoint state) with TRL's remaining utilities.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from instructgpt.infra.log import get_logger
from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.hub import push_output, take_push_to_hub, write_model_card
from instructgpt.infra.guards import TrainingDiverged, fault_point, last_good_checkpoint, nonfinite_gradients
from instructgpt.modeling.lora import merge_adapter
from instructgpt.infra.files import PPO_METRICS_FILE as METRICS_FILE
from instructgpt.infra.outputs import mark_started, recover_final_save
from instructgpt.infra.processes import no_accelerator, prepare_frozen_model
from instructgpt.infra.tracking import StageTracker
from instructgpt.losses import ppo as core
from instructgpt.stages.ppo.config import PPOConfig, PPOScriptArguments
from instructgpt.infra.entrypoint import stage_main
from instructgpt.infra.parser import Recipe, StageArgs, parse_stage_args

logger = get_logger(__name__)

COMPLETIONS_FILE = "completions.jsonl"
TRAINER_STATE = "trainer_state.json"
VALUE_MODEL_DIR = "value_model"
NUM_LOGGED_COMPLETIONS = 8


@dataclass
class Progress:
    """Where the run is: updates done and episodes sampled (all processes). Saved in every checkpoint."""

    global_step: int = 0
    episode: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"global_step": self.global_step, "episode": self.episode}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.global_step, self.episode = int(state["global_step"]), int(state["episode"])


@dataclass
class Batch:
    """One process's rollout batch: ``[query | response]`` and everything PPO computes from it, ``(B, ...)``."""

    query: torch.Tensor
    query_mask: torch.Tensor
    response: torch.Tensor
    mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor
    ended: torch.Tensor
    prompts: list[Any]


def _steps(value: float | int | None, total: int) -> int | None:
    """TrainingArguments' convention: a float below 1 is a fraction of the run."""
    if value is None or value <= 0:
        return None
    return max(1, math.ceil(value * total)) if value < 1 else int(value)


class PPOTrainer:
    """InstructGPT's PPO trainer. ``PPOTrainer(script_args, args, model_args, recipe).train()`` runs a recipe."""

    def __init__(self, script_args: PPOScriptArguments, args: PPOConfig, model_args: Any, recipe: Recipe):
        from accelerate import Accelerator
        from instructgpt.infra.outputs import prepare_output_dir

        self.script_args, self.args, self.model_args, self.recipe = script_args, args, model_args, recipe
        self.source = recipe.source
        self._check_paths()
        self.output_dir = Path(args.output_dir)
        self.resume_from = prepare_output_dir(self.output_dir, script_args.if_output_exists, self.source, stage="ppo")
        self.push = take_push_to_hub(args)  # pushed once the output is finished
        self.tracker = StageTracker([], {})  # the dashboards, started with the loop in train()
        mixed = "bf16" if args.bf16 else "fp16" if args.fp16 else "no"
        from accelerate.utils import ProjectConfiguration

        self.accelerator = Accelerator(
            gradient_accumulation_steps=args.micro_batches_per_mini_batch, mixed_precision=mixed, cpu=no_accelerator(),
            # several nodes without a shared filesystem: each node keeps a full checkpoint on its own disk
            project_config=ProjectConfiguration(save_on_each_node=args.save_on_each_node),
        )
        from transformers import set_seed

        set_seed(args.seed)
        self._load_data_and_tokenizer()
        self._load_models()
        self._build_optimization()
        self.progress = Progress()
        self.vllm = self._start_vllm() if args.use_vllm else None
        self._vllm_step: int | None = None  # the update whose weights vLLM holds (None: not pushed yet)
        self._vllm_gaps: list[torch.Tensor] = []
        # a different sampling stream per process (TRL's `local_seed`), restored from checkpoints with the RNG state
        torch.manual_seed(args.seed + self.accelerator.process_index * 100003)

    # ----------------------------------------------------------------------------------------------------------
    # Setup
    # ----------------------------------------------------------------------------------------------------------

    def _check_paths(self) -> None:
        from instructgpt.modeling import check_model_path
        from instructgpt.modeling.reward import check_reward_model

        sa, source = self.script_args, self.source
        if self.args.use_vllm:
            from instructgpt.sampling_vllm import require_vllm

            require_vllm(source)  # first: nothing is loaded or written without it
            if getattr(self.model_args, "load_in_4bit", False) or getattr(self.model_args, "load_in_8bit", False):
                raise InstructGPTError(
                    f"{source}: `use_vllm` with a quantized policy (`load_in_4bit`/`load_in_8bit`) is not supported: "
                    "its LoRA cannot be merged into 4/8-bit weights for vLLM; train in 16/32 bits or set `use_vllm: false`"
                )
            if self.args.vllm_enable_sleep_mode and not torch.cuda.is_available():
                raise InstructGPTError(f"{source}: `vllm_enable_sleep_mode` needs a GPU (vLLM's sleep mode is CUDA "
                                       "only); set it to false on CPU")
        self.policy_path = check_model_path(self.model_args.model_name_or_path, "model_name_or_path", source)
        if not sa.reward_model_path:
            raise InstructGPTError(f"{source}: `reward_model_path` is required (the output_dir of instructgpt-rm)")
        check_reward_model(sa.reward_model_path, "reward_model_path", source)
        self.value_path = sa.value_model_path or sa.reward_model_path
        check_reward_model(self.value_path, "value_model_path" if sa.value_model_path else "reward_model_path", source)
        if not sa.dataset_name:
            raise InstructGPTError(f"{source}: `dataset_name` is required (the PPO prompts: a .jsonl file or a Hub id)")
        if not self.args.output_dir:
            raise InstructGPTError(f"{source}: `output_dir` is required")
        if self.args.ptx_coef > 0 and not sa.ptx_dataset_name:
            raise InstructGPTError(f"{source}: `ptx_coef` is {self.args.ptx_coef} but no `ptx_dataset_name` is set")

    def _load_data_and_tokenizer(self) -> None:
        from instructgpt.sampling import encode_prompts
        from instructgpt.modeling import load_tokenizer, model_context_length
        from instructgpt.data.formats import load_prompts
        from instructgpt.stages.ppo.data import PtxStream, load_ptx
        from transformers import AutoConfig

        sa, args, source = self.script_args, self.args, self.source
        self.tokenizer = load_tokenizer(
            self.policy_path,
            revision=self.model_args.model_revision,
            trust_remote_code=self.args.trust_remote_code,
            chat_template=sa.chat_template,
            prompt_template=sa.prompt_template,
            pad_token=sa.pad_token,
            padding_side="left",
        )
        config = AutoConfig.from_pretrained(self.policy_path, trust_remote_code=self.args.trust_remote_code)
        context = model_context_length(config)
        if context is not None and args.response_length >= context:
            raise InstructGPTError(
                f"{source}: `response_length` ({args.response_length}) leaves no room for a prompt in the model's "
                f"context of {context} tokens"
            )
        max_prompt = None if context is None else context - args.response_length
        self.prompts = load_prompts(
            sa.dataset_name, key="dataset_name", source=source, config=sa.dataset_config,
            split=sa.dataset_train_split, limit=sa.max_train_samples,
        )
        self.prompt_ids = encode_prompts(self.tokenizer, self.prompts, max_prompt)
        self.eval_prompts: list[Any] = []
        self.eval_prompt_ids: list[list[int]] = []
        if sa.eval_dataset_name and args.eval_num_prompts > 0:
            limit = min(args.eval_num_prompts, sa.max_eval_samples or args.eval_num_prompts)
            self.eval_prompts = load_prompts(
                sa.eval_dataset_name, key="eval_dataset_name", source=source, config=sa.dataset_config,
                split=sa.dataset_test_split or "test", limit=limit,
            )
            self.eval_prompt_ids = encode_prompts(self.tokenizer, self.eval_prompts, max_prompt)
        self.ptx = None
        if args.ptx_coef > 0:
            sequences = load_ptx(
                sa.ptx_dataset_name, self.tokenizer, source=source, config=sa.ptx_dataset_config,
                split=sa.ptx_dataset_split, limit=sa.max_ptx_samples,
                max_length=min(args.ptx_max_length, context or args.ptx_max_length),
            )
            self.ptx = PtxStream(sequences, args.seed, self.accelerator.process_index)
        if args.stop_token == "eos":
            self.stop_token_ids = [self.tokenizer.eos_token_id]
        elif args.stop_token_id is not None:
            self.stop_token_ids = [args.stop_token_id]
        else:
            self.stop_token_ids = []

    def _load_models(self) -> None:
        from instructgpt.modeling import load_tokenizer, lora_config, model_init_kwargs
        from instructgpt.stages.ppo.models import (
            PolicyAndValue, check_same_tokenizer, disable_dropout, freeze, fuse_tanh_gelu, score_parts,
        )
        from instructgpt.modeling.reward import load_sequence_classifier, reward_shift
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        sa, args, source = self.script_args, self.args, self.source
        init = model_init_kwargs(self.model_args, trust_remote_code=self.args.trust_remote_code, source=source)
        for key, path in (("reward_model_path", sa.reward_model_path), ("value_model_path", self.value_path)):
            check_same_tokenizer(self.tokenizer, load_tokenizer(path), key, path)

        policy = AutoModelForCausalLM.from_pretrained(self.policy_path, **init)
        peft_config = lora_config(self.model_args, "CAUSAL_LM", source=source, trust_remote_code=args.trust_remote_code)
        self.ref_model = None
        if peft_config is None:
            self.ref_model = freeze(AutoModelForCausalLM.from_pretrained(self.policy_path, **init))
        else:
            from peft import get_peft_model

            # the reference is the policy with its adapter disabled: no second copy of the SFT weights
            peft_config.base_model_name_or_path = str(Path(self.policy_path).resolve()) if Path(self.policy_path).exists() else self.policy_path
            if getattr(policy, "is_quantized", False):  # QLoRA: fp32 norms and input grads for the frozen 4/8-bit base
                from peft import prepare_model_for_kbit_training

                policy = prepare_model_for_kbit_training(policy, use_gradient_checkpointing=args.gradient_checkpointing)
            policy = get_peft_model(policy, peft_config)
        self.reward_model = freeze(AutoModelForSequenceClassification.from_pretrained(sa.reward_model_path, **init))
        self.reward_shift = reward_shift(self.reward_model)
        self.reward_pad_id = self.reward_model.config.pad_token_id
        if self.reward_pad_id is None:
            self.reward_pad_id = self.tokenizer.pad_token_id
        # the value model is trained in full, so it is never loaded quantized
        value_model = load_sequence_classifier(
            self.value_path, self.model_args, self.args.trust_remote_code, quantize=False, source=source
        )
        for model in (policy, value_model, self.reward_model, self.ref_model):
            if model is not None:
                disable_dropout(model)
                fuse_tanh_gelu(model)
        for model in (policy, value_model):
            model.config.pad_token_id = self.tokenizer.pad_token_id
        self.rm_parts = score_parts(self.reward_model, "reward_model_path", sa.reward_model_path)
        self.model = PolicyAndValue(policy, value_model, "value_model_path", self.value_path)
        if args.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(args.gradient_checkpointing_kwargs or {"use_reentrant": False})
        self.is_peft = peft_config is not None

    def _build_optimization(self) -> None:
        from transformers import Trainer, get_scheduler

        from instructgpt.losses.ppo import AdaptiveKLController, FixedKLController

        args, acc = self.args, self.accelerator
        self.batch_size = args.batch_size(acc.num_processes)
        if len(self.prompts) < self.batch_size:
            raise InstructGPTError(
                f"{self.source}: `dataset_name` ({self.script_args.dataset_name}) has {len(self.prompts)} prompts, fewer "
                f"than one rollout batch of {self.batch_size} episodes (per_device_train_batch_size x "
                "gradient_accumulation_steps x processes); use more prompts or a smaller batch"
            )
        self.num_total_batches = args.num_total_batches(len(self.prompts), acc.num_processes)
        # weight decay on matrices only, not on biases and norms (nanoGPT's rule)
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": args.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, self.model)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        # one scheduler step per update, as TRL's PPO trainer; kept out of accelerator.prepare, which would step it
        # once per process
        self.scheduler = get_scheduler(
            args.lr_scheduler_type, self.optimizer,
            num_warmup_steps=args.get_warmup_steps(self.num_total_batches),
            num_training_steps=self.num_total_batches,
            scheduler_specific_kwargs=args.lr_scheduler_kwargs or {},
        )
        if args.adap_kl_ctrl:
            self.kl_controller = AdaptiveKLController(args.kl_coef, args.target, args.horizon)
        else:
            self.kl_controller = FixedKLController(args.kl_coef)
        self.model, self.optimizer = acc.prepare(self.model, self.optimizer)
        # the frozen models sharded like the trained one under DeepSpeed and FSDP, not copied whole to every device
        self.reward_model = prepare_frozen_model(self.reward_model, acc)
        self.ref_model = prepare_frozen_model(self.ref_model, acc)

    def _start_vllm(self) -> Any:
        """One vLLM engine per process over the SFT policy, colocated with training (TRL's GRPO colocate mode).

        Under ``accelerate launch`` every process keeps its own engine, in-process, through vLLM's
        ``external_launcher`` (it reads RANK / WORLD_SIZE as torchrun sets them) and samples its own share of the
        prompts. The engine's context is the longest prompt plus ``response_length``, which keeps its KV cache small.
        """
        from instructgpt.sampling_vllm import make_engine

        from accelerate.utils import DistributedType

        args, acc = self.args, self.accelerator
        sharded = acc.distributed_type == DistributedType.FSDP or (
            acc.distributed_type == DistributedType.DEEPSPEED and acc.state.deepspeed_plugin.zero_stage == 3)
        if sharded:  # each process holds a shard of the policy: the push, which reads whole weights, would be wrong
            raise InstructGPTError(
                f"{self.source}: `use_vllm` with a sharded policy (FSDP or DeepSpeed ZeRO-3) is not supported yet; "
                "use DDP or ZeRO-1/2, or set `use_vllm: false`"
            )
        if acc.num_processes > 1:
            os.environ["RANK"] = str(acc.process_index)
            os.environ["LOCAL_RANK"] = str(acc.local_process_index)
            os.environ["WORLD_SIZE"] = str(acc.num_processes)
        longest = max(len(ids) for ids in self.prompt_ids + self.eval_prompt_ids)
        dtype = getattr(self.model_args, "dtype", None)
        llm = make_engine(
            self.policy_path, max_model_len=longest + args.response_length,
            gpu_memory_utilization=args.vllm_gpu_memory_utilization,
            max_num_seqs=max(args.local_batch_size, args.local_rollout_forward_batch_size),
            seed=args.seed + acc.process_index, dtype=None if dtype in (None, "auto") else dtype,
            trust_remote_code=args.trust_remote_code, enable_sleep_mode=args.vllm_enable_sleep_mode,
            distributed=acc.num_processes > 1, source=self.source,
        )
        if args.vllm_enable_sleep_mode:
            llm.sleep(level=2)
        acc.wait_for_everyone()
        return llm

    # ----------------------------------------------------------------------------------------------------------
    # Rollout
    # ----------------------------------------------------------------------------------------------------------

    @property
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    def _reference_logprobs(self, seqs, response: torch.Tensor) -> torch.Tensor:
        from contextlib import nullcontext

        from instructgpt.stages.ppo.models import response_logits, supports_logits_to_keep

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
        from instructgpt.stages.ppo.models import (
            Sequences, length_groups, response_values, score_parts, sequence_scores, trim_padding,
        )

        batch, width = samples.response.shape
        device = samples.response.device
        ref_logprobs = torch.zeros((batch, width), device=device)
        values = torch.zeros((batch, width), device=device)
        scores = torch.zeros(batch, device=device)
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
                values[idx, :w] = response_values(*value_parts, seqs).float()
                scores[idx] = (sequence_scores(*self.rm_parts, seqs, self.reward_pad_id) - self.reward_shift).float()
        mask = samples.mask
        zero = torch.zeros((), device=mask.device)
        return {
            "ref_logprobs": torch.where(mask, ref_logprobs, zero),
            "values": torch.where(mask, values, zero),
            "scores": scores,
        }

    def _sync_vllm(self) -> None:
        """Push the policy's weights to vLLM if an update changed them since the last push (LoRA: merged).

        With sleep mode the engine dropped its weights (level 2) after the last rollout, so they are pushed again
        every time, then the KV cache is brought back."""
        from instructgpt.sampling_vllm import push_policy

        if self.args.vllm_enable_sleep_mode:
            self.vllm.wake_up(tags=["weights"])
            push_policy(self.vllm, self.unwrapped.policy)
            self.vllm.wake_up(tags=["kv_cache"])
        elif self._vllm_step != self.progress.global_step:
            push_policy(self.vllm, self.unwrapped.policy)
        self._vllm_step = self.progress.global_step

    def _vllm_generate(self, prompt_ids: list[list[int]], generator: torch.Generator | None) -> list[tuple[list[int], list[float]]]:
        """Sample one response per prompt with vLLM: ``(token ids, vLLM's log-prob of each)`` per prompt.

        Each request gets its own seed, drawn from ``generator`` (evaluation: the same every time) or from torch's
        global RNG (training: a stream accelerate checkpoints, so a resumed run draws what it would have drawn).
        The stop token stays in the ids, as the HF rollout keeps it; with no stop token a response runs to
        ``response_length``.
        """
        from vllm.inputs import TokensPrompt

        from instructgpt.sampling_vllm import sampling_params

        args = self.args
        self._sync_vllm()
        device = generator.device if generator is not None else torch.device("cpu")
        seeds = torch.randint(0, 2**31 - 1, (len(prompt_ids),), generator=generator, device=device).tolist()
        params = [
            sampling_params(max_new_tokens=args.response_length, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, stop_token_ids=self.stop_token_ids, seed=seed, logprobs=True)
            for seed in seeds
        ]
        outputs = self.vllm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids], params, use_tqdm=False)
        if args.vllm_enable_sleep_mode:
            self.vllm.sleep(level=2)
        results = []
        for output in outputs:
            completion = output.outputs[0]
            ids = list(completion.token_ids)
            logprobs = [float(step[token].logprob) for step, token in zip(completion.logprobs or [], ids)]
            results.append((ids, logprobs))
        return results

    def _vllm_samples(self, drawn, query: torch.Tensor, query_mask: torch.Tensor):
        """vLLM's responses for one chunk as the rollout's :class:`~instructgpt.stages.ppo.rollout.Samples`, with the
        log-probs recomputed by the trainer's forward pass.

        Why recompute rather than use vLLM's log-probs (or correct with a truncated importance weight, as OpenRLHF
        and TRL's GRPO do): PPO's ratio :math:`\pi_\theta / \pi_{old}` and the KL penalty must compare the *same*
        function, the one the update differentiates. vLLM computes the same policy with other kernels (fused
        attention, other reduction orders; bf16 on a GPU), so its log-probs differ from the trainer's by numerics,
        and then the ratio at the first minibatch would not be 1 and the k1 KL would carry that noise. One extra
        no-grad forward of the policy over the batch costs little next to sampling it token by token, and makes
        :math:`\pi_{old}` exact. What remains is that the tokens were drawn from vLLM's copy of the policy, which
        the weight push after every update keeps equal to the trainer's up to that numerical noise, logged as
        ``vllm/logprob_abs_diff`` (the mean per-token gap) and ``vllm/logprob_abs_diff_max`` (the largest): ~1e-6
        nats on the tiny model in float32, too small to need an importance correction. Where it grows (a bf16 engine
        for an fp32 trainer, say), those metrics show it, and a truncated importance weight
        :math:`\min(\pi_\theta / \pi_{vllm}, C)` on the policy loss would be the next step.
        """
        from instructgpt.stages.ppo.models import Sequences, response_logits, supports_logits_to_keep
        from instructgpt.stages.ppo.rollout import Samples

        pad_id = self.tokenizer.pad_token_id
        device = query.device
        width = max(1, max(len(ids) for ids, _ in drawn))
        response = torch.full((len(drawn), width), pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(drawn), width), dtype=torch.bool, device=device)
        vllm_logprobs = torch.zeros((len(drawn), width), dtype=torch.float32, device=device)
        stop = set(self.stop_token_ids)
        ended = torch.tensor([bool(ids) and ids[-1] in stop for ids, _ in drawn], dtype=torch.bool, device=device)
        for row, (ids, logprobs) in enumerate(drawn):
            response[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, :len(ids)] = True
            if len(logprobs) == len(ids):
                vllm_logprobs[row, :len(ids)] = torch.tensor(logprobs)
        policy = self.unwrapped.policy
        seqs = Sequences.build(query, query_mask, response, mask)
        with self.accelerator.autocast():
            logits = response_logits(policy, seqs, self.args.temperature, supports_logits_to_keep(policy))
        logprobs = torch.where(mask, core.logprobs_from_logits(logits, response).float(), torch.zeros((), device=device))
        if self.args.top_k == 0 and self.args.top_p >= 1.0:  # vLLM's log-probs are of the same, untruncated policy
            gap = (logprobs - vllm_logprobs).abs() * mask
            self._vllm_gaps.append(torch.stack([gap.sum() / mask.sum().clamp(min=1), gap.max()]).detach())
        return Samples(response=response, mask=mask, logprobs=logprobs, ended=ended)

    @torch.no_grad()
    def sample_and_score(self, prompt_ids: list[list[int]], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Sample responses to ``prompt_ids`` and score them, in chunks of ``local_rollout_forward_batch_size``.

        With ``use_vllm`` the whole batch is sampled by vLLM at once (it batches continuously); the chunks then
        only bound the scoring forwards."""
        from trl.models.utils import unwrap_model_for_generation

        from instructgpt.data.padding import pad_columns, pad_sequences
        from instructgpt.stages.ppo.rollout import sample_responses

        args, acc = self.args, self.accelerator
        pad_id = self.tokenizer.pad_token_id
        chunks: list[dict[str, torch.Tensor]] = []
        self.model.eval()
        drawn = self._vllm_generate(prompt_ids, generator) if self.vllm is not None else None
        for start in range(0, len(prompt_ids), args.local_rollout_forward_batch_size):
            query, query_mask = pad_sequences(prompt_ids[start:start + args.local_rollout_forward_batch_size], pad_id, side="left")
            query, query_mask = query.to(acc.device), query_mask.bool().to(acc.device)
            if drawn is not None:
                samples = self._vllm_samples(drawn[start:start + args.local_rollout_forward_batch_size], query, query_mask)
            else:
                with unwrap_model_for_generation(
                    self.model, acc, gather_deepspeed3_params=args.ds3_gather_for_generation
                ) as unwrapped, acc.autocast():
                    samples = sample_responses(
                        unwrapped.policy, query, query_mask,
                        max_new_tokens=args.response_length, stop_token_ids=self.stop_token_ids, pad_token_id=pad_id,
                        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, generator=generator,
                    )
            chunk = {
                "query": query, "query_mask": query_mask, "response": samples.response, "mask": samples.mask,
                "logprobs": samples.logprobs, "ended": samples.ended,
            }
            chunk.update(self._score_chunk(query, query_mask, samples))
            chunks.append(chunk)
        self.model.train()
        out = {
            "query": pad_columns([c["query"] for c in chunks], pad_id, side="left"),
            "query_mask": pad_columns([c["query_mask"] for c in chunks], False, side="left"),
            "response": pad_columns([c["response"] for c in chunks], pad_id),
            "mask": pad_columns([c["mask"] for c in chunks], False),
        }
        for key in ("logprobs", "ref_logprobs", "values"):
            out[key] = pad_columns([c[key] for c in chunks], 0.0)
        for key in ("scores", "ended"):
            out[key] = torch.cat([c[key] for c in chunks])
        return out

    def rollout(self, indices: list[int]) -> Batch:
        self._vllm_gaps.clear()  # the gaps logged with an update are those of its own rollout
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

    def advantages(self, batch: Batch, scores: torch.Tensor, kl_coef: float):
        """Per-token rewards, GAE advantages (whitened over the batch) and returns."""
        args = self.args
        rewards, non_score_reward, kl = core.per_token_rewards(
            scores, batch.logprobs, batch.ref_logprobs, batch.mask, kl_coef, args.kl_estimator
        )
        if args.whiten_rewards:
            rewards = core.masked_whiten(rewards, batch.mask, shift_mean=False)
        advantages, returns = core.compute_gae(rewards, batch.values, batch.mask, args.gamma, args.lam)
        advantages = core.masked_whiten(advantages, batch.mask)
        return advantages, returns, non_score_reward, kl

    def _micro_batch_loss(
        self, batch: Batch, idx: torch.Tensor, advantages, returns, weight: float
    ) -> tuple[torch.Tensor, dict]:
        """Loss of one micro-batch; ``weight`` rescales its token-mean terms (see :meth:`ppo_update`)."""
        from instructgpt.data.padding import pad_sequences
        from instructgpt.stages.ppo.data import ptx_labels
        from instructgpt.stages.ppo.models import Sequences, trim_padding

        args = self.args
        query, query_mask, response, mask = trim_padding(
            batch.query[idx], batch.query_mask[idx], batch.response[idx], batch.mask[idx]
        )
        width = response.shape[1]
        seqs = Sequences.build(query, query_mask, response, mask)
        ptx_inputs: dict[str, torch.Tensor] = {}
        if self.ptx is not None:
            ids, attention = pad_sequences(
                self.ptx.next_batch(args.ptx_batch_size or args.per_device_train_batch_size), self.tokenizer.pad_token_id
            )
            ptx_inputs = {"ptx_input_ids": ids.to(query.device), "ptx_attention_mask": attention.to(query.device)}
        logits, values, ptx_logits = self.model(**seqs.model_inputs(), response_width=width,
                                                temperature=args.temperature, **ptx_inputs)
        logprobs = core.logprobs_from_logits(logits, response)
        pg_loss, pg_stats = core.policy_loss(
            logprobs, batch.logprobs[idx, :width], advantages[idx, :width], mask, args.cliprange
        )
        vf_loss, vf_clipfrac = core.value_loss(
            values, batch.values[idx, :width], returns[idx, :width], mask, args.cliprange_value
        )
        loss = pg_loss + args.vf_coef * vf_loss
        if args.entropy_coef > 0:
            entropy = core.entropy_from_logits(logits)
            loss = loss + core.entropy_bonus(entropy, mask, args.entropy_coef)
        loss = loss * weight
        if args.entropy_coef <= 0:
            with torch.no_grad():
                entropy = core.entropy_from_logits(logits)
        stats = {
            "policy/approxkl_avg": pg_stats.approxkl, "policy/clipfrac_avg": pg_stats.clipfrac,
            "loss/policy_avg": pg_loss.detach(), "loss/value_avg": vf_loss.detach(),
            "val/clipfrac_avg": vf_clipfrac, "policy/entropy_avg": core.masked_mean(entropy.detach(), mask),
            "val/ratio": pg_stats.ratio,
        }
        if ptx_logits is not None:
            labels = ptx_labels(ptx_inputs["ptx_input_ids"], ptx_inputs["ptx_attention_mask"])
            ptx = core.ptx_loss(ptx_logits, labels, args.ptx_coef)
            loss = loss + ptx
            stats["loss/ptx_avg"] = ptx.detach() / args.ptx_coef  # the NLL itself, comparable across coefficients
        return loss, stats

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
                mini = order[mb_start:mb_start + args.local_mini_batch_size]
                mini = mini[torch.argsort(total_lengths[mini], descending=True, stable=True)]
                tokens = response_lengths[mini].sum().clamp(min=1).item()
                num_micro = math.ceil(len(mini) / micro)
                for mc_start in range(0, len(mini), micro):
                    idx = mini[mc_start:mc_start + micro]
                    weight = response_lengths[idx].sum().item() / tokens * num_micro
                    with acc.accumulate(self.model):
                        loss, stats = self._micro_batch_loss(batch, idx, advantages, returns, weight)
                        acc.backward(loss)
                        if acc.sync_gradients:
                            self._check_gradients()
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

    def _global_mean(self, value: torch.Tensor) -> float:
        return self.accelerator.gather_for_metrics(value.detach().float().reshape(1)).mean().item()

    def check_rollout(self, scores: torch.Tensor, mean_kl: float) -> None:
        """Stop before an update learns from a broken reward or a policy that left the reference far behind."""
        bad = (~torch.isfinite(scores)).sum().reshape(1).float()
        bad_total = int(self.accelerator.gather(bad).sum().item())
        step = self.progress.global_step + 1
        kept = self._kept_message()
        if bad_total:
            raise TrainingDiverged(
                f"update {step}: the reward model returned {bad_total} non-finite score(s) (NaN or inf); stopping. {kept}"
            )
        if not math.isfinite(mean_kl):
            raise TrainingDiverged(f"update {step}: the KL to the SFT policy is {mean_kl}; stopping. {kept}")
        if self.args.max_kl is not None and mean_kl > self.args.max_kl:
            raise TrainingDiverged(
                f"update {step}: the mean KL to the SFT policy is {mean_kl:.2f} nats per response, above "
                f"max_kl={self.args.max_kl}: the policy is running away from the reference (lower the learning rate "
                f"or raise kl_coef); stopping. {kept}"
            )

    def _kept_message(self) -> str:
        return last_good_checkpoint(self.output_dir)

    def _check_gradients(self) -> None:
        """Stop before an optimizer step on NaN or inf gradients: one such step would write NaN into every weight."""
        bad = nonfinite_gradients(self.model.parameters())
        if bad:
            raise TrainingDiverged(
                f"update {self.progress.global_step + 1}: {len(bad)} parameter gradient(s) hold NaN or inf (a "
                f"non-finite loss); stopping before the optimizer step. {self._kept_message()}"
            )

    def metrics(self, batch: Batch, scores, non_score_reward, kl, stats, elapsed: float, episodes: int) -> dict[str, float]:
        """TRL's PPO metrics under TRL's names, plus ``loss/ptx_avg`` and ``objective/kl_coef``."""
        mean = self._global_mean
        mask = batch.mask
        metrics = {
            "eps": episodes / max(elapsed, 1e-9),
            "objective/kl": mean(kl.sum(1).mean()),
            "objective/entropy": mean((-batch.logprobs * mask).sum(1).mean()),
            "objective/non_score_reward": mean(non_score_reward.sum(1).mean()),
            "objective/rlhf_reward": mean(non_score_reward.sum(1).mean() + scores.mean()),
            "objective/scores": mean(scores.mean()),
            "objective/response_length": mean(mask.sum(1).float().mean()),
            "objective/eos_fraction": mean(batch.ended.float().mean()),
            "val/num_eos_tokens": float(self.accelerator.gather(batch.ended.sum().reshape(1)).sum().item()),
        }
        all_scores = self.accelerator.gather_for_metrics(scores.float())
        metrics["objective/scores_std"] = all_scores.std().item() if all_scores.numel() > 1 else 0.0
        for key, values in stats.items():
            metrics[key] = self.accelerator.gather_for_metrics(values).mean().item()
        ratios = self.accelerator.gather_for_metrics(stats["val/ratio"])
        metrics["val/ratio_var"] = ratios.var().item() if ratios.numel() > 1 else 0.0
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        metrics["episode"] = self.progress.episode
        if self.vllm is not None and self._vllm_gaps:  # this update's rollout: vLLM's copy against the trainer's
            gaps = torch.stack(self._vllm_gaps)  # (chunks, [mean, max]) per-token |log-prob| gaps
            metrics["vllm/logprob_abs_diff"] = self._global_mean(gaps[:, 0].mean())
            metrics["vllm/logprob_abs_diff_max"] = self.accelerator.gather(gaps[:, 1].max().reshape(1)).max().item()
        self._vllm_gaps.clear()
        return metrics

    def check_update(self, metrics: dict[str, float]) -> None:
        bad = [k for k in ("loss/policy_avg", "loss/value_avg", "loss/ptx_avg") if k in metrics and not math.isfinite(metrics[k])]
        if bad:
            raise TrainingDiverged(
                f"update {self.progress.global_step}: non-finite {', '.join(bad)}; stopping without saving this "
                f"update. {self._kept_message()}"
            )

    def log(self, metrics: dict[str, float]) -> None:
        if not self.accelerator.is_main_process:
            return
        record = {"step": self.progress.global_step, **metrics}
        with open(self.output_dir / METRICS_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        self.tracker.log(metrics, step=self.progress.global_step)

    def log_completions(self, batch: Batch, scores: torch.Tensor) -> None:
        """A table of sample completions with their scores (W&B ``completions``, and ``completions.jsonl``)."""
        if not self.accelerator.is_main_process:
            return
        rows = []
        for i in range(min(NUM_LOGGED_COMPLETIONS, len(batch.prompts))):
            response = self.tokenizer.decode(batch.response[i][batch.mask[i]], skip_special_tokens=True)
            prompt = batch.prompts[i] if isinstance(batch.prompts[i], str) else json.dumps(batch.prompts[i])
            rows.append({"step": self.progress.global_step, "prompt": prompt, "response": response,
                         "score": round(float(scores[i]), 4)})
        with open(self.output_dir / COMPLETIONS_FILE, "a", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
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
        shard = self.eval_prompt_ids[acc.process_index::acc.num_processes]
        generator = torch.Generator(device=acc.device).manual_seed(self.args.seed + 1 + acc.process_index)
        data = self.sample_and_score(shard, generator=generator) if shard else None
        if data is None:
            local = torch.zeros(4, device=acc.device)
            count = torch.zeros(1, device=acc.device)
        else:
            kl = ((data["logprobs"] - data["ref_logprobs"]) * data["mask"]).sum(1)
            local = torch.stack([
                data["scores"].sum(), kl.sum(), data["mask"].sum(1).float().sum(), data["ended"].float().sum()
            ])
            count = torch.tensor([float(len(shard))], device=acc.device)
        totals = acc.gather(local.reshape(1, 4)).sum(0)
        n = acc.gather(count).sum().clamp(min=1)
        values = (totals / n).tolist()
        return {"eval/scores": values[0], "eval/kl": values[1], "eval/response_length": values[2],
                "eval/eos_fraction": values[3], "eval/num_prompts": int(n.item())}

    # ----------------------------------------------------------------------------------------------------------
    # Checkpoints and the final model
    # ----------------------------------------------------------------------------------------------------------

    def save_policy(self, directory: Path, merged: bool) -> None:
        """Save the policy as a standard model directory (with the tokenizer) that ``from_pretrained`` loads.

        Without LoRA: the full model. With LoRA: ``merged`` folds the adapter into the weights (the final model);
        otherwise the adapter alone, whose config points at the SFT model so that ``AutoModelForCausalLM`` loads
        base + adapter (checkpoints stay small).
        """
        acc = self.accelerator
        state = acc.get_state_dict(self.model)  # gathers sharded (ZeRO-3 / FSDP) weights on the main process
        if acc.is_main_process:
            policy = self.unwrapped.policy
            self.tokenizer.save_pretrained(directory)
            if self.is_peft and merged:
                policy, weights = merge_adapter(policy), {}
            else:
                weights = {"state_dict": {k[len("policy."):]: v for k, v in state.items() if k.startswith("policy.")}}
            generation_config = getattr(policy, "generation_config", None)
            if generation_config is not None and not (self.is_peft and not merged):
                generation_config.pad_token_id = self.tokenizer.pad_token_id
                generation_config.eos_token_id = self.tokenizer.eos_token_id
            # the weights (with the generation config) last: a directory with sound weights has every other file
            policy.save_pretrained(directory, safe_serialization=True, **weights)
        acc.wait_for_everyone()

    def resume_state(self) -> dict[str, Any]:
        """The run's own resume state, as JSON (no pickle): progress, KL controller, schedule, ptx position."""
        return {
            **self.progress.state_dict(),
            "kl_controller": self.kl_controller.state_dict(),
            "scheduler": {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"},
            "ptx": self.ptx.state_dict() if self.ptx else None,
        }

    def load_resume_state(self, state: dict[str, Any], checkpoint: Path) -> None:
        try:
            self.progress.load_state_dict(state)
            self.kl_controller.load_state_dict(state["kl_controller"])
            self.scheduler.load_state_dict({**state["scheduler"], "lr_lambdas": [None] * len(self.optimizer.param_groups)})
            if self.ptx is not None:
                self.ptx.load_state_dict(state["ptx"])
        except (KeyError, TypeError, ValueError) as err:
            raise InstructGPTError(
                f"{self.source}: {checkpoint / TRAINER_STATE} does not hold this run's resume state ({err}); it was "
                "written by another version or another recipe: resume from an earlier checkpoint or start over"
            ) from None

    def save_checkpoint(self, last_metrics: dict[str, float] | None = None) -> Path:
        """``checkpoint-<step>/``: ``state/`` (accelerate: weights, optimizer and RNG states), ``trainer_state.json``
        (this trainer's own state as JSON: progress, KL controller, schedule, data position) to resume from, and
        ``policy/`` to evaluate. Written under a temporary name and renamed, so a crash mid-save leaves the previous
        checkpoint as the last one, and an interrupted save leaves no temporary folder behind.

        Where nodes do not share a filesystem (``save_on_each_node: true``, as in transformers' Trainer), the first
        process of every node writes the folder on its own disk, with that node's RNG states and the full weights;
        otherwise only the main process writes it, and the other processes add their RNG states to it."""
        acc = self.accelerator
        writer = acc.is_local_main_process if self.args.save_on_each_node else acc.is_main_process
        step = self.progress.global_step
        final = self.output_dir / f"checkpoint-{step}"
        tmp = self.output_dir / f".checkpoint-{step}.tmp"
        try:
            if writer:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            acc.wait_for_everyone()
            acc.save_state(str(tmp / "state"))
            fault_point("mid_checkpoint")
            self.save_policy(tmp / "policy", merged=False)
            if writer:
                from instructgpt.infra.files import atomic_write_json

                atomic_write_json(tmp / TRAINER_STATE, {
                    **self.resume_state(), "kl_coef": self.kl_controller.value,
                    "num_total_batches": self.num_total_batches, "metrics": last_metrics or {},
                })
                self.tracker.save_identity(tmp)  # resuming from this checkpoint continues the same dashboard run
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp, final)
                self._rotate_checkpoints()
        except BaseException:
            if writer:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        acc.wait_for_everyone()
        return final

    def _rotate_checkpoints(self) -> None:
        """Honour ``save_total_limit`` for resume states; policies stay with ``save_policy_checkpoints``."""
        limit = self.args.save_total_limit
        if not limit:
            return
        checkpoints = sorted(
            (int(p.name.split("-")[1]), p) for p in self.output_dir.glob("checkpoint-*")
            if p.is_dir() and p.name.split("-")[1].isdigit()
        )
        with_state = [(s, p) for s, p in checkpoints if (p / "state").exists()]
        for _, path in with_state[:-limit]:
            if self.args.save_policy_checkpoints:
                shutil.rmtree(path / "state")
            else:
                shutil.rmtree(path)

    def resume(self, checkpoint: Path) -> None:
        state = checkpoint / "state"
        if not state.is_dir():
            raise InstructGPTError(f"{self.source}: cannot resume from {checkpoint}: it has no `state` folder")
        # tensors only: no pickled Python objects are unpickled from a checkpoint (the README says which files are
        # trusted); this trainer's own state comes from trainer_state.json
        self.accelerator.load_state(str(state), load_kwargs={"weights_only": True})
        self.load_resume_state(json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8")), checkpoint)
        if self.accelerator.is_main_process:
            self._truncate_log(METRICS_FILE)
            self._truncate_log(COMPLETIONS_FILE)
            logger.info(f"resumed at update {self.progress.global_step} (episode {self.progress.episode})")

    def _truncate_log(self, name: str) -> None:
        """Drop log lines written after the checkpoint we resume from (they will be written again), and a last line
        an interruption cut off."""
        from instructgpt.infra.files import atomic_write_text, read_jsonl

        path = self.output_dir / name
        if not path.exists():
            return
        kept = [row for row in read_jsonl(path) if row.get("step", 0) <= self.progress.global_step]
        atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in kept))

    def save_final(self, metrics: dict[str, Any]) -> None:
        from instructgpt.infra.outputs import mark_complete

        acc = self.accelerator
        value_state = acc.get_state_dict(self.model)
        if acc.is_main_process:
            value_model = self.unwrapped.value_model
            value_model.save_pretrained(
                self.output_dir / VALUE_MODEL_DIR, safe_serialization=True,
                state_dict={k[len("value_model."):]: v for k, v in value_state.items() if k.startswith("value_model.")},
            )
            self.tokenizer.save_pretrained(self.output_dir / VALUE_MODEL_DIR)
            self.write_card(metrics)
        self.save_policy(self.output_dir, merged=True)
        if acc.is_main_process:
            mark_complete(self.output_dir, "ppo", self.recipe.data, metrics, weights=True)
            logger.info(f"PPO policy saved to {self.output_dir}")
        acc.wait_for_everyone()
        if self.push and acc.is_main_process:
            push_output(self.output_dir, self.args.hub_model_id, private=self.args.hub_private_repo,
                        token=self.args.hub_token)

    def write_card(self, metrics: dict[str, Any]) -> None:
        args = self.args
        write_model_card(
            self.output_dir, stage="ppo", title="PPO policy (InstructGPT step 3)", base_model=self.policy_path,
            datasets=[self.script_args.dataset_name, self.script_args.ptx_dataset_name],
            hub_model_id=args.hub_model_id,
            summary=f"The SFT policy trained with PPO against the frozen reward model `{self.script_args.reward_model_path}`"
            f" under a per-token KL penalty to the SFT policy. The value function is saved in `{VALUE_MODEL_DIR}/`.",
            settings={"kl_coef": args.kl_coef, "adaptive KL": args.adap_kl_ctrl, "learning_rate": args.learning_rate,
                      "episodes per update": self.batch_size, "updates": self.num_total_batches,
                      "PPO epochs": args.num_ppo_epochs, "ptx_coef": args.ptx_coef, "temperature": args.temperature},
            results={"final KL to SFT (nats)": metrics.get("objective/kl"),
                     "final normalized score": metrics.get("objective/scores"),
                     "held-out score": metrics.get("eval/scores"), "held-out KL": metrics.get("eval/kl"),
                     "episodes": metrics.get("episode")},
        )

    # ----------------------------------------------------------------------------------------------------------
    # The loop
    # ----------------------------------------------------------------------------------------------------------

    def train(self) -> dict[str, Any]:
        from instructgpt.stages.ppo.data import PromptOrder
        from instructgpt.infra.tracking import run_identity

        args, acc = self.args, self.accelerator
        order = PromptOrder(len(self.prompts), self.batch_size, args.local_batch_size, acc.process_index, args.seed)
        if self.resume_from is not None:
            self.resume(self.resume_from)
        elif acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            for name in (METRICS_FILE, COMPLETIONS_FILE):
                (self.output_dir / name).unlink(missing_ok=True)
        mark_started(self.output_dir, "ppo")
        identity = run_identity(self.output_dir, "ppo", args.run_name, self.resume_from)
        self.tracker = StageTracker.start(args.report_to, project=args.project, stage="ppo", config=self.recipe.data,
                                          output_dir=self.output_dir, identity=identity)
        total = self.num_total_batches
        logging_steps = _steps(args.logging_steps, total) or 1
        save_steps = _steps(args.save_steps, total) if args.save_strategy in ("steps", "epoch") else None
        eval_steps = _steps(args.eval_steps or args.logging_steps, total) if args.eval_strategy == "steps" else None
        sample_every = max(1, total // args.num_sample_generations) if args.num_sample_generations > 0 else None
        if acc.is_main_process:
            logger.info(
                f"PPO: {total} updates of {self.batch_size} episodes ({acc.num_processes} process(es)), "
                f"{args.num_ppo_epochs} epochs x {args.num_mini_batches} minibatches each; "
                f"reward shift {self.reward_shift:+.4f}; {'LoRA policy' if self.is_peft else 'full policy'}"
            )
        summary: dict[str, Any] = {}
        if self.progress.global_step == 0 and self.eval_prompt_ids:
            start_eval = self.evaluate()
            summary.update({f"{k}_start": v for k, v in start_eval.items()})
            self.log(start_eval)

        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=self.progress.global_step, desc="PPO", unit="update",
                   disable=not acc.is_main_process or bool(args.disable_tqdm))
        start_time, start_episode = time.time(), self.progress.episode
        last_metrics: dict[str, float] = {}
        while self.progress.global_step < total:
            t0 = time.time()
            batch = self.rollout(order.indices(self.progress.global_step))
            scores = self.penalised_scores(batch)
            kl_coef = self.kl_controller.value
            with torch.no_grad():
                advantages, returns, non_score_reward, kl = self.advantages(batch, scores, kl_coef)
            mean_kl = self._global_mean(kl.sum(1).mean())
            self.check_rollout(scores, mean_kl)
            t1 = time.time()
            stats = self.ppo_update(batch, advantages, returns)
            t2 = time.time()
            self.progress.global_step += 1
            self.progress.episode += self.batch_size
            fault_point("ppo_update")
            metrics = self.metrics(batch, scores, non_score_reward, kl, stats, time.time() - start_time,
                                   self.progress.episode - start_episode)
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
        self.tracker.summary(summary)
        self.tracker.finish()
        return summary


def run_ppo(script_args: PPOScriptArguments, args: PPOConfig, model_args: Any, recipe: Recipe) -> dict[str, Any]:
    """Run one PPO stage as the recipe describes; returns the final metrics."""
    if args.output_dir:
        recovered = recover_final_save(args.output_dir, "ppo", recipe.data, script_args.if_output_exists)
        if recovered is not None:
            return recovered
    return PPOTrainer(script_args, args, model_args, recipe).train()


def arguments() -> tuple[type, ...]:
    """The dataclasses a ppo recipe fills: the script arguments, :class:`PPOConfig` and TRL's ``ModelConfig``."""
    from trl import ModelConfig

    return (PPOScriptArguments, PPOConfig, ModelConfig)


def parse_args(argv: list[str] | None = None) -> tuple[list[Any], Recipe]:
    """``RECIPE.yaml [--key value ...]`` as the stage's dataclass instances and the recipe."""
    return parse_stage_args(argv, "ppo", arguments(), prog="instructgpt-ppo", description=__doc__)


def run(args: StageArgs) -> dict[str, Any]:
    """Run the stage from its parsed recipe; returns its final metrics."""
    return run_ppo(*args.parts, args.recipe)


def main(argv: list[str] | None = None) -> None:
    stage_main("ppo", arguments, run, argv, prog="instructgpt-ppo", description=__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
