#!/bin/bash
# Quiet-machine re-benchmark of the trained SST-2 checkpoints (nothing else running).
for c in n2-l0 n2-l1 n2-l3 n4-l0 n4-l1 n4-l3; do
  echo "== $c"
  .venv/bin/depthmux mux bench --checkpoint runs/sst2/$c-reversible/best --task sst2 --data-dir ../shared/data/glue \
    --samples 256 --batch-size 64 --repetitions 7 --threads 1 --json
done
