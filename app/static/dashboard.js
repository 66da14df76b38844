// The live view: scrapes the server's own /metrics every INTERVAL_MS and shows, over the last
// interval, answers per second and the app's latency quantiles (computed from the histogram
// buckets as Prometheus's histogram_quantile does), plus the mule's queue depth now and the
// distribution of rows per batch since the server started.
"use strict";

const INTERVAL_MS = 2000;
// Inference in every protocol: /predict, TF Serving's :predict and the v2 /infer routes.
const ROUTE = (route) => route === "/predict" || route.endsWith(":predict") || route.endsWith("/infer");
const matches = (labels, want) =>
  Object.entries(want).every(([k, v]) => (typeof v === "function" ? v(labels[k] ?? "") : labels[k] === v));

function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)/);
    if (!match) continue;
    const labels = {};
    for (const pair of (match[2] || "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[pair[1]] = pair[2];
    }
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

function total(samples, name, want = {}) {
  return samples
    .filter((s) => s.name === name && matches(s.labels, want))
    .reduce((sum, s) => sum + s.value, 0);
}

// Cumulative bucket counts by upper bound, summed over every other label.
function buckets(samples, name, want = {}) {
  const byBound = new Map();
  for (const s of samples) {
    if (s.name !== name || !matches(s.labels, want)) continue;
    const bound = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
    byBound.set(bound, (byBound.get(bound) || 0) + s.value);
  }
  return [...byBound.entries()].sort((a, b) => a[0] - b[0]);
}

function quantile(q, now, before) {
  const previous = new Map(before);
  const deltas = now.map(([bound, count]) => [bound, count - (previous.get(bound) || 0)]);
  const count = deltas.length ? deltas[deltas.length - 1][1] : 0;
  if (count <= 0) return null;
  const rank = q * count;
  let lowerBound = 0, lowerCount = 0;
  for (const [bound, cumulative] of deltas) {
    if (cumulative >= rank) {
      if (bound === Infinity) return lowerBound;
      return lowerBound + (bound - lowerBound) * (rank - lowerCount) / Math.max(cumulative - lowerCount, 1e-9);
    }
    lowerBound = bound;
    lowerCount = cumulative;
  }
  return lowerBound;
}

function show(id, value, format) {
  const element = document.getElementById(id);
  element.dataset.value = value === null ? "" : String(value);
  element.textContent = value === null ? "-" : format(value);
}

function showBatchSizes(cumulative) {
  const bars = document.getElementById("batch-sizes");
  bars.replaceChildren();
  let previousCount = 0, previousBound = 0;
  const rows = cumulative.map(([bound, count]) => {
    const row = [previousBound, bound, count - previousCount];
    [previousCount, previousBound] = [count, bound];
    return row;
  }).filter(([, , batches]) => batches > 0);
  const most = Math.max(1, ...rows.map(([, , batches]) => batches));
  for (const [below, bound, batches] of rows) {
    const row = document.createElement("div");
    row.className = "bar";
    row.dataset.rows = String(bound);
    row.dataset.batches = String(batches);
    const label = document.createElement("span");
    const first = Math.floor(below) + 1;
    label.textContent = bound === Infinity ? `${first}+ rows` : bound === first ? `${bound} row${bound === 1 ? "" : "s"}` : `${first}-${bound} rows`;
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${(100 * batches) / most}%`;
    const count = document.createElement("span");
    count.textContent = String(batches);
    row.append(label, fill, count);
    bars.append(row);
  }
}

let last = null;

async function tick() {
  try {
    const response = await fetch("/metrics", { cache: "no-store" });
    const samples = parseMetrics(await response.text());
    const now = { time: performance.now(), samples };
    if (last) {
      const seconds = (now.time - last.time) / 1000;
      const answers = total(samples, "kerasrv_requests_total", { route: ROUTE })
        - total(last.samples, "kerasrv_requests_total", { route: ROUTE });
      show("rps", answers / seconds, (v) => v.toFixed(1));
      const latencyNow = buckets(samples, "kerasrv_request_duration_seconds_bucket", { route: ROUTE });
      const latencyBefore = buckets(last.samples, "kerasrv_request_duration_seconds_bucket", { route: ROUTE });
      show("p50", quantile(0.5, latencyNow, latencyBefore), (v) => `${(1000 * v).toFixed(1)} ms`);
      show("p99", quantile(0.99, latencyNow, latencyBefore), (v) => `${(1000 * v).toFixed(1)} ms`);
    }
    show("queued", total(samples, "kerasrv_queued_rows"), (v) => v.toFixed(0));
    show("state", samples.find((s) => s.name === "kerasrv_model_state" && s.value === 1)?.labels.state ?? null,
      (v) => v);
    showBatchSizes(buckets(samples, "kerasrv_batch_rows_bucket"));
    document.getElementById("updated").textContent = new Date().toLocaleTimeString();
    last = now;
  } catch (error) {
    document.getElementById("updated").textContent = `scrape failed: ${error}`;
  }
  setTimeout(tick, INTERVAL_MS);
}

tick();
