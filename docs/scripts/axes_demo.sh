#!/usr/bin/env bash
# Issue 24's architecture x weighting demonstration on DeepLabV3 (table spec mtlbench/tables/axes.yaml),
# quick preset, seeds 0-2, one run at a time at the lowest priority (nice 19): it takes the cycles
# the standard study (docs/scripts/standard_study.sh, nice 10) leaves idle, e.g. while a sweep's
# last run trains alone, and yields otherwise (about 6% of the study's CPU when both contend).
# Rows run in the spec's order: hard sharing and MTAN first.  Safe to start again at any time.
#   nohup bash docs/scripts/axes_demo.sh > axes_demo.log 2>&1 &
# Start it from a shell at nice 0 (a reniced shell adds its niceness to the 19).
set -u
MTL="${MTLBENCH:-.venv/bin/mtlbench}"
export OMP_NUM_THREADS=1
nice -n 19 "$MTL" sweep --table axes --preset quick --seeds "${SEEDS:-0-2}" --jobs 1 --quiet
