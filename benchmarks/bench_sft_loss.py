"""SFT step time: TRL's own loss path against the project's former loss override, on the same model and batches.

    python benchmarks/bench_sft_loss.py                 # the tiny world's recipe, 120 optimizer steps each
    python benchmarks/bench_sft_loss.py --steps 300 --threads 1

The SFT stage trains with ``SFTTrainer``'s own ``compute_loss``: in TRL 1.16 a fused LM head that projects only the
response positions, in tiles, and also computes per-token entropy and top-1 accuracy for its logs. That keeps the
``(batch, length, vocab)`` logits out of memory, which matters for large vocabularies on GPUs, and it is what makes
``loss_type``, liger kernels and the MoE auxiliary loss apply. Before, the stage replaced it with a plain forward and
:func:`instructgpt.losses.masked_token_nll`. Both compute the same loss (``tests/integration/test_sft.py`` checks it).

One process, the same initial weights, the same data order and seed; each contender trains ``--steps`` optimizer
steps, best of ``--repeats`` timings. It prints seconds per step for both, their ratio, and the last loss of each.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from common import REPO


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(REPO / "recipes/tiny/sft.yaml"))
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    return parser.parse_args()


def override_trainer():
    """The former stage's trainer: ``SFTTrainer`` with a plain forward and ``masked_token_nll``."""
    import torch
    from trl import SFTTrainer

    from instructgpt.losses import masked_token_nll

    class OverrideSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs["labels"]
            outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False)
            loss = masked_token_nll(outputs.logits, labels, num_items_in_batch=num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            with torch.no_grad():
                mask = labels[:, 1:] != -100
                correct = (outputs.logits[:, :-1].argmax(-1) == labels[:, 1:]) & mask
                mode = "train" if self.model.training else "eval"
                self._metrics[mode]["mean_token_accuracy"].append((correct.sum() / mask.sum().clamp(min=1)).item())
            return (loss, outputs) if return_outputs else loss

    return OverrideSFTTrainer


def train(trainer_cls, args: argparse.Namespace, output_dir: Path) -> tuple[float, float]:
    """Seconds per optimizer step (after one warm-up step) and the last logged loss."""
    from transformers import AutoModelForCausalLM, TrainerCallback, set_seed

    from instructgpt.data.formats import load_demonstrations
    from instructgpt.modeling import load_tokenizer
    from instructgpt.stages.sft import parse_args

    (script, training, model_args), _ = parse_args(
        [
            args.recipe,
            "--output_dir",
            str(output_dir),
            "--report_to",
            "none",
            "--max_steps",
            str(args.steps + 1),
            "--eval_strategy",
            "no",
            "--save_strategy",
            "no",
            "--logging_steps",
            str(args.steps + 1),
            "--disable_tqdm",
            "true",
        ]
    )
    set_seed(training.seed)
    tokenizer = load_tokenizer(model_args.model_name_or_path, prompt_template=script.prompt_template)
    data = load_demonstrations(
        script.dataset_name, config=None, split="train", key="dataset_name", source="bench", limit=None
    )
    model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path)
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *_, **__):
            times.append(time.perf_counter())

    trainer = trainer_cls(
        model=model, args=training, train_dataset=data, processing_class=tokenizer, callbacks=[Clock()]
    )
    result = trainer.train()
    times.append(time.perf_counter())
    return (times[-1] - times[1]) / (len(times) - 2), result.training_loss


def main() -> None:
    args = parse()
    os.chdir(REPO)  # the tiny recipes name their data relative to the repository
    import torch
    from trl import SFTTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    contenders = {"trl_loss": SFTTrainer, "override": override_trainer()}
    best: dict[str, float] = {}
    losses: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, cls in contenders.items():
                seconds, loss = train(cls, args, Path(tmp) / f"{name}-{repeat}")
                best[name] = min(best.get(name, float("inf")), seconds)
                losses[name] = loss
    for name in contenders:
        print(f"{name:10s} {1000 * best[name]:7.1f} ms/step  mean training loss {losses[name]:.4f}")
    print(
        f"TRL's loss path takes {best['trl_loss'] / best['override']:.2f}x the time per step of the override "
        f"({args.steps} steps, best of {args.repeats}, {torch.get_num_threads()} threads)"
    )


if __name__ == "__main__":
    main()
