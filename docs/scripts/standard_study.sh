#!/usr/bin/env bash
# The standard-preset re-test (issue 23): Table 1, its noise floor, then Table 4, seeds 0-4, niced, one thread per
# run, two runs at a time.  Safe to start again at any time: `sweep` skips finished runs and resumes
# interrupted ones from their checkpoints.  Run from the repository root, in the background:
#   nohup bash docs/scripts/standard_study.sh > standard_study.log 2>&1 &
# Commit the records as they land (results/runs/synthetic/vit_tiny/*/seed*.json and their logs).
# Keep a seed's pairs on one kind of processor: records carry their machine (device.processor).
set -u
MTL="${MTLBENCH:-.venv/bin/mtlbench}"
SEEDS="${SEEDS:-0 1 2 3 4}"
export OMP_NUM_THREADS=1
# the encoder every standard run starts from; a rebuilt one on another machine may differ in its
# bytes (docs/BENCHMARK_DESIGN.md): compare its sha256 with the records' encoder_init first
nice -n 10 "$MTL" pretrain --recipe simmim_nyuv2_v2 || exit 1
sweep() { for s in $SEEDS; do nice -n 10 "$MTL" sweep --table "$1" --preset standard --seeds "$s" --jobs 2 --quiet; done; }
sweep 1
# the noise floor on the current encoder: A/A pairs of the baseline (two more runs a seed); the
# design study's pairs (sd 3.71) were made on an encoder rebuilt since (docs/BENCHMARK_DESIGN.md)
for s in $SEEDS; do nice -n 10 "$MTL" noise --table 1 --preset standard --seeds "$s" --jobs 2 --quiet; done
sweep 4
