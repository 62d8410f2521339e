#!/usr/bin/env bash
# verity beside its peers, on the same generated input and the same machine:
# verity (the release binary, whole process, file read included), the naive
# single-thread loop over the same file (verity-compare naive), the same apps
# on timely-dataflow (verity-timely), and the physical limits (memcpy of a
# buffer the input's size, raw TCP loopback). Runs take turns (A B C A B C
# ...) so a noisy spell on the shared machine hits every runner alike; each
# figure is the median of REPEAT runs. Peak RSS is measured per run.
#
# Prints a table, writes target/bench/compare.json and compare.md. A slow
# figure never fails it; a run that fails or whose output count differs from
# the naive loop's is marked and makes the exit status 1, after the reports.
#
# Environment (defaults are issue 12's workloads; scale down with EVENTS):
#   EVENTS=10000000       events per workload (wordcount: words; others: lines)
#   WORDCOUNT_EVENTS, MARKET_SPREAD_EVENTS, SEQ_WINDOW_EVENTS   per app, over EVENTS
#   APPS="wordcount market-spread seq-window"   WORKERS="1 2"   REPEAT=3   SEED=42
#   TCP_MEGABYTES=256     loopback transfer size (bounded by verity-compare)
#   RUN_TIMEOUT_S=900     a run taking longer is killed and marked failed
set -uo pipefail
cd "$(dirname "$0")/.."

events=${EVENTS:-10000000}
apps=${APPS:-"wordcount market-spread seq-window"}
workers_list=${WORKERS:-"1 2"}
repeat=${REPEAT:-3}
seed=${SEED:-42}
tcp_megabytes=${TCP_MEGABYTES:-256}
run_timeout_s=${RUN_TIMEOUT_S:-900}
for number in "$events" "$repeat" "$tcp_megabytes" "$run_timeout_s" $workers_list; do
    case $number in
        '' | *[!0-9]* | 0) echo "bench-compare: EVENTS, REPEAT, TCP_MEGABYTES, RUN_TIMEOUT_S and WORKERS take positive integers, not '$number'" >&2; exit 2 ;;
    esac
done
bin=${CARGO_TARGET_DIR:-target}/release
out=target/bench
inputs=$out/compare-inputs
mkdir -p "$out" "$inputs"
results=$out/compare-runs.tsv
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

echo "== building (release): verity, verity-bench, verity-bench-timely"
cargo build --release --quiet -p verity -p verity-bench -p verity-bench-timely || {
    echo "bench-compare: the release build failed" >&2
    exit 1
}

# Peak RSS comes from GNU time (Debian's `time` package); without it, and
# when it cannot be installed, the RSS column says n/a.
if [ ! -x /usr/bin/time ]; then
    as_root=()
    [ "$(id -u)" -ne 0 ] && as_root=(sudo -n)
    echo "installing Debian's time package for peak RSS..."
    "${as_root[@]}" apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq time >/dev/null 2>&1 ||
        echo "could not install /usr/bin/time: no peak RSS" >&2
fi

events_for() {
    local var
    var=$(echo "$1" | tr 'a-z-' 'A-Z_')_EVENTS
    echo "${!var:-$events}"
}

# run_timed LOG COMMAND...: runs it, sets `seconds`, `rss_kib` (or n/a) and `status`.
run_timed() {
    local log=$1
    shift
    local rss_file=$scratch/rss start end
    rm -f "$rss_file"
    start=$EPOCHREALTIME
    if [ -x /usr/bin/time ]; then
        timeout "$run_timeout_s" /usr/bin/time -f %M -o "$rss_file" "$@" >"$log" 2>&1
    else
        timeout "$run_timeout_s" "$@" >"$log" 2>&1
    fi
    status=$?
    end=$EPOCHREALTIME
    seconds=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.6f", b - a }')
    rss_kib=$( [ -s "$rss_file" ] && tail -n 1 "$rss_file" | tr -dc '0-9')
    rss_kib=${rss_kib:-n/a}
}

# outputs_of RUNNER LOG: the output line count the runner printed.
outputs_of() {
    case $1 in
        verity*) sed -n 's/.* \([0-9][0-9]*\) out, .*/\1/p' "$2" | tail -n 1 ;;
        memcpy | tcp*) echo - ;;
        *) sed -n 's/^outputs \([0-9][0-9]*\)$/\1/p' "$2" | tail -n 1 ;;
    esac
}

# The machine is shared: the load around the runs says how quiet it was.
load_before=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a)
printf 'app\trunner\tworkers\tround\tseconds\trss_kib\toutputs\tstatus\n' >"$results"
meta=$scratch/meta.tsv
: >"$meta"
failed=0

for app in $apps; do
    app_events=$(events_for "$app")
    input=$inputs/$app-$app_events-$seed.txt
    if [ ! -s "$input" ]; then
        echo "== generating $app: $app_events events (seed $seed) into $input"
        "$bin/verity-compare" generate "$app" --events "$app_events" --seed "$seed" --output "$input.tmp" >/dev/null &&
            mv "$input.tmp" "$input" || {
            echo "bench-compare: cannot generate $app input" >&2
            exit 1
        }
    fi
    input_bytes=$(stat -c %s "$input")
    tcp_bytes=$((tcp_megabytes << 20))
    [ "$input_bytes" -lt "$tcp_bytes" ] && tcp_bytes=$input_bytes
    printf '%s\t%s\t%s\n' "$app" "$app_events" "$input_bytes" >>"$meta"

    # Runner name, cores it may use, command.
    runners=("naive|1|$bin/verity-compare naive $app --input $input")
    for w in $workers_list; do
        runners+=("verity|$w|$bin/verity run $app --input $input --output null --workers $w")
    done
    for w in $workers_list; do
        runners+=("timely|$w|$bin/verity-timely $app --input $input -w $w")
    done
    runners+=("memcpy|1|$bin/verity-compare memcpy --bytes $input_bytes --repeat 1")
    runners+=("tcp-loopback|2|$bin/verity-compare tcp --bytes $tcp_bytes")

    echo "== $app: $app_events events, $input_bytes bytes of input, $repeat rounds of ${#runners[@]} runners in turns"
    for round in $(seq 1 "$repeat"); do
        for runner in "${runners[@]}"; do
            IFS='|' read -r name w command <<<"$runner"
            log=$scratch/run.log
            # shellcheck disable=SC2086 # the command is a word list by design
            run_timed "$log" $command
            # The physical limits time their own transfer, without process
            # start, scaled to the input's size: the time to move the input.
            case $name in
                memcpy | tcp-loopback)
                    seconds=$(awk -v size="$input_bytes" '/^bytes / { b = $2 } /^seconds / { s = $2 }
                        END { if (b > 0 && s != "") printf "%.6f", s * size / b }' "$log")
                    ;;
            esac
            outputs=$(outputs_of "$name" "$log")
            state=ok
            if [ "$status" -ne 0 ] || [ -z "$seconds" ]; then
                state="failed($status)"
                failed=1
                echo "   $name W=$w round $round failed (exit $status):" >&2
                tail -n 5 "$log" >&2
                seconds=${seconds:-0}
            fi
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$app" "$name" "$w" "$round" "$seconds" \
                "$rss_kib" "${outputs:--}" "$state" >>"$results"
            printf '   round %d  %-13s W=%s  %8.3f s  %s KiB peak RSS  %s outputs\n' "$round" "$name" "$w" \
                "$seconds" "$rss_kib" "${outputs:--}"
        done
    done
done

# Medians, ratios and the three renderings, from the runs.
load="$load_before -> $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a)"
awk -F'\t' -v meta="$meta" -v md="$out/compare.md" -v json="$out/compare.json" \
    -v repeat="$repeat" -v host="$(uname -n)" -v cores="$(nproc)" -v load="$load" '
function median(list,    n, v, i, j, t) {
    n = split(list, v, " ")
    for (i = 2; i <= n; i++) for (j = i; j > 1 && v[j - 1] + 0 > v[j] + 0; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
    return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
}
BEGIN {
    while ((getline line < meta) > 0) {
        split(line, f, "\t")
        events[f[1]] = f[2]; bytes[f[1]] = f[3]
    }
}
FNR == 1 { next }
{
    key = $1 SUBSEP $2 SUBSEP $3
    if (!(key in seen)) { seen[key] = 1; order[++rows] = key }
    if ($8 == "ok") times[key] = times[key] " " $5
    else bad[key] = 1
    if ($6 != "n/a" && $6 + 0 > rss[key] + 0) rss[key] = $6
    if ($7 != "-") { if ((key in outs) && outs[key] != $7) mixed[key] = 1; outs[key] = $7 }
}
END {
    for (r = 1; r <= rows; r++) {
        split(order[r], k, SUBSEP)
        med[order[r]] = (times[order[r]] == "") ? 0 : median(times[order[r]])
    }
    printf "# verity vs peers: median of %d runs taken in turns, whole process (file read included), null sink; %s, %d cores, load average %s\n", repeat, host, cores, load > md
    print "" > md
    print "| app | runner | W | seconds | events/s | events/s per core | peak RSS MiB | outputs | vs naive | vs timely (same W) |" > md
    print "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|" > md
    printf "{\n  \"repeat\": %d,\n  \"host\": \"%s\",\n  \"cores\": %d,\n  \"load_average\": \"%s\",\n  \"rows\": [", repeat, host, cores, load > json
    printf "load average (1, 5, 15 min) before -> after the runs: %s\n", load
    printf "%-14s %-13s %2s %9s %13s %13s %9s %10s %9s %9s\n", "app", "runner", "W", "seconds", "events/s", "per core", "RSS MiB", "outputs", "vs naive", "vs timely"
    sep = ""
    for (r = 1; r <= rows; r++) {
        key = order[r]; split(key, k, SUBSEP); app = k[1]; runner = k[2]; w = k[3]
        s = med[key]
        naive = med[app SUBSEP "naive" SUBSEP 1]
        timely = med[app SUBSEP "timely" SUBSEP w]
        rate = s > 0 ? events[app] / s : 0
        vs_naive = (s > 0 && naive > 0 && runner != "naive") ? sprintf("%.2f", naive / s) : "-"
        vs_timely = (s > 0 && timely > 0 && runner == "verity") ? sprintf("%.2f", timely / s) : "-"
        rss_mib = (key in rss) ? sprintf("%.1f", rss[key] / 1024) : "n/a"
        out_count = (key in outs) ? outs[key] : "-"
        naive_out = outs[app SUBSEP "naive" SUBSEP 1]
        flag = ""
        if (key in bad) flag = " FAILED"
        if (out_count != "-" && naive_out != "" && out_count != naive_out || (key in mixed)) flag = flag " OUTPUT-MISMATCH"
        label = runner flag
        per_core = w > 0 ? rate / w : 0
        printf "%-14s %-13s %2s %9.4f %13.0f %13.0f %9s %10s %9s %9s\n", app, label, w, s, rate, per_core, rss_mib, out_count, vs_naive, vs_timely
        printf "| %s | %s | %s | %.4f | %.0f | %.0f | %s | %s | %s | %s |\n", app, label, w, s, rate, per_core, rss_mib, out_count, vs_naive, vs_timely > md
        runs = times[key]; sub(/^ /, "", runs); gsub(/ /, ", ", runs)
        printf "%s\n    {\"app\": \"%s\", \"runner\": \"%s\", \"workers\": %d, \"events\": %d, \"input_bytes\": %d, \"seconds\": %.6f, \"runs_seconds\": [%s], \"events_per_s\": %.0f, \"events_per_s_per_core\": %.0f, \"peak_rss_mib\": %s, \"outputs\": %s, \"ratio_vs_naive\": %s, \"ratio_vs_timely\": %s, \"ok\": %s}", \
            sep, app, runner, w, events[app], bytes[app], s, runs, rate, per_core, \
            rss_mib == "n/a" ? "null" : rss_mib, out_count == "-" ? "null" : out_count, \
            vs_naive == "-" ? "null" : vs_naive, vs_timely == "-" ? "null" : vs_timely, flag == "" ? "true" : "false" > json
        sep = ","
        if (flag != "") status = 1
    }
    print "\n  ]\n}" > json
    print "" > md
    print "Ratios are of median seconds (higher: verity or the runner is faster than the naive loop / timely at the same W). memcpy and tcp-loopback rows are physical limits: their seconds are the transfer alone, without process start (memcpy of an input-sized buffer; loopback of min(input, TCP_MEGABYTES) over one connection), scaled to the input size: the time the input takes to move at that bandwidth, so their events/s is a ceiling no engine reading that input reaches." > md
    exit status
}' "$results"
summary_status=$?
echo "reports: $out/compare.md, $out/compare.json (runs: $results)"
if [ "$failed" -ne 0 ] || [ "$summary_status" -ne 0 ]; then
    echo "bench-compare: some runs failed or emitted a different output count than the naive loop (marked above)" >&2
    exit 1
fi
