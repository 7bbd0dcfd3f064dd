"""Step 2 of InstructGPT: the reward model, wrapping TRL's ``RewardTrainer`` and extending it to K-way rankings.

    instructgpt-rm recipes/tiny/rm.yaml [--key value ...]
    accelerate launch --config_file accelerate_config.yaml -m instructgpt recipes/tiny/rm.yaml

The model is the SFT model with a scalar head (``AutoModelForSequenceClassification``, ``num_labels=1``): the reward
of a response is the head's output on the last token of ``prompt + response``.

Data, one ranking per row (every format becomes "a prompt and its responses, best first"):

- rankings: ``prompt`` and ``responses`` (best first), optionally ``scores`` (then the order is by score);
  this is what ``instructgpt collect`` writes;
- pairs, TRL's format: ``prompt``/``chosen``/``rejected`` (a K = 2 ranking), optionally
  ``score_chosen``/``score_rejected``;
- UltraFeedback's: ``instruction`` and ``completions`` (each with ``response`` and a rating, ``score_key``).

Training (Ouyang et al. 2022, section 3.5): for each prompt, every response is forwarded once and all
:math:`\\binom{K}{2}` comparisons of the prompt form one batch element of :func:`instructgpt.losses.kway_ranking_loss`
- K forward passes instead of the :math:`2\\binom{K}{2}` a pairwise trainer needs, and no shuffling of correlated
pairs as independent examples (the paper's reason: it overfits).

After training, the reward is shifted so that the labelers' demonstrations score 0 on average (section 3.5: "we
normalize the reward model using a bias so that the labeler demonstrations achieve a mean score of 0 before doing
RL"). The shift is stored with the model (``config.reward_shift`` and ``reward_normalization.json``), and
:func:`score_responses` subtracts it, so PPO, collection and evaluation all see normalized rewards.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from instructgpt.arguments import ScriptArguments
from instructgpt.data import DataError
from instructgpt.data.formats import Prompt, load_demonstrations
from instructgpt.data.padding import pad_sequences
from instructgpt.data.rankings import RankingStats, hold_out_by_prompt, load_rankings
from instructgpt.infra.cards import write_model_card
from instructgpt.infra.entrypoint import stage_main
from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.files import atomic_write_json, is_complete, read_marker
from instructgpt.infra.hub import take_push_to_hub
from instructgpt.infra.library_errors import translating
from instructgpt.infra.log import get_logger
from instructgpt.infra.outputs import finish_output, mark_started, prepare_output_dir
from instructgpt.infra.parser import Recipe, StageArgs, parse_stage_args, required
from instructgpt.infra.processes import process_state
from instructgpt.infra.trainer_stage import TrainerStage
from instructgpt.judges import make_labeler
from instructgpt.losses import kway_ranking_loss, unflatten_rewards
from instructgpt.metrics.ranking import RankingAgreementEval, pairwise_accuracy, ranking_agreement
from instructgpt.modeling import cap_max_length, check_model_path, lora_config, stage_tokenizer
from instructgpt.modeling.ensemble import AGGREGATIONS, ENSEMBLE_FILE, EnsembleManifest, aggregate_rewards, disagreement
from instructgpt.modeling.lora import merge_adapter
from instructgpt.modeling.reward import (
    NORMALIZATION_FILE,
    load_reward_model,
    load_sequence_classifier,
    rankings_agreement,
    reward_input_ids,
    score_members,
    score_responses,
)
from instructgpt.modeling.tokenizers import load_tokenizer

logger = get_logger(__name__)

ENSEMBLE_DIVERSITY = ("seed", "bootstrap")  # where an ensemble's members differ (`ensemble_diversity`)


@dataclass
class RMScriptArguments(ScriptArguments):
    """Where the rankings come from, the shift's demonstrations, and the ensemble (``ensemble_size`` > 1)."""

    eval_fraction: float = field(
        default=0.0,
        metadata={
            "range": "[0, 1)",  # 0: no held-out split
            "help": "Without `eval_dataset_name` or `dataset_test_split`, hold out this fraction of the prompts "
            "(all rankings of a prompt go to the same side) to measure held-out pairwise accuracy and Kendall's tau.",
        },
    )
    score_key: str = field(
        default="fine-grained_score",
        metadata={
            "help": "UltraFeedback-style data (`instruction` + `completions`): the completion field that rates it. "
            "`fine-grained_score` is the mean of the four aspect ratings; `overall_score` is the critique's score."
        },
    )
    demonstrations_dataset: str | None = field(
        default=None,
        metadata={
            "help": "Labeler demonstrations (prompt/completion or messages, as for SFT) whose mean reward becomes "
            "0 after training (InstructGPT normalizes the RM so demonstrations score 0 on average). Unset: no shift."
        },
    )
    demonstrations_config: str | None = field(
        default=None, metadata={"help": "Hub configuration of the demonstrations."}
    )
    demonstrations_split: str = field(default="train", metadata={"help": "Split of the demonstrations (Hub datasets)."})
    max_demonstrations: int | None = field(
        default=2000, metadata={"range": ">= 1", "help": "Use at most this many demonstrations to estimate the shift."}
    )
    scoring_batch_size: int = field(
        default=32,
        metadata={"range": ">= 1", "help": "Sequences per forward pass when scoring demonstrations after training."},
    )
    ensemble_size: int = field(
        default=1,
        metadata={
            "range": ">= 1",
            "help": "Train this many reward models as one ensemble (Coste et al. 2023), saved under "
            "`output_dir/members/<i>` with a manifest, and loaded by every consumer as one reward model whose score "
            "aggregates the members' (`reward_aggregation`). 1: one reward model, as before.",
        },
    )
    ensemble_diversity: list[str] = field(
        default_factory=lambda: ["seed", "bootstrap"],
        metadata={
            "help": "Where the members' differences come from: `seed` (member i trains with `seed + i`: its own "
            "score-head initialization and data order) and/or `bootstrap` (member i trains on a resample of the "
            "training rankings, drawn with replacement, as many as there are). Eisenstein et al. 2023: seeds alone "
            "make members that err together."
        },
    )
    ensemble_aggregation: Literal["mean", "min", "mean_minus_std"] = field(
        default="mean",
        metadata={
            "help": "The ensemble's default aggregation, stored in its manifest, for consumers whose recipe does "
            "not choose one: `mean`, `min` (worst case) or `mean_minus_std` (uncertainty-weighted, with "
            "`ensemble_std_coef`)."
        },
    )
    ensemble_std_coef: float = field(
        default=1.0,
        metadata={"range": ">= 0", "help": "The default lambda of `mean_minus_std` stored in the manifest."},
    )
    gold_labeler: str | None = field(
        default=None,
        metadata={
            "help": "A judge to score the held-out responses again (`simulated`: the tiny world's noiseless "
            "rubric; any labeler spec of `instructgpt collect`): held-out pairwise accuracy against it is "
            "reported as `eval_gold_pairwise_accuracy`, next to the accuracy against the data's own (noisy) "
            "labels. Does the RM learn correctness, or the labelers' noise? Unset: not measured."
        },
    )


# --------------------------------------------------------------------------------------------------------------
# Tokenization and batching: K responses per ranking, each forwarded once
# --------------------------------------------------------------------------------------------------------------


def tokenize_rankings(rows: list[dict[str, Any]], tokenizer: Any, max_length: int | None, name: str) -> Any:
    """A ``datasets.Dataset`` with one row per ranking: ``response_ids`` holds its K token-id lists, best first.

    Responses longer than ``max_length`` tokens are dropped (as TRL's RewardTrainer filters long pairs); a ranking
    left with fewer than 2 responses goes too, and the run says how many.
    """
    import datasets

    prompts = [r["prompt"] for r in rows for _ in r["responses"]]
    responses = [text for r in rows for text in r["responses"]]
    flat = reward_input_ids(tokenizer, prompts, responses)
    stats = RankingStats()
    out, start = [], 0
    for r in rows:
        ids = flat[start : start + len(r["responses"])]
        start += len(r["responses"])
        if max_length is not None:
            kept = [x for x in ids if len(x) <= max_length]
            stats.too_long += len(ids) - len(kept)
            ids = kept
        if len(ids) < 2:
            stats.too_few += 1
            continue
        out.append({"response_ids": ids})
    if stats.too_long:
        logger.info(f"{name}: {stats.describe()} (max_length={max_length})")
    if not out:
        raise DataError(f"{name}: every ranking lost its responses to max_length={max_length}; nothing left")
    return datasets.Dataset.from_list(out)


@dataclass
class RankingCollator:
    """Flatten a batch of rankings into one padded batch of sequences.

    P rankings with :math:`K_1..K_P` responses give ``input_ids`` of shape :math:`(\\sum_p K_p, T)`, ranking by
    ranking and best first inside each, right-padded; ``num_responses`` (shape ``(P,)``) says where each ranking's
    responses are. ``num_responses`` comes first because transformers' ``Trainer`` reads the batch size (the
    number of rankings) from the first tensor.
    """

    pad_token_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences = [seq for example in examples for seq in example["response_ids"]]
        input_ids, attention_mask = pad_sequences(sequences, self.pad_token_id, side="right")
        num_responses = torch.tensor([len(example["response_ids"]) for example in examples], dtype=torch.long)
        return {"num_responses": num_responses, "input_ids": input_ids, "attention_mask": attention_mask}


def build_trainer_class():
    """TRL's ``RewardTrainer`` with K-way ranking batches and InstructGPT's loss.

    TRL builds the model (scalar head, LoRA, pad token, dropout off), the optimizer and the logging; we replace the
    data (rankings, tokenized by :func:`tokenize_rankings`), the collator, the loss and the evaluation metrics.
    Defined lazily so importing this module does not import TRL.
    """
    from trl import RewardTrainer

    class KWayRewardTrainer(RankingAgreementEval, RewardTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if "response_ids" not in dataset.column_names:
                raise DataError(
                    f"{dataset_name} dataset: expected tokenized rankings (`response_ids`), see tokenize_rankings"
                )
            return dataset

        def _set_signature_columns_if_needed(self):
            if self._signature_columns is None:
                self._signature_columns = ["response_ids"]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            """One forward pass over every response of every ranking, then the K-way loss per ranking."""
            mode = "train" if self.model.training else "eval"
            num_responses = inputs["num_responses"]
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
            rewards = unflatten_rewards(outputs.logits.squeeze(-1), num_responses)
            loss = kway_ranking_loss(rewards, num_responses)
            if self.args.center_rewards_coefficient is not None:
                # Eisenstein et al. 2023 (as TRL): a small penalty on the squared rewards keeps them centred
                valid = torch.arange(rewards.shape[1], device=rewards.device) < num_responses.unsqueeze(1)
                loss = loss + self.args.center_rewards_coefficient * rewards[valid].pow(2).mean()

            with torch.no_grad():
                stats = ranking_agreement(rewards.detach().float(), num_responses)
                if mode == "train":
                    tokens = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
                    self._total_train_tokens += tokens // self._tp_size
                    self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
                    totals = self.accelerator.gather(stats[:, :2].sum(0, keepdim=True)).sum(0)
                    self._metrics[mode]["accuracy"].append((totals[0] / totals[1].clamp(min=1)).item())
                    self._metrics[mode]["kendall_tau"].append(self.accelerator.gather(stats[:, 2]).mean().item())
                    flat = self.accelerator.gather(outputs.logits.detach().float())
                    self._metrics[mode]["mean_reward"].append(flat.mean().item())
                    self._metrics[mode]["min_reward"].append(flat.min().item())
                    self._metrics[mode]["max_reward"].append(flat.max().item())
                else:
                    # gather_for_metrics drops the copies an uneven last batch gets under several processes
                    self._ranking_stats.append(self.accelerator.gather_for_metrics(stats).cpu())
            return (loss, outputs) if return_outputs else loss

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad():
                loss = self.compute_loss(model, inputs)
            return loss.detach(), None, None

    return KWayRewardTrainer


# --------------------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------------------


def load_demonstration_pairs(script_args: RMScriptArguments, source: str) -> tuple[list[Prompt], list[str]]:
    """Prompts and responses of the demonstrations whose mean reward defines the shift (SFT's formats and checks)."""
    dataset = load_demonstrations(
        script_args.demonstrations_dataset,
        config=script_args.demonstrations_config,
        split=script_args.demonstrations_split,
        key="demonstrations_dataset",
        source=source,
        limit=script_args.max_demonstrations,
    )
    prompts = [example["prompt"] for example in dataset]
    responses = [example["completion"][-1]["content"] for example in dataset]
    return prompts, responses


def demonstration_shift(
    model: Any, tokenizer: Any, prompts: list[Prompt], responses: list[str], batch_size: int
) -> dict[str, float]:
    """Mean and spread of the raw rewards of the demonstrations; the mean becomes the stored shift."""
    raw = torch.tensor(
        score_responses(model, tokenizer, prompts, responses, batch_size=batch_size, shift=0.0), dtype=torch.float64
    )
    return {
        "shift": raw.mean().item(),
        "std": raw.std().item() if len(raw) > 1 else 0.0,
        "num_demonstrations": len(raw),
    }


def gold_accuracy(
    model: Any, tokenizer: Any, rows: list[dict[str, Any]], spec: str, batch_size: int, source: str
) -> dict[str, float | int]:
    """Held-out pairwise accuracy of the reward model against a gold judge (``spec``, e.g. the noiseless rubric)
    and, on the same pairs' responses, against the data's own order (best first, as the noisy labeler ranked)."""
    judge = make_labeler(spec, batch_size=batch_size, source=source)
    prompts = [row["prompt"] for row in rows for _ in row["responses"]]
    responses = [response for row in rows for response in row["responses"]]
    rewards = score_responses(model, tokenizer, prompts, responses, batch_size=batch_size)
    gold = judge.score(prompts, responses)
    sizes = [len(row["responses"]) for row in rows]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    predicted = [rewards[s : s + k] for s, k in zip(starts, sizes)]
    agree, total = pairwise_accuracy(predicted, [gold[s : s + k] for s, k in zip(starts, sizes)])
    data_agree, data_total = pairwise_accuracy(predicted, [[float(k - i) for i in range(k)] for k in sizes])
    labels_agree, _ = pairwise_accuracy(
        [gold[s : s + k] for s, k in zip(starts, sizes)], [[float(k - i) for i in range(k)] for k in sizes]
    )
    return {
        "eval_gold_pairwise_accuracy": agree / total if total else float("nan"),
        "eval_gold_num_comparisons": total,
        "eval_data_pairwise_accuracy": data_agree / data_total if data_total else float("nan"),
        # the ceiling of the accuracy against the data's labels: how often the gold judge itself agrees with them
        "eval_gold_agrees_with_data": labels_agree / data_total if data_total else float("nan"),
        "gold_labeler": getattr(judge, "name", spec),
    }


def _load_splits(
    script_args: RMScriptArguments, training_args: Any, source: str
) -> tuple[list[dict], list[dict] | None]:
    common = {"config": script_args.dataset_config, "source": source, "score_key": script_args.score_key}
    train_rows = load_rankings(
        script_args.dataset,
        key="dataset_name",
        split=script_args.dataset_train_split,
        limit=script_args.max_train_samples,
        **common,
    )
    if script_args.eval_dataset_name or script_args.dataset_test_split:
        name = script_args.eval_dataset_name or script_args.dataset
        key = "eval_dataset_name" if script_args.eval_dataset_name else "dataset_test_split"
        eval_rows = load_rankings(
            name, key=key, split=script_args.dataset_test_split or "test", limit=script_args.max_eval_samples, **common
        )
        return train_rows, eval_rows
    if script_args.eval_fraction > 0:
        return hold_out_by_prompt(
            train_rows, script_args.eval_fraction, training_args.seed, limit=script_args.max_eval_samples, source=source
        )
    return train_rows, None


@dataclass
class RMData:
    """What a reward model trains and is judged on, read and checked once (an ensemble's members share it)."""

    train_rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]] | None
    demo_prompts: list[Prompt]
    demo_responses: list[str]


def load_rm_data(script_args: RMScriptArguments, training_args: Any, source: str) -> RMData:
    train_rows, eval_rows = _load_splits(script_args, training_args, source)
    demo_prompts: list[Prompt] = []
    demo_responses: list[str] = []
    if script_args.demonstrations_dataset:
        demo_prompts, demo_responses = load_demonstration_pairs(script_args, source)
    return RMData(train_rows, eval_rows, demo_prompts, demo_responses)


def run_rm(script_args: RMScriptArguments, training_args: Any, model_args: Any, recipe: Recipe) -> dict[str, Any]:
    """Train, evaluate, normalize and save the reward model (or the ensemble) the recipe describes; returns the
    final metrics."""
    source = recipe.source
    model_path = check_model_path(model_args.model_name_or_path, "model_name_or_path", source)
    required(script_args.dataset, "dataset_name", source, "rankings or pairs: a .jsonl file or a Hub id")
    required(training_args.output_dir, "output_dir", source)
    if getattr(model_args, "load_in_4bit", False) or getattr(model_args, "load_in_8bit", False):
        raise InstructGPTError(
            f"{source}: `load_in_4bit`/`load_in_8bit` is not supported for the reward model (its merged weights "
            "would stay quantized, which PPO and evaluation cannot load); use LoRA in bf16 (use_peft: true) instead"
        )
    if script_args.ensemble_size > 1:
        return train_ensemble(script_args, training_args, model_args, recipe, model_path)
    return train_reward_model(script_args, training_args, model_args, recipe, model_path)


def train_reward_model(
    script_args: RMScriptArguments,
    training_args: Any,
    model_args: Any,
    recipe: Recipe,
    model_path: str,
    data: RMData | None = None,
) -> dict[str, Any]:
    """One reward model, through the Trainer lifecycle every stage shares (:class:`TrainerStage`); ``data``: the
    rows already read (an ensemble's member), else they are read once the output directory is settled."""
    from transformers import set_seed

    source = recipe.source
    stage = TrainerStage("rm", training_args, recipe, script_args.if_output_exists, what="reward model")
    if (recovered := stage.begin()) is not None:
        return recovered
    data = data or load_rm_data(script_args, training_args, source)
    train_rows, eval_rows = data.train_rows, data.eval_rows
    demo_prompts, demo_responses = data.demo_prompts, data.demo_responses

    tokenizer = stage_tokenizer(model_path, script_args, model_args, source, training_args.trust_remote_code)
    cap_max_length(training_args, model_path, source, training_args.trust_remote_code)
    train_dataset = tokenize_rankings(train_rows, tokenizer, training_args.max_length, f"{source}: train rankings")
    eval_dataset = None
    if eval_rows:
        eval_dataset = tokenize_rankings(eval_rows, tokenizer, training_args.max_length, f"{source}: eval rankings")

    set_seed(training_args.seed)  # the new score head is random: seed it
    model = load_sequence_classifier(model_path, model_args, training_args.trust_remote_code, source=source)
    model.config.pad_token_id = tokenizer.pad_token_id

    callbacks = stage.start_run()  # the dashboards' run starts once every input is checked
    trainer = build_trainer_class()(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=RankingCollator(pad_token_id=tokenizer.pad_token_id),
        callbacks=callbacks,
        peft_config=lora_config(
            model_args, "SEQ_CLS", source=source, trust_remote_code=training_args.trust_remote_code
        ),
    )
    metrics = stage.train(trainer)
    accelerator = trainer.accelerator
    metrics["train_rankings"] = len(train_dataset)

    if eval_dataset is not None:
        held_out = trainer.evaluate()
        metrics.update(held_out)
        logger.info(
            f"held-out pairwise accuracy {held_out['eval_pairwise_accuracy']:.3f}, Kendall's tau "
            f"{held_out['eval_kendall_tau']:.3f} ({held_out['eval_num_rankings']} rankings, "
            f"{held_out['eval_num_comparisons']} comparisons)"
        )

    # LoRA: merged first, so that the shift is measured on (and stored in) the model that is saved
    final_model = merge_adapter(accelerator.unwrap_model(trainer.model))
    normalization = {"shift": 0.0, "std": None, "num_demonstrations": 0}
    if demo_prompts:
        normalization = demonstration_shift(
            final_model, tokenizer, demo_prompts, demo_responses, script_args.scoring_batch_size
        )
        logger.info(
            f"reward shift {normalization['shift']:+.4f}: the mean raw reward of {normalization['num_demonstrations']} "
            f"demonstrations ({script_args.demonstrations_dataset}); stored with the model so they average 0"
        )
    final_model.config.reward_shift = normalization["shift"]
    metrics["reward_shift"] = normalization["shift"]
    if eval_rows and script_args.gold_labeler:
        metrics.update(
            gold_accuracy(
                final_model, tokenizer, eval_rows, script_args.gold_labeler, script_args.scoring_batch_size, source
            )
        )
        logger.info(
            f"held-out pairwise accuracy against {metrics['gold_labeler']}: "
            f"{metrics['eval_gold_pairwise_accuracy']:.3f}"
            f" (against the data's labels: {metrics['eval_data_pairwise_accuracy']:.3f}; {metrics['gold_labeler']} "
            f"itself agrees with those labels on {metrics['eval_gold_agrees_with_data']:.3f})"
        )

    if trainer.is_world_process_zero():
        atomic_write_json(
            Path(training_args.output_dir) / NORMALIZATION_FILE,
            {
                **normalization,
                "dataset": script_args.demonstrations_dataset,
                "note": "score_responses() returns raw reward - shift, so the demonstrations average 0",
            },
        )
    stage.finish(
        trainer,
        metrics,
        tokenizer=tokenizer,
        model=final_model,
        card=dict(
            title="reward model, InstructGPT step 2",
            trainer="instructgpt on TRL's `RewardTrainer`, with InstructGPT's K-way ranking loss",
            kind="reward",
            base_model=model_path,
            datasets=script_args.dataset_names,
            example=train_rows[0]["prompt"],
            example_response=train_rows[0]["responses"][0],
            summary="A reward model: a sequence classifier with one output that scores a response to a prompt, "
            "trained on labelers' K-way rankings with InstructGPT's loss over all C(K, 2) pairs of a prompt. Scores "
            "are shifted by the stored `config.reward_shift` (also in `reward_normalization.json`) so that "
            "demonstrations score 0 on average; `instructgpt.modeling.reward.score_responses` applies it.",
            settings={
                "learning_rate": training_args.learning_rate,
                "epochs": training_args.num_train_epochs,
                "train rankings": len(train_dataset),
            },
            results={
                "reward shift": normalization["shift"],
                "held-out pairwise accuracy": metrics.get("eval_pairwise_accuracy"),
                "held-out Kendall's tau": metrics.get("eval_kendall_tau"),
                "held-out pairwise accuracy against the gold judge": metrics.get("eval_gold_pairwise_accuracy"),
            },
        ),
    )
    return metrics


# --------------------------------------------------------------------------------------------------------------
# Ensembles
# --------------------------------------------------------------------------------------------------------------


def bootstrap_rows(rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """A bootstrap resample of the training rankings: as many as there are, drawn uniformly with replacement
    (Efron 1979), so each member sees about 63% of the distinct rankings, some of them more than once."""
    return random.Random(seed).choices(rows, k=len(rows))


def member_settings(
    script_args: RMScriptArguments, training_args: Any, recipe: Recipe, index: int
) -> tuple[RMScriptArguments, Any, Recipe]:
    """The recipe of member ``index``: its own folder under ``output_dir/members/``, and ``seed + index`` where the
    ensemble's diversity has `seed`. Members always resume (the ensemble's folder was already settled), never push
    (the finished ensemble is pushed once), and log as their own dashboard run."""
    member_dir = str(Path(training_args.output_dir) / "members" / str(index))
    args = copy.deepcopy(training_args)
    args.output_dir = member_dir
    if "seed" in script_args.ensemble_diversity:
        args.seed = training_args.seed + index
    if training_args.run_name:
        args.run_name = f"{training_args.run_name}-member-{index}"
    member_args = dataclasses.replace(script_args, ensemble_size=1, if_output_exists="resume")
    data = {**recipe.data, "output_dir": member_dir, "seed": args.seed, "ensemble_size": 1}
    return member_args, args, Recipe(path=recipe.path, stage=recipe.stage, data=data, origin=recipe.origin)


def evaluate_ensemble(output_dir: str, rows: list[dict[str, Any]], batch_size: int, source: str) -> dict[str, float]:
    """Held-out pairwise accuracy of the ensemble under each aggregation, and the members' mean disagreement: the
    members score the held-out responses once, and each aggregation is applied to those scores."""
    model, tokenizer, _ = load_reward_model(output_dir, key="output_dir", source=source)
    prompts = [row["prompt"] for row in rows for _ in row["responses"]]
    responses = [response for row in rows for response in row["responses"]]
    members = torch.tensor(score_members(model, tokenizer, prompts, responses, batch_size=batch_size))
    metrics = {
        f"eval_{aggregation}_pairwise_accuracy": rankings_agreement(
            aggregate_rewards(members, aggregation, model.std_coef), rows
        )["pairwise_accuracy"]
        for aggregation in AGGREGATIONS
    }
    metrics["eval_member_disagreement"] = disagreement(members).mean().item()
    return metrics


def train_ensemble(
    script_args: RMScriptArguments, training_args: Any, model_args: Any, recipe: Recipe, model_path: str
) -> dict[str, Any]:
    """``ensemble_size`` reward models, one after another, each a complete run of :func:`train_reward_model` in
    ``output_dir/members/<i>`` (so each resumes, and is normalized so the demonstrations average 0 for it), then
    the manifest that makes the folder load as one reward model (:mod:`instructgpt.modeling.ensemble`), the
    shared tokenizer, the card, and the marker, last.

    An interrupted ensemble resumes where it stopped: finished members are kept, the interrupted one resumes
    from its checkpoint. ``if_output_exists`` applies to the ensemble's folder as a whole.
    """
    source, out = recipe.source, Path(training_args.output_dir)
    unknown = [d for d in script_args.ensemble_diversity if d not in ENSEMBLE_DIVERSITY]
    if unknown or not script_args.ensemble_diversity:
        raise InstructGPTError(
            f"{source}: `ensemble_diversity`: {'unknown source ' + repr(unknown[0]) if unknown else 'empty'}; use "
            f"any of {', '.join(ENSEMBLE_DIVERSITY)}"
        )
    prepare_output_dir(out, script_args.if_output_exists, source, stage="rm")
    data = load_rm_data(script_args, training_args, source)
    state = process_state()
    mark_started(out, "rm")
    push = take_push_to_hub(training_args)
    members: list[dict[str, Any]] = []
    for index in range(script_args.ensemble_size):
        member_args, args, member_recipe = member_settings(script_args, training_args, recipe, index)
        rows = data.train_rows
        if "bootstrap" in script_args.ensemble_diversity:
            rows = bootstrap_rows(rows, training_args.seed + index)
        if is_complete(args.output_dir):
            logger.info(f"ensemble member {index}: finished in {args.output_dir}; kept")
            metrics = read_marker(args.output_dir).get("metrics", {})
        else:
            logger.info(f"ensemble member {index + 1} of {script_args.ensemble_size} ({args.output_dir})")
            metrics = train_reward_model(
                member_args, args, model_args, member_recipe, model_path, dataclasses.replace(data, train_rows=rows)
            )
        members.append(metrics)

    manifest = EnsembleManifest(
        members=tuple(f"members/{i}" for i in range(script_args.ensemble_size)),
        diversity=tuple(script_args.ensemble_diversity),
        aggregation=script_args.ensemble_aggregation,
        std_coef=script_args.ensemble_std_coef,
    )
    metrics: dict[str, Any] = {
        "ensemble_size": script_args.ensemble_size,
        "member_reward_shifts": [m.get("reward_shift") for m in members],
    }
    if state.is_main_process:
        with translating(f"rm saving the ensemble to {out}"):
            load_tokenizer(str(out / manifest.members[0]), key="output_dir", source=source).save_pretrained(out)
            atomic_write_json(out / ENSEMBLE_FILE, manifest.to_json())
        if data.eval_rows:
            metrics["member_eval_pairwise_accuracy"] = [m.get("eval_pairwise_accuracy") for m in members]
            metrics.update(evaluate_ensemble(str(out), data.eval_rows, script_args.scoring_batch_size, source))
            metrics["eval_pairwise_accuracy"] = metrics[f"eval_{manifest.aggregation}_pairwise_accuracy"]
            each = [f"{a:.3f}" for a in metrics["member_eval_pairwise_accuracy"] if a is not None]
            logger.info(
                "ensemble held-out pairwise accuracy: "
                + ", ".join(f"{a} {metrics[f'eval_{a}_pairwise_accuracy']:.3f}" for a in AGGREGATIONS)
                + f"; members {', '.join(each)}; mean disagreement {metrics['eval_member_disagreement']:.3f}"
            )
        with translating(f"rm saving the ensemble to {out}"):
            write_model_card(
                out,
                stage="rm",
                title=f"reward-model ensemble of {script_args.ensemble_size}, InstructGPT step 2",
                trainer="instructgpt on TRL's `RewardTrainer`, with InstructGPT's K-way ranking loss",
                kind="reward",
                base_model=model_path,
                datasets=script_args.dataset_names,
                example=data.train_rows[0]["prompt"],
                example_response=data.train_rows[0]["responses"][0],
                summary=f"An ensemble of {script_args.ensemble_size} reward models (members/<i>, each with its own "
                f"shift so demonstrations average 0 for it), differing by {' and '.join(manifest.diversity)}. "
                "`instructgpt.modeling.reward.load_reward_model` loads the folder as one reward model whose score "
                f"is the `{manifest.aggregation}` of the members' (Coste et al. 2023).",
                settings={"members": script_args.ensemble_size, "diversity": ", ".join(manifest.diversity)},
                results={k: v for k, v in metrics.items() if k.startswith("eval_") and isinstance(v, float)},
            )
    finish_output(
        out,
        "rm",
        recipe.data,
        metrics,
        what="reward-model ensemble",
        is_main_process=state.is_main_process,
        wait_for_everyone=state.wait_for_everyone,
        push=push,
        weights=False,
    )
    return metrics


def arguments() -> tuple[type, ...]:
    """The dataclasses an rm recipe fills: the script arguments, TRL's ``RewardConfig`` and ``ModelConfig``."""
    from trl import ModelConfig, RewardConfig

    return (RMScriptArguments, RewardConfig, ModelConfig)


def parse_args(argv: list[str] | None = None) -> tuple[list[Any], Recipe]:
    """``RECIPE.yaml [--key value ...]`` as the stage's dataclass instances and the recipe."""
    return parse_stage_args(argv, "rm", arguments(), prog="instructgpt-rm", description=__doc__)


def run(args: StageArgs) -> dict[str, Any]:
    """Run the stage from its parsed recipe; returns its final metrics."""
    return run_rm(*args.parts, args.recipe)


def main(argv: list[str] | None = None) -> None:
    stage_main("rm", arguments, run, argv, prog="instructgpt-rm", description=__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
