#!/usr/bin/env bash
# FAT against the baseline on splits that look like real hospitals (issue: honest benchmarks), from the
# repository root:
#   bash docs/results/hospitals/run.sh OUT [SPLIT...]
# SPLIT is one of
#   non-iid        the paper's split (80/20 of the beats, so intra-patient), but each hospital holds whole
#                  records (--partition patient) instead of a stratified tenth of every record's beats;
#   inter-patient  de Chazal's DS1 records are the hospitals (whole records each), DS2 is the test set: the
#                  model is tested on patients that no hospital trained on, as a new hospital would be.
# (default: both). Each run is the paper's protocol otherwise (`ecg-fat federate`, every other default: 10
# nodes, 5 per round, 10 rounds, 5 local epochs, run seed 0), with AutoAttack and PGD-100 on 1,000 stratified
# test windows after the last round. A run whose summary.txt exists is skipped; one stopped part-way is resumed.
# Then one report per split: ecg-fat report OUT/SPLIT/baseline OUT/SPLIT/fat --out OUT/SPLIT/report
# Time per run on 2 cores of a Zen 4 EPYC (measured): the baseline 44 min on non-iid (README.md here), FAT
# about 1 h 36 min on non-iid (README.md here) and 1 h 40-48 min on the paper's IID split
# (docs/results/seeds/). Inter-patient trains on fewer windows (DS1: 51,010 against 87,574) but tests on
# more (DS2: 49,698 against 21,894), and the paper's five conditions on the full test set after every round
# are most of a baseline's time: they took 4,704 s of the inter-patient baseline (README.md here). FAT on
# inter-patient took about 2 h (in three launches; the five conditions 4,429 s of it).
# ARMS="baseline" runs one arm only (default: both); FLAGS="..." are appended to every `ecg-fat federate`.
# inter-patient/fat-rhythm/ is FLAGS="--rhythm" ARMS=fat on inter-patient, moved beside the others (README.md here).
set -euo pipefail
out=${1:?usage: run.sh OUT [SPLIT...]}
shift
[ $# -gt 0 ] || set -- non-iid inter-patient
read -r -a arms <<<"${ARMS:-baseline fat}"
. "$(dirname "$0")/../federate_arm.sh"
for split in "$@"; do  # every name checked before the first hour-long run
    case $split in non-iid | inter-patient) ;; *) echo "run.sh: unknown split '$split' (non-iid or inter-patient)" >&2; exit 2 ;; esac
done
for split in "$@"; do
    data=(--partition patient)
    [ "$split" = inter-patient ] && data+=(--split inter-patient)
    mkdir -p "$out/$split"
    for arm in "${arms[@]}"; do
        # One workdir per split: its prepared data are reused by the other arm.
        federate_arm "$arm" "$out/$split/$arm" "$out/work-$split" "$out/$split/$arm.log" --seed 0 "${data[@]}"
    done
    reports=()
    for arm in baseline fat; do [ -f "$out/$split/$arm/summary.txt" ] && reports+=("$out/$split/$arm"); done
    if [ ${#reports[@]} -gt 0 ]; then ecg-fat report "${reports[@]}" --out "$out/$split/report"; fi
done
