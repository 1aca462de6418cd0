// hive-c0re dashboard: one /api/state snapshot per page session, then every change over one SSE
// stream. No polling: a dropped stream reconnects by itself (EventSource sends Last-Event-ID); only
// a `refetch` frame loads the snapshot again, into the same stores. Agents are untrusted: every
// piece of data reaches the DOM through textContent or an attribute, never through innerHTML.
"use strict";

// --- stores -------------------------------------------------------------------------------------

const S = {
  seq: 0,
  csrf: null,
  containers: new Map(), // name -> ContainerView
  transients: new Map(), // name -> {transient_kind, since_unix}
  tombstones: [],
  approvals: new Map(), // id -> approval row
  showHistory: false,
  jobs: [],
  metaInputs: [],
  metaRunning: false,
  anyStale: false,
  messages: new Map(), // id -> {id, from, to, body, at, delivered}
  inbox: new Map(),
  warnings: [],
  actors: new Map(), // name -> ChildStatus
  openLogs: new Set(), // names whose log viewer is open
  logText: new Map(), // name -> lines
  openDiffs: new Set(), // approval ids whose diff is folded away
  purgeChecked: new Set(), // names whose destroy form has "purge" ticked (survives row re-renders)
  openTexts: new Set(), // keys ("job:12", "approval:3") of long errors/notes the operator expanded
  loginDraft: new Map(), // name -> the key being typed into its row's login field (survives re-renders)
  questions: new Map(), // id -> open question (to the operator or between agents)
  questionDraft: new Map(), // id -> the free-text answer being typed (survives re-renders)
  reminders: new Map(), // id -> pending Reminder (QU3U3D R3M1ND3RS)
  schedules: new Map(), // id -> active or requested Schedule (SCH3DUL3S)
  portConflicts: [], // [{port, agents}] from the snapshot, recomputed on every row change
  // viewers (issue 18 item 6): the applied agent.nix and state files, read-only, loaded when opened
  openConfigs: new Set(), // names whose agent.nix viewer is open
  configText: new Map(), // name -> text shown in it
  openStateFiles: new Set(), // names whose state-file viewer is open
  stateFiles: new Map(), // name -> {path, text}
  // the swarm view (docs/swarm.md "Events"): null alone; else the link and every hive seen,
  // {state, hive, error, outbox, heartbeat_ttl, hives: Map name -> {name, reachable, last_seen, local, agents: Map}}
  swarm: null,
};
const MAX_MESSAGES = 200;
const MAX_INBOX = 50;
const MAX_HISTORY = 50;

const HANDLED = [
  "container_state_changed", "container_removed", "transient_set", "transient_cleared",
  "tombstones_changed", "meta_inputs_changed", "meta_update_running", "rebuild_queue_changed",
  "approval_added", "approval_resolved", "sent", "delivered", "actor_crashed", "agent_notice",
  "question_added", "question_resolved",
  "alarm_raised", "alarm_cleared",
  "reminder_added", "reminder_sent", "reminder_failed", "reminder_removed",
  "schedule_added", "schedule_fired", "schedule_cancelled",
  // (review) the background evaluation of a proposal
  "approval_reviewed",
  // the swarm view: unsequenced; every stream starts with a swarm_state (a reconnect resyncs from it)
  "swarm_state", "swarm_link", "swarm_hive", "swarm_agent", "swarm_agent_removed",
  // (audit) who approved or denied, once the verb's audit row is written
  "approval_attributed",
];

// --- DOM helpers (textContent only) ---------------------------------------------------------------

const LONG_TEXT_LINES = 3;

// A build error or note as nix wrote it: line breaks kept (nix's `^` must point at its column).
// Up to LONG_TEXT_LINES short lines show whole; a longer one shows its first line and expands
// (the expanded state survives re-renders, keyed by `key`).
function longText(cls, prefix, text, key) {
  const lines = String(text).replace(/\n+$/, "").split("\n");
  if (lines.length <= LONG_TEXT_LINES && text.length <= 400) {
    return el("p", { class: `${cls} multiline`, text: prefix + lines.join("\n") });
  }
  const more = lines.length - 1;
  const details = el("details", { class: `${cls} long-text`, open: S.openTexts.has(key), "data-key": key },
    el("summary", { text: `${prefix}${lines[0]}${more ? ` … (${more} more line${more === 1 ? "" : "s"})` : " …"}` }),
    el("pre", { class: cls, text: lines.join("\n") }));
  details.ontoggle = () => { if (details.open) S.openTexts.add(key); else S.openTexts.delete(key); };
  return details;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("data-") || k.startsWith("aria-") || ["type", "name", "value", "title", "action", "id", "for", "placeholder", "open", "role"].includes(k)) {
      node.setAttribute(k, v === true ? "" : String(v));
    } else node[k] = v;
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function actionForm(action, label, opts = {}) {
  const form = el("form", {
    action, "data-async": true, "data-no-refresh": true,
    "data-confirm": opts.confirm, "data-prompt": opts.prompt, "data-prompt-field": opts.promptField,
    "data-confirm-if": opts.confirmIf, "data-confirm-then": opts.confirmThen,
    class: "inline",
  });
  for (const [k, v] of Object.entries(opts.hidden || {})) form.append(el("input", { type: "hidden", name: k, value: v }));
  if (opts.prompt) form.append(el("input", { type: "hidden", name: opts.promptField || "note", value: "" }));
  if (opts.extra) form.append(opts.extra);
  form.append(el("button", { type: "submit", class: opts.cls || "", title: opts.title }, label));
  return form;
}

function enc(name) { return encodeURIComponent(name); }

function ago(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "?";
  if (seconds < 60) return `${Math.floor(seconds)}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h`;
  return `${Math.floor(seconds / 86400)}d`;
}

function clock(unix) {
  if (!unix) return "";
  const d = new Date(unix * 1000);
  return d.toTimeString().slice(0, 8);
}

function tokens(n) {
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return String(n);
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function toast(text, ok) {
  const t = el("div", { class: `toast ${ok ? "ok" : "err"}`, role: "status", text });
  document.getElementById("toasts").append(t);
  setTimeout(() => t.remove(), ok ? 4000 : 9000);
}

// --- sections -------------------------------------------------------------------------------------

function containerRow(c) {
  const pending = S.transients.get(c.name);
  const state = pending ? "pending" : c.running ? "running" : c.failed ? "failed" : "stopped";
  const glyph = { running: "●", stopped: "○", failed: "✖", pending: "" }[state];
  const head = el("div", { class: "row-head" },
    el("span", { class: `state ${state}`, title: state }, glyph,
      pending ? el("span", { class: "spinner", "aria-hidden": "true" }) : null),
    el("span", { class: "name", text: c.name }),
    c.is_manager ? el("span", { class: "chip manager", text: "manager" }) : null,
    el("span", { class: "state-text", text: pending ? pending.transient_kind : state }),
    pending ? el("span", { class: "elapsed", "data-since": pending.since_unix, text: ago(Date.now() / 1000 - pending.since_unix) }) : null,
    c.deployed_sha ? el("span", { class: "chip sha", title: "deployed", text: c.deployed_sha.slice(0, 12) }) : null,
    c.needs_update ? el("span", { class: "badge update", text: "needs update ↻" }) : null,
    c.needs_login ? el("span", { class: "badge login", text: "needs login" }) : null,
    c.paused ? el("span", { class: "badge paused", text: "paused" }) : null,
    c.pending_reminders ? el("span", { class: "chip reminder", title: "pending reminders", text: `⏰ ${c.pending_reminders}` }) : null,
    c.stuck ? el("span", { class: "badge stuck", title: c.stuck, text: "stuck" }) : null,
    c.waiting_on_operator_since ? el("span", {
      class: "badge waiting", "data-waiting-since": c.waiting_on_operator_since,
      title: "it asked you a question (Y3R C4LL)",
      text: waitingText(c.waiting_on_operator_since),
    }) : null,
    c.last_turn_at ? el("span", {
      class: "usage", "data-last-turn": c.last_turn_at,
      title: "last turn ago · turns, tokens and cost today (UTC)",
      text: `⟳ ${ago(Date.now() / 1000 - c.last_turn_at)} ago · ${c.turns_today} turns · ${tokens(c.tokens_today)} tok · $${c.cost_today_usd.toFixed(2)}`,
    }) : null,
    c.port ? el("span", { class: "port", text: `:${c.port}` }) : null,
    c.status_text ? el("span", { class: "status-text" }, ...withStateLinks(c.status_text)) : null,
  );
  const n = enc(c.name);
  const buttons = el("div", { class: "buttons" });
  if (c.running) {
    buttons.append(actionForm(`/restart/${n}`, "↺ R3ST4RT"));
    if (!c.is_manager) {
      buttons.append(actionForm(`/stop/${n}`, "■ ST0P"));
      buttons.append(actionForm(`/kill/${n}`, "☠ K1LL", { confirm: `Kill ${c.name} (SIGKILL)?`, cls: "danger" }));
    }
  } else {
    buttons.append(actionForm(`/start/${n}`, "▶ ST4RT"));
  }
  buttons.append(actionForm(`/rebuild/${n}`, "↻ R3BU1LD"));
  if (c.needs_login) {
    const secret = el("input", {
      type: "password", name: "secret", class: "secret", placeholder: "API key or setup-token",
      autocomplete: "off", "aria-label": `Claude API key or setup-token for ${c.name}`,
      value: S.loginDraft.get(c.name) || "",
    });
    secret.addEventListener("input", () => {
      if (secret.value) S.loginDraft.set(c.name, secret.value); else S.loginDraft.delete(c.name);
    });
    const form = actionForm(`/agent-login/${n}`, "⚿ L0G1N", { extra: secret, title: "stored 0600 for this agent only" });
    form.dataset.clear = "secret";
    form.addEventListener("submit", () => S.loginDraft.delete(c.name));
    buttons.append(form);
  } else {
    buttons.append(actionForm(`/agent-logout/${n}`, "L0G0UT", { confirm: `Log ${c.name} out of Claude?` }));
  }
  if (!c.is_manager) {
    const box = el("input", { type: "checkbox", name: "purge", value: "1", checked: S.purgeChecked.has(c.name) });
    box.addEventListener("change", () => {
      if (box.checked) S.purgeChecked.add(c.name); else S.purgeChecked.delete(c.name);
    });
    const purge = el("label", { class: "purge" }, box, " purge");
    buttons.append(actionForm(`/destroy/${n}`, "DESTR0Y", {
      confirm: `Destroy ${c.name}? Its process is stopped and removed. Its state is KEPT (notes, `
        + `credentials, config repo and deploy history, under agents/${c.name}/ and applied/${c.name}/): `
        + "K3PT ST4T3 can revive it or purge it later.",
      confirmIf: "purge",
      confirmThen: `Destroy ${c.name} AND PURGE its state? This also DELETES agents/${c.name}/ (its notes, `
        + `claude credentials and config repo) and applied/${c.name}/ (its deploy history). No undo.`,
      cls: "danger", extra: purge,
    }));
  }
  const logs = el("details", { class: "logs", "data-restore-key": `logs:${c.name}`, open: S.openLogs.has(c.name) },
    el("summary", { text: "l0g t41l" }),
    el("pre", { class: "log", text: (S.logText.get(c.name) || ["(loading…)"]).join("\n") }));
  logs.addEventListener("toggle", () => {
    if (logs.open) { S.openLogs.add(c.name); loadLog(c.name); } else S.openLogs.delete(c.name);
  });
  const depth = treeKey(c.name).split("/").length - 1;
  const row = el("div", { class: `row container ${state}${depth ? " child" : ""}`, "data-name": c.name, "data-tree": treeKey(c.name) },
    head, buttons, logs, configViewer(c.name), stateFileViewer(c.name));
  if (depth) {
    row.style.marginLeft = `${Math.min(depth, 6) * 1.5}em`;
    head.prepend(el("span", { class: "tree", title: `spawned at the request of ${c.parent}`, text: "↳ " }));
  }
  return row;
}

// --- SW4RM tree: an agent sits under the agent that requested its spawn (its parent) ------------

// The row order: the manager first, each agent right after its parent (when that is a live agent
// here), siblings by name. "/" sorts below every name character, so a subtree stays together.
function treeKey(name, seen = 0) {
  const c = S.containers.get(name);
  if (!c) return name;
  if (c.is_manager) return "\u0000";
  const parent = c.parent && S.containers.get(c.parent);
  if (!parent || c.parent === name || seen > 16) return name;
  return `${treeKey(c.parent, seen + 1)}/${name}`;
}

// --- viewers (issue 18 item 6): read-only; the text is the agent's (textContent only) ------------

function viewerDetails(cls, label, name, openSet, onOpen, ...body) {
  const details = el("details", { class: `viewer ${cls}`, open: openSet.has(name) }, el("summary", { text: label }), ...body);
  details.addEventListener("toggle", () => {
    if (details.open) { openSet.add(name); onOpen(); } else openSet.delete(name);
  });
  return details;
}

async function getJson(url) {
  const resp = await fetch(url, { credentials: "same-origin" });
  let body = {};
  try { body = await resp.json(); } catch (e) { body = { ok: false, error: `HTTP ${resp.status}` }; }
  return resp.ok ? body : { ok: false, error: body.error || `HTTP ${resp.status}` };
}

function configViewer(name) {
  return viewerDetails("config", "4G3NT.N1X", name, S.openConfigs, () => loadConfig(name),
    el("pre", { class: "agent-nix", text: S.configText.get(name) || "(loading…)" }));
}

async function loadConfig(name) {
  const body = await getJson(`/api/agent-config/${enc(name)}`);
  let text;
  if (!body.ok) text = `(${body.error})`;
  else {
    const runs = body.deployed_sha && body.deployed_sha !== body.sha ? `; it runs ${body.deployed_sha.slice(0, 12)}` : "";
    text = `# applied main ${body.sha.slice(0, 12)}${runs}\n`
      + (body.agent_nix === null ? "(no agent.nix)" : body.agent_nix + (body.truncated ? "\n… cut at 256 KiB" : ""));
  }
  S.configText.set(name, text);
  const row = findRow("containers", name);
  if (row) row.querySelector("pre.agent-nix").textContent = text;
}

function stateFileViewer(name) {
  const shown = S.stateFiles.get(name) || { path: "", text: "" };
  const path = el("input", { type: "text", class: "state-path", placeholder: "path in its state dir (e.g. notes.md)",
    "aria-label": `file in the state dir of ${name}`, value: shown.path });
  const form = el("form", { class: "inline state-file-form" }, path, el("button", { type: "submit", text: "R34D" }));
  form.addEventListener("submit", (ev) => { ev.preventDefault(); openStateFile(name, path.value); });
  return viewerDetails("state-file", "ST4T3 F1L3S", name, S.openStateFiles, () => {}, form,
    el("pre", { class: "state-file", text: shown.text }));
}

// Open ``path`` (relative to the agent's state dir, or absolute inside it) in the row's viewer.
async function openStateFile(name, path) {
  S.openStateFiles.add(name);
  S.stateFiles.set(name, { path, text: "(loading…)" });
  renderContainer(name);
  const body = await getJson(`/api/state-file?agent=${enc(name)}&path=${encodeURIComponent(path)}`);
  let text;
  if (!body.ok) text = `(${body.error})`;
  else if (body.binary) text = `(${body.path}: ${bytes(body.size)}, not UTF-8 text)\n${body.text}`;
  else text = body.text || "(empty)";
  S.stateFiles.set(name, { path, text });
  const row = findRow("containers", name);
  if (row) row.querySelector("pre.state-file").textContent = text;
}

async function loadLog(name) {
  const resp = await fetch(`/api/logs/${enc(name)}`, { credentials: "same-origin" });
  let body = {};
  try { body = await resp.json(); } catch (e) { body = { error: `HTTP ${resp.status}` }; }
  S.logText.set(name, resp.ok ? (body.lines.length ? body.lines : ["(empty)"]) : [`(${body.error})`]);
  const row = findRow("containers", name);
  if (row) row.querySelector("pre.log").textContent = S.logText.get(name).join("\n");
}

function findRow(containerId, name) {
  for (const row of document.getElementById(containerId).children) if (row.dataset.name === name) return row;
  return null;
}

function renderContainer(name) {
  const box = document.getElementById("containers");
  const old = findRow("containers", name);
  const c = S.containers.get(name);
  if (!c) { if (old) old.remove(); S.purgeChecked.delete(name); S.loginDraft.delete(name); }
  else {
    const row = containerRow(c);
    if (old && old.dataset.tree === row.dataset.tree) old.replaceWith(row);
    else {
      if (old) old.remove();
      const after = [...box.children].find((r) => r.dataset.tree > row.dataset.tree);
      box.insertBefore(row, after || null);
    }
  }
  // a parent that came or went moves its children: redraw in tree order
  if ([...box.children].some((r) => r.dataset.tree !== treeKey(r.dataset.name))) { renderContainers(); return; }
  renderSwarmMeta();
}

function renderContainers() {
  const box = document.getElementById("containers");
  for (const name of [...S.purgeChecked]) if (!S.containers.has(name)) S.purgeChecked.delete(name);
  const ordered = [...S.containers.keys()].map((n) => [treeKey(n), n]).sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  box.replaceChildren(...ordered.map(([, n]) => containerRow(S.containers.get(n))));
  renderSwarmMeta();
}

// --- operator reach (docs/swarm.md "Operator reach"): the buttons of another hive's row -----------------
// Each posts /swarm-op/<hive>/<op>/<name>; that hive decides (it must list this one in
// --swarm-operator-hives) and both hives audit it; the toast is its verb's answer. ``a`` is the
// remote row as /api/state's swarm has it (name, is_manager, running, paused).
function remoteButtons(hive, a) {
  const base = `/swarm-op/${enc(hive)}`;
  const n = enc(a.name);
  const who = `${a.name}@${hive}`;
  const buttons = el("div", { class: "buttons remote-ops" });
  if (a.running) {
    buttons.append(actionForm(`${base}/restart/${n}`, "↺ R3ST4RT", { title: `restart ${who}` }));
    if (!a.is_manager) {
      buttons.append(actionForm(`${base}/stop/${n}`, "■ ST0P", { title: `stop ${who}` }));
      buttons.append(actionForm(`${base}/kill/${n}`, "☠ K1LL", { confirm: `Kill ${who} (SIGKILL)?`, cls: "danger" }));
    }
  } else {
    buttons.append(actionForm(`${base}/start/${n}`, "▶ ST4RT", { title: `start ${who}` }));
  }
  buttons.append(actionForm(`${base}/rebuild/${n}`, "↻ R3BU1LD", { title: `rebuild ${who}` }));
  buttons.append(a.paused
    ? actionForm(`${base}/resume/${n}`, "▶ R3SUM3", { title: `resume ${who}` })
    : actionForm(`${base}/pause/${n}`, "‖ P4US3", { title: `pause ${who}` }));
  return buttons;
}

function renderSwarmMeta() {
  document.getElementById("swarm-count").textContent = String(S.containers.size);
  const stale = S.anyStale || [...S.containers.values()].some((c) => c.needs_update);
  document.getElementById("update-all").hidden = !stale;
  const list = document.getElementById("recipients");
  list.replaceChildren(el("option", { value: "@manager" }),
    ...[...S.containers.keys()].filter((n) => !S.containers.get(n).is_manager).sort().map((n) => el("option", { value: `@${n}` })));
}

// --- the swarm view: agents grouped by hive (docs/swarm.md "Events") ---------------------------------
// Other hives' rows are theirs: text only; their buttons ask that hive (remoteButtons, operator reach).
// This hive's own agents are the rows above.

function swarmFrom(status) {
  if (!status || status.state === "off") return null;
  const hives = new Map();
  for (const h of status.hives || []) {
    hives.set(h.name, { ...h, agents: new Map(h.local ? [] : (h.agents || []).map((a) => [a.name, a])) });
  }
  return { state: status.state, hive: status.hive, error: status.error, outbox: status.outbox, heartbeat_ttl: status.heartbeat_ttl, hives };
}

function remoteRow(hive, a) {
  const state = a.pending ? "pending" : a.running ? "running" : a.failed ? "failed" : "stopped";
  const glyph = { running: "●", stopped: "○", failed: "✖", pending: "" }[state];
  return el("div", { class: `row container remote ${state}`, "data-hive": hive, "data-name": a.name },
    el("div", { class: "row-head" },
      el("span", { class: `state ${state}`, title: state }, glyph,
        a.pending ? el("span", { class: "spinner", "aria-hidden": "true" }) : null),
      el("span", { class: "name", text: a.name }),
      el("span", { class: "chip hive", title: "its hive", text: `@${hive}` }),
      a.is_manager ? el("span", { class: "chip manager", text: "manager" }) : null,
      el("span", { class: "state-text", text: a.pending || state }),
      a.paused ? el("span", { class: "badge paused", text: "paused" }) : null,
      a.stuck ? el("span", { class: "badge stuck", title: a.stuck, text: "stuck" }) : null,
      a.status_text ? el("span", { class: "status-text", text: a.status_text }) : null),
    remoteButtons(hive, a)); // operator reach: that hive decides (docs/swarm.md "Operator reach")
}

function hiveHead(h, count) {
  const seen = h.last_seen ? el("span", { class: "seen", "data-seen": h.last_seen, text: `seen ${ago(Date.now() / 1000 - h.last_seen)} ago` }) : null;
  return el("h3", { class: "hive-head" },
    el("span", { class: "name", text: h.name }),
    h.local ? el("span", { class: "chip", text: "this hive" }) : null,
    el("span", { class: `reach ${h.reachable ? "reachable" : "unreachable"}`, text: h.reachable ? "● reachable" : "✖ unreachable" }),
    seen, count === null ? null : el("span", { class: "count", text: `${count} agent${count === 1 ? "" : "s"}` }),
    !h.local && h.approvals ? el("span", {
      class: "chip approvals", title: `approve them on ${h.name}`,
      text: `◆ ${h.approvals} approval${h.approvals === 1 ? "" : "s"} pending`,
    }) : null);
}

function hiveBox(h) {
  const rows = [...h.agents.values()].sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : 0));
  return el("div", { class: `hive ${h.reachable ? "reachable" : "unreachable"}`, "data-hive": h.name },
    hiveHead(h, rows.length), el("div", { class: "rows" }, ...rows.map((a) => remoteRow(h.name, a))));
}

function findHive(name) {
  for (const box of document.getElementById("swarm-hives").children) if (box.dataset.hive === name) return box;
  return null;
}

function renderSwarm() {
  const local = document.getElementById("swarm-local");
  const box = document.getElementById("swarm-hives");
  const sw = S.swarm;
  local.hidden = !sw;
  if (!sw) { local.replaceChildren(); box.replaceChildren(); return; }
  const me = sw.hives.get(sw.hive) || { name: sw.hive, reachable: sw.state === "connected", local: true };
  local.replaceChildren(...hiveHead(me, null).childNodes,
    el("span", { class: `chip link ${sw.state}`, title: sw.error || "", text: `link ${sw.state}${sw.outbox ? ` · ${sw.outbox} waiting` : ""}` }));
  const names = [...sw.hives.keys()].filter((n) => !sw.hives.get(n).local).sort();
  box.replaceChildren(...names.map((n) => hiveBox(sw.hives.get(n))));
}

function renderHive(name) {
  const h = S.swarm && S.swarm.hives.get(name);
  if (!h || h.local) { renderSwarm(); return; }
  const old = findHive(name);
  if (old) old.replaceWith(hiveBox(h)); else renderSwarm();
}

function renderRemoteRow(hive, name) {
  const h = S.swarm && S.swarm.hives.get(hive);
  const box = findHive(hive);
  if (!h || !box) { renderHive(hive); return; }
  const old = [...box.querySelector(".rows").children].find((r) => r.dataset.name === name);
  const a = h.agents.get(name);
  if (old && a) old.replaceWith(remoteRow(hive, a));
  else { renderHive(hive); return; }
}

function applySwarm(ev) {
  if (ev.kind === "swarm_state") { S.swarm = swarmFrom(ev.swarm); renderSwarm(); return; }
  const sw = S.swarm;
  if (!sw) return; // a swarm_state comes first on every stream
  switch (ev.kind) {
    case "swarm_link":
      Object.assign(sw, { state: ev.state, error: ev.error, outbox: ev.outbox, heartbeat_ttl: ev.heartbeat_ttl });
      renderSwarm(); break;
    case "swarm_hive": {
      const prev = sw.hives.get(ev.name);
      sw.hives.set(ev.name, { agents: new Map(), ...prev, name: ev.name, reachable: ev.reachable, last_seen: ev.last_seen, local: ev.local, approvals: ev.approvals });
      if (ev.local || !prev) renderSwarm(); else renderHive(ev.name);
      break;
    }
    case "swarm_agent": {
      let h = sw.hives.get(ev.hive);
      if (!h) { h = { name: ev.hive, reachable: false, last_seen: null, local: false, agents: new Map() }; sw.hives.set(ev.hive, h); }
      h.agents.set(ev.agent.name, ev.agent); renderRemoteRow(ev.hive, ev.agent.name); break;
    }
    case "swarm_agent_removed": {
      const h = sw.hives.get(ev.hive);
      if (h && h.agents.delete(ev.name)) renderHive(ev.hive);
      break;
    }
    default: break;
  }
}

function diffView(diff) {
  const pre = el("pre", { class: "diff" });
  const files = [];
  for (const line of diff.split("\n")) {
    let cls = "";
    if (line.startsWith("diff --git")) { cls = "file"; files.push(line.replace(/^diff --git a\//, "").split(" b/")[0]); }
    else if (line.startsWith("+++") || line.startsWith("---")) cls = "meta";
    else if (line.startsWith("@@")) cls = "hunk";
    else if (line.startsWith("+")) cls = "add";
    else if (line.startsWith("-")) cls = "del";
    pre.append(el("span", { class: cls, text: `${line}\n` }));
  }
  return { pre, files };
}

// the complete file list of a review (never capped; each file's diff may be)
function fileList(a) {
  let plus = 0, minus = 0;
  const rows = a.files.map((f) => {
    plus += f.added || 0; minus += f.removed || 0;
    const counts = f.binary ? `binary · ${f.size ?? "?"} bytes` : `+${f.added ?? 0} −${f.removed ?? 0}`;
    return el("li", { class: f.truncated ? "truncated" : "" },
      el("span", { class: "path", text: f.path }), el("span", { class: "counts", text: ` ${counts}` }),
      f.truncated ? el("span", { class: "chip warn", text: "diff truncated" }) : null);
  });
  return el("details", { class: "files", "data-restore-key": `approval-files:${a.id}`, open: true },
    el("summary", { text: `${a.files.length} file${a.files.length === 1 ? "" : "s"} · +${plus} −${minus}` }),
    el("ul", { class: "file-list" }, ...rows));
}

// --- the review's evaluation (issue 18 item 9) ------------------------------------------------------

function evaluationView(a) {
  const ev = a.evaluation;
  if (!ev) return null;
  if (ev.status === "pending") return el("p", { class: "evaluation pending", text: "⟳ evaluating this config (confined, in the background)…" });
  if (ev.status === "cancelled") return null;
  if (ev.status === "failed") {
    return el("div", { class: "evaluation failed" },
      el("p", { class: "error", text: "✖ D0ES N0T EV4LU4TE: this config cannot build; deny it (approving it only fails its build)" }),
      longText("error", "", ev.error || "(no error text)", `eval:${a.id}`));
  }
  const changes = ev.changes || [];
  if (!changes.length) return el("p", { class: "evaluation ok", text: "✔ evaluates · nothing changes at runtime" });
  const rows = changes.map((c) => el("tr", {},
    el("td", { class: "what", text: c.what }),
    el("td", { class: "before", text: c.before ?? (c.after === undefined || c.after === null ? "" : "—") }),
    el("td", { class: "arrow", text: c.before === null && c.after === null ? "" : "→" }),
    el("td", { class: "after", text: c.after ?? (c.before === undefined || c.before === null ? "" : "(removed)") })));
  return el("details", { class: "evaluation ok", "data-restore-key": `approval-eval:${a.id}`, open: true },
    el("summary", { text: `✔ evaluates · ${changes.length} runtime change${changes.length === 1 ? "" : "s"}` }),
    el("table", { class: "runtime-changes" }, el("tbody", {}, ...rows)));
}

function approvalCard(a) {
  const kind = a.kind || a.approval_kind;
  const card = el("div", { class: `card approval ${a.status}`, "data-id": a.id },
    el("div", { class: "row-head" },
      el("span", { class: "glyph", text: a.status === "pending" ? "◆" : a.status === "approved" ? "✔" : a.status === "denied" ? "✖" : "⊘" }),
      el("span", { class: "id", text: `#${a.id}` }),
      el("span", { class: "chip kind", text: kind }),
      el("span", { class: "name", text: a.agent }),
      a.commit_ref ? el("span", { class: "chip sha", text: String(a.fetched_sha || a.commit_ref).slice(0, 12) }) : null,
      el("span", { class: "state-text", text: a.status })),
    a.description ? el("p", { class: "description", text: a.description }) : null,
    a.note ? longText("note", "note: ", a.note, `approval:${a.id}`) : null,
    a.resolved_by ? el("p", { class: "resolved-by", text: `${a.status} by ${a.resolved_by}` }) : null);
  if (a.status === "pending") { const view = evaluationView(a); if (view) card.append(view); }
  if (a.status === "pending" && Array.isArray(a.files)) card.append(fileList(a));
  if (a.status === "pending" && a.commit_message) {
    card.append(el("details", { class: "commit-message", "data-restore-key": `approval-msg:${a.id}`, open: true },
      el("summary", { text: "commit message(s)" }), el("pre", { class: "message", text: a.commit_message })));
  }
  if (a.status === "pending" && a.agent_nix) {
    card.append(el("details", { class: "agent-nix", "data-restore-key": `approval-nix:${a.id}`, open: true },
      el("summary", { text: `agent.nix this spawn deploys${a.fetched_sha ? " · " + String(a.fetched_sha).slice(0, 12) : ""}` }),
      el("pre", { class: "diff", text: a.agent_nix })));
  }
  if (a.status === "pending" && a.diff) {
    const { pre, files } = diffView(a.diff);
    const count = Array.isArray(a.files) ? a.files.length : files.length;
    const det = el("details", { "data-restore-key": `approval-diff:${a.id}`, open: !S.openDiffs.has(a.id) },
      el("summary", { text: `diff · ${count} file${count === 1 ? "" : "s"}${!Array.isArray(a.files) && files.length ? ": " + files.join(", ") : ""}` }), pre);
    det.addEventListener("toggle", () => { if (det.open) S.openDiffs.delete(a.id); else S.openDiffs.add(a.id); });
    card.append(det);
  }
  if (a.status === "pending") {
    const status = a.evaluation ? a.evaluation.status : null;
    const question = status === "failed"
      ? `#${a.id} (${kind} ${a.agent}) does NOT evaluate (nix's error is on the card): its build will fail and nothing will be deployed. Approve it anyway?`
      : status === "pending" ? `#${a.id} (${kind} ${a.agent}) is still being evaluated: approve it anyway?` : `Approve #${a.id} (${kind} ${a.agent})?`;
    card.append(el("div", { class: "buttons" },
      actionForm(`/approve/${a.id}`, status === "failed" ? "◆ APPR0VE 4NYW4Y" : "◆ APPR0VE", { confirm: question, cls: "approve" }),
      actionForm(`/deny/${a.id}`, "DENY", { prompt: `Deny #${a.id}: a note for the manager (optional)`, promptField: "note", cls: "danger" })));
  }
  return card;
}

function renderApprovals() {
  const all = [...S.approvals.values()].sort((x, y) => x.id - y.id);
  const pending = all.filter((a) => a.status === "pending");
  const shown = S.showHistory ? all.filter((a) => a.status !== "pending").slice(-MAX_HISTORY).reverse() : pending;
  const box = document.getElementById("approvals");
  box.replaceChildren(...(shown.length ? shown.map(approvalCard) : [el("p", { class: "empty", text: S.showHistory ? "no history yet" : "nothing waiting for you" })]));
  renderCallCount();
  const toggle = document.getElementById("approvals-toggle");
  toggle.textContent = S.showHistory ? "show pending" : "show history";
  toggle.setAttribute("aria-pressed", String(S.showHistory));
}

// --- questions (M1ND H4S QU3STI0NS) ------------------------------------------------------------------

function waitingText(since) { return `⏳ waiting on you ${ago(Date.now() / 1000 - since)}`; }

function ttlText(deadline) {
  const left = Math.max(0, Math.floor(deadline - Date.now() / 1000));
  return `⏳ ${String(Math.floor(left / 60)).padStart(2, "0")}:${String(left % 60).padStart(2, "0")}`;
}

function renderCallCount() {
  const approvals = [...S.approvals.values()].filter((a) => a.status === "pending").length;
  const questions = [...S.questions.values()].filter((q) => !q.target).length;
  document.getElementById("call-count").textContent = String(approvals + questions);
}

function answerForm(q, value, label, cls) {
  return actionForm(`/answer-question/${q.id}`, label, { hidden: { answer: value }, cls });
}

function questionCard(q) {
  const peer = !!q.target;
  const asker = q.asker === "hm1nd" ? "manager" : q.asker;
  const head = el("div", { class: "row-head" },
    el("span", { class: "glyph", text: "?" }),
    el("span", { class: "id", text: `#${q.id}` }),
    el("span", { class: "name", text: asker }),
    el("span", { class: "arrow", text: " → " }),
    el("span", { class: "to", text: peer ? q.target : "you" }),
    el("span", { class: "age", text: `${ago(Date.now() / 1000 - q.asked_at)} ago` }),
    q.deadline_at ? el("span", { class: "chip ttl", "data-deadline": q.deadline_at, title: "expires", text: ttlText(q.deadline_at) }) : null);
  const card = el("div", { class: `card question${peer ? " peer" : ""}`, "data-id": q.id }, head,
    el("p", { class: "question-text multiline", text: q.question }));
  const buttons = el("div", { class: "buttons" });
  const options = Array.isArray(q.options) ? q.options : [];
  if (options.length && q.multi) {
    const form = el("form", { action: `/answer-question/${q.id}`, "data-async": true, "data-no-refresh": true,
      "data-join": "opt:answer", "data-join-with": ", ", class: "inline multi" });
    for (const o of options) form.append(el("label", { class: "option" }, el("input", { type: "checkbox", name: "opt", value: o }), ` ${o}`));
    form.append(el("input", { type: "hidden", name: "answer", value: "" }));
    form.append(el("button", { type: "submit", class: "approve" }, "✔ 4NSW3R"));
    buttons.append(form);
  } else {
    for (const o of options) buttons.append(answerForm(q, o, o, "option"));
  }
  const text = el("input", { name: "answer", placeholder: peer ? "answer for the asked agent" : "your answer",
    required: true, maxLength: 1536, autocomplete: "off", "aria-label": `answer to question ${q.id}`,
    value: S.questionDraft.get(q.id) || "" });
  text.addEventListener("input", () => { if (text.value) S.questionDraft.set(q.id, text.value); else S.questionDraft.delete(q.id); });
  const free = el("form", { action: `/answer-question/${q.id}`, "data-async": true, "data-no-refresh": true, class: "inline free" },
    text, el("button", { type: "submit" }, peer ? "0V3RR1D3" : "▶ 4NSW3R"));
  buttons.append(free);
  buttons.append(actionForm(`/cancel-question/${q.id}`, "✖ C4NC3L", { confirm: `Cancel question #${q.id}? ${asker} is answered [cancelled].`, cls: "danger" }));
  card.append(buttons);
  return card;
}

function renderQuestions() {
  const box = document.getElementById("questions");
  const open = [...S.questions.values()].sort((x, y) => x.id - y.id);
  for (const id of [...S.questionDraft.keys()]) if (!S.questions.has(id)) S.questionDraft.delete(id);
  const mine = open.filter((q) => !q.target);
  const peers = open.filter((q) => q.target);
  box.replaceChildren(...(open.length ? [
    mine.length ? el("h3", { text: "M1ND H4S QU3STI0NS" }) : null, ...mine.map(questionCard),
    peers.length ? el("h3", { text: "between agents" }) : null, ...peers.map(questionCard),
  ].filter(Boolean) : []));
  renderCallCount();
}

function renderTombstones() {
  const box = document.getElementById("tombstones");
  box.replaceChildren(...(S.tombstones.length ? S.tombstones.map((t) => el("div", { class: "row tombstone", "data-name": t.name },
    el("div", { class: "row-head" },
      el("span", { class: "glyph", text: "✝" }),
      el("span", { class: "name", text: t.name }),
      el("span", { class: "size", text: bytes(t.state_bytes) }),
      el("span", { class: "age", text: `${ago(t.age_seconds)} old` }),
      t.claude_creds_kept ? el("span", { class: "badge creds", text: "credentials kept" }) : null),
    el("div", { class: "buttons" },
      actionForm("/request-spawn", "R3V1V3", { hidden: { name: t.name, description: "revive kept state" } }),
      actionForm(`/purge-tombstone/${enc(t.name)}`, "PURG3", { confirm: `Delete ${t.name}'s kept state for good?`, cls: "danger" }))))
    : [el("p", { class: "empty", text: "no kept state" })]));
}

function metaField(i, ...names) {
  for (const n of names) if (i[n] !== undefined && i[n] !== null) return i[n];
  return null;
}

function renderMeta() {
  const body = document.getElementById("meta-inputs");
  const now = Date.now() / 1000;
  // picks survive the re-render (every rebuild sends meta_inputs_changed)
  const picked = new Set([...body.querySelectorAll("input[name=pick]:checked")].map((i) => i.value));
  body.replaceChildren(...S.metaInputs.map((i) => {
    const name = String(metaField(i, "name", "path") || "?");
    const rev = String(metaField(i, "rev", "sha", "locked_rev") || "").slice(0, 12);
    const modified = Number(metaField(i, "last_modified", "lastModified"));
    return el("tr", { "data-name": name },
      el("td", {}, el("input", { type: "checkbox", name: "pick", value: name, "aria-label": `update ${name}`, checked: picked.has(name) })),
      el("td", { class: "name", text: name }),
      el("td", { class: "sha", text: rev }),
      el("td", { class: "age", text: modified ? `${ago(now - modified)} ago` : "" }),
      el("td", { class: "url", text: String(metaField(i, "url", "original_url") || "") }));
  }));
  if (!S.metaInputs.length) body.append(el("tr", {}, el("td", { colSpan: 5, class: "empty", text: "no lock inputs" })));
  document.getElementById("meta-running").hidden = !S.metaRunning;
  updateMetaSubmit();
}

function updateMetaSubmit() {
  const any = document.querySelector("#meta-inputs input[name=pick]:checked");
  document.getElementById("meta-submit").disabled = !any || S.metaRunning;
}

const JOB_GLYPH = { queued: "⏸", running: "▶", done: "✔", failed: "✖", cancelled: "⊘" };
const KIND_GLYPH = { rebuild: "↻", apply_commit: "◆", spawn: "✦", destroy: "✗", purge: "✗", meta_update: "↻", start: "▶", stop: "■", restart: "↺", kill: "☠", deny: "✖", init_config: "✦" };

function renderJobs() {
  const box = document.getElementById("jobs");
  const rows = [...S.jobs].reverse().map((j) => el("div", { class: `row job ${j.state}`, "data-id": j.id },
    el("div", { class: "row-head" },
      el("span", { class: `glyph ${j.state}`, title: j.state, text: JOB_GLYPH[j.state] || "?" }),
      j.state === "running" ? el("span", { class: "spinner", "aria-hidden": "true" }) : null,
      el("span", { class: "id", text: `#${j.id}` }),
      el("span", { class: "kind", text: `${KIND_GLYPH[j.kind] || "·"} ${j.kind}` }),
      j.agent ? el("span", { class: "name", text: j.agent }) : null,
      el("span", { class: "chip source", text: j.source }),
      el("span", { class: "time", text: `queued ${clock(j.queued_at)}` }),
      j.started_at ? el("span", { class: "time", text: `started ${clock(j.started_at)}` }) : null,
      j.finished_at ? el("span", { class: "time", text: `took ${(j.finished_at - (j.started_at || j.queued_at)).toFixed(1)}s` }) : null),
    j.error ? longText("error", "", j.error, `job:${j.id}`) : null));
  box.replaceChildren(...(rows.length ? rows : [el("p", { class: "empty", text: "queue empty" })]));
}

// --- paths into an agent's state dir are links to its state-file viewer (issue 18 item 9) -------------
// Host form <root>/agents/<n>/state/… or container form /agents/<n>/state/…; only a live agent's.
// The link just opens the viewer with the path as written: the server checks it (viewers.py).
const STATE_PATH = /(?:\/[^\s"'<>()[\]{}]*)?\/agents\/([a-z0-9][a-z0-9-]*)\/state\/[^\s"'<>()[\]{}]*[^\s"'<>()[\]{}.,;:!?]/g;

function withStateLinks(text) {
  const out = [];
  let last = 0;
  for (const match of String(text).matchAll(STATE_PATH)) {
    const [path, name] = match;
    if (!S.containers.has(name)) continue;
    if (match.index > last) out.push(text.slice(last, match.index));
    const link = el("a", { href: "#swarm", class: "state-link", title: `open in ${name}'s state-file viewer`, text: path });
    link.addEventListener("click", (ev) => { ev.preventDefault(); showStateFile(name, path); });
    out.push(link);
    last = match.index + path.length;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

function showStateFile(name, path) {
  const tab = document.querySelector('button[role=tab][data-tab="swarm"]');
  if (tab && tab.getAttribute("aria-selected") !== "true") tab.click();
  openStateFile(name, path).then(() => {
    const row = findRow("containers", name);
    if (row) row.scrollIntoView({ block: "nearest" });
  });
}

function messageLine(m) {
  const to = m.to === "hm1nd" ? "@manager" : `@${m.to}`;
  return el("div", { class: `msg ${m.delivered ? "delivered" : "sent"}`, "data-id": m.id },
    el("span", { class: "time", text: clock(m.at) }),
    el("span", { class: "from", text: m.from }),
    el("span", { class: "arrow", text: m.delivered ? " ⇒ " : " → " }),
    el("span", { class: "to", text: to }),
    el("span", { class: "body" }, ...withStateLinks(m.body)));
}

function renderMessages() {
  const box = document.getElementById("messages");
  // on a hidden tab the terminal has no layout: it keeps following the newest line
  const stick = box.offsetParent === null ? box.dataset.stick !== "0" : box.scrollTop + box.clientHeight >= box.scrollHeight - 8;
  box.dataset.stick = stick ? "1" : "0";
  box.replaceChildren(...[...S.messages.values()].map(messageLine));
  if (stick) box.scrollTop = box.scrollHeight;
  const inbox = document.getElementById("operator-inbox");
  const rows = [...S.inbox.values()].reverse();
  inbox.replaceChildren(...(rows.length ? rows.map(messageLine) : [el("p", { class: "empty", text: "nobody wrote to you" })]));
  document.getElementById("inbox-count").textContent = String(S.inbox.size);
  renderUnread();
}

// --- unread operator messages (counted in the Y3R C4LL and FL0W tab pills) -----------------------
// A message is read once the inbox has been on screen (its tab shown, the page visible) while the
// message was in it; the mark (the newest id seen) is kept in localStorage, per browser. Client
// state only: the server's inbox is unchanged.
const INBOX_MARK = "hive.inbox-read-upto";

function inboxMark() {
  try { return Number(localStorage.getItem(INBOX_MARK)) || 0; } catch (e) { return S.inboxMark || 0; }
}

function renderUnread() {
  const ids = [...S.inbox.keys()].map(Number).filter(Number.isFinite);
  let mark = inboxMark();
  const shown = document.getElementById("operator-inbox").offsetParent !== null && document.visibilityState === "visible";
  if (shown && ids.length && Math.max(...ids) > mark) {
    mark = Math.max(...ids);
    S.inboxMark = mark;
    try { localStorage.setItem(INBOX_MARK, String(mark)); } catch (e) { /* private mode: this page only */ }
  }
  document.getElementById("inbox-unread").textContent = String(ids.filter((id) => id > mark).length);
}

function renderWarnings() {
  const ul = document.getElementById("warnings");
  ul.replaceChildren(...S.warnings.map((w) => el("li", { class: `warning ${w.level === "crit" ? "crit" : "warn"}` },
    el("span", { class: "level", text: w.level === "crit" ? "✖ CR1T" : "⚠ W4RN" }), " ", w.message,
    // a crash-loop hold: the operator releases the agent here (POST /release/<name>)
    w.kind === "crash_loop" && w.agent ? actionForm(`/release/${enc(w.agent)}`, "release", { title: `let ${w.agent} be started again` }) : null)));
}

// --- QU3U3D R3M1ND3RS ------------------------------------------------------------------------------

function renderReminders() {
  const box = document.getElementById("reminder-rows");
  const rows = [...S.reminders.values()].sort((a, b) => a.due_at - b.due_at || a.id - b.id);
  document.getElementById("reminders-count").textContent = String(rows.length);
  const now = Date.now() / 1000;
  box.replaceChildren(...(rows.length ? rows.map((r) => el("div", { class: "row reminder", "data-id": r.id },
    el("div", { class: "row-head" },
      el("span", { class: "glyph", text: "⏰" }),
      el("span", { class: "name", text: r.agent }),
      el("span", { class: "chip", title: clock(r.due_at), text: r.due_at > now ? `in ${ago(r.due_at - now)}` : `due ${ago(now - r.due_at)} ago` }),
      r.file_path ? el("span", { class: "chip", title: "written to this file when it fires", text: r.file_path }) : null,
      r.attempt_count ? el("span", { class: "badge stuck", title: r.last_error || "", text: `${r.attempt_count} failed` }) : null,
      el("span", { class: "status-text", text: r.message })),
    r.last_error ? el("div", { class: "note", text: `last error: ${r.last_error}` }) : null,
    el("div", { class: "buttons" },
      actionForm(`/cancel-reminder/${r.id}`, "✖ C4NC3L", { confirm: `Cancel reminder ${r.id} of ${r.agent}?`, cls: "danger" }))))
    : [el("p", { class: "empty", text: "no reminders queued" })]));
}

// --- SCH3DUL3S ------------------------------------------------------------------------------------

function renderSchedules() {
  const box = document.getElementById("schedule-rows");
  const rows = [...S.schedules.values()].sort((a, b) => (a.next_fire_at || 1e18) - (b.next_fire_at || 1e18) || a.id - b.id);
  document.getElementById("schedules-count").textContent = String(rows.filter((s) => s.state === "active").length);
  const now = Date.now() / 1000;
  box.replaceChildren(...(rows.length ? rows.map((s) => el("div", { class: "row schedule", "data-id": s.id },
    el("div", { class: "row-head" },
      el("span", { class: "glyph", text: s.interval_seconds ? "↻" : "◷" }),
      el("span", { class: "name", text: `#${s.id}` }),
      el("span", { class: "chip", text: s.state }),
      el("span", { class: "chip", text: s.interval_seconds ? `every ${s.interval_seconds} s` : "once" }),
      s.next_fire_at && s.state === "active" ? el("span", { class: "chip", title: clock(s.next_fire_at), text: s.next_fire_at > now ? `next in ${ago(s.next_fire_at - now)}` : "due" }) : null,
      s.description ? el("span", { class: "status-text", text: s.description }) : null),
    el("div", { class: "description", text: s.body }),
    ...s.targets.map((t) => el("div", { class: "target", "data-target": t.target },
      el("span", { class: "name", text: t.target }),
      el("span", { class: "status-text", text: t.cancelled_at ? "cancelled" : (t.last_result || "not fired yet") }),
      t.last_fired_at ? el("span", { class: "age", text: `${ago(now - t.last_fired_at)} ago` }) : null,
      !t.cancelled_at && s.targets.filter((x) => !x.cancelled_at).length > 1
        ? actionForm(`/unschedule/${s.id}`, "✖", { hidden: { target: t.target }, confirm: `Stop sending schedule ${s.id} to ${t.target}?`, title: `cancel for ${t.target} only` })
        : null)),
    el("div", { class: "buttons" },
      actionForm(`/unschedule/${s.id}`, "✖ UNSCH3DUL3", { confirm: `Cancel schedule ${s.id}?`, cls: "danger" }))))
    : [el("p", { class: "empty", text: "no schedules" })]));
}

function applySchedule(ev) {
  const s = ev.schedule;
  if (s.state === "active" || s.state === "requested") S.schedules.set(s.id, s); else S.schedules.delete(s.id);
  renderSchedules();
}

function applyReminder(ev) {
  switch (ev.kind) {
    case "reminder_added":
    case "reminder_failed":
      if (ev.reminder.status === "pending") S.reminders.set(ev.reminder.id, ev.reminder);
      else S.reminders.delete(ev.reminder.id);
      break;
    case "reminder_sent":
    case "reminder_removed":
      S.reminders.delete(ev.id); break;
    default: return;
  }
  renderReminders();
}

function renderActors() {
  const box = document.getElementById("actors");
  box.replaceChildren(...[...S.actors.values()].map((a) => el("span", {
    class: `chip actor ${a.state}`, "data-name": a.name,
    title: a.last_crash ? `last crash: ${a.last_crash}` : a.state,
    text: `${a.name} ${a.state}${a.restarts ? ` ↺${a.restarts}` : ""}`,
  })));
}

function renderAll() {
  renderContainers(); renderApprovals(); renderQuestions(); renderTombstones(); renderMeta(); renderJobs();
  renderMessages(); renderWarnings(); renderActors(); renderReminders(); renderSchedules();
  renderSwarm();
}

// --- events ---------------------------------------------------------------------------------------

function remember(map, m, cap) {
  const prev = map.get(m.id);
  map.set(m.id, prev ? { ...prev, ...m, delivered: prev.delivered || m.delivered } : m);
  while (map.size > cap) map.delete(map.keys().next().value);
}

// --- port conflicts (reference §1.2: rename one agent; the ports are a pure function of the name) ---

function fnv1a32(text) {
  let h = 0x811c9dc5;
  for (const byte of new TextEncoder().encode(text)) {
    h ^= byte;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

function agentPort(name) { return name === "hm1nd" ? 8000 : 8100 + (fnv1a32(name) % 900); }

function recomputePortConflicts() {
  const byPort = new Map();
  for (const name of S.containers.keys()) {
    const port = agentPort(name);
    byPort.set(port, [...(byPort.get(port) || []), name]);
  }
  S.portConflicts = [...byPort.entries()].filter(([, names]) => names.length > 1).sort((x, y) => x[0] - y[0])
    .map(([port, agents]) => ({ port, agents: agents.sort() }));
  renderPortConflicts();
}

function renderPortConflicts() {
  const box = document.getElementById("port-conflicts");
  box.hidden = !S.portConflicts.length;
  box.replaceChildren(...S.portConflicts.map((c) => el("div", { class: "port-conflict" },
    el("span", { class: "level", text: "⚠ P0RT C0NFL1CT" }), " ",
    `port ${c.port} is shared by ${c.agents.join(", ")}: their web UIs would collide; rename one of them (destroy it and spawn it under another name)`)));
}

// --- browser notifications (opt-in; remembered in this browser) -----------------------------------

const NOTIFY_KEY = "hive-c0re.notify";

function notifyOn() {
  return localStorage.getItem(NOTIFY_KEY) === "on" && "Notification" in window && Notification.permission === "granted";
}

function renderNotifyToggle() {
  const button = document.getElementById("notify-toggle");
  if (!("Notification" in window)) { button.hidden = true; return; }
  const on = notifyOn();
  button.textContent = on ? "🔔 N0T1FY: on" : "🔕 N0T1FY: off";
  button.setAttribute("aria-pressed", String(on));
  button.title = Notification.permission === "denied" ? "this browser blocks notifications for this page" : "notify me of new approvals and questions while this tab is in the background";
}

async function toggleNotify() {
  if (notifyOn()) { localStorage.setItem(NOTIFY_KEY, "off"); renderNotifyToggle(); return; }
  if (Notification.permission !== "granted") {
    let answer = "denied";
    try { answer = await Notification.requestPermission(); } catch (e) { answer = "denied"; }
    if (answer !== "granted") { toast("notifications are blocked for this page (browser settings)", false); renderNotifyToggle(); return; }
  }
  localStorage.setItem(NOTIFY_KEY, "on");
  renderNotifyToggle();
}

const notified = new Set(); // "approval:3", "question:5": each once, even if replayed

function maybeNotify(ev) {
  let key, title, body;
  if (ev.kind === "approval_added") {
    key = `approval:${ev.id}`;
    title = `hive-c0re: approve #${ev.id}? (${ev.approval_kind} ${ev.agent})`;
    body = ev.description || "";
  } else if (ev.kind === "question_added" && !ev.target) { // to the operator (not between agents)
    key = `question:${ev.id}`;
    title = `hive-c0re: ${ev.asker || "an agent"} asks`;
    body = ev.question || "";
  } else {
    return;
  }
  if (notified.has(key)) return;
  notified.add(key);
  if (!notifyOn() || !document.hidden) return;
  try {
    const n = new Notification(title, { body: String(body).slice(0, 300), tag: key });
    n.onclick = () => { window.focus(); n.close(); };
  } catch (e) { /* a browser that refuses page notifications: nothing to do */ }
}

function apply(ev) {
  if (typeof ev.seq === "number") {
    if (ev.seq <= S.seq) return;
    S.seq = ev.seq;
  }
  maybeNotify(ev);
  switch (ev.kind) {
    case "container_state_changed":
      S.containers.set(ev.container.name, ev.container); renderContainer(ev.container.name); recomputePortConflicts(); break;
    case "container_removed":
      S.containers.delete(ev.name); S.transients.delete(ev.name); renderContainer(ev.name); recomputePortConflicts(); break;
    case "transient_set":
      S.transients.set(ev.name, { transient_kind: ev.transient_kind, since_unix: ev.since_unix }); renderContainer(ev.name); break;
    case "transient_cleared":
      S.transients.delete(ev.name); renderContainer(ev.name); break;
    case "tombstones_changed": S.tombstones = ev.tombstones; renderTombstones(); break;
    case "meta_inputs_changed": S.metaInputs = ev.inputs; renderMeta(); break;
    case "meta_update_running": S.metaRunning = !!ev.running; renderMeta(); break;
    case "rebuild_queue_changed": S.jobs = ev.jobs; renderJobs(); break;
    case "approval_added": {
      const prev = S.approvals.get(ev.id) || {};
      S.approvals.set(ev.id, { ...prev, ...ev, kind: ev.approval_kind, status: "pending" }); renderApprovals(); break;
    }
    case "approval_resolved": {
      const prev = S.approvals.get(ev.id) || { id: ev.id, agent: ev.agent, kind: ev.approval_kind };
      S.approvals.set(ev.id, { ...prev, status: ev.status, note: ev.note ?? prev.note, diff: null, files: null, commit_message: null, agent_nix: null, evaluation: null }); renderApprovals(); break;
    }
    case "approval_attributed": {
      const prev = S.approvals.get(ev.id);
      if (prev && prev.status !== "pending") { S.approvals.set(ev.id, { ...prev, resolved_by: ev.resolved_by }); renderApprovals(); }
      break;
    }
    case "approval_reviewed": {
      const prev = S.approvals.get(ev.id);
      if (prev && prev.status === "pending") { S.approvals.set(ev.id, { ...prev, evaluation: ev.evaluation }); renderApprovals(); }
      break;
    }
    case "sent":
    case "delivered": {
      const m = { id: ev.id, from: ev.from, to: ev.to, body: ev.body, at: ev.at, delivered: ev.kind === "delivered" };
      remember(S.messages, m, MAX_MESSAGES);
      if (m.to === "operator") remember(S.inbox, m, MAX_INBOX);
      renderMessages(); break;
    }
    case "actor_crashed": {
      const prev = S.actors.get(ev.actor) || { name: ev.actor };
      S.actors.set(ev.actor, { ...prev, state: ev.gave_up ? "failed" : "restarting", restarts: ev.restarts, last_crash: ev.error });
      renderActors(); break;
    }
    case "question_added":
      S.questions.set(ev.id, { id: ev.id, asker: ev.asker, question: ev.question, options: ev.options, multi: ev.multi,
        asked_at: ev.asked_at, deadline_at: ev.deadline_at, target: ev.target });
      renderQuestions(); break;
    case "question_resolved": S.questions.delete(ev.id); renderQuestions(); break;
    // alarms (actors/alarms.py): the warnings strip is the raised alarms, by key
    case "alarm_raised": {
      const w = { key: ev.key, kind: ev.alarm_kind, level: ev.level, message: ev.message, agent: ev.agent, since: ev.since };
      const i = S.warnings.findIndex((x) => x.key === ev.key);
      if (i >= 0) S.warnings[i] = w; else S.warnings.push(w);
      renderWarnings(); break;
    }
    case "alarm_cleared":
      S.warnings = S.warnings.filter((x) => x.key !== ev.key); renderWarnings(); break;
    case "reminder_added":
    case "reminder_sent":
    case "reminder_failed":
    case "reminder_removed": applyReminder(ev); break;
    case "schedule_added":
    case "schedule_fired":
    case "schedule_cancelled": applySchedule(ev); break;
    case "swarm_state":
    case "swarm_link":
    case "swarm_hive":
    case "swarm_agent":
    case "swarm_agent_removed": applySwarm(ev); break;
    case "refetch": reconnect(); break;
    default: break;
  }
}

function load(snap) {
  S.seq = snap.seq;
  S.csrf = snap.csrf;
  S.containers = new Map(snap.containers.map((c) => [c.name, c]));
  S.transients = new Map(Object.entries(snap.transients));
  S.tombstones = snap.tombstones;
  S.approvals = new Map(snap.approvals.map((a) => [a.id, a]));
  S.questions = new Map((snap.questions || []).map((q) => [q.id, q]));
  S.jobs = snap.rebuild_queue;
  S.metaInputs = snap.meta_inputs || [];
  S.metaRunning = !!snap.meta_update_running;
  S.anyStale = !!snap.any_stale;
  S.messages = new Map(snap.messages.map((m) => [m.id, m]));
  S.inbox = new Map(snap.operator_inbox.map((m) => [m.id, m]));
  S.warnings = snap.server_warnings || [];
  S.actors = new Map(snap.actors.map((a) => [a.name, a]));
  S.reminders = new Map((snap.reminders || []).map((r) => [r.id, r]));
  S.schedules = new Map((snap.schedules || []).map((r) => [r.id, r]));
  S.portConflicts = snap.port_conflicts || [];
  S.swarm = swarmFrom(snap.swarm);
  for (const a of snap.approvals) if (a.status === "pending") notified.add(`approval:${a.id}`);
  for (const q of snap.questions || []) notified.add(`question:${q.id}`);
  renderAll();
  renderPortConflicts();
}

// --- the stream and the one snapshot -------------------------------------------------------------

let source = null;
let generation = 0;

function streamUrl() {
  const meta = document.querySelector('meta[name="hive-event-kinds"]');
  const known = new Set((meta ? meta.content : "").split(",").filter(Boolean));
  const kinds = HANDLED.filter((k) => known.has(k));
  return `/api/dashboard/stream?kinds=${kinds.join(",")}`;
}

function setStatus(text, cls) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.className = `status ${cls}`;
}

async function connect() {
  const mine = ++generation;
  const buffered = [];
  let ready = false;
  const es = new EventSource(streamUrl());
  source = es;
  es.onmessage = (m) => {
    if (mine !== generation) return;
    let ev;
    try { ev = JSON.parse(m.data); } catch (e) { return; }
    if (ready) apply(ev); else buffered.push(ev);
  };
  es.onopen = () => { if (mine === generation) setStatus("● live", "live"); };
  es.onerror = () => {
    if (mine !== generation) return;
    if (es.readyState === EventSource.CLOSED) setStatus("✖ disconnected (reload or log in again)", "dead");
    else setStatus("⟳ reconnecting…", "reconnecting");
  };
  const resp = await fetch("/api/state", { credentials: "same-origin" });
  if (resp.status === 401) { location.href = "/login"; return; }
  if (!resp.ok) { setStatus(`✖ /api/state answered ${resp.status}`, "dead"); return; }
  const snap = await resp.json();
  if (mine !== generation) return;
  load(snap);
  ready = true;
  for (const ev of buffered.splice(0)) apply(ev);
  document.body.dataset.ready = "1";
}

function reconnect() {
  // the server cannot replay what we missed: a fresh stream, then the snapshot again
  if (source) source.close();
  connect();
}

// --- forms ----------------------------------------------------------------------------------------

async function submit(form, submitter) {
  let question = form.dataset.confirm;
  const condition = form.dataset.confirmIf && form.querySelector(`input[name="${form.dataset.confirmIf}"]`);
  if (condition && condition.checked) question = form.dataset.confirmThen;
  if (question && !window.confirm(question)) return;
  if (form.dataset.prompt) {
    const answer = window.prompt(form.dataset.prompt, "");
    if (answer === null) return;
    const field = form.querySelector(`input[name="${form.dataset.promptField || "note"}"]`);
    if (field) field.value = answer;
  }
  const body = new URLSearchParams();
  for (const [k, v] of new FormData(form)) if (typeof v === "string" && k !== "pick") body.append(k, v);
  if (form.dataset.join) {
    const [from, to] = form.dataset.join.split(":");
    const picked = [...form.querySelectorAll(`input[name="${from}"]:checked`)].map((i) => i.value);
    body.set(to, picked.join(form.dataset.joinWith || ","));
  }
  const button = submitter || form.querySelector("button[type=submit]");
  const spinner = el("span", { class: "spinner", "aria-hidden": "true" });
  button.disabled = true;
  button.append(spinner);
  form.classList.add("busy");
  try {
    const resp = await fetch(form.getAttribute("action"), {
      method: "POST", body, credentials: "same-origin", headers: S.csrf ? { "X-CSRF-Token": S.csrf } : {},
    });
    let answer = {};
    try { answer = await resp.json(); } catch (e) { answer = { ok: false, error: `HTTP ${resp.status}` }; }
    toast(resp.ok ? answer.message || "ok" : answer.error || `HTTP ${resp.status}`, resp.ok);
    if (resp.ok) {
      if (form.hasAttribute("data-reset")) form.reset();
      if (form.dataset.clear) form.querySelector(`[name="${form.dataset.clear}"]`).value = "";
      if (form.dataset.after === "logout") location.href = "/login";
    }
  } catch (e) {
    toast(`request failed: ${e}`, false);
  } finally {
    spinner.remove();
    button.disabled = false;
    form.classList.remove("busy");
    if (form.id === "meta-form") updateMetaSubmit();
  }
}

document.addEventListener("submit", (ev) => {
  const form = ev.target.closest("form[data-async]");
  if (!form) return;
  ev.preventDefault();
  submit(form, ev.submitter);
});
document.addEventListener("change", (ev) => {
  if (ev.target.matches("#meta-inputs input[name=pick]")) updateMetaSubmit();
});
document.getElementById("notify-toggle").addEventListener("click", toggleNotify);
renderNotifyToggle();
document.getElementById("approvals-toggle").addEventListener("click", () => {
  S.showHistory = !S.showHistory; renderApprovals();
});
// the pending overlay's elapsed timers tick locally; nothing here asks the server anything
setInterval(() => {
  const now = Date.now() / 1000;
  for (const span of document.querySelectorAll(".elapsed[data-since]")) span.textContent = ago(now - Number(span.dataset.since));
  for (const chip of document.querySelectorAll(".ttl[data-deadline]")) chip.textContent = ttlText(Number(chip.dataset.deadline));
  for (const b of document.querySelectorAll(".waiting[data-waiting-since]")) b.textContent = waitingText(Number(b.dataset.waitingSince));
  for (const s of document.querySelectorAll(".hive-head .seen[data-seen]")) s.textContent = `seen ${ago(now - Number(s.dataset.seen))} ago`;
}, 1000);

// --- audit trail (issue 19): GET /api/audit, newest page first, "older" pages back ---------------
const AUDIT_PAGE = 100;
let auditBefore = null;

function auditWho(r) {
  const bits = [`${r.principal}${r.via === "daemon" ? "" : "/" + r.via}`];
  if (Number.isInteger(r.uid)) bits.push(`uid ${r.uid}${r.user ? " " + r.user : ""}`);
  if (r.principal === "agent" && r.agent) bits.push(r.agent);
  if (r.session) bits.push(`session ${r.session}`);
  if (r.token) bits.push(r.token);
  if (r.client) bits.push(`from ${r.client}`);
  return bits.join(" ");
}

function auditRow(r) {
  const made = [...(r.jobs || []).map((j) => `job ${j}`), ...(r.approvals || []).map((a) => `approval ${a}`)];
  return el("div", { class: `row audit ${r.outcome}`, "data-seq": r.seq },
    el("div", { class: "row-head" },
      el("span", { class: "id", text: `#${r.seq}` }),
      el("span", { class: "time", text: new Date(r.at * 1000).toISOString().replace("T", " ").slice(0, 19) }),
      el("span", { class: "chip source", text: auditWho(r) }),
      el("span", { class: "kind", text: r.verb }),
      r.subject ? el("span", { class: "name", text: r.subject }) : null,
      made.length ? el("span", { class: "chip", text: made.join(", ") }) : null,
      el("span", { class: "state-text", text: r.outcome })),
    r.error ? longText("error", "", r.error, `audit:${r.seq}`) : null);
}

async function loadAudit(older) {
  const box = document.getElementById("audit-rows");
  const query = new URLSearchParams({ limit: String(AUDIT_PAGE) });
  if (older && auditBefore) query.set("before", String(auditBefore));
  const resp = await fetch(`/api/audit?${query}`, { credentials: "same-origin" });
  const body = await resp.json();
  if (!body.ok) { toast(`audit: ${body.error}`, false); return; }
  const rows = [...body.rows].reverse().map(auditRow);
  if (older) box.append(...rows);
  else box.replaceChildren(...(rows.length ? rows : [el("p", { class: "empty", text: "no audit rows yet" })]));
  auditBefore = body.before;
  document.getElementById("audit-older").hidden = !(body.before > 1 && body.rows.length === AUDIT_PAGE);
}

document.getElementById("audit-details").addEventListener("toggle", (ev) => {
  if (ev.target.open) loadAudit(false);
});
document.getElementById("audit-refresh").addEventListener("click", () => loadAudit(false));
document.getElementById("audit-older").addEventListener("click", () => loadAudit(true));
document.getElementById("audit-verify").addEventListener("click", async () => {
  const resp = await fetch("/api/audit?verify=1", { credentials: "same-origin" });
  const body = await resp.json();
  const v = body.verified;
  const out = document.getElementById("audit-verified");
  if (!body.ok) out.textContent = body.error;
  else if (v.ok) out.textContent = `chain verified: ${v.rows} rows`;
  else out.textContent = `row ${v.bad_seq} does not match: ${v.reason}`;
});

// a tab coming into view (tabs.js): its terminals that follow the newest line scroll to it, and
// the inbox, if it is now on screen, counts as read
document.addEventListener("hive:tabshown", (ev) => {
  for (const box of ev.detail.panel.querySelectorAll(".terminal")) if (box.dataset.stick !== "0") box.scrollTop = box.scrollHeight;
  renderUnread();
});
document.addEventListener("visibilitychange", renderUnread);

connect();
