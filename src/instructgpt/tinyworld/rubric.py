"""The tiny world's rubric: a fixed, written-down rule that scores responses as InstructGPT's labelers ranked them.

It is the "human" of the offline world (:mod:`instructgpt.tinyworld`): through the simulated labeler
(:class:`instructgpt.judges.simulated.SimulatedLabeler`, which adds optional noise) it ranks comparisons during
collection and judges evaluation, so the rubric below is fixed before any training and must never be tuned to
results. It knows the world and nothing of the judges: :class:`Rubric` scores one (prompt, response) at a time.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from instructgpt.data import DataError
from instructgpt.data.formats import prompt_text
from instructgpt.tinyworld.world import (
    CREATURE_BY_NAME,
    Task,
    UnknownPromptError,
    answer_sentence,
    attribute_of_word,
    parse_prompt,
)

# ---------------------------------------------------------------------------------------------------------------
# The rubric
# ---------------------------------------------------------------------------------------------------------------

# Weights of the rubric (fixed; documented in Rubric and data/README.md).
ON_TASK_WEIGHT = 10.0  # an attempt at the asked task (InstructGPT: following the instruction comes first)
CORRECT_WEIGHT = 10.0  # a correct answer (on top of ON_TASK_WEIGHT)
COMPLETENESS_WEIGHT = 2.0  # descriptions: 0.5 per attribute of the creature stated
EXTRA_WORD_PENALTY = 0.05  # per word beyond the budget (the reference answer's words + BUDGET_SLACK)
BUDGET_SLACK = 2
CHAR_PENALTY = 0.001  # per character: a tie-breaker that makes scores continuous
OFF_INSTRUCTION_PENALTY = 1.0  # per sentence that is off the instruction
REPETITION_WEIGHT = 3.0  # times the share of repeated word trigrams
DUPLICATE_SENTENCE_PENALTY = 0.5  # per sentence that repeats an earlier one
FILLER_PENALTY = 0.75  # per filler phrase
PENALTY_CAP = 7.5  # style penalties saturate below this, so no style crosses a tier (10 apart)
EMPTY_SCORE = -20.0  # an empty or whitespace-only response: below anything else
NEUTRAL_BASE = 5.0  # unrecognised prompts under on_unknown="neutral": style only
NEUTRAL_BUDGET = 30  # ... with this word budget

FILLER_PATTERNS: tuple[str, ...] = (
    r"\bsure\b",
    r"\bof course\b",
    r"\bcertainly\b",
    r"\babsolutely\b",
    r"\b(?:happy|glad) to help\b",
    r"\b(?:great|good) question\b",
    r"\b(?:i )?hope (?:this|that) helps\b",
    r"\blet me know if you have any (?:other|more) questions\b",
    r"\bhave a (?:nice|great|good) day\b",
    r"\bthanks? (?:you )?for asking\b",
    r"\bno problem\b",
    r"\bhere (?:is|'s) (?:the|your) answer\b",
    r"\bhere you go\b",
    r"\blet me think\b",
)
_FILLER = re.compile("|".join(f"(?:{p})" for p in FILLER_PATTERNS), re.IGNORECASE)
_TOKEN = re.compile(r"[A-Za-z]+|\d+")
_PRONOUNS = {"it", "its", "they", "their", "this"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_ARITHMETIC_CLAIM = re.compile(r"(\d+)\s*(plus|\+|minus|-)\s*(\d+)\s*(?:is|equals|=|makes)\s*(\d+)", re.IGNORECASE)


@dataclass
class Judgement:
    """The rubric's verdict on one response, term by term (``total`` is the score)."""

    total: float
    correct: bool = False
    on_task: bool = False
    family: str | None = None
    completeness: float = 0.0
    length_penalty: float = 0.0
    off_instruction: int = 0
    repetition_penalty: float = 0.0
    filler: int = 0
    false_claims: list[str] = field(default_factory=list)
    style_penalty: float = 0.0
    empty: bool = False
    recognised: bool = True

    off_topic_sentences: int = 0

    @property
    def off_topic(self) -> bool:
        """At least one sentence strays from the task (names another creature, asks or answers something else),
        whether or not the response also attempts the task; a wrong attempt is not off-topic."""
        return self.off_topic_sentences > 0


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def _creature_in(token: str) -> str | None:
    """A creature name, also in the plural (``glimmerfoxes``)."""
    word = token.lower()
    for candidate in (word, word[:-1], word[:-2]):
        if candidate in CREATURE_BY_NAME:
            return candidate
    return None


@dataclass
class _Claim:
    sentence: int
    creature: str
    kind: str
    value: str

    @property
    def true(self) -> bool:
        return CREATURE_BY_NAME[self.creature].attribute(self.kind) == self.value


def extract_claims(sentences: list[str], subject: str | None) -> tuple[list[_Claim], list[set[str]]]:
    """Every attribute word read as a claim about a creature: the one last named in the same sentence, else the
    prompt's creature, except that a sentence opening with a pronoun ("It", "Its", "They") continues the creature
    last named before it.

    So ``"It is blue."`` after a sentence about the mossbat claims the mossbat is blue, and a bare ``"Blue."``
    answers about the creature the prompt asked about. Returns the claims and, per sentence, the creatures it
    names. Negation is not parsed: every attribute word is read as an assertion (the tiny world never negates).
    """
    claims: list[_Claim] = []
    named: list[set[str]] = []
    last_named = subject
    for index, sentence in enumerate(sentences):
        names: set[str] = set()
        tokens = _TOKEN.findall(sentence)
        current = last_named if tokens and tokens[0].lower() in _PRONOUNS else subject
        for token in tokens:
            creature = _creature_in(token)
            if creature is not None:
                current = last_named = creature
                names.add(creature)
                continue
            kind = attribute_of_word(token)
            if kind is not None and current is not None:
                claims.append(_Claim(index, current, kind, token.lower()))
        named.append(names)
    return claims, named


def false_arithmetic(text: str) -> list[str]:
    """Statements ``x plus y is z`` / ``x - y = z`` that are false."""
    wrong = []
    for x, op, y, z in _ARITHMETIC_CLAIM.findall(text):
        value = int(x) + int(y) if op.lower() in ("plus", "+") else int(x) - int(y)
        if value != int(z):
            wrong.append(f"{x} {op} {y} is {z}")
    return wrong


def _answer_tokens(task: Task, sentence: str) -> bool:
    """Does this sentence state the task's answer token (string and arithmetic tasks)?"""
    tokens = _TOKEN.findall(sentence)
    if task.kind == "upper":
        return task.answer in tokens
    if task.kind in ("first", "last"):
        return any(len(t) == 1 and t.lower() == task.answer for t in tokens)
    return task.answer.lower() in (t.lower() for t in tokens)


def _arithmetic_correct(task: Task, sentences: list[str]) -> bool:
    """Every number is an operand or the answer, the answer is stated, and each sentence with numbers ends on it."""
    x, y = task.operands
    allowed = {str(x), str(y), task.answer}
    stated = False
    for sentence in sentences:
        numbers = [str(int(n)) for n in re.findall(r"\d+", sentence)]
        if not numbers:
            continue
        if any(n not in allowed for n in numbers) or numbers[-1] != task.answer:
            return False
        stated = True
    return stated


def _string_correct(task: Task, text: str, sentences: list[str]) -> bool:
    """The expected string is stated, and (letters, capitals) no competing candidate is."""
    if not any(_answer_tokens(task, s) for s in sentences):
        return False
    tokens = _TOKEN.findall(text)
    if task.kind == "upper":
        capitals = {t for t in tokens if len(t) >= 2 and t.isupper()}
        return capitals <= {task.answer}
    if task.kind in ("first", "last"):
        letters = {t.lower() for t in tokens if len(t) == 1 and t.isalpha()}
        letters -= {"a", "i"} - {task.answer}  # the article "a" and the pronoun "I" are words, not answers
        return letters <= {task.answer}
    return True


def _candidate_answer(task: Task, sentence: str, claims: list[_Claim], index: int) -> bool:
    """Does this sentence state a candidate answer of the asked kind, right or wrong (rubric term 0)?"""
    tokens = _TOKEN.findall(sentence)
    if task.family == "arithmetic":
        return any(t.isdigit() for t in tokens)
    if task.family in ("fact", "describe"):
        return any(
            c.sentence == index and c.creature == task.creature and (task.family == "describe" or c.kind == task.kind)
            for c in claims
        )
    if task.kind == "reverse":
        word = task.word or ""
        return any(t.lower() != word and sorted(t.lower()) == sorted(word) for t in tokens)
    if task.kind == "upper":
        return any(len(t) >= 2 and t.isupper() for t in tokens)
    word = task.word or ""
    return any(len(t) == 1 and t.isalpha() and (t.lower() not in ("a", "i") or t.lower() in word) for t in tokens)


def attempts_task(task: Task, sentences: list[str], claims: list[_Claim], named: list[set[str]]) -> bool:
    """The response attempts the asked task: some sentence that is not a question and names no creature other
    than the asked one states a candidate answer of the asked kind (see :func:`_candidate_answer`)."""
    for index, sentence in enumerate(sentences):
        if sentence.rstrip().endswith("?") or named[index] - {task.creature}:
            continue
        if _candidate_answer(task, sentence, claims, index):
            return True
    return False


class Rubric:
    """The tiny world's rubric, without noise: :meth:`judge` returns every term, :meth:`score` the total.

    It parses the raw instruction (no prompt template; chat messages are read as their last user turn) with
    :func:`instructgpt.tinyworld.parse_prompt` to find the task and its right answer in the world, then scores::

        score = 10 * on_task + 10 * correct + 2 * completeness - squash(style penalties)

    **Priorities** (revised in issue 12, before any model was trained on the revision): correct, then an
    on-task attempt, then style. InstructGPT's labelers rated "fails to follow the correct instruction / task" as a
    failure in its own right, ahead of any matter of style (Ouyang et al. 2022, table 3 and appendix B). The first
    version of this rubric had no such term: an off-topic sentence cost 1.0 and each filler phrase 0.75, so
    answering another question ("The thornbeak is huge and eats worms." to "What is the sum of 7 and 4?") scored
    above attempting this one politely and wrongly ("Sure! 7. Thanks for asking!"), and PPO learned to do that.
    Now the three tiers cannot overlap, whatever the style and the noise-free score:

    - a correct answer scores in (12.5, 22]: 10 (on task) + 10 (correct) + completeness - style;
    - an on-task attempt that is wrong scores in (2.5, 12]: 10 + completeness (a wrong description can still state
      true attributes) - style;
    - a response that attempts another task, or none, scores in (-7.5, 0]: style penalties only;
    - an empty response scores -20, below everything.

    0. **On task** (the response attempts the asked task; a correct answer always does): a sentence that is not a
       question and names no other creature states a candidate answer of the asked kind. Arithmetic: a number.
       Facts: an attribute word of the asked kind about the asked creature, true or not. Descriptions: any
       attribute word about the asked creature. Reverse: an anagram of the word other than the word itself
       (repeating the word, or naming it to do something else with it, is not reversing it). Capitals: a word
       in capitals. First/last letter: a single letter (the article "a" and the pronoun "I" only
       when the word contains that letter).
    1. **Correctness** (dominates everything): the right answer is stated and nothing false is. Arithmetic: the
       answer appears, every number is an operand or the answer, and every sentence with numbers ends on the
       answer. Facts: an attribute word of the asked kind, true of the asked creature. Strings: the expected
       string (reversed word, capitals, letter) appears, and no competing capitals/letter does. Descriptions: at
       least one true attribute of the creature. In every family, any false statement makes the response wrong:
       an attribute word that is false of the creature last named (``"It is red."``), or a false sum.
    2. **Completeness** (descriptions only, and only for an on-task response): 0.5 per attribute of the four
       (color, habitat, food, size) stated truly.
    3. **Style penalties**, summed, then squashed by ``7.5 * (1 - exp(-p / 7.5))`` so that they never cross a
       tier: a correct answer with the worst style still outscores a wrong one with the best, and an on-task
       attempt with the worst style outscores an off-task response with the best:

       - conciseness: 0.05 per word beyond the budget (the reference one-sentence answer's words + 2), plus 0.001
         per character (a tie-breaker that keeps different responses from tying);
       - staying on the instruction: 1.0 per sentence that neither carries the answer nor is pure filler, or that
         names another creature (off-topic extras, more questions);
       - no repetition: 3.0 x the share of repeated word trigrams, plus 0.5 per sentence repeating an earlier one;
       - no filler: 0.75 per filler phrase ("Sure!", "Of course", "I hope this helps", "Have a nice day", ...).

    An empty or whitespace-only response scores -20, the lowest possible score. So the most-preferred response is
    a correct, direct answer in one short sentence (or fewer words), nothing else.

    **Unrecognised prompts** (not an instruction of the tiny world): ``on_unknown="error"`` (default) raises
    :class:`~instructgpt.tinyworld.UnknownPromptError` naming the prompt; ``"neutral"`` scores style only
    (``5 - squash(length beyond 30 words, repetition, filler)``), with no correctness term.
    """

    def __init__(self, on_unknown: Literal["error", "neutral"] = "error"):
        if on_unknown not in ("error", "neutral"):
            raise ValueError(f"on_unknown must be 'error' or 'neutral', got {on_unknown!r}")
        self.on_unknown = on_unknown

    def judge(self, prompt: Any, response: str) -> Judgement:
        text = (response or "").strip()
        try:
            task = parse_prompt(prompt_text(prompt))
        except (UnknownPromptError, DataError):
            if self.on_unknown == "error":
                raise
            task = None
        if not text:
            return Judgement(
                total=EMPTY_SCORE,
                empty=True,
                recognised=task is not None,
                family=task.family if task is not None else None,
            )
        if task is None:
            return self._judge_neutral(text)
        return self._judge_task(task, text)

    def score(self, prompt: Any, response: str) -> float:
        return self.judge(prompt, response).total

    # -- the terms ------------------------------------------------------------------------------------------------

    @staticmethod
    def _length_penalty(text: str, budget: int) -> float:
        words = len(_TOKEN.findall(text))
        return EXTRA_WORD_PENALTY * max(0, words - budget) + CHAR_PENALTY * len(text)

    @staticmethod
    def _repetition_penalty(text: str, sentences: list[str]) -> float:
        words = [w.lower() for w in _TOKEN.findall(text)]
        trigrams = list(zip(words, words[1:], words[2:]))
        share = 1.0 - len(set(trigrams)) / len(trigrams) if len(trigrams) >= 2 else 0.0
        seen: set[str] = set()
        duplicates = 0
        for sentence in sentences:
            key = " ".join(w.lower() for w in _TOKEN.findall(sentence))
            if len(key.split()) >= 2 and key in seen:
                duplicates += 1
            seen.add(key)
        return REPETITION_WEIGHT * share + DUPLICATE_SENTENCE_PENALTY * duplicates

    @staticmethod
    def _is_filler_only(sentence: str) -> bool:
        """A sentence that is nothing but a filler phrase (at most two other words)."""
        if not _FILLER.search(sentence):
            return False
        return len(_TOKEN.findall(_FILLER.sub(" ", sentence))) <= 2

    @staticmethod
    def _squash(raw: float) -> float:
        """Saturate the summed style penalty: ``CAP * (1 - exp(-raw / CAP))``, slope 1 at 0, always below CAP."""
        return PENALTY_CAP * (1.0 - math.exp(-raw / PENALTY_CAP))

    def _judge_neutral(self, text: str) -> Judgement:
        sentences = split_sentences(text)
        length = self._length_penalty(text, NEUTRAL_BUDGET)
        repetition = self._repetition_penalty(text, sentences)
        filler = len(_FILLER.findall(text))
        style = self._squash(length + repetition + FILLER_PENALTY * filler)
        return Judgement(
            total=NEUTRAL_BASE - style,
            length_penalty=length,
            repetition_penalty=repetition,
            filler=filler,
            style_penalty=style,
            recognised=False,
        )

    def _judge_task(self, task: Task, text: str) -> Judgement:
        sentences = split_sentences(text)
        claims, named = extract_claims(sentences, task.creature)
        false_claims = [f"the {c.creature} is not {c.value}" for c in claims if not c.true]
        false_claims += false_arithmetic(text)

        # 1. correctness
        about = [c for c in claims if c.creature == task.creature and c.true]
        if task.family == "arithmetic":
            answered = _arithmetic_correct(task, sentences)
        elif task.family == "fact":
            answered = any(c.kind == task.kind for c in about)
        elif task.family == "describe":
            answered = bool(about)
        else:
            answered = _string_correct(task, text, sentences)
        correct = answered and not false_claims

        # 0. on task: a correct answer, or an attempt at the asked task (not at another one, not at none)
        on_task = correct or attempts_task(task, sentences, claims, named)

        # 2. completeness (on-task descriptions): share of the four attributes stated truly
        completeness = len({c.kind for c in about}) / 4 if task.family == "describe" and on_task else 0.0

        # 3. staying on the instruction: each sentence must carry the answer (or be pure filler, charged below),
        #    and must not bring in other creatures
        off_instruction = off_topic = 0
        for index, sentence in enumerate(sentences):
            if task.family in ("fact", "describe"):
                bearing = any(
                    c.sentence == index
                    and c.creature == task.creature
                    and (task.family == "describe" or c.kind == task.kind)
                    for c in claims
                )
            else:
                bearing = _answer_tokens(task, sentence)
            others = named[index] - {task.creature}
            if others or not (bearing or self._is_filler_only(sentence)):
                off_instruction += 1
                # off-topic, for evaluation only: not even a (wrong) attempt at the asked task
                attempt = not sentence.rstrip().endswith("?") and _candidate_answer(task, sentence, claims, index)
                off_topic += bool(others) or not attempt

        # 4-6. length, repetition, filler
        budget = len(_TOKEN.findall(answer_sentence(task))) + BUDGET_SLACK
        length = self._length_penalty(text, budget)
        repetition = self._repetition_penalty(text, sentences)
        filler = len(_FILLER.findall(text))
        style = self._squash(length + OFF_INSTRUCTION_PENALTY * off_instruction + repetition + FILLER_PENALTY * filler)

        total = ON_TASK_WEIGHT * on_task + CORRECT_WEIGHT * correct + COMPLETENESS_WEIGHT * completeness - style
        return Judgement(
            total=total,
            correct=correct,
            on_task=on_task,
            family=task.family,
            completeness=completeness,
            length_penalty=length,
            off_instruction=off_instruction,
            off_topic_sentences=off_topic,
            repetition_penalty=repetition,
            filler=filler,
            false_claims=false_claims,
            style_penalty=style,
        )
