"""`instructgpt eval`: win rates, per-model metrics, PPO curves and checkpoints, on models from anywhere."""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import TINY_BASE, TINY_DATA
from instructgpt.metrics.text import distinct_n
from instructgpt.stages import eval as evaluate
from instructgpt.stages.eval.samples import response_logprobs
from instructgpt.stages.eval.settings import EvalError, parse_models
from instructgpt.stages.eval.sweeps import policy_checkpoints

PNG = b"\x89PNG"


# ----------------------------------------------------------------------------------------------------------------
# Small pieces
# ----------------------------------------------------------------------------------------------------------------


def test_parse_models_names_paths_and_refuses_duplicates():
    assert parse_models(["sft=runs/sft", "runs/tiny/ppo/", " x = y "]) == {
        "sft": "runs/sft",
        "ppo": "runs/tiny/ppo/",
        "x": "y",
    }
    with pytest.raises(EvalError, match="given twice"):
        parse_models(["a=1", "a=2"])
    with pytest.raises(EvalError, match="not NAME=PATH"):
        parse_models(["a="])


def test_distinct_n_on_hand_made_responses():
    assert distinct_n(["a b c", "d e"], 1) == 1.0
    assert distinct_n(["the cat the cat"], 1) == pytest.approx(2 / 4)
    assert distinct_n(["the cat the cat"], 2) == pytest.approx(2 / 3)  # (the cat), (cat the), (the cat)
    assert distinct_n(["Yes.", "yes."], 1) == pytest.approx(2 / 4)  # case-folded; punctuation is a token
    assert distinct_n(["", "a"], 2) == 0.0  # no bigram at all


def test_policy_checkpoints_are_evenly_spaced_and_keep_the_last(tmp_path):
    for step in (10, 20, 30, 40, 50, 60, 70):
        (tmp_path / f"checkpoint-{step}" / "policy").mkdir(parents=True)
        (tmp_path / f"checkpoint-{step}" / "policy" / "config.json").write_text("{}")
    (tmp_path / "checkpoint-80" / "state").mkdir(parents=True)  # a resume state without a policy: not a point
    assert [s for s, _ in policy_checkpoints(tmp_path, 3)] == [10, 40, 70]
    assert [s for s, _ in policy_checkpoints(tmp_path, 10)] == [10, 20, 30, 40, 50, 60, 70]
    assert [s for s, _ in policy_checkpoints(tmp_path, 1)] == [70]


@pytest.fixture(scope="module")
def base():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(TINY_BASE).eval(), AutoTokenizer.from_pretrained(TINY_BASE)


def test_response_logprobs_match_a_token_by_token_computation(base):
    model, tokenizer = base
    prompts = [tokenizer("The glimmerfox is")["input_ids"], tokenizer("2 plus 3 is")["input_ids"]]
    responses = [tokenizer(" blue. It eats")["input_ids"], tokenizer(" 5")["input_ids"]]
    got = response_logprobs(model, prompts, responses, temperature=0.7, pad_token_id=0, batch_size=1)
    for prompt, response, value in zip(prompts, responses, got):
        expected = 0.0
        for t in range(len(response)):
            with torch.no_grad():
                logits = model(torch.tensor([prompt + response[:t]])).logits[0, -1] / 0.7
            expected += torch.log_softmax(logits, -1)[response[t]].item()
        assert value == pytest.approx(expected, abs=1e-4)
    # batching with padding gives the same numbers
    batched = response_logprobs(model, prompts, responses, temperature=0.7, pad_token_id=0, batch_size=2)
    assert batched == pytest.approx(got, abs=1e-5)


def test_eval_scores_the_tokens_it_sampled(base):
    """The ids, the finished flags and the KL come from the sampler, never from the text tokenized again."""
    from instructgpt.modeling import load_tokenizer
    from instructgpt.sampling import generate_samples
    from instructgpt.stages.eval.samples import kl_to_reference, sample_model
    from instructgpt.stages.eval.settings import EvalArguments

    model, _ = base
    tokenizer = load_tokenizer(str(TINY_BASE))
    prompts = ["What is 2 plus 3?", "Describe the glimmerfox.", "Reverse the word lamp.", "What does the mossbat eat?"]
    args = EvalArguments(models=["x=y"], prompts="p", output_dir="o", max_new_tokens=12, temperature=1.0, seed=3)
    samples = sample_model(model, tokenizer, prompts, args)
    direct = [row[0] for row in generate_samples(model, tokenizer, prompts, max_new_tokens=12, temperature=1.0, seed=3)]
    assert samples.response_ids == [s.token_ids for s in direct]
    assert samples.finished == [s.eos_token_id is not None for s in direct]
    for ids, scored, done in zip(samples.response_ids, samples.scored_ids, samples.finished):
        assert scored == ids + ([tokenizer.eos_token_id] if done else [])  # the EOS that ended it is scored too
        assert len(ids) <= 12
    assert kl_to_reference(samples, model, model, tokenizer.pad_token_id, 1.0, 2) == [0.0] * len(prompts)


# ----------------------------------------------------------------------------------------------------------------
# End to end, on models that do not come from this pipeline
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def foreign_models(tmp_path_factory):
    """A random 1-layer Llama with the tiny tokenizer, a reward model built from a config, and a fake PPO run whose
    checkpoints are copies of the base model and of the Llama."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        GPT2Config,
        LlamaConfig,
    )

    root = tmp_path_factory.mktemp("foreign")
    tokenizer = AutoTokenizer.from_pretrained(TINY_BASE)
    torch.manual_seed(0)
    llama = AutoModelForCausalLM.from_config(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=128,
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    llama.save_pretrained(root / "llama")
    tokenizer.save_pretrained(root / "llama")
    rm = AutoModelForSequenceClassification.from_config(
        GPT2Config(
            vocab_size=len(tokenizer),
            n_layer=1,
            n_head=2,
            n_embd=32,
            n_positions=128,
            num_labels=1,
            pad_token_id=tokenizer.eos_token_id,
        )
    )
    rm.save_pretrained(root / "rm")
    tokenizer.save_pretrained(root / "rm")

    ppo = root / "ppo"
    base_model = AutoModelForCausalLM.from_pretrained(TINY_BASE)
    for step, model in ((4, base_model), (8, llama)):
        model.save_pretrained(ppo / f"checkpoint-{step}" / "policy")
        tokenizer.save_pretrained(ppo / f"checkpoint-{step}" / "policy")
    rows = [
        {
            "step": s,
            "episode": 16 * s,
            "objective/scores": 0.1 * s,
            "objective/rlhf_reward": 0.05 * s,
            "objective/kl": 0.3 * s,
        }
        for s in range(1, 9)
    ]
    rows.insert(0, {"step": 0, "eval/scores": 0.0, "eval/kl": 0.0})  # an evaluation line: no training metrics
    (ppo / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # a Trainer stage's run (RLOO's layout): the policy is the checkpoint folder itself
    llama.save_pretrained(root / "rloo" / "checkpoint-3")
    tokenizer.save_pretrained(root / "rloo" / "checkpoint-3")
    (root / "rloo" / "checkpoint-3" / "optimizer.pt").write_bytes(b"")
    return root


def test_eval_on_a_base_model_and_a_llama_from_a_config(tmp_path, foreign_models):
    out = tmp_path / "eval"
    ood_rows = [json.loads(line) for line in (TINY_DATA / "ood_prompts.jsonl").read_text().splitlines()]
    picked = [next(r for r in ood_rows if r["split"] == s) for s in ("casing", "new_words", "new_operands")] * 2
    ood = tmp_path / "ood.jsonl"
    ood.write_text("".join(json.dumps(r) + "\n" for r in picked))
    evaluate.main(
        [
            "--models",
            f"base={TINY_BASE}",
            f"llama={foreign_models / 'llama'}",
            "--prompts",
            str(TINY_DATA / "eval_prompts.jsonl"),
            "--max_prompts",
            "8",
            "--output_dir",
            str(out),
            "--labeler",
            "simulated",
            "--reference",
            "base",
            "--reward_model",
            str(foreign_models / "rm"),
            "--max_new_tokens",
            "12",
            "--ppo_run",
            str(foreign_models / "ppo"),
            "--num_examples",
            "2",
            "--ood_prompts",
            str(ood),
            "--checkpoint_runs",
            f"rloo={foreign_models / 'rloo'}",
        ]
    )
    results = json.loads((out / "results.json").read_text())
    assert list(results["models"]) == ["base", "llama"]
    assert results["num_prompts"] == 8 and results["labeler"] == "simulated"

    # win rates: consistent with the per-prompt labeler scores written next to them
    rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(isinstance(r["llama"], str) for r in rows)
    a = [r["llama_labeler_score"] for r in rows]
    b = [r["base_labeler_score"] for r in rows]
    wins, ties = sum(x > y for x, y in zip(a, b)), sum(x == y for x, y in zip(a, b))
    w = results["win_rate"]["llama"]["base"]
    assert (w["wins"], w["ties"], w["n"]) == (wins, ties, 8)
    assert w["win_rate"] == pytest.approx((wins + 0.5 * ties) / 8)
    assert w["win_rate"] + results["win_rate"]["base"]["llama"]["win_rate"] == pytest.approx(1.0)
    assert 0 <= w["ci_low"] <= w["win_rate"] <= w["ci_high"] <= 1
    assert results["headline"][0]["model"] == "llama" and results["headline"][0]["baseline"] == "base"

    m_base, m_llama = results["metrics"]["base"], results["metrics"]["llama"]
    assert m_base["kl_to_reference"] == 0.0
    assert m_llama["kl_to_reference"] > 0  # a random model is far from the trained base model
    assert m_llama["labeler_score"] == pytest.approx(sum(a) / 8)
    assert m_llama["rm_score"] == pytest.approx(sum(r["llama_rm_score"] for r in rows) / 8)
    for m in (m_base, m_llama):
        assert 0 <= m["eos_fraction"] <= 1 and 0 < m["distinct_1"] <= 1 and 0 < m["response_tokens"] <= 12

    # the PPO run: training curves from metrics.jsonl, and one point per checkpoint
    assert results["ppo_training"]["kl"] == pytest.approx(2.4)
    points = {p["label"]: p for p in results["checkpoints"]}
    assert set(points) == {"base", "step 4", "step 8"}
    assert points["step 4"]["kl"] == 0.0  # checkpoint 4 is the base model itself: same samples, same scores
    assert points["step 4"]["labeler_score"] == pytest.approx(m_base["labeler_score"])
    assert points["step 8"]["kl"] == pytest.approx(m_llama["kl_to_reference"])
    for key in ("win_rates", "training", "overoptimization", "metrics", "frontier"):
        assert (out / results["plots"][key]).read_bytes()[:4] == PNG
    # the frontier: the Trainer-layout run is swept too, its checkpoint is the Llama again
    assert set(results["sweeps"]) == {"ppo", "rloo"} and results["sweeps"]["ppo"] == results["checkpoints"]
    assert [p["label"] for p in results["sweeps"]["rloo"]] == ["base", "step 3"]
    assert results["sweeps"]["rloo"][1]["kl"] == pytest.approx(m_llama["kl_to_reference"])
    # what the win rate hides: shares per family, consistent with the per-response flags in completions.jsonl
    from instructgpt.judges import SimulatedLabeler

    judge = SimulatedLabeler()
    for name in ("base", "llama"):
        shares = results["task_shares"][name]
        assert shares["all"]["correct"]["n"] == 8
        for key in ("correct", "on_task", "off_topic"):
            flags = [r[f"{name}_{key}"] for r in rows]
            assert flags == [getattr(judge.judge(r["prompt"], r[name]), key) for r in rows]
            assert shares["all"][key]["count"] == sum(flags)
            assert results["metrics"][name][f"labeler_{key}"] == pytest.approx(sum(flags) / 8)
            cell = shares["all"][key]
            assert 0 <= cell["ci_low"] <= cell["share"] <= cell["ci_high"] <= 1
        families = [judge.judge(r["prompt"], "").family for r in rows]
        for family in set(families):
            assert shares[family]["correct"]["n"] == families.count(family)
    assert "labeler_outcomes" not in results["metrics"]["base"]
    # the out-of-distribution prompts: win rates, and shares per split
    ood_out = results["ood"]
    assert ood_out["num_prompts"] == 6 and ood_out["win_rate"]["llama"]["base"]["n"] == 6
    ood_rows_out = [json.loads(line) for line in (out / "ood_completions.jsonl").read_text().splitlines()]
    assert [r["group"] for r in ood_rows_out] == [r["split"] for r in picked]
    for split in ("casing", "new_words", "new_operands"):
        cell = ood_out["task_shares"]["llama"][split]["on_task"]
        assert cell["n"] == 2
        assert cell["count"] == sum(r["llama_on_task"] for r in ood_rows_out if r["group"] == split)
    assert ood_out["task_shares"]["base"]["new_operands"]["correct"]["n"] == 2
    assert "labeler_correct" in points["step 8"] and 0 <= points["step 8"]["labeler_correct"] <= 1
    report = (out / "report.md").read_text()
    assert "| llama | base |" in report and "![win_rates](plots/win_rates.png)" in report
    assert "## Methods side by side (against base)" in report and "| rloo | step 3 |" in report
    assert "## What the win rate hides" in report and "| llama | new_operands | 2 |" in report
    assert report.count("**Prompt:**") == 2 and report.count("**Prompt (") == 6
    assert (out / "instructgpt_run.json").is_file()


def test_eval_without_a_labeler_on_other_prompts(tmp_path, foreign_models):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Write a poem about rain."}\n{"prompt": "Say hi."}\n')
    out = tmp_path / "eval"
    evaluate.main(
        [
            "--models",
            str(foreign_models / "llama"),
            "--prompts",
            str(prompts),
            "--output_dir",
            str(out),
            "--max_new_tokens",
            "6",
        ]
    )
    results = json.loads((out / "results.json").read_text())
    assert results["labeler"] is None and results["win_rate"] == {} and results["reference"] is None
    assert results["metrics"]["llama"]["kl_to_reference"] is None
    assert results["metrics"]["llama"]["response_tokens"] <= 6


def test_eval_refuses_bad_models_with_the_name(tmp_path, foreign_models, capsys):
    common = ["--prompts", str(TINY_DATA / "eval_prompts.jsonl"), "--output_dir", str(tmp_path), "--labeler", "none"]
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["--models", f"sft={tmp_path / 'missing'}", *common])
    assert exit_.value.code == 2 and "--models sft" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main(["--models", f"rm={foreign_models / 'rm'}", *common])
    assert "holds a reward model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main(
            ["--models", f"a={TINY_BASE}", "--prompts", str(tmp_path / "none.jsonl"), "--output_dir", str(tmp_path)]
        )
    assert "none.jsonl" in capsys.readouterr().err


def test_best_of_n_keeps_the_reward_models_favourite_and_reports_its_closed_form_kl(tmp_path, foreign_models):
    """best_of_4: of the 4 samples the shared sampler draws per prompt (same seed), the one the RM scores highest."""
    from instructgpt.data.formats import load_prompts
    from instructgpt.modeling import load_policy
    from instructgpt.modeling.reward import load_reward_model, score_responses
    from instructgpt.sampling import generate_samples
    from instructgpt.stages.eval.samples import sample_best_of_n
    from instructgpt.stages.eval.settings import EvalArguments

    prompts = load_prompts(str(TINY_DATA / "eval_prompts.jsonl"), key="--prompts", source="test", limit=5)
    model, tokenizer = load_policy(str(TINY_BASE), key="model", source="test")
    reward = load_reward_model(str(foreign_models / "rm"))
    args = EvalArguments(max_new_tokens=10, seed=3)
    picked = sample_best_of_n(model, tokenizer, prompts, args, 4, reward)
    candidates = generate_samples(model, tokenizer, prompts, num_samples=4, max_new_tokens=10, seed=3)
    for prompt, text, row in zip(prompts, picked.texts, candidates):
        scores = score_responses(reward[0], reward[1], [prompt] * 4, [s.text for s in row])
        assert text == row[max(range(4), key=scores.__getitem__)].text
    assert picked.kl == [pytest.approx(math.log(4) - 0.75)] * 5

    out = tmp_path / "eval"
    evaluate.main(
        [
            "--models",
            f"base={TINY_BASE}",
            f"best_of_4=best_of_4:{TINY_BASE}",
            "--prompts",
            str(TINY_DATA / "eval_prompts.jsonl"),
            "--max_prompts",
            "5",
            "--output_dir",
            str(out),
            "--reference",
            "base",
            "--reward_model",
            str(foreign_models / "rm"),
            "--max_new_tokens",
            "10",
            "--seed",
            "3",
        ]
    )
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"]["best_of_4"]["kl_to_reference"] == pytest.approx(math.log(4) - 0.75)
    assert results["metrics"]["best_of_4"]["rm_score"] == pytest.approx(
        sum(score_responses(reward[0], reward[1], prompts, picked.texts)) / 5
    )
    assert "| best_of_4 |" in (out / "report.md").read_text()


def test_best_of_n_needs_a_reward_model(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(
            [
                "--models",
                f"best=best_of_4:{TINY_BASE}",
                "--prompts",
                str(TINY_DATA / "eval_prompts.jsonl"),
                "--output_dir",
                str(tmp_path / "eval"),
            ]
        )
    assert exit_.value.code != 0 and "--models best: best-of-n picks with a reward model" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--max_new_tokens", "0", "`max_new_tokens` must be at least 1, got 0"),
        ("--temperature", "-1", "`temperature` must be at least 0, got -1.0"),
        ("--top_p", "1.5", "`top_p` must be between 0 and 1, got 1.5"),
        ("--llm_judge_concurrency", "0", "`llm_judge_concurrency` must be at least 1, got 0"),
        ("--llm_judge_timeout", "0", "`llm_judge_timeout` must be greater than 0, got 0.0"),
        (
            "--vllm_gpu_memory_utilization",
            "0",
            "`vllm_gpu_memory_utilization` must be greater than 0 and at most 1, got 0.0",
        ),
    ],
)
def test_eval_refuses_numbers_out_of_range_before_any_model_loads(tmp_path, capsys, flag, value, message):
    """Each number's range sits on its field, checked when the arguments are parsed."""
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(
            [
                "--models",
                f"a={TINY_BASE}",
                "--prompts",
                str(TINY_DATA / "eval_prompts.jsonl"),
                "--output_dir",
                str(tmp_path / "eval"),
                flag,
                value,
            ]
        )
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()
