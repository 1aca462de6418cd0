// Log in with the operator token: from the form, or from the #token=… fragment of the logged URL
// (a fragment never reaches the server's logs); the fragment is wiped from the address bar at once.
"use strict";
async function login(token) {
  // the token goes in the Authorization header: the dashboard's listener then counts this request
  // as the operator's (slots agents without credentials cannot take), before the body is read
  const resp = await fetch("/login", {
    method: "POST",
    headers: { Authorization: `Bearer ${token.trim()}` },
    credentials: "same-origin",
  });
  let answer = {};
  try { answer = await resp.json(); } catch (e) { answer = { error: `HTTP ${resp.status}` }; }
  if (resp.ok) { location.replace("/"); return; }
  document.getElementById("login-error").textContent = answer.error || `HTTP ${resp.status}`;
}
document.getElementById("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  login(document.getElementById("token").value);
});
const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
if (fromHash) {
  history.replaceState(null, "", "/login");
  login(fromHash);
}
