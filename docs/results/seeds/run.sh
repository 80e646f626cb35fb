#!/usr/bin/env bash
# The paper's protocol with three run seeds per arm (issue: error bars), from the repository root:
#   bash docs/results/seeds/run.sh OUT [SEED...]
# Each run is the paper's protocol through the real federation (`ecg-fat federate`, every default), with its run
# seed (initial weights, node sampling, per-node training seeds, attacks' random starts: all follow the seed and the
# partition ids, so a seed is one reproducible run) and AutoAttack + PGD-100 on 1,000 stratified test windows after
# the last round. The data split stays the default (--data-seed 42). A run whose summary.txt exists is skipped;
# one stopped part-way is resumed.
# Then the report: every cell mean +- sample sd over the seeds, beside the paper's four tables:
#   ecg-fat report OUT/baseline OUT/fat --out OUT/report
# Time per seed on 2 cores (measured): FAT 1 h 40-48 min on a Zen 4 EPYC (AutoAttack's 250 s included; seeds/README.md),
# 1 h 7 min on the AVX-512 machine of paper-iid/RUNS.md (no standard attacks); baseline 38-41 min on the Zen 4,
# 1 h 35 min on an AVX2 EPYC, 28 min on the AVX-512 one (no standard attacks).
# A trial of the whole pipeline in minutes: FLAGS="--rounds 1 --local-epochs 1 --max-train-windows 100
# --max-test-windows 200 --standard-windows 20" bash docs/results/seeds/run.sh /tmp/trial 0 1 (FLAGS come last).
# ARMS="baseline" runs one arm only (default: both); the report shows the arms that have runs.
set -euo pipefail
out=${1:?usage: run.sh OUT [SEED...]}
shift
[ $# -gt 0 ] || set -- 0 1 2
read -r -a arms <<<"${ARMS:-baseline fat}"
. "$(dirname "$0")/../federate_arm.sh"
mkdir -p "$out"
for seed in "$@"; do
    for arm in "${arms[@]}"; do
        federate_arm "$arm" "$out/$arm/seed-$seed" "$out/work" "$out/$arm-seed-$seed.log" --seed "$seed"
    done
done
reports=()
for arm in baseline fat; do [ -d "$out/$arm" ] && reports+=("$out/$arm"); done
ecg-fat report "${reports[@]}" --out "$out/report"
