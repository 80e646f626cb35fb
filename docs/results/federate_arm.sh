# Sourced by the results scripts (seeds/, hospitals/ and minority/run.sh): one arm of the paper's protocol through the
# real federation, with AutoAttack and PGD-100 on 1,000 stratified test windows after the last round.
#   federate_arm ARM RESULTS WORKDIR LOG [FLAG...]      (ARM: baseline or fat; $FLAGS appended last)
# A run whose summary.txt exists is skipped; one stopped part-way continues from its last checkpoint (node
# sampling and seeds follow the round number). `time -v` goes to LOG, appended: a resumed run keeps both parts.
federate_arm() {
    local arm=$1 results=$2 workdir=$3 log=$4
    shift 4
    [ -f "$results/summary.txt" ] && return 0
    local flags=("$@" --standard-windows 1000 --results "$results") extra
    read -r -a extra <<<"${FLAGS:-}"
    [ -d "$results/checkpoints" ] && flags+=(--resume)
    [ "$arm" = baseline ] && flags+=(--no-adversarial)
    /usr/bin/time -v ecg-fat federate --mitdb ../shared/data/mitdb --workdir "$workdir" "${flags[@]}" "${extra[@]}" \
        2>>"$log"
}
