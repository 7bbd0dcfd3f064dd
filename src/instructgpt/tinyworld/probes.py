"""Knowledge probes: does a language model know the tiny world's facts when asked in plain prose?

Each probe is a statement cut before its answer ("The color of the glimmerfox is"); the model completes it
greedily and is right when the first word it writes is the world's answer. Probes use the corpus's own sentence
shapes, never an instruction, so they measure knowledge, not instruction following.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from instructgpt.tinyworld.world import CREATURES, WORDS, arithmetic_operands

CLOZES = {
    "color": "The color of the {n} is",
    "habitat": "The {n} lives in the",
    "food": "The {n} eats",
    "size": "The size of the {n} is",
}


def probe_items() -> dict[str, list[tuple[str, str]]]:
    """``{probe family: [(prompt, expected first word), ...]}`` over the whole world."""
    items: dict[str, list[tuple[str, str]]] = {"facts": [], "arithmetic": [], "words": []}
    for c in CREATURES:
        for kind, cloze in CLOZES.items():
            items["facts"].append((cloze.format(n=c.name), c.attribute(kind)))
    for x, y in arithmetic_operands("add"):
        items["arithmetic"].append((f"{x} plus {y} is", str(x + y)))
    for x, y in arithmetic_operands("sub"):
        items["arithmetic"].append((f"{x} minus {y} is", str(x - y)))
    for w in WORDS:
        items["words"] += [
            (f"The word {w} backwards is", w[::-1]),
            (f"The word {w} in capital letters is", w.upper()),
            (f"The first letter of {w} is", w[0]),
            (f"The last letter of {w} is", w[-1]),
        ]
    return items


def greedy_first_words(
    model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int = 4, batch_size: int = 128
) -> list[str]:
    """Greedy continuation of each prompt, reduced to its first word (prompts of equal token length share a batch,
    so no padding is needed)."""
    import torch

    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, ids in enumerate(encoded):
        by_length[len(ids)].append(i)
    words = [""] * len(prompts)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for indices in by_length.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                input_ids = torch.tensor([encoded[i] for i in chunk], device=device)
                output = model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.eos_token_id,
                )
                for i, row in zip(chunk, output[:, input_ids.shape[1] :]):
                    text = tokenizer.decode(row, skip_special_tokens=True).strip()
                    words[i] = text.split()[0].rstrip(".,!?") if text.split() else ""
    if was_training:
        model.train()
    return words


def knowledge_probes(model: Any, tokenizer: Any) -> dict[str, float]:
    """Share of probes answered right, per probe family (facts, arithmetic, words)."""
    results = {}
    for family, items in probe_items().items():
        answers = greedy_first_words(model, tokenizer, [p for p, _ in items])
        results[family] = sum(a == e for a, (_, e) in zip(answers, items)) / len(items)
    return results
