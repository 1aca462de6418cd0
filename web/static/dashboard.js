// One snapshot per page session, then every change over one SSE stream.
"use strict";
const rows = new Map();
let lastSeq = 0;
const pending = new Map();

function render() {
  const body = document.querySelector("#containers tbody");
  body.replaceChildren();
  for (const c of rows.values()) {
    const tr = document.createElement("tr");
    const state = c.running ? "running" : c.failed ? "failed" : "stopped";
    for (const text of [c.name, state, pending.get(c.name) || c.pending || "", String(c.port)]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    tr.className = state;
    body.appendChild(tr);
  }
}

function renderTombstones(list) {
  const ul = document.getElementById("tombstones");
  ul.replaceChildren();
  for (const t of list) {
    const li = document.createElement("li");
    li.textContent = `${t.name} (${t.state_bytes} bytes)`;
    ul.appendChild(li);
  }
}

function apply(ev) {
  if (ev.seq && ev.seq <= lastSeq) return;
  if (ev.seq) lastSeq = ev.seq;
  switch (ev.kind) {
    case "container_state_changed": rows.set(ev.container.name, ev.container); break;
    case "container_removed": rows.delete(ev.name); break;
    case "transient_set": pending.set(ev.name, ev.transient_kind); break;
    case "transient_cleared": pending.delete(ev.name); break;
    case "tombstones_changed": renderTombstones(ev.tombstones); break;
    case "refetch": location.reload(); return;
  }
  render();
}

async function boot() {
  const buffered = [];
  let ready = false;
  const es = new EventSource("/api/dashboard/stream");
  es.onmessage = (m) => { const ev = JSON.parse(m.data); ready ? apply(ev) : buffered.push(ev); };
  es.onopen = () => { document.getElementById("status").textContent = "live"; };
  es.onerror = () => { document.getElementById("status").textContent = "reconnecting…"; };
  const snap = await (await fetch("/api/state")).json();
  lastSeq = snap.seq;
  for (const c of snap.containers) rows.set(c.name, c);
  for (const [n, t] of Object.entries(snap.transients)) pending.set(n, t.transient_kind);
  renderTombstones(snap.tombstones);
  ready = true;
  buffered.forEach(apply);
  render();
}
boot();
