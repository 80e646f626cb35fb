#!/usr/bin/env bash
# Does the ServerApp's overlapped evaluation (--overlap-evaluation on) save the evaluation's time when the server has
# its own core? From the repository root:  bash docs/results/perf/overlap.sh OUT
# The same small FAT federation twice, overlap off then on, with the SuperLink and its ServerApp on core 0 and both
# SuperNodes (and the ClientApps they start) on core 1, one torch thread each. Sizes are chosen so that a round's
# training and its evaluation take about as long (3,000 windows per node, 1 epoch; 5 conditions on 1,500 test
# windows). Prints each run's wall time; the metrics must be identical but for their timing column (compared).
set -euo pipefail
out=${1:?usage: overlap.sh OUT}
mkdir -p "$out"
export OMP_NUM_THREADS=1

# Everything starts on core 0; a SuperNode is moved to core 1 as soon as it appears, before it starts a ClientApp
# (its children inherit the mask).
pin_supernodes() {
    while sleep 0.2; do
        for pid in $(pgrep -f ecg-fat-supernode); do
            [ "$(taskset -p "$pid" 2>/dev/null | awk '{print $NF}')" = 2 ] || taskset -a -p -c 1 "$pid" >/dev/null 2>&1 || true
        done
    done
}

# The shards first, so that neither run's wall time holds the reading of the records.
ecg-fat prepare --mitdb ../shared/data/mitdb --out "$out/data" --clients 2 >"$out/prepare.log" 2>&1
for mode in off on; do
    pin_supernodes &
    pinner=$!
    start=$SECONDS
    taskset -c 0 ecg-fat federate --mitdb ../shared/data/mitdb --data "$out/data" --results "$out/$mode" \
        --nodes 2 --nodes-per-round 2 --rounds 4 --local-epochs 1 --max-train-windows 3000 \
        --max-test-windows 1500 --overlap-evaluation "$mode" >"$out/$mode.log" 2>&1
    echo "overlap $mode: $((SECONDS - start)) s" | tee -a "$out/times.txt"
    kill "$pinner"
done
if cmp -s <(cut -d, -f1-11 "$out/off/metrics.csv") <(cut -d, -f1-11 "$out/on/metrics.csv"); then
    echo "metrics.csv identical but for seconds" | tee -a "$out/times.txt"
else
    echo "metrics.csv DIFFER" | tee -a "$out/times.txt"
fi
