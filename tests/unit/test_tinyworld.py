"""The tiny world: its parser, its bundled data files (sizes, formats, splits, held-out prompts) and their build."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from helpers import TINY_DATA
from instructgpt.judges import SimulatedLabeler
from instructgpt.tinyworld import (
    CREATURES,
    PREFIXES,
    TEMPLATES,
    VOCABULARY,
    WORDS,
    UnknownPromptError,
    all_cores,
    full_description,
    parse_prompt,
)
from instructgpt.tinyworld.build_data import build
from instructgpt.tinyworld.corpus import ATTRIBUTE_PHRASES
from instructgpt.tinyworld.demos import STYLES, demonstrate

PROMPT_SETS = ("sft_train", "sft_eval", "rm_prompts", "ppo_prompts", "eval_prompts")
TRAINING_FILES = ("sft_train", "sft_eval", "rm_prompts", "ppo_prompts", "corpus", "ptx")
SIZE_RANGES = {
    "sft_train": (1500, 3000),
    "sft_eval": (150, 250),
    "rm_prompts": (400, 600),
    "ppo_prompts": (800, 1500),
    "eval_prompts": (150, 200),
}


def read(name: str) -> list[dict]:
    return [json.loads(line) for line in (TINY_DATA / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------------------------------------------------------
# The world and its parser
# ---------------------------------------------------------------------------------------------------------------


def test_vocabularies_are_disjoint_and_facts_use_them():
    words = [w for values in VOCABULARY.values() for w in values]
    assert len(words) == len(set(words))
    names = {c.name for c in CREATURES}
    assert len(names) == len(CREATURES) == 24
    assert not (names & set(words)) and not (set(WORDS) & set(words)) and not (set(WORDS) & names)
    for c in CREATURES:
        for kind in VOCABULARY:
            assert c.attribute(kind) in VOCABULARY[kind]
    # every value is shared, so facts must be learned per creature
    for kind in VOCABULARY:
        counts = Counter(c.attribute(kind) for c in CREATURES)
        assert min(counts.values()) >= 2, (kind, counts)


def test_every_core_with_every_prefix_parses_back_to_its_task():
    for kind in TEMPLATES:
        for task in all_cores(kind):
            for prefix in PREFIXES:
                parsed = parse_prompt(prefix + task.core)
                assert (parsed.kind, parsed.core, parsed.answer, parsed.prefix) == (
                    task.kind,
                    task.core,
                    task.answer,
                    prefix,
                )


def test_parser_answers():
    assert parse_prompt("What is 17 plus 25?").answer == "42"
    assert parse_prompt("Subtract 8 from 31.").answer == "23"
    assert parse_prompt("What color is the glimmerfox?").answer == "blue"
    assert parse_prompt("Reverse the word lamp.").answer == "pmal"
    assert parse_prompt("Convert river to uppercase.").answer == "RIVER"  # any word, not only the word list
    assert parse_prompt("Which letter does moon end with?").answer == "n"
    describe = parse_prompt("Describe the mossbat.")
    assert (describe.family, describe.creature, describe.answer) == ("describe", "mossbat", "")


def test_parser_forgives_case_whitespace_and_final_punctuation():
    assert parse_prompt("  what   COLOR is the Glimmerfox  ").answer == "blue"
    assert parse_prompt("question: add 2 and 3").answer == "5"


@pytest.mark.parametrize(
    "prompt,match",
    [
        ("Write a haiku about autumn.", "not an instruction of the tiny world"),
        ("What color is the unicorn?", "'unicorn', which is not a creature"),
        ("Reverse the words lamp and tree.", "not an instruction"),
    ],
)
def test_unknown_prompts_are_refused_with_the_prompt_named(prompt, match):
    with pytest.raises(UnknownPromptError, match=match):
        parse_prompt(prompt)


def test_every_demonstration_style_is_correct_for_every_kind():
    labeler = SimulatedLabeler()
    rng = random.Random(0)
    for kind in TEMPLATES:
        tasks = list(all_cores(kind))
        for task in rng.sample(tasks, 5):
            scores = {}
            for style in STYLES:
                response = demonstrate(task, style, rng)
                judgement = labeler.judge(task.prompt, response)
                assert judgement.correct, (task.prompt, style, response, judgement)
                scores[style] = judgement.total
            assert max(scores, key=scores.get) == "concise", (task.prompt, scores)


# ---------------------------------------------------------------------------------------------------------------
# The bundled data files
# ---------------------------------------------------------------------------------------------------------------


def test_data_files_have_their_columns_and_sizes():
    for name, (low, high) in SIZE_RANGES.items():
        rows = read(name)
        assert low <= len(rows) <= high, (name, len(rows))
        expected = {"prompt", "completion", "family", "style"} if name.startswith("sft") else {"prompt", "family"}
        assert all(set(row) == expected for row in rows), name
        assert all(isinstance(row["prompt"], str) and row["prompt"].strip() for row in rows), name
    for name in ("corpus", "ptx"):
        rows = read(name)
        assert rows and all(set(row) == {"text"} and row["text"].strip() for row in rows)
    corpus_bytes = (TINY_DATA / "corpus.jsonl").stat().st_size
    assert 100_000 < corpus_bytes < 2_000_000
    facts = read("facts")
    assert facts == [
        {"name": c.name, "color": c.color, "habitat": c.habitat, "food": c.food, "size": c.size} for c in CREATURES
    ]


def test_every_prompt_parses_and_every_family_is_present():
    for name in PROMPT_SETS:
        rows = read(name)
        families = Counter()
        for row in rows:
            assert parse_prompt(row["prompt"]).family == row["family"], (name, row)
            families[row["family"]] += 1
        assert set(families) == {"arithmetic", "fact", "string", "describe"}
        assert min(families.values()) >= 0.15 * len(rows), (name, families)


def test_every_demonstration_is_judged_correct():
    labeler = SimulatedLabeler()
    for name in ("sft_train", "sft_eval"):
        for row in read(name):
            judgement = labeler.judge(row["prompt"], row["completion"])
            assert judgement.correct, (name, row, judgement)


def test_demonstrations_mix_styles_with_about_a_third_preferred():
    rows = read("sft_train")
    styles = Counter(row["style"] for row in rows)
    assert set(styles) == set(STYLES)
    assert 0.25 < styles["concise"] / len(rows) < 0.4, styles
    # the preferred style is what the labeler scores best on average
    labeler = SimulatedLabeler()
    by_style: dict[str, list[float]] = {}
    for row in rows[:600]:
        by_style.setdefault(row["style"], []).append(labeler.score([row["prompt"]], [row["completion"]])[0])
    means = {s: sum(v) / len(v) for s, v in by_style.items()}
    assert max(means, key=means.get) == "concise", means
    # most non-preferred demonstrations open with "Sure!", so the likeliest first word is not the preferred style's
    openers = Counter(row["completion"].split()[0] for row in rows)
    assert openers.most_common(1)[0][0] == "Sure!", openers.most_common(3)


def test_prompt_sets_are_pairwise_disjoint_and_free_of_duplicates():
    sets = {name: [row["prompt"] for row in read(name)] for name in PROMPT_SETS}
    for name, prompts in sets.items():
        assert len(prompts) == len(set(prompts)), name
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not set(sets[a]) & set(sets[b]), (a, b)


def test_eval_prompts_never_appear_in_any_training_file():
    """Held out by core instruction: not as a prompt, not inside a longer prompt, not in the pretraining text."""
    cores = {parse_prompt(row["prompt"]).core.lower() for row in read("eval_prompts")}
    pattern = re.compile("|".join(re.escape(c) for c in sorted(cores, key=len, reverse=True)))
    for name in TRAINING_FILES:
        for row in read(name):
            for value in row.values():
                if isinstance(value, str):
                    match = pattern.search(value.lower())
                    assert match is None, (name, match and match.group(0), value)
    # and the training prompts' cores are not evaluation cores
    for name in ("sft_train", "sft_eval", "rm_prompts", "ppo_prompts"):
        assert not {parse_prompt(row["prompt"]).core.lower() for row in read(name)} & cores


def test_corpus_states_every_fact_and_never_answers_its_quiz_questions():
    text = "\n".join(row["text"] for row in read("corpus"))
    for c in CREATURES:
        assert full_description(c.name) in text
        for kind, phrases in ATTRIBUTE_PHRASES.items():
            stated = [p.format(n=c.name, v=c.attribute(kind)) for p in phrases]
            assert sum(text.count(sentence) for sentence in stated) >= 5, (c.name, kind)
    for word in WORDS:
        assert f"The word {word} backwards is {word[::-1]}." in text
    quiz_lines = [line for line in text.splitlines() if line.rstrip().endswith("?")]
    assert len(quiz_lines) > 500
    for doc in (row["text"] for row in read("corpus")):
        if any(line.endswith("?") for line in doc.splitlines()):
            lines = [re.sub(r"^\d+\. ", "", line) for line in doc.splitlines()[1:]]
            # a quiz sheet: instructions only, no answer statements after them
            assert all(" is " not in line or line.endswith("?") for line in lines if line), doc


def test_build_is_deterministic_and_matches_the_bundled_files(tmp_path: Path):
    counts = build(tmp_path)
    for name in counts:
        assert (tmp_path / name).read_bytes() == (TINY_DATA / name).read_bytes(), (
            f"data/tiny/{name} differs from what build_data writes; rerun python -m instructgpt.tinyworld.build_data"
        )
