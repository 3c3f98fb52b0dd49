"""Rephrase stage without a server: post-filters, chunking with a real tokenizer, templates,
config validation, routing, the request cache across processes, and failures against a port
where no server listens (real connection errors: dead-lettered with the health check off, a fast
one-line failure of the job with it on), the client's circuit breaker, and the command's exit
status when too many requests fail (a stub server). Server tests are in test_rephrase_vllm.py."""
from __future__ import annotations

import json
import multiprocessing
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.testing.util import assert_that

from classifiers.vllm_client import (CHAT, UNAVAILABLE, ServerUnavailable, VLLMClient, check_server,
                                     request_key)
from classifiers.vllm_server import VLLMServer
from pipelines import cli
from pipelines.rephrase import beam_args, job_data
from tests.support import test_pipeline
from transforms.core.accounting import Drop
from transforms.core.config import ConfigError, parse
from transforms.llm.prompts import Chunker, load_templates, load_tokenizer
from transforms.llm.rephrase import (NEMOTRON_HIGH, WRAP_STYLES, Generate, RephraseConfig,
                                     RephraseFn, accept)
from transforms.llm.serving import RequestCache, failed_fraction_errors


def dead_endpoint() -> str:
    """A loopback port with nothing listening: every request is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def config(model_dir, **overrides) -> RephraseConfig:
    data = {"vllm": {"endpoint": dead_endpoint(), "model": "tiny", "tokenizer": str(model_dir),
                     "max_attempts": 2, "backoff_s": 0.01, "max_backoff_s": 0.02,
                     "health_check_s": 0}} | overrides  # no health check: requests do fail
    return parse(RephraseConfig, data)


# --- post-filters -----------------------------------------------------------------------------

def test_accept_strips_required_prefix_and_keeps_text():
    assert accept("  Rephrased text:\nThe sky is blue.\n", "stop", "Rephrased text:") == \
        "The sky is blue."
    assert accept("A child's version.", "stop", None) == "A child's version."


@pytest.mark.parametrize("text,finish,prefix,reason", [
    ("Rephrased text: cut off mid", "length", "Rephrased text:", "rephrase_truncated"),
    ("Here you go: the sky is blue.", "stop", "Rephrased text:", "rephrase_missing_prefix"),
    ("Rephrased text:   \n ", "stop", "Rephrased text:", "rephrase_empty"),
    ("   ", "stop", None, "rephrase_empty"),
])
def test_accept_drops_with_reason(text, finish, prefix, reason):
    with pytest.raises(Drop) as drop:
        accept(text, finish, prefix)
    assert drop.value.reason == reason


def test_optional_prefix_is_stripped_when_present_and_not_required():
    assert accept("Knowledge:\nWater boils at 100 C at sea level.", "stop", "Knowledge:",
                  prefix_required=False) == "Water boils at 100 C at sea level."
    assert accept("Water boils at 100 C at sea level.", "stop", "Knowledge:",
                  prefix_required=False) == "Water boils at 100 C at sea level."
    with pytest.raises(Drop):
        accept("Knowledge:\n", "stop", "Knowledge:", prefix_required=False)


# Outputs in the shapes instruct models write them for the diverse-QA prompt (the tiny random
# model never writes QA pairs): with the prefix line, a preamble, markdown, bullets, numbering,
# multiple-choice options, a question and its answer on one line, a dangling last question.
QA_OUTPUTS = {
    "plain": """Questions and answers:
Question: When was the bridge opened?
Answer: In 1932, after six years of construction.

Question: Is the bridge still used by trains?
Answer: No. Rail traffic ended in 1961; it now carries cars and pedestrians.

Question: Which river does it cross?
Answer: The Tyne.""",
    "markdown": """Here are some questions and answers based on the text:

**Question 1:** What does the enzyme lactase break down?
**Answer:** Lactose, the sugar in milk, into glucose and galactose.

**Question 2:** True or false: all adults produce lactase.
**Answer:** False. Many adults produce little lactase after childhood.""",
    "bullets": """- Question: Which of the following is a renewable source of energy?
A) Coal
B) Wind
C) Natural gas
- Answer: B) Wind
- Question: Fill in the blank: solar panels convert ____ into electricity.
- Answer: sunlight
- Question: Why do wind farms need open land?""",
    "inline": """1. Question: Who wrote the report? Answer: The city's audit office.
2. Question: How much was overspent? Answer: About 4 million euros.""",
}


def test_qa_pairs_parse_realistic_outputs():
    from transforms.llm.rephrase import qa_pairs

    plain = qa_pairs(QA_OUTPUTS["plain"])
    assert plain == ["Question: When was the bridge opened?\nAnswer: In 1932, after six years of "
                     "construction.",
                     "Question: Is the bridge still used by trains?\nAnswer: No. Rail traffic "
                     "ended in 1961; it now carries cars and pedestrians.",
                     "Question: Which river does it cross?\nAnswer: The Tyne."]
    markdown = qa_pairs(QA_OUTPUTS["markdown"])
    assert [p.split("\n")[0] for p in markdown] == [
        "Question: What does the enzyme lactase break down?",
        "Question: True or false: all adults produce lactase."]
    assert markdown[1].endswith("Answer: False. Many adults produce little lactase after "
                                "childhood.")
    bullets = qa_pairs(QA_OUTPUTS["bullets"])  # the unanswered last question is left out
    assert bullets == ["Question: Which of the following is a renewable source of energy?\n"
                       "A) Coal\nB) Wind\nC) Natural gas\nAnswer: B) Wind",
                       "Question: Fill in the blank: solar panels convert ____ into "
                       "electricity.\nAnswer: sunlight"]
    assert qa_pairs(QA_OUTPUTS["inline"]) == [
        "Question: Who wrote the report?\nAnswer: The city's audit office.",
        "Question: How much was overspent?\nAnswer: About 4 million euros."]
    assert qa_pairs("Questions and answers:\nThe text is about bridges.") == []


def test_diverse_qa_is_the_chunk_then_a_seeded_sample_of_pairs():
    from transforms.llm.rephrase import diverse_qa, qa_pairs

    chunk = "The Tyne Bridge opened in 1932.\nRail traffic ended in 1961."
    pairs = qa_pairs(QA_OUTPUTS["plain"])
    outputs = {key: diverse_qa(chunk, QA_OUTPUTS["plain"], 8, key)
               for key in (f"0\0doc{i}\0nemotron_qa\00" for i in range(40))}
    for key, out in outputs.items():
        assert out == diverse_qa(chunk, QA_OUTPUTS["plain"], 8, key)  # deterministic
        head, _, tail = out.partition("\n\n")
        assert head == chunk  # the document first
        kept = tail.split("\n\n")
        assert 1 <= len(kept) <= 3 and len(set(kept)) == len(kept) and set(kept) <= set(pairs)
    counts = {len(out.split("\n\n")) - 1 for out in outputs.values()}
    assert counts == {1, 2, 3}  # the number kept is drawn, per document
    assert {diverse_qa(chunk, QA_OUTPUTS["plain"], 1, k).count("Question:")
            for k in outputs} == {1}  # max_pairs caps it
    with pytest.raises(Drop) as drop:
        diverse_qa(chunk, "Questions and answers:\nNothing to ask.", 8, "k")
    assert drop.value.reason == "rephrase_no_qa_pairs"


def test_stage_post_processes_nemotron_templates(tiny_model_dir):
    from classifiers.vllm_client import Result

    fn = RephraseFn(config(tiny_model_dir))
    fn.client = type("Client", (), {"unavailable": None})()
    doc = {"id": "d1", "text": "The Tyne Bridge opened in 1932.", "source": "cc"}
    outputs = {"nemotron_qa": QA_OUTPUTS["markdown"],
               "nemotron_extract": "Knowledge:\nBridges of this type carry loads in tension.",
               "nemotron_list": "- The bridge opened in 1932.\n- Rail traffic ended in 1961.",
               "nemotron_wikipedia": "The Tyne Bridge is a through arch bridge."}
    planned = [{"doc": doc, "style": style, "template": fn.templates[style],
                "chunk": doc["text"], "chunk_index": 0, "chunk_count": 1, "params": {},
                "body": {}} for style in outputs]
    results = [Result(f"key{i}", {"choices": [{"message": {"content": text},
                                               "finish_reason": "stop"}]})
               for i, text in enumerate(outputs.values())]
    tagged = fn.outputs(planned, results)
    kept = {r["style"]: r["text"] for o in tagged if o.tag == "synthetic"
            for r in o.value.to_pylist()}
    rejected = [r for o in tagged if o.tag != "synthetic" for r in o.value.to_pylist()]
    assert kept["nemotron_qa"].startswith(doc["text"] + "\n\nQuestion: ")
    assert kept["nemotron_extract"] == "Bridges of this type carry loads in tension."
    assert kept["nemotron_list"] == outputs["nemotron_list"]  # no "Facts:" line: kept as is
    assert [r["reason"] for r in rejected] == ["rephrase_missing_prefix"]  # wikipedia: required


# --- templates and config -----------------------------------------------------------------------

def test_bundled_templates_cover_wrap_and_nemotron_with_nemotron_limits():
    templates = load_templates("configs/prompts/rephrase.yaml")
    assert set(WRAP_STYLES + NEMOTRON_HIGH + ["nemotron_wikipedia"]) <= set(templates)
    limits = {name: templates[name].max_input_tokens for name in templates}
    assert limits["nemotron_wikipedia"] == 512 and limits["nemotron_distill"] == 2000
    assert limits["nemotron_qa"] == limits["nemotron_list"] == 1000
    assert limits["nemotron_extract"] == 1400
    assert all(limits[s] == 300 for s in WRAP_STYLES)
    for name, template in templates.items():
        assert "{text}" in template.prompt, name
        if template.family == "nemotron_cc":
            assert template.prefix and template.prefix in template.prompt, name
    assert templates["wrap_qa"].messages("X")[-1]["content"].rstrip().endswith("X")


def test_config_rejects_unknown_style_and_ambiguous_server(tmp_path):
    with pytest.raises(ConfigError, match="unknown template"):
        parse(RephraseConfig, {"vllm": {"endpoint": "http://x/v1", "model": "m"},
                               "styles": ["wrap_poetry"]})
    with pytest.raises(ConfigError, match="exactly one"):
        parse(RephraseConfig, {"vllm": {"endpoint": "http://x/v1", "serve": "m"}})
    with pytest.raises(ConfigError, match="model"):
        parse(RephraseConfig, {"vllm": {"endpoint": "http://x/v1"}})
    with pytest.raises(ConfigError, match="unknown key"):
        parse(RephraseConfig, {"vllm": {"serve": "m"}, "temperature": 0.5})
    inline = {"vllm": {"serve": "m"}, "styles": ["poem"],
              "templates": {"poem": {"prompt": "As a poem: {text}", "max_input_tokens": 100,
                                     "max_output_tokens": 200}}}
    assert parse(RephraseConfig, inline).styles == ["poem"]


def test_routing_by_bucket(tiny_model_dir):
    fn = RephraseFn(config(tiny_model_dir))
    assert fn.styles_for(3) == ["nemotron_wikipedia"]
    assert fn.styles_for(11) == ["nemotron_wikipedia"]
    assert fn.styles_for(12) == NEMOTRON_HIGH
    assert fn.styles_for(19) == NEMOTRON_HIGH
    assert fn.styles_for(None) == WRAP_STYLES
    assert fn.styles_for("head") == WRAP_STYLES  # a CCNet perplexity bucket is not a quality bucket


# --- chunking ---------------------------------------------------------------------------------

def test_chunks_merge_lines_up_to_the_limit_and_cut_long_lines(tiny_model_dir, shared_data):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    chunker = Chunker(tokenizer)
    texts = [json.loads(line)["text"] for line in
             (shared_data / "dclm_quality" / "majority_data.jsonl").open()][:40]
    for limit in (64, 300):
        for text in texts:
            chunks = chunker.chunks(text, limit)
            assert chunks or not text.strip()
            for chunk in chunks:
                assert len(tokenizer(chunk, add_special_tokens=False)["input_ids"]) <= limit + 2
            # nothing lost: the chunks are the document's non-blank content, in order
            assert "".join("".join(c.split()) for c in chunks) == "".join(text.split())
    many_lines = "\n".join(f"line number {i} of a list" for i in range(50))
    merged = chunker.chunks(many_lines, 64)
    assert 1 < len(merged) < 50 and all("\n" in c for c in merged[:-1])
    assert len(chunker.chunks("word " * 2000, 100)) >= 10


# --- request cache ----------------------------------------------------------------------------

def _hammer(directory: str, worker: int) -> None:
    cache = RequestCache(directory)
    for i in range(200):
        cache.put(request_key(CHAT, {"i": i % 20}), {"i": i % 20, "pad": "x" * 5000})
        assert cache.get(request_key(CHAT, {"i": (i * 7) % 20})) in (None, {"i": (i * 7) % 20,
                                                                          "pad": "x" * 5000})


def test_cache_is_safe_across_processes(tmp_path):
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_hammer, args=(str(tmp_path), w)) for w in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert len(files) == 20 and all(p.suffix == ".json" for p in files)  # no temporaries left
    cache = RequestCache(str(tmp_path))
    assert all(cache.get(request_key(CHAT, {"i": i}))["i"] == i for i in range(20))
    assert request_key(CHAT, {"a": 1, "b": 2}) == request_key(CHAT, {"b": 2, "a": 1})
    assert request_key(CHAT, {"a": 1}) != request_key("completions", {"a": 1})


def test_client_serves_cached_requests_without_a_server(tmp_path):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "seed": 0}
    RequestCache(str(tmp_path)).put(request_key(CHAT, body), {"choices": []})
    client = VLLMClient(dead_endpoint(), max_attempts=2, backoff_s=0.01, cache=RequestCache(str(tmp_path)))
    try:
        hit, miss = client.run([(CHAT, body), (CHAT, body | {"seed": 1})])
    finally:
        client.close()
    assert hit.cached and hit.response == {"choices": []}
    assert miss.error == "connection_error" and miss.attempts == 2


# --- failures through Beam ----------------------------------------------------------------------

def test_unreachable_server_dead_letters_every_request(tiny_model_dir):
    batch = pa.RecordBatch.from_pylist([
        {"id": "a", "text": "First line.\nSecond line.", "source": "web", "url": None},
        {"id": "b", "text": "", "source": "web", "url": None},
    ])
    with test_pipeline() as p:
        documents, synthetic, rejects = (p | beam.Create([batch])
                                         | Generate(config(tiny_model_dir, styles=["wrap_qa"])))
        assert_that(documents | "ids" >> beam.FlatMap(
            lambda b: b.column("id").to_pylist()), lambda ids: sorted(ids) == ["a", "b"] or
            pytest.fail(ids), label="documents pass through")
        assert_that(synthetic, lambda s: len(s) == 0 or pytest.fail(s), label="no synthetic")
        assert_that(rejects | "reasons" >> beam.FlatMap(
            lambda b: list(zip(b.column("reason").to_pylist(), b.column("kind").to_pylist()))),
            lambda r: r == [("rephrase_connection_error", "failed")] or pytest.fail(r),
            label="one request, failed")


# --- command ----------------------------------------------------------------------------------

def test_command_line_sets_server_styles_and_cache(tmp_path):
    args = cli.parser().parse_args(["rephrase", "in/*.jsonl", "--output", str(tmp_path),
                                    "--endpoint", "http://h:1/v1", "--model", "m",
                                    "--styles", "wrap_qa", "--cache", "c", "--set",
                                    "stages.0.rephrase.sampling.seed=7"])
    data = job_data(args)
    stage = data["stages"][0]["rephrase"]
    assert data["input"] == [{"path": "in/*.jsonl"}] and data["output"] == str(tmp_path)
    assert stage["vllm"]["endpoint"] == "http://h:1/v1" and stage["vllm"]["cache"] == "c"
    assert stage["styles"] == ["wrap_qa"] and stage["sampling"]["seed"] == 7
    parse(RephraseConfig, stage)


def test_command_runs_one_local_worker_unless_told():
    """One SDK worker process locally (one client, one `--serve` server); an explicit
    `--direct_num_workers` or a remote runner is left alone."""
    assert beam_args([]) == ["--direct_num_workers=1"]
    assert beam_args(["--direct_num_workers=3"]) == ["--direct_num_workers=3"]
    assert beam_args(["--direct_num_workers", "3"]) == ["--direct_num_workers", "3"]
    remote = ["--runner", "DataflowRunner", "--project", "p"]
    assert beam_args(remote) == remote


# --- a dead server fails fast -------------------------------------------------------------------

def test_client_circuit_fails_every_pending_request_once_the_server_is_gone():
    """Without the breaker these 20 requests would retry 50 times each (minutes); with it, once
    connection failures alone have been seen for `circuit_after_s`, queued, backing-off and new
    requests all resolve at once as `server_unavailable`."""
    client = VLLMClient(dead_endpoint(), concurrency=2, max_attempts=50, backoff_s=0.2,
                        max_backoff_s=0.5, circuit_failures=5, circuit_after_s=1.0)
    requests = [(CHAT, {"model": "m", "messages": [{"role": "user", "content": str(i)}]})
                for i in range(20)]
    try:
        start = time.monotonic()
        results = client.run(requests)
        elapsed = time.monotonic() - start
        late, = client.run([(CHAT, {"model": "m", "messages": []})])
    finally:
        client.close()
    assert elapsed < 10
    assert {r.error for r in results} == {UNAVAILABLE} and late.error == UNAVAILABLE
    assert late.attempts == 0 and sum(r.attempts for r in results) < 40
    assert client.unavailable.startswith("vLLM server unavailable: no response from")
    assert "\n" not in client.unavailable


class StubServer:
    """A stub OpenAI-style server: GET /v1/models lists `models`; every POST is answered with
    `status` (the server is alive, the requests fail)."""

    def __init__(self, models=("tiny",), status: int = 400):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.reply(200, {"object": "list", "data": [{"id": m} for m in stub.models]})

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                stub.posts += 1
                self.reply(stub.status, {"error": {"message": "stub says no"}})

            def reply(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.models, self.status, self.posts = list(models), status, 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_http_errors_never_open_the_circuit_and_health_check_names_the_model():
    stub = StubServer(status=503)
    client = VLLMClient(stub.base_url, concurrency=2, max_attempts=3, backoff_s=0.01,
                        max_backoff_s=0.02, circuit_failures=1, circuit_after_s=0)
    try:
        results = client.run([(CHAT, {"model": "tiny", "n": i}) for i in range(4)])
        assert check_server(stub.base_url, "tiny", timeout_s=1) == ["tiny"]
        with pytest.raises(ServerUnavailable, match="does not serve model 'other'"):
            check_server(stub.base_url, "other", timeout_s=1)
    finally:
        client.close()
        stub.close()
    assert [r.error for r in results] == ["http_503"] * 4 and client.unavailable is None
    assert stub.posts == 12


def test_unreachable_server_fails_the_stage_at_setup_in_one_line(tiny_model_dir):
    batch = pa.RecordBatch.from_pylist([{"id": "a", "text": "One.\nTwo.", "source": "web",
                                         "url": None}])
    start = time.monotonic()
    with pytest.raises(Exception, match=r"vLLM server unavailable: GET http://127\.0\.0\.1:\d+"
                                        r"/v1/models failed \d+ time\(s\)") as error:
        with test_pipeline() as p:
            p | beam.Create([batch]) | Generate(config(
                tiny_model_dir, styles=["wrap_qa"],
                vllm={"endpoint": dead_endpoint(), "model": "tiny", "health_check_s": 2,
                      "tokenizer": str(tiny_model_dir)}))
    assert time.monotonic() - start < 30
    assert "Connection refused" in str(error.value)


def test_command_against_an_endpoint_where_nothing_listens_fails_fast_in_one_line(
        tiny_model_dir, tmp_path):
    """`sluice rephrase` with the default health check (30 s): non-zero exit, one line on
    stderr, well within two minutes (it took over 2 minutes and exited 0 before)."""
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"id": "a", "text": "Some text.", "source": "web"}) + "\n")
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pipelines", "rephrase", str(inputs),
                           "--output", str(tmp_path / "out"), "--endpoint", dead_endpoint(),
                           "--model", "tiny", "--tokenizer", str(tiny_model_dir)],
                          capture_output=True, text=True, timeout=120)
    assert time.monotonic() - start < 90
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sluice: vLLM server unavailable: GET "), \
        done.stderr
    assert not (tmp_path / "out" / "stats.json").exists()


def test_sluice_run_with_an_llm_stage_and_no_server_exits_non_zero(tiny_model_dir, tmp_path,
                                                                   capsys):
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"id": "a", "text": "Some text.", "source": "web"}) + "\n")
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({"input": str(inputs), "output": str(tmp_path / "out"), "stages": [
        {"lm_perplexity": {"vllm": {"endpoint": dead_endpoint(), "model": "tiny",
                                    "tokenizer": str(tiny_model_dir), "health_check_s": 2}}}]}))
    assert cli.main(["run", str(job)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sluice: vLLM server unavailable"), err


def test_command_exits_non_zero_when_too_many_requests_fail(tiny_model_dir, tmp_path, capsys):
    """A live server that rejects every request (HTTP 400): the run finishes with every request
    dead-lettered, then exits 1 naming the fraction; with the limit at 1.0 it exits 0."""
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"id": f"d{i}", "text": f"Line {i}.", "source": "web"})
                              + "\n" for i in range(5)))
    stub = StubServer(status=400)
    try:
        def command(output, *sets):
            return cli.main(["rephrase", str(inputs), "--output", str(tmp_path / output),
                             "--endpoint", stub.base_url, "--model", "tiny",
                             "--tokenizer", str(tiny_model_dir), "--styles", "wrap_qa",
                             *[a for s in sets for a in ("--set", s)]])

        assert command("strict") == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "5 of 5 LLM requests failed (100.0% > " \
            "vllm.max_failed_fraction 0.1" in err[0] and "rephrase_http_400" in err[0], err
        stats = json.loads((tmp_path / "strict" / "stats.json").read_text())
        assert stats["failed_by_reason"] == {"rephrase_http_400": 5}  # the run was written
        assert command("lenient", "stages.0.rephrase.vllm.max_failed_fraction=1.0") == 0
    finally:
        stub.close()
    data = {"stages": [{"rephrase": {"vllm": {"endpoint": "http://x/v1", "model": "m",
                                              "max_failed_fraction": 0.5}}}]}
    stats = {"counters": {"rephrase.requests": 10, "rephrase.failed_requests": 5}}
    assert failed_fraction_errors(data, stats) == []
    stats["counters"]["rephrase.failed_requests"] = 6
    assert failed_fraction_errors(data, stats)[0].startswith(
        "stages.0.rephrase: 6 of 10 LLM requests failed (60.0% > vllm.max_failed_fraction 0.5")


def test_cpu_server_turns_chunked_prefill_off_unless_told(monkeypatch):
    monkeypatch.setenv("VLLM_TARGET_DEVICE", "cpu")
    args = VLLMServer("m", ["--max-model-len", "4096"], port=1).command()
    assert args.count("--no-enable-chunked-prefill") == 1
    for chosen in (["--enable-chunked-prefill"], ["--no-enable-chunked-prefill"],
                   ["--enable-chunked-prefill=True"]):
        command = VLLMServer("m", chosen, port=1).command()
        assert command[-len(chosen):] == chosen and "--no-enable-chunked-prefill" not in \
            command[:-len(chosen)]
