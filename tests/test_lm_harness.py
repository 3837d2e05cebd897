"""The lm-evaluation-harness adapter (``depthmux.lm.harness``) and the offline few-shot tasks (issue 19)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance

from depthmux.data.cloze import cloze_passages
from depthmux.data.text import load_corpus, train_bpe_tokenizer
from depthmux.errors import DepthmuxError
from depthmux.lm.harness import DepthmuxHarnessLM
from depthmux.recipes.fewshot import FewshotEvalConfig, run_fewshot_eval, write_task_folder


@pytest.fixture(scope="module")
def bpe():
    return train_bpe_tokenizer(load_corpus("kjv")[:40], vocab_size=300)


def _req(kind: str, args: tuple) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def _direct_ll(model, ids: list[int], n_cont: int) -> float:
    """log p of the last ``n_cont`` tokens of ``ids`` from one unbatched forward."""
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(input_ids=x, position_ids=torch.arange(len(ids))[None]).logits[0]
    logp = F.log_softmax(logits.float(), -1)
    return float(sum(logp[t - 1, ids[t]] for t in range(len(ids) - n_cont, len(ids))))


PAIRS = [
    ("In the beginning God created", " the heaven"),
    ("And the earth was without form, and void; and darkness was upon the face", " of the deep."),
    ("Let there be", " light"),
    ("", "And God saw the light"),
    ("And the evening and the morning were the first day. ", "And God said"),
]


@pytest.mark.parametrize("kind", ["llama", "mor"])
def test_loglikelihood_equals_direct_computation(bpe, kind, tiny_llama_factory, tiny_recursive_factory):
    if kind == "llama":
        model = tiny_llama_factory(vocab_size=len(bpe))
    else:
        model = tiny_recursive_factory(vocab_size=len(bpe), mor_router="expert")
    lm = DepthmuxHarnessLM(model=model, tokenizer=bpe, batch_size=3)
    got = lm.loglikelihood([_req("loglikelihood", p) for p in PAIRS])
    wrapped = lm.model
    for (ctx, cont), (ll, _) in zip(PAIRS, got, strict=True):
        c, k = lm.encode_pair(ctx, cont)
        assert "".join(bpe.decode(c + k)).endswith(cont.strip())
        assert ll == pytest.approx(_direct_ll(wrapped, c + k, len(k)), abs=1e-4)
    # a context's trailing space belongs to the continuation: same tokens as without it
    assert lm.encode_pair("Let there be ", "light") == lm.encode_pair("Let there be", " light")


def test_greedy_flag_and_truncation(bpe, tiny_recursive_factory):
    model = tiny_recursive_factory(vocab_size=len(bpe))
    lm = DepthmuxHarnessLM(model=model, tokenizer=bpe, max_length=64)
    ctx = lm.tok_encode("And God called the light Day, and the darkness he called Night.")
    assert 16 < len(ctx) < 60
    greedy = []
    for _ in range(3):
        greedy.append(int(lm.logits([ctx + greedy])[0, -1].argmax()))
    wrong = greedy[:2] + [(greedy[2] + 1) % len(bpe)]
    (ll, is_greedy), (ll2, not_greedy) = lm.score([(ctx, greedy), (ctx, wrong)])
    assert is_greedy and not not_greedy
    assert ll > ll2
    # max_length=16: the input keeps its last 16 tokens (the last continuation token is only a target)
    short = DepthmuxHarnessLM(model=model, tokenizer=bpe, max_length=16)
    ((ll16, _),) = short.score([(ctx, greedy)])
    assert ll16 == pytest.approx(_direct_ll(lm.model, (ctx + greedy)[-17:], 3), abs=1e-4)
    assert ll16 != pytest.approx(ll, abs=1e-3)


def test_loglikelihood_rolling(bpe, tiny_llama_factory):
    model = tiny_llama_factory(vocab_size=len(bpe))
    lm = DepthmuxHarnessLM(model=model, tokenizer=bpe, max_length=64)
    text = "And God made the firmament, and divided the waters"
    ids = lm.tok_encode(text)
    (got,) = lm.loglikelihood_rolling([_req("loglikelihood_rolling", (text,))])
    assert got == pytest.approx(_direct_ll(lm.model, [lm.prefix_token_id] + ids, len(ids)), abs=1e-4)
    # longer than max_length: disjoint windows, every token scored once (a lower bound on the context)
    short = DepthmuxHarnessLM(model=model, tokenizer=bpe, max_length=8)
    (windowed,) = short.loglikelihood_rolling([_req("loglikelihood_rolling", (text,))])
    assert windowed < 0 and windowed != pytest.approx(got, abs=1e-3)


def test_generate_until_is_greedy_and_stops(bpe, tiny_recursive_factory):
    model = tiny_recursive_factory(vocab_size=len(bpe), seed=3)
    lm = DepthmuxHarnessLM(model=model, tokenizer=bpe)
    ctx = "And God said, Let there be light"
    ids = lm.tok_encode(ctx)
    toks = []
    for _ in range(6):
        toks.append(int(lm.logits([ids + toks])[0, -1].argmax()))
    full = bpe.decode(toks)
    (out,) = lm.generate_until([_req("generate_until", (ctx, {"until": [], "max_gen_toks": 6}))])
    assert out == full
    stop = full[len(full) // 2 : len(full) // 2 + 1]
    if stop:
        (cut,) = lm.generate_until([_req("generate_until", (ctx, {"until": [stop], "max_gen_toks": 6}))])
        assert cut == full.split(stop)[0]
    with pytest.raises(DepthmuxError, match="greedy"):
        lm.generate_until([_req("generate_until", (ctx, {"do_sample": True, "temperature": 1.0}))])


def test_registry_name_and_bad_args(bpe, tiny_llama_factory):
    from lm_eval.api.registry import get_model

    assert get_model("depthmux") is DepthmuxHarnessLM
    model = tiny_llama_factory(vocab_size=len(bpe))
    with pytest.raises(DepthmuxError, match="early-exit"):
        DepthmuxHarnessLM(model=model, tokenizer=bpe, exit="shallow")
    with pytest.raises(DepthmuxError, match="batch_size"):
        DepthmuxHarnessLM(model=model, tokenizer=bpe, batch_size="0")


def test_cloze_passages_are_held_out_and_well_formed():
    rows = cloze_passages(["one two three four five six\nseven eight nine ten eleven twelve."], min_words=5)
    assert rows == [
        {"context": "one two three four five", "target": " six", "text": "one two three four five six"},
        {"context": "seven eight nine ten eleven", "target": " twelve", "text": "seven eight nine ten eleven twelve"},
    ]
    assert cloze_passages(["a b c d e 12"], min_words=5) == []  # target must be a word


def test_tasks_run_end_to_end_offline(bpe, tiny_recursive_factory, glue, tmp_path, capsys):
    folder = write_task_folder(tmp_path / "tasks", data_dir=glue, max_passages=20)
    dev = (folder / "sst2_dev.jsonl").read_text().splitlines()
    assert len(dev) == 872 and json.loads(dev[0])["label"] in (0, 1)
    model = tiny_recursive_factory(vocab_size=len(bpe), mor_router="expert")
    cfg = FewshotEvalConfig(model="tiny", limit=6, num_fewshot=1, data_dir=str(glue), max_passages=20)
    res = run_fewshot_eval(cfg, model=model, tokenizer=bpe)
    assert capsys.readouterr().out == ""  # lm-eval's notes go to stderr: `lm eval --tasks --json` stays JSON
    assert set(res["tasks"]) == {"depthmux_sst2", "depthmux_cloze_shakespeare", "depthmux_cloze_kjv"}
    for name, metrics in res["tasks"].items():
        assert 0.0 <= metrics["acc"] <= 1.0, name
    assert res["tasks"]["depthmux_cloze_kjv"]["perplexity"] > 1.0
    with pytest.raises(DepthmuxError, match="unknown task"):
        FewshotEvalConfig(tasks=("hellaswag",)).validate()


@pytest.mark.slow
def test_smollm2_beats_chance_on_kjv_cloze():
    res = run_fewshot_eval(FewshotEvalConfig(model="smollm2", tasks=("depthmux_cloze_kjv",), limit=40))
    # measured: SmolLM2-135M guesses the held-out KJV last word far more often than a random model (0)
    assert res["tasks"]["depthmux_cloze_kjv"]["acc"] > 0.1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["lm", "eval", "--model", "smollm2", "--tasks", "hellaswag"], "unknown task 'hellaswag'"),
        (["lm", "eval", "--model", "smollm2", "--tasks", "all", "--limit", "0"], "--limit"),
        (["lm", "eval", "--model", "smollm2", "--tasks", "all", "--exit", "middle"], "--exit"),
    ],
)
def test_cli_tasks_bad_input_is_one_line(argv, message, capsys):
    from depthmux.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
