"""Cost of one call against the rows in it, on this machine: why depth-wise batching gains nothing on a CPU.

Times the linear layers of one SmolLM2-135M decoder layer (q, k, v, o, gate, up, down) and its LM head
(random weights of the real shapes, float32) for calls of 1..64 rows. Where a call's time grows with its
rows (compute-bound), a half-empty lockstep call at a deep recursion costs half as much and there is
nothing for depth-wise batching to fill; where it stays flat (launch- or memory-bound: a GPU at small
batch), the empty rows are wasted time and depth-wise batching recovers them.

    OMP_NUM_THREADS=2 python scripts/row_cost.py
"""

from __future__ import annotations

import json
import time

import torch

D, KV, FF, VOCAB = 576, 192, 1536, 49152
LAYER = [(D, D), (D, KV), (D, KV), (D, D), (D, FF), (D, FF), (FF, D)]  # (in, out) of each linear


def best_ms(fn, repeats: int = 20) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def main() -> None:
    torch.manual_seed(0)
    layer = [torch.randn(o, i) / i**0.5 for i, o in LAYER]
    head = torch.randn(VOCAB, D) / D**0.5
    rows_list = [1, 4, 8, 16, 24, 32, 64]
    out = {"threads": torch.get_num_threads(), "rows": rows_list, "layer_ms": [], "head_ms": []}
    with torch.no_grad():
        for rows in rows_list:
            x, h = torch.randn(rows, D), torch.randn(rows, FF)

            def run_layer(x=x, h=h):
                for w in layer:
                    torch.nn.functional.linear(h if w.shape[1] == FF else x, w)

            out["layer_ms"].append(best_ms(run_layer))
            out["head_ms"].append(best_ms(lambda x=x: torch.nn.functional.linear(x, head)))
    print("| rows | layer linears (ms) | per row | LM head (ms) | per row |")
    print("|---|---|---|---|---|")
    for r, lm, hm in zip(out["rows"], out["layer_ms"], out["head_ms"], strict=True):
        print(f"| {r} | {lm:.3f} | {lm / r:.3f} | {hm:.3f} | {hm / r:.3f} |")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
