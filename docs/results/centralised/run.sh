#!/usr/bin/env bash
# The runs behind docs/results/centralised/README.md, from the repository root:
#   bash docs/results/centralised/run.sh OUT [ARM...]
# Centralised training (`ecg-fat train-local`: one model on all training shards, the project's own training loop and
# Algorithm 1), a cheap stand-in for the federated protocol on a 2-core machine, then `ecg-fat evaluate --json` on
# the saved weights. Two questions: what the model is worth on patients it never saw (inter-patient: de Chazal's DS1
# records train, DS2 test), and whether class weighting raises the rare classes' recall under attack (intra-patient,
# the paper's split, FAT at a reduced budget: 2,000 windows per shard, 5 epochs). An arm whose metrics.json exists
# is skipped; name arms to run only those. Models stay in OUT (never commit them).
set -euo pipefail
out=${1:?usage: run.sh OUT [ARM...]}
shift
only=("$@")
mkdir -p "$out"
[ -f "$out/inter/manifest.json" ] ||
    ecg-fat prepare --mitdb ../shared/data/mitdb --out "$out/inter" --split inter-patient --partition patient
[ -f "$out/intra/manifest.json" ] || ecg-fat prepare --mitdb ../shared/data/mitdb --out "$out/intra"
[ -f "$out/inter-rhythm/manifest.json" ] ||
    ecg-fat prepare --mitdb ../shared/data/mitdb --out "$out/inter-rhythm" --split inter-patient --partition patient --rhythm

arm() {  # arm NAME DATA "TRAIN FLAGS" "EVALUATE FLAGS"
    local name=$1 data=$2 train=$3 evaluate=$4
    if [ ${#only[@]} -gt 0 ] && [[ ! " ${only[*]} " =~ " $name " ]]; then return; fi
    [ -f "$out/$name/metrics.json" ] && return
    mkdir -p "$out/$name"
    local start=$SECONDS
    # shellcheck disable=SC2086  # the flags are word lists
    ecg-fat train-local --data "$out/$data" --save "$out/$name/model.pt" --conditions clean $train \
        2>"$out/$name/train.log"
    local trained=$((SECONDS - start))
    # shellcheck disable=SC2086
    ecg-fat evaluate --model "$out/$name/model.pt" --test "$out/$data/test.npz" --json "$out/$name/metrics.json" \
        $evaluate 2>"$out/$name/evaluate.log" >"$out/$name/evaluate.txt"
    echo "$name: train $trained s, evaluate $((SECONDS - start - trained)) s (train-local $train; evaluate $evaluate)" |
        tee -a "$out/arms.txt"
}

# Inter-patient, clean: does class weighting carry the rare classes across patients?
for weights in none balanced sqrt-balanced; do
    arm "inter-clean-$weights" inter "--no-adversarial --class-weights $weights" "--conditions clean"
done
# Intra-patient FAT at a reduced budget (2,000 windows per shard: 20,000 in all, 5 epochs): the class weights against
# the paper's unweighted loss; seed 0, then the inter-patient FAT run, then seed 1.
intra_fat() {  # intra_fat SEED
    for weights in none sqrt-balanced balanced; do
        arm "intra-fat-$weights-s$1" intra "--max-train-windows 2000 --class-weights $weights --seed $1" \
            "--max-test-windows 5000 --conditions clean pgd"
    done
}
intra_fat 0
# Inter-patient FAT, the paper's loss: the robust model on unseen patients, all five conditions on all of DS2,
# and AutoAttack and PGD-100 on a stratified 250 of them.
arm inter-fat-none inter "--class-weights none" "--standard-windows 250"
intra_fat 1
# Beyond Algorithm 1's loss (same budget): the class weights on the clean half only (the adversarial half keeps the
# unweighted loss), TRADES (beta 6) alone, and TRADES with the weights on its cross-entropy term only. Run in this
# order: seed 0 of the first three, sqrt-balanced clean-half with seed 1, then balanced clean-half with seed 0.
budget() { echo "--max-train-windows 2000 --seed $1"; }
evaluate="--max-test-windows 5000 --conditions clean pgd"
for seed in 0 1; do
    arm "intra-fat-sqrt-clean-half-s$seed" intra "$(budget $seed) --class-weights sqrt-balanced --weighted-half clean" \
        "$evaluate"
    arm "intra-trades-none-s$seed" intra "$(budget $seed) --objective trades" "$evaluate"
    arm "intra-trades-sqrt-balanced-s$seed" intra "$(budget $seed) --objective trades --class-weights sqrt-balanced" \
        "$evaluate"
    arm "intra-fat-balanced-clean-half-s$seed" intra "$(budget $seed) --class-weights balanced --weighted-half clean" \
        "$evaluate"
done
# Class-balanced sampling (the rare beats drawn more often, each epoch as many windows; the paper's unweighted loss),
# alone and with TRADES.
for seed in 0 1; do
    for sampling in sqrt-balanced balanced; do
        arm "intra-fat-sampling-$sampling-s$seed" intra "$(budget $seed) --sampling $sampling" "$evaluate"
    done
    arm "intra-trades-sampling-sqrt-balanced-s$seed" intra "$(budget $seed) --objective trades --sampling sqrt-balanced" \
        "$evaluate"
done
# The paper gives no batch size, and its learning rate is Adam's default: the paper's loss with a smaller batch
# (twice the optimiser steps per epoch) and with a larger learning rate, seed 0.
arm intra-fat-none-batch32-s0 intra "$(budget 0) --batch-size 32" "$evaluate"
arm intra-fat-none-lr3e-3-s0 intra "$(budget 0) --lr 0.003" "$evaluate"
# A third seed of the paper's loss and of sqrt-balanced sampling, for the mean and spread over three seeds.
arm intra-fat-none-s2 intra "--max-train-windows 2000 --class-weights none --seed 2" "$evaluate"
arm intra-fat-sampling-sqrt-balanced-s2 intra "$(budget 2) --sampling sqrt-balanced" "$evaluate"
# Federation or adversarial training? FAT on all of DS1 in one place with the rhythm features (`prepare --rhythm`),
# with the logit-adjusted loss and its floor as in the federated runs of docs/results/hospitals/inter-patient/
# (fat-rhythm-laf05-s*), then with the paper's loss; scored as those runs are (the same 5,000 DS2 windows, drawn
# with the run seed; AutoAttack and PGD-100 on a stratified 1,000 of them).
hospitals_eval="--max-test-windows 5000 --standard-windows 1000"
floor="--logit-adjustment 1 --logit-adjustment-floor 0.05"
arm inter-fat-rhythm-laf05-s0 inter-rhythm "$floor --seed 0" "$hospitals_eval --seed 0"
arm inter-fat-rhythm-none-s0 inter-rhythm "--seed 0" "$hospitals_eval --seed 0"
for seed in 1 2; do
    arm "inter-fat-rhythm-laf05-s$seed" inter-rhythm "$floor --seed $seed" "$hospitals_eval --seed $seed"
done
# The same training work as a federated run: 10 rounds x 5 of 10 hospitals x 5 local epochs pass over about 25
# epochs of DS1's windows, where the arms above train 5.
for seed in 0 1 2; do
    arm "inter-fat-rhythm-laf05-e25-s$seed" inter-rhythm "--epochs 25 $floor --seed $seed" "$hospitals_eval --seed $seed"
done
# The logit-adjusted loss on the paper's split (Menon et al., 2021; at tau 1 it is the balanced softmax loss, which
# Yue et al., 2024, arXiv:2403.10073, found as good as RoBal inside adversarial training on long-tailed data), at the
# intra-patient budget, seed 0: against the paper's loss and the sampling arms above, for the intra-patient target.
arm intra-fat-la-s0 intra "$(budget 0) --logit-adjustment 1" "$evaluate"
