"""Human labeling in the browser: people rank K responses per prompt, and the rankings train the reward model.

    pip install -e '.[label]'                       # Gradio
    instructgpt label recipes/tiny/label.yaml       # then open http://127.0.0.1:7860

InstructGPT's labelers saw a prompt and K = 4 to 9 sampled responses, ranked them and rated each on metadata
(overall quality 1-7, fails to follow the instruction, inappropriate, hallucination; Ouyang et al. 2022, section
3.4 and appendix B). This stage serves that screen as a local Gradio app:

- input: a ``collect`` output (``rankings_file``: prompts with K responses), or prompts plus a policy to sample
  from when the labeling starts (``model_name_or_path`` and ``dataset_name``, with ``collect``'s sampling settings);
- ``<output_dir>/rankings.jsonl``: one row per submitted ranking, in the format ``instructgpt-rm`` and the
  ``file:`` labeler read, with the labeler id, a UTC timestamp and the seconds spent; ``skips.jsonl``: skipped and
  flagged prompts; ``items.jsonl``: the items, saved once so that every restart shows the same responses;
- several labelers: each gives an id (or logs in), and every prompt goes to ``labelers_per_prompt`` of them;
- rerun the same command to continue: each labeler resumes where they stopped (see :mod:`instructgpt.labeling`
  for the rules on assignment, display order, ties and saving). When every item has its labelers, the run marker
  is written.

Security: the app listens on 127.0.0.1 unless ``server_name`` says otherwise, which also needs ``allow_remote:
true`` and a password in the environment variable ``password_env`` names (Gradio's ``auth``; the login name is
then the labeler id). Responses are shown as plain text.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from instructgpt.arguments import DatasetMixtureArguments
from instructgpt.data.formats import load_prompts
from instructgpt.infra.entrypoint import stage_main
from instructgpt.infra.errors import InstructGPTError
from instructgpt.infra.files import OutputDirError, atomic_write_json, atomic_write_text, is_complete
from instructgpt.infra.log import get_logger
from instructgpt.infra.outputs import mark_complete, mark_started, prepare_output_dir
from instructgpt.infra.parser import Recipe, StageArgs, parse_stage_args
from instructgpt.labeling import ITEMS_FILE, Item, LabelStore, items_from_rankings, load_items, save_items
from instructgpt.labeling.app import KEYBOARD_JS, build_app
from instructgpt.modeling import DEFAULT_PROMPT_TEMPLATE, check_model_path, load_tokenizer
from instructgpt.modeling.loading import load_causal_lm
from instructgpt.sampling import generate_responses

logger = get_logger(__name__)

SETTINGS_FILE = "label_settings.json"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclass
class LabelArguments(DatasetMixtureArguments):
    """What to label, by how many people, and where the app listens."""

    rankings_file: str | None = field(
        default=None,
        metadata={
            "help": "Items to rank: a `collect` output (rankings.jsonl: prompts with K responses), or any file "
            "the RM stage reads. Leave unset to sample from `model_name_or_path` instead."
        },
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Without `rankings_file`: the policy to sample K responses per prompt from."}
    )
    dtype: str | None = field(default=None, metadata={"help": "Policy weights dtype (`bfloat16`, `float16`, `auto`)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the Hub."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "Without `rankings_file`: prompts (a .jsonl file or Hub id with `prompt`)."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name, if any."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split of `dataset_name` to read."})
    max_prompts: int | None = field(
        default=None, metadata={"range": ">= 1", "help": "Label only the first N prompts (or items)."}
    )
    prompt_template: str = field(
        default=DEFAULT_PROMPT_TEMPLATE,
        metadata={"help": "Prompt format for a policy whose tokenizer has no chat template (SFT models save one)."},
    )
    num_responses: int = field(
        default=4, metadata={"range": ">= 1", "help": "K: responses sampled per prompt (InstructGPT: 4 to 9)."}
    )
    max_new_tokens: int = field(default=64, metadata={"range": ">= 1", "help": "Longest sampled response, in tokens."})
    temperature: float = field(default=1.0, metadata={"range": "> 0", "help": "Sampling temperature."})
    top_k: int = field(default=0, metadata={"range": ">= 0", "help": "Sample among the k most likely tokens (0: all)."})
    top_p: float = field(
        default=1.0, metadata={"range": "[0, 1]", "help": "Nucleus sampling mass (1.0: no truncation)."}
    )
    batch_size: int = field(default=64, metadata={"range": ">= 1", "help": "Sequences per generation batch."})
    max_sampling_rounds: int = field(
        default=3, metadata={"range": ">= 1", "help": "Rounds of sampling to replace duplicate or empty samples."}
    )
    labelers_per_prompt: int = field(
        default=1,
        metadata={
            "range": ">= 1",
            "help": "N: how many different labelers rank each prompt (overlap for `instructgpt agreement`).",
        },
    )
    allow_ties: bool = field(default=False, metadata={"help": "Let labelers give responses the same place."})
    rate_metadata: bool = field(
        default=True,
        metadata={
            "help": "Show InstructGPT's optional per-response ratings: quality 1-7, fails to follow the "
            "instruction, inappropriate, hallucination."
        },
    )
    output_dir: str | None = field(
        default=None, metadata={"help": "Where rankings.jsonl, skips.jsonl and items.jsonl go."}
    )
    if_output_exists: Literal["resume", "refuse", "overwrite"] = field(
        default="resume",
        metadata={
            "help": "`resume` (default: labelers continue where they stopped; a finished labeling is refused), "
            "`refuse` any non-empty directory, or `overwrite` (the old directory is moved aside)."
        },
    )
    seed: int = field(default=42, metadata={"help": "Seed of the sampling and of the order responses are shown in."})
    server_name: str = field(
        default="127.0.0.1",
        metadata={
            "help": "Address to listen on. Anything but 127.0.0.1/localhost needs `allow_remote: true` and a password."
        },
    )
    server_port: int = field(default=7860, metadata={"range": ">= 1", "help": "Port to listen on."})
    allow_remote: bool = field(
        default=False,
        metadata={"help": "Required to listen on an address other people can reach; then a password is required."},
    )
    password_env: str = field(
        default="INSTRUCTGPT_LABEL_PASSWORD",
        metadata={
            "help": "Environment variable holding the labelers' shared password (Gradio `auth`; the login "
            "name is the labeler id). Required with `allow_remote`; optional locally."
        },
    )


# --------------------------------------------------------------------------------------------------------------
# Where the app listens
# --------------------------------------------------------------------------------------------------------------


def is_local(host: str) -> bool:
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listening(args: LabelArguments, source: str) -> str | None:
    """The password to require, if any; refuses a non-local address without the explicit flag and a password."""
    password = os.environ.get(args.password_env) or None
    if not is_local(args.server_name):
        if not args.allow_remote:
            raise InstructGPTError(
                f"{source}: `server_name` {args.server_name} lets other machines reach the labeling app; set "
                "`allow_remote: true` to mean it (a password is then required), or keep 127.0.0.1"
            )
        if password is None:
            raise InstructGPTError(
                f"{source}: `allow_remote` needs a password: set the environment variable {args.password_env} "
                "(labelers log in with any name and that password)"
            )
    return password


# --------------------------------------------------------------------------------------------------------------
# Items: from a collect output, or sampled now
# --------------------------------------------------------------------------------------------------------------

# the settings that decide which items a labeling shows; a restart must keep every one of them
DEFINING_SETTINGS = (
    "rankings_file",
    "model_name_or_path",
    "dataset_name",
    "datasets",
    "test_split_size",
    "dataset_mixture",
    "dataset_config",
    "dataset_train_split",
    "max_prompts",
    "prompt_template",
    "num_responses",
    "max_new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "max_sampling_rounds",
    "seed",
)


def check_settings(output_dir: Path, args: LabelArguments, source: str) -> None:
    """Record what the items came from; refuse to continue a labeling whose items would now come from elsewhere."""
    settings = {key: getattr(args, key) for key in DEFINING_SETTINGS}
    path = output_dir / SETTINGS_FILE
    if not path.exists():
        atomic_write_json(path, settings)
        return
    recorded = json.loads(path.read_text(encoding="utf-8"))
    differ = [k for k in DEFINING_SETTINGS if k in recorded and recorded[k] != json.loads(json.dumps(settings[k]))]
    if differ:
        changes = "; ".join(f"`{k}` was {recorded[k]!r}, now {settings[k]!r}" for k in differ)
        raise OutputDirError(
            f"{source}: output_dir {output_dir} holds a labeling of other items ({changes}); continue it with the same "
            "settings, or choose another output_dir (or `if_output_exists: overwrite`)"
        )


def distinct(samples: list[str], k: int) -> list[str]:
    """The first ``k`` samples that are non-empty and differ from each other beyond whitespace."""
    kept: list[str] = []
    seen: set[str] = set()
    for text in samples:
        key = " ".join(text.split())
        if key and key not in seen and len(kept) < k:
            seen.add(key)
            kept.append(text)
    return kept


def sample_items(args: LabelArguments, source: str) -> list[Any]:
    """K distinct responses per prompt from the policy, sampled as ``collect`` samples them."""

    model_path = check_model_path(args.model_name_or_path, "model_name_or_path", source)
    prompts = load_prompts(
        args.dataset,
        key="dataset_name",
        source=source,
        config=args.dataset_config,
        split=args.dataset_train_split,
        limit=args.max_prompts,
    )
    tokenizer = load_tokenizer(
        model_path, trust_remote_code=args.trust_remote_code, prompt_template=args.prompt_template
    )
    kwargs: dict[str, Any] = {"trust_remote_code": args.trust_remote_code}
    if args.dtype is not None:
        kwargs["dtype"] = args.dtype
    model = load_causal_lm(model_path, key="model_name_or_path", source=source, **kwargs).eval()
    pools: list[list[str]] = [[] for _ in prompts]
    for round_index in range(args.max_sampling_rounds):
        todo = [i for i, pool in enumerate(pools) if len(pool) < args.num_responses]
        if not todo:
            break
        samples = generate_responses(
            model,
            tokenizer,
            [prompts[i] for i in todo],
            num_samples=args.num_responses,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed + round_index,
            batch_size=args.batch_size,
        )
        for i, texts in zip(todo, samples):
            pools[i] = distinct(pools[i] + texts, args.num_responses)
    kept = [(p, pool) for p, pool in zip(prompts, pools) if len(pool) >= 2]
    if len(kept) < len(prompts):
        logger.info(f"{len(prompts) - len(kept)} prompts left out: fewer than 2 distinct responses")
    if not kept:
        raise InstructGPTError(f"{source}: no prompt got 2 distinct responses; sample at a higher temperature")
    return [Item(i, p, pool) for i, (p, pool) in enumerate(kept)]


def prepare_items(args: LabelArguments, output_dir: Path, source: str) -> list[Any]:
    """The items of this labeling: read back from ``items.jsonl`` on a restart, else loaded or sampled and saved."""

    path = output_dir / ITEMS_FILE
    if path.exists():
        return load_items(path)
    if args.rankings_file:
        items = items_from_rankings(args.rankings_file, key="rankings_file", source=source, limit=args.max_prompts)
    elif args.model_name_or_path and args.dataset:
        items = sample_items(args, source)
    else:
        raise InstructGPTError(
            f"{source}: nothing to label: set `rankings_file` (a collect output) or `model_name_or_path` and "
            "`dataset_name` (prompts to sample responses for)"
        )
    save_items(path, items)
    return items


# --------------------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------------------


def import_gradio(source: str) -> None:
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise InstructGPTError(f"{source}: the labeling app needs Gradio: pip install -e '.[label]'") from None


def open_store(args: LabelArguments, recipe: Recipe) -> Any:
    """Check the settings, prepare the output directory and the items; the store the app serves."""

    source = recipe.source
    if not args.output_dir:
        raise InstructGPTError(f"{source}: `output_dir` is required")
    output_dir = Path(args.output_dir)
    if is_complete(output_dir) and args.if_output_exists == "resume":
        raise OutputDirError(
            f"{source}: output_dir {output_dir} holds a finished labeling (every item has its labelers); it was not "
            "touched. Choose another output_dir, or `if_output_exists: overwrite` to move it aside"
        )
    prepare_output_dir(output_dir, args.if_output_exists, source, stage="label")
    output_dir.mkdir(parents=True, exist_ok=True)
    check_settings(output_dir, args, source)
    items = prepare_items(args, output_dir, source)

    def finished(summary: dict[str, Any]) -> None:
        if not is_complete(output_dir):
            mark_complete(output_dir, "label", recipe.data, summary)
            logger.info(f"every item has its {args.labelers_per_prompt} labeler(s): {output_dir} is finished")

    store = LabelStore(
        output_dir,
        items,
        labelers_per_prompt=args.labelers_per_prompt,
        allow_ties=args.allow_ties,
        seed=args.seed,
        on_complete=finished,
    )
    mark_started(output_dir, "label")
    return store


def browser_secret(output_dir: Path) -> str:
    """A random key kept in the output directory, so that browsers recognize their labeler after a restart."""
    import secrets

    path = output_dir / ".browser_secret"
    if not path.exists():
        atomic_write_text(path, secrets.token_hex(32))
    return path.read_text(encoding="utf-8").strip()


def run_label(args: LabelArguments, recipe: Recipe) -> dict[str, Any]:
    """Serve the labeling app until it is stopped (Ctrl-C); returns what was labeled."""
    source = recipe.source
    password = check_listening(args, source)
    import_gradio(source)
    store = open_store(args, recipe)

    demo = build_app(
        store,
        rate_metadata=args.rate_metadata,
        use_login=password is not None,
        browser_secret=browser_secret(Path(args.output_dir)),
    )
    progress = store.progress("")
    logger.info(
        f"{len(store.items)} items, {args.labelers_per_prompt} labeler(s) each: {progress['done']} of "
        f"{progress['total']} rankings done; saving to {Path(args.output_dir) / 'rankings.jsonl'}"
    )
    auth = (lambda _user, given: given == password) if password is not None else None
    print(
        f"labeling app: http://{args.server_name}:{args.server_port}  (Ctrl-C stops it; rerun to continue)", flush=True
    )
    try:
        demo.launch(
            server_name=args.server_name,
            server_port=args.server_port,
            auth=auth,
            head=KEYBOARD_JS,
            quiet=True,
            footer_links=[],
            ssr_mode=False,
        )
    finally:
        demo.close()
    return store.summary()


def arguments() -> tuple[type, ...]:
    """The dataclasses a label recipe fills."""
    return (LabelArguments,)


def parse_args(argv: list[str] | None = None) -> tuple[list[Any], Recipe]:
    return parse_stage_args(argv, "label", arguments(), prog="instructgpt label", description=__doc__)


def run(args: StageArgs) -> dict[str, Any]:
    """Run the stage from its parsed recipe."""
    return run_label(*args.parts, args.recipe)


def main(argv: list[str] | None = None) -> None:
    stage_main("label", arguments, run, argv, prog="instructgpt label", description=__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
