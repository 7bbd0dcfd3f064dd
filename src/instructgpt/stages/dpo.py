"""DPO, the alternative to steps 2 and 3 of InstructGPT: the SFT policy trained directly on the preference data,
wrapping TRL's ``DPOTrainer``.

    instructgpt-dpo recipes/tiny/dpo.yaml [--key value ...]
    accelerate launch --config_file accelerate_config.yaml -m instructgpt recipes/tiny/dpo.yaml

Direct Preference Optimization (Rafailov et al. 2023) optimizes the same KL-regularised objective as PPO, with no
reward model and no sampling: the math is in :mod:`instructgpt.losses.dpo`.

Models: the policy starts from the SFT model (``model_name_or_path``), and the **reference** :math:`\\pi_{ref}` is
that same SFT model, frozen. Without LoRA, TRL loads a second copy of it (``ref_model=None``: TRL reloads the path
the policy came from). With LoRA (``use_peft: true``), there is no second copy: the reference is the adapter-free
base, which TRL obtains by disabling the adapter for the reference forward pass (``use_adapter(model, None)``).

Data, one ranking per row, read by :func:`instructgpt.data.rankings.load_rankings` like the reward model's:

- rankings: ``prompt`` and ``responses`` (best first), optionally ``scores``; this is what ``instructgpt collect``
  writes (``rankings.jsonl``);
- pairs, TRL's format: ``prompt``/``chosen``/``rejected`` (a K = 2 ranking), optionally scored;
- UltraFeedback's: ``instruction`` and rated ``completions``.

Ties are dropped (a strict order is needed, :func:`instructgpt.data.rankings.strict_order`). Prompts are
conversational, so the tokenizer's chat template (or the ``prompt_template`` one, for GPT-2) renders them exactly as
SFT trained and as the policy is sampled; the loss falls on the response tokens only.

``ranking_loss`` says how a ranking of K responses is trained on:

- ``pairs`` (default): every ranking becomes its :math:`\\binom{K}{2}` (chosen, rejected) pairs, and TRL's
  ``DPOTrainer`` trains on them as it is (its ``loss_type`` and every other option apply);
- ``plackett_luce``: every ranking stays one example whose K responses are forwarded together, and the loss is the
  listwise Plackett-Luce form of DPO (:func:`instructgpt.losses.plackett_luce_dpo_loss`); TRL's trainer is kept
  for everything else (model and reference set-up, LoRA, logging, checkpoints), with the collator and the loss
  replaced.

The output is a causal LM like SFT's (with LoRA: merged, the adapter in ``output_dir/adapter``), so ``instructgpt
eval``, ``generate`` and the next stages load it as they load the SFT model.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from instructgpt.arguments import ScriptArguments
from instructgpt.data import DataError
from instructgpt.data.formats import Prompt
from instructgpt.data.padding import pad_sequences
from instructgpt.data.rankings import hold_out_by_prompt, load_rankings
from instructgpt.infra.entrypoint import stage_main
from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.log import get_logger
from instructgpt.infra.parser import Recipe, StageArgs, parse_stage_args, required
from instructgpt.infra.trainer_stage import TrainerStage
from instructgpt.losses import plackett_luce_dpo_loss, ranking_pairs, unflatten_rewards
from instructgpt.metrics.ranking import RankingAgreementEval, ranking_agreement
from instructgpt.modeling import cap_max_length, check_model_path, lora_config, model_init_kwargs, stage_tokenizer
from instructgpt.modeling.loading import load_causal_lm

logger = get_logger(__name__)

RankingLoss = Literal["pairs", "plackett_luce"]


@dataclass
class DPOScriptArguments(ScriptArguments):
    ranking_loss: RankingLoss = field(
        default="pairs",
        metadata={
            "help": "How a ranking of K responses is trained on: `pairs` expands it into all C(K, 2) (chosen, "
            "rejected) pairs for TRL's DPO loss; `plackett_luce` keeps it whole and uses the listwise Plackett-Luce "
            "form of DPO (Rafailov et al. 2023, appendix A.3). The same for K = 2 (pair data)."
        },
    )
    eval_fraction: float = field(
        default=0.0,
        metadata={
            "range": "[0, 1)",  # 0: no held-out split
            "help": "Without `eval_dataset_name` or `dataset_test_split`, hold out this fraction of the prompts "
            "(all rankings of a prompt go to the same side, as for the reward model) for the held-out DPO loss and "
            "the accuracy of the implicit reward.",
        },
    )
    score_key: str = field(
        default="fine-grained_score",
        metadata={
            "help": "UltraFeedback-style data (`instruction` + `completions`): the completion field that rates it."
        },
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={
            "range": ">= 1",
            "help": "Cut each prompt to its last N tokens (the turn being answered stays, the oldest context goes) "
            "before `max_length` applies to prompt + response. TRL's DPOConfig had this key until TRL 1.0 (keeping "
            "the prompt's end by default, as here); instructgpt does it.",
        },
    )


# --------------------------------------------------------------------------------------------------------------
# Data: rankings as TRL's conversational pairs, or as whole tokenized rankings
# --------------------------------------------------------------------------------------------------------------


def _messages(prompt: Prompt) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def _answer(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def rankings_to_pairs(rows: list[dict[str, Any]]) -> Any:
    """Every ranking's :math:`\\binom{K}{2}` pairs in TRL's conversational preference format
    (``prompt`` turns, ``chosen``/``rejected`` assistant turns), ranking by ranking."""
    import datasets

    pairs = [
        {
            "prompt": _messages(row["prompt"]),
            "chosen": _answer(row["responses"][i]),
            "rejected": _answer(row["responses"][j]),
        }
        for row in rows
        for i, j in ranking_pairs(len(row["responses"]))
    ]
    return datasets.Dataset.from_list(pairs)


def rankings_to_dataset(rows: list[dict[str, Any]]) -> Any:
    """Rankings as a ``datasets.Dataset`` of conversational ``prompt`` and ``responses`` (best first)."""
    import datasets

    return datasets.Dataset.from_list(
        [{"prompt": _messages(r["prompt"]), "responses": list(r["responses"])} for r in rows]
    )


def _chat_ids(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> list[int]:
    ids = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
    )
    return list(ids)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenize_ranking(example: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """``prompt_ids`` and the K ``response_ids`` of one ranking, as TRL tokenizes a conversational pair.

    The prompt is rendered with the generation prompt, each prompt + response as a whole conversation; a response's
    tokens start where the two renderings diverge (at the end of the prompt for a template whose prompt rendering
    is a prefix of the conversation's, as SFT's are), the same rule for all K responses.
    """
    prompt_ids = _chat_ids(tokenizer, example["prompt"], add_generation_prompt=True)
    full = [_chat_ids(tokenizer, example["prompt"] + _answer(text)) for text in example["responses"]]
    prompt_len = min(_common_prefix(prompt_ids, ids) for ids in full)
    return {"prompt_ids": prompt_ids[:prompt_len], "response_ids": [ids[prompt_len:] for ids in full]}


@dataclass
class RankingPreferenceCollator:
    """A batch of P rankings as one right-padded batch of :math:`\\sum_p K_p` prompt + response sequences.

    Sequences go ranking by ranking, best first inside each; ``completion_mask`` marks the response tokens (as
    TRL's ``DataCollatorForPreference`` marks chosen/rejected), ``num_responses`` (shape ``(P,)``) says which rows
    belong to which ranking. Sequences longer than ``max_length`` keep their start (TRL's ``keep_start``).
    ``num_responses`` comes first: transformers' ``Trainer`` reads the batch size from the first tensor.
    """

    pad_token_id: int
    max_length: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences, masks = [], []
        for example in examples:
            prompt = example["prompt_ids"]
            for response in example["response_ids"]:
                ids, mask = prompt + response, [0] * len(prompt) + [1] * len(response)
                if self.max_length is not None:
                    ids, mask = ids[: self.max_length], mask[: self.max_length]
                sequences.append(ids)
                masks.append(mask)
        input_ids, attention_mask = pad_sequences(sequences, self.pad_token_id, side="right")
        completion_mask, _ = pad_sequences(masks, 0, side="right")
        num_responses = torch.tensor([len(example["response_ids"]) for example in examples], dtype=torch.long)
        return {
            "num_responses": num_responses,
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "completion_mask": completion_mask,
        }


# --------------------------------------------------------------------------------------------------------------
# The trainer: TRL's DPOTrainer, with whole rankings and the Plackett-Luce loss when asked
# --------------------------------------------------------------------------------------------------------------


def cut_prompts(dataset: Any, max_prompt_length: int | None, name: str) -> Any:
    """Tokenized prompts (``prompt_ids``) cut to their last ``max_prompt_length`` tokens, as TRL's DPO did by default
    before TRL 1.0 (its ``truncation_mode="keep_end"`` for prompts).

    The end holds the turn being answered and the generation prompt, so it is the oldest context that goes. Cutting
    the prompt first leaves room in ``max_length`` for the responses, which TRL's collator would otherwise cut.
    """
    if max_prompt_length is None:
        return dataset
    longer = sum(len(ids) > max_prompt_length for ids in dataset["prompt_ids"])
    if longer:
        logger.info(
            f"{name}: {longer} of {len(dataset)} prompts are longer than max_prompt_length={max_prompt_length}; "
            f"each keeps its last {max_prompt_length} tokens"
        )
    return dataset.map(
        lambda example: {"prompt_ids": example["prompt_ids"][-max_prompt_length:]},
        desc=f"Cutting {name} prompts to max_prompt_length",
    )


def build_trainer_class(ranking_loss: RankingLoss, max_prompt_length: int | None = None):
    """TRL's ``DPOTrainer`` (``pairs``), or a subclass that trains on whole rankings (``plackett_luce``).

    The subclass replaces the dataset preparation (:func:`tokenize_ranking`), the collator
    (:class:`RankingPreferenceCollator`) and the loss; the reference log-probs come from TRL's own
    ``compute_ref_log_probs`` (reference model, or the adapter disabled under LoRA), and logging, checkpointing and
    evaluation stay TRL's. Defined lazily so importing this module does not import TRL.
    """
    from trl import DPOTrainer

    class PairDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            return cut_prompts(dataset, max_prompt_length, dataset_name)

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            """Evaluation needs the loss and the logged metrics only; TRL would recompute full logits for
            ``compute_metrics`` (a deprecated path) that this stage never uses."""
            return super().prediction_step(model, inputs, True, ignore_keys)

    if ranking_loss == "pairs":
        return PairDPOTrainer

    class PlackettLuceDPOTrainer(RankingAgreementEval, PairDPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if "responses" not in dataset.column_names:
                raise DataError(
                    f"{dataset_name} dataset: expected rankings (`prompt`, `responses`), see rankings_to_dataset"
                )
            dataset = dataset.map(
                tokenize_ranking,
                fn_kwargs={"tokenizer": self._tokenizer},
                remove_columns=dataset.column_names,
                desc=f"Tokenizing {dataset_name} rankings",
            )
            dataset = cut_prompts(dataset, max_prompt_length, dataset_name)
            if args.max_length is not None:  # as TRL: a prompt that fills max_length leaves no response token
                dataset = dataset.filter(lambda example: len(example["prompt_ids"]) < args.max_length)
            return dataset

        def _set_signature_columns_if_needed(self):
            if self._signature_columns is None:
                self._signature_columns = ["prompt_ids", "response_ids"]

        def _sequence_logps(self, model, inputs):
            """Summed log-probs of every response under the policy (with gradients), plus the forward's outputs."""
            labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
            outputs = model(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                labels=labels,
                use_cache=False,
                fused_lm_head=True,
            )
            seq_len = inputs["completion_mask"].size(1) - 1
            # the fused head scores only labelled positions (0 elsewhere); PEFT prompt tuning prepends positions
            return outputs.log_probs[:, -seq_len:].sum(dim=1), outputs

        def _compute_loss(self, model, inputs, return_outputs):
            mode = "train" if self.model.training else "eval"
            num_responses = inputs["num_responses"]
            sequences = {k: inputs[k] for k in ("input_ids", "attention_mask", "completion_mask")}
            logps, outputs = self._sequence_logps(model, sequences)
            # TRL's reference pass (it splits its result in two halves for chosen/rejected: rejoined here)
            ref_logps = torch.cat(self.compute_ref_log_probs(self.ref_model or self.model, sequences))
            policy = unflatten_rewards(logps, num_responses)
            reference = unflatten_rewards(ref_logps.to(logps.dtype), num_responses)
            loss = plackett_luce_dpo_loss(policy, reference, self.beta, num_responses)
            if self.aux_loss_enabled:
                loss = loss + self.router_aux_loss_coef * outputs.aux_loss
            self._log_ranking_metrics(mode, policy.detach(), reference, num_responses, inputs)
            return (loss, outputs) if return_outputs else loss

        def _log_ranking_metrics(self, mode, policy, reference, num_responses, inputs):
            """TRL's DPO metrics for a ranking: `chosen` is the best response, `rejected` the worst; the accuracy
            is the share of all ranked pairs that the implicit reward orders as the labelers did."""
            gather = self.accelerator.gather_for_metrics
            rewards = self.beta * (policy - reference)
            rows = torch.arange(len(num_responses), device=rewards.device)
            best, worst = rewards[:, 0], rewards[rows, num_responses - 1]
            stats = ranking_agreement(rewards.float(), num_responses)  # (P, 3): agreeing pairs, pairs, tau
            totals = gather(stats[:, :2].sum(0, keepdim=True)).sum(0)
            metrics = self._metrics[mode]
            metrics["rewards/chosen"].append(gather(best).mean().item())
            metrics["rewards/rejected"].append(gather(worst).mean().item())
            metrics["rewards/margins"].append(gather(best - worst).mean().item())
            metrics["rewards/accuracies"].append((totals[0] / totals[1].clamp(min=1)).item())
            metrics["rewards/kendall_tau"].append(gather(stats[:, 2]).mean().item())
            metrics["logps/chosen"].append(gather(policy[:, 0]).mean().item())
            metrics["logps/rejected"].append(gather(policy[rows, num_responses - 1]).mean().item())
            if mode == "train":
                tokens = gather(inputs["attention_mask"].sum()).sum().item()
                self._total_train_tokens += tokens // self._tp_size
            metrics["num_tokens"] = [self._total_train_tokens]
            if mode == "eval":
                self._ranking_stats.append(gather(stats).cpu())

    return PlackettLuceDPOTrainer


# --------------------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------------------


def refuse_keys_that_cannot_apply(script_args: DPOScriptArguments, training_args: Any, source: str) -> None:
    """DPOConfig keys this stage would silently ignore are refused, each with the reason."""
    if training_args.model_init_kwargs:
        raise InstructGPTError(
            f"{source}: `model_init_kwargs` does not apply: the stage loads the policy itself from the model keys "
            "(`dtype`, `attn_implementation`, `load_in_4bit`, ...)"
        )
    if script_args.ranking_loss != "plackett_luce":
        return
    defaults = {
        "loss_type": (["sigmoid"], "the Plackett-Luce loss replaces TRL's `loss_type`"),
        "loss_weights": (None, "the Plackett-Luce loss is the only loss"),
        "ld_alpha": (None, "LD-DPO's length weighting is defined for pairs"),
        "use_weighting": (False, "WPO's weights are defined for pairs"),
        "f_divergence_type": ("reverse_kl", "only the reverse KL gives the Plackett-Luce form"),
        "label_smoothing": (0.0, "label smoothing is defined for pairs"),
        "precompute_ref_log_probs": (False, "reference log-probs are computed on the fly for whole rankings"),
        "truncation_mode": ("keep_start", "rankings keep the start of a long sequence"),
    }
    for key, (default, why) in defaults.items():
        if getattr(training_args, key) != default:
            raise InstructGPTError(
                f"{source}: `{key}: {getattr(training_args, key)}` does not apply with `ranking_loss: plackett_luce` "
                f"({why}); remove it or use `ranking_loss: pairs`"
            )


def load_splits(script_args: DPOScriptArguments, seed: int, source: str) -> tuple[list[dict], list[dict] | None]:
    """Training rankings and, if the recipe asks, held-out ones: a split, a second dataset, or a fraction of the
    prompts (all of a prompt's rankings on one side, :func:`instructgpt.data.rankings.hold_out_by_prompt`)."""
    common = {"config": script_args.dataset_config, "source": source, "score_key": script_args.score_key}
    train_rows = load_rankings(
        script_args.dataset,
        key="dataset_name",
        split=script_args.dataset_train_split,
        limit=script_args.max_train_samples,
        **common,
    )
    if script_args.eval_dataset_name or script_args.dataset_test_split:
        if script_args.eval_fraction:
            raise InstructGPTError(
                f"{source}: `eval_fraction` and `eval_dataset_name`/`dataset_test_split` both choose the held-out "
                "rankings; set one"
            )
        name = script_args.eval_dataset_name or script_args.dataset
        key = "eval_dataset_name" if script_args.eval_dataset_name else "dataset_test_split"
        eval_rows = load_rankings(
            name, key=key, split=script_args.dataset_test_split or "test", limit=script_args.max_eval_samples, **common
        )
        return train_rows, eval_rows
    if script_args.eval_fraction:
        return hold_out_by_prompt(
            train_rows, script_args.eval_fraction, seed, limit=script_args.max_eval_samples, source=source
        )
    return train_rows, None


def _as_dataset(rows: list[dict[str, Any]], ranking_loss: RankingLoss) -> Any:
    return rankings_to_pairs(rows) if ranking_loss == "pairs" else rankings_to_dataset(rows)


def _check_nothing_lost(prepared: Any, given: int, what: str, max_length: int | None, source: str) -> int:
    """Say how many examples TRL's preparation dropped (prompts that fill ``max_length``); none left is an error."""
    kept = len(prepared)
    if kept == 0:
        raise DataError(
            f"{source}: every {what} has a prompt of max_length={max_length} tokens or more; nothing to train on"
        )
    if kept < given:
        logger.info(f"{source}: dropped {given - kept} of {given} {what}s whose prompt fills max_length={max_length}")
    return kept


def report_truncation(prepared: Any, max_length: int | None, name: str) -> int:
    """Say how many prompt + response sequences are longer than ``max_length`` (they keep their start, as TRL's
    collator truncates them); returns the count."""
    if max_length is None:
        return 0
    columns = [c for c in ("chosen_ids", "rejected_ids", "response_ids") if c in prepared.column_names]
    count, total = 0, 0
    for example in prepared:
        prompt = len(example["prompt_ids"])
        for column in columns:
            responses = example[column] if column == "response_ids" else [example[column]]
            total += len(responses)
            count += sum(prompt + len(r) > max_length for r in responses)
    if count:
        logger.info(
            f"{name}: {count} of {total} prompt + response sequences are longer than max_length={max_length}; "
            "they are truncated (the start is kept)"
        )
    return count


def run_dpo(script_args: DPOScriptArguments, training_args: Any, model_args: Any, recipe: Recipe) -> dict[str, Any]:
    """Train and save one DPO policy as the recipe describes; returns the final metrics."""

    source = recipe.source
    model_path = check_model_path(model_args.model_name_or_path, "model_name_or_path", source)
    required(script_args.dataset, "dataset_name", source, "rankings or pairs: a .jsonl file or a Hub id")
    required(training_args.output_dir, "output_dir", source)
    refuse_keys_that_cannot_apply(script_args, training_args, source)
    stage = TrainerStage("dpo", training_args, recipe, script_args.if_output_exists, what="DPO policy")
    if (recovered := stage.begin()) is not None:
        return recovered

    train_rows, eval_rows = load_splits(script_args, training_args.seed, source)
    train_dataset = _as_dataset(train_rows, script_args.ranking_loss)
    eval_dataset = _as_dataset(eval_rows, script_args.ranking_loss) if eval_rows else None
    unit = "pair" if script_args.ranking_loss == "pairs" else "ranking"
    if script_args.ranking_loss == "pairs":
        logger.info(f"{len(train_rows)} training rankings expanded into {len(train_dataset)} (chosen, rejected) pairs")

    tokenizer = stage_tokenizer(model_path, script_args, model_args, source, training_args.trust_remote_code)
    cap_max_length(training_args, model_path, source, training_args.trust_remote_code)
    model = load_causal_lm(
        model_path,
        key="model_name_or_path",
        source=source,
        **model_init_kwargs(model_args, trust_remote_code=training_args.trust_remote_code, source=source),
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    training_args.prediction_loss_only = True  # evaluation reports the loss and the logged reward metrics

    callbacks = stage.start_run()  # the dashboards' run starts once every input is checked
    trainer_class = build_trainer_class(script_args.ranking_loss, script_args.max_prompt_length)
    extra = {}
    if script_args.ranking_loss == "plackett_luce":
        extra["data_collator"] = RankingPreferenceCollator(tokenizer.pad_token_id, training_args.max_length)
    trainer = trainer_class(
        model=model,
        ref_model=None,  # the SFT model itself: TRL reloads it, or under LoRA disables the adapter
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
        peft_config=lora_config(
            model_args, "CAUSAL_LM", source=source, trust_remote_code=training_args.trust_remote_code
        ),
        **extra,
    )
    num_train = _check_nothing_lost(trainer.train_dataset, len(train_dataset), unit, training_args.max_length, source)
    report_truncation(trainer.train_dataset, training_args.max_length, f"{source}: train data")
    if eval_dataset is not None:
        _check_nothing_lost(
            trainer.eval_dataset, len(eval_dataset), f"held-out {unit}", training_args.max_length, source
        )

    metrics = stage.train(trainer)
    metrics.update(
        {"ranking_loss": script_args.ranking_loss, "train_rankings": len(train_rows), f"train_{unit}s": num_train}
    )
    if eval_dataset is not None:
        held_out = trainer.evaluate()
        metrics.update(held_out)
        logger.info(
            f"held-out DPO loss {held_out['eval_loss']:.4f}; the implicit reward orders "
            f"{held_out.get('eval_rewards/accuracies', float('nan')):.3f} of the held-out pairs as the labelers did"
        )
    if not all(math.isfinite(v) for v in metrics.values() if isinstance(v, float)):
        bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}
        raise InstructGPTError(
            f"{source}: DPO finished with non-finite metrics {bad}; the output is not marked finished"
        )

    stage.finish(
        trainer,
        metrics,
        tokenizer=tokenizer,
        keep_adapter=True,
        card=dict(
            title="Direct Preference Optimization, in place of InstructGPT's RM + PPO",
            trainer="instructgpt on TRL's `DPOTrainer`",
            kind="policy",
            base_model=model_path,
            datasets=script_args.dataset_names,
            example=train_rows[0]["prompt"],
            summary="A policy: the SFT model trained on preference rankings with DPO (Rafailov et al. 2023), the SFT "
            "model as the frozen reference. "
            + (
                "Each ranking of K responses is trained on as its C(K, 2) pairs."
                if script_args.ranking_loss == "pairs"
                else "Each ranking of K responses is trained on whole, with the Plackett-Luce form of the DPO loss."
            )
            + " Its tokenizer carries the chat template it was trained with.",
            settings={
                "beta": training_args.beta,
                "ranking_loss": script_args.ranking_loss,
                "learning_rate": training_args.learning_rate,
                "epochs": training_args.num_train_epochs,
                "LoRA r": model_args.lora_r if model_args.use_peft else None,
            },
            results={
                "train rankings": len(train_rows),
                "held-out DPO loss": metrics.get("eval_loss"),
                "held-out implicit-reward accuracy": metrics.get("eval_rewards/accuracies"),
            },
        ),
    )
    return metrics


def arguments() -> tuple[type, ...]:
    """The dataclasses a dpo recipe fills: the script arguments, TRL's ``DPOConfig`` and ``ModelConfig``."""
    from trl import DPOConfig, ModelConfig

    return (DPOScriptArguments, DPOConfig, ModelConfig)


def parse_args(argv: list[str] | None = None) -> tuple[list[Any], Recipe]:
    """``RECIPE.yaml [--key value ...]`` as the stage's dataclass instances and the recipe."""
    return parse_stage_args(argv, "dpo", arguments(), prog="instructgpt-dpo", description=__doc__)


def run(args: StageArgs) -> dict[str, Any]:
    """Run the stage from its parsed recipe; returns its final metrics."""
    return run_dpo(*args.parts, args.recipe)


def main(argv: list[str] | None = None) -> None:
    stage_main("dpo", arguments, run, argv, prog="instructgpt-dpo", description=__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
