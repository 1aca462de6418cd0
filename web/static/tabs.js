// hive-c0re dashboard tabs: hash routes (#swarm, #call, #system, #schedules, …) over the page's
// sections, built once from the sections present at load, so a new section needs no change here:
//   <section id="x" data-tab="system">           joins the SYST3M tab (no data-tab: a tab of its own,
//                                                 named by its id, labelled by its <h2>)
//   data-tab-label="◆ SYST3M ◆"                  the tab's label (on any one of its sections)
//   data-tab-count="call-count inbox-unread"     ids of count elements; the tab's pill shows their sum
// Switching tabs only shows and hides what is already live: nothing is fetched, the one snapshot and
// the one SSE stream keep every tab current. Unknown or empty hash → SW4RM. Back/forward follow the
// hash; the tab list is a WAI-ARIA tablist (arrow keys, Home, End). The header (warnings) is outside.
"use strict";

(() => {
  const DEFAULT_TAB = "swarm";
  const main = document.querySelector("main");
  const nav = document.getElementById("tabs");
  const tabs = new Map(); // name -> {name, button, panel, pill, counts: [element ids], label}
  if (!main || !nav) return; // no tab list in the page: every section stays shown, as one page

  function slug(text) { return String(text || "").toLowerCase().replace(/[^a-z0-9_-]/g, ""); }

  function headingText(section) {
    const h2 = section.querySelector("h2");
    if (!h2) return section.id || "?";
    const copy = h2.cloneNode(true);
    for (const pill of copy.querySelectorAll(".pill")) pill.remove();
    return copy.textContent.trim();
  }

  for (const section of [...main.querySelectorAll(":scope > section")]) {
    const name = slug(section.dataset.tab) || slug(section.id) || "more";
    let tab = tabs.get(name);
    if (!tab) {
      const panel = document.createElement("div");
      panel.className = "tabpanel";
      panel.id = `tabpanel-${name}`;
      panel.setAttribute("role", "tabpanel");
      panel.setAttribute("aria-labelledby", `tab-${name}`);
      panel.tabIndex = 0;
      panel.hidden = true;
      main.insertBefore(panel, section);
      tab = { name, panel, counts: [], label: null, fallback: headingText(section) };
      tabs.set(name, tab);
    }
    tab.panel.append(section);
    if (!tab.label && section.dataset.tabLabel) tab.label = section.dataset.tabLabel;
    for (const id of (section.dataset.tabCount || "").split(/\s+/)) if (id) tab.counts.push(id);
  }

  for (const tab of tabs.values()) {
    const button = document.createElement("button");
    button.type = "button";
    button.id = `tab-${tab.name}`;
    button.className = "tab";
    button.dataset.tab = tab.name;
    button.setAttribute("role", "tab");
    button.setAttribute("aria-controls", tab.panel.id);
    button.setAttribute("aria-selected", "false");
    button.tabIndex = -1;
    button.append(document.createTextNode(tab.label || tab.fallback));
    if (tab.counts.length) {
      tab.pill = document.createElement("span");
      tab.pill.className = "pill tab-pill";
      tab.pill.id = `tab-pill-${tab.name}`;
      button.append(" ", tab.pill);
    }
    tab.button = button;
    nav.append(button);
  }

  // a pill mirrors its tab's declared counts, whenever any of them is rewritten
  function renderPill(tab) {
    let sum = 0;
    for (const id of tab.counts) {
      const n = parseInt((document.getElementById(id) || {}).textContent, 10);
      if (Number.isFinite(n)) sum += n;
    }
    tab.pill.textContent = String(sum);
    tab.pill.classList.toggle("zero", sum === 0);
  }
  for (const tab of tabs.values()) {
    if (!tab.pill) continue;
    const observer = new MutationObserver(() => renderPill(tab));
    for (const id of tab.counts) {
      const node = document.getElementById(id);
      if (node) observer.observe(node, { childList: true, characterData: true, subtree: true });
    }
    renderPill(tab);
  }

  function routed() {
    let want = "";
    try { want = slug(decodeURIComponent(location.hash.slice(1))); } catch (e) { want = ""; }
    if (tabs.has(want)) return want;
    return tabs.has(DEFAULT_TAB) ? DEFAULT_TAB : tabs.keys().next().value;
  }

  let current = null;
  function show(name) {
    if (!name || name === current) return;
    current = name;
    for (const tab of tabs.values()) {
      const on = tab.name === name;
      tab.panel.hidden = !on;
      tab.button.setAttribute("aria-selected", String(on));
      tab.button.tabIndex = on ? 0 : -1;
      tab.button.classList.toggle("active", on);
    }
    document.body.dataset.tab = name;
    window.scrollTo(0, 0);
    document.dispatchEvent(new CustomEvent("hive:tabshown", { detail: { tab: name, panel: tabs.get(name).panel } }));
  }

  // a click pushes a history entry (back/forward walk the tabs); no jump to the section's anchor
  function go(name) {
    if (`#${name}` !== location.hash) history.pushState(null, "", `#${name}`);
    show(name);
  }

  nav.setAttribute("role", "tablist");
  nav.addEventListener("click", (ev) => {
    const button = ev.target.closest("button[role=tab]");
    if (button) go(button.dataset.tab);
  });
  nav.addEventListener("keydown", (ev) => {
    const buttons = [...nav.querySelectorAll("button[role=tab]")];
    const at = buttons.indexOf(document.activeElement);
    if (at < 0) return;
    const to = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: buttons.length - 1 }[ev.key];
    if (to === undefined) return;
    ev.preventDefault();
    const next = buttons[(to + buttons.length) % buttons.length];
    go(next.dataset.tab);
    next.focus();
  });
  window.addEventListener("popstate", () => show(routed()));
  window.addEventListener("hashchange", () => show(routed()));
  show(routed());
})();
