"""The lifecycle every stage built on transformers' ``Trainer`` shares (pretrain, sft, rm, dpo, rloo), written once.

A Trainer stage holds its own data, its own trainer and its own model card section; :class:`TrainerStage` does the
rest, in the order that keeps an output directory sound when a run is interrupted at any point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from instructgpt.infra.cards import write_model_card
from instructgpt.infra.guards import fault_point, finite_gradients_callback
from instructgpt.infra.hub import PushTarget, take_push_to_hub
from instructgpt.infra.library_errors import translating
from instructgpt.infra.outputs import (
    finish_output,
    mark_started,
    node_local_checkpoint_callback,
    prepare_output_dir,
    recover_final_save,
)
from instructgpt.infra.parser import Recipe
from instructgpt.infra.tracking import finish_wandb, trainer_tracking
from instructgpt.metrics.training import trainer_metrics
from instructgpt.modeling.lora import save_trained_model


class TrainerStage:
    """One run of a Trainer stage named ``name``: its output directory, dashboards, training and finish.

    A stage calls four methods, in this order, and between them only does what is its own::

        stage = TrainerStage("sft", training_args, recipe, script_args.if_output_exists, what="SFT model")
        if (recovered := stage.begin()) is not None:
            return recovered
        ...  # read and check the data, load the tokenizer and the model
        trainer = SFTTrainer(..., callbacks=stage.start_run())
        metrics = stage.train(trainer)
        ...  # the stage's own metrics (evaluation, ...) and files
        stage.finish(trainer, metrics, tokenizer=tokenizer, card={"title": ..., ...})

    The steps, in order:

    ``begin()``, before any input is read:

    1. a run that saved its final weights but was stopped before its marker is verified and marked finished
       (:func:`~instructgpt.infra.outputs.recover_final_save`); ``begin`` then returns its metrics and the stage
       returns them at once;
    2. the output directory is prepared (:func:`~instructgpt.infra.outputs.prepare_output_dir`): resumed, refused
       or moved aside, as ``if_output_exists`` says; :attr:`resume_from` is the checkpoint to resume from, or None.

    ``start_run()``, once the inputs are read and checked, right before the Trainer is built (so that bad input
    leaves no dashboard run and no file behind):

    3. the dashboards' run starts, continuing the interrupted one when resuming
       (:func:`~instructgpt.infra.tracking.trainer_tracking`; :attr:`run` is the W&B run, or None);
    4. ``push_to_hub`` is taken from the training arguments, so that the Trainer never pushes mid-save
       (:func:`~instructgpt.infra.hub.take_push_to_hub`);
    5. it returns the Trainer's callbacks: stop before an optimizer step on non-finite gradients, complete the
       checkpoints of nodes without a shared filesystem, store the run's identity in each checkpoint.

    ``train(trainer)``:

    6. the directory is marked as this stage's (:func:`~instructgpt.infra.outputs.mark_started`), after everything
       that can refuse the run;
    7. the Trainer trains, from :attr:`resume_from` when there is one (a foreseeable failure, such as the disk
       filling up during a checkpoint, ends in one line naming the stage and its output directory);
    8. it returns the metrics every Trainer run reports (:func:`~instructgpt.metrics.training.trainer_metrics`).

    ``finish(trainer, metrics, ...)``, once the stage added its own metrics and wrote its own files:

    9. the main process saves the tokenizer, then
    10. the model card (:mod:`instructgpt.infra.cards`, from the stage's ``card`` keywords);
    11. the weights are saved (:func:`~instructgpt.modeling.lora.save_trained_model`): the last file but the marker,
        which is what lets step 1 trust them (steps 9-11 fail, a full disk say, in one line naming the directory);
    12. the main process copies the numeric metrics into the W&B run's summary, then
        :func:`~instructgpt.infra.outputs.finish_output` marks the run finished (checking the weights), waits for
        every process and only then pushes to the Hub;
    13. W&B is closed, with the ``wandb sync`` command for offline runs.
    """

    def __init__(self, name: str, training_args: Any, recipe: Recipe, if_output_exists: str, *, what: str):
        """``what`` names the output in the last message (``<what> saved to <output_dir>``)."""
        self.name = name
        self.training_args = training_args
        self.recipe = recipe
        self.if_output_exists = if_output_exists
        self.what = what
        self.resume_from: Path | None = None
        self.run: Any | None = None  # the W&B run, once started
        self.push: PushTarget | None = None

    @property
    def output_dir(self) -> str:
        return self.training_args.output_dir

    def begin(self) -> dict[str, Any] | None:
        """Steps 1-2: the metrics of a finished run recovered from its final save (the stage returns them), or None
        with :attr:`resume_from` set for the run to go on."""
        recovered = recover_final_save(self.output_dir, self.name, self.recipe.data, self.if_output_exists)
        if recovered is not None:
            return recovered
        self.resume_from = prepare_output_dir(
            self.output_dir, self.if_output_exists, self.recipe.source, stage=self.name
        )
        return None

    def start_run(self) -> list[Any]:
        """Steps 3-5: start the dashboards' run and take ``push_to_hub``; returns the callbacks the Trainer takes."""
        self.run, tracking_callbacks = trainer_tracking(
            self.training_args, self.name, self.recipe.data, self.resume_from
        )
        self.push = take_push_to_hub(self.training_args)  # pushed in finish(), once the output is finished
        return [finite_gradients_callback(self.output_dir), node_local_checkpoint_callback(), *tracking_callbacks]

    def train(self, trainer: Any) -> dict[str, Any]:
        """Steps 6-8: mark the directory started, train (resuming when there is a checkpoint); returns the metrics."""
        mark_started(self.output_dir, self.name)
        with translating(f"{self.name} training into {self.output_dir} (with its checkpoints)"):
            result = trainer.train(resume_from_checkpoint=str(self.resume_from) if self.resume_from else None)
        return trainer_metrics(trainer, result)

    def finish(
        self,
        trainer: Any,
        metrics: dict[str, Any],
        *,
        tokenizer: Any,
        card: dict[str, Any],
        model: Any = None,
        keep_adapter: bool = False,
    ) -> None:
        """Steps 9-13: tokenizer, card, weights, marker, push, W&B closed.

        ``card``: the keywords of :func:`~instructgpt.infra.cards.write_model_card` that are the stage's own
        (``title``, ``trainer``, ``kind``, ``base_model``, ``datasets``, ``example``, ``summary``, ``settings``,
        ``results``). ``model`` and
        ``keep_adapter`` are :func:`~instructgpt.modeling.lora.save_trained_model`'s: the model to save when the
        stage merged the adapter itself, and whether a LoRA adapter is also kept alone in ``output_dir/adapter``.
        """
        fault_point("final_save")
        with translating(f"{self.name} saving its final model to {self.output_dir}"):
            if trainer.is_world_process_zero():
                tokenizer.save_pretrained(self.output_dir)
                write_model_card(self.output_dir, stage=self.name, **card)
            save_trained_model(trainer, self.output_dir, model=model, keep_adapter=keep_adapter)
        if trainer.is_world_process_zero() and self.run is not None:
            self.run.summary.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        finish_output(
            self.output_dir,
            self.name,
            self.recipe.data,
            metrics,
            what=self.what,
            is_main_process=trainer.is_world_process_zero(),
            wait_for_everyone=trainer.accelerator.wait_for_everyone,
            push=self.push,
        )
        finish_wandb(self.run)
