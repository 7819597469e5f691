"""A small page that draws a token's call graph or a trace's chain (no key needed to load it;
the page asks for one and sends it as a bearer token)."""

from __future__ import annotations

from typing import Final

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["ui"])

PAGE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tokentrail</title>
<meta http-equiv="Content-Security-Policy"
 content="default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
input,select,button{font:inherit;padding:.3em}
svg{border:1px solid #ccc;width:100%;height:70vh;background:#fafafa}
.node circle{fill:#4a7fd4}.node text{font-size:12px}
line{stroke:#999;stroke-width:1.5}.admin{stroke:#d33}.write{stroke:#e90}
#msg{color:#a00}
</style></head><body>
<h1>tokentrail</h1>
<form id="f">
 <input id="key" type="password" placeholder="API key" size="30">
 <select id="kind"><option value="token">token blast radius</option>
 <option value="chain">trace chain</option></select>
 <input id="subject" placeholder="token id or trace id" size="40">
 <button>show</button> <span id="msg"></span>
</form>
<p id="summary"></p>
<svg id="g" viewBox="0 0 1000 700"></svg>
<script>
const $ = (id) => document.getElementById(id);
$("key").value = sessionStorage.getItem("tt-key") || "";
function draw(nodes, edges) {
  const svg = $("g"); svg.replaceChildren();
  const ns = "http://www.w3.org/2000/svg", pos = {};
  nodes.forEach((n, i) => {
    const a = 2 * Math.PI * i / Math.max(nodes.length, 1);
    pos[n] = [500 + 300 * Math.cos(a), 350 + 280 * Math.sin(a)];
  });
  for (const e of edges) {
    const l = document.createElementNS(ns, "line");
    const [x1, y1] = pos[e.source], [x2, y2] = pos[e.target];
    l.setAttribute("x1", x1); l.setAttribute("y1", y1);
    l.setAttribute("x2", x2); l.setAttribute("y2", y2);
    l.setAttribute("class", e.privilege || "");
    const t = document.createElementNS(ns, "title"); t.textContent = e.label; l.append(t);
    svg.append(l);
  }
  for (const n of nodes) {
    const g = document.createElementNS(ns, "g"); g.setAttribute("class", "node");
    const c = document.createElementNS(ns, "circle");
    c.setAttribute("cx", pos[n][0]); c.setAttribute("cy", pos[n][1]); c.setAttribute("r", 8);
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", pos[n][0] + 10); t.setAttribute("y", pos[n][1] + 4);
    t.textContent = n; g.append(c, t); svg.append(g);
  }
}
async function get(path) {
  const r = await fetch(path, {headers: {authorization: "Bearer " + $("key").value}});
  const body = await r.json();
  if (!r.ok) throw new Error(body.detail || r.statusText);
  return body;
}
$("f").onsubmit = async (ev) => {
  ev.preventDefault(); $("msg").textContent = "";
  sessionStorage.setItem("tt-key", $("key").value);
  const id = encodeURIComponent($("subject").value.trim());
  try {
    if ($("kind").value === "token") {
      const g = await get(`/v1/tokens/${id}/graph?format=cytoscape`);
      const b = await get(`/v1/tokens/${id}/blast-radius`);
      $("summary").textContent = `blast radius ${b.score}: ${b.direct_targets} direct, ` +
        `${b.transitive_targets} transitive targets`;
      draw(g.elements.nodes.map((n) => n.data.id), g.elements.edges.map((e) => ({
        source: e.data.source, target: e.data.target, privilege: e.data.privilege,
        label: `${e.data.operation} x${e.data.calls}`})));
    } else {
      const c = await get(`/v1/chains/${id}`);
      $("summary").textContent = `${c.spans.length} hops, ${c.tokens.length} tokens, ` +
        `${c.token_switches.length} token switches`;
      draw(c.services, c.spans.map((s) => ({source: s.source, target: s.target,
        label: `${s.operation} ${s.token_id} ${s.outcome}`})));
    }
  } catch (e) { $("msg").textContent = e.message; }
};
</script></body></html>
"""


@router.get("/ui", response_class=HTMLResponse, include_in_schema=False)
def ui() -> HTMLResponse:
    return HTMLResponse(PAGE)
