"""How well scores agree with a ranking: pairwise accuracy and Kendall's tau (reward models, labelers)."""

from __future__ import annotations

import torch


def ranking_agreement(rewards: torch.Tensor, num_responses: torch.Tensor) -> torch.Tensor:
    """Per ranking: ``[concordant pairs, pairs, Kendall's tau]`` of the rewards against the labeler's order.

    Row p of ``rewards`` is best first, so pair :math:`i < j` is concordant when :math:`r_i > r_j` and discordant
    when :math:`r_i < r_j`; a tie in reward is neither. Kendall's tau (tau-a, the labeler's order being strict) is
    :math:`(C - D) / \\binom{K}{2}`; pairwise accuracy over a dataset is :math:`\\sum C / \\sum \\binom{K}{2}`.
    """
    k_max = rewards.shape[1]
    idx = torch.arange(k_max, device=rewards.device)
    valid = idx.unsqueeze(0) < num_responses.unsqueeze(1)
    pairs = (idx.unsqueeze(1) < idx.unsqueeze(0)).unsqueeze(0) & valid.unsqueeze(2) & valid.unsqueeze(1)
    diffs = rewards.unsqueeze(2) - rewards.unsqueeze(1)
    concordant = ((diffs > 0) & pairs).sum(dim=(1, 2)).to(rewards.dtype)
    discordant = ((diffs < 0) & pairs).sum(dim=(1, 2)).to(rewards.dtype)
    total = pairs.sum(dim=(1, 2)).to(rewards.dtype)
    tau = (concordant - discordant) / total.clamp(min=1)
    return torch.stack([concordant, total, tau], dim=1)


def summarize_agreement(stats: torch.Tensor) -> dict[str, float]:
    """Dataset-level metrics from the stacked per-ranking rows of :func:`ranking_agreement`."""
    stats = stats.double()
    return {
        "pairwise_accuracy": (stats[:, 0].sum() / stats[:, 1].sum().clamp(min=1)).item(),
        "kendall_tau": stats[:, 2].mean().item(),
        "num_rankings": int(stats.shape[0]),
        "num_comparisons": int(stats[:, 1].sum().item()),
    }


def pairwise_accuracy(predicted: list[list[float]], target: list[list[float]]) -> tuple[int, int]:
    """``(agreeing pairs, pairs)``: over the responses of each prompt, the pairs that ``target`` orders strictly
    (its ties are skipped) and ``predicted`` orders the same way (a predicted tie does not agree).

    Used to score a reward model against a judge other than the one that labelled its data, such as the tiny
    world's noiseless rubric on held-out rankings that a noisy labeler made.
    """
    agree = total = 0
    for scores, gold in zip(predicted, target, strict=True):
        for i in range(len(gold)):
            for j in range(i + 1, len(gold)):
                if gold[i] == gold[j]:
                    continue
                total += 1
                agree += (scores[i] - scores[j]) * (gold[i] - gold[j]) > 0
    return agree, total


class RankingAgreementEval:
    """A mixin for a transformers ``Trainer`` whose evaluation scores whole rankings (the RM and Plackett-Luce DPO).

    The trainer's loss appends one :func:`ranking_agreement` tensor per evaluation batch to ``self._ranking_stats``
    (gathered across processes); this evaluation loop starts that list empty and adds :func:`summarize_agreement`
    over every ranking it saw (pairwise accuracy, Kendall's tau) to the usual metrics. List it before the trainer
    class: ``class MyTrainer(RankingAgreementEval, RewardTrainer)``.
    """

    _ranking_stats: list[torch.Tensor]

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        """The usual loop, plus pairwise accuracy and Kendall's tau over all the rankings it saw."""
        self._ranking_stats = []
        output = super().evaluation_loop(  # type: ignore[misc]
            dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
        )
        if self._ranking_stats:
            summary = summarize_agreement(torch.cat(self._ranking_stats))
            output.metrics.update({f"{metric_key_prefix}_{k}": v for k, v in summary.items()})
        return output
