"""How PPO's weights and its KL coefficient move: the optimizer, the learning-rate schedule and beta's controller.

- the optimizer is the one ``TrainingArguments`` names (``optim``, AdamW by default), with weight decay on
  matrices only, not on biases and norms (nanoGPT's rule), over the policy and the value function together;
- the schedule steps once per update (one rollout batch and its PPO epochs), as TRL's PPO trainer does;
- beta, the KL penalty's coefficient, is fixed (``kl_coef``) or steered toward ``target`` by the adaptive
  controller (``adap_kl_ctrl``; :class:`~instructgpt.losses.ppo.AdaptiveKLController`).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import Trainer, get_scheduler

from instructgpt.losses import ppo as core
from instructgpt.stages.ppo.config import PPOConfig


def build_optimizer(model: nn.Module, args: PPOConfig) -> Any:
    """The optimizer over the trainable parameters of ``model``, weight decay on matrices only."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": args.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    return optimizer_cls(groups, **optimizer_kwargs)


def build_scheduler(optimizer: Any, args: PPOConfig, num_updates: int) -> Any:
    """The learning-rate schedule over ``num_updates`` steps, one per update. It stays out of
    ``accelerator.prepare``, which would step it once per process."""
    return get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=args.get_warmup_steps(num_updates),
        num_training_steps=num_updates,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs or {},
    )


def build_kl_controller(args: PPOConfig) -> core.KLController:
    """Beta's controller: adaptive with ``adap_kl_ctrl``, else fixed at ``kl_coef``."""
    if args.adap_kl_ctrl:
        return core.AdaptiveKLController(args.kl_coef, args.target, args.horizon)
    return core.FixedKLController(args.kl_coef)
