"""Build the tiny world's data files, deterministically: ``python -m instructgpt.tinyworld.build_data``.

Writes into ``data/tiny/`` (or ``--output_dir``), in TRL's column formats so that a local file and a Hub dataset
are interchangeable in a recipe:

==================  ==========================================  =======================================
file                columns                                     use
==================  ==========================================  =======================================
facts.jsonl         name, color, habitat, food, size            the world's table (export)
corpus.jsonl        text                                        pretraining the base model
sft_train.jsonl     prompt, completion, family, style           SFT demonstrations
sft_eval.jsonl      prompt, completion, family, style           SFT held-out loss
rm_prompts.jsonl    prompt, family                              comparison collection (reward model)
ppo_prompts.jsonl   prompt, family                              PPO rollouts
eval_prompts.jsonl  prompt, family                              held-out evaluation (win rates)
ood_prompts.jsonl   prompt, family, split                       out-of-distribution evaluation
ptx.jsonl           text                                        PPO-ptx pretraining mix
==================  ==========================================  =======================================

How prompts are split (InstructGPT held out its evaluation prompts by user; here by *core* instruction):

1. Every core instruction of the world (template x slots, no prefix) is enumerated, per task family.
2. Evaluation cores are drawn first, per family; no training file contains them, not even as a substring of a
   longer prompt or inside a pretraining quiz sheet.
3. The other sets draw ``prefix + core`` prompts from the remaining cores, pairwise disjoint by prompt string
   (the same core may appear in two training sets behind different prefixes).

4. The out-of-distribution set (:func:`ood_prompts`) is built from what no training file holds: the held-out
   evaluation instructions rewritten with other casing and punctuation (``casing``), string tasks on words outside
   :data:`~instructgpt.tinyworld.world.WORDS` (``new_words``), and arithmetic whose operands are all outside the
   training range 1-6 (``new_operands``). It has its own random generator, so it leaves the other files as they
   were.

Each set mixes the families as :data:`FAMILY_MIX` says. SFT prompts get one demonstration each, in a style
drawn from :data:`instructgpt.tinyworld.demos.STYLE_WEIGHTS`.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from instructgpt.tinyworld.corpus import build_corpus
from instructgpt.tinyworld.demos import demonstrate, pick_style
from instructgpt.tinyworld.world import (
    CREATURES,
    FAMILIES,
    KINDS,
    MAX_OPERAND,
    PREFIXES,
    TEMPLATES,
    Task,
    all_cores,
    make_task,
    parse_prompt,
)

SEED = 1234
SIZES: dict[str, int] = {
    "eval_prompts": 180,
    "sft_train": 2000,
    "sft_eval": 200,
    "rm_prompts": 500,
    "ppo_prompts": 1000,
}
FAMILY_MIX: dict[str, float] = {"arithmetic": 0.3, "fact": 0.3, "string": 0.2, "describe": 0.2}
PREFIX_WEIGHTS = (0.55, 0.15, 0.15, 0.15)  # "", "Question: ", "Please answer: ", "Quick question: "
PTX_FRACTION = 0.25  # ptx.jsonl: a quarter of the corpus's size, drawn afresh from the same generators
OOD_SIZES: dict[str, int] = {"casing": 90, "new_words": 60, "new_operands": 60}
# Everyday words the world never uses: none is in WORDS, a creature, an attribute word or a palindrome.
OOD_WORDS: tuple[str, ...] = (
    "cup",
    "hat",
    "pen",
    "sock",
    "bowl",
    "road",
    "star",
    "wolf",
    "gate",
    "jam",
    "vase",
    "desk",
)
OOD_OPERANDS = range(MAX_OPERAND + 1, 13)  # 7..12: every operand outside the training range 1..6


def family_counts(total: int) -> dict[str, int]:
    """Split ``total`` prompts over the families by :data:`FAMILY_MIX` (largest remainders get the leftovers)."""
    exact = {f: total * FAMILY_MIX[f] for f in FAMILIES}
    counts = {f: int(v) for f, v in exact.items()}
    leftover = total - sum(counts.values())
    for f in sorted(FAMILIES, key=lambda f: exact[f] - counts[f], reverse=True)[:leftover]:
        counts[f] += 1
    return counts


def cores_by_family() -> dict[str, list[Task]]:
    return {family: [t for kind in KINDS[family] for t in all_cores(kind)] for family in FAMILIES}


def _with_prefix(task: Task, prefix: str) -> Task:
    return Task(**{**asdict(task), "prefix": prefix})


def split_prompts(rng: random.Random) -> dict[str, list[Task]]:
    """The prompt sets: evaluation cores first (held out), then the training sets, disjoint by prompt string."""
    sets: dict[str, list[Task]] = {name: [] for name in SIZES}
    for family, cores in cores_by_family().items():
        cores = list(cores)
        rng.shuffle(cores)
        n_eval = family_counts(SIZES["eval_prompts"])[family]
        held_out, remaining = cores[:n_eval], cores[n_eval:]
        sets["eval_prompts"] += [_with_prefix(t, rng.choices(PREFIXES, PREFIX_WEIGHTS)[0]) for t in held_out]

        # Training prompts: walk the remaining cores round-robin, each time behind a prefix not used yet.
        unused = {t.core: list(PREFIXES) for t in remaining}
        queue = list(remaining)
        for name in ("sft_train", "sft_eval", "rm_prompts", "ppo_prompts"):
            need = family_counts(SIZES[name])[family]
            while need:
                if not queue:
                    queue = [t for t in remaining if unused[t.core]]
                    rng.shuffle(queue)
                    if not queue:
                        raise RuntimeError(f"not enough distinct {family} prompts for the requested set sizes")
                task = queue.pop()
                choices = unused[task.core]
                if not choices:
                    continue
                weights = [PREFIX_WEIGHTS[PREFIXES.index(p)] for p in choices]
                prefix = rng.choices(choices, weights)[0]
                choices.remove(prefix)
                sets[name].append(_with_prefix(task, prefix))
                need -= 1
    for tasks in sets.values():
        rng.shuffle(tasks)
    return sets


def demonstrations(tasks: Iterable[Task], rng: random.Random) -> list[dict[str, str]]:
    rows = []
    for task in tasks:
        style = pick_style(rng)
        rows.append(
            {"prompt": task.prompt, "completion": demonstrate(task, style, rng), "family": task.family, "style": style}
        )
    return rows


def quiz_pool(sets: dict[str, list[Task]]) -> list[str]:
    """Questions the pretraining quiz sheets may ask: every core except the held-out evaluation ones."""
    held_out = {t.core for t in sets["eval_prompts"]}
    return sorted({t.core for cores in cores_by_family().values() for t in cores} - held_out)


def recase(prompt: str, rng: random.Random) -> str:
    """The same instruction with other casing and final punctuation, as a new user might type it; the tiny world's
    parser reads it as the same task (it forgives case, whitespace and the final punctuation mark)."""
    body, end = (prompt[:-1], prompt[-1]) if prompt[-1] in ".?!" else (prompt, "")
    casing = rng.choice(("lower", "upper", "first_lower", "title"))
    if casing == "lower":
        body = body.lower()
    elif casing == "upper":
        body = body.upper()
    elif casing == "first_lower":
        body = body[0].lower() + body[1:]
    else:
        body = " ".join(w[:1].upper() + w[1:] for w in body.split(" "))
    end = rng.choice([e for e in ("", ".", "?", "!") if e != end])
    return body + end


def ood_prompts(held_out: list[Task], rng: random.Random) -> list[dict[str, str]]:
    """The out-of-distribution evaluation set: ``casing``, ``new_words`` and ``new_operands`` (module docstring)."""
    rows = []
    for task in rng.sample(held_out, OOD_SIZES["casing"]):
        rows.append({"prompt": recase(task.prompt, rng), "family": task.family, "split": "casing"})
    words = [
        make_task(kind, template, word=word)
        for kind in KINDS["string"]
        for template in range(len(TEMPLATES[kind]))
        for word in OOD_WORDS
    ]
    sums = [
        make_task(kind, template, x=x + y if kind == "sub" else x, y=y)
        for kind in KINDS["arithmetic"]
        for template in range(len(TEMPLATES[kind]))
        for x in OOD_OPERANDS
        for y in OOD_OPERANDS
    ]
    for split, cores in (("new_words", words), ("new_operands", sums)):
        for task in rng.sample(cores, OOD_SIZES[split]):
            prefix = rng.choices(PREFIXES, PREFIX_WEIGHTS)[0]
            rows.append({"prompt": prefix + task.core, "family": task.family, "split": split})
    for row in rows:  # every prompt is one the labeler can judge, and none is a training or held-out prompt as is
        parse_prompt(row["prompt"])
    return rows


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def build(output_dir: str | Path, seed: int = SEED) -> dict[str, int]:
    """Write every data file of the tiny world into ``output_dir``; returns rows per file."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    sets = split_prompts(rng)
    pool = quiz_pool(sets)
    corpus = build_corpus(random.Random(seed + 1), pool)
    ptx = build_corpus(
        random.Random(seed + 2),
        pool,
        entries_per_creature=3,
        notes_per_creature=1,
        arithmetic_mentions=1,
        tables=0,
        entries_per_word=2,
        quiz_sheets=int(500 * PTX_FRACTION),
    )
    demo_rng = random.Random(seed + 3)
    files = {
        "facts.jsonl": [asdict(c) for c in CREATURES],
        "corpus.jsonl": [{"text": d} for d in corpus],
        "sft_train.jsonl": demonstrations(sets["sft_train"], demo_rng),
        "sft_eval.jsonl": demonstrations(sets["sft_eval"], demo_rng),
        "rm_prompts.jsonl": [{"prompt": t.prompt, "family": t.family} for t in sets["rm_prompts"]],
        "ppo_prompts.jsonl": [{"prompt": t.prompt, "family": t.family} for t in sets["ppo_prompts"]],
        "eval_prompts.jsonl": [{"prompt": t.prompt, "family": t.family} for t in sets["eval_prompts"]],
        "ptx.jsonl": [{"text": d} for d in ptx],
        "ood_prompts.jsonl": ood_prompts(sets["eval_prompts"], random.Random(seed + 4)),
    }
    return {name: write_jsonl(output_dir / name, rows) for name, rows in files.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--output_dir", default="data/tiny", help="Where to write the files (default: data/tiny).")
    parser.add_argument("--seed", type=int, default=SEED, help=f"Seed of every random choice (default: {SEED}).")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    counts = build(args.output_dir, args.seed)
    for name, rows in counts.items():
        size = (Path(args.output_dir) / name).stat().st_size
        print(f"{Path(args.output_dir) / name}: {rows} rows, {size / 1024:.0f} KiB")
    styles = Counter(json.loads(line)["style"] for line in (Path(args.output_dir) / "sft_train.jsonl").open())
    print("sft_train styles:", dict(sorted(styles.items())))


if __name__ == "__main__":
    main()
