"""Engine bad input and loading (SPEC 5): one-line DepthmuxError for each user mistake."""

from __future__ import annotations

import pytest
import torch

from depthmux.engine import LLM, SamplingParams
from depthmux.errors import DepthmuxError


@pytest.fixture
def llm(tiny_recursive_factory):
    return LLM(
        tiny_recursive_factory(
            max_position_embeddings=32, num_hidden_layers=8, num_recursions=3, mor_router="expert"
        ).eval()
    )


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert msg and "\n" not in msg
    return msg


@pytest.mark.parametrize(
    "prompt, match",
    [
        ([], "empty prompt"),
        ("", "tokenizer"),
        ([1] * 33, "longer than"),
        ([1, 99], r"token ids must be in"),
        ([1.5], "string or a list"),
    ],
)
def test_bad_prompts(llm, prompt, match):
    with pytest.raises(DepthmuxError, match=match) as e:
        llm.add_request(prompt)
    one_line(e)
    assert not llm.has_unfinished_requests()


def test_bad_sampling_and_budget(llm, tiny_recursive_factory):
    with pytest.raises(DepthmuxError, match="max_new_tokens") as e:
        llm.generate([1, 2, 3], SamplingParams(max_new_tokens=0))
    one_line(e)
    tiny = LLM(tiny_recursive_factory(max_position_embeddings=32), kv_budget_bytes=1024)
    with pytest.raises(DepthmuxError, match="too small for one request") as e:
        tiny.add_request([1, 2, 3], SamplingParams(max_new_tokens=4))
    one_line(e)
    with pytest.raises(DepthmuxError, match="depth_policy"):
        LLM(tiny_recursive_factory(), depth_policy="diagonal")
    with pytest.raises(DepthmuxError, match="cannot serve"):
        LLM(object())


def test_prompt_at_the_context_length_generates_one_token(llm):
    out = llm.generate([1] * 32, SamplingParams(max_new_tokens=5, ignore_eos=True))[0]
    assert len(out.token_ids) == 1 and out.finish_reason == "length"


def test_unknown_model_folder_is_one_line_error(tmp_path):
    with pytest.raises(DepthmuxError, match="not found") as e:
        LLM.from_pretrained(tmp_path / "nope")
    one_line(e)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DepthmuxError) as e:
        LLM.from_pretrained(tmp_path / "empty")
    one_line(e)


def test_from_pretrained_serves_saved_recursive_and_llama_folders(tmp_path, tiny_recursive_factory, tiny_llama_factory):
    rec = tiny_recursive_factory(num_hidden_layers=8, num_recursions=3, mor_router="token").eval()
    rec.save_pretrained(tmp_path / "rec")
    hf = tiny_llama_factory().eval()
    hf.save_pretrained(tmp_path / "llama")
    prompt = [4, 5, 6, 7]
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    for model, folder in ((rec, "rec"), (hf, "llama")):
        loaded = LLM.from_pretrained(tmp_path / folder, depth_policy="lockstep", max_batch_items=8)
        assert loaded.generate(prompt, params)[0].token_ids == LLM(model).generate(prompt, params)[0].token_ids
    # a converted LLaMA is served in its own dtype
    assert LLM(hf.to(torch.float64)).model.dtype == torch.float64
