#!/usr/bin/env bash
# The runs behind docs/results/poisoning/README.md, from the repository root:
#   bash docs/results/poisoning/run.sh OUT
# A scaled-down FAT protocol (10 nodes, 5 per round, 1,000 test windows drawn with the run seed): a warm-up of 2 clean
# rounds of the paper's size (full shards, 5 local epochs), then 6 FAT rounds (Algorithm 1, PGD-20 8/255) of one
# local epoch on 2,000 windows per node; then each arm resumes from the warm-up's round 8 for 4 more such FAT
# rounds, with or without attackers (partitions 0 and 1) and with each defence.
set -euo pipefail
out=${1:?usage: run.sh OUT}
common=(--data .ecg-fat/data --workdir .ecg-fat/poisoning --max-test-windows 1000)
fat=("${common[@]}" --max-train-windows 2000 --local-epochs 1)
mkdir -p "$out"
if ! grep -qs "^round 8" "$out/warmup/summary.txt"; then
    rm -rf "${out:?}/warmup"
    ecg-fat federate "${common[@]}" --no-adversarial --rounds 2 --results "$out/warmup" 2>"$out/warmup-clean.log"
    rm -rf "$out/warmup/final_model.pt" "$out/warmup/summary.txt" "$out/warmup/report"
    ecg-fat federate "${fat[@]}" --rounds 8 --resume --results "$out/warmup" 2>"$out/warmup-fat.log"
fi

arm() {  # arm NAME FLAGS...: 4 more FAT rounds from the warm-up's round 8
    local name=$1
    shift
    grep -qs "^round 12" "$out/$name/summary.txt" && return  # done in an earlier call
    rm -rf "${out:?}/$name"
    cp -r "$out/warmup" "$out/$name"
    rm -rf "$out/$name/final_model.pt" "$out/$name/summary.txt" "$out/$name/report"
    local start=$SECONDS
    ecg-fat federate "${fat[@]}" --rounds 12 --seed "$arm_seed" --resume --results "$out/$name" "$@" \
        2>"$out/$name.log" || true
    echo "$name: $((SECONDS - start)) s ($*)" | tee -a "$out/arms.txt"
}

# Run seed 13 for the arms (0 for the warm-up): the server's node sampling follows the seed, and with 13 the
# attackers (partitions 0 and 1) are sampled in every attacked round, 2, 1, 1 and 2 of the 5 replies in rounds
# 9-12 (found from the sampling alone, before any arm ran).
arm_seed=13
attack_boost=(--malicious 2 --poison scale --poison-scale 1e6)       # model replacement: x1e6
attack_flip=(--malicious 2 --poison sign-flip)                      # the update reversed, same norm
attack_flip_boost=(--malicious 2 --poison scale --poison-scale -5)  # reversed x5: inside the norm bound (10x median)

arm none-fedavg
arm boost-fedavg-unchecked "${attack_boost[@]}" --no-validate-updates
arm boost-fedavg "${attack_boost[@]}"
arm flip-boost-fedavg "${attack_flip_boost[@]}"
arm flip-boost-median "${attack_flip_boost[@]}" --aggregation median
arm none-median --aggregation median
arm flip-boost-krum "${attack_flip_boost[@]}" --aggregation krum
arm flip-boost-trimmed-mean "${attack_flip_boost[@]}" --aggregation trimmed-mean
arm flip-boost-fedavg-one --malicious 1 --poison scale --poison-scale -5  # partition 0 alone: in every round
arm none-krum --aggregation krum
arm none-trimmed-mean --aggregation trimmed-mean
arm flip-fedavg "${attack_flip[@]}"
arm flip-median "${attack_flip[@]}" --aggregation median
arm boost-median-unchecked "${attack_boost[@]}" --no-validate-updates --aggregation median
arm flip-trimmed-mean "${attack_flip[@]}" --aggregation trimmed-mean
arm flip-krum "${attack_flip[@]}" --aggregation krum
arm none-fedavg-unchecked --no-validate-updates
