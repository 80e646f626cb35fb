#!/usr/bin/env bash
# The runs behind docs/results/poisoning/README.md, from the repository root:
#   bash docs/results/poisoning/run.sh OUT
# A scaled-down FAT protocol (10 nodes, 5 per round, Algorithm 1 with PGD-20 8/255, each sampled node training one
# epoch on 2,000 of its windows, a stratified 1,000-window test subset): 10 honest rounds, then each arm resumes
# from that checkpoint for 4 rounds, with or without attackers (partitions 0 and 1) and with each defence.
set -euo pipefail
out=${1:?usage: run.sh OUT}
scale=(--data .ecg-fat/data --workdir .ecg-fat/poisoning --max-train-windows 2000 --local-epochs 1 --max-test-windows 1000)
mkdir -p "$out"
[ -d "$out/warmup" ] || ecg-fat federate "${scale[@]}" --rounds 10 --results "$out/warmup" 2>"$out/warmup.log"

arm() {  # arm NAME FLAGS...: 4 more rounds from the warm-up's round 10
    local name=$1
    shift
    grep -qs "^round 14" "$out/$name/summary.txt" && return  # done in an earlier call
    rm -rf "${out:?}/$name"
    cp -r "$out/warmup" "$out/$name"
    rm -rf "$out/$name/final_model.pt" "$out/$name/summary.txt" "$out/$name/report"
    local start=$SECONDS
    ecg-fat federate "${scale[@]}" --rounds 14 --resume --results "$out/$name" "$@" 2>"$out/$name.log" || true
    echo "$name: $((SECONDS - start)) s ($*)" | tee -a "$out/arms.txt"
}

attack_boost=(--malicious 2 --poison scale --poison-scale 1e6)       # model replacement: x1e6
attack_flip=(--malicious 2 --poison sign-flip)                      # the update reversed, same norm
attack_flip_boost=(--malicious 2 --poison scale --poison-scale -5)  # reversed x5: inside the norm bound (10x median)

arm none-fedavg
arm boost-fedavg-unchecked "${attack_boost[@]}" --no-validate-updates
arm boost-fedavg "${attack_boost[@]}"
arm flip-boost-fedavg "${attack_flip_boost[@]}"
arm flip-boost-median "${attack_flip_boost[@]}" --aggregation median
arm flip-boost-trimmed-mean "${attack_flip_boost[@]}" --aggregation trimmed-mean
arm flip-boost-krum "${attack_flip_boost[@]}" --aggregation krum
arm flip-fedavg "${attack_flip[@]}"
arm flip-median "${attack_flip[@]}" --aggregation median
arm none-median --aggregation median
arm none-trimmed-mean --aggregation trimmed-mean
arm none-krum --aggregation krum
arm boost-median-unchecked "${attack_boost[@]}" --no-validate-updates --aggregation median
arm flip-trimmed-mean "${attack_flip[@]}" --aggregation trimmed-mean
arm flip-krum "${attack_flip[@]}" --aggregation krum
arm none-fedavg-unchecked --no-validate-updates
