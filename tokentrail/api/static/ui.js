// The web view (/ui): asks the API on this origin for an alert, a token or a trace, with the
// analyst's key as a bearer token, and draws the answer with cytoscape.js (served beside this
// file). All text reaches the page through textContent, never as HTML.
"use strict";

(() => {
  const KEY_STORE = "tokentrail.key"; // sessionStorage: gone with the tab, never in a URL
  const KINDS = ["alert", "token", "trace"];
  // Kept in step with ui.css (the legend).
  const COLOUR = {
    read: "#4c78a8",
    write: "#f58518",
    admin: "#e45756",
    evidence: "#c026d3",
    evidenceDark: "#86198f",
    node: "#546e7a",
    subject: "#263238",
    muted: "#9aa5ab",
    denied: "#78909c",
  };
  const PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#b279a2", "#72b7b2", "#eeca3b", "#9d755d",
    "#ff9da6"];
  // A view draws at most this many tokens' graphs: an alert or a blast radius rarely involves
  // more, and each is one request.
  const MAX_TOKENS = 12;
  // Above this many edges, edge labels only show under the pointer (they would overlap).
  const LABELS_UP_TO = 20;

  const $ = (id) => document.getElementById(id);

  const STYLE = [
    { selector: "node", style: {
      "background-color": COLOUR.node, label: "data(label)", width: "data(size)",
      height: "data(size)", "font-size": 11, color: "#263238", "text-valign": "bottom",
      "text-margin-y": 4, "text-background-color": "#ffffff", "text-background-opacity": 0.85,
      "text-background-padding": 1, "min-zoomed-font-size": 6 } },
    { selector: "node.subject", style: {
      "background-color": COLOUR.subject, "font-weight": "bold" } },
    { selector: "edge", style: {
      width: 2, "line-color": COLOUR.muted, "target-arrow-color": COLOUR.muted,
      "target-arrow-shape": "triangle", "curve-style": "bezier", "arrow-scale": 0.9,
      label: "data(label)", "font-size": 9, color: "#37474f", "text-rotation": "autorotate",
      "text-background-color": "#ffffff", "text-background-opacity": 0.85,
      "text-background-padding": 1, "min-zoomed-font-size": 7 } },
    ...["read", "write", "admin"].map((p) => ({ selector: `edge.${p}`, style: {
      "line-color": COLOUR[p], "target-arrow-color": COLOUR[p] } })),
    { selector: "edge[colour]", style: {
      "line-color": "data(colour)", "target-arrow-color": "data(colour)" } },
    { selector: "edge.transitive", style: { "line-style": "dashed" } },
    { selector: "edge.denied", style: {
      "line-style": "dotted", "line-color": COLOUR.denied, "target-arrow-color": COLOUR.denied } },
    { selector: "edge.quiet", style: { label: "" } },
    { selector: ".faded", style: { opacity: 0.3 } },
    { selector: "edge.evidence", style: {
      "line-color": COLOUR.evidence, "target-arrow-color": COLOUR.evidence, width: 5,
      "z-index": 10, color: COLOUR.evidenceDark, "font-weight": "bold" } },
    { selector: "node.evidence", style: {
      "background-color": COLOUR.evidence, "border-width": 3,
      "border-color": COLOUR.evidenceDark, "z-index": 10 } },
    { selector: ".hover", style: { label: "data(label)", opacity: 1 } },
  ];

  class ViewError extends Error {}

  let cy = null;
  let run = 0; // the newest request; answers to older ones are dropped

  async function get(path) {
    let response;
    try {
      response = await fetch(path, { cache: "no-store", headers: {
        accept: "application/json", authorization: `Bearer ${$("key").value.trim()}` } });
    } catch (error) {
      throw new ViewError(`the API did not answer: ${error.message}`);
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      // Not JSON: the status below says what went wrong.
    }
    if (!response.ok) {
      const detail = body && body.detail !== undefined
        ? (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail))
        : response.statusText;
      const what = response.status === 401 ? "the API key was refused" : path.split("?")[0];
      throw new ViewError(`${response.status} ${what}: ${detail}`);
    }
    return body;
  }

  const graphOf = (token) => get(`/v1/tokens/${encodeURIComponent(token)}/graph?format=cytoscape`);
  const unique = (items) => [...new Set(items)];
  const number = (x) => (Number.isInteger(x) ? String(x) : x.toFixed(1));

  // Nodes and edges gathered from one or more API answers, then handed to cytoscape at once.
  class Model {
    constructor() {
      this.nodes = new Map();
      this.edges = [];
    }

    node(id) {
      if (!this.nodes.has(id)) this.nodes.set(id, { id, label: id, size: 18, classes: [] });
      return this.nodes.get(id);
    }

    // A token graph in the API's cytoscape format; `keep` picks edges, `classes` marks them.
    addTokenGraph(graph, { keep = () => true, classes = [] } = {}) {
      for (const { data } of graph.elements.edges) {
        if (!keep(data)) continue;
        this.node(data.source);
        this.node(data.target);
        const refused = data.denied >= data.calls;
        this.edges.push({
          ...data,
          id: `${data.token_id}/${data.id}`,
          label: `${data.operation} ×${data.calls}`,
          tip: [`${data.operation}  ${data.source} → ${data.target}`, `token ${data.token_id}`,
            `scope ${data.scope ?? "-"} (${data.privilege})`,
            `${data.calls} calls, ${data.denied} denied, ${data.errors} errors`,
            `${data.first_seen} … ${data.last_seen}`].join("\n"),
          classes: [data.privilege, ...(refused ? ["denied"] : []), ...classes],
        });
      }
    }

    elements() {
      const nodes = [...this.nodes.values()].map(({ classes, ...data }) => ({
        group: "nodes", data: { tip: data.tip ?? data.id, ...data }, classes }));
      const edges = this.edges.map(({ classes, ...data }) => ({ group: "edges", data, classes }));
      return [...nodes, ...edges];
    }
  }

  // Where a walk along the calls from `roots` first meets each node (roots: 0).
  function depths(roots) {
    const depth = new Map(roots.map((n) => [n.id(), 0]));
    let front = roots;
    while (front.length) {
      const next = [];
      for (const node of front) {
        for (const target of node.outgoers("node")) {
          if (depth.has(target.id())) continue;
          depth.set(target.id(), depth.get(node.id()) + 1);
          next.push(target);
        }
      }
      front = next;
    }
    return depth;
  }

  // Token views are drawn as rings around `rootSelector` (the caller the token or the evidence
  // starts from), one ring per hop; chains top-down as the tree they are.
  function draw(model, { rootSelector }) {
    cy.elements().remove();
    cy.add(model.elements());
    if (cy.edges().length > LABELS_UP_TO) cy.edges().addClass("quiet");
    let roots = rootSelector ? cy.nodes(rootSelector) : cy.collection();
    if (roots.empty()) roots = cy.nodes().filter((n) => n.indegree(false) === 0);
    const base = { padding: 30, animate: false, nodeDimensionsIncludeLabels: true };
    if (rootSelector && roots.length === 1 && cy.nodes().length <= 16) {
      const depth = depths(roots.toArray());
      const outer = Math.max(0, ...depth.values()) + 1; // what the walk never reaches
      cy.layout({ ...base, name: "concentric", minNodeSpacing: 34, startAngle: 1.5 * Math.PI,
        concentric: (n) => outer - (depth.get(n.id()) ?? outer), levelWidth: () => 1 }).run();
    } else if (rootSelector) {
      // Several callers, or too many rings to read: let the forces sort it out.
      cy.layout({ ...base, name: "cose", idealEdgeLength: () => 80, nodeRepulsion: () => 60000,
        nodeOverlap: 20, numIter: 1500, randomize: true }).run();
    } else {
      cy.layout({ ...base, name: "breadthfirst", directed: true, spacingFactor: 1.15,
        roots: roots.empty() ? undefined : roots }).run();
    }
    cy.fit(undefined, 30);
    // A graph of a few nodes would otherwise fill the panel with giant labels.
    if (cy.zoom() > 1.4) {
      cy.zoom(1.4);
      cy.center();
    }
  }

  function legend(items) {
    const box = $("legend");
    box.replaceChildren();
    for (const [classes, text] of items) {
      const span = document.createElement("span");
      const swatch = document.createElement("i");
      swatch.className = classes;
      span.append(swatch, text);
      box.append(span);
    }
  }

  function details(title, summary, facts, head, rows) {
    $("title").textContent = title;
    $("summary").textContent = summary;
    const dl = document.createElement("dl");
    for (const [name, value] of facts) {
      if (value === null || value === undefined || value === "" ||
          (Array.isArray(value) && !value.length)) continue;
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = name;
      dd.textContent = Array.isArray(value) ? value.join(", ") : String(value);
      dl.append(dt, dd);
    }
    $("facts").replaceChildren(dl);
    const table = $("table");
    table.replaceChildren();
    if (!rows.length) return;
    const tr = table.createTHead().insertRow();
    for (const [name, width] of head) {
      const th = document.createElement("th");
      th.textContent = name;
      th.className = width; // the table's layout is fixed: the header row sets the widths
      tr.append(th);
    }
    const body = table.createTBody();
    for (const { cells, className } of rows) {
      const row = body.insertRow();
      if (className) row.className = className;
      for (const cell of cells) {
        const td = row.insertCell();
        if (cell instanceof Node) td.append(cell);
        else if (typeof cell === "number") {
          td.textContent = number(cell);
          td.className = "num";
        } else td.textContent = cell ?? "";
      }
    }
  }

  // Long ids and times shortened in tables; the whole value stays in the tooltip.
  function short(text, length) {
    const span = document.createElement("span");
    span.textContent = text.length > length ? `${text.slice(0, length - 1)}…` : text;
    span.title = text;
    return span;
  }

  function link(kind, id) {
    const a = document.createElement("a");
    a.href = `#${kind}=${encodeURIComponent(id)}`;
    a.append(short(id, 12));
    return a;
  }

  // Success is the rule; anything else is said next to the operation.
  const outcome = (operation, result) =>
    (result === "success" ? operation : `${operation} (${result})`);

  // How a target was reached through another token: "derived svid-3ce4…".
  function through(contribution) {
    const span = document.createElement("span");
    span.append(`${contribution.via} `, short(contribution.via_token, 12));
    return span;
  }

  // The time of day of an ISO timestamp (the day is in the facts above it).
  function clock(ts) {
    const span = short(ts, ts.length);
    span.textContent = ts.slice(11, 19);
    return span;
  }

  const PRIVILEGE_LEGEND = [["node", "service"], ["read", "read"], ["write", "write"],
    ["admin", "admin"], ["denied", "all calls denied"]];

  async function showToken(id, current) {
    const [graph, blast] = await Promise.all([
      graphOf(id), get(`/v1/tokens/${encodeURIComponent(id)}/blast-radius`)]);
    // What the token reached through other tokens (derived ones, or downstream in its chains):
    // only the edges of those tokens that reached a target of the breakdown.
    const reachedVia = new Map();
    for (const c of blast.breakdown) {
      if (c.direct || c.via_token === id) continue;
      if (!reachedVia.has(c.via_token)) reachedVia.set(c.via_token, new Set());
      reachedVia.get(c.via_token).add(c.target);
    }
    const via = [...reachedVia.keys()].slice(0, MAX_TOKENS);
    const viaGraphs = await Promise.all(via.map(graphOf));
    if (current !== run) return;
    const model = new Model();
    model.addTokenGraph(graph);
    for (const edge of model.edges) model.node(edge.source).classes = ["subject"];
    via.forEach((token, i) => model.addTokenGraph(viaGraphs[i], {
      keep: (e) => reachedVia.get(token).has(e.target), classes: ["transitive"] }));
    for (const c of blast.breakdown) {
      const node = model.node(c.target); // a target beyond MAX_TOKENS still shows, unlinked
      node.size = 18 + Math.sqrt(c.contribution) * 2.6;
      node.tip = `${c.target}: contributes ${number(c.contribution)} (sensitivity ` +
        `${number(c.sensitivity)} × ${c.privilege} ${number(c.privilege_weight)}), ${c.via}` +
        (c.direct ? "" : ` via ${c.via_token}`);
    }
    draw(model, { rootSelector: ".subject" });
    legend([...PRIVILEGE_LEGEND, ["node subject", "the token's callers"],
      ["transitive", "through another token"]]);
    const policy = blast.policy;
    const potential = blast.potential;
    details(`token ${id}`,
      `blast radius ${number(blast.score)}: ${blast.direct_targets} direct and ` +
        `${blast.transitive_targets} transitive targets (${blast.environments.join(", ") || "-"})`,
      [["identity", graph.elements.edges[0]?.data.identity], ["home", blast.home_environment],
        ["outside policy", policy?.targets_outside], ["scopes outside", policy?.scopes_outside],
        ["unused scopes", potential?.unused_scopes]],
      [["target", "wide"], ["score", "num"], ["privilege", "mid"], ["via", "wide"]],
      blast.breakdown.map((c) => ({ cells: [c.target, c.contribution, c.privilege,
        c.direct ? "direct" : through(c)] })));
  }

  // The hops an alert rests on: its evidence events, and the steps of an evidence path
  // (credential pivots list the calls of every token along the way).
  function evidenceSteps(alert) {
    const steps = alert.events.map((e) => ({
      token_id: e.token_id, source: e.source, target: e.target, operation: e.operation }));
    for (const step of alert.evidence.path ?? []) {
      if (step.token_id && step.target && step.operation) steps.push(step);
    }
    return steps;
  }

  async function showAlert(id, current) {
    const alert = await get(`/v1/alerts/${encodeURIComponent(id)}`);
    const steps = evidenceSteps(alert);
    const tokens = unique([alert.token_id, ...steps.map((s) => s.token_id)].filter(Boolean))
      .slice(0, MAX_TOKENS);
    if (!tokens.length) throw new ViewError(`alert ${id} names no token: no graph to draw`);
    const graphs = await Promise.all(tokens.map(graphOf));
    if (current !== run) return;
    const model = new Model();
    graphs.forEach((g) => model.addTokenGraph(g));
    const onPath = (e) => steps.some((s) => s.token_id === e.token_id && s.target === e.target &&
      s.operation === e.operation && (!s.source || s.source === e.source));
    const evidence = model.edges.filter(onPath);
    for (const edge of model.edges) edge.classes.push(onPath(edge) ? "evidence" : "faded");
    const onIt = new Set(evidence.flatMap((e) => [e.source, e.target]));
    for (const node of model.nodes.values()) node.classes.push(onIt.has(node.id) ? "evidence" : "faded");
    // The rings start where the evidence does: callers on the path that nothing on it calls.
    const reached = new Set(evidence.map((e) => e.target));
    let starts = evidence.map((e) => e.source).filter((n) => !reached.has(n));
    if (!starts.length) starts = (evidence.length ? evidence : model.edges).map((e) => e.source);
    for (const id of unique(starts)) model.node(id).classes.push("start");
    draw(model, { rootSelector: ".start" });
    legend([["evidence", "evidence path"], ["node evidence", "on the path"],
      ...PRIVILEGE_LEGEND]);
    const scalars = Object.entries(alert.evidence).filter(([, v]) => v !== null &&
      (typeof v !== "object" || (Array.isArray(v) && v.every((x) => typeof x !== "object"))));
    details(alert.title,
      `${alert.severity} · ${alert.detector} · score ${number(alert.score)} · ${alert.status}` +
        ` · ${evidence.length} of ${model.edges.length} edges on the evidence path` +
        ` (${tokens.length} token${tokens.length === 1 ? "" : "s"})`,
      [["alert", alert.alert_id], ["token", alert.token_id], ["identity", alert.identity],
        ["targets", alert.targets], ["first seen", alert.first_seen],
        ["last seen", alert.last_seen], ["occurrences", alert.count], ["MITRE", alert.mitre],
        ["OWASP NHI", alert.owasp_nhi], ["assignee", alert.assignee], ["runbook", alert.runbook],
        ...scalars],
      [["time", "num"], ["hop", "wide"], ["operation", "wide"], ["token", "id"],
        ["trace", "id"]],
      alert.events.map((e) => ({ className: "evidence", cells: [clock(e.ts),
        `${e.source} → ${e.target}`, outcome(e.operation, e.outcome), link("token", e.token_id),
        e.trace_id ? link("trace", e.trace_id) : ""] })));
    $("summary").className = `sev-${alert.severity}`;
  }

  async function showTrace(id, current) {
    const chain = await get(`/v1/chains/${encodeURIComponent(id)}`);
    if (current !== run) return;
    const colour = new Map(chain.tokens.map((t, i) => [t, PALETTE[i % PALETTE.length]]));
    const model = new Model();
    for (const service of chain.services) model.node(service);
    chain.spans.forEach((s, i) => {
      model.node(s.source);
      model.node(s.target);
      model.edges.push({
        id: `s${i}`, source: s.source, target: s.target, token_id: s.token_id,
        operation: s.operation, colour: colour.get(s.token_id) ?? COLOUR.muted,
        label: s.operation,
        tip: [`${s.operation}  ${s.source} → ${s.target}`, `token ${s.token_id}`,
          `scope ${s.scope ?? "-"}, ${s.outcome}${s.status ? ` ${s.status}` : ""}`, s.ts,
          ...(s.orphan ? ["orphan: its parent span is missing"] : []),
          ...(s.cycle ? ["closes a cycle"] : [])].join("\n"),
        classes: s.outcome === "denied" ? ["denied"] : [],
      });
    });
    draw(model, {});
    legend([["node", "service"], ...chain.tokens.slice(0, PALETTE.length)
      .map((t, i) => [`c${i}`, t]), ["denied", "denied"]]);
    details(`trace ${id}`,
      `${chain.spans.length} hops, ${chain.tokens.length} tokens, ` +
        `${chain.token_switches.length} token switches, ${chain.orphans.length} orphans, ` +
        `${chain.duplicates.length} duplicates, ${chain.cycles.length} cycles`,
      [["first seen", chain.first_seen], ["last seen", chain.last_seen],
        ...chain.token_switches.map((w) => [`switch at ${w.at}`,
          `${w.from_token} → ${w.to_token} (${w.relation}${w.derived ? ", derived" : ""})`])],
      [["depth", "num"], ["hop", "wide"], ["operation", "wide"], ["token", "id"]],
      chain.spans.map((s) => ({ cells: [s.depth, `${s.source} → ${s.target}`,
        outcome(s.operation, s.outcome), link("token", s.token_id)] })));
  }

  const SHOW = { alert: showAlert, token: showToken, trace: showTrace };

  function fail(message) {
    $("error").textContent = message;
    $("error").title = message;
    document.body.dataset.state = "error";
  }

  async function show(kind, subject) {
    const current = ++run;
    $("error").textContent = "";
    $("summary").className = "";
    document.body.dataset.state = "loading";
    document.body.dataset.mode = kind;
    try {
      await SHOW[kind](subject, current);
      if (current === run) document.body.dataset.state = "ready";
    } catch (error) {
      if (current !== run) return;
      cy.elements().remove();
      $("legend").replaceChildren();
      details(`${kind} ${subject}`, "", [], [], []);
      fail(error instanceof ViewError ? error.message : `cannot draw this: ${error.message}`);
    }
  }

  function submit() {
    const key = $("key").value.trim();
    const kind = $("kind").value;
    const subject = $("subject").value.trim();
    if (!key || !subject) {
      fail(key ? "paste an id" : "enter the API key");
      (key ? $("subject") : $("key")).focus();
      return;
    }
    sessionStorage.setItem(KEY_STORE, key);
    // A link to what is shown, to share or reload; the key stays out of it.
    history.replaceState(null, "", `#${kind}=${encodeURIComponent(subject)}`);
    show(kind, subject);
  }

  function fromHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    const kind = KINDS.find((k) => params.get(k));
    if (!kind) return false;
    $("kind").value = kind;
    $("subject").value = params.get(kind);
    return true;
  }

  function tips() {
    const tip = $("tip");
    cy.on("mouseover", "node, edge", (event) => {
      const { x, y } = event.renderedPosition;
      event.target.addClass("hover");
      tip.textContent = event.target.data("tip");
      tip.style.left = `${x + 14}px`;
      tip.style.top = `${y + 14}px`;
      tip.hidden = false;
    });
    cy.on("mouseout", "node, edge", (event) => {
      event.target.removeClass("hover");
      tip.hidden = true;
    });
  }

  function start() {
    cy = cytoscape({ container: $("graph"), style: STYLE, minZoom: 0.2, maxZoom: 4 });
    window.tt_cy = cy; // for the browser tests (tests/api/test_api_webview.py)
    tips();
    $("key").value = sessionStorage.getItem(KEY_STORE) ?? "";
    $("form").addEventListener("submit", (event) => {
      event.preventDefault();
      submit();
    });
    window.addEventListener("hashchange", () => {
      if (fromHash() && $("key").value.trim()) submit();
    });
    if (fromHash()) {
      if ($("key").value.trim()) submit();
      else {
        fail(`enter the API key to show ${$("kind").value} ${$("subject").value}`);
        $("key").focus();
      }
    }
  }

  start();
})();
