"""The simulated labeler: its rubric on hand-written cases, its noise, and the Labeler interface."""

from __future__ import annotations

import random

import pytest

from instructgpt.judges import (
    HUMAN_AGREEMENT_NOISE,
    Labeler,
    LabelerError,
    Ranking,
    SimulatedLabeler,
    make_labeler,
    pairwise_agreement,
)
from instructgpt.tinyworld import UnknownPromptError, parse_prompt
from instructgpt.tinyworld.demos import response_pool
from instructgpt.tinyworld.rubric import EMPTY_SCORE

LABELER = SimulatedLabeler()

# (prompt, a correct concise answer, a wrong answer) for every family and kind
CORRECT_VS_WRONG = [
    ("What is 17 plus 25?", "17 plus 25 is 42.", "17 plus 25 is 43."),
    ("Subtract 8 from 31.", "23.", "24."),
    ("What color is the glimmerfox?", "The glimmerfox is blue.", "The glimmerfox is brown."),
    ("Where does the mossbat live?", "The mossbat lives in the swamp.", "The mossbat lives in the forest."),
    ("What does the quillhog eat?", "Seeds.", "Fish."),
    ("How big is the zephyrmole?", "The zephyrmole is small.", "The zephyrmole is huge."),
    ("Reverse the word lamp.", "The word lamp backwards is pmal.", "The word lamp backwards is plam."),
    ("Write tree in capital letters.", "TREE", "TRE"),
    ("What is the first letter of book?", "The first letter of book is b.", "The first letter of book is k."),
    ("What is the last letter of rain?", "n", "r"),
    (
        "Describe the glimmerfox.",
        "The glimmerfox is a tiny blue creature that lives in the jungle and eats leaves.",
        "The glimmerfox is a tiny red creature that lives in the jungle and eats leaves.",
    ),
]


def score(prompt: str, response: str) -> float:
    return LABELER.score([prompt], [response])[0]


@pytest.mark.parametrize("prompt,correct,wrong", CORRECT_VS_WRONG)
def test_a_correct_answer_outranks_a_wrong_one_in_every_family(prompt, correct, wrong):
    assert LABELER.judge(prompt, correct).correct
    assert not LABELER.judge(prompt, wrong).correct
    assert score(prompt, correct) > score(prompt, wrong)
    ranking = LABELER.rank(prompt, [wrong, correct])
    assert ranking.order == [1, 0]


@pytest.mark.parametrize("prompt,correct,wrong", CORRECT_VS_WRONG)
def test_correctness_dominates_style(prompt, correct, wrong):
    """The worst-styled correct answer still beats a wrong answer in the preferred style."""
    other = "The mossbat eats leaves." if "mossbat" not in prompt else "The quillhog eats seeds."
    awful = " ".join(["Sure!", correct, correct, correct, other, "I hope this helps!", "Have a nice day!"] * 3)
    judgement = LABELER.judge(prompt, awful)
    assert judgement.correct and judgement.style_penalty > 5
    assert score(prompt, awful) > score(prompt, wrong)


def test_a_concise_correct_answer_outranks_a_verbose_one():
    prompt = "What color is the glimmerfox?"
    concise = "The glimmerfox is blue."
    verbose = "Sure! Great question. The glimmerfox is blue. I hope this helps! Have a nice day!"
    assert LABELER.judge(prompt, verbose).correct
    assert LABELER.judge(prompt, verbose).filler == 4
    assert score(prompt, concise) > score(prompt, verbose) + 2.5


def test_a_complete_description_outranks_an_incomplete_one():
    prompt = "Describe the mossbat."
    complete = "The mossbat is a tiny black creature that lives in the swamp and eats leaves."
    three = "The mossbat is black, lives in the swamp and eats leaves."
    one = "The mossbat is black."
    judged = [LABELER.judge(prompt, r) for r in (complete, three, one)]
    assert [j.correct for j in judged] == [True, True, True]
    assert [j.completeness for j in judged] == [1.0, 0.75, 0.25]
    assert score(prompt, complete) > score(prompt, three) > score(prompt, one)


def test_repetition_is_penalised():
    prompt = "What is 6 plus 8?"
    once = "6 plus 8 is 14."
    twice = "6 plus 8 is 14. 6 plus 8 is 14."
    stutter = "6 plus 8 is 14 14 14 14 14."
    assert LABELER.judge(prompt, twice).repetition_penalty > 1.0
    assert score(prompt, once) > score(prompt, twice) > score(prompt, twice + " 6 plus 8 is 14.")
    assert score(prompt, once) > score(prompt, stutter)


def test_off_instruction_sentences_and_other_creatures_are_penalised():
    prompt = "What does the emberowl eat?"
    on = "The emberowl eats honey."
    extra_fact = "The emberowl eats honey. The mossbat lives in the swamp."
    extra_about_same = "The emberowl eats honey. It lives in the jungle."
    more_questions = "The emberowl eats honey. What color is the mossbat? What is 3 plus 4?"
    for response in (extra_fact, extra_about_same, more_questions):
        judgement = LABELER.judge(prompt, response)
        assert judgement.correct and judgement.off_instruction >= 1, (response, judgement)
        assert score(prompt, on) > score(prompt, response) + 0.9


def test_empty_and_whitespace_responses_score_lowest():
    prompt = "What is 2 plus 3?"
    wrong_and_awful = "What is 4 plus 4? What is 4 plus 4? What is 4 plus 4? " * 10
    for empty in ("", "   ", "\n\t"):
        assert score(prompt, empty) == EMPTY_SCORE
        assert score(prompt, empty) < score(prompt, wrong_and_awful) < score(prompt, "5")
    ranking = LABELER.rank(prompt, ["", "5", "6"])
    assert ranking.order == [1, 2, 0]


def test_false_statements_anywhere_make_a_response_wrong():
    prompt = "What color is the glimmerfox?"
    assert LABELER.judge(prompt, "Blue.").correct  # a bare answer is about the creature asked about
    assert not LABELER.judge(prompt, "The glimmerfox is blue. It eats fish.").correct  # pronoun: the glimmerfox
    assert not LABELER.judge(prompt, "The glimmerfox is blue. The mossbat is blue.").correct
    assert LABELER.judge(prompt, "The glimmerfox is blue. The mossbat is black.").correct
    assert not LABELER.judge(prompt, "The glimmerfox is blue. 2 plus 2 is 5.").correct
    assert not LABELER.judge(prompt, "The glimmerfox is blue or brown.").correct
    assert not LABELER.judge(prompt, "The wispdeer is blue.").correct  # true, but not about the glimmerfox


def test_arithmetic_rules():
    prompt = "What is 10 minus 5?"
    assert LABELER.judge(prompt, "10 minus 5 is 5.").correct
    assert LABELER.judge(prompt, "The answer is 5.").correct
    assert not LABELER.judge(prompt, "10 minus 5 is 10.").correct  # the sentence must end on the answer
    assert not LABELER.judge(prompt, "5 or 6.").correct  # a number that is neither operand nor answer
    assert not LABELER.judge(prompt, "Ten minus five.").correct  # no answer stated


def test_noise_zero_is_deterministic():
    prompts = ["What is 2 plus 3?"] * 3 + ["Describe the hazelyak."]
    responses = ["5", "Sure! 2 plus 3 is 5.", "6", "The hazelyak is pink."]
    first = SimulatedLabeler().score(prompts, responses)
    labeler = SimulatedLabeler(noise=0.0, seed=123)
    assert labeler.score(prompts, responses) == first
    assert labeler.score(prompts, responses) == first
    assert len(set(first)) == len(first)  # different responses, different scores


def test_noise_is_seeded_and_changes_scores():
    prompts = [f"What is {x} plus 3?" for x in range(1, 51)]
    responses = [f"Sure! {x} plus 3 is {x + 3}." for x in range(1, 51)]
    clean = SimulatedLabeler().score(prompts, responses)
    noisy = SimulatedLabeler(noise=1.0, seed=7).score(prompts, responses)
    assert noisy == SimulatedLabeler(noise=1.0, seed=7).score(prompts, responses)
    assert noisy != SimulatedLabeler(noise=1.0, seed=8).score(prompts, responses)
    # one labeler judges a given pair the same way every time, alone or among others, in any order
    again = SimulatedLabeler(noise=1.0, seed=7)
    assert again.score(prompts[::-1], responses[::-1]) == noisy[::-1]
    assert again.score(prompts[3:4], responses[3:4]) == noisy[3:4]
    deviations = [n - c for n, c in zip(noisy, clean)]
    mean = sum(deviations) / len(deviations)
    std = (sum((d - mean) ** 2 for d in deviations) / len(deviations)) ** 0.5
    assert abs(mean) < 0.5 and 0.7 < std < 1.3


def _collection_like_pools(n: int = 300, k: int = 4) -> list[tuple[str, list[str]]]:
    import json

    from helpers import TINY_DATA

    rng = random.Random(0)
    lines = (TINY_DATA / "rm_prompts.jsonl").read_text().splitlines()[:n]
    prompts = [json.loads(line)["prompt"] for line in lines]
    return [(p, response_pool(parse_prompt(p), k, rng)) for p in prompts]


def test_noisy_labelers_agree_only_most_of_the_time():
    pools = _collection_like_pools()
    assert pairwise_agreement(SimulatedLabeler(seed=1), SimulatedLabeler(seed=2), pools) == 1.0
    agreement = pairwise_agreement(
        SimulatedLabeler(HUMAN_AGREEMENT_NOISE, seed=1), SimulatedLabeler(HUMAN_AGREEMENT_NOISE, seed=2), pools
    )
    # InstructGPT: about 73% inter-labeler agreement; on synthetic pools the band is wide (see data/README.md)
    assert 0.62 < agreement < 0.85, agreement
    louder = pairwise_agreement(SimulatedLabeler(3.0, seed=1), SimulatedLabeler(3.0, seed=2), pools)
    assert louder < agreement


def test_rank_orders_best_first_and_keeps_scores_in_input_order():
    prompt = "Spell lamp backwards."
    responses = ["Sure! The word lamp backwards is pmal. I hope this helps!", "pmal", "lamp", ""]
    ranking = LABELER.rank(prompt, responses)
    assert isinstance(ranking, Ranking)
    assert ranking.order == [1, 0, 2, 3]
    assert ranking.scores == LABELER.score([prompt] * 4, responses)
    assert sorted(ranking.scores, reverse=True) == [ranking.scores[i] for i in ranking.order]


def test_ties_keep_the_given_order():
    class Constant(Labeler):
        name = "constant"

        def score(self, prompts, responses):
            return [1.0] * len(responses)

    assert Constant().rank("anything", ["a", "b", "c"]).order == [0, 1, 2]


def test_chat_prompts_are_read_as_their_last_user_turn():
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 plus 3?"}]
    assert LABELER.score([chat], ["5"]) == LABELER.score(["What is 2 plus 3?"], ["5"])


def test_unknown_prompts_raise_or_get_the_neutral_rubric():
    with pytest.raises(UnknownPromptError, match="Write a poem about the sea"):
        LABELER.score(["Write a poem about the sea."], ["Waves."])
    with pytest.raises(UnknownPromptError, match="not a creature of the tiny world"):
        LABELER.score(["Describe the unicorn."], ["It is white."])
    neutral = SimulatedLabeler(on_unknown="neutral")
    scores = neutral.score(["Write a poem about the sea."] * 3, ["Waves.", "Sure! Waves. I hope this helps!", " "])
    assert scores[0] > scores[1] > scores[2] == EMPTY_SCORE
    assert not neutral.judge("Write a poem.", "Waves.").recognised


def test_bad_arguments():
    with pytest.raises(ValueError, match="noise"):
        SimulatedLabeler(noise=-1.0)
    with pytest.raises(ValueError, match="on_unknown"):
        SimulatedLabeler(on_unknown="ignore")
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        LABELER.score(["What is 2 plus 3?"] * 2, ["5"])


def test_file_labeler_ranks_as_people_wrote_and_names_what_it_lacks(tmp_path):
    import json

    path = tmp_path / "human.jsonl"
    rows = [
        {"prompt": "Add 2 and 3.", "responses": ["5.", "2 plus 3 is 5.", "6."]},
        {"prompt": "Describe the fernotter.", "responses": ["It is huge.", "It is a cat."]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    labeler = make_labeler(f"file:{path}")
    assert labeler.name == f"file:{path}"
    ranking = labeler.rank("Add 2 and 3.", ["6.", "5.", "2 plus 3 is 5."])
    assert ranking.order == [1, 2, 0] and ranking.scores == [0.0, 2.0, 1.0]
    assert labeler.score(["Describe the fernotter."] * 2, [" It is a cat.", "It is huge. "]) == [0.0, 1.0]
    with pytest.raises(
        LabelerError, match=r"human\.jsonl: no ranking holds the response '7\.' to the prompt 'Add 2 and 3\.'"
    ):
        labeler.score(["Add 2 and 3."], ["7."])
    with pytest.raises(LabelerError, match=r"`labeler`: unknown labeler 'oracle'"):
        make_labeler("oracle")


# (prompt, an on-task wrong attempt with filler, a response that answers another task or none) for every kind
ON_TASK_VS_OFF_TASK = [
    ("What is the sum of 7 and 4?", "Sure! 7. Thanks for asking!", "The thornbeak is huge and eats worms."),
    ("What is 10 minus 5?", "Of course! 10 minus 5 is 4. I hope this helps!", "What is 2 plus 3?"),
    ("What color is the glimmerfox?", "Sure! The glimmerfox is red. Have a nice day!", "The glimmerfox eats leaves."),
    (
        "Where does the mossbat live?",
        "Certainly! It lives in the desert. No problem!",
        "The duskhare lives in the caves.",
    ),
    (
        "Reverse the word lamp.",
        "Sure! The word lamp backwards is plam. Happy to help!",
        "The first letter of lamp is l.",
    ),
    ("Write tree in capital letters.", "Sure! TRE. Thanks for asking!", "The word tree backwards is eert."),
    ("What is the first letter of book?", "Of course! The first letter of book is k!", "BOOK."),
    ("What is the last letter of sock?", "Sure! It is s. Hope this helps!", "The sock is on the floor."),
    ("Describe the fernotter.", "Sure! The fernotter is tiny and red. Thanks for asking!", "The mossbat is tiny."),
]


@pytest.mark.parametrize("prompt,attempt,other", ON_TASK_VS_OFF_TASK)
def test_an_on_task_attempt_outranks_answering_another_task(prompt, attempt, other):
    """InstructGPT's priorities: correct, then attempts the asked task, then style (see SimulatedLabeler)."""
    tried, strayed = LABELER.judge(prompt, attempt), LABELER.judge(prompt, other)
    assert (tried.on_task, tried.correct) == (True, False), tried
    assert (strayed.on_task, strayed.correct) == (False, False), strayed
    assert tried.filler >= 1 and strayed.filler == 0  # the attempt is the worse-styled one, and still wins
    assert score(prompt, attempt) > score(prompt, other)
    assert LABELER.rank(prompt, [other, attempt]).order == [1, 0]


def test_the_thornbeak_answer_ranks_below_a_polite_wrong_sum():
    """The case of issue 12: PPO answered sums outside its training range with a fact about a creature."""
    prompt = "What is the sum of 7 and 4?"
    judged = {
        r: LABELER.judge(prompt, r)
        for r in ("11.", "Sure! 7. Thanks for asking!", "The thornbeak is huge and eats worms.", "")
    }
    scores = [j.total for j in judged.values()]
    assert scores == sorted(scores, reverse=True)
    assert [j.on_task for j in judged.values()] == [True, True, False, False]
    assert [j.off_topic for j in judged.values()] == [False, False, True, False]
    assert judged["11."].family == "arithmetic"


@pytest.mark.parametrize("prompt,correct,wrong", CORRECT_VS_WRONG)
def test_the_tiers_never_overlap_whatever_the_style(prompt, correct, wrong):
    """Worst-styled correct > best-styled on-task wrong; worst-styled on-task wrong > best-styled off-task."""
    other = "The mossbat eats leaves." if "mossbat" not in prompt else "The quillhog eats seeds."
    junk = ["Sure!", "I hope this helps!", "Have a nice day!", other]
    awful_correct = " ".join(([correct] * 3 + junk) * 3)
    awful_wrong = " ".join(([wrong] * 3 + junk) * 3)
    assert LABELER.judge(prompt, awful_wrong).on_task and not LABELER.judge(prompt, awful_wrong).correct
    assert LABELER.judge(prompt, wrong).on_task
    assert not LABELER.judge(prompt, other).on_task
    assert score(prompt, awful_correct) > score(prompt, wrong)
    assert score(prompt, awful_wrong) > score(prompt, other) > score(prompt, "")
