"""An LLM judge: a chat model behind any OpenAI-compatible endpoint compares two responses to one instruction.

AlpacaFarm and MT-Bench judge pairwise with a strong LLM; both note the judge's position bias (it prefers the first
answer, or the second) and counter it by asking twice. Here:

- **the question** (:data:`PAIRWISE_TEMPLATE`, version :data:`TEMPLATE_VERSION`): the instruction and two responses
  labelled A and B; the judge must answer with exactly ``A``, ``B`` or ``tie``, at temperature 0;
- **the answer is parsed strictly** (:func:`parse_verdict`): surrounding whitespace, a final period and case are
  ignored, nothing else is. Any other answer is *unparseable*: counted, reported with examples, and never guessed;
- **position swap**: every comparison is asked twice, once as (x, y) and once as (y, x). Two verdicts for the same
  response are that verdict; two that disagree (x then y, or x then tie, ...) are *inconsistent* and count as a tie.
  A comparison with an unparseable answer in either order has *no verdict* and is left out of the win rate (its
  ``n`` counts judged comparisons only); identical responses are a tie without asking;
- **failures** (connection errors, timeouts, HTTP 408/429/5xx) are retried up to ``max_retries`` times with
  exponential backoff (``backoff * 2**attempt`` seconds, at most ``max_backoff``). After that the run stops with one
  line (``on_failure: error``, the default), or, with ``on_failure: skip``, counts the comparison as *failed* and
  leaves it out like an unparseable one. Other HTTP errors (401, 404: a wrong key or model) stop at once;
- **cache**: every answer the server gave (parseable or not) is appended to a JSONL file, one line per request,
  keyed by the hash of (template version, base URL, judge model, the full question: instruction and both responses
  in their order). Each line goes out in one ``write`` on a file opened for appending, so a killed run leaves at most
  one torn last line, which the next run skips. A rerun reads the answers back and makes no requests. The eval
  stage's default file is shared by every run (:func:`default_cache_path`).

The API key is read from the environment variable the settings name (``OPENAI_API_KEY`` by default), never from a
recipe; when that variable is unset no key is sent (a local server needs none).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from instructgpt.data.formats import Prompt
from instructgpt.infra.log import get_logger
from instructgpt.judges.base import LabelerError

logger = get_logger(__name__)

TEMPLATE_VERSION = "pairwise-v1"  # change it with the template: cached answers to another question are not reused
PAIRWISE_TEMPLATE = """\
You compare two responses to the same instruction. Decide which response better follows the instruction: it \
answers what was asked, correctly, helpfully and without unrelated content. Do not prefer a response for its \
length or for its position.

[Instruction]
{instruction}

[Response A]
{response_a}

[Response B]
{response_b}

Which response better follows the instruction? Answer with exactly one word: A, B, or tie."""

Verdict = Literal["A", "B", "tie"]
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
RETRY_STATUS = {408, 409, 429}  # and every 5xx


class LLMJudgeError(LabelerError):
    """The LLM judge cannot work: bad settings, a server that refuses, or no answer within the retry bound."""


class JudgeUnavailable(LLMJudgeError):
    """No answer from the judge within the retry bound."""


@dataclass
class LLMJudgeSettings:
    """How to reach the judge; the eval stage fills it from its ``llm_judge_*`` settings."""

    model: str
    base_url: str
    api_key_env: str = "OPENAI_API_KEY"
    cache: str | None = None
    max_retries: int = field(default=5, metadata={"range": ">= 0"})
    backoff: float = field(default=1.0, metadata={"range": ">= 0"})  # seconds before the first retry, then doubled
    max_backoff: float = field(default=30.0, metadata={"range": ">= 0"})
    timeout: float = field(default=60.0, metadata={"range": "> 0"})
    max_tokens: int = field(default=16, metadata={"range": ">= 1"})
    on_failure: Literal["error", "skip"] = "error"
    concurrency: int = field(default=4, metadata={"range": ">= 1"})
    source: str = "recipe"

    def validate(self) -> None:
        s = self.source
        if not self.model:
            raise LLMJudgeError(f"{s}: `labeler`: give the judge model, as llm:MODEL")
        if not self.base_url or not re.match(r"https?://", self.base_url):
            raise LLMJudgeError(
                f"{s}: `llm_judge_base_url` must be the endpoint's http(s) URL (e.g. "
                f"https://api.openai.com/v1), got {self.base_url!r}"
            )
        if not ENV_NAME.fullmatch(self.api_key_env or ""):
            raise LLMJudgeError(
                f"{s}: `llm_judge_api_key_env` must name an environment variable that holds the key "
                "(e.g. OPENAI_API_KEY), not the key itself; keys never go in a recipe"
            )
        if self.on_failure not in ("error", "skip"):
            raise LLMJudgeError(f"{s}: `llm_judge_on_failure` must be `error` or `skip`, got {self.on_failure!r}")
        for name in ("max_retries", "concurrency", "max_tokens"):
            if getattr(self, name) < (0 if name == "max_retries" else 1):
                raise LLMJudgeError(f"{s}: `llm_judge_{name}` is out of range: {getattr(self, name)}")
        if self.timeout <= 0:
            raise LLMJudgeError(f"{s}: `llm_judge_timeout` must be > 0, got {self.timeout}")


@dataclass
class PairwiseResult:
    """A pairwise judge's verdicts on responses ``a`` against ``b``, one per prompt.

    ``outcomes[i]``: 1.0 (a better), 0.5 (tie, inconsistent verdicts included), 0.0 (b better), or None (no verdict:
    an unparseable answer, or a failed request under ``on_failure: skip``). ``counts``: how each came about.
    """

    outcomes: list[float | None]
    counts: dict[str, int] = field(default_factory=dict)
    unparseable_examples: list[str] = field(default_factory=list)


def parse_verdict(answer: str | None) -> Verdict | None:
    """``A``, ``B`` or ``tie`` from the judge's answer, or None. Only case, surrounding whitespace and one final
    period are forgiven: ``"A"``, ``" b."``, ``"Tie"`` parse; ``"A is better"``, ``"**A**"``, ``""`` do not."""
    if answer is None:
        return None
    text = answer.strip()
    text = text[:-1].strip() if text.endswith(".") else text
    return {"a": "A", "b": "B", "tie": "tie"}.get(text.lower())  # type: ignore[return-value]


def combine(first: Verdict, second: Verdict) -> tuple[float, bool]:
    """Outcome of x over y from the verdict on (A=x, B=y) and the verdict on the swapped (A=y, B=x), and whether
    the two agreed. Disagreeing verdicts are a tie."""
    x_first = {"A": 1.0, "B": 0.0, "tie": 0.5}[first]
    x_second = {"B": 1.0, "A": 0.0, "tie": 0.5}[second]
    return (x_first, True) if x_first == x_second else (0.5, False)


def conversation_text(prompt: Prompt) -> str:
    """The instruction the judge reads: a string as it is; chat turns as ``Role: content`` paragraphs."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(f"{turn['role'].capitalize()}: {turn['content']}" for turn in prompt)


def default_cache_path() -> Path:
    """Where answers are cached unless a run names a file: ``$XDG_CACHE_HOME/instructgpt/llm_judge_cache.jsonl``
    (``~/.cache/instructgpt/...`` without it), shared by every evaluation (the key holds the judge and the question)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "instructgpt" / "llm_judge_cache.jsonl"


class AnswerCache:
    """The judge's answers on disk, one JSON line each, keyed by the request's hash; appends are single writes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.answers: dict[str, str] = {}
        self.lock = threading.Lock()
        if self.path.is_file():
            raw = self.path.read_bytes()
            skipped = 0
            for line in raw.splitlines():
                try:
                    row = json.loads(line)
                    self.answers[row["key"]] = row["answer"]
                except (ValueError, KeyError, TypeError):
                    skipped += 1  # a line torn by a killed run
            if raw and not raw.endswith(b"\n"):  # end the torn line, so the next append starts a line of its own
                self._append(b"\n")
            if skipped:
                logger.warning(f"llm judge cache {self.path}: skipped {skipped} unreadable line(s)")
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> str | None:
        return self.answers.get(key)

    def put(self, key: str, answer: str, meta: dict[str, Any]) -> None:
        line = (json.dumps({"key": key, "answer": answer, **meta}, ensure_ascii=False) + "\n").encode("utf-8")
        with self.lock:
            self._append(line)
            self.answers[key] = answer

    def _append(self, data: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)


class LLMJudge:
    """Pairwise judge over an OpenAI-compatible ``/chat/completions`` endpoint (see the module docstring)."""

    pairwise = True

    def __init__(self, settings: LLMJudgeSettings):
        settings.validate()
        try:
            import httpx
        except ImportError:
            raise LLMJudgeError(
                f"{settings.source}: the llm: judge needs httpx: pip install 'instructgpt[judge]'"
            ) from None

        self.settings = settings
        self.name = f"llm:{settings.model} at {settings.base_url}"
        self.url = settings.base_url.rstrip("/") + "/chat/completions"
        key = os.environ.get(settings.api_key_env, "")
        if not key:
            logger.info(f"llm judge: ${settings.api_key_env} is unset: no API key sent")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(timeout=settings.timeout, headers=headers)
        self.cache = AnswerCache(settings.cache) if settings.cache else None
        self.requests = 0  # HTTP requests made (retries included)
        self.counter_lock = threading.Lock()

    def question(self, prompt: Prompt, response_a: str, response_b: str) -> str:
        return PAIRWISE_TEMPLATE.format(
            instruction=conversation_text(prompt), response_a=response_a, response_b=response_b
        )

    def key(self, question: str) -> str:
        s = self.settings
        return hashlib.sha256(json.dumps([TEMPLATE_VERSION, s.base_url, s.model, question]).encode()).hexdigest()

    def ask(self, question: str) -> str:
        """The judge's answer to one question: from the cache, else from the server (retried, then cached)."""
        key = self.key(question)
        if self.cache is not None and (cached := self.cache.get(key)) is not None:
            return cached
        answer = self._request(question)
        if self.cache is not None:
            self.cache.put(key, answer, {"model": self.settings.model, "template": TEMPLATE_VERSION})
        return answer

    def _request(self, question: str) -> str:
        import httpx

        s = self.settings
        body = {
            "model": s.model,
            "messages": [{"role": "user", "content": question}],
            "temperature": 0,
            "max_tokens": s.max_tokens,
        }
        last = ""
        for attempt in range(s.max_retries + 1):
            if attempt:
                time.sleep(min(s.max_backoff, s.backoff * 2 ** (attempt - 1)))
            with self.counter_lock:
                self.requests += 1
            try:
                response = self.client.post(self.url, json=body)
            except httpx.HTTPError as err:  # connection refused or reset, timeouts
                last = f"{type(err).__name__}: {' '.join(str(err).split())[:120]}"
                continue
            if response.status_code in RETRY_STATUS or response.status_code >= 500:
                last = f"HTTP {response.status_code}"
                continue
            if response.status_code != 200:
                detail = " ".join(response.text.split())[:160]
                raise LLMJudgeError(
                    f"{s.source}: llm judge {s.model} at {s.base_url}: HTTP {response.status_code} "
                    f"({detail}); check the model name, the URL and ${s.api_key_env}"
                )
            try:
                content = response.json()["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError):
                last = "a response without choices[0].message.content"
                continue
            return content if isinstance(content, str) else ""
        raise JudgeUnavailable(
            f"{s.source}: llm judge {s.model} at {s.base_url}: no answer after {s.max_retries + 1} "
            f"attempts (last: {last}); rerun to continue from the cache, or set "
            "`llm_judge_on_failure: skip` to leave such comparisons out"
        )

    def compare(
        self, prompts: Sequence[Prompt], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> PairwiseResult:
        """Judge a[i] against b[i] for every prompt, each pair in both orders (see the module docstring)."""
        if not len(prompts) == len(responses_a) == len(responses_b):
            raise ValueError(f"{len(prompts)} prompts, {len(responses_a)} and {len(responses_b)} responses")
        questions: dict[str, str] = {}  # cache-key of the question -> the question; duplicates asked once
        plan: list[tuple[str, str] | None] = []
        for prompt, a, b in zip(prompts, responses_a, responses_b):
            if a == b:
                plan.append(None)
                continue
            pair = (self.question(prompt, a, b), self.question(prompt, b, a))
            for q in pair:
                questions.setdefault(self.key(q), q)
            plan.append((self.key(pair[0]), self.key(pair[1])))
        answers = self._answer_all(questions)
        counts = {
            "comparisons": len(plan),
            "judged": 0,
            "consistent": 0,
            "inconsistent": 0,
            "identical": 0,
            "unparseable": 0,
            "failed": 0,
        }
        outcomes: list[float | None] = []
        examples: list[str] = []
        for keys in plan:
            if keys is None:
                counts["identical"] += 1
                counts["judged"] += 1
                outcomes.append(0.5)
                continue
            got = [answers.get(k) for k in keys]
            if any(g is None for g in got):
                counts["failed"] += 1
                outcomes.append(None)
                continue
            verdicts = [parse_verdict(g) for g in got]
            if verdicts[0] is None or verdicts[1] is None:
                counts["unparseable"] += 1
                examples += [g for g, v in zip(got, verdicts) if v is None and len(examples) < 3]
                outcomes.append(None)
                continue
            outcome, consistent = combine(verdicts[0], verdicts[1])
            counts["judged"] += 1
            counts["consistent" if consistent else "inconsistent"] += 1
            outcomes.append(outcome)
        return PairwiseResult(outcomes, counts, [e[:200] for e in examples])

    def _answer_all(self, questions: dict[str, str]) -> dict[str, str | None]:
        """Answers to every question (None: failed under ``on_failure: skip``), ``concurrency`` requests at once."""
        answers: dict[str, str | None] = {}
        stop = threading.Event()  # set by the first error: the questions not yet asked are not asked

        def one(item: tuple[str, str]) -> None:
            key, question = item
            if stop.is_set():
                return
            try:
                answers[key] = self.ask(question)
            except JudgeUnavailable:
                if self.settings.on_failure == "error":
                    stop.set()
                    raise
                answers[key] = None
            except BaseException:
                stop.set()
                raise

        with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
            futures = [pool.submit(one, item) for item in questions.items()]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        return answers

    def close(self) -> None:
        self.client.close()
