"""``depthmux serve --model RUN --speculative K | --exit-threshold T`` on an early-exit model (a tiny random
``EarlyExitForCausalLM`` saved as ``depthmux ee train`` saves it): greedy output through the server equals
the deep model's greedy output (``LLM.generate``), streaming too, and ``/metrics`` shows that the shallow
exit drafted (some drafts accepted, some rejected: the equality is not vacuous); threshold 1.0 is deep
greedy (with FREE's margin and with a learned confidence head); bad combinations are one line, exit 2, before
anything loads."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from depthmux.cli import main
from depthmux.engine import LLM, SamplingParams
from depthmux.serve import ServeConfig, build_serving
from serve_fixtures import Server, tiny_early_exit_folder

PROMPTS = ["Once upon a time", "The capital of France is", "1 2 3"]
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_early_exit_folder(tmp_path_factory.mktemp("ee"))


@pytest.fixture(scope="module")
def deep(folder):
    """The deep model's greedy outputs (the plain engine: every layer, no exit)."""
    llm = LLM.from_pretrained(str(folder))
    return llm.generate(PROMPTS, SamplingParams(max_new_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True))


def body(**kw):
    return {"model": "ee", "prompt": PROMPTS, "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True, **kw}


def test_speculative_through_the_server_equals_deep_greedy(folder, deep, tmp_path):
    server = Server(["--model", str(folder), "--model-name", "ee", "--speculative", "2"], tmp_path / "server.log")
    try:
        r = httpx.post(server.url + "/v1/completions", json=body(), timeout=120)
        assert r.status_code == 200, r.text
        choices = r.json()["choices"]
        assert [c["text"] for c in choices] == [d.text for d in deep]
        assert r.json()["usage"]["completion_tokens"] == MAX_TOKENS * len(PROMPTS)
        drafted = server.metric("depthmux:early_exit_drafted_tokens_total", model_name="ee")
        accepted = server.metric("depthmux:early_exit_accepted_tokens_total", model_name="ee")
        assert 0 < accepted < drafted  # speculation ran, with rejected drafts cut from the output

        events = []
        with httpx.stream("POST", server.url + "/v1/completions", json=body(prompt=PROMPTS[0], stream=True)) as s:
            for line in s.iter_lines():
                if line.startswith("data: {"):
                    events.append(json.loads(line[6:]))
        assert "".join(e["choices"][0]["text"] for e in events if e["choices"]) == deep[0].text
    finally:
        server.stop()


def complete_once(serving) -> dict:
    """One non-streaming completion of ``body()`` in-process, then the serving closed."""

    async def run():
        try:
            return await (await serving.completions(json.dumps(body()).encode()))
        finally:
            await serving.close()

    return asyncio.run(run())


def test_exit_threshold_one_is_deep_greedy(folder, deep):
    serving = build_serving(ServeConfig(model=str(folder), model_name="ee", exit_threshold=1.0))

    out = complete_once(serving)
    assert [c["text"] for c in out["choices"]] == [d.text for d in deep]
    snap = serving.llm.snapshot()
    assert snap["early_exit_shallow_tokens"] > 0 and snap["early_exit_exited_tokens"] == 0  # the exit ran, kept none
    assert snap["early_exit_drafted_tokens"] == 0


def test_a_model_with_a_confidence_head_is_served_with_it(folder, deep, tmp_path):
    """``--exit-threshold`` on a model from ``ee train-head``: the engine decides exits with the learned head
    (no shallow LM head for rows that stay); at 1.0 nothing exits and the output is deep greedy."""
    from depthmux.lm import load_lm, load_saved_tokenizer

    model = load_lm(folder / "model")
    model.attach_exit_head()  # an untrained head (confidence 0.5 everywhere) is enough to route through it
    model.save_pretrained(tmp_path / "head")
    load_saved_tokenizer(folder / "model").save_pretrained(tmp_path / "head")
    serving = build_serving(ServeConfig(model=str(tmp_path / "head"), model_name="ee", exit_threshold=1.0))

    out = complete_once(serving)
    assert serving.llm.runner.use_head
    assert [c["text"] for c in out["choices"]] == [d.text for d in deep]
    snap = serving.llm.snapshot()
    assert snap["early_exit_shallow_tokens"] > 0 and snap["early_exit_exited_tokens"] == 0


def test_without_an_option_an_early_exit_model_is_served_deep(folder):
    serving = build_serving(ServeConfig(model=str(folder)))
    assert "early_exit_shallow_tokens" not in serving.llm.snapshot()
    asyncio.run(serving.close())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "smollm2", "--speculative", "2"], "--speculative needs an early-exit model"),
        (["--model", "smollm2", "--exit-threshold", "0.5"], "--exit-threshold needs an early-exit model"),
        (["--model", "{ee}", "--speculative", "0"], "--speculative must be an integer >= 1"),
        (["--model", "{ee}", "--exit-threshold", "1.5"], "--exit-threshold must be a finite number in [0, 1]"),
        (["--model", "{ee}", "--exit-threshold", "nan"], "--exit-threshold must be a finite number in [0, 1]"),
        (["--model", "{ee}", "--exit-threshold", "0.5", "--speculative", "2"], "two modes: give one"),
        (["--classifier", "a={ee}", "--speculative", "2"], "--speculative needs --model"),
        (["--model", "{ee}", "--speculative", "x"], "--speculative"),
    ],
)
def test_bad_early_exit_options_are_one_line(folder, capsys, args, message):
    args = [a.replace("{ee}", str(folder)) for a in args]
    with pytest.raises(SystemExit) as e:
        main(["serve", *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert message in err, err
