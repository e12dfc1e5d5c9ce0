// The live dashboard: reads /api/metrics/dashboard (cumulative figures of all workers) every
// POLL_MS and draws rates and percentiles from the difference between two readings, as
// Prometheus' rate() and histogram_quantile() do. uPlot draws the charts.
(function () {
  "use strict";

  const POLL_MS = 2000;
  const KEEP = 180; // points per chart: 6 minutes
  const COLORS = ["#0a7cff", "#ff6a00", "#16a34a", "#c026d3", "#dc2626", "#0891b2", "#854d0e"];
  const status = document.getElementById("dash-status");
  // The prefix the page is served under, behind a proxy ("" at the root): <html data-root>.
  const root = document.documentElement.dataset.root || "";
  const charts = {};
  const times = [];
  const series = {}; // chart name → label → values (aligned with times)
  let previous = null;
  // What is drawn, for a reader's console and the browser tests (read-only use).
  window.avitoDashboard = { times: times, series: series };

  function figure(name) {
    return document.querySelector('[data-chart="' + name + '"]');
  }

  // q-quantile of the observations between two readings of a cumulative histogram.
  function quantile(q, now, before) {
    const counts = now.counts.map((c, i) => c - (before ? before.counts[i] || 0 : 0));
    const total = now.total - (before ? before.total : 0);
    if (total <= 0) return null;
    const rank = q * total;
    for (let i = 0; i < counts.length; i++) {
      if (counts[i] >= rank) {
        const lower = i ? now.le[i - 1] : 0;
        const below = i ? counts[i - 1] : 0;
        const inside = counts[i] - below;
        return inside > 0 ? lower + ((now.le[i] - lower) * (rank - below)) / inside : now.le[i];
      }
    }
    return now.le[now.le.length - 1]; // beyond the last finite bound
  }

  function push(name, label, value) {
    const chart = (series[name] = series[name] || {});
    if (!chart[label]) chart[label] = new Array(times.length - 1).fill(null);
    chart[label].push(value);
  }

  function draw(name) {
    const element = figure(name);
    const labels = Object.keys(series[name] || {});
    if (!element || !labels.length) return;
    for (const label of labels) {
      while (series[name][label].length < times.length) series[name][label].push(null);
      series[name][label] = series[name][label].slice(-times.length);
    }
    const data = [times.slice()].concat(labels.map((l) => series[name][l]));
    const existing = charts[name];
    if (existing && existing.labels.join() === labels.join()) {
      existing.plot.setData(data);
      return;
    }
    if (existing) existing.plot.destroy();
    const options = {
      width: Math.max(280, element.clientWidth - 8),
      height: 200,
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.15 : 1] } },
      series: [{}].concat(labels.map((label, i) => ({ label: label, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: false }))),
      axes: [{}, { size: 60 }],
    };
    charts[name] = { labels: labels, plot: new uPlot(options, data, element) };
  }

  function record(now) {
    if (previous) {
      const dt = now.time - previous.time;
      if (dt > 0) {
        times.push(now.time);
        if (times.length > KEEP) times.shift();
        const rate = (a, b) => Math.max(0, (a - b) / dt);
        push("rps", "запросов/с", rate(now.requests, previous.requests));
        push("tps", "токенов/с", rate(now.tokens, previous.tokens));
        push("latency", "p50", quantile(0.5, now.latency, previous.latency));
        push("latency", "p95", quantile(0.95, now.latency, previous.latency));
        push("ttft", "p50", quantile(0.5, now.ttft, previous.ttft));
        push("ttft", "p95", quantile(0.95, now.ttft, previous.ttft));
        push("queue", "выполняются", now.running);
        push("queue", "ждут", now.waiting);
        if (now.batch) {
          push("batch", "ждут", now.batch.waiting);
          push("batch", "выполняются", now.batch.running);
          push("batchrate", "готово/с", rate(now.batch.done, (previous.batch || now.batch).done));
          push("batchrate", "ошибок/с", rate(now.batch.failed, (previous.batch || now.batch).failed));
        }
        if (Object.keys(now.errors).length && series.errors) delete series.errors["ошибок нет"];
        const codes = new Set(Object.keys(now.errors).concat(Object.keys(series.errors || {})));
        for (const code of codes) {
          push("errors", code, rate(now.errors[code] || 0, previous.errors[code] || 0));
        }
        if (!codes.size) push("errors", "ошибок нет", 0);
        if (now.gpu.available) {
          figure("gpu").hidden = false;
          push("gpu", "загрузка, %", now.gpu.utilization_percent);
          push("gpu", "память, GB", now.gpu.memory_used_gb);
        }
        for (const name of ["rps", "latency", "ttft", "tps", "queue", "batch", "batchrate", "errors", "gpu"]) draw(name);
      }
    }
    previous = now;
  }

  async function poll() {
    try {
      const response = await fetch(root + "/api/metrics/dashboard", { cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      record(await response.json());
      status.textContent = "Обновлено " + new Date().toLocaleTimeString("ru-RU") + " · все воркеры · каждые " + POLL_MS / 1000 + " с";
      status.className = "status";
    } catch (error) {
      status.textContent = "Нет данных: " + error.message + ". Повтор через " + POLL_MS / 1000 + " с.";
      status.className = "status error";
    }
    setTimeout(poll, POLL_MS);
  }

  window.addEventListener("resize", () => {
    for (const [name, chart] of Object.entries(charts)) {
      chart.plot.setSize({ width: Math.max(280, figure(name).clientWidth - 8), height: 200 });
    }
  });
  poll();
})();
