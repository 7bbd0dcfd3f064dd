"""Issue 6: every stage on an architecture that is not GPT-2, and the reference recipes for larger bases.

(a) Every recipe under recipes/models/ and the top-level GPT-2 recipes parse and validate with their stage's parser
    (Hub ids stay Hub ids: nothing is downloaded), and each model's SFT -> RM -> PPO set is wired together.
(b) A tiny Llama built from a config with random weights (instructgpt.tinyworld.architectures: linear q/k/v
    projections, rotary positions, its own pad token, a ChatML template whose end-of-turn token is not the base EOS)
    goes through SFT, RM (pairs and K-way) and PPO, with and without LoRA, and every output reloads with the Auto
    classes; collection and evaluation sample from it.
(c) The architecture helpers of instructgpt.modeling: per-architecture LoRA targets, the end-of-turn token, and
    the quantization settings' errors on a machine without CUDA or bitsandbytes.
"""

from __future__ import annotations

import importlib
import json
import math
import os  # DEV-ONLY
from pathlib import Path

import pytest
import torch
import yaml

from helpers import REPO, TINY_BASE, TINY_DATA
from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.parser import load_yaml, recipe_stage
from instructgpt.modeling.config import ModelLoadError, read_model_config
from instructgpt.modeling.loading import model_init_kwargs
from instructgpt.modeling.lora import default_lora_target_modules, lora_config, lora_target_modules
from instructgpt.modeling.quantization import QuantizationError, quantization_config
from instructgpt.modeling.tokenizers import end_of_turn_token, eos_mismatch, load_tokenizer
from instructgpt.tinyworld.architectures import IM_END, PAD_TOKEN, TinyArchitecture, build_tiny_model

TINY_BASE = Path(os.environ.get("I6_BASE", TINY_BASE))  # DEV-ONLY

MODEL_RECIPES = sorted((REPO / "recipes" / "models").glob("*/*.yaml"))
MODEL_SETS = sorted({p.parent for p in MODEL_RECIPES})
TOP_LEVEL_RECIPES = [REPO / "recipes" / f"{name}.yaml" for name in ("sft", "rm", "ppo", "pipeline")]


# ================================================================================================================
# (a) Recipes for larger bases
# ================================================================================================================


def _stage_module(stage: str):
    from instructgpt.cli import STAGES

    return importlib.import_module(STAGES[stage])


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_there_are_reference_recipes_for_several_architectures():
    names = {p.name for p in MODEL_SETS}
    assert len(names) >= 3, names
    for folder in MODEL_SETS:
        assert {"sft.yaml", "rm.yaml", "ppo.yaml"} <= {p.name for p in folder.glob("*.yaml")}, folder


@pytest.mark.parametrize("path", MODEL_RECIPES + TOP_LEVEL_RECIPES, ids=_rel)
def test_recipe_parses_and_validates_without_downloading(path):
    """Each recipe goes through its stage's own parser; a pipeline recipe is also planned, and every stage it plans
    is parsed with the wiring the pipeline adds, as the run would parse it."""
    assert path.is_file(), f"{_rel(path)} is missing"
    stage = recipe_stage(path)
    parsed = _stage_module(stage).parse_args([_rel(path)])
    if stage != "pipeline":
        return
    from instructgpt.stages.pipeline.evaluation import build_eval_args
    from instructgpt.stages.pipeline.plan import Planner

    args, recipe, _ = parsed
    stages, eval_settings = Planner(args, recipe, {}).plan()
    assert [s.stage for s in stages] == ["sft", "rm", "ppo"]
    for planned in stages:
        _stage_module(planned.stage).parse_args(planned.argv())
    if eval_settings is not None:
        build_eval_args(eval_settings, recipe.source)


@pytest.mark.parametrize("folder", MODEL_SETS, ids=lambda p: p.name)
def test_model_recipe_set_is_wired_together_and_says_its_hardware(folder):
    recipes = {name: load_yaml(folder / f"{name}.yaml") for name in ("sft", "rm", "ppo")}
    assert {name: r["stage"] for name, r in recipes.items()} == {"sft": "sft", "rm": "rm", "ppo": "ppo"}
    sft_out = recipes["sft"]["output_dir"]
    assert recipes["rm"]["model_name_or_path"] == sft_out
    assert recipes["ppo"]["model_name_or_path"] == sft_out
    assert recipes["ppo"]["reward_model_path"] == recipes["rm"]["output_dir"]
    assert len({recipes[n]["output_dir"] for n in recipes}) == 3
    for path in folder.glob("*.yaml"):
        header = []
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            header.append(line)
        text = " ".join(header)
        assert "Sized for" in text and "GPU" in text, (
            f"{_rel(path)}: the top comment must say what hardware it is sized for"
        )
    if (folder / "pipeline.yaml").is_file():
        pipeline = load_yaml(folder / "pipeline.yaml")
        assert [pipeline[k] for k in ("sft", "rm", "ppo")] == [_rel(folder / f"{k}.yaml") for k in ("sft", "rm", "ppo")]


@pytest.mark.parametrize("path", [p for p in MODEL_RECIPES if "chat_template" in load_yaml(p)], ids=_rel)
def test_recipe_chat_template_renders_prompts_as_prefixes_and_ends_answers_with_its_eos(path, tiny_llama):
    """SFT's response-only loss and generation both need the prompt's rendering to be a prefix of prompt + answer;
    the answer must end with the token the recipe makes the EOS, or sampling would not stop there."""
    recipe = load_yaml(path)
    tokenizer = load_tokenizer(str(tiny_llama), chat_template=recipe["chat_template"])
    messages = [{"role": "user", "content": "Describe the rustbeetle."}]
    answer = {"role": "assistant", "content": "The rustbeetle is large."}
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages + [answer], tokenize=False)
    assert full.startswith(prompt) and len(full) > len(prompt)
    assert full.endswith(answer["content"] + recipe["eos_token"])


# ================================================================================================================
# (b) The second tiny architecture through every stage
# ================================================================================================================


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matrices: one thread is faster than two fighting over a shared CPU (4 s vs 0.08 s a step measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    assert (TINY_BASE / "tokenizer.json").is_file(), f"{TINY_BASE} is missing (instructgpt recipes/tiny/pretrain.yaml)"
    return build_tiny_model(
        tmp_path_factory.mktemp("arch") / "llama", TINY_BASE, TinyArchitecture(architecture="llama")
    )


def _write_recipe(path: Path, settings: dict) -> str:
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return str(path)


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _demonstrations(n: int) -> list[dict]:
    rows = [json.loads(line) for line in (TINY_DATA / "sft_train.jsonl").read_text().splitlines()[:n]]
    return [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]


QUIET = {
    "report_to": "none",
    "eval_strategy": "no",
    "save_strategy": "no",
    "logging_steps": 1,
    "dataloader_num_workers": 0,
    "if_output_exists": "overwrite",
    "seed": 0,
}


def run_stage(stage: str, recipe_dir: Path, name: str, settings: dict) -> dict:
    from instructgpt.stages.ppo.run import run_ppo
    from instructgpt.stages.rm import run_rm
    from instructgpt.stages.sft import run_sft

    recipe = _write_recipe(recipe_dir / f"{name}.yaml", {"stage": stage, **QUIET, **settings})
    (a, b, c), parsed = _stage_module(stage).parse_args([recipe])
    return {"sft": run_sft, "rm": run_rm, "ppo": run_ppo}[stage](a, b, c, parsed)


def sft_settings(base: Path, output_dir: Path, **extra) -> dict:
    return {
        "model_name_or_path": str(base),
        "dataset_name": str(TINY_DATA / "sft_train.jsonl"),
        "max_train_samples": 48,
        "eos_token": IM_END,  # ChatML ends answers with <|im_end|>; the base EOS is <|endoftext|> (as in Qwen2.5)
        "output_dir": str(output_dir),
        "max_length": 96,
        "max_steps": 3,
        "per_device_train_batch_size": 8,
        "learning_rate": 1.0e-3,
        **extra,
    }


@pytest.fixture(scope="module")
def sft_model(tiny_llama, tmp_path_factory) -> tuple[Path, dict]:
    work = tmp_path_factory.mktemp("sft")
    metrics = run_stage("sft", work, "sft", sft_settings(tiny_llama, work / "out"))
    return work / "out", metrics


@pytest.fixture(scope="module")
def preference_files(tmp_path_factory) -> dict[str, str]:
    """Pairs (TRL's prompt/chosen/rejected) and K = 4 rankings, the demonstration ranked above other prompts'
    answers; 40 prompts."""
    rows = _demonstrations(40)
    work = tmp_path_factory.mktemp("prefs")
    pairs = [
        {"prompt": r["prompt"], "chosen": r["completion"], "rejected": rows[(i + 7) % 40]["completion"]}
        for i, r in enumerate(rows)
    ]
    rankings = [
        {
            "prompt": r["prompt"],
            "responses": [r["completion"]] + [rows[(i + k) % 40]["completion"] for k in (3, 11, 19)],
        }
        for i, r in enumerate(rows)
    ]
    return {
        "pairs": _write_jsonl(work / "pairs.jsonl", pairs),
        "rankings": _write_jsonl(work / "rankings.jsonl", rankings),
    }


def rm_settings(sft_dir: Path, data: str, output_dir: Path, **extra) -> dict:
    return {
        "model_name_or_path": str(sft_dir),
        "dataset_name": data,
        "eval_fraction": 0.2,
        "demonstrations_dataset": str(TINY_DATA / "sft_eval.jsonl"),
        "max_demonstrations": 16,
        "output_dir": str(output_dir),
        "max_length": 96,
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 8,
        "learning_rate": 1.0e-3,
        **extra,
    }


@pytest.fixture(scope="module")
def reward_model(sft_model, preference_files, tmp_path_factory) -> tuple[Path, dict]:
    work = tmp_path_factory.mktemp("rm")
    metrics = run_stage("rm", work, "rm", rm_settings(sft_model[0], preference_files["pairs"], work / "out"))
    return work / "out", metrics


def ppo_settings(sft_dir: Path, rm_dir: Path, output_dir: Path, **extra) -> dict:
    return {
        "model_name_or_path": str(sft_dir),
        "reward_model_path": str(rm_dir),
        "dataset_name": str(TINY_DATA / "ppo_prompts.jsonl"),
        "max_train_samples": 32,
        "output_dir": str(output_dir),
        "total_episodes": 16,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 2,
        "num_mini_batches": 2,
        "num_ppo_epochs": 1,
        "response_length": 12,
        "local_rollout_forward_batch_size": 8,
        "learning_rate": 1.0e-3,
        "num_sample_generations": 0,
        **extra,
    }


def _state(path: Path, auto_class: str = "AutoModelForCausalLM") -> dict[str, torch.Tensor]:
    import transformers

    model = getattr(transformers, auto_class).from_pretrained(str(path))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], part: str) -> bool:
    names = [k for k in before if part in k and k in after]
    assert names, f"no parameter named like {part!r}"
    return any(not torch.equal(before[k], after[k]) for k in names)


def test_tiny_llama_is_everything_gpt2_is_not(tiny_llama):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_llama)
    assert config.model_type == "llama" and config.architectures == ["LlamaForCausalLM"]
    assert config.num_key_value_heads < config.num_attention_heads  # grouped-query attention
    tokenizer = load_tokenizer(str(tiny_llama))
    assert tokenizer.chat_template is not None and "<|im_start|>" in tokenizer.chat_template  # its own template
    assert tokenizer.pad_token == PAD_TOKEN and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.model_max_length == config.max_position_embeddings == TinyArchitecture().max_position_embeddings
    assert config.vocab_size == len(tokenizer) and config.pad_token_id == tokenizer.pad_token_id
    names = {name for name, _ in AutoModelForCausalLM.from_pretrained(tiny_llama).named_modules()}
    assert any(n.endswith("self_attn.q_proj") for n in names) and not any("c_attn" in n for n in names)
    assert end_of_turn_token(tokenizer) == IM_END and eos_mismatch(tokenizer) == IM_END


def test_qwen2_variant_builds_from_the_command_line_and_loads(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from instructgpt.tinyworld.architectures import main

    path = tmp_path / "qwen2"
    main(
        [
            "--output_dir",
            str(path),
            "--base_tokenizer",
            str(TINY_BASE),
            "--architecture",
            "qwen2",
            "--num_hidden_layers",
            "1",
            "--hidden_size",
            "32",
        ]
    )
    assert f"tiny qwen2 model saved to {path}" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.model.layers[0].self_attn.q_proj.bias is not None  # Qwen2's q/k/v biases
    head = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    assert type(head).__name__ == "Qwen2ForSequenceClassification"


def test_tiny_architecture_needs_the_tiny_world_tokenizer(tmp_path, capsys):
    from instructgpt.tinyworld.architectures import main

    with pytest.raises(SystemExit) as exit_:
        main(["--output_dir", str(tmp_path / "out"), "--base_tokenizer", str(tmp_path / "missing")])
    assert exit_.value.code == 2 and f"no tokenizer at {tmp_path / 'missing'}" in capsys.readouterr().err


def test_tiny_architecture_rejects_bad_sizes():
    with pytest.raises(InstructGPTError, match="num_key_value_heads"):
        TinyArchitecture(num_attention_heads=4, num_key_value_heads=3)
    with pytest.raises(InstructGPTError, match="architecture"):
        TinyArchitecture(architecture="gpt2")  # type: ignore[arg-type]


def test_sft_on_llama_takes_pad_eos_and_template_from_the_tokenizer(sft_model, tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, metrics = sft_model
    assert metrics["global_step"] == 3 and math.isfinite(metrics["train_loss"])
    assert metrics["last_logged_loss"] < metrics["first_logged_loss"]
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "LlamaForCausalLM"
    # the recipe's eos_token became the EOS everywhere later stages read it; the pad token stayed the tokenizer's own
    assert tokenizer.eos_token == IM_END and tokenizer.pad_token == PAD_TOKEN
    eos_ids = model.generation_config.eos_token_id
    assert tokenizer.eos_token_id in (eos_ids if isinstance(eos_ids, list) else [eos_ids])
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert eos_mismatch(tokenizer) is None  # the template's end of turn is now the EOS
    assert "<|im_start|>" in tokenizer.chat_template  # the tokenizer's own template, not one built from prompt_template
    assert _changed(_state(tiny_llama), _state(out), "mlp.down_proj")


def test_sft_with_lora_uses_the_llama_default_targets(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    run_stage("sft", tmp_path, "sft", sft_settings(tiny_llama, out, use_peft=True, lora_r=4, lora_alpha=8, max_steps=2))
    reloaded = AutoModelForCausalLM.from_pretrained(out)  # an adapter directory loads on its base, or a merged model
    assert type(reloaded).__name__ == "LlamaForCausalLM"
    if (out / "adapter_config.json").is_file():
        adapter = json.loads((out / "adapter_config.json").read_text())
        assert set(adapter["target_modules"]) == {"q_proj", "v_proj"}
        assert any("lora_B" in n for n, _ in reloaded.named_parameters())
    else:  # merged: only the default targets moved
        before, after = _state(tiny_llama), _state(out)
        assert _changed(before, after, "self_attn.q_proj") and _changed(before, after, "self_attn.v_proj")
        assert not _changed(before, after, "mlp.down_proj")


def test_reward_model_from_pairs_on_llama(reward_model, sft_model):
    from transformers import AutoModelForSequenceClassification

    from instructgpt.modeling.reward import NORMALIZATION_FILE, load_reward_model, score_responses

    out, metrics = reward_model
    assert metrics["global_step"] == 2 and math.isfinite(metrics["last_logged_loss"])
    assert metrics["eval_num_comparisons"] == metrics["eval_num_rankings"]  # pairs: one comparison per ranking
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.num_labels == 1
    assert model.config.pad_token_id == load_tokenizer(str(out)).pad_token_id != load_tokenizer(str(out)).eos_token_id
    stored = json.loads((out / NORMALIZATION_FILE).read_text())["shift"]
    assert model.config.reward_shift == pytest.approx(stored)
    rm, tokenizer, shift = load_reward_model(str(out))
    demos = _demonstrations(4)
    scores = score_responses(rm, tokenizer, [d["prompt"] for d in demos], [d["completion"] for d in demos])
    raw = score_responses(rm, tokenizer, [d["prompt"] for d in demos], [d["completion"] for d in demos], shift=0.0)
    assert scores == pytest.approx([r - shift for r in raw])


def test_kway_reward_model_with_lora_on_llama(sft_model, preference_files, tmp_path):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "out"
    metrics = run_stage(
        "rm",
        tmp_path,
        "rm",
        rm_settings(sft_model[0], preference_files["rankings"], out, use_peft=True, lora_r=4, lora_alpha=8),
    )
    assert metrics["eval_num_comparisons"] == 6 * metrics["eval_num_rankings"]  # K = 4: C(4,2) = 6 per prompt
    assert not (out / "adapter_config.json").exists()  # merged into a standard reward model
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert not any("lora" in name for name, _ in model.named_parameters())
    before = _state(sft_model[0], "AutoModelForSequenceClassification")
    after = {k: v for k, v in model.state_dict().items()}
    assert _changed(before, after, "self_attn.q_proj") and not _changed(before, after, "mlp.down_proj")


@pytest.mark.parametrize("use_peft", [False, True], ids=["full", "lora"])
def test_ppo_on_llama(use_peft, sft_model, reward_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from instructgpt.stages.ppo.output import VALUE_MODEL_DIR

    out = tmp_path / "out"
    extra = {"use_peft": True, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0} if use_peft else {}
    metrics = run_stage("ppo", tmp_path, "ppo", ppo_settings(sft_model[0], reward_model[0], out, **extra))
    assert metrics["global_step"] == 2 and metrics["episode"] == 16
    assert all(math.isfinite(metrics[k]) for k in ("objective/scores", "objective/kl", "loss/policy_avg"))
    policy = AutoModelForCausalLM.from_pretrained(out)
    assert type(policy).__name__ == "LlamaForCausalLM" and not (out / "adapter_config.json").exists()
    assert AutoTokenizer.from_pretrained(out).eos_token == IM_END  # PPO sampled up to the end-of-turn token
    value = AutoModelForSequenceClassification.from_pretrained(out / VALUE_MODEL_DIR)
    assert type(value).__name__ == "LlamaForSequenceClassification"
    before, after = _state(sft_model[0]), {k: v for k, v in policy.state_dict().items()}
    assert _changed(before, after, "self_attn.q_proj")
    assert _changed(before, after, "mlp.down_proj") is (not use_peft)  # LoRA touched its default targets only


def test_collection_on_llama(sft_model, tmp_path):
    """K samples per prompt from a policy with its own pad token, ranked by the tiny world's labeler."""
    from instructgpt.stages.collect import run_collect

    (args,), parsed = _stage_module("collect").parse_args(
        [
            _write_recipe(
                tmp_path / "collect.yaml",
                {
                    "stage": "collect",
                    "model_name_or_path": str(sft_model[0]),
                    "dataset_name": str(TINY_DATA / "rm_prompts.jsonl"),
                    "max_prompts": 6,
                    "num_responses": 2,
                    "max_new_tokens": 8,
                    "batch_size": 16,
                    "labeler": "simulated",
                    "output_dir": str(tmp_path / "collect"),
                    "report_to": "none",
                },
            )
        ]
    )
    metrics = run_collect(args, parsed)
    rows = [json.loads(line) for line in (tmp_path / "collect" / "rankings.jsonl").read_text().splitlines()]
    assert rows and metrics["num_rankings"] == len(rows)
    specials = ("<|pad|>", "<|im_end|>", "<|im_start|>", "<|endoftext|>")
    assert all(not any(s in text for s in specials) for r in rows for text in r["responses"])


def test_evaluation_on_llama(sft_model, reward_model, tiny_llama, tmp_path):
    """Sampling with left padding by <|pad|>, stopping at <|im_end|>, RM scores and the exact KL to the SFT model."""
    from instructgpt.stages.eval import EvalArguments, run_eval

    results = run_eval(
        EvalArguments(
            models=[f"base={tiny_llama}", f"sft={sft_model[0]}"],
            prompts=str(TINY_DATA / "eval_prompts.jsonl"),
            max_prompts=6,
            max_new_tokens=8,
            batch_size=8,
            labeler="simulated",
            reward_model=str(reward_model[0]),
            output_dir=str(tmp_path / "eval"),
        ),
        source="test",
    )
    sft = results["metrics"]["sft"]
    assert sft["kl_to_reference"] == pytest.approx(0.0, abs=1e-6)  # the reference is the SFT model itself
    assert math.isfinite(results["metrics"]["base"]["kl_to_reference"])
    assert math.isfinite(sft["rm_score"]) and 0 < sft["response_tokens"] <= 8


def test_ppo_reads_the_reward_where_the_reward_model_was_trained_to_give_it(reward_model):
    """The RM stage scores ``chat_template(prompt + response)``; PPO scores ``[prompt | sampled tokens up to EOS]``.
    With ChatML the template writes a newline after <|im_end|>, so unless the reward texts stop at the EOS, the two
    read the score head at different tokens."""
    from instructgpt.modeling.reward import load_reward_model, score_responses
    from instructgpt.sampling import encode_prompts
    from instructgpt.stages.ppo.models import Sequences, score_parts, sequence_scores

    model, tokenizer, shift = load_reward_model(str(reward_model[0]))
    prompt, response = "Describe the rustbeetle.", "The rustbeetle is large."
    stage_score = score_responses(model, tokenizer, [prompt], [response])[0]
    query = torch.tensor(encode_prompts(tokenizer, [prompt], None))
    sampled = torch.tensor([tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]])
    seqs = Sequences.build(query, torch.ones_like(query), sampled, torch.ones_like(sampled))
    with torch.no_grad():
        ppo_score = sequence_scores(*score_parts(model, "reward_model_path", "rm"), seqs, model.config.pad_token_id)
    assert ppo_score.item() - shift == pytest.approx(stage_score, abs=1e-5)


# ================================================================================================================
# (c) Architecture helpers
# ================================================================================================================


def _model_args(**kwargs):
    from trl import ModelConfig

    return ModelConfig(**kwargs)


def test_default_lora_targets_follow_the_architecture():
    assert default_lora_target_modules("gpt2") == ["c_attn"]
    assert default_lora_target_modules("gpt_neox") == ["query_key_value"]  # Pythia
    assert default_lora_target_modules("llama") == ["q_proj", "v_proj"]
    assert default_lora_target_modules("qwen2") == ["q_proj", "v_proj"]
    assert default_lora_target_modules("a_new_architecture") == "all-linear"
    assert default_lora_target_modules(None) == "all-linear"


def test_lora_targets_from_the_model_recipe_or_all_linear(tiny_llama):
    llama = str(tiny_llama)
    assert lora_target_modules(_model_args(model_name_or_path=llama)) == ["q_proj", "v_proj"]
    gpt2 = str(TINY_BASE)  # the tiny GPT-2, whose Conv1D names are right for it
    assert lora_target_modules(_model_args(model_name_or_path=gpt2)) == ["c_attn"]
    assert lora_target_modules(_model_args(model_name_or_path=gpt2, lora_target_modules=["c_attn", "c_proj"])) == [
        "c_attn",
        "c_proj",
    ]
    assert (
        lora_target_modules(_model_args(model_name_or_path=llama, lora_target_modules=["all-linear"])) == "all-linear"
    )
    chosen = _model_args(model_name_or_path=llama, lora_target_modules=["q_proj", "k_proj", "gate_proj"])
    assert lora_target_modules(chosen) == ["q_proj", "k_proj", "gate_proj"]
    config = lora_config(_model_args(model_name_or_path=llama, use_peft=True, lora_r=8), "SEQ_CLS")
    assert set(config.target_modules) == {"q_proj", "v_proj"} and config.r == 8 and config.task_type == "SEQ_CLS"
    assert lora_config(_model_args(model_name_or_path=llama), "CAUSAL_LM") is None  # use_peft: false


def test_gpt2_lora_targets_on_a_llama_fail_naming_the_key(tiny_llama):
    stale = _model_args(model_name_or_path=str(tiny_llama), lora_target_modules=["c_attn", "c_proj"], use_peft=True)
    with pytest.raises(ModelLoadError, match=r"sft\.yaml: `lora_target_modules`: \['c_attn', 'c_proj'\].*q_proj"):
        lora_config(stale, "CAUSAL_LM", source="sft.yaml")


def test_an_adapter_directory_stands_for_its_base_model(tiny_llama, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_llama)}))
    assert read_model_config(str(adapter)).model_type == "llama"
    assert lora_target_modules(_model_args(model_name_or_path=str(adapter))) == ["q_proj", "v_proj"]
    assert read_model_config(str(tmp_path / "nothing-here")) is None
    # no config to read: no guess either, peft picks from the model it is given
    assert lora_target_modules(_model_args(model_name_or_path=str(tmp_path / "nothing-here"))) is None


def test_end_of_turn_token_of_a_template_built_from_a_prompt_template():
    tokenizer = load_tokenizer(str(TINY_BASE))  # the tiny GPT-2: no template of its own
    assert end_of_turn_token(tokenizer) == tokenizer.eos_token and eos_mismatch(tokenizer) is None


def test_quantization_is_off_unless_asked_and_needs_cuda():
    assert quantization_config(_model_args(model_name_or_path="m")) is None
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(QuantizationError, match=r"rm\.yaml: `load_in_4bit: true`.*CUDA GPU"):
        quantization_config(_model_args(model_name_or_path="m", load_in_4bit=True, use_peft=True), "rm.yaml")
    with pytest.raises(QuantizationError, match="`load_in_8bit: true`"):
        model_init_kwargs(_model_args(model_name_or_path="m", load_in_8bit=True, use_peft=True), source="x.yaml")
    # a model loaded without quantization whatever the recipe says (e.g. a value function trained in full)
    kwargs = model_init_kwargs(_model_args(model_name_or_path="m", load_in_4bit=True), quantize=False)
    assert "quantization_config" not in kwargs


def test_quantization_errors_name_the_missing_piece(monkeypatch):
    import importlib.util

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a)
    )
    with pytest.raises(QuantizationError, match="pip install bitsandbytes"):
        quantization_config(_model_args(model_name_or_path="m", load_in_4bit=True, use_peft=True))
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "bitsandbytes" else real_find_spec(name, *a)
    )
    with pytest.raises(QuantizationError, match="use_peft: true"):
        quantization_config(_model_args(model_name_or_path="m", load_in_4bit=True))
    config = quantization_config(
        _model_args(model_name_or_path="m", load_in_4bit=True, use_peft=True, use_bnb_nested_quant=True)
    )
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16  # the recipe's float32 is no compute dtype for 4-bit
    assert quantization_config(_model_args(model_name_or_path="m", load_in_4bit=True), trainable=False) is not None


def test_sft_stage_with_load_in_4bit_on_a_cpu_machine_exits_with_the_key(tiny_llama, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from instructgpt.stages.sft import main

    recipe = _write_recipe(
        tmp_path / "sft.yaml",
        {
            "stage": "sft",
            **QUIET,
            **sft_settings(tiny_llama, tmp_path / "out", use_peft=True, load_in_4bit=True, max_train_samples=8),
        },
    )
    with pytest.raises(SystemExit) as exit_:
        main([recipe])
    assert exit_.value.code == 2
    assert "`load_in_4bit: true`" in capsys.readouterr().err
