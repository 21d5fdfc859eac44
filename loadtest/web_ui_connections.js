// The chart of Locust's "Connections" tab (loadtest/web_ui_connections.py): PostgreSQL
// server connections of the app role and PgBouncer's waiting clients against the bound,
// drawn as SVG from ./connections/data every two seconds. Locust's UI draws the tab's
// table; this script puts the chart above it whenever that table is on the page (the UI
// re-creates the table each time the tab is opened, and the chart goes with it).
(() => {
  "use strict";
  const EVERY_MS = 2000;
  const SVG = "http://www.w3.org/2000/svg";
  const WIDTH = 800;
  const HEIGHT = 260;
  const MARGIN = { left: 40, right: 16, top: 34, bottom: 26 };
  const SERIES = [
    { key: "server_connections", label: "PostgreSQL server connections", color: "#d62728", width: 2.5 },
    { key: "clients_waiting", label: "PgBouncer clients waiting", color: "#9467bd", width: 2, dash: "5 3" },
  ];
  let latest = null;

  function table() {
    const boundHeader = document.querySelector('th[data-sortkey="bound"]');
    return boundHeader ? boundHeader.closest("table") : null;
  }

  function chart() {
    return document.getElementById("connections-chart");
  }

  function place() {
    const shown = table();
    if (!shown || chart()) return;
    const box = document.createElement("div");
    box.id = "connections-chart";
    box.style.padding = "8px 0";
    shown.before(box);
    draw(box);
  }

  function element(name, attributes, text) {
    const node = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function draw(box) {
    if (!latest) {
      box.textContent = "Waiting for the connection monitor's first reading…";
      return;
    }
    const { bound, readings, window_s: windowS, now } = latest;
    const end = readings.length ? readings[readings.length - 1].time : Date.now() / 1000;
    // The time since the first reading, so a short run fills the chart; at most the window kept.
    const span = Math.min(windowS, Math.max(30, readings.length ? end - readings[0].time : 0));
    const values = readings.flatMap((r) => SERIES.map((s) => r[s.key] ?? 0));
    const top = Math.max(4, (bound ?? 0) + 2, ...values);
    const x = (t) => MARGIN.left + ((t - (end - span)) / span) * (WIDTH - MARGIN.left - MARGIN.right);
    const y = (v) => HEIGHT - MARGIN.bottom - (v / top) * (HEIGHT - MARGIN.top - MARGIN.bottom);

    const svg = element("svg", {
      viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
      width: "100%",
      role: "img",
      "aria-label": "Server connections and waiting clients against the bound",
      style: "max-width: 900px; font: 12px sans-serif; color: inherit",
    });
    const axisY = HEIGHT - MARGIN.bottom;
    svg.append(
      element("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: axisY, y2: axisY, stroke: "currentColor" }),
      element("line", { x1: MARGIN.left, x2: MARGIN.left, y1: MARGIN.top, y2: axisY, stroke: "currentColor" }),
      element("text", { x: MARGIN.left, y: HEIGHT - 6, fill: "currentColor" }, `${Math.round(span)} s ago`),
      element("text", { x: WIDTH - MARGIN.right, y: HEIGHT - 6, fill: "currentColor", "text-anchor": "end" }, "now"),
    );
    for (const tick of [0, Math.round(top / 2), top]) {
      svg.append(element("text", { x: MARGIN.left - 6, y: y(tick) + 4, fill: "currentColor", "text-anchor": "end" }, tick));
    }
    if (bound !== null) {
      svg.append(
        element("line", {
          x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y(bound), y2: y(bound),
          stroke: "currentColor", "stroke-dasharray": "8 3 2 3", "data-series": "bound",
        }),
        element("text", {
          x: WIDTH - MARGIN.right, y: y(bound) - 4, fill: "currentColor", "text-anchor": "end", "data-label": "bound",
        }, `bound ${bound}`),
      );
    }
    for (const series of SERIES) {
      // A missing reading breaks the line rather than drawing a zero.
      const runs = [[]];
      for (const r of readings) {
        if (r[series.key] === null) runs.push([]);
        else runs[runs.length - 1].push(`${x(r.time).toFixed(1)},${y(r[series.key]).toFixed(1)}`);
      }
      for (const points of runs.filter((run) => run.length)) {
        svg.append(element("polyline", {
          points: points.join(" "), fill: "none", stroke: series.color, "stroke-width": series.width,
          "stroke-dasharray": series.dash ?? "none", "data-series": series.key,
        }));
      }
    }
    let legendX = MARGIN.left;
    for (const series of SERIES) {
      const value = now[series.key] ?? "no reading";
      const label = element("text", { x: legendX, y: 16, fill: series.color, "data-legend": series.key }, `${series.label}: ${value}`);
      svg.append(label);
      legendX += 320;
    }
    box.replaceChildren(svg);
  }

  async function refresh() {
    try {
      const response = await fetch(`./connections/data`, { cache: "no-store" });
      if (response.ok) latest = await response.json();
    } catch (error) {
      // Locust is gone or restarting: keep the last chart, try again at the next tick.
    }
    const box = chart();
    if (box) draw(box);
  }

  new MutationObserver(place).observe(document.body, { childList: true, subtree: true });
  refresh();
  setInterval(refresh, EVERY_MS);
})();
