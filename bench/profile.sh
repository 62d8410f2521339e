#!/usr/bin/env bash
# Instructions per input record, by phase, for verity at W=1 and the naive
# loop, from callgrind (instruction counts: noise-free on a shared machine,
# unlike timings). See bench/PROFILE.md for what the phases mean.
#
#   bench/profile.sh            # 2M events per app, release build
#   EVENTS=500000 APPS=wordcount bench/profile.sh
#
# Needs valgrind (Debian: apt-get install valgrind) and python3. Writes the
# callgrind files and the table under target/bench/profile/.
set -euo pipefail
cd "$(dirname "$0")/.."

events=${EVENTS:-2000000}
apps=${APPS:-"wordcount market-spread seq-window"}
seed=${SEED:-42}
bin=${CARGO_TARGET_DIR:-target}/release
out=target/bench/profile
mkdir -p "$out"
command -v valgrind >/dev/null || {
    echo "profile.sh: needs valgrind (apt-get install valgrind)" >&2
    exit 2
}
cargo build --release --quiet -p verity -p verity-bench

for app in $apps; do
    input=$out/$app-$events.txt
    [ -s "$input" ] || "$bin/verity-compare" generate "$app" --events "$events" --seed "$seed" --output "$input" >/dev/null
    valgrind --tool=callgrind --callgrind-out-file="$out/$app-verity.cg" \
        "$bin/verity" run "$app" --input "$input" --output null --workers 1 >"$out/$app-verity.log" 2>&1
    valgrind --tool=callgrind --callgrind-out-file="$out/$app-naive.cg" \
        "$bin/verity-compare" naive "$app" --input "$input" >"$out/$app-naive.log" 2>&1
done

python3 - "$out" "$events" $apps <<'EOF' | tee "$out/breakdown.md"
import os, re, subprocess, sys

out, events, apps = sys.argv[1], int(sys.argv[2]), sys.argv[3:]

def inclusive(path):
    """function name -> inclusive instructions (real functions only)."""
    # Run from / : inside the repository, callgrind_annotate finds the
    # sources by their relative paths and its inclusive listing changes.
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", os.path.abspath(path)],
                          capture_output=True, text=True, check=True, cwd="/").stdout
    costs, total = {}, 0
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S.*?):(.+?) \[(.+)\]$", line)
        if m:
            cost, fn = int(m.group(1).replace(",", "")), m.group(3)
            costs[fn] = max(costs.get(fn, 0), cost)
        m = re.match(r"\s*([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", line)
        if m:
            total = int(m.group(1).replace(",", ""))
    return costs, total

# The keyed step's closure of each app.
STEPS = {
    "wordcount": "verity_apps::wordcount::dataflow::{{closure}}",
    "market-spread": "verity_apps::market_spread::dataflow_with_bugs::{{closure}}",
    "seq-window": "verity_apps::seq_window::dataflow::{{closure}}",
}

# Where each app's output is formatted, when `Output::emit` is inlined.
FORMATS = {
    "wordcount": "verity_apps::wordcount::format_count",
    "market-spread": "verity_apps::market_spread::format_output",
    "seq-window": "verity_apps::seq_window::dataflow::{{closure}}'2",
}

# A source's compiled chain (flow.rs: line split, the app's first steps,
# key, route; one call per chunk) and its per-line part. The apply of a
# batch is inlined into `progress_source`: the shard's cost beside the chain.
CHAIN = "verity_core::flow::Stream<T,C>::key_split::{{closure}}"
PER_LINE = CHAIN + "::{{closure}}"

def first(costs, *patterns):
    """The costliest function whose name contains every pattern (0 if none)."""
    hits = [c for fn, c in costs.items() if all(p in fn for p in patterns)]
    return max(hits, default=0)

print(f"instructions per input event (callgrind, {events} events, W=1; all threads)\n")
print("| phase | " + " | ".join(apps) + " |")
print("|---|" + "--:|" * len(apps))
rows = {}
for app in apps:
    v, v_total = inclusive(f"{out}/{app}-verity.cg")
    n, n_total = inclusive(f"{out}/{app}-naive.cg")
    chain = v.get(CHAIN, 0)
    per_line = v.get(PER_LINE, 0)
    state = first(v, "KeyedStore<K,S>::state_mut")
    emit = max(first(v, "flow::Output<O>::emit"), v.get(FORMATS[app], 0))
    step = v.get(STEPS[app], 0)
    shard = first(v, "ShardCore<K,V,S,O>::progress_source")
    reader = first(v, "reader_thread::pump")
    output = first(v, "output_thread::write_outputs")
    phases = {
        "read and chunk (reader thread)": reader,
        "line split (the chain's loop over a chunk's lines)": chain - per_line,
        "parse, key, hash and route (the chain's per-line code)": per_line,
        "keyed state lookup": state,
        "the app's step": step - emit,
        "output formatting": emit,
        "apply overhead (batch loop, output handle; dead letters, batches)": shard - chain - step - state,
        "output write (output thread; none with the null sink)": output,
        "rest (queues, batches, start-up)": v_total - shard - reader - output,
        "**verity total**": v_total,
        "**naive loop total**": n_total,
    }
    for name, cost in phases.items():
        rows.setdefault(name, []).append(f"{cost / events:.0f}")
for name, cells in rows.items():
    print(f"| {name} | " + " | ".join(cells) + " |")
EOF
