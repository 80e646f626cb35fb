#!/usr/bin/env bash
# The GPU check, on the device tool's machine (run `bash docs/results/gpu/pack.sh` here first and carry .gpu):
#   bash docs/results/gpu/run.sh OUT [SECONDS]
# Installs the carried wheels, unpacks the records, prepares the paper's split, runs check.py (CUDA against the
# CPU), then the paper's FAT protocol through the real federation (`ecg-fat federate`, every default: a TLS
# SuperLink, 10 SuperNodes, 5 per round, 10 rounds, 5 local epochs; the SuperNodes' ClientApps and the
# ServerApp's evaluation all on the one GPU), stopped after SECONDS (default 450) if it has not ended (FLAGS="--rounds 3": a shorter run); then
# copies the results that fit the tool's 8 returned files into OUT. FLAGS="..." are appended to `ecg-fat federate`.
set -uo pipefail
out=${1:?usage: run.sh OUT [SECONDS]}
budget=${2:-450}
site=/tmp/ecg-fat-site work=/tmp/ecg-fat-work
started=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $site .gpu/whl/*.whl || exit 1
# The project's console scripts, without building it (the machine has no registry for the build backend).
for name in superlink supernode; do
    printf '#!/bin/sh\nexec python3 -m ecg_fat.%s "$@"\n' $name >$site/bin/ecg-fat-$name
done
chmod +x $site/bin/ecg-fat-*
export PYTHONPATH=$PWD:$site PATH=$site/bin:$PATH PYTHONUNBUFFERED=1
tar -C /tmp -xJf .gpu/mitdb.tar.xz
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    echo "$(nproc) CPU cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
    echo "set-up $(($(date +%s) - started)) s"
} | tee $out/check.txt
python3 -m ecg_fat.cli prepare --mitdb /tmp/mitdb --out $work/data 2>&1 | tail -1 | tee -a $out/check.txt
timeout 90 python3 docs/results/gpu/check.py $work/data 2>&1 | tee -a $out/check.txt
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_model_attacks_training.py -k "cuda or device" 2>&1 |
    tail -1 | tee -a $out/check.txt
started=$(date +%s)
read -r -a flags <<<"${FLAGS:-}"
# Every line of the run stamped with the seconds since its start.
timeout -s TERM "$budget" python3 -m ecg_fat.cli federate --mitdb /tmp/mitdb --workdir $work --results $work/fat \
    --standard-windows 1000 "${flags[@]}" 2>&1 |
    while IFS= read -r line; do echo "$(($(date +%s) - started)) s  $line"; done >$out/federate.log
echo "ecg-fat federate: exit ${PIPESTATUS[0]}, $(($(date +%s) - started)) s" | tee -a $out/federate.log
for f in metrics.csv clients.csv config.json summary.txt serverapp.log; do cp $work/fat/$f $out/ 2>/dev/null; done
tail -c 20000 $work/logs/supernode-00.log >$out/supernode-00.log 2>/dev/null
