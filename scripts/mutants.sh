#!/usr/bin/env bash
# Mutation testing of the engine's logic with the simulator as the judge.
#
#   scripts/mutants.sh                 # every module below (hours on 2 cores)
#   scripts/mutants.sh net/src/channel.rs core/src/shard.rs   # just these files
#   scripts/mutants.sh net/src/peer.rs:0/4    # a sample: every 4th mutant
#   MUTANTS_JOBS=2 scripts/mutants.sh  # two mutants at a time (builds are mostly serial)
#   scripts/mutants.sh --report        # only rebuild REPORT.md from what was measured
#
# For each file, cargo-mutants plants one small bug at a time (a replaced
# operator, a function returning a default, a deleted statement, ...) and runs
# the simulator over a fixed seed range (verify/tests/mutants_sim.rs) as the
# only test: a mutant the simulator does not reject is a bug it would miss.
# Unit tests are left out on purpose, so the score measures the simulator.
#
# cargo-mutants works in target/mutants/<file>/; after each file its result
# lists (caught.txt, missed.txt, timeout.txt, unviable.txt) and a `what` line
# (file, sample, commit) are copied into mutants/<file with / as _>/, which is
# committed, so measurements survive a fresh clone and runs can be split over
# sessions. mutants/REPORT.md (committed too) is built from that directory:
# the score per file and every survivor, then the overall score:
#   score = caught / (caught + missed), over viable mutants; timeouts count as
#   caught (a hang is a failure the simulator reports as a liveness failure).
# Planted-bug switches (`*_for_testing`) are not mutated: they are off in
# every run the sweep makes, so no mutant of theirs can change a result.
# Survivors that are equivalent mutants (no behaviour change) are listed in
# scripts/mutants-equivalent.txt, one per line as `<mutant> | <why>` (the
# mutant as cargo-mutants names it, without its line:column); the
# report marks them and gives the score without them too.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo mutants --version >/dev/null 2>&1; then
    echo "installing cargo-mutants (once per machine)..." >&2
    cargo install cargo-mutants --locked
fi

default_files=(
    net/src/channel.rs
    net/src/peer.rs
    net/src/liveness.rs
    net/src/frame.rs
    state/src/dedup.rs
    state/src/keyed.rs
    core/src/shard.rs
    core/src/driver.rs
    core/src/cluster/relay.rs
    core/src/cluster/remote.rs
    core/src/sink.rs
    core/src/cluster/lifecycle.rs
    core/src/cluster/codec.rs
    core/src/source.rs
    apps/src/doubler.rs
    apps/src/wordcount.rs
    apps/src/market_spread.rs
    apps/src/seq_window.rs
)
report_only=false
if [ "${1:-}" = "--report" ]; then
    report_only=true
    files=()
elif [ $# -gt 0 ]; then
    files=("$@")
else
    files=("${default_files[@]}")
fi

# The unmutated tree must pass the sweep, or every mutant would look caught.
# (cargo-mutants' own baseline would run the sweep in the mutated file's
# package, which does not hold it.)
if ! $report_only; then
    echo "baseline: the simulator sweep on the unmutated tree" >&2
    cargo test -q -p verity-verify --test mutants_sim >&2
fi

out=target/mutants
results=mutants
mkdir -p "$out" "$results"
report="$results/REPORT.md"
equivalent=scripts/mutants-equivalent.txt

# ---- run: one cargo-mutants output directory per file ----------------------
for spec in "${files[@]+"${files[@]}"}"; do
    file="${spec%%:*}"
    sample=""
    [ "$spec" != "$file" ] && sample="${spec#*:}"
    if [ ! -f "$file" ]; then
        echo "skipping $file (not in this tree)" >&2
        continue
    fi
    name="$(echo "$file" | tr / _)"
    dir="$out/$name"
    rm -rf "$dir"
    mkdir -p "$dir"
    echo "== $file${sample:+ (sample $sample)}" >&2
    # The commit measured (cargo-mutants copies the tree as it starts);
    # "+dirty" if the tree had uncommitted changes.
    commit="$(git rev-parse --short HEAD)"
    git diff --quiet HEAD -- . ':!mutants' || commit="$commit+dirty"
    shard_args=()
    [ -n "$sample" ] && shard_args=(--shard "$sample")
    # exit status 2 means "some mutants survived": that is a result, not an error.
    cargo mutants --workspace --file "$file" --test-package verity-verify \
        --cargo-arg=--test=mutants_sim --baseline skip --timeout 60 --build-timeout 600 \
        --exclude-re '_for_testing|guard (self\.)?(config\.)?bugs\.' --jobs "${MUTANTS_JOBS:-1}" "${shard_args[@]}" \
        --output "$dir" --no-shuffle --colors never >&2 || true
    kept="$results/$name"
    if [ ! -d "$dir/mutants.out" ]; then
        echo "cargo-mutants left no results for $file; $kept is kept as it was" >&2
        continue
    fi
    rm -rf "$kept"
    mkdir -p "$kept"
    for list in caught.txt missed.txt timeout.txt unviable.txt; do
        if [ -f "$dir/mutants.out/$list" ]; then
            cp "$dir/mutants.out/$list" "$kept/$list"
        else
            : >"$kept/$list"
        fi
    done
    printf '%s\t%s\t%s\n' "$file" "${sample:-all}" "$commit" >"$kept/what"
done

# ---- report: every file measured so far (runs may be split over sessions) --
{
    echo "# Mutation score: the simulator as the only test"
    echo
    echo "Generated $(date -u +%Y-%m-%dT%H:%MZ) by scripts/mutants.sh. A sample k/n is"
    echo "cargo-mutants' --shard: every n-th mutant of the file."
    echo "Score = caught (timeouts count as caught) / viable; the last column leaves"
    echo "out the survivors listed in $equivalent, each with why no result can"
    echo "change (equivalent, performance only, or diagnostics text)."
    echo
    echo "| file | commit | mutants | caught | timeout | missed | unviable | score | score without listed survivors |"
    echo "|---|---|---|---|---|---|---|---|---|"
} >"$report"
survivors=""
total_caught=0
total_missed=0
total_equivalent=0
for what in "$results"/*/what; do
    [ -f "$what" ] || continue
    m="$(dirname "$what")"
    IFS=$'\t' read -r file sample commit <"$what"
    count() { if [ -f "$m/$1" ]; then grep -c . "$m/$1" || true; else echo 0; fi; }
    caught=$(count caught.txt)
    timeout=$(count timeout.txt)
    missed=$(count missed.txt)
    unviable=$(count unviable.txt)
    equivalent_here=0
    if [ -s "$m/missed.txt" ]; then
        survivors+=$'\n'"### $file"$'\n\n'
        while IFS= read -r line; do
            why=""
            if [ -f "$equivalent" ]; then
                # Entries leave out line:column, which move as the code changes.
                key="$(printf '%s' "$line" | sed -E 's/:[0-9]+:[0-9]+:/:/')"
                why="$(awk -v key="$key" '{
                    # The key may hold " | " itself (a mutant of `^` to `|`): the why follows the last one.
                    at = 0; rest = $0
                    while ((j = index(rest, " | ")) > 0) { at += j + 2; rest = substr(rest, j + 3) }
                    if (at && substr($0, 1, at - 3) == key) { print substr($0, at + 1); exit }
                }' "$equivalent")"
            fi
            if [ -n "$why" ]; then
                equivalent_here=$((equivalent_here + 1))
                survivors+="- \`$line\` — listed: $why"$'\n'
            else
                survivors+="- \`$line\`"$'\n'
            fi
        done <"$m/missed.txt"
    fi
    viable=$((caught + timeout + missed))
    score="n/a"
    honest="n/a"
    [ "$viable" -gt 0 ] && score="$(( 100 * (caught + timeout) / viable ))%"
    [ "$((viable - equivalent_here))" -gt 0 ] && honest="$(( 100 * (caught + timeout) / (viable - equivalent_here) ))%"
    echo "| $file | $commit | $sample | $caught | $timeout | $missed | $unviable | $score | $honest |" >>"$report"
    total_caught=$((total_caught + caught + timeout))
    total_missed=$((total_missed + missed))
    total_equivalent=$((total_equivalent + equivalent_here))
done
total=$((total_caught + total_missed))
{
    echo
    if [ "$total" -gt 0 ]; then
        echo "**Overall: $total_caught of $total viable mutants caught ($(( 100 * total_caught / total ))%);"
        echo "without the $total_equivalent listed survivors: $(( 100 * total_caught / (total - total_equivalent) ))%.**"
    fi
    echo
    echo "## Survivors"
    echo "${survivors:-none}"
} >>"$report"
cat "$report"
