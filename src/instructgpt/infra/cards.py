"""Model and dataset cards: the ``README.md`` the Hub shows for an output directory.

A model card opens with what the model is and how it was made (the stage, its base, its data, the trainer, the key
settings and results), then a quick start that runs as written: it loads the output by its directory, and by its
Hub id in the copy :func:`~instructgpt.infra.hub.push_output` uploads (:func:`card_for_hub`), and it asks a prompt
from the model's own training data in the format it was trained on (the chat template saved with the tokenizer).
The metadata is huggingface_hub's ``ModelCardData``: only what we know (no license field we cannot fill).
Sections added later, such as the pipeline's evaluation (:func:`add_card_section`), go before the framework
versions and the citation, which stay last.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData

from instructgpt.infra.files import atomic_write_text

CARD_FILE = "README.md"
INSTRUCTGPT_CITATION = """\
@inproceedings{ouyang2022training,
    title        = {{Training language models to follow instructions with human feedback}},
    author       = {Long Ouyang and Jeff Wu and Xu Jiang and others},
    year         = 2022,
    booktitle    = {Advances in Neural Information Processing Systems 35 (NeurIPS 2022)},
}"""
# the card's closing sections: later sections are inserted before the first of them
TAIL_HEADER = "## Framework versions"
VERSIONED = ("instructgpt", "transformers", "trl", "torch", "datasets", "peft", "accelerate")
# what a model is, for its quick start and its metadata: a policy answers prompts, a base model continues text, a
# reward model scores a (prompt, response) pair
ModelKind = Literal["policy", "base", "reward"]
Prompt = str | list[dict[str, str]]  # as in instructgpt.data.formats: a string, or chat turns
PIPELINE_TAGS = {"policy": "text-generation", "base": "text-generation", "reward": "text-classification"}


def hub_id(name_or_path: str | None) -> str | None:
    """``name_or_path`` when it names a Hub repository (``gpt2``, ``org/name``), None for a local path."""
    if not name_or_path or Path(name_or_path).expanduser().exists() or name_or_path.startswith((".", "/", "~")):
        return None
    return name_or_path if name_or_path.count("/") <= 1 else None


def _name(name_or_path: str) -> str:
    """A model or dataset as a card shows it: a link to its Hub page, or its local path as code."""
    repo = hub_id(name_or_path)
    return f"[{repo}](https://huggingface.co/{repo})" if repo else f"`{name_or_path}`"


def _markdown_table(rows: dict[str, Any]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value).replace("|", "\\|")

    lines = ["| | |", "|---|---|"] + [f"| {key} | {cell(value)} |" for key, value in rows.items() if value is not None]
    return "\n".join(lines)


def _versions() -> str:
    lines = []
    for package in VERSIONED:
        try:
            lines.append(f"- {package} {version(package)}")
        except PackageNotFoundError:
            continue
    return "\n".join(lines)


def _messages(prompt: Prompt) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def quick_start(kind: ModelKind, model_ref: str, example: Prompt | None, response: str | None = None) -> str:
    """Python that loads the model at ``model_ref`` with transformers alone and uses it once on ``example``.

    - ``policy``: the text-generation pipeline on chat messages, so the tokenizer's saved chat template formats the
      prompt exactly as in training;
    - ``base``: the pipeline continuing plain text;
    - ``reward``: the score of ``example`` answered by ``response``, read at the answer's EOS (as
      :func:`instructgpt.modeling.reward.reward_texts` does) and shifted by the stored ``config.reward_shift``, so
      that demonstrations score 0 on average.
    """
    ref = json.dumps(model_ref)
    if kind == "base":
        text = json.dumps(example if isinstance(example, str) and example else "The")
        return "\n".join(
            [
                "from transformers import pipeline",
                "",
                f'generator = pipeline("text-generation", model={ref})',
                f'print(generator({text}, max_new_tokens=48, do_sample=False)[0]["generated_text"])',
            ]
        )
    messages = json.dumps(_messages(example or "Write one sentence about the sea."), ensure_ascii=False)
    if kind == "policy":
        return "\n".join(
            [
                "from transformers import pipeline",
                "",
                f'generator = pipeline("text-generation", model={ref})',
                f"messages = {messages}",
                "answer = generator(messages, max_new_tokens=64, do_sample=False, return_full_text=False)",
                'print(answer[0]["generated_text"])',
            ]
        )
    conversation = _messages(example or "Write one sentence about the sea.")
    conversation.append({"role": "assistant", "content": response or ""})
    return "\n".join(
        [
            "import torch",
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
            "",
            f"tokenizer = AutoTokenizer.from_pretrained({ref})",
            f"model = AutoModelForSequenceClassification.from_pretrained({ref})",
            f"conversation = {json.dumps(conversation, ensure_ascii=False)}",
            "text = tokenizer.apply_chat_template(conversation, tokenize=False)",
            "if tokenizer.eos_token and tokenizer.eos_token in text:  # the score is read at the answer's EOS",
            "    text = text[: text.rindex(tokenizer.eos_token) + len(tokenizer.eos_token)]",
            'inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)',
            "with torch.no_grad():",
            "    score = model(**inputs).logits[0, 0].item()",
            "print(score - model.config.reward_shift)  # shifted so that demonstrations score 0 on average",
        ]
    )


def write_model_card(
    output_dir: str | Path,
    *,
    stage: str,
    title: str,
    trainer: str,
    kind: ModelKind,
    base_model: str | None,
    datasets: Sequence[str | None] = (),
    example: Prompt | None = None,
    example_response: str | None = None,
    summary: str = "",
    settings: dict[str, Any] | None = None,
    results: dict[str, Any] | None = None,
    notes: str = "",
) -> Path:
    """Write ``README.md`` (atomically) into ``output_dir``: what the model is and how it was made, then a quick
    start on ``example`` (a prompt of its training data), the framework versions and the citation.

    ``trainer`` says what trained it (``TRL's SFTTrainer``, ``instructgpt's own PPO``), ``kind`` what it is for
    (:data:`ModelKind`), ``notes`` anything a user of the files must know (where PPO's value model is).
    """
    output_dir = Path(output_dir)
    data = [d for d in datasets if d]
    metadata = ModelCardData(
        base_model=hub_id(base_model),
        datasets=[d for d in (hub_id(d) for d in data) if d] or None,
        library_name="transformers",
        pipeline_tag=PIPELINE_TAGS[kind],
        tags=["instructgpt", "rlhf", stage],
    )
    made = {
        "stage": f"`{stage}` ({title})",
        "base model": _name(base_model) if base_model else "none (trained from scratch)",
        "data": ", ".join(_name(d) for d in data) or None,
        "trained with": trainer,
    }
    lines = [f"# {output_dir.name}", "", summary.strip(), "", "## How it was made", "", _markdown_table(made), ""]
    if settings:
        lines += ["### Settings", "", _markdown_table(settings), ""]
    if results:
        lines += ["### Results", "", _markdown_table(results), ""]
    lines += ["## Quick start", "", "```python", quick_start(kind, str(output_dir), example, example_response), "```"]
    lines += ["", notes.strip(), ""] if notes.strip() else [""]
    lines += [TAIL_HEADER, "", _versions(), "", "## Citation", "", "```bibtex", INSTRUCTGPT_CITATION, "```", ""]
    card = ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n" + "\n".join(lines))
    path = output_dir / CARD_FILE
    atomic_write_text(path, str(card).rstrip() + "\n")
    return path


def write_dataset_card(
    output_dir: str | Path,
    *,
    stage: str,
    title: str,
    source_model: str | None,
    datasets: Sequence[str | None] = (),
    summary: str = "",
    settings: dict[str, Any] | None = None,
    results: dict[str, Any] | None = None,
) -> Path:
    """Write a dataset card ``README.md`` (atomically) into ``output_dir``, for stages whose output is data (the
    rankings of ``collect``): huggingface_hub's ``DatasetCard`` metadata, then what the stage did and measured."""
    output_dir = Path(output_dir)
    data = DatasetCardData(
        tags=["instructgpt", "rlhf", stage, "preference"],
        task_categories=["text-generation"],
        source_datasets=[d for d in (hub_id(d) for d in datasets) if d] or None,
    )
    lines = [f"# {output_dir.name}", "", f"## {title}", "", summary.strip(), ""]
    if source_model:
        lines += [f"Responses sampled from `{source_model}`.", ""]
    local = [d for d in datasets if d and not hub_id(d)]
    if local:
        lines += ["Prompts: " + ", ".join(f"`{d}`" for d in local) + ".", ""]
    if settings:
        lines += ["### Settings", "", _markdown_table(settings), ""]
    if results:
        lines += ["### Results", "", _markdown_table(results), ""]
    lines += ["## Citation", "", "```bibtex", INSTRUCTGPT_CITATION, "```", ""]
    card = DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
    path = output_dir / CARD_FILE
    atomic_write_text(path, str(card).rstrip() + "\n")
    return path


def add_card_section(output_dir: str | Path, title: str, body: str) -> None:
    """Add (or replace) a ``## title`` section of an existing card, e.g. the pipeline's evaluation results: before
    the framework versions and the citation, which stay last."""
    path = Path(output_dir) / CARD_FILE
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    header = f"\n## {title}\n"
    if header in text:  # replace: drop the old section, up to the next section of the same level
        start = text.index(header)
        following = text.find("\n## ", start + len(header))
        text = text[:start] + (text[following:] if following != -1 else "\n")
    section = f"{header}\n{body.strip()}\n"
    tail = text.find(f"\n{TAIL_HEADER}\n")
    text = text.rstrip() + "\n" + section if tail == -1 else text[:tail].rstrip() + "\n" + section + text[tail:]
    atomic_write_text(path, text.rstrip() + "\n")


def card_for_hub(output_dir: str | Path, repo_id: str) -> str | None:
    """The card as the Hub copy holds it: the quick start loads ``repo_id`` instead of the local directory; None
    when ``output_dir`` has no card."""
    path = Path(output_dir) / CARD_FILE
    if not path.is_file():
        return None
    return path.read_text(encoding="utf-8").replace(json.dumps(str(Path(output_dir))), json.dumps(repo_id))
