"""Step 1: SFT on the tiny world, end to end, and every bad input the stage must refuse cleanly."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from helpers import FIXTURES, TINY_BASE, TINY_DATA, accelerate_launch, run_cli
from instructgpt.data import DataError
from instructgpt.infra.files import RUN_MARKER, OutputDirError
from instructgpt.stages.sft import parse_args, run_sft
from wandb_records import read_run

FAST = [
    "--report_to",
    "none",
    "--max_train_samples",
    "256",
    "--per_device_train_batch_size",
    "16",
    "--eval_strategy",
    "no",
    "--save_strategy",
    "no",
    "--logging_steps",
    "2",
]


def sft(output_dir: Path, *extra: str, recipe: str = "recipes/tiny/sft.yaml") -> dict:
    (script, training, model), recipe_obj = parse_args([recipe, "--output_dir", str(output_dir), *FAST, *extra])
    return run_sft(script, training, model, recipe_obj)


@pytest.fixture(scope="module")
def trained_sft(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sft") / "model"
    metrics = sft(out, "--max_steps", "40")
    return out, metrics


def test_tiny_sft_loss_falls_and_model_loads_and_generates(trained_sft):
    out, metrics = trained_sft
    # response loss falls by at least 30% over 40 steps from the pretrained base
    assert metrics["last_logged_loss"] < 0.7 * metrics["first_logged_loss"], metrics
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert tokenizer.pad_token is not None and tokenizer.chat_template
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 3 plus 4?"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("### Response:\n")
    ids = tokenizer(prompt, return_tensors="pt")
    generated = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > ids["input_ids"].shape[1]
    generator = pipeline("text-generation", model=str(out))
    result = generator([{"role": "user", "content": "What is 3 plus 4?"}], max_new_tokens=8, do_sample=False)
    assert result[0]["generated_text"][-1]["role"] == "assistant"
    marker = json.loads((out / RUN_MARKER).read_text())
    assert marker["stage"] == "sft" and marker["recipe"]["stage"] == "sft"


def test_rerun_on_a_trained_model_is_refused_and_nothing_is_touched(trained_sft):
    out, _ = trained_sft
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(OutputDirError, match="already holds a trained model; it was not touched"):
        sft(out, "--max_steps", "1")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    with pytest.raises(OutputDirError, match="if_output_exists: refuse"):
        sft(out, "--max_steps", "1", "--if_output_exists", "refuse")


def test_overwrite_moves_the_old_run_aside(tmp_path, trained_sft):
    out = tmp_path / "model"
    shutil.copytree(trained_sft[0], out)
    old_weights = (out / "model.safetensors").read_bytes()
    sft(out, "--max_steps", "2", "--if_output_exists", "overwrite")
    backups = list(tmp_path.glob("model.old-*"))
    assert len(backups) == 1 and (backups[0] / "model.safetensors").read_bytes() == old_weights
    assert (out / RUN_MARKER).is_file()


def test_interrupted_run_resumes_from_its_last_checkpoint(tmp_path, capsys):
    out = tmp_path / "model"
    sft(out, "--max_steps", "6", "--save_strategy", "steps", "--save_steps", "3")
    # simulate an interruption after the step-6 checkpoint: the final model and the run marker never got written
    (out / RUN_MARKER).unlink()
    (out / "model.safetensors").unlink()
    assert (out / "checkpoint-6").is_dir()
    metrics = sft(out, "--max_steps", "9", "--save_strategy", "steps", "--save_steps", "3")
    assert "resuming the interrupted run" in capsys.readouterr().out
    assert metrics["global_step"] == 9
    state = json.loads((out / "checkpoint-9" / "trainer_state.json").read_text())
    assert state["global_step"] == 9


def test_lora_adapter_loads_with_peft(tmp_path):
    out = tmp_path / "lora"
    sft(out, "--max_steps", "4", "--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8")
    assert (out / "adapter" / "adapter_config.json").is_file()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(TINY_BASE)
    model = PeftModel.from_pretrained(base, out / "adapter")
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # trained, not the zero init
    # the output directory itself holds the merged model, which later stages start from
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    ids = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(merged(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(merged(ids).logits, AutoModelForCausalLM.from_pretrained(TINY_BASE)(ids).logits)


def test_wandb_offline_run_holds_the_metrics_and_recipe(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: nobody is logged in
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    out = tmp_path / "model"
    (script, training, model), recipe = parse_args(
        [
            "recipes/tiny/sft.yaml",
            "--output_dir",
            str(out),
            *FAST,
            "--max_steps",
            "4",
            "--logging_steps",
            "1",
            "--report_to",
            "wandb",
        ]
    )
    run_sft(script, training, model, recipe)
    printed = capsys.readouterr().out
    assert "no login found, logging offline" in printed and "wandb sync" in printed
    run_files = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 1
    logged = read_run(run_files[0])
    assert logged["config"]["dataset_name"] == "data/tiny/sft_train.jsonl"  # the recipe is the run config
    assert logged["config"]["stage"] == "sft"
    losses = [row["train/loss"] for row in logged["history"] if "train/loss" in row]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert logged["summary"]["train/global_step"] == 4


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_bad_data_is_refused_with_file_key_and_row(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"`dataset_name`: data file .*missing\.jsonl not found"):
        sft(out, "--dataset_name", str(tmp_path / "missing.jsonl"))
    bad_columns = _write_jsonl(tmp_path / "cols.jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(
        DataError, match=r"needs columns prompt/completion or messages; it has \['answer', 'question'\]"
    ):
        sft(out, "--dataset_name", bad_columns)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        sft(out, "--dataset_name", str(empty))
    empty_row = _write_jsonl(
        tmp_path / "row.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "  "}]
    )
    with pytest.raises(DataError, match=r"row\.jsonl\) line 2: empty `completion`"):
        sft(out, "--dataset_name", empty_row)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", \n')
    with pytest.raises(DataError, match=r"broken\.jsonl: line 2 is not valid JSON"):
        sft(out, "--dataset_name", str(broken))
    assert not out.exists()  # nothing was created for a run that could not start


def test_long_examples_are_counted_then_truncated_or_dropped(tmp_path, capsys):
    from transformers import AutoTokenizer

    rows = [{"prompt": "What is 1 plus 1?", "completion": "2."}] * 6 + [
        {"prompt": "Describe the sea. " * 20, "completion": "It is wide and deep. " * 20}
    ] * 2
    data = _write_jsonl(tmp_path / "long.jsonl", rows)
    sft(tmp_path / "a", "--dataset_name", data, "--max_length", "48", "--max_steps", "1", "--max_train_samples", "100")
    assert "2 of 8 examples are longer than max_length=48; they are truncated" in capsys.readouterr().out
    metrics = sft(
        tmp_path / "b", "--dataset_name", data, "--max_length", "48", "--max_steps", "1", "--long_examples", "drop"
    )
    assert "dropped 2 of 8 examples longer than max_length=48" in capsys.readouterr().out
    assert metrics["global_step"] == 1
    # a max_length beyond the model's context is capped at the context
    sft(tmp_path / "c", "--dataset_name", data, "--max_length", "100000", "--max_steps", "1")
    context = AutoTokenizer.from_pretrained(TINY_BASE)  # noqa: F841 (load check)
    assert "exceeds the model's context; using" in capsys.readouterr().out


def test_gpt2_recipe_runs_on_a_local_no_robots_fixture(tmp_path):
    """recipes/sft.yaml as written (Hub loading code, `messages` format, train/test splits), with the tiny model
    and a local folder of the same schema standing in for openai-community/gpt2 and HuggingFaceH4/no_robots."""
    out = tmp_path / "gpt2-sft"
    metrics = sft(
        out,
        "--model_name_or_path",
        str(TINY_BASE),
        "--dataset_name",
        str(FIXTURES / "no_robots"),
        "--max_steps",
        "3",
        "--eval_strategy",
        "no",
        "--gradient_accumulation_steps",
        "1",
        recipe="recipes/sft.yaml",
    )
    assert metrics["global_step"] == 3
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "gpt2"


def test_console_script_and_two_process_accelerate_launch(tmp_path):
    single = tmp_path / "single"
    result = run_cli(
        ["instructgpt-sft", "recipes/tiny/sft.yaml", "--output_dir", str(single), *FAST, "--max_steps", "2"]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (single / "model.safetensors").is_file()

    out = tmp_path / "ddp"
    result = run_cli(
        accelerate_launch(
            "-m", "instructgpt", "recipes/tiny/sft.yaml", "--output_dir", str(out), *FAST, "--max_steps", "4"
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "process 0/2: 4 optimizer steps" in result.stdout and "process 1/2: 4 optimizer steps" in result.stdout
    marker = json.loads((out / RUN_MARKER).read_text())
    assert marker["metrics"]["num_processes"] == 2
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.isfinite(next(model.parameters())).all()


def test_trl_sft_loss_equals_masked_token_nll_on_the_same_batch(tmp_path):
    """The stage trains with TRL's own loss; on one real batch it is the project's gradient-checked function."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    from instructgpt.data.formats import load_demonstrations
    from instructgpt.losses import masked_token_nll
    from instructgpt.modeling import load_tokenizer

    (script, training, model_args), _ = parse_args(
        [
            "recipes/tiny/sft.yaml",
            "--output_dir",
            str(tmp_path / "out"),
            "--report_to",
            "none",
            "--per_device_train_batch_size",
            "4",
            "--eval_strategy",
            "no",
        ]
    )
    tokenizer = load_tokenizer(str(TINY_BASE))
    data = load_demonstrations(
        str(TINY_DATA / "sft_train.jsonl"), config=None, split="train", key="dataset_name", source="test", limit=8
    )
    model = AutoModelForCausalLM.from_pretrained(TINY_BASE)
    trainer = SFTTrainer(model=model, args=training, train_dataset=data, processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    assert (batch["labels"] == -100).any() and (batch["labels"] != -100).any()  # prompt masked, response learned
    model.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(model, batch)
        ours = masked_token_nll(
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"]
        )
    assert trl_loss.item() == pytest.approx(ours.item(), rel=1e-5)


@pytest.mark.parametrize("key, value", [("dataset_text_field", "content"), ("assistant_only_loss", "true")])
def test_sft_keys_that_cannot_apply_are_refused(tmp_path, key, value):
    from helpers import python_m

    result = run_cli(
        python_m(
            "instructgpt.stages.sft", "recipes/tiny/sft.yaml", "--output_dir", str(tmp_path / "o"), f"--{key}", value
        )
    )
    assert result.returncode == 2 and f"`{key}` does not apply" in result.stderr and "Traceback" not in result.stderr
