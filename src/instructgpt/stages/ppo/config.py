"""Settings of the PPO stage: the recipe keys, named as TRL's former ``PPOConfig`` named the same concepts.

A PPO recipe is parsed into three dataclasses, like every stage:

- :class:`PPOScriptArguments`: which models and data (prompts, held-out prompts, the PPO-ptx text);
- :class:`PPOConfig`: how to train, a ``transformers.TrainingArguments`` (``output_dir``, ``learning_rate``,
  ``per_device_train_batch_size``, ``gradient_accumulation_steps``, ``max_grad_norm``, ``seed``, ``save_steps``,
  ``report_to``, ``lr_scheduler_type``, ...) plus the PPO fields. Fields TRL's ``trl.experimental.ppo.PPOConfig``
  (<= 1.12) had keep its names and meaning (``kl_coef``, ``kl_estimator``, ``cliprange``, ``cliprange_value``,
  ``vf_coef``, ``gamma``, ``lam``, ``whiten_rewards``, ``num_ppo_epochs``, ``num_mini_batches``, ``response_length``,
  ``total_episodes``, ``missing_eos_penalty``, ``temperature``, ``stop_token``, ``stop_token_id``,
  ``local_rollout_forward_batch_size``, ``num_sample_generations``); the adaptive KL controller keeps the names of
  TRL's older ``PPOConfig`` (``adap_kl_ctrl``, ``target``, ``horizon``);
- TRL's ``ModelConfig``: ``model_name_or_path`` is the SFT policy (TRL's ``sft_model_path``), and the LoRA fields
  (``use_peft``, ``lora_r``, ...) apply to the policy.

Batch sizes follow TRL's PPO trainer. One *update* (a ``global_step``) samples
``batch_size = per_device_train_batch_size * gradient_accumulation_steps * num_processes`` episodes, then runs
``num_ppo_epochs`` passes over them, each split into ``num_mini_batches`` minibatches (one optimizer step each),
each minibatch processed ``per_device_train_batch_size`` sequences at a time with gradient accumulation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from transformers import TrainingArguments

from instructgpt.arguments import RewardAggregationArguments, ScriptArguments
from instructgpt.infra.validation import range_problems


@dataclass
class PPOScriptArguments(ScriptArguments, RewardAggregationArguments):
    """Models and data of a PPO run. ``dataset_name`` holds the prompts (a ``prompt`` or ``messages`` column)."""

    reward_model_path: str | None = field(
        default=None,
        metadata={
            "help": "The reward model (output_dir of `instructgpt-rm`): a sequence classifier with one output, or an "
            "ensemble of them (read with `reward_aggregation`). It is frozen, and its scores are normalised by the "
            "shift the RM stage stored with it (each member's own)."
        },
    )
    value_model_path: str | None = field(
        default=None,
        metadata={
            "help": "Where the value function starts from. Default: the reward model (InstructGPT initialises the "
            "value function from the RM; an ensemble's first member). Must share the policy's tokenizer."
        },
    )
    ptx_dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "PPO-ptx: text whose log-likelihood is mixed into every update (InstructGPT eq. 2, last term), "
            "with a `text` column (pretraining data) or prompt/completion or messages (rendered with the chat "
            "template). Used when `ptx_coef` > 0."
        },
    )
    ptx_dataset_config: str | None = field(default=None, metadata={"help": "Hub configuration of the ptx dataset."})
    ptx_dataset_split: str = field(default="train", metadata={"help": "Split of the ptx dataset (Hub datasets)."})
    max_ptx_samples: int | None = field(
        default=None, metadata={"range": ">= 1", "help": "Use only the first N ptx examples."}
    )


@dataclass
class PPOConfig(TrainingArguments):
    """PPO training settings. Defaults that differ from ``TrainingArguments``: ``learning_rate`` (3e-6, TRL's),
    ``logging_steps`` (1: one update is a whole rollout batch), ``bf16`` (on where the hardware has it)."""

    # ---- overridden TrainingArguments defaults -------------------------------------------------------------------
    learning_rate: float = field(
        default=3e-6, metadata={"range": ">= 0", "help": "Initial learning rate of AdamW (TRL's PPO default)."}
    )
    logging_steps: float = field(
        default=1,
        metadata={
            "range": ">= 0",
            "help": "Log every N updates (each update is one rollout batch and its PPO epochs).",
        },
    )
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bf16 mixed precision. Unset: on when the hardware supports it (a recent GPU), off otherwise."
        },
    )

    # ---- TRL PPOConfig (trl.experimental.ppo, <= 1.12): same names, same meaning -----------------------------------
    num_mini_batches: int = field(
        default=1,
        metadata={
            "range": ">= 1",
            "help": "Minibatches per rollout batch; each gets one optimizer step per PPO epoch.",
        },
    )
    total_episodes: int | None = field(
        default=None,
        metadata={
            "range": ">= 1",
            "help": "Episodes (sampled responses) to train on in total. Default: `num_train_epochs` passes over the "
            "prompts. Rounded up to whole rollout batches.",
        },
    )
    local_rollout_forward_batch_size: int = field(
        default=64,
        metadata={
            "range": ">= 1",
            "help": "Sequences per forward pass (generation, reference, value, reward) in rollouts.",
        },
    )
    num_sample_generations: int = field(
        default=10,
        metadata={
            "range": ">= 0",
            "help": "How many times over the run to log a table of sample completions with their scores "
            "(W&B table `completions` and `completions.jsonl`); 0 turns it off.",
        },
    )
    response_length: int = field(
        default=53, metadata={"range": ">= 1", "help": "Maximum number of tokens in a sampled response."}
    )
    stop_token: Literal["eos"] | None = field(
        default="eos",
        metadata={
            "help": "`eos`: a response ends at the tokenizer's EOS token (InstructGPT). Null: no stop token unless "
            "`stop_token_id` is set, so every response runs to `response_length`."
        },
    )
    stop_token_id: int | None = field(
        default=None,
        metadata={"range": ">= 0", "help": "A token id that ends a response; exclusive with `stop_token`."},
    )
    temperature: float = field(
        default=1.0,
        metadata={
            "range": "> 0",
            "help": "Sampling temperature. The policy PPO optimises is softmax(logits / temperature), so the same "
            "division applies to the log-probs of the policy and the reference (N+ implementation details). 1.0 "
            "(default) trains the model's own distribution.",
        },
    )
    missing_eos_penalty: float | None = field(
        default=None,
        metadata={
            "range": ">= 0",
            "help": "Subtracted from the score of a response that reaches `response_length` without the stop token "
            "(must be >= 0), which teaches the policy to finish its answers.",
        },
    )
    num_ppo_epochs: int = field(default=4, metadata={"range": ">= 1", "help": "PPO epochs over each rollout batch."})
    whiten_rewards: bool = field(
        default=False,
        metadata={"help": "Whiten the per-token rewards (scale only, mean kept) before GAE."},
    )
    kl_coef: float = field(
        default=0.05,
        metadata={
            "range": ">= 0",
            "help": "beta, the per-token KL penalty coefficient (InstructGPT: 0.02); the starting value when "
            "`adap_kl_ctrl` is on.",
        },
    )
    kl_estimator: Literal["k1", "k3"] = field(
        default="k1",
        metadata={
            "help": "Per-token KL estimate in the reward: `k1` = log pi - log pi_ref (InstructGPT), or `k3` = "
            "(r - 1) - log r with r = pi_ref / pi (unbiased, never negative, lower variance)."
        },
    )
    # a clip range of 0 clips the ratio to exactly 1: after the first optimizer step of a batch the policy loss has
    # no gradient except back toward the old policy, so PPO cannot move (the same holds for the value clip)
    cliprange: float = field(
        default=0.2, metadata={"range": "> 0", "help": "epsilon of PPO's clipped surrogate objective."}
    )
    vf_coef: float = field(
        default=0.1, metadata={"range": ">= 0", "help": "Weight of the value loss in the total loss."}
    )
    cliprange_value: float = field(
        default=0.2, metadata={"range": "> 0", "help": "Clip range of the value function's update."}
    )
    gamma: float = field(default=1.0, metadata={"range": "[0, 1]", "help": "Discount factor of GAE."})
    lam: float = field(default=0.95, metadata={"range": "[0, 1]", "help": "lambda of GAE."})

    # ---- TRL's older PPOConfig names for the adaptive KL controller (Ziegler et al. 2019) ---------------------------
    adap_kl_ctrl: bool = field(
        default=False,
        metadata={
            "help": "Adapt beta so that the KL to the SFT policy tracks `target` (a proportional controller, "
            "Ziegler et al. 2019); off: beta stays at `kl_coef`."
        },
    )
    # the controller's error is KL / target - 1: a target of 0 divides by zero
    target: float = field(
        default=6.0,
        metadata={"range": "> 0", "help": "Adaptive KL: the target KL per response, in nats (with `adap_kl_ctrl`)."},
    )
    horizon: int = field(
        default=10000,
        metadata={"range": ">= 1", "help": "Adaptive KL: the controller's horizon, in episodes (with `adap_kl_ctrl`)."},
    )

    # ---- new in this project ---------------------------------------------------------------------------------------
    top_k: int = field(
        default=0, metadata={"range": ">= 0", "help": "Sample among the k most likely tokens only (0: no limit)."}
    )
    top_p: float = field(
        default=1.0,
        metadata={
            "range": "(0, 1]",
            "help": "Nucleus sampling: the smallest set of tokens with this probability (1.0: all).",
        },
    )
    entropy_coef: float = field(
        default=0.0,
        metadata={
            "range": ">= 0",
            "help": "Weight of the entropy bonus (PPO's c2, Schulman et al. 2017, eq. 9) against premature collapse; "
            "InstructGPT used 0.",
        },
    )
    ptx_coef: float = field(
        default=0.0,
        metadata={
            "range": ">= 0",
            "help": "PPO-ptx: gamma, the weight of the pretraining log-likelihood term (InstructGPT used 27.8); 0 "
            "gives plain PPO. Needs `ptx_dataset_name`.",
        },
    )
    ptx_batch_size: int | None = field(
        default=None,
        metadata={
            "range": ">= 1",
            "help": "PPO-ptx sequences per micro-batch (default `per_device_train_batch_size`): every PPO "
            "micro-batch is paired with this many ptx sequences.",
        },
    )
    ptx_max_length: int = field(
        default=128, metadata={"range": ">= 1", "help": "PPO-ptx sequences are truncated to this many tokens."}
    )
    max_kl: float | None = field(
        default=100.0,
        metadata={
            "range": "> 0",
            "help": "Stop the run (keeping the last checkpoint) when the mean KL to the SFT policy per response "
            "exceeds this many nats: the policy has run away from the reference. Null: never.",
        },
    )
    save_policy_checkpoints: bool = field(
        default=True,
        metadata={
            "help": "Keep the policy of every checkpoint (checkpoint-N/policy, loadable with AutoModelForCausalLM) "
            "even after `save_total_limit` removes the older resume states, for reward-vs-KL plots over training."
        },
    )
    eval_num_prompts: int = field(
        default=64,
        metadata={
            "range": ">= 0",
            "help": "With `eval_dataset_name`: how many held-out prompts to score before training, at each "
            "evaluation (`eval_strategy: steps`, `eval_steps`) and at the end (mean reward, KL, length).",
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow models whose code lives in their Hub repository (as TRL's SFTConfig/RewardConfig)."},
    )
    ds3_gather_for_generation: bool = field(
        default=True,
        metadata={
            "help": "DeepSpeed ZeRO-3: gather the policy's weights for generation (fast); off lets a model that "
            "does not fit one GPU generate, slowly."
        },
    )

    # ---- vLLM rollouts (the `[vllm]` extra) -------------------------------------------------------------------------
    use_vllm: bool = field(
        default=False,
        metadata={
            "help": "Sample rollouts (and held-out evaluations) with vLLM colocated in each training process (the "
            "`[vllm]` extra: pip install -e '.[vllm]'). The policy's weights are pushed to vLLM after every update "
            "(LoRA: merged); the log-probs of the ratio and the KL are recomputed by the trainer's own forward."
        },
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.3,
        metadata={
            "range": "(0, 1]",
            "help": "With use_vllm: the share of GPU memory vLLM takes (weights + KV cache), the rest being left "
            "to training (TRL's GRPO colocate default: 0.3). No effect on CPU, where VLLM_CPU_KVCACHE_SPACE (GiB, "
            "1 unless set) sizes the cache.",
        },
    )
    vllm_enable_sleep_mode: bool = field(
        default=False,
        metadata={
            "help": "With use_vllm on a GPU: free vLLM's weights and KV cache between rollouts (sleep level 2), "
            "giving their memory to the update; the weights are pushed again before each rollout."
        },
    )

    def __post_init__(self) -> None:
        if self.bf16 is None:
            import torch

            self.bf16 = bool(not self.fp16 and torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        super().__post_init__()
        self._validate()

    def _validate(self) -> None:
        """Reject settings that cannot describe a PPO run; each message names the key.

        Each number's range is declared on its field (``metadata["range"]``, or for the fields of
        ``TrainingArguments`` a rule of :mod:`instructgpt.infra.validation`) and checked when the recipe is parsed.
        It is checked again here, from the same declarations, so that a config built in code is held to the same
        ranges. What follows are the rules that no one field's range can say."""
        problems = range_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        if self.stop_token is not None and self.stop_token_id is not None:
            raise ValueError("set either `stop_token` or `stop_token_id`, not both")
        if self.local_batch_size % self.num_mini_batches:
            raise ValueError(
                f"the rollout batch per process (per_device_train_batch_size * gradient_accumulation_steps = "
                f"{self.local_batch_size}) must be a multiple of `num_mini_batches` ({self.num_mini_batches})"
            )
        if self.local_mini_batch_size % self.per_device_train_batch_size:
            raise ValueError(
                f"a minibatch of {self.local_mini_batch_size} sequences per process (rollout batch / "
                f"num_mini_batches) must be a multiple of `per_device_train_batch_size` "
                f"({self.per_device_train_batch_size})"
            )

    # ---- derived batch sizes (TRL's names) -------------------------------------------------------------------------
    @property
    def local_batch_size(self) -> int:
        """Episodes sampled per process per update."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    @property
    def local_mini_batch_size(self) -> int:
        """Sequences per process in one minibatch (one optimizer step)."""
        return self.local_batch_size // self.num_mini_batches

    @property
    def micro_batches_per_mini_batch(self) -> int:
        """Gradient-accumulation steps inside one minibatch."""
        return self.local_mini_batch_size // self.per_device_train_batch_size

    def batch_size(self, num_processes: int) -> int:
        """Episodes per update over all processes."""
        return self.local_batch_size * num_processes

    def num_total_batches(self, num_prompts: int, num_processes: int) -> int:
        """Updates in the run: ``ceil(total_episodes / batch_size)`` (TRL's ``num_total_batches``)."""
        episodes = self.total_episodes or int(self.num_train_epochs * num_prompts)
        return max(1, math.ceil(episodes / self.batch_size(num_processes)))


def steps_of(value: float | int | None, total: int) -> int | None:
    """How many updates ``logging_steps``, ``save_steps`` or ``eval_steps`` means in a run of ``total``:
    TrainingArguments' convention, where a float below 1 is a fraction of the run (None: never)."""
    if value is None or value <= 0:
        return None
    return max(1, math.ceil(value * total)) if value < 1 else int(value)
