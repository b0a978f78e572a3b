// pudato-registry UI: the lineage graph, laid out by dagre and drawn as SVG.
// Every text from the registry goes in through textContent, never as markup.
(function () {
  "use strict";
  const SVG = "http://www.w3.org/2000/svg";

  function el(name, attrs, parent) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (parent) parent.appendChild(node);
    return node;
  }

  function middle(text, width) {
    if (text.length <= width) return text;
    const head = Math.floor((width - 1) / 2);
    return text.slice(0, head) + "\u2026" + text.slice(text.length - (width - 1 - head));
  }

  function query(params) {
    return new URLSearchParams(Object.entries(params).filter(([, v]) => v)).toString();
  }

  function openRuns(params) {
    const url = "/lineage/runs?" + query(params);
    if (window.htmx) {
      window.htmx.ajax("GET", url, { target: "#runs", swap: "innerHTML" });
    } else {
      window.location.href = url;
    }
  }

  function draw(box) {
    const data = JSON.parse(document.getElementById("graph-data").textContent);
    const selected = box.dataset.selected;
    const g = new dagre.graphlib.Graph({ multigraph: true });
    g.setGraph({ rankdir: "LR", nodesep: 18, ranksep: 70, marginx: 16, marginy: 16 });
    g.setDefaultEdgeLabel(() => ({}));
    // A node's colour is the last status of the runs behind it: a step's own,
    // a dataset's last writer's.
    const last = {};
    for (const e of data.edges) {
      for (const id of (e.direction === "out" ? [e.source, e.target] : [e.target])) {
        if (!last[id] || last[id].seen < e.last_seen) last[id] = { seen: e.last_seen, status: e.last_status };
      }
    }
    for (const n of data.nodes) {
      const text = n.kind === "dataset" ? n.location : n.label;
      const label = middle(text, 44);
      g.setNode(n.id, { node: n, text: text, label: label, width: Math.max(90, label.length * 7 + 24), height: 34 });
    }
    data.edges.forEach((e, i) => g.setEdge(e.source, e.target, { edge: e }, "e" + i));
    dagre.layout(g);

    const size = g.graph();
    const svg = el("svg", { width: size.width, height: size.height, viewBox: `0 0 ${size.width} ${size.height}`, role: "img" });
    const defs = el("defs", {}, svg);
    const marker = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, defs);
    el("path", { d: "M 0 0 L 10 5 L 0 10 z" }, marker);

    for (const ref of g.edges()) {
      const e = g.edge(ref).edge;
      const pts = g.edge(ref).points;
      const d = "M " + pts.map((p) => `${p.x} ${p.y}`).join(" L ");
      const group = el("g", { class: `edge s-${e.last_status}`, "data-source": e.source, "data-target": e.target }, svg);
      el("path", { class: "line", d: d, "marker-end": "url(#arrow)" }, group);
      const hit = el("path", { class: "hit", d: d }, group);
      const title = el("title", {}, hit);
      title.textContent = `${e.step} ${e.direction === "in" ? "reads" : "writes"} ${e.location}: ${e.runs} runs, last ${e.last_status}`;
      group.addEventListener("click", () => {
        const n = g.node(e.direction === "in" ? e.target : e.source).node;
        openRuns({ location: e.location, pipeline: n.pipeline, step: n.step_name });
      });
    }
    for (const id of g.nodes()) {
      const v = g.node(id);
      const n = v.node;
      const status = last[id] ? last[id].status : "unknown";
      const classes = ["node", n.kind, "s-" + status];
      if (id === selected) classes.push("selected");
      const group = el("g", { class: classes.join(" "), "data-id": id, "data-status": status, transform: `translate(${v.x - v.width / 2}, ${v.y - v.height / 2})` }, svg);
      el("rect", { width: v.width, height: v.height }, group);
      const text = el("text", { x: 12, y: v.height / 2 + 4 }, group);
      text.textContent = v.label;
      const title = el("title", {}, group);
      title.textContent = `${n.kind === "dataset" ? "dataset" : "step"} ${v.text}` + (last[id] ? ` (last ${status})` : "");
      group.addEventListener("click", () => {
        if (n.kind === "dataset") {
          openRuns({ location: n.location });
        } else {
          window.location.href = "/pipelines/" + encodeURIComponent(n.pipeline) + "?" + query({ environment: n.environment, namespace: n.namespace });
        }
      });
      group.addEventListener("dblclick", () => {
        if (n.kind === "dataset") window.location.href = "/lineage?" + query({ location: n.location });
      });
    }
    box.replaceChildren(svg);
    box.dataset.drawn = String(g.nodeCount());
  }

  // A filter left empty stays out of the URL that htmx pushes: links stay short.
  document.addEventListener("htmx:configRequest", (event) => {
    const params = event.detail.parameters;
    for (const key of Array.from(params.keys ? params.keys() : Object.keys(params))) {
      const value = params.get ? params.get(key) : params[key];
      if (value === "") {
        if (params.delete) params.delete(key); else delete params[key];
      }
    }
  });

  // A link to a step's details (#step-3) opens them.
  function openLinked() {
    const target = window.location.hash && document.getElementById(window.location.hash.slice(1));
    if (target && target.tagName === "DETAILS") target.open = true;
  }
  window.addEventListener("hashchange", openLinked);

  document.addEventListener("DOMContentLoaded", () => {
    openLinked();
    const box = document.getElementById("graph");
    if (box && window.dagre) draw(box);
  });
})();
