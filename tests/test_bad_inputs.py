"""A table of bad ``depthmux`` invocations: each must end with ONE line on stderr starting ``error: ``
and exit status 2, never a traceback, and must fail up front.

The cases run in-process through :func:`depthmux.cli.main`. "Up front" is checked with a tripwire:
during a case, calling any ``torch.nn.Module`` (a forward pass: feature caching, training, benchmarking,
evaluation) raises :class:`ReachedComputation`, so an input that is not rejected before real work starts
fails here at once with "accepted: reached a forward pass" instead of training on nonsense. Loading the
packaged MiniLM (about a second) is allowed: N must divide its hidden size, and l < its depth.

Placeholders in the argument lists (``{out}``, ``{ck}``, ...) are files and folders made once per module
by the fixtures ``bad`` (files), ``mux_checkpoints`` (``{ck...}``) and ``lm_run``. Per case: ``{out}`` is a
fresh path, ``{out_file}`` an existing file and ``{user_dir}`` a folder holding a user's file; both must
be intact after the case (an output path must never replace what is there).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from depthmux.assets import cache_dir
from depthmux.cli import main


class ReachedComputation(BaseException):  # a BaseException: no `except Exception` swallows it
    """Raised by the tripwire when a case reaches a forward pass."""


# fmt: off
MUX_TRAIN = ["mux", "train", "--out", "{out}", "--no-bench", "--shuffles", "1", "--max-train", "64"]
MUX_EVAL = ["mux", "eval", "{ck}"]
MUX_BENCH = ["mux", "bench", "--samples", "8", "--repetitions", "1"]
LM_TRAIN = ["lm", "train", "--out", "{out}", "--corpus", "{corpus}", "--tokenizer", "bpe:300", "--hidden", "32",
            "--layers", "4", "--heads", "4", "--steps", "2", "--batch-size", "2", "--block-size", "16", "--no-progress"]
LM_EVAL = ["lm", "eval", "--model", "{lm_run}"]
LM_CONVERT = ["lm", "convert", "--out", "{out}", "--from", "{llama}", "--recursions", "2"]
EE_TRAIN = ["ee", "train", "--out", "{out}", "--corpus", "{corpus}", "--steps", "1", "--batch-size", "2",
            "--block-size", "16", "--no-progress"]
EE_BENCH = ["ee", "bench", "--model", "{mf_ee_run}", "--prompts", "2", "--prompt-tokens", "4", "--max-new-tokens", "2",
            "--batch-sizes", "1"]
SERVE_BENCH = ["serve", "bench", "--url", "http://127.0.0.1:9", "--model", "m", "--num-requests", "2", "--duration",
               "5"]
#: defects of a model folder (issue 20/21), each made by :func:`model_folders` for a tiny BERT and a tiny LLaMA
BROKEN = ("truncated", "garbage", "heads_zero", "vocab_string", "hidden_not_divisible")


def broken(name: str, family: str, argv: list[str], defects=BROKEN) -> list[tuple[str, list[str]]]:
    """One case per defect: ``argv`` with ``{MODEL}`` naming the ``family`` folder with that defect. (The
    loaders of ``lm convert``/``ee train --from`` and of early-exit models already answered these in one
    line before issue 20/21, without naming the file: tests/test_model_folders.py covers them.)"""
    return [
        (f"{name}-{d.replace('_', '-')}", [a.replace("{MODEL}", f"{{mf_{family}_{d}}}") for a in argv]) for d in defects
    ]

CASES: list[tuple[str, list[str]]] = [
    # --- the command line itself
    ("unknown-command", ["mux", "trian"]),
    ("unknown-lm-command", ["lm", "evaluate"]),
    ("unknown-root-option", ["--verbose"]),
    ("mistyped-option", ["mux", "train", "--epoch", "3"]),
    ("wrong-case-option", ["mux", "train", "--LR", "0.1"]),
    ("undefined-short-option", ["mux", "train", "-n", "2"]),
    ("option-without-value", ["mux", "train", "--epochs"]),
    ("epochs-not-int", ["mux", "train", "--epochs", "abc"]),
    ("epochs-float", ["mux", "train", "--epochs", "1.5"]),
    ("lr-not-float", ["mux", "train", "--lr", "fast"]),
    ("eval-missing-argument", ["mux", "eval"]),
    ("eval-extra-argument", ["mux", "eval", "{ck}", "{ck}"]),
    ("lm-train-missing-out", ["lm", "train"]),
    ("lm-eval-without-model-option", ["lm", "eval"]),
    ("version-with-value", ["--version=yes"]),
    ("bool-flag-with-value", ["mux", "train", "--resume=maybe"]),
    # --- mux train: N, l, mixer
    ("mux-n-zero", [*MUX_TRAIN, "--n", "0"]),
    ("mux-n-negative", [*MUX_TRAIN, "--n", "-2"]),
    ("mux-n-not-dividing-hidden", [*MUX_TRAIN, "--n", "5"]),
    ("mux-n-one-bad-in-list", [*MUX_TRAIN, "--n", "2,5"]),
    ("mux-n-text", [*MUX_TRAIN, "--n", "abc"]),
    ("mux-n-empty-list", [*MUX_TRAIN, "--n", ","]),
    ("mux-n-float", [*MUX_TRAIN, "--n", "2.5"]),
    ("mux-n-huge", [*MUX_TRAIN, "--n", "384000"]),
    ("mux-l-equals-L", [*MUX_TRAIN, "--prefill-layers", "6"]),
    ("mux-l-above-L", [*MUX_TRAIN, "--prefill-layers", "0,99"]),
    ("mux-l-negative", [*MUX_TRAIN, "--prefill-layers", "-1"]),
    ("mux-unknown-mixer", [*MUX_TRAIN, "--mixer", "bogus"]),
    ("mux-unknown-mixer-in-list", [*MUX_TRAIN, "--mixer", "reversible,bogus"]),
    ("mux-empty-mixer", [*MUX_TRAIN, "--mixer", ""]),
    # --- mux train: every number
    ("mux-epochs-zero", [*MUX_TRAIN, "--epochs", "0"]),
    ("mux-epochs-negative", [*MUX_TRAIN, "--epochs", "-1"]),
    ("mux-batch-size-zero", [*MUX_TRAIN, "--batch-size", "0"]),
    ("mux-batch-size-negative", [*MUX_TRAIN, "--batch-size", "-4"]),
    ("mux-lr-nan", [*MUX_TRAIN, "--lr", "nan"]),
    ("mux-lr-inf", [*MUX_TRAIN, "--lr", "inf"]),
    ("mux-lr-overflow-to-inf", [*MUX_TRAIN, "--lr", "1e400"]),
    ("mux-lr-zero", [*MUX_TRAIN, "--lr", "0"]),
    ("mux-lr-negative", [*MUX_TRAIN, "--lr", "-1e-3"]),
    ("mux-tau-zero", [*MUX_TRAIN, "--tau", "0"]),
    ("mux-tau-negative", [*MUX_TRAIN, "--tau", "-0.05"]),
    ("mux-tau-nan", [*MUX_TRAIN, "--tau", "nan"]),
    ("mux-tau-inf", [*MUX_TRAIN, "--tau", "inf"]),
    ("mux-lambda-nan", [*MUX_TRAIN, "--lambda-info", "nan"]),
    ("mux-lambda-negative", [*MUX_TRAIN, "--lambda-info", "-1"]),
    ("mux-lambda-inf", [*MUX_TRAIN, "--lambda-info", "inf"]),
    ("mux-max-train-negative", [*MUX_TRAIN, "--max-train", "-5"]),
    ("mux-shuffles-zero", [*MUX_TRAIN, "--shuffles", "0"]),
    ("mux-shuffles-negative", [*MUX_TRAIN, "--shuffles", "-1"]),
    ("mux-bench-samples-zero", [*MUX_TRAIN, "--bench", "--bench-samples", "0"]),
    ("mux-repetitions-zero", [*MUX_TRAIN, "--bench", "--repetitions", "0"]),
    ("mux-threads-zero", [*MUX_TRAIN, "--threads", "0"]),
    ("mux-threads-negative", [*MUX_TRAIN, "--threads", "-1"]),
    ("mux-seed-overflow", [*MUX_TRAIN, "--seed", "99999999999999999999"]),
    # --- mux train: task, data, model, run folder
    ("mux-unknown-task", [*MUX_TRAIN, "--task", "imdb"]),
    ("mux-missing-data-dir", [*MUX_TRAIN, "--task", "sst2", "--data-dir", "{missing}"]),
    ("mux-data-dir-without-task-folder", [*MUX_TRAIN, "--task", "sst2", "--data-dir", "{emptydir}"]),
    ("mux-data-dir-is-file", [*MUX_TRAIN, "--task", "sst2", "--data-dir", "{file}"]),
    ("mux-tsv-latin1", [*MUX_TRAIN, "--task", "sst2", "--data-dir", "{glue_latin1}"]),
    ("mux-tsv-empty-file", [*MUX_TRAIN, "--task", "sst2", "--data-dir", "{glue_empty}"]),
    ("mux-tsv-header-only", [*MUX_TRAIN, "--task", "sst2", "--data-dir", "{glue_header_only}"]),
    ("mux-tsv-malformed-row", [*MUX_TRAIN, "--task", "sst2", "--data-dir", "{glue_malformed}"]),
    ("mux-tsv-unknown-label", [*MUX_TRAIN, "--task", "sst2", "--data-dir", "{glue_bad_label}"]),
    ("mux-tsv-zero-width-text", [*MUX_TRAIN, "--task", "sst2", "--data-dir", "{glue_zero_width}"]),
    ("mux-tsv-nbsp-text", [*MUX_TRAIN, "--task", "sst2", "--data-dir", "{glue_nbsp}"]),
    ("mux-tsv-wrong-header", [*MUX_TRAIN, "--task", "sst2", "--data-dir", "{glue_wrong_header}"]),
    ("mux-tsv-binary-garbage", [*MUX_TRAIN, "--task", "sst2", "--data-dir", "{glue_binary}"]),
    ("mux-missing-model", [*MUX_TRAIN, "--model", "{missing}"]),
    ("mux-model-empty-folder", [*MUX_TRAIN, "--model", "{emptydir}"]),
    ("mux-model-is-file", [*MUX_TRAIN, "--model", "{file}"]),
    ("mux-model-unknown-type", [*MUX_TRAIN, "--model", "{unknown_type}"]),
    ("mux-model-corrupt-config", [*MUX_TRAIN, "--model", "{corrupt_config}"]),
    ("mux-model-depthmux-lm", [*MUX_TRAIN, "--model", "{lm_model}"]),
    ("mux-model-decoder", [*MUX_TRAIN, "--model", "{llama}"]),
    ("mux-out-is-file", [*MUX_TRAIN[:2], "--out", "{out_file}", *MUX_TRAIN[4:]]),
    ("mux-out-read-only", [*MUX_TRAIN[:2], "--out", "{read_only}/run", *MUX_TRAIN[4:]]),
    ("mux-resume-without-run", [*MUX_TRAIN, "--resume"]),
    ("mux-model-symlink-loop", [*MUX_TRAIN, "--model", "{symlink_loop}"]),
    ("mux-task-5000-chars", [*MUX_TRAIN, "--task", "x" * 5000]),
    # --- mux eval
    ("eval-missing-checkpoint", ["mux", "eval", "{missing}"]),
    ("eval-checkpoint-is-file", ["mux", "eval", "{file}"]),
    ("eval-checkpoint-empty-folder", ["mux", "eval", "{emptydir}"]),
    ("eval-truncated-state", ["mux", "eval", "{ck_truncated}"]),
    ("eval-state-not-object", ["mux", "eval", "{ck_not_object}"]),
    ("eval-config-extra-key", ["mux", "eval", "{ck_extra_key}"]),
    ("eval-config-mismatched-n", ["mux", "eval", "{ck_n4}"]),
    ("eval-config-n-not-dividing", ["mux", "eval", "{ck_n5}"]),
    ("eval-config-n-string", ["mux", "eval", "{ck_n_string}"]),
    ("eval-config-l-too-large", ["mux", "eval", "{ck_l99}"]),
    ("eval-config-unknown-mixer", ["mux", "eval", "{ck_mixer}"]),
    ("eval-unknown-kind", ["mux", "eval", "{ck_kind}"]),
    ("eval-future-format", ["mux", "eval", "{ck_format}"]),
    ("eval-truncated-tensors", ["mux", "eval", "{ck_bad_tensors}"]),
    ("eval-missing-head", ["mux", "eval", "{ck_no_head}"]),
    ("eval-backbone-missing", ["mux", "eval", "{ck_backbone_missing}"]),
    ("eval-lm-folder-as-checkpoint", ["mux", "eval", "{lm_model}"]),
    ("eval-path-with-newline", ["mux", "eval", "{missing}\nsecond line"]),
    ("eval-unknown-split", [*MUX_EVAL, "--split", "test"]),
    ("eval-shuffles-zero", [*MUX_EVAL, "--shuffles", "0"]),
    ("eval-unknown-task", [*MUX_EVAL, "--task", "imdb"]),
    ("eval-threads-zero", [*MUX_EVAL, "--threads", "0"]),
    ("eval-missing-data-dir", [*MUX_EVAL, "--task", "sst2", "--data-dir", "{missing}"]),
    ("eval-tsv-latin1", [*MUX_EVAL, "--task", "sst2", "--data-dir", "{glue_latin1}"]),
    # --- mux bench
    ("bench-samples-zero", [*MUX_BENCH, "--samples", "0"]),
    ("bench-samples-negative", [*MUX_BENCH, "--samples", "-1"]),
    ("bench-batch-size-zero", [*MUX_BENCH, "--batch-size", "0"]),
    ("bench-repetitions-zero", [*MUX_BENCH, "--repetitions", "0"]),
    ("bench-repetitions-negative", [*MUX_BENCH, "--repetitions", "-3"]),
    ("bench-n-zero", [*MUX_BENCH, "--n", "0"]),
    ("bench-n-one", [*MUX_BENCH, "--n", "1"]),
    ("bench-n-not-dividing", [*MUX_BENCH, "--n", "5"]),
    ("bench-l-equals-L", [*MUX_BENCH, "--prefill-layers", "6"]),
    ("bench-l-negative", [*MUX_BENCH, "--prefill-layers", "-1"]),
    ("bench-unknown-mixer", [*MUX_BENCH, "--mixer", "bogus"]),
    ("bench-missing-checkpoint", [*MUX_BENCH, "--checkpoint", "{missing}"]),
    ("bench-corrupt-checkpoint", [*MUX_BENCH, "--checkpoint", "{ck_truncated}"]),
    ("bench-missing-model", [*MUX_BENCH, "--model", "{missing}"]),
    ("bench-threads-zero", [*MUX_BENCH, "--threads", "0"]),
    ("bench-unknown-task", [*MUX_BENCH, "--task", "imdb"]),
    ("bench-empty-data", [*MUX_BENCH, "--task", "sst2", "--data-dir", "{glue_empty}"]),
    # --- mux run
    ("run-threads-zero", ["mux", "run", "--out", "{out}", "--threads", "0"]),
    ("run-out-is-file", ["mux", "run", "--out", "{out_file}"]),
    ("run-out-read-only", ["mux", "run", "--out", "{read_only}/run"]),
    ("run-unknown-option", ["mux", "run", "--epochs", "1"]),
    # --- lm train: every number
    ("lm-steps-zero", [*LM_TRAIN, "--steps", "0"]),
    ("lm-steps-negative", [*LM_TRAIN, "--steps", "-1"]),
    ("lm-lr-nan", [*LM_TRAIN, "--lr", "nan"]),
    ("lm-lr-inf", [*LM_TRAIN, "--lr", "inf"]),
    ("lm-lr-zero", [*LM_TRAIN, "--lr", "0"]),
    ("lm-lr-negative", [*LM_TRAIN, "--lr", "-1"]),
    ("lm-batch-size-zero", [*LM_TRAIN, "--batch-size", "0"]),
    ("lm-block-size-zero", [*LM_TRAIN, "--block-size", "0"]),
    ("lm-block-size-negative", [*LM_TRAIN, "--block-size", "-16"]),
    ("lm-hidden-zero", [*LM_TRAIN, "--hidden", "0"]),
    ("lm-hidden-negative", [*LM_TRAIN, "--hidden", "-8"]),
    ("lm-hidden-not-divisible-by-heads", [*LM_TRAIN, "--hidden", "30"]),
    ("lm-layers-zero", [*LM_TRAIN, "--layers", "0"]),
    ("lm-heads-zero", [*LM_TRAIN, "--heads", "0"]),
    ("lm-kv-heads-not-dividing", [*LM_TRAIN, "--kv-heads", "3"]),
    ("lm-kv-heads-zero", [*LM_TRAIN, "--kv-heads", "0"]),
    ("lm-intermediate-zero", [*LM_TRAIN, "--intermediate", "0"]),
    ("lm-warmup-negative", [*LM_TRAIN, "--warmup", "-1"]),
    ("lm-decay-fraction-above-one", [*LM_TRAIN, "--decay-fraction", "1.5"]),
    ("lm-decay-fraction-nan", [*LM_TRAIN, "--decay-fraction", "nan"]),
    ("lm-weight-decay-negative", [*LM_TRAIN, "--weight-decay", "-0.1"]),
    ("lm-weight-decay-nan", [*LM_TRAIN, "--weight-decay", "nan"]),
    ("lm-grad-clip-nan", [*LM_TRAIN, "--grad-clip", "nan"]),
    ("lm-grad-clip-negative", [*LM_TRAIN, "--grad-clip", "-1"]),
    ("lm-holdout-one", [*LM_TRAIN, "--holdout", "1.0"]),
    ("lm-holdout-negative", [*LM_TRAIN, "--holdout", "-0.1"]),
    ("lm-holdout-nan", [*LM_TRAIN, "--holdout", "nan"]),
    ("lm-max-train-blocks-zero", [*LM_TRAIN, "--max-train-blocks", "0"]),
    ("lm-max-eval-blocks-negative", [*LM_TRAIN, "--max-eval-blocks", "-1"]),
    ("lm-checkpoint-every-negative", [*LM_TRAIN, "--checkpoint-every", "-1"]),
    ("lm-eval-every-negative", [*LM_TRAIN, "--eval-every", "-1"]),
    ("lm-seed-overflow", [*LM_TRAIN, "--seed", "99999999999999999999"]),
    # --- lm train: architecture choices
    ("lm-recursions-zero", [*LM_TRAIN, "--sharing", "cycle", "--recursions", "0"]),
    ("lm-recursions-negative", [*LM_TRAIN, "--sharing", "cycle", "--recursions", "-2"]),
    ("lm-recursions-not-dividing-layers", [*LM_TRAIN, "--sharing", "cycle", "--recursions", "3"]),
    ("lm-unknown-sharing", [*LM_TRAIN, "--sharing", "bogus"]),
    ("lm-unknown-router", [*LM_TRAIN, "--sharing", "cycle", "--recursions", "2", "--router", "bogus"]),
    ("lm-router-without-sharing", [*LM_TRAIN, "--router", "expert"]),
    ("lm-unknown-kv", [*LM_TRAIN, "--sharing", "cycle", "--recursions", "2", "--router", "expert", "--kv", "bogus"]),
    ("lm-unknown-init", [*LM_TRAIN, "--init", "bogus"]),
    ("lm-lora-rank-negative", [*LM_TRAIN, "--lora-rank", "-1"]),
    # --- lm train: data, tokenizer, model, run folder
    ("lm-missing-corpus", [*LM_TRAIN, "--corpus", "{missing}"]),
    ("lm-empty-corpus", [*LM_TRAIN, "--corpus", "{corpus_empty}"]),
    ("lm-zero-width-corpus", [*LM_TRAIN, "--corpus", "{corpus_zero_width}"]),
    ("lm-latin1-corpus", [*LM_TRAIN, "--corpus", "{corpus_latin1}"]),
    ("lm-corpus-unknown-play", [*LM_TRAIN, "--corpus", "shakespeare:nosuchplay"]),
    ("lm-corpus-unknown-book", [*LM_TRAIN, "--corpus", "kjv:nosuchbook"]),
    ("lm-tokenizer-bpe-zero", [*LM_TRAIN, "--tokenizer", "bpe:0"]),
    ("lm-tokenizer-bpe-text", [*LM_TRAIN, "--tokenizer", "bpe:abc"]),
    ("lm-tokenizer-missing-folder", [*LM_TRAIN, "--tokenizer", "{missing}"]),
    ("lm-from-pretrained-missing", [*LM_TRAIN, "--from-pretrained", "{missing}"]),
    ("lm-from-pretrained-empty-folder", [*LM_TRAIN, "--from-pretrained", "{emptydir}"]),
    ("lm-from-pretrained-unknown-type", [*LM_TRAIN, "--from-pretrained", "{unknown_type}"]),
    ("lm-convert-without-from-pretrained", [*LM_TRAIN, "--convert"]),
    ("lm-resume-without-run", [*LM_TRAIN, "--resume"]),
    ("lm-resume-truncated-config", ["lm", "train", "--out", "{lm_run_truncated}", "--resume", "--no-progress"]),
    ("lm-out-is-file", [*LM_TRAIN[:2], "--out", "{out_file}", *LM_TRAIN[4:]]),
    ("lm-out-read-only", [*LM_TRAIN[:2], "--out", "{read_only}/run", *LM_TRAIN[4:]]),
    # --- lm eval
    ("lm-eval-missing-model", ["lm", "eval", "--model", "{missing}"]),
    ("lm-eval-empty-folder", ["lm", "eval", "--model", "{emptydir}"]),
    ("lm-eval-model-is-file", ["lm", "eval", "--model", "{file}"]),
    ("lm-eval-unknown-type", ["lm", "eval", "--model", "{unknown_type}", "--corpus", "{corpus}"]),
    ("lm-eval-corrupt-config", ["lm", "eval", "--model", "{corrupt_config}", "--corpus", "{corpus}"]),
    ("lm-eval-mux-checkpoint", ["lm", "eval", "--model", "{ck}", "--corpus", "{corpus}"]),
    ("lm-eval-no-run-config-no-corpus", ["lm", "eval", "--model", "{lm_model}"]),
    ("lm-eval-batch-size-zero", [*LM_EVAL, "--batch-size", "0"]),
    ("lm-eval-max-blocks-zero", [*LM_EVAL, "--max-blocks", "0"]),
    ("lm-eval-max-blocks-negative", [*LM_EVAL, "--max-blocks", "-1"]),
    ("lm-eval-block-size-zero", [*LM_EVAL, "--block-size", "0"]),
    ("lm-eval-holdout-above-one", [*LM_EVAL, "--holdout", "1.5"]),
    ("lm-eval-holdout-nan", [*LM_EVAL, "--holdout", "nan"]),
    ("lm-eval-unknown-routing", [*LM_EVAL, "--routing", "bogus"]),
    ("lm-eval-missing-corpus", [*LM_EVAL, "--corpus", "{missing}"]),
    ("lm-eval-symlink-loop", ["lm", "eval", "--model", "{symlink_loop}"]),
    # --- lm convert
    ("convert-recursions-zero", [*LM_CONVERT, "--recursions", "0"]),
    ("convert-recursions-negative", [*LM_CONVERT, "--recursions", "-1"]),
    ("convert-recursions-not-dividing", [*LM_CONVERT, "--recursions", "3"]),
    ("convert-unknown-sharing", [*LM_CONVERT, "--sharing", "bogus"]),
    ("convert-unknown-init", [*LM_CONVERT, "--init", "bogus"]),
    ("convert-lora-rank-negative", [*LM_CONVERT, "--lora-rank", "-1"]),
    ("convert-missing-source", ["lm", "convert", "--out", "{out}", "--from", "{missing}"]),
    ("convert-empty-source", ["lm", "convert", "--out", "{out}", "--from", "{emptydir}"]),
    ("convert-encoder-source", ["lm", "convert", "--out", "{out}", "--from", "{minilm}"]),
    ("convert-recursive-source", ["lm", "convert", "--out", "{out}", "--from", "{lm_model}"]),
    ("convert-out-is-file", [*LM_CONVERT[:2], "--out", "{out_file}", *LM_CONVERT[4:]]),
    ("convert-out-is-user-folder", [*LM_CONVERT[:2], "--out", "{user_dir}", *LM_CONVERT[4:]]),
    # --- issue 20/21 (mux, output folders)
    ("mux-out-user-folder", [*MUX_TRAIN[:2], "--out", "{user_dir}", *MUX_TRAIN[4:]]),
    ("mux-out-empty-string", [*MUX_TRAIN[:2], "--out", "", *MUX_TRAIN[4:]]),
    ("run-out-user-folder", ["mux", "run", "--out", "{user_dir}"]),
    ("run-out-empty-string", ["mux", "run", "--out", ""]),
    ("sweep-out-user-folder", ["mux", "sweep", "--out", "{user_dir}", "--no-bench", "--max-train", "64", "--seeds", "0",
                               "--n", "2", "--shuffles", "1"]),
    ("sweep-out-empty-string", ["mux", "sweep", "--out", "", "--no-bench", "--max-train", "64", "--seeds", "0",
                                "--n", "2", "--shuffles", "1"]),
    ("lm-out-user-folder", [*LM_TRAIN[:2], "--out", "{user_dir}", *LM_TRAIN[4:]]),
    ("lm-out-empty-string", [*LM_TRAIN[:2], "--out", "", *LM_TRAIN[4:]]),
    ("mux-task-and-files", [*MUX_TRAIN, "--task", "rte", "--train", "{csv_train}", "--dev", "{csv_dev}"]),
    ("mux-csv-unbalanced-quote", [*MUX_TRAIN, "--train", "{csv_quote}", "--dev", "{csv_dev}"]),
    ("mux-n-repeated", [*MUX_TRAIN, "--n", "2,2"]),
    ("mux-l-repeated", [*MUX_TRAIN, "--prefill-layers", "0,1,0"]),
    ("mux-mixer-repeated", [*MUX_TRAIN, "--mixer", "reversible,reversible"]),
    ("mux-tau-tiny", [*MUX_TRAIN, "--tau", "1e-30"]),
    ("mux-lambda-huge", [*MUX_TRAIN, "--lambda-info", "1e30"]),
    ("sweep-lambda-huge", ["mux", "sweep", "--out", "{out}", "--no-bench", "--max-train", "64", "--seeds", "0",
                           "--n", "2", "--shuffles", "1", "--lambda", "0.25,1e30"]),
    ("eval-task-with-other-labels", [*MUX_EVAL[:2], "{ck_three_class}", "--task", "sst2", "--data-dir", "{glue_good}"]),
    # --- issue 20/21 (lm, ee, model folders)
    *broken("mux-train-bert", "bert", [*MUX_TRAIN, "--model", "{MODEL}"], BROKEN[:4]),
    ("mux-train-bert-no-tokenizer", [*MUX_TRAIN, "--model", "{mf_bert_no_tokenizer}"]),
    ("mux-train-llama-truncated", [*MUX_TRAIN, "--model", "{mf_llama_truncated}"]),
    ("mux-train-llama-heads-zero", [*MUX_TRAIN, "--model", "{mf_llama_heads_zero}"]),
    ("mux-bench-bert-truncated", [*MUX_BENCH, "--model", "{mf_bert_truncated}"]),
    ("mux-bench-bert-heads-zero", [*MUX_BENCH, "--model", "{mf_bert_heads_zero}"]),
    ("mux-eval-backbone-truncated", ["mux", "eval", "{mf_ck_backbone_truncated}"]),
    *broken("lm-generate-llama", "llama", ["lm", "generate", "--model", "{MODEL}", "hello"]),
    *broken("lm-eval-llama", "llama", ["lm", "eval", "--model", "{MODEL}", "--corpus", "{corpus}"]),
    *broken("lm-train-from-llama", "llama", [*LM_TRAIN, "--from-pretrained", "{MODEL}"]),
    *broken("ee-eval-llama", "llama", ["ee", "eval", "--model", "{MODEL}", "--corpus", "{corpus}"]),
    *broken("ee-bench-llama", "llama", ["ee", "bench", "--model", "{MODEL}", "--corpus", "{corpus}"]),
    ("lm-generate-file-latin1", ["lm", "generate", "--model", "{llama}", "--file", "{mf_prompts_latin1}"]),
    ("lm-generate-file-binary", ["lm", "generate", "--model", "{llama}", "--file", "{mf_prompts_binary}"]),
    ("lm-resume-changed-settings", ["lm", "train", "--out", "{lm_run}", "--resume", "--steps", "8", "--lr", "0.5",
                                    "--no-progress"]),
    ("ee-resume-changed-settings", ["ee", "train", "--out", "{mf_ee_run}", "--resume", "--alpha", "2", "--exit-layer",
                                    "3", "--no-progress"]),
    ("lm-train-one-document", [*LM_TRAIN, "--corpus", "{mf_corpus_one_doc}"]),
    ("lm-eval-routing-on-vanilla", ["lm", "eval", "--model", "{mf_vanilla}", "--corpus", "{corpus}", "--routing",
                                    "topk"]),
    ("lm-eval-routing-on-token-router", ["lm", "eval", "--model", "{mf_token_router}", "--corpus", "{corpus}",
                                         "--routing", "causal"]),
    ("convert-out-read-only", [*LM_CONVERT[:2], "--out", "{read_only}/run", *LM_CONVERT[4:]]),
    ("convert-out-under-a-file", [*LM_CONVERT[:2], "--out", "{file}/run", *LM_CONVERT[4:]]),
    ("ee-bench-plot-folder", [*EE_BENCH, "--plot", "{emptydir}"]),
    ("ee-bench-plot-unknown-extension", [*EE_BENCH, "--plot", "{out}/speedup.bogus"]),
    ("ee-bench-plot-read-only", [*EE_BENCH, "--plot", "{read_only}/speedup.png"]),
    ("ee-bench-plot-under-a-file", [*EE_BENCH, "--plot", "{file}/speedup.png"]),
    # --- hostile pass (hfix-c)
    ("bench-checkpoint-and-n", [*MUX_BENCH, "--checkpoint", "{ck}", "--n", "4"]),
    ("bench-checkpoint-and-mixer", [*MUX_BENCH, "--checkpoint", "{ck}", "--mixer", "reversible"]),
    ("mux-lr-huge", [*MUX_TRAIN, "--lr", "1e30"]),
    ("mux-threads-huge", [*MUX_TRAIN, "--threads", "100000"]),
    ("bench-threads-huge", [*MUX_BENCH, "--threads", "100000"]),
    ("mux-task-empty", [*MUX_TRAIN, "--task", ""]),
    ("sweep-task-empty", ["mux", "sweep", "--out", "{out}", "--task", "", "--no-bench", "--max-train", "64"]),
    ("serve-threads-zero", ["serve", "--model", "{llama}", "--port", "0", "--threads", "0"]),
    ("serve-threads-huge", ["serve", "--model", "{llama}", "--port", "0", "--threads", "100000"]),
    ("serve-bench-inputs-latin1", [*SERVE_BENCH, "--inputs-file", "{corpus_latin1}"]),
    ("serve-bench-inputs-binary", [*SERVE_BENCH, "--inputs-file", "{mf_prompts_binary}"]),
    ("serve-bench-out-user-folder", [*SERVE_BENCH, "--out", "{user_dir}"]),
    ("serve-bench-out-read-only", [*SERVE_BENCH, "--out", "{read_only}/result.json"]),
    # --- hostile pass (hfix-b)
    ("lm-train-block-size-above-context", [*LM_TRAIN, "--block-size", "100000"]),
    ("ee-train-block-size-above-context", [*EE_TRAIN, "--from", "{mf_llama}", "--block-size", "100000"]),
    ("lm-eval-block-size-above-context", [*LM_EVAL, "--block-size", "100000"]),
    ("ee-eval-block-size-above-context", ["ee", "eval", "--model", "{mf_ee_run}", "--block-size", "100000"]),
    ("ee-train-from-bert", [*EE_TRAIN, "--from", "{mf_bert}"]),
    ("lm-convert-from-bert", [*LM_CONVERT[:5], "{mf_bert}", *LM_CONVERT[6:]]),
    ("lm-convert-lora-rank-above-hidden", [*LM_CONVERT, "--lora-rank", "100000"]),
    ("ee-bench-nothing-to-run", [*EE_BENCH, "--thresholds", "", "--draft-tokens", ""]),
    ("ee-bench-thresholds-only-commas", [*EE_BENCH, "--thresholds", ","]),
]
# fmt: on


def _write_glue(root: Path, name: str, content: bytes) -> Path:
    folder = root / name / "SST-2"
    folder.mkdir(parents=True)
    for split in ("train", "dev"):
        (folder / f"{split}.tsv").write_bytes(content)
    return root / name


GOOD_ROWS = "".join(f"a fine sentence number {i}\t{i % 2}\n" for i in range(40))


def _mux_checkpoint(path: Path) -> Path:
    from depthmux.backbones import load_backbone
    from depthmux.multiplexing import LinearProbeHead, MultiplexedClassifier, MuxConfig

    backbone = load_backbone("minilm")
    config = MuxConfig(n=2, prefill_layers=0, mixer="reversible", task="tweets", readout=backbone.readout_mode)
    MultiplexedClassifier(config, backbone, LinearProbeHead(backbone.hidden_size, 2)).save_pretrained(path)
    return path


def _variant(ck: Path, dest: Path, edit) -> Path:
    shutil.copytree(ck, dest)
    state = json.loads((dest / "state.json").read_text())
    result = edit(state, dest)
    if result is not None:
        (dest / "state.json").write_text(result)
    else:
        (dest / "state.json").write_text(json.dumps(state))
    return dest


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """Every file and folder the cases name, made once."""
    from conftest import build_tiny_llama, build_tiny_recursive
    from depthmux.assets import minilm_path

    root = tmp_path_factory.mktemp("bad")
    p: dict[str, Path] = {"missing": root / "does-not-exist", "minilm": minilm_path()}
    p["emptydir"] = root / "empty"
    p["emptydir"].mkdir()
    p["file"] = root / "a-file.txt"
    p["file"].write_text("not a folder\n")
    if os.geteuid() != 0:
        p["read_only"] = root / "read-only"
        p["read_only"].mkdir()
        p["read_only"].chmod(0o555)
    elif Path("/sys/kernel").is_dir():  # root ignores permission bits, but sysfs refuses new folders to root too
        p["read_only"] = Path("/sys")
    p["symlink_loop"] = root / "loop"
    p["symlink_loop"].symlink_to(p["symlink_loop"])

    header = b"sentence\tlabel\n"
    glue = {
        "glue_latin1": header + GOOD_ROWS.encode() + b"caf\xe9 au lait\t1\n",
        "glue_empty": b"",
        "glue_header_only": header,
        "glue_malformed": header + GOOD_ROWS.encode() + b"a row without its label\n",
        "glue_bad_label": header + GOOD_ROWS.encode() + b"a sentence\t7\n",
        "glue_zero_width": header + GOOD_ROWS.encode() + "\u200b\u200b\u200b\t1\n".encode(),
        "glue_nbsp": header + GOOD_ROWS.encode() + "\u00a0\u00a0\t0\n".encode(),
        "glue_wrong_header": b"text\ttarget\n" + GOOD_ROWS.encode(),
        "glue_binary": bytes(range(256)) * 8,
    }
    for name, content in glue.items():
        p[name] = _write_glue(root, name, content)

    p["corpus"] = root / "corpus.txt"
    p["corpus"].write_text("\n\n".join(f"paragraph {i}: " + "word " * 40 for i in range(30)))
    p["corpus_empty"] = root / "corpus-empty.txt"
    p["corpus_empty"].write_text("")
    p["corpus_zero_width"] = root / "corpus-zw.txt"
    p["corpus_zero_width"].write_text("\u200b\u200b\n\n\u00a0\u200c\n\n\ufeff\u2060\n")
    p["corpus_latin1"] = root / "corpus-latin1.txt"
    p["corpus_latin1"].write_bytes(b"caf\xe9 " * 500)

    p["unknown_type"] = root / "unknown-type"
    p["unknown_type"].mkdir()
    (p["unknown_type"] / "config.json").write_text(json.dumps({"model_type": "nonsense_model"}))
    p["corrupt_config"] = root / "corrupt-config"
    p["corrupt_config"].mkdir()
    (p["corrupt_config"] / "config.json").write_text('{"model_type": "bert", "hidden_si')
    p["lm_model"] = root / "lm-model"
    build_tiny_recursive().save_pretrained(p["lm_model"])
    p["llama"] = root / "llama"
    build_tiny_llama().save_pretrained(p["llama"])
    p["lm_run_truncated"] = root / "lm-run-truncated"
    p["lm_run_truncated"].mkdir()
    (p["lm_run_truncated"] / "train_config.json").write_text('{"model": {"sharing": "cyc')
    (p["lm_run_truncated"] / "log.jsonl").write_text('{"step": 1, "loss": 5.0}\n{"step": 2, "lo')

    # issue 20/21 (mux): the user's own files, good and with a stray quote that merges rows
    p["glue_good"] = _write_glue(root, "glue_good", header + GOOD_ROWS.encode())
    rows = [f"a fine sentence number {i},{i % 2}\n" for i in range(40)]
    stray = [*rows[:10], '"a stray quote,1\n', *rows[10:20], '"closing" it,0\n', *rows[20:]]  # rows 11-21 merge
    for name, lines in {"csv_train": rows, "csv_dev": rows, "csv_quote": stray}.items():
        p[name] = root / f"{name}.csv"
        p[name].write_text("text,label\n" + "".join(lines))

    yield {k: str(v) for k, v in p.items()}
    if os.geteuid() != 0:
        p["read_only"].chmod(0o755)


@pytest.fixture(scope="module")
def mux_checkpoints(tmp_path_factory, bad):
    """A valid RevMUX checkpoint (random adapters, N = 2, l = 0, MiniLM) and corrupt copies of it."""
    root = tmp_path_factory.mktemp("mux-checkpoints")
    p: dict[str, Path] = {}
    ck = p["ck"] = _mux_checkpoint(root / "ck")

    def set_config(**values):
        def edit(state, _):
            state["config"].update(values)

        return edit

    p["ck_truncated"] = _variant(ck, root / "ck-truncated", lambda s, _: json.dumps(s)[:40])
    p["ck_not_object"] = _variant(ck, root / "ck-not-object", lambda s, _: "[1, 2, 3]")
    p["ck_extra_key"] = _variant(ck, root / "ck-extra-key", set_config(surprise=1))
    p["ck_n4"] = _variant(ck, root / "ck-n4", set_config(n=4))
    p["ck_n5"] = _variant(ck, root / "ck-n5", set_config(n=5))
    p["ck_n_string"] = _variant(ck, root / "ck-n-string", set_config(n="2"))
    p["ck_l99"] = _variant(ck, root / "ck-l99", set_config(prefill_layers=99))
    p["ck_mixer"] = _variant(ck, root / "ck-mixer", set_config(mixer="bogus"))
    p["ck_backbone_missing"] = _variant(ck, root / "ck-backbone", set_config(backbone=bad["missing"]))
    p["ck_kind"] = _variant(ck, root / "ck-kind", lambda s, _: s.update(kind="something-else"))
    p["ck_format"] = _variant(ck, root / "ck-format", lambda s, _: s.update(format_version=99))

    def truncate_tensors(state, dest):
        for f in dest.glob("*.safetensors"):
            f.write_bytes(f.read_bytes()[:50])

    p["ck_bad_tensors"] = _variant(ck, root / "ck-bad-tensors", truncate_tensors)
    p["ck_no_head"] = _variant(ck, root / "ck-no-head", lambda s, d: (d / "head.safetensors").unlink())
    p["ck_three_class"] = _three_class_checkpoint(root / "ck-three-class")
    return {k: str(v) for k, v in p.items()}


def _three_class_checkpoint(path: Path) -> Path:
    """A RevMUX checkpoint of a model trained on the user's three-class CSV (random adapters)."""
    from depthmux.backbones import load_backbone
    from depthmux.multiplexing import LinearProbeHead, MultiplexedClassifier, MuxConfig

    backbone = load_backbone("minilm")
    config = MuxConfig(n=2, task="moods", label_names=["happy", "neutral", "sad"], readout=backbone.readout_mode)
    MultiplexedClassifier(config, backbone, LinearProbeHead(backbone.hidden_size, 3)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, bad):
    """A finished 1-step ``lm train`` run folder (tiny MoR model, BPE tokenizer, train_config.json)."""
    out = tmp_path_factory.mktemp("lm-run") / "run"
    args = [a.format(out=out, **bad) for a in LM_TRAIN]
    main([*args, "--steps", "1", "--sharing", "middle_cycle", "--recursions", "2", "--router", "expert"])
    return {"lm_run": str(out)}


def _break(src: Path, dest: Path, defect: str) -> Path:
    """A copy of the model folder ``src`` with one of the :data:`BROKEN` defects."""
    shutil.copytree(src, dest)
    weights, config = dest / "model.safetensors", dest / "config.json"
    if defect == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif defect == "garbage":
        weights.write_bytes(bytes(range(256)) * 64)
    else:
        values = {"heads_zero": {"num_attention_heads": 0}, "vocab_string": {"vocab_size": "64"}}
        values["hidden_not_divisible"] = {"hidden_size": 30}
        config.write_text(json.dumps({**json.loads(config.read_text()), **values[defect]}))
    return dest


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory, bad, mux_checkpoints):
    """``{mf_...}``: broken model folders (every :data:`BROKEN` defect of a tiny BERT with the MiniLM tokenizer
    and of a tiny LLaMA), a BERT without tokenizer files, a mux checkpoint whose backbone is truncated, a
    finished 1-step ``ee train`` run, vanilla and token-router recursive
    models, prompt files in latin-1 and binary, and a one-document corpus."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from conftest import build_tiny_llama, build_tiny_recursive
    from depthmux.assets import minilm_path
    from depthmux.data.text import load_corpus, train_bpe_tokenizer

    root = tmp_path_factory.mktemp("model-folders")
    p: dict[str, Path] = {}
    tok = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    BertModel(cfg, add_pooling_layer=False).save_pretrained(root / "bert")
    tok.save_pretrained(root / "bert")
    bpe = train_bpe_tokenizer(load_corpus(bad["corpus"]), 300)
    build_tiny_llama(vocab_size=len(bpe), num_hidden_layers=4, eos_token_id=bpe.eos_token_id).save_pretrained(
        root / "llama"
    )
    bpe.save_pretrained(root / "llama")
    for family in ("bert", "llama"):
        for defect in BROKEN:
            p[f"mf_{family}_{defect}"] = _break(root / family, root / f"{family}-{defect}", defect)
    p["mf_bert"], p["mf_llama"] = root / "bert", root / "llama"
    p["mf_bert_no_tokenizer"] = root / "bert-no-tokenizer"
    p["mf_bert_no_tokenizer"].mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(root / "bert" / name, p["mf_bert_no_tokenizer"] / name)
    p["mf_ck_backbone_truncated"] = _variant(
        Path(mux_checkpoints["ck"]), root / "ck-backbone-truncated",
        lambda s, _: s["config"].update(backbone=str(p["mf_bert_truncated"])),
    )  # fmt: skip
    run = p["mf_ee_run"] = root / "ee-run"
    main([a.format(out=run, **bad) for a in EE_TRAIN] + ["--from", str(root / "llama")])
    p["mf_vanilla"] = root / "vanilla"
    build_tiny_recursive(sharing="none", num_recursions=1).save_pretrained(p["mf_vanilla"])
    p["mf_token_router"] = root / "token-router"
    build_tiny_recursive(mor_router="token").save_pretrained(p["mf_token_router"])
    p["mf_prompts_latin1"] = root / "prompts-latin1.txt"
    p["mf_prompts_latin1"].write_bytes(b"un caf\xe9 au lait\n")
    p["mf_prompts_binary"] = root / "prompts.bin"
    p["mf_prompts_binary"].write_bytes(bytes(range(256)) * 4)
    p["mf_corpus_one_doc"] = root / "one-document.txt"
    p["mf_corpus_one_doc"].write_text("a single paragraph: " + "word " * 400)
    return {k: str(v) for k, v in p.items()}


def _intact(path: Path) -> bool:
    return path.is_file() and path.read_text() == "precious\n"


@pytest.fixture
def tripwire(monkeypatch):
    def reached(self, *args, **kwargs):
        raise ReachedComputation(type(self).__name__)

    monkeypatch.setattr(torch.nn.Module, "__call__", reached)


def test_the_table_is_large_and_unique():
    names = [name for name, _ in CASES]
    assert len(names) >= 60 and len(set(names)) == len(names)


@pytest.mark.parametrize(("name", "argv"), CASES, ids=[name for name, _ in CASES])
def test_bad_invocation(name, argv, bad, request, tmp_path, monkeypatch, capsys):
    if any("{read_only}" in a for a in argv) and "read_only" not in bad:
        pytest.skip("running as root without sysfs: no folder here is read-only to root")
    paths = dict(bad)
    if any("{ck" in a for a in argv):  # built only when needed, before the tripwire is set
        paths.update(request.getfixturevalue("mux_checkpoints"))
    if any("{lm_run}" in a for a in argv):
        paths.update(request.getfixturevalue("lm_run"))
    if any("{mf_" in a for a in argv):
        paths.update(request.getfixturevalue("model_folders"))
    request.getfixturevalue("tripwire")
    monkeypatch.setenv("DEPTHMUX_CACHE", str(cache_dir()))  # keep the converted-asset cache of the checkout
    monkeypatch.chdir(tmp_path)  # anything written by mistake to a default path stays in the sandbox
    out_file = tmp_path / "existing-file.txt"  # outputs must never replace the user's files
    out_file.write_text("precious\n")
    user_dir = tmp_path / "user-folder"
    user_dir.mkdir()
    (user_dir / "notes.txt").write_text("precious\n")
    args = [a.format(out=tmp_path / "out", out_file=out_file, user_dir=user_dir, **paths) for a in argv]
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code
    except ReachedComputation as e:
        pytest.fail(f"accepted: `depthmux {' '.join(args)}` reached a forward pass ({e}) instead of failing up front")
    except Exception as e:  # any other exception is a traceback for the user
        pytest.fail(f"traceback: `depthmux {' '.join(args)}` raised {type(e).__name__}: {str(e)[:300]}")
    err = capsys.readouterr().err
    assert _intact(out_file), f"`depthmux {' '.join(args)}` replaced the file {out_file}"
    assert _intact(user_dir / "notes.txt"), f"`depthmux {' '.join(args)}` deleted the files in {user_dir}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit status {code} (expected 2); stderr: {err[-500:]!r}"
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"{len(lines)} lines on stderr (expected one): {err[-800:]!r}"
    assert lines[0].startswith("error: "), lines[0]
    print(lines[0])  # the message a user sees (pytest -rP lists them all)


def test_resume_on_a_run_in_use_is_one_line_before_any_work(lm_run, request, monkeypatch, capsys):
    """Hostile pass (hfix-b): ``--resume`` on a folder another run holds says so first, in one line, before
    a checkpoint is read (reading one the other run is writing printed warnings before the lock's error)."""
    import depthmux.recipes.lm as recipe
    from depthmux.utils.run_folder import RunFolder

    def read_checkpoint(_run):
        raise ReachedComputation("read a checkpoint of a run in use")

    request.getfixturevalue("tripwire")
    monkeypatch.setattr(recipe, "latest_model_and_tokenizer", read_checkpoint)
    run = lm_run["lm_run"]
    # the lock on another open file description: the CLI's flock fails as another process's would
    with RunFolder(run).lock(), pytest.raises(SystemExit) as e:
        main(["lm", "train", "--out", run, "--resume", "--no-progress"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert e.value.code == 2
    assert len(lines) == 1 and "in use by another run" in lines[0], lines
