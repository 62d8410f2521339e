//! `verity bench … --html OUT`: the report as one self-contained HTML file
//! that opens in a browser without a server: the figures as a table, and
//! four plots drawn by inline JavaScript into SVG from the data embedded in
//! the page: input rate over time, the latency percentile curve (latency
//! mode), records in and out per shard (which worker carried the load; the
//! figures of the report's `per_shard`), and per shard the p99 of each step
//! (parse a chunk, apply a batch, an output buffer's wait: which step is
//! the bottleneck). Once
//! drawn, `<body data-plots="N">` holds how many plots have data and drew,
//! which CI checks in headless Chromium (`bench/ci.sh`).

use crate::bench::BenchReport;
use std::fmt::Write as _;
use verity_core::step_timing::Step;

/// Percentile curve points per half distance to 100% (as in `.hgrm`).
const CURVE_TICKS_PER_HALF_DISTANCE: u32 = 5;

/// The page for one run.
pub fn page(report: &BenchReport) -> String {
    let timeline = points(report.timeline.iter().copied());
    let curve = match &report.latency {
        Some(latency) => points(
            latency
                .histogram
                .iter_quantiles(CURVE_TICKS_PER_HALF_DISTANCE)
                .filter(|step| step.quantile_iterated_to() < 1.0)
                .map(|step| {
                    let quantile = step.quantile_iterated_to();
                    (1.0 / (1.0 - quantile), step.value_iterated_to() as f64)
                }),
        ),
        None => "[]".to_string(),
    };
    let shards = {
        let bars: Vec<String> = report
            .per_shard
            .iter()
            .map(|f| format!("[\"{}\", {}, {}]", f.shard, f.records_in, f.records_out))
            .collect();
        format!("[{}]", bars.join(","))
    };
    let steps = {
        let bars: Vec<String> = report
            .per_shard
            .iter()
            .map(|f| {
                let p99: Vec<String> = Step::ALL
                    .iter()
                    .map(|&step| f.timings.step(step).latency.quantile_us(0.99).to_string())
                    .collect();
                format!("[\"{}\", {}]", f.shard, p99.join(", "))
            })
            .collect();
        format!("[{}]", bars.join(","))
    };
    let mut rows = String::new();
    for line in report.text().lines() {
        let _ = writeln!(rows, "<p>{}</p>", escape(line));
    }
    TEMPLATE
        .replace(
            "{{title}}",
            &escape(&format!("verity bench {}", report.app.name())),
        )
        .replace("{{summary}}", &rows)
        .replace("{{json}}", &escape(&report.json()))
        .replace("{{timeline}}", &timeline)
        .replace("{{curve}}", &curve)
        .replace("{{shards}}", &shards)
        .replace("{{steps}}", &steps)
}

/// `[[x, y], …]` as a JavaScript literal.
fn points(points: impl Iterator<Item = (f64, f64)>) -> String {
    let points: Vec<String> = points.map(|(x, y)| format!("[{x:.6},{y:.3}]")).collect();
    format!("[{}]", points.join(","))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

const TEMPLATE: &str = r##"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{title}}</title>
<style>
body { font-family: sans-serif; margin: 2em; color: #222; }
svg { border: 1px solid #ccc; margin: 0.5em 0 1.5em; background: #fff; }
pre { background: #f4f4f4; padding: 1em; }
.axis { font-size: 11px; fill: #555; }
</style>
</head>
<body data-plots="0">
<h1>{{title}}</h1>
{{summary}}
<h2>Input rate over time (records/s)</h2>
<svg id="timeline" width="720" height="260"></svg>
<h2>Latency by percentile (µs; x: 1/(1-percentile), log scale)</h2>
<svg id="curve" width="720" height="260"></svg>
<h2>Records per shard (green: in, orange: out)</h2>
<svg id="shards" width="720" height="260"></svg>
<h2>p99 per step and shard (µs, power-of-two bounds; blue: parse a chunk, green: apply a batch, orange: an output buffer's wait)</h2>
<svg id="steps" width="720" height="260"></svg>
<h2>Report (JSON)</h2>
<pre>{{json}}</pre>
<script>
const timeline = {{timeline}};
const curve = {{curve}};
const shards = {{shards}};
const steps = {{steps}};
const NS = "http://www.w3.org/2000/svg";
const W = 720, H = 260, PAD = 50;
function el(svg, name, attrs, text) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  svg.appendChild(node);
  return node;
}
function axes(svg, xLabel, yMax) {
  el(svg, "line", {x1: PAD, y1: H - PAD, x2: W - 10, y2: H - PAD, stroke: "#888"});
  el(svg, "line", {x1: PAD, y1: 10, x2: PAD, y2: H - PAD, stroke: "#888"});
  el(svg, "text", {x: W / 2, y: H - 12, class: "axis"}, xLabel);
  el(svg, "text", {x: 4, y: 16, class: "axis"}, yMax.toPrecision(3));
  el(svg, "text", {x: 4, y: H - PAD, class: "axis"}, "0");
}
function line(id, data, xLabel, logX) {
  if (data.length < 2) return 0;
  const svg = document.getElementById(id);
  const xs = data.map(p => logX ? Math.log10(p[0]) : p[0]);
  const xMin = Math.min(...xs), xMax = Math.max(...xs), yMax = Math.max(...data.map(p => p[1]), 1);
  axes(svg, xLabel, yMax);
  const x = v => PAD + (W - PAD - 10) * (v - xMin) / ((xMax - xMin) || 1);
  const y = v => H - PAD - (H - PAD - 10) * v / yMax;
  const path = data.map((p, i) => (i ? "L" : "M") + x(xs[i]).toFixed(1) + "," + y(p[1]).toFixed(1)).join(" ");
  el(svg, "path", {d: path, fill: "none", stroke: "#1f77b4", "stroke-width": 2});
  return 1;
}
// data: [label, value per color...] per group of bars.
function bars(id, data, colors) {
  if (data.length < 1) return 0;
  const svg = document.getElementById(id);
  const yMax = Math.max(...data.map(b => Math.max(...b.slice(1))), 1);
  axes(svg, "shard", yMax);
  const width = (W - PAD - 10) / data.length;
  const n = colors.length;
  data.forEach((b, i) => {
    colors.forEach((fill, j) => {
      const h = (H - PAD - 10) * b[j + 1] / yMax;
      el(svg, "rect", {x: PAD + i * width + 4 + j * (width - 8) / n, y: H - PAD - h, width: (width - 8) / n, height: h, fill: fill});
    });
    el(svg, "text", {x: PAD + i * width + 8, y: H - PAD + 14, class: "axis"}, b[0]);
  });
  return 1;
}
let drawn = 0;
drawn += line("timeline", timeline, "seconds since start", false);
drawn += line("curve", curve, "1/(1-percentile): 10 = p90, 100 = p99, 1000 = p99.9", true);
drawn += bars("shards", shards, ["#2ca02c", "#ff7f0e"]);
drawn += bars("steps", steps, ["#1f77b4", "#2ca02c", "#ff7f0e"]);
document.body.dataset.plots = drawn;
</script>
</body>
</html>
"##;
