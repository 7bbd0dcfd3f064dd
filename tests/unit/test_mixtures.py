"""Dataset mixtures in TRL's and alignment-handbook's forms, read into one thing, with their libraries' meaning."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from trl.scripts.utils import DatasetConfig, DatasetMixtureConfig, get_dataset

from instructgpt.data import DataError
from instructgpt.data.formats import load_demonstrations, load_prompts
from instructgpt.data.mixtures import MixtureError, read_handbook_mixture, read_trl_mixture
from instructgpt.data.rankings import load_rankings
from instructgpt.infra.parser import RecipeError, RecipeParser
from instructgpt.stages import load_stage


def write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def numbered(tmp_path: Path, name: str, count: int) -> str:
    """A prompt/completion file whose rows say where they come from (``name-i``)."""
    rows = [{"prompt": f"{name}-{i}", "completion": f"answer {name}-{i}"} for i in range(count)]
    return write_rows(tmp_path / f"{name}.jsonl", rows)


def demonstrations(mixture, split="train", limit=None):
    return load_demonstrations(mixture, config=None, split=split, key="dataset_name", source="test", limit=limit)


def texts(rows) -> list[str]:
    """The user turn of each demonstration (a plain `prompt` is read as one user turn)."""
    return [row["prompt"][-1]["content"] for row in rows]


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (3, 1), (0.2, 0.7, 0.1), None])
def test_trl_fractions_select_the_rows_trl_get_dataset_selects(tmp_path, fractions):
    sizes = (10, 7, 12)[: len(fractions) if fractions else 2]
    files = [numbered(tmp_path, f"d{i}", size) for i, size in enumerate(sizes)]
    entries = [
        {"path": "json", "data_files": file} | ({"fraction": fractions[i]} if fractions else {})
        for i, file in enumerate(files)
    ]
    theirs = get_dataset(DatasetMixtureConfig(datasets=[DatasetConfig(**entry) for entry in entries]))["train"]
    ours = demonstrations(read_trl_mixture(entries))
    assert texts(ours) == theirs["prompt"]
    assert len(ours) > 0
    if fractions:  # normalized shares and no row repeated: the smallest entry for its share sets the size
        shares = [f / sum(fractions) for f in fractions]
        total = min(size / share for size, share in zip(sizes, shares))
        for i, share in enumerate(shares):
            assert sum(text.startswith(f"d{i}-") for text in texts(ours)) == round(share * total)
        assert len(set(texts(ours))) == len(ours)


def test_trl_columns_keep_only_the_named_columns_and_a_missing_one_is_named(tmp_path):
    rows = [{"prompt": f"p{i}", "completion": "c", "extra": i} for i in range(4)]
    file = write_rows(tmp_path / "rows.jsonl", rows)
    mixture = read_trl_mixture([{"path": file, "columns": ["prompt", "completion"]}])
    assert demonstrations(mixture).column_names == ["prompt", "completion"]
    mixture = read_trl_mixture([{"path": file}, {"path": file, "columns": ["prompt", "answer"]}])
    with pytest.raises(DataError, match=r"`datasets #2` \(.*rows.jsonl\): no column `answer` to select"):
        demonstrations(mixture)


def test_test_split_size_holds_out_a_seeded_share_or_count(tmp_path):
    file = numbered(tmp_path, "d", 20)
    for size, held in ((0.25, 5), (3, 3)):
        mixture = read_trl_mixture([{"path": file}], test_split_size=size)
        train, test = demonstrations(mixture, "train"), demonstrations(mixture, "test")
        assert len(test) == held and len(train) == 20 - held
        assert not set(texts(train)) & set(texts(test))
        assert texts(demonstrations(mixture, "test")) == texts(test)  # the same rows on a second read
    with pytest.raises(MixtureError, match=r"has no part 'test'.*set `test_split_size`"):
        demonstrations(read_trl_mixture([{"path": file}]), "test")
    with pytest.raises(MixtureError, match=r"`test_split_size` 30 cannot split the 20 rows"):
        demonstrations(read_trl_mixture([{"path": file}], test_split_size=30))
    with pytest.raises(MixtureError, match=r"a share below 1 or a whole number of rows, got 2.5"):
        read_trl_mixture([{"path": file}], test_split_size=2.5)


def test_handbook_weights_keep_a_shuffled_share_of_each_dataset(tmp_path):
    first, second = numbered(tmp_path, "a", 10), numbered(tmp_path, "b", 8)
    value = {
        "datasets": [{"id": first, "weight": 0.5}, {"id": second, "weight": 1.0, "columns": ["prompt", "completion"]}],
        "seed": 3,
    }
    mixed = texts(demonstrations(read_handbook_mixture(value)))
    assert sum(p.startswith("a-") for p in mixed) == 5 and sum(p.startswith("b-") for p in mixed) == 8
    # the handbook's meaning: each dataset shuffled with the seed, its first int(n * weight) rows, all shuffled again
    a = datasets.load_dataset("json", data_files=first, split="train").shuffle(seed=3).select(range(5))
    b = datasets.load_dataset("json", data_files=second, split="train").shuffle(seed=3)
    assert mixed == datasets.concatenate_datasets([a, b]).shuffle(seed=3)["prompt"]
    assert mixed != sorted(mixed)
    assert texts(demonstrations(read_handbook_mixture({**value, "seed": 4}))) != mixed
    held = read_handbook_mixture({**value, "test_split_size": 0.5})
    assert len(demonstrations(held, "test")) == 7 and len(demonstrations(held, "train")) == 6


def test_mixing_messages_with_prompt_completion_meets_in_one_format(tmp_path):
    chats = [
        {"messages": [{"role": "user", "content": f"chat {i}"}, {"role": "assistant", "content": "hi"}]}
        for i in range(3)
    ]
    mixture = read_trl_mixture(
        [{"path": numbered(tmp_path, "plain", 2)}, {"path": write_rows(tmp_path / "c.jsonl", chats)}]
    )
    mixed = demonstrations(mixture)
    assert len(mixed) == 5 and mixed.column_names == ["prompt", "completion"]
    assert mixed[2]["prompt"] == [{"role": "user", "content": "chat 0"}]
    assert mixed[2]["completion"] == [{"role": "assistant", "content": "hi"}]
    # prompts: a `prompt` file beside a `messages` file, each read by the one rule
    prompts = load_prompts(mixture, key="dataset_name", source="test")
    assert prompts[:2] == ["plain-0", "plain-1"] and prompts[2] == [{"role": "user", "content": "chat 0"}]
    assert len(load_prompts(mixture, key="dataset_name", source="test", limit=3)) == 3


def test_a_bad_row_in_an_entry_is_named_by_its_entry_file_and_line(tmp_path):
    good = numbered(tmp_path, "good", 3)
    bad = write_rows(tmp_path / "bad.jsonl", [{"prompt": "p", "completion": "c"}, {"prompt": "p", "completion": ""}])
    with pytest.raises(DataError, match=r"`datasets #2` \(.*bad.jsonl\) line 2: empty `completion`"):
        demonstrations(read_trl_mixture([{"path": good}, {"path": bad}]))
    wrong = write_rows(tmp_path / "wrong.jsonl", [{"question": "q"}])
    with pytest.raises(
        DataError, match=r"`dataset_mixture.datasets #1` \(.*wrong.jsonl\) needs columns prompt/completion or messages"
    ):
        demonstrations(read_handbook_mixture({"datasets": [{"id": wrong}, {"id": good}]}))
    with pytest.raises(DataError, match=r"`datasets #1`: data file .*absent.jsonl not found"):
        demonstrations(read_trl_mixture([{"path": "json", "data_files": str(tmp_path / "absent.jsonl")}]))


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([], r"`datasets` must be a list of datasets"),
        (["data.jsonl"], r"`datasets` #1 must be a mapping with `path`"),
        ([{"path": "a.jsonl", "weight": 1}], r"`datasets` #1: unknown key `weight` \(TRL's form takes path"),
        ([{"path": "a.jsonl", "fraction": 1}, {"path": "b.jsonl"}], r"`datasets #2` has no `fraction`"),
        ([{"path": "a.jsonl", "fraction": 0}], r"add up to 0"),
        ([{"path": "a.jsonl", "fraction": "half"}], r"`fraction` must be a number"),
        ([{"path": "a.jsonl", "columns": [1]}], r"`columns` must be a list of column names"),
        ([{"split": "train"}], r"`datasets` #1 needs `path`"),
    ],
)
def test_a_trl_mixture_it_cannot_mean_is_refused_naming_the_entry(entries, message):
    with pytest.raises(MixtureError, match=message):
        read_trl_mixture(entries)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"datasets": [{"id": "a.jsonl", "weight": 1.5}]}, r"#1: `weight` must be above 0 and at most 1"),
        ({"datasets": [{"id": "a.jsonl", "weight": 0}]}, r"`weight` must be above 0"),
        ({"datasets": [{"path": "a.jsonl"}]}, r"#1: unknown key `path` \(the handbook's form takes id"),
        ({"datasets": [{"id": "a.jsonl"}], "shuffle": True}, r"unknown key `shuffle`"),
        ({"datasets": [{"id": "a.jsonl"}], "seed": "zero"}, r"`dataset_mixture.seed` must be an integer"),
        ({"datasets": [{"id": "a.jsonl"}], "test_split_size": -1}, r"must be above 0"),
        ([{"id": "a.jsonl"}], r"must be a mapping with `datasets`"),
    ],
)
def test_a_handbook_mixture_it_cannot_mean_is_refused_naming_the_entry(value, message):
    with pytest.raises(MixtureError, match=message):
        read_handbook_mixture(value)


def test_implicit_prompt_pairs_are_split_by_the_one_rule(tmp_path):
    def chat(answer, question="What is 2 plus 3?"):
        return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]

    rows = [{"chosen": chat("5."), "rejected": chat("6.")}, {"chosen": chat("4."), "rejected": chat("9.")}]
    file = write_rows(tmp_path / "pairs.jsonl", rows)
    args = {"key": "dataset_name", "source": "test", "config": None, "split": "train", "limit": None}
    rankings = load_rankings(file, score_key="fine-grained_score", **args)
    assert rankings[0]["prompt"] == [{"role": "user", "content": "What is 2 plus 3?"}]
    assert rankings[0]["responses"] == ["5.", "6."]
    rows[1]["rejected"] = chat("9.", question="What is 3 plus 3?")
    write_rows(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(DataError, match=r"pairs.jsonl\) line 2: `chosen` and `rejected` answer different prompts"):
        load_rankings(file, score_key="fine-grained_score", **args)
    rows[1]["rejected"] = chat("9.")[:1]
    write_rows(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(DataError, match=r"line 2: `rejected` does not end with an assistant turn"):
        load_rankings(file, score_key="fine-grained_score", **args)


def parse_sft(tmp_path: Path, recipe: dict):
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps({"stage": "sft", "model_name_or_path": "m", "output_dir": "o", **recipe}))
    return RecipeParser("sft", load_stage("sft").arguments()).parse(["--config", str(path)])


def test_a_recipe_mixture_becomes_the_stage_dataset_and_sets_the_test_part(tmp_path):
    args = parse_sft(tmp_path, {"datasets": [{"path": "a.jsonl"}, {"path": "b.jsonl"}], "test_split_size": 0.1})
    script = args.parts[0]
    assert script.dataset is script.mixture and script.dataset_test_split == "test"
    assert script.dataset_names == ["a.jsonl", "b.jsonl"]
    handbook = parse_sft(tmp_path, {"dataset_mixture": {"datasets": [{"id": "a.jsonl", "weight": 0.5}], "seed": 1}})
    assert handbook.parts[0].mixture.style == "handbook" and handbook.parts[0].dataset_test_split is None
    assert parse_sft(tmp_path, {"dataset_name": "a.jsonl"}).parts[0].dataset == "a.jsonl"


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ({"datasets": [{"path": "a.jsonl"}], "dataset_name": "b.jsonl"}, r"`dataset_name` and `datasets` both name"),
        ({"datasets": [{"path": "a.jsonl"}], "dataset_mixture": {"datasets": []}}, r"keep one"),
        ({"datasets": [{"path": "a.jsonl"}], "dataset_train_split": "train_sft"}, r"each entry names its own `split`"),
        ({"datasets": [{"path": "a.jsonl"}], "dataset_config": "default"}, r"each entry names its own configuration"),
        ({"datasets": [{"path": "a.jsonl"}], "dataset_test_split": "test"}, r"has no part 'test'"),
        ({"datasets": [{"path": "a.jsonl"}], "streaming": True}, r"`streaming: true` is not supported"),
        ({"dataset_name": "a.jsonl", "test_split_size": 0.1}, r"`test_split_size` splits a mixture"),
        ({"dataset_mixture": {"datasets": [{"id": "a"}]}, "test_split_size": 5}, r"goes inside `dataset_mixture`"),
        ({"datasets": [{"path": "a.jsonl", "fraction": 1}, {"path": "b"}]}, r"`datasets #2` has no `fraction`"),
    ],
)
def test_a_recipe_mixture_that_cannot_apply_is_refused_in_one_line(tmp_path, recipe, message):
    with pytest.raises(RecipeError, match=r"recipe.yaml: .*" + message):
        parse_sft(tmp_path, recipe)


@pytest.mark.parametrize("stage", ["rm", "dpo", "rloo", "ppo", "collect", "label"])
def test_every_stage_that_reads_a_dataset_takes_a_mixture(tmp_path, stage):
    parser = RecipeParser(stage, load_stage(stage).arguments())
    assert {"datasets", "dataset_mixture", "test_split_size"} <= parser.keys
    data = {"datasets": [{"path": "a.jsonl"}, {"path": "b.jsonl", "fraction": None}]}
    script = next(part for part in parser.build(data).parts if hasattr(part, "mixture"))
    assert [m.path for m in script.mixture.members] == ["a.jsonl", "b.jsonl"]
