"""The PPO stage's output directory: how a run starts in it, and what it leaves there at the end.

:func:`begin`, before the first update: resume from the checkpoint the output directory holds (the one
:func:`~instructgpt.infra.outputs.prepare_output_dir` chose) or start with empty logs, mark the directory as started
by ``ppo``, start the dashboards. :func:`finish`, after the last update, in this order: the value model
(``value_model/``) and the model card, the policy (LoRA merged) with its tokenizer, the marker that the output is
complete, the Hub push, the dashboards' summary. The marker, the wait and the push are
:func:`~instructgpt.infra.outputs.finish_output`, the same finishing steps every Trainer stage ends with.
"""

from __future__ import annotations

from typing import Any

from instructgpt.infra.cards import write_model_card
from instructgpt.infra.files import PPO_METRICS_FILE
from instructgpt.infra.guards import fault_point
from instructgpt.infra.library_errors import translating
from instructgpt.infra.log import get_logger
from instructgpt.infra.outputs import finish_output, mark_started
from instructgpt.infra.tracking import StageTracker, run_identity
from instructgpt.stages.ppo.metrics import COMPLETIONS_FILE

logger = get_logger(__name__)

VALUE_MODEL_DIR = "value_model"


def begin(trainer: Any) -> None:
    """Resume ``trainer`` (a :class:`~instructgpt.stages.ppo.trainer.PPOTrainer`) or start its logs afresh, mark
    the output directory as started, and start its dashboards."""
    args, acc, output_dir = trainer.args, trainer.accelerator, trainer.output_dir
    if trainer.resume_from is not None:
        trainer.resume(trainer.resume_from)
    elif acc.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        for name in (PPO_METRICS_FILE, COMPLETIONS_FILE):
            (output_dir / name).unlink(missing_ok=True)
    mark_started(output_dir, "ppo")
    identity = run_identity(output_dir, "ppo", args.run_name, trainer.resume_from)
    trainer.tracker = StageTracker.start(
        args.report_to,
        project=args.project,
        stage="ppo",
        config=trainer.recipe.data,
        output_dir=output_dir,
        identity=identity,
    )


def finish(trainer: Any, metrics: dict[str, Any]) -> None:
    """Write the finished output of ``trainer`` with its final ``metrics``, in the order the module docstring gives."""
    acc, output_dir = trainer.accelerator, trainer.output_dir
    value_state = acc.get_state_dict(trainer.model)
    fault_point("final_save")
    with translating(f"ppo saving its final policy to {output_dir}"):  # a full disk: one line naming the place
        if acc.is_main_process:
            value_model = trainer.unwrapped.value_model
            value_model.save_pretrained(
                output_dir / VALUE_MODEL_DIR,
                safe_serialization=True,
                state_dict={
                    k[len("value_model.") :]: v for k, v in value_state.items() if k.startswith("value_model.")
                },
            )
            trainer.tokenizer.save_pretrained(output_dir / VALUE_MODEL_DIR)
            write_card(trainer, metrics)
        trainer.save_policy(output_dir, merged=True)  # the weights: the last file but the marker
    # the same finishing steps as every Trainer stage: marker, wait for every process, push
    finish_output(
        output_dir,
        "ppo",
        trainer.recipe.data,
        metrics,
        what="PPO policy",
        is_main_process=acc.is_main_process,
        wait_for_everyone=acc.wait_for_everyone,
        push=trainer.push,
    )
    trainer.tracker.summary(metrics)
    trainer.tracker.finish()


def write_card(trainer: Any, metrics: dict[str, Any]) -> None:
    """The model card: what was trained from what, the main settings and the final numbers."""
    args, script_args = trainer.args, trainer.script_args
    write_model_card(
        trainer.output_dir,
        stage="ppo",
        title="PPO, InstructGPT step 3",
        trainer="instructgpt's own PPO, on accelerate (`instructgpt.stages.ppo`)",
        kind="policy",
        base_model=trainer.policy_path,
        datasets=[*script_args.dataset_names, script_args.ptx_dataset_name],
        example=trainer.prompts[0],
        summary="A policy: the SFT model trained with PPO against the frozen reward model "
        f"`{script_args.reward_model_path}` under a per-token KL penalty to the SFT policy"
        + (f", with pretraining gradients mixed in (PPO-ptx, `ptx_coef` {args.ptx_coef})" if args.ptx_coef else "")
        + ". Its tokenizer carries the chat template it was trained with.",
        notes=f"The value function PPO trained beside the policy is in `{VALUE_MODEL_DIR}/` (a sequence classifier "
        "with one output), for resuming or inspecting the run; the policy alone is all generation needs.",
        settings={
            "kl_coef": args.kl_coef,
            "adaptive KL": args.adap_kl_ctrl,
            "learning_rate": args.learning_rate,
            "episodes per update": trainer.batch_size,
            "updates": trainer.num_total_batches,
            "PPO epochs": args.num_ppo_epochs,
            "ptx_coef": args.ptx_coef,
            "temperature": args.temperature,
        },
        results={
            "final KL to SFT (nats)": metrics.get("objective/kl"),
            "final normalized score": metrics.get("objective/scores"),
            "held-out score": metrics.get("eval/scores"),
            "held-out KL": metrics.get("eval/kl"),
            "episodes": metrics.get("episode"),
        },
    )
