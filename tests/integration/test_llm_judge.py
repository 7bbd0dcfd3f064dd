"""The LLM judge (issue 13) against real HTTP servers on 127.0.0.1.

- A rule-based fake OpenAI-compatible server (a thread in the test) answers by a rule and counts requests: position
  swap, strict parsing, the cache, retries, refusals.
- A real `transformers serve` subprocess serving the tiny Llama: its answers do not parse as A/B (counted, never
  guessed), a rerun reads the cache with the server gone, and a server killed mid-run and restarted lets the run
  finish within the retry bound; one that does not come back ends the run with one line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from helpers import REPO, TINY_BASE, free_port, start, stop
from instructgpt.judges import make_judge
from instructgpt.judges.llm import (
    PAIRWISE_TEMPLATE,
    JudgeUnavailable,
    LLMJudgeError,
    combine,
    parse_verdict,
)
from instructgpt.stages import eval as evaluate
from instructgpt.tinyworld.architectures import TinyArchitecture, build_tiny_model

PROMPTS = ["Describe the rustbeetle.", "What is 2 plus 3?", "Spell cat backwards.", "Name a colour."]
GOOD = ["The rustbeetle is red. good", "5 good", "tac good", "blue good"]
BAD = ["The rustbeetle sings.", "7", "cat", "Describe the sky."]


# ---------------------------------------------------------------------------------------------------------------
# A fake endpoint that answers by a rule
# ---------------------------------------------------------------------------------------------------------------


def responses_in(question: str) -> tuple[str, str]:
    """Response A and response B as the judge's question shows them."""
    a = question.split("[Response A]\n", 1)[1].split("\n\n[Response B]\n", 1)
    return a[0], a[1].split("\n\nWhich response better follows", 1)[0]


class FakeJudge:
    """``rule(question) -> answer text``; ``fail_first`` requests get HTTP 503, ``status`` overrides every reply."""

    def __init__(self, rule: Callable[[str], str], fail_first: int = 0, status: int = 200):
        self.rule, self.fail_first, self.status = rule, fail_first, status
        self.questions: list[str] = []
        self.requests = 0
        self.auth: list[str | None] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests += 1
                fake.auth.append(self.headers.get("Authorization"))
                if self.path != "/v1/chat/completions":
                    return self.reply(404, {"error": "no such route"})
                if fake.requests <= fake.fail_first:
                    return self.reply(503, {"error": "busy"})
                if fake.status != 200:
                    return self.reply(fake.status, {"error": {"message": "Incorrect API key provided"}})
                question = body["messages"][-1]["content"]
                fake.questions.append(question)
                answer = fake.rule(question)
                self.reply(
                    200,
                    {
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}],
                        "model": body["model"],
                    },
                )

            def reply(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    servers: list[FakeJudge] = []

    def start(rule, **kwargs) -> FakeJudge:
        servers.append(FakeJudge(rule, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def prefers_good(question: str) -> str:
    a, b = responses_in(question)
    return "A" if a.endswith("good") else "B" if b.endswith("good") else "tie"


def judge_for(url: str, cache: Path | None = None, **settings):
    return make_judge(
        "llm:judge-model",
        llm_settings={"base_url": url, "cache": str(cache) if cache else None, "backoff": 0.01, **settings},
    )


def test_parse_is_strict_and_swapped_verdicts_combine():
    assert [parse_verdict(x) for x in ("A", " b.\n", "Tie", "TIE.")] == ["A", "B", "tie", "tie"]
    assert [parse_verdict(x) for x in ("A is better", "**A**", "", "A or B", "AB", None)] == [None] * 6
    assert combine("A", "B") == (1.0, True)  # x first, then x in second place: x wins
    assert combine("B", "A") == (0.0, True)
    assert combine("tie", "tie") == (0.5, True)
    assert combine("A", "A") == (0.5, False)  # always the first position: inconsistent, a tie
    assert combine("A", "tie") == (0.5, False)


def test_a_consistent_judge_sees_both_orders_and_decides(fake, tmp_path):
    server = fake(prefers_good)
    judge = judge_for(server.url, tmp_path / "cache.jsonl")
    result = judge.compare(PROMPTS, GOOD[:2] + BAD[2:], BAD[:2] + GOOD[2:])
    assert result.outcomes == [1.0, 1.0, 0.0, 0.0]
    assert result.counts == {
        "comparisons": 4,
        "judged": 4,
        "consistent": 4,
        "inconsistent": 0,
        "identical": 0,
        "unparseable": 0,
        "failed": 0,
    }
    # every pair asked in both orders, with the instruction and both responses in the template
    assert server.requests == 8
    seen = {responses_in(q) for q in server.questions}
    assert {(GOOD[0], BAD[0]), (BAD[0], GOOD[0]), (BAD[3], GOOD[3]), (GOOD[3], BAD[3])} <= seen
    assert PAIRWISE_TEMPLATE.format(instruction=PROMPTS[1], response_a=GOOD[1], response_b=BAD[1]) in server.questions


def test_a_judge_that_always_says_a_is_inconsistent_so_every_pair_is_a_tie(fake, tmp_path):
    server = fake(lambda q: "A")
    result = judge_for(server.url).compare(PROMPTS, GOOD, BAD)
    assert result.outcomes == [0.5] * 4 and result.counts["inconsistent"] == 4 and result.counts["judged"] == 4
    assert server.requests == 8


def test_the_cache_makes_a_rerun_free_and_survives_a_torn_line(fake, tmp_path):
    server = fake(prefers_good)
    cache = tmp_path / "cache.jsonl"
    first = judge_for(server.url, cache).compare(PROMPTS, GOOD, BAD)
    assert server.requests == 8 and len(cache.read_text().splitlines()) == 8
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    assert {r["model"] for r in rows} == {"judge-model"} and {r["answer"] for r in rows} == {"A", "B"}
    again = judge_for(server.url, cache)
    assert again.compare(PROMPTS, GOOD, BAD) == first
    assert server.requests == 8 and again.requests == 0  # not one request
    # a run killed mid-write leaves a torn last line: skipped, ended, and the next answers land on lines of their own
    with cache.open("a") as f:
        f.write('{"key": "abc", "ans')
    third = judge_for(server.url, cache)
    third.compare(["Say hi."], ["hi good"], ["bye"])
    assert server.requests == 10
    lines = cache.read_text().splitlines()
    assert lines[8] == '{"key": "abc", "ans' and all(json.loads(line)["answer"] for line in lines[9:])
    assert len(lines) == 11
    # another judge model, or another template version, does not reuse the answers
    other = make_judge("llm:other-model", llm_settings={"base_url": server.url, "cache": str(cache)})
    other.compare(PROMPTS[:1], GOOD[:1], BAD[:1])
    assert server.requests == 12


def test_unparseable_answers_are_counted_and_left_out_never_guessed(fake):
    def rule(question: str) -> str:
        a, b = responses_in(question)
        if "rustbeetle" in a + b:
            return "Response A is better."  # not one of A, B, tie
        return prefers_good(question)

    server = fake(rule)
    result = judge_for(server.url).compare(PROMPTS, GOOD, BAD + [])
    assert result.outcomes == [None, 1.0, 1.0, 1.0]
    assert result.counts["unparseable"] == 1 and result.counts["judged"] == 3
    assert result.unparseable_examples == ["Response A is better.", "Response A is better."]
    # identical responses are a tie without a request
    before = server.requests
    same = judge_for(server.url).compare(["Say hi."], ["hi"], ["hi"])
    assert same.outcomes == [0.5] and same.counts["identical"] == 1 and server.requests == before


def test_server_errors_are_retried_within_the_bound(fake, tmp_path):
    server = fake(prefers_good, fail_first=3)  # three 503s, then answers
    result = judge_for(server.url, concurrency=1).compare(PROMPTS, GOOD, BAD)
    assert result.outcomes == [1.0] * 4 and server.requests == 8 + 3
    down = fake(prefers_good, fail_first=10**6)  # never answers
    with pytest.raises(JudgeUnavailable) as err:
        judge_for(down.url, max_retries=2, concurrency=1).compare(PROMPTS[:1], GOOD[:1], BAD[:1])
    assert "no answer after 3 attempts (last: HTTP 503)" in str(err.value) and "\n" not in str(err.value)
    assert down.requests == 3
    skipped = judge_for(down.url, max_retries=1, on_failure="skip").compare(PROMPTS[:2], GOOD[:2], BAD[:2])
    assert skipped.outcomes == [None, None] and skipped.counts["failed"] == 2 and skipped.counts["judged"] == 0


def test_a_refusal_stops_at_once_and_the_key_comes_only_from_the_environment(fake, monkeypatch):
    server = fake(prefers_good, status=401)
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test-123")
    with pytest.raises(LLMJudgeError) as err:
        judge_for(server.url, api_key_env="MY_JUDGE_KEY", concurrency=1).compare(PROMPTS[:1], GOOD[:1], BAD[:1])
    assert "HTTP 401" in str(err.value) and "$MY_JUDGE_KEY" in str(err.value) and "\n" not in str(err.value)
    assert server.requests == 1 and server.auth == ["Bearer sk-test-123"]  # no retry of a 4xx
    for literal in ("sk-test-123", "my key", "Bearer abc"):
        with pytest.raises(LLMJudgeError, match="must name an environment variable .* not the key itself"):
            judge_for(server.url, api_key_env=literal)
    with pytest.raises(LLMJudgeError, match="llm_judge_base_url"):
        make_judge("llm:judge-model", llm_settings={"base_url": "127.0.0.1:8000"})
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    open_server = fake(prefers_good)
    judge_for(open_server.url).compare(PROMPTS[:1], GOOD[:1], BAD[:1])
    assert open_server.auth == [None, None]  # no key set: none sent


# ---------------------------------------------------------------------------------------------------------------
# A real server: `transformers serve` with the tiny model
# ---------------------------------------------------------------------------------------------------------------


class Serve:
    """`transformers serve MODEL` on 127.0.0.1:port as a subprocess (its own process group, killed for real)."""

    def __init__(self, model: Path, port: int, log: Path):
        self.model, self.port, self.log = model, port, log
        self.process: subprocess.Popen | None = None

    def start(self, wait: float = 120.0) -> Serve:
        import httpx

        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        command = [
            str(Path(sys.executable).parent / "transformers"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--device",
            "cpu",
            "--default-seed",
            "0",
            str(self.model),
        ]
        with self.log.open("ab") as log:
            self.process = start(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + wait
        while time.time() < deadline:
            assert self.process.poll() is None, f"transformers serve exited: {self.log.read_text()[-2000:]}"
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"transformers serve did not start in {wait} s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            stop(self.process, signal.SIGKILL)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> Path:
    """The tiny Llama (random weights, the tiny world's tokenizer with ChatML) with a 512-token context: the judge's
    question is ~200 tokens of the tiny vocabulary, more than the GPT-2 base model's 128 positions hold."""
    return build_tiny_model(
        tmp_path_factory.mktemp("serve") / "tiny-llama", TINY_BASE, TinyArchitecture(max_position_embeddings=512)
    )


@pytest.fixture
def serve(chat_model, tmp_path):
    server = Serve(chat_model, free_port(), tmp_path / "serve.log")
    yield server
    server.kill()


def test_transformers_serve_answers_are_counted_unparseable_and_cached(serve, chat_model, tmp_path):
    serve.start()
    cache = tmp_path / "cache.jsonl"
    settings = {"base_url": serve.url, "cache": str(cache), "backoff": 0.2}
    judge = make_judge(f"llm:{chat_model}", llm_settings=settings)
    result = judge.compare(PROMPTS, GOOD, BAD)
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    assert judge.requests == 8 and len(rows) == 8
    # the tiny model continues text instead of answering A/B: every comparison is unparseable, none is guessed
    verdicts = [parse_verdict(r["answer"]) for r in rows]
    expected_unparseable = sum(1 for i in range(4) if None in verdicts[2 * i : 2 * i + 2])
    assert result.counts["unparseable"] == expected_unparseable and result.outcomes.count(None) == expected_unparseable
    assert expected_unparseable >= 3, [r["answer"] for r in rows]
    # a rerun needs no server at all: kill it, and the same verdicts come back from the cache
    serve.kill()
    rerun = make_judge(f"llm:{chat_model}", llm_settings={**settings, "max_retries": 0})
    assert rerun.compare(PROMPTS, GOOD, BAD) == result and rerun.requests == 0


def test_transformers_serve_killed_mid_run_and_restarted_lets_the_run_finish(serve, chat_model, tmp_path):
    serve.start()
    cache = tmp_path / "cache.jsonl"
    prompts = [f"Describe creature number {i}." for i in range(12)]
    a = [f"It is number {i}." for i in range(12)]
    b = [f"It is not number {i}." for i in range(12)]
    # up to 240 attempts 1 s apart (after a short ramp): longer than Serve.start waits for a restart under load
    judge = make_judge(
        f"llm:{chat_model}",
        llm_settings={
            "base_url": serve.url,
            "cache": str(cache),
            "backoff": 0.25,
            "max_backoff": 1.0,
            "max_retries": 240,
            "concurrency": 1,
            "max_tokens": 24,
        },
    )
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.setdefault("result", judge.compare(prompts, a, b)))
    worker.start()
    deadline = time.time() + 60
    while time.time() < deadline and (not cache.is_file() or len(cache.read_text().splitlines()) < 3):
        time.sleep(0.05)
    answered_before_kill = len(cache.read_text().splitlines())
    assert 3 <= answered_before_kill < 24, "the run ended before the server could be killed mid-run"
    serve.kill()
    time.sleep(1.0)
    serve.start()
    worker.join(timeout=300)
    assert not worker.is_alive()
    result = outcome["result"]
    assert result.counts["failed"] == 0 and result.counts["comparisons"] == 12
    assert len(cache.read_text().splitlines()) == 24
    assert judge.requests > 24  # some requests met the dead server and were retried
    # a server that does not come back: the run ends with one line once the bound is spent
    serve.kill()
    gone = make_judge(f"llm:{chat_model}", llm_settings={"base_url": serve.url, "max_retries": 2, "backoff": 0.05})
    with pytest.raises(JudgeUnavailable) as err:
        gone.compare(["Say hi."], ["hi"], ["bye"])
    assert "no answer after 3 attempts (last: ConnectError" in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# In the eval stage
# ---------------------------------------------------------------------------------------------------------------


def instruction_in(question: str) -> str:
    return question.split("[Instruction]\n", 1)[1].split("\n\n[Response A]", 1)[0]


def test_eval_with_an_llm_judge_takes_win_rates_from_verdicts_and_reruns_from_the_cache(fake, tmp_path):
    from helpers import TINY_DATA

    prompts = [json.loads(line)["prompt"] for line in (TINY_DATA / "eval_prompts.jsonl").read_text().splitlines()[:6]]

    def longer_wins(question: str) -> str:  # a judge with a length bias, and no opinion on the first prompt
        if instruction_in(question) == prompts[0]:
            return "maybe"
        a, b = responses_in(question)
        return "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie"

    server = fake(longer_wins)
    llama = build_tiny_model(tmp_path / "llama", TINY_BASE, TinyArchitecture(hidden_size=32, num_hidden_layers=1))
    cache = tmp_path / "judge-cache.jsonl"

    def run(out: Path) -> dict:
        evaluate.main(
            [
                "--models",
                f"base={TINY_BASE}",
                f"llama={llama}",
                "--prompts",
                str(TINY_DATA / "eval_prompts.jsonl"),
                "--max_prompts",
                "6",
                "--max_new_tokens",
                "10",
                "--labeler",
                "llm:judge-model",
                "--llm_judge_base_url",
                server.url,
                "--llm_judge_cache",
                str(cache),
                "--reference",
                "none",
                "--output_dir",
                str(out),
            ]
        )
        return json.loads((out / "results.json").read_text())

    results = run(tmp_path / "eval")
    rows = [json.loads(line) for line in (tmp_path / "eval" / "completions.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == prompts
    # the win rate is the judge's verdicts: longer answer wins, first prompt unparseable and left out
    expected = [
        1.0 if len(r["llama"]) > len(r["base"]) else 0.0 if len(r["llama"]) < len(r["base"]) else 0.5 for r in rows[1:]
    ]
    got = results["win_rate"]["llama"]["base"]
    assert got["n"] == 5 and got["win_rate"] == pytest.approx(sum(expected) / 5)
    assert results["win_rate"]["base"]["llama"]["win_rate"] == pytest.approx(1 - sum(expected) / 5)
    judge = results["judge"]
    assert judge["name"] == f"llm:judge-model at {server.url}" and judge["kind"] == "pairwise"
    identical = sum(r["llama"] == r["base"] for r in rows[1:])
    total = judge["counts"]["total"]
    assert total["unparseable"] == 1 and total["judged"] == 5 and total["identical"] == identical
    assert total["inconsistent"] == 0 and judge["requests"] == server.requests == 2 * (6 - identical)
    assert judge["counts"]["pairs"]["base vs llama"]["unparseable_examples"] == ["maybe", "maybe"]
    assert "labeler_score" not in results["metrics"]["llama"]  # a pairwise judge gives no per-model score
    report = (tmp_path / "eval" / "report.md").read_text()
    assert f"Judge: **llm:judge-model at {server.url}** (pairwise" in report
    assert "| base vs llama | 6 | 5 |" in report and "`maybe`" in report
    # a second evaluation with the same answers makes no request
    again = run(tmp_path / "eval-again")
    assert server.requests == 2 * (6 - identical) and again["judge"]["requests"] == 0
    assert again["win_rate"] == results["win_rate"]


def test_eval_refuses_an_api_key_in_the_recipe_in_one_line(tmp_path, capsys):
    from helpers import TINY_DATA

    with pytest.raises(SystemExit) as exit_:
        evaluate.main(
            [
                "--models",
                f"a={TINY_BASE}",
                f"b={TINY_BASE}",
                "--prompts",
                str(TINY_DATA / "eval_prompts.jsonl"),
                "--labeler",
                "llm:gpt-4o-mini",
                "--llm_judge_base_url",
                "https://api.openai.com/v1",
                "--llm_judge_api_key_env",
                "sk-proj-abc123",
                "--output_dir",
                str(tmp_path / "eval"),
            ]
        )
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "not the key itself" in err and "llm_judge_api_key_env" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "eval").exists()  # refused before anything was written
