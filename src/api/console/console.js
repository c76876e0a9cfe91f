// clonefs console: the clusters of one mounted store, from its API.
// The token comes from the URL's fragment (#token=...), is kept in sessionStorage
// and sent as Authorization: Bearer on every API call. Nothing else is stored.
"use strict";

const $ = (id) => document.getElementById(id);
let token = "";
let clusters = [];
let store = null;
let fresh = new Set(); // clusters to highlight once, just made

function takeToken() {
  const m = /(?:^|[#&])token=([^&]*)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem("clonefs-token", decodeURIComponent(m[1]));
    // Out of the address bar (and history), now that it is kept.
    history.replaceState(null, "", location.pathname + location.search);
  }
  token = sessionStorage.getItem("clonefs-token") || "";
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = {};
  if (token) headers["Authorization"] = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let r;
  try {
    r = await fetch("/api/v1" + path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store", credentials: "omit",
    });
  } catch (e) {
    throw new ApiError(0, "Unreachable", "cannot reach the clonefs daemon (is the store still mounted?): " + e.message);
  }
  if (r.status === 204) return null;
  const text = await r.text();
  let doc = null;
  try { doc = JSON.parse(text); } catch (_) { /* not JSON: said below */ }
  if (!r.ok) {
    const e = doc && doc.error;
    if (e) {
      let message = e.message;
      if (r.status === 401) message += ". Open the URL that `clonefs console MOUNTPOINT` prints.";
      throw new ApiError(r.status, e.code, message);
    }
    throw new ApiError(r.status, "HTTP " + r.status, text.slice(0, 200) || r.statusText);
  }
  return doc;
}

function showError(e) {
  $("error-code").textContent = (e.code || "Error") + ":";
  $("error-message").textContent = e.message;
  $("error").hidden = false;
  $("notice").hidden = true;
}

function notice(text) {
  // The latest outcome is what shows: a success clears an older error.
  $("error").hidden = true;
  const n = $("notice");
  n.textContent = text;
  n.hidden = false;
  clearTimeout(notice.timer);
  notice.timer = setTimeout(() => { n.hidden = true; }, 6000);
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let u = 0;
  while (n >= 1024 && u < units.length - 1) { n /= 1024; u++; }
  return (u === 0 ? n : n.toFixed(1)) + " " + units[u];
}

function age(created) {
  const s = Math.max(0, Date.now() / 1000 - created);
  if (s < 60) return "just now";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  if (s < 86400) return Math.floor(s / 3600) + " h ago";
  return Math.floor(s / 86400) + " d ago";
}

// The rule of src/volume/catalog.rs validate_name, to say so as one types.
function nameProblem(name) {
  if (name === "") return "type an identifier";
  if (name.length > 63) return "at most 63 characters (" + name.length + " now)";
  if (!/^[A-Za-z]/.test(name)) return "must start with a letter";
  const bad = name.match(/[^A-Za-z0-9-]/);
  if (bad) return "only letters, digits and hyphens: not “" + bad[0] + "”";
  if (name.includes("--")) return "no two hyphens in a row";
  if (name.endsWith("-")) return "must not end with a hyphen";
  if (clusters.some((c) => c.name === name)) return "a cluster " + name + " already exists";
  return "";
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function button(text, title, onclick) {
  const b = el("button", "", text);
  b.type = "button";
  b.title = title;
  b.addEventListener("click", onclick);
  return b;
}

function card(c, maxLogical) {
  const d = el("div", "card" + (fresh.has(c.name) ? " new" : ""));
  d.dataset.cluster = c.name;
  const who = el("div");
  who.append(el("span", "name", c.name));
  if (c.protected) who.append(el("span", "badge protected", "protected"));
  if (c.expires_at) {
    const b = el("span", "badge expires", "expires " + new Date(c.expires_at).toLocaleString());
    who.append(b);
  }
  const meta = el("div", "meta", "created " + age(c.created) + (c.parent ? " · from " + c.parent : ""));
  meta.title = new Date(c.created * 1000).toLocaleString();
  who.append(meta);

  const space = el("div", "space");
  const bar = el("div", "bar");
  bar.style.width = Math.max(2, (100 * c.logical) / Math.max(1, maxLogical)) + "%";
  const shared = el("span", "shared");
  const unique = el("span", "unique");
  const total = Math.max(1, c.shared + c.unique);
  shared.style.width = (100 * c.shared) / total + "%";
  unique.style.width = (100 * c.unique) / total + "%";
  bar.append(shared, unique);
  space.append(bar, el("div", "text", bytes(c.logical) + ": " + bytes(c.shared) + " shared, " + bytes(c.unique) + " unique"));

  const actions = el("div", "actions");
  actions.append(button("Create clone", "clone " + c.name, () => openClone(c.name)));
  if (c.parent) actions.append(button("Reset", "replace its contents with " + c.parent + "'s latest", () => askReset(c)));
  actions.append(button(c.protected ? "Unprotect" : "Protect", c.protected ? "allow delete and reset" : "forbid delete and reset",
    () => act(api("PATCH", "/clusters/" + c.name, { protected: !c.protected }), (c.protected ? "unprotected " : "protected ") + c.name)));
  const del = button("Delete", "delete " + c.name, () => askDelete(c));
  del.className = "danger";
  actions.append(del);
  d.append(who, space, actions);
  return d;
}

function render() {
  const used = store.capacity ? (100 * store.used) / store.capacity : 0;
  $("used-bar").style.width = used + "%";
  $("capacity-text").textContent = bytes(store.used) + " used of " + bytes(store.capacity) + " · " + bytes(store.free) + " free";
  $("store").textContent = store.store;

  const names = new Set(clusters.map((c) => c.name));
  const kids = new Map();
  const roots = [];
  const ghosts = new Set();
  for (const c of clusters) {
    if (!c.parent) { roots.push(c.name); continue; }
    if (!names.has(c.parent) && !ghosts.has(c.parent)) { ghosts.add(c.parent); roots.push(c.parent); }
    if (!kids.has(c.parent)) kids.set(c.parent, []);
    kids.get(c.parent).push(c.name);
  }
  const byName = new Map(clusters.map((c) => [c.name, c]));
  const maxLogical = Math.max(1, ...clusters.map((c) => c.logical));
  const node = (name) => {
    const n = el("div", "node");
    if (byName.has(name)) {
      n.append(card(byName.get(name), maxLogical));
    } else {
      const g = el("div", "card deleted");
      g.append(el("span", "", name + " (deleted)"));
      g.dataset.deleted = name;
      n.append(g);
    }
    const k = kids.get(name) || [];
    if (k.length) {
      const ch = el("div", "children");
      for (const x of k) ch.append(node(x));
      n.append(ch);
    }
    return n;
  };
  const tree = $("tree");
  tree.replaceChildren();
  if (!roots.length) tree.append(el("p", "empty", "No clusters yet: mkdir MOUNTPOINT/NAME makes one."));
  for (const r of roots) tree.append(node(r));
  fresh.clear();
}

async function refresh() {
  try {
    const doc = await api("GET", "/clusters");
    store = doc;
    clusters = doc.clusters;
    render();
  } catch (e) {
    showError(e);
  }
}

async function act(promise, done) {
  try {
    await promise;
    notice(done);
    $("error").hidden = true;
  } catch (e) {
    showError(e);
  }
  await refresh();
}

function confirmThen(title, text, ok, run) {
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = ok;
  $("confirm-form").onsubmit = (ev) => {
    ev.preventDefault();
    $("confirm-dialog").close();
    run();
  };
  $("confirm-dialog").showModal();
}

function askDelete(c) {
  const frees = c.unique + (c.restore_only || 0);
  confirmThen("Delete " + c.name + "?",
    "This frees " + bytes(frees) + " (" + bytes(c.unique) + " only it holds + " + bytes(c.restore_only || 0) +
    " only its restore points hold). Its files are gone; clusters cloned from it keep theirs.",
    "Delete " + c.name,
    () => act(api("DELETE", "/clusters/" + c.name), "deleted " + c.name));
}

function askReset(c) {
  confirmThen("Reset " + c.name + "?",
    "Its contents are replaced by " + c.parent + "'s latest; what changed in " + c.name + " since is lost.",
    "Reset " + c.name,
    () => act(api("POST", "/clusters/" + c.name + "/reset", {}), "reset " + c.name + " to " + c.parent));
}

function checkName() {
  const input = $("clone-name");
  const problem = nameProblem(input.value);
  const check = $("clone-name-check");
  check.textContent = problem ? problem : "✓ " + input.value + " is a valid identifier";
  check.className = "check " + (problem ? "bad" : "good");
  input.classList.toggle("invalid", !!problem && input.value !== "");
  input.classList.toggle("valid", !problem);
  $("clone-submit").disabled = !!problem || !$("clone-source").value;
}

function openClone(source) {
  const sel = $("clone-source");
  sel.replaceChildren();
  for (const c of clusters) {
    const o = el("option", "", c.name);
    o.value = c.name;
    sel.append(o);
  }
  if (source) sel.value = source;
  $("clone-name").value = "";
  $("clone-time").value = "";
  $("clone-expiry").value = "";
  $("clone-error").hidden = true;
  checkName();
  $("clone-dialog").showModal();
  $("clone-name").focus();
}

async function submitClone(ev) {
  ev.preventDefault();
  const src = $("clone-source").value;
  const req = { name: $("clone-name").value };
  const t = $("clone-time").value.trim();
  const x = $("clone-expiry").value.trim();
  if (t) req.restore_to_time = t;
  if (x) req.expires_in = x;
  $("clone-submit").disabled = true;
  try {
    const made = await api("POST", "/clusters/" + src + "/clones", req);
    $("clone-dialog").close();
    fresh.add(made.cluster.name);
    notice("created " + made.cluster.name + " from " + src + " (image of " + new Date(made.image_time).toLocaleString() + ")");
    await refresh();
  } catch (e) {
    const f = $("clone-error");
    f.textContent = e.code + ": " + e.message;
    f.hidden = false;
    showError(e);
    checkName();
  }
}

// The event stream, read with fetch (EventSource cannot send the token).
async function listen() {
  const live = $("live");
  for (;;) {
    try {
      const headers = token ? { Authorization: "Bearer " + token } : {};
      const r = await fetch("/api/v1/events", { headers, cache: "no-store", credentials: "omit" });
      if (!r.ok) throw new Error("events: HTTP " + r.status);
      live.textContent = "live";
      live.className = "live on";
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          for (const line of block.split("\n")) {
            if (!line.startsWith("data:")) continue;
            const ev = JSON.parse(line.slice(5));
            if (ev.type === "created") fresh.add(ev.cluster);
            if (ev.type === "expired") notice(ev.cluster + " expired and was deleted");
            await refresh();
          }
        }
      }
    } catch (_) { /* said below, then retried */ }
    live.textContent = "reconnecting…";
    live.className = "live off";
    await new Promise((ok) => setTimeout(ok, 3000));
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  takeToken();
  $("error-close").addEventListener("click", () => { $("error").hidden = true; });
  $("create-clone").addEventListener("click", () => openClone(clusters.length ? clusters[0].name : ""));
  $("clone-name").addEventListener("input", checkName);
  $("clone-source").addEventListener("change", checkName);
  $("clone-form").addEventListener("submit", submitClone);
  $("clone-cancel").addEventListener("click", () => $("clone-dialog").close());
  $("confirm-cancel").addEventListener("click", () => $("confirm-dialog").close());
  await refresh();
  // After the first picture: a page that only renders once (a snapshot) has it.
  setTimeout(listen, 200);
});
