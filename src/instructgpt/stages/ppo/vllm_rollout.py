"""PPO's rollouts sampled by vLLM (``use_vllm``, the ``[vllm]`` extra) instead of the trainer's own loop.

One engine per training process, colocated with training (TRL's GRPO colocate mode), holds a copy of the policy.
Each rollout:

1. pushes the policy's weights into the engine if an update changed them (LoRA: merged); with sleep mode the
   engine dropped them after the last rollout, so they are pushed every time;
2. samples one response per prompt, with a seed per request drawn from torch's RNG;
3. recomputes :math:`\\log\\pi_{old}` with one forward of the trainer's policy (:meth:`VLLMRollout.samples` says
   why) and records how far vLLM's own log-probs were from it, logged with the update.

:func:`check_vllm_settings` refuses the settings this path cannot run before anything is loaded.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from accelerate.utils import DistributedType
from torch import nn

from instructgpt.infra.errors import InstructGPTError
from instructgpt.losses import ppo as core
from instructgpt.sampling_vllm import make_engine, push_policy, require_vllm, sampling_params
from instructgpt.stages.ppo.config import PPOConfig
from instructgpt.stages.ppo.metrics import global_mean
from instructgpt.stages.ppo.models import Sequences, response_logits, supports_logits_to_keep
from instructgpt.stages.ppo.rollout import Samples

Drawn = list[tuple[list[int], list[float]]]
"""Per prompt: the response's token ids and vLLM's log-prob of each."""


def check_vllm_settings(args: PPOConfig, model_args: Any, source: str) -> None:
    """Refuse ``use_vllm`` without vLLM, with a quantized policy, or with sleep mode on a CPU."""
    require_vllm(source)  # first: nothing is loaded or written without it
    if getattr(model_args, "load_in_4bit", False) or getattr(model_args, "load_in_8bit", False):
        raise InstructGPTError(
            f"{source}: `use_vllm` with a quantized policy (`load_in_4bit`/`load_in_8bit`) is not supported: "
            "its LoRA cannot be merged into 4/8-bit weights for vLLM; train in 16/32 bits or set `use_vllm: false`"
        )
    if args.vllm_enable_sleep_mode and not torch.cuda.is_available():
        raise InstructGPTError(
            f"{source}: `vllm_enable_sleep_mode` needs a GPU (vLLM's sleep mode is CUDA only); set it to false on CPU"
        )


class VLLMRollout:
    """A vLLM engine over the SFT policy in this process, and the steps that turn its samples into PPO's.

    Under ``accelerate launch`` every process keeps its own engine, in-process, through vLLM's ``external_launcher``
    (it reads RANK / WORLD_SIZE as torchrun sets them) and samples its own share of the prompts. The engine's
    context is the longest prompt plus ``response_length``, which keeps its KV cache small.
    """

    def __init__(
        self,
        args: PPOConfig,
        accelerator: Any,
        policy_path: str,
        model_args: Any,
        *,
        longest_prompt: int,
        stop_token_ids: list[int],
        pad_token_id: int,
        source: str,
    ):
        self.args, self.accelerator = args, accelerator
        self.stop_token_ids, self.pad_token_id = stop_token_ids, pad_token_id
        acc = accelerator
        sharded = acc.distributed_type == DistributedType.FSDP or (
            acc.distributed_type == DistributedType.DEEPSPEED and acc.state.deepspeed_plugin.zero_stage == 3
        )
        if sharded:  # each process holds a shard of the policy: the push, which reads whole weights, would be wrong
            raise InstructGPTError(
                f"{source}: `use_vllm` with a sharded policy (FSDP or DeepSpeed ZeRO-3) is not supported yet; "
                "use DDP or ZeRO-1/2, or set `use_vllm: false`"
            )
        if acc.num_processes > 1:
            os.environ["RANK"] = str(acc.process_index)
            os.environ["LOCAL_RANK"] = str(acc.local_process_index)
            os.environ["WORLD_SIZE"] = str(acc.num_processes)
        dtype = getattr(model_args, "dtype", None)
        self.engine = make_engine(
            policy_path,
            max_model_len=longest_prompt + args.response_length,
            gpu_memory_utilization=args.vllm_gpu_memory_utilization,
            max_num_seqs=max(args.local_batch_size, args.local_rollout_forward_batch_size),
            seed=args.seed + acc.process_index,
            dtype=None if dtype in (None, "auto") else dtype,
            trust_remote_code=args.trust_remote_code,
            enable_sleep_mode=args.vllm_enable_sleep_mode,
            distributed=acc.num_processes > 1,
            source=source,
        )
        if args.vllm_enable_sleep_mode:
            self.engine.sleep(level=2)
        acc.wait_for_everyone()
        self.pushed_step: int | None = None  # the update whose weights the engine holds (None: not pushed yet)
        self.gaps: list[torch.Tensor] = []  # per chunk of this rollout: [mean, max] per-token |log-prob| gap

    def sync(self, policy: nn.Module, step: int) -> None:
        """Push the policy's weights to vLLM if an update changed them since the last push (LoRA: merged).

        With sleep mode the engine dropped its weights (level 2) after the last rollout, so they are pushed again
        every time, then the KV cache is brought back."""
        if self.args.vllm_enable_sleep_mode:
            self.engine.wake_up(tags=["weights"])
            push_policy(self.engine, policy)
            self.engine.wake_up(tags=["kv_cache"])
        elif self.pushed_step != step:
            push_policy(self.engine, policy)
        self.pushed_step = step

    def generate(
        self, policy: nn.Module, step: int, prompt_ids: list[list[int]], generator: torch.Generator | None
    ) -> Drawn:
        """Sample one response per prompt with vLLM, holding the weights of update ``step``.

        Each request gets its own seed, drawn from ``generator`` (evaluation: the same every time) or from torch's
        global RNG (training: a stream accelerate checkpoints, so a resumed run draws what it would have drawn).
        The stop token stays in the ids, as the HF rollout keeps it; with no stop token a response runs to
        ``response_length``.
        """
        from vllm.inputs import TokensPrompt

        args = self.args
        self.sync(policy, step)
        device = generator.device if generator is not None else torch.device("cpu")
        seeds = torch.randint(0, 2**31 - 1, (len(prompt_ids),), generator=generator, device=device).tolist()
        params = [
            sampling_params(
                max_new_tokens=args.response_length,
                temperature=args.temperature,
                top_k=args.top_k,
                top_p=args.top_p,
                stop_token_ids=self.stop_token_ids,
                seed=seed,
                logprobs=True,
            )
            for seed in seeds
        ]
        outputs = self.engine.generate(
            [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids], params, use_tqdm=False
        )
        if args.vllm_enable_sleep_mode:
            self.engine.sleep(level=2)
        results = []
        for output in outputs:
            completion = output.outputs[0]
            ids = list(completion.token_ids)
            logprobs = [float(position[token].logprob) for position, token in zip(completion.logprobs or [], ids)]
            results.append((ids, logprobs))
        return results

    def samples(self, policy: nn.Module, drawn: Drawn, query: torch.Tensor, query_mask: torch.Tensor) -> Samples:
        """vLLM's responses for one chunk as the rollout's :class:`~instructgpt.stages.ppo.rollout.Samples`, with the
        log-probs recomputed by the trainer's forward pass.

        Why recompute rather than use vLLM's log-probs (or correct with a truncated importance weight, as OpenRLHF
        and TRL's GRPO do): PPO's ratio :math:`\\pi_\\theta / \\pi_{old}` and the KL penalty must compare the *same*
        function, the one the update differentiates. vLLM computes the same policy with other kernels (fused
        attention, other reduction orders; bf16 on a GPU), so its log-probs differ from the trainer's by numerics,
        and then the ratio at the first minibatch would not be 1 and the k1 KL would carry that noise. One extra
        no-grad forward of the policy over the batch costs little next to sampling it token by token, and makes
        :math:`\\pi_{old}` exact. What remains is that the tokens were drawn from vLLM's copy of the policy, which
        the weight push after every update keeps equal to the trainer's up to that numerical noise, logged as
        ``vllm/logprob_abs_diff`` (the mean per-token gap) and ``vllm/logprob_abs_diff_max`` (the largest): ~1e-6
        nats on the tiny model in float32, too small to need an importance correction. Where it grows (a bf16 engine
        for an fp32 trainer, say), those metrics show it, and a truncated importance weight
        :math:`\\min(\\pi_\\theta / \\pi_{vllm}, C)` on the policy loss would be the next step.
        """
        device = query.device
        width = max(1, max(len(ids) for ids, _ in drawn))
        response = torch.full((len(drawn), width), self.pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(drawn), width), dtype=torch.bool, device=device)
        vllm_logprobs = torch.zeros((len(drawn), width), dtype=torch.float32, device=device)
        stop = set(self.stop_token_ids)
        ended = torch.tensor([bool(ids) and ids[-1] in stop for ids, _ in drawn], dtype=torch.bool, device=device)
        for row, (ids, logprobs) in enumerate(drawn):
            response[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = True
            if len(logprobs) == len(ids):
                vllm_logprobs[row, : len(ids)] = torch.tensor(logprobs)
        seqs = Sequences.build(query, query_mask, response, mask)
        with self.accelerator.autocast():
            logits = response_logits(policy, seqs, self.args.temperature, supports_logits_to_keep(policy))
        zero = torch.zeros((), device=device)
        logprobs = torch.where(mask, core.logprobs_from_logits(logits, response).float(), zero)
        if self.args.top_k == 0 and self.args.top_p >= 1.0:  # vLLM's log-probs are of the same, untruncated policy
            gap = (logprobs - vllm_logprobs).abs() * mask
            self.gaps.append(torch.stack([gap.sum() / mask.sum().clamp(min=1), gap.max()]).detach())
        return Samples(response=response, mask=mask, logprobs=logprobs, ended=ended)

    def gap_metrics(self) -> dict[str, float]:
        """This update's rollout: how far vLLM's log-probs were from the trainer's, over all processes; then the
        record starts afresh for the next rollout."""
        metrics = {}
        if self.gaps:
            gaps = torch.stack(self.gaps)  # (chunks, [mean, max]) per-token |log-prob| gaps
            metrics["vllm/logprob_abs_diff"] = global_mean(self.accelerator, gaps[:, 0].mean())
            metrics["vllm/logprob_abs_diff_max"] = self.accelerator.gather(gaps[:, 1].max().reshape(1)).max().item()
        self.gaps.clear()
        return metrics
