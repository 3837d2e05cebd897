"""The transformers-``generate``-per-request baseline (``depthmux serve hf-baseline``) on a tiny random LLaMA
with SmolLM2's tokenizer: greedy output through its HTTP app equals ``model.generate``; usage and the
OpenAI error shape; and ``serve bench --workload decode-quick`` prompts are bench-decode's workload."""

from __future__ import annotations

import pytest
import torch

from serve_fixtures import tiny_llama_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_llama_folder(tmp_path_factory.mktemp("llm"))


@pytest.fixture(scope="module")
def client(folder):
    from fastapi.testclient import TestClient

    from depthmux.serve.hf_baseline import HFBaseline, build_baseline_app

    return TestClient(build_baseline_app(HFBaseline(str(folder), name="tiny")))


def _reference(folder, ids: list[int], n: int) -> list[int]:
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    gen = GenerationConfig(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        return model.generate(input_ids=torch.tensor([ids]), generation_config=gen)[0, len(ids) :].tolist()


def test_greedy_equals_transformers_generate(client, folder):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok("Once upon a time")["input_ids"]
    want = _reference(folder, ids, 10)
    for prompt in ("Once upon a time", ids):
        r = client.post(
            "/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": 10, "ignore_eos": True}
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["choices"][0]["text"] == tok.decode(want, skip_special_tokens=True)
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 10, "total_tokens": len(ids) + 10}


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"model": "other", "prompt": "a"}, 404, "model"),
        ({"model": "tiny", "prompt": ""}, 400, "prompt"),
        ({"model": "tiny", "prompt": "a", "temperature": 0.7}, 400, "temperature"),
        ({"model": "tiny", "prompt": "a", "stream": True}, 400, "stream"),
        ({"model": "tiny", "prompt": "a", "max_tokens": 0}, 400, "max_tokens"),
        ({"model": "tiny", "prompt": "a", "max_tokens": 10**6}, 400, "max_tokens"),
        ({"model": "tiny", "prompt": "a", "logprobs": 2}, 400, "logprobs"),
    ],
)
def test_refusals_are_openai_errors(client, body, status, param):
    r = client.post("/v1/completions", json=body)
    assert r.status_code == status and r.json()["error"]["param"] == param


def test_health_models_and_bad_json(client):
    assert client.get("/health").status_code == 200
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["tiny"]
    r = client.post("/v1/completions", content=b"{not json")
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


def test_bench_workload_is_bench_decodes(folder):
    from depthmux.lm import load_saved_tokenizer
    from depthmux.recipes.decode_bench import DecodeBenchSpec, make_workload, quick_spec
    from depthmux.serve.bench import BenchConfig

    cfg = BenchConfig(url="http://127.0.0.1:1", model="tiny", workload="decode-quick", tokenizer=str(folder)).validate()
    tok = load_saved_tokenizer(folder)
    want = make_workload(quick_spec(DecodeBenchSpec()), tok, len(tok))
    assert cfg.requests == [(r.prompt, r.max_new_tokens) for r in want] and len(want) == 16


def test_refuses_a_non_llama_folder(tmp_path, tokenizer):
    from depthmux.errors import DepthmuxError
    from depthmux.serve.hf_baseline import HFBaseline
    from serve_fixtures import tiny_classifiers

    ckpts = tiny_classifiers(tmp_path, tokenizer)
    with pytest.raises(DepthmuxError):
        HFBaseline(str(ckpts["n2"]))
