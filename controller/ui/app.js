// Goldilocks web view: draws GET /v1/fabric with Cytoscape.js and keeps it live, with panels for
// the policy, explain, quarantine and the audit log.
//
// Safety, by construction:
// - The token lives in one closure variable: never in a URL, cookie, localStorage or sessionStorage.
//   Reloading the page signs out.
// - Every request carries it as `Authorization: Bearer`. The browser never attaches that header by
//   itself, so another site cannot make a signed-in browser write (no ambient credential: CSRF has
//   nothing to ride on), and the API answers no CORS preflight, so it cannot read either.
// - Every string from the server reaches the page through textContent or Cytoscape's canvas labels,
//   never innerHTML: a VM's name or a quarantine reason is shown as text, whatever it holds.
"use strict";

(function () {
  const POLL_MS = 500; // the fabric: a 304 while nothing changes, so polls are cheap
  const PANEL_POLL_MS = 2000; // policy and audit panels
  const AUDIT_ROWS = 30;
  const REQUEST_TIMEOUT_MS = 10000;

  let token = null; // the only copy
  let role = null;
  let cy = null;
  let fabric = null;
  let fabricEtag = null;
  let clockSkew = 0; // the controller's clock (X-Server-Time) - ours, seconds
  let lastFabricOk = 0;
  let timers = [];
  let generation = 0; // bumped at sign-out: answers to an older session are dropped
  const seenLinks = new Map(); // link id -> link, to draw a link that vanished as lost

  const $ = (id) => document.getElementById(id);

  // -- talking to the controller ---------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, message, field) {
      super(message);
      this.status = status;
      this.field = field;
    }
  }

  async function api(method, path, body, extraHeaders) {
    const headers = { Authorization: "Bearer " + token, ...(extraHeaders || {}) };
    const init = {
      method,
      headers,
      cache: "no-store",
      credentials: "omit",
      redirect: "error",
      referrerPolicy: "no-referrer",
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS), // a hung request must not stall the polling
    };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (response.status === 304 || response.status === 204) {
      return { status: response.status, headers: response.headers, body: null };
    }
    let doc = null;
    try {
      doc = await response.json();
    } catch (e) {
      doc = null;
    }
    if (!response.ok) {
      const message = doc && typeof doc.error === "string" ? doc.error : "HTTP " + response.status;
      throw new ApiError(response.status, message, doc && doc.field);
    }
    return { status: response.status, headers: response.headers, body: doc };
  }

  function describeError(err) {
    if (err instanceof ApiError) {
      return `${err.status}: ${err.message}` + (err.field ? ` (field: ${err.field})` : "");
    }
    return "the controller cannot be reached (" + (err && err.message ? err.message : String(err)) + ")";
  }

  function showError(text) {
    const el = $("error");
    el.textContent = text;
    el.hidden = !text;
  }

  // -- sign-in -----------------------------------------------------------------------------------
  async function signIn(candidate) {
    token = candidate;
    let who;
    try {
      who = (await api("GET", "/v1/whoami")).body;
    } catch (err) {
      token = null;
      const message = err instanceof ApiError && err.status === 401 ? "That token is not valid." : describeError(err);
      const el = $("signin-error");
      el.textContent = message;
      el.hidden = false;
      return;
    }
    role = who.role;
    $("token").value = "";
    $("signin-error").hidden = true;
    $("who").textContent = `${who.name} (${who.role})`;
    $("signin").hidden = true;
    $("session").hidden = false;
    $("main").hidden = false;
    document.body.dataset.role = role;
    const admin = role === "admin";
    for (const el of document.querySelectorAll(".admin-only")) {
      el.hidden = !admin;
      for (const control of el.querySelectorAll("input, select, button")) control.disabled = !admin;
    }
    $("read-only-note").hidden = admin;
    startView();
  }

  function signOut(message) {
    generation += 1;
    for (const t of timers) clearTimeout(t);
    timers = [];
    token = null;
    role = null;
    fabric = null;
    fabricEtag = null;
    seenLinks.clear();
    if (cy) {
      cy.destroy();
      cy = null;
    }
    window.goldilocksView.cy = null;
    $("main").hidden = true;
    $("session").hidden = true;
    $("signin").hidden = false;
    delete document.body.dataset.role;
    const el = $("signin-error");
    el.textContent = message || "";
    el.hidden = !message;
  }

  function onAuthFailure(err) {
    if (err instanceof ApiError && err.status === 401) {
      signOut("The token is no longer valid: sign in again.");
      return true;
    }
    return false;
  }

  // -- the graph --------------------------------------------------------------------------------
  function cssColour(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function graphStyle() {
    const c = (name) => cssColour(name);
    return [
      {
        selector: "node",
        style: {
          label: "data(label)",
          color: c("--label"),
          "font-size": 11,
          "text-wrap": "wrap",
          "text-valign": "bottom",
          "text-margin-y": 4,
          "text-background-color": c("--label-bg"),
          "text-background-opacity": 0.75,
          "text-background-padding": 2,
          "border-width": 0,
        },
      },
      { selector: "node.fabric", style: { shape: "round-rectangle", width: 70, height: 28, "background-color": c("--fabric"), "text-valign": "center", "text-margin-y": 0, "text-background-opacity": 0, color: "#ffffff", "font-weight": "bold" } },
      { selector: "node.hypervisor", style: { shape: "round-rectangle", width: 80, height: 30, "background-color": c("--hypervisor"), "text-valign": "center", "text-margin-y": 0, "text-background-opacity": 0, color: "#ffffff", "font-weight": "bold" } },
      { selector: "node.disconnected", style: { "background-opacity": 0.35, "border-width": 2, "border-style": "dashed", "border-color": c("--lost") } },
      { selector: "node.vm", style: { shape: "ellipse", width: 26, height: 26, "background-color": c("--vm"), "text-max-width": 100 } },
      { selector: "node.host", style: { shape: "ellipse", width: 18, height: 18, "background-color": c("--host") } },
      {
        selector: "node.quarantined",
        style: { "background-color": c("--bg"), "border-width": 4, "border-color": c("--quarantined"), color: c("--quarantined"), "font-weight": "bold" },
      },
      { selector: "node:selected", style: { "overlay-color": c("--accent"), "overlay-opacity": 0.25, "overlay-padding": 6 } },
      { selector: "edge", style: { width: 3, "curve-style": "straight", "line-color": c("--up") } },
      { selector: "edge.attach", style: { width: 1.5, "line-color": c("--border") } },
      { selector: "edge.link-unconfirmed", style: { "line-color": c("--unconfirmed"), "line-style": "dotted" } },
      { selector: "edge.link-lost, edge.link-down", style: { "line-color": c("--lost"), "line-style": "dashed" } },
      {
        selector: "edge.tunnel",
        style: {
          "curve-style": "unbundled-bezier",
          "control-point-distances": "data(bend)",
          "control-point-weights": 0.5,
          "line-style": "dashed",
          "line-dash-pattern": [8, 4],
          width: 2.5,
          label: "data(label)",
          "font-size": 10,
          color: c("--label"),
          "text-background-color": c("--label-bg"),
          "text-background-opacity": 0.85,
          "text-background-padding": 2,
          "text-rotation": "none",
        },
      },
      { selector: "edge.tunnel-up", style: { "line-color": c("--tunnel-up") } },
      { selector: "edge.tunnel-pending", style: { "line-color": c("--tunnel-pending") } },
      { selector: "edge.tunnel-down", style: { "line-color": c("--tunnel-down") } },
      { selector: "edge:selected", style: { "overlay-color": c("--accent"), "overlay-opacity": 0.25 } },
    ];
  }

  const naturally = (a, b) => a.localeCompare(b, undefined, { numeric: true });

  function age(seconds) {
    if (seconds < 90) return `${Math.max(0, Math.round(seconds))} s`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
    return `${Math.round(seconds / 3600)} h`;
  }

  function handshakeAge(tunnel) {
    if (tunnel.latest_handshake == null) return null;
    return Date.now() / 1000 + clockSkew - tunnel.latest_handshake;
  }

  function tunnelLabel(tunnel) {
    const ageSeconds = handshakeAge(tunnel);
    return `${tunnel.state} · ` + (ageSeconds == null ? "no handshake yet" : `handshake ${age(ageSeconds)} ago`);
  }

  function vmLabel(vm) {
    const lines = [vm.name];
    for (const key of Object.keys(vm.labels).sort()) lines.push(`${key}=${vm.labels[key]}`);
    if (vm.quarantine) {
      const reason = vm.quarantine.reason;
      lines.push("QUARANTINED", reason.length > 48 ? reason.slice(0, 47) + "…" : reason);
    }
    return lines.join("\n");
  }

  // Elements (with positions) for a fabric: hypervisors on one row, VMs under them, and each fabric
  // switch a row above the switches it reaches first (leaves above hypervisors, spines above leaves).
  function elementsOf(doc) {
    const byDpid = new Map(doc.switches.map((s) => [s.dpid, s]));
    const neighbours = new Map(doc.switches.map((s) => [s.dpid, new Set()]));
    for (const link of doc.links) {
      if (neighbours.has(link.a) && neighbours.has(link.b)) {
        neighbours.get(link.a).add(link.b);
        neighbours.get(link.b).add(link.a);
      }
    }
    const level = new Map();
    let frontier = doc.switches.filter((s) => s.role === "hypervisor").map((s) => s.dpid);
    frontier.forEach((d) => level.set(d, 0));
    while (frontier.length) {
      const next = [];
      for (const dpid of frontier) {
        for (const other of neighbours.get(dpid)) {
          if (!level.has(other)) {
            level.set(other, level.get(dpid) + 1);
            next.push(other);
          }
        }
      }
      frontier = next;
    }
    const top = Math.max(1, ...level.values());
    for (const s of doc.switches) if (!level.has(s.dpid)) level.set(s.dpid, s.role === "hypervisor" ? 0 : top);

    const guests = new Map(); // dpid -> [vm or host]
    const place = (dpid, item) => {
      if (!guests.has(dpid)) guests.set(dpid, []);
      guests.get(dpid).push(item);
    };
    for (const vm of doc.vms) if (vm.location && byDpid.has(vm.location.dpid)) place(vm.location.dpid, { vm });
    for (const host of doc.hosts) if (byDpid.has(host.dpid)) place(host.dpid, { host });

    const ROW = 130;
    const GUEST = 110;
    const position = new Map();
    const rows = new Map();
    for (const s of doc.switches) {
      const l = level.get(s.dpid);
      if (!rows.has(l)) rows.set(l, []);
      rows.get(l).push(s);
    }
    // Bottom row: hypervisors by name, each as wide as its guests need.
    const hypervisors = (rows.get(0) || []).sort((a, b) => naturally(a.name, b.name));
    let x = 0;
    for (const s of hypervisors) {
      const width = Math.max(1, (guests.get(s.dpid) || []).length) * GUEST;
      position.set(s.dpid, { x: x + width / 2, y: top * ROW });
      x += width + 30;
    }
    const span = Math.max(x - 30, GUEST);
    // Each row above: ordered by where its neighbours below are, then spread across the width.
    for (let l = 1; l <= top; l++) {
      const row = rows.get(l) || [];
      const keyOf = (s) => {
        const below = [...neighbours.get(s.dpid)].filter((d) => position.has(d) && level.get(d) < l);
        return below.length ? below.reduce((sum, d) => sum + position.get(d).x, 0) / below.length : span / 2;
      };
      row.sort((a, b) => keyOf(a) - keyOf(b) || naturally(a.name, b.name));
      row.forEach((s, i) => position.set(s.dpid, { x: ((i + 0.5) * span) / row.length, y: (top - l) * ROW }));
    }
    for (const s of doc.switches) if (!position.has(s.dpid)) position.set(s.dpid, { x: span / 2, y: 0 });

    const elements = [];
    for (const s of doc.switches) {
      const classes = [s.role, s.connected ? "connected" : "disconnected"];
      elements.push({
        group: "nodes",
        data: { id: "sw:" + s.dpid, kind: "switch", name: s.name, role: s.role, label: s.name || s.dpid, dpid: s.dpid },
        position: position.get(s.dpid),
        classes: classes.join(" "),
      });
    }
    for (const [dpid, items] of guests) {
      const centre = position.get(dpid);
      items.sort((a, b) => naturally(a.vm ? a.vm.name : "~" + a.host.mac, b.vm ? b.vm.name : "~" + b.host.mac));
      items.forEach((item, i) => {
        const at = { x: centre.x + (i - (items.length - 1) / 2) * GUEST, y: centre.y + 95 };
        const id = item.vm ? "vm:" + item.vm.name : "host:" + item.host.mac;
        const data = item.vm
          ? { id, kind: "vm", name: item.vm.name, label: vmLabel(item.vm), quarantined: item.vm.quarantine ? item.vm.quarantine.reason : "" }
          : { id, kind: "host", name: item.host.mac, label: [item.host.mac, ...item.host.ips].join("\n") };
        elements.push({ group: "nodes", data, position: at, classes: item.vm ? "vm" + (item.vm.quarantine ? " quarantined" : "") : "host" });
        elements.push({ group: "edges", data: { id: "at:" + id, source: id, target: "sw:" + dpid }, classes: "attach" });
      });
    }
    // Inventory VMs the network has not seen: a row of their own below, unattached.
    const unplaced = doc.vms.filter((vm) => !(vm.location && byDpid.has(vm.location.dpid)));
    unplaced.forEach((vm, i) => {
      elements.push({
        group: "nodes",
        data: { id: "vm:" + vm.name, kind: "vm", name: vm.name, label: vmLabel(vm) + "\n(not seen)", quarantined: vm.quarantine ? vm.quarantine.reason : "" },
        position: { x: i * GUEST, y: top * ROW + 230 },
        classes: "vm" + (vm.quarantine ? " quarantined" : ""),
      });
    });

    const current = new Set();
    for (const link of doc.links) {
      const id = `ln:${link.a}:${link.a_port}-${link.b}:${link.b_port}`;
      current.add(id);
      seenLinks.set(id, link);
      elements.push({ group: "edges", data: { id, source: "sw:" + link.a, target: "sw:" + link.b, kind: "link", state: link.state }, classes: "link link-" + link.state });
    }
    // A link seen before that went away while one of its ports is down or held as lost: drawn so.
    // (Only this page remembers it: a page opened later does not draw it at all.)
    const deadPorts = new Map();
    for (const s of doc.switches) {
      for (const p of s.lost_ports) deadPorts.set(`${s.dpid}:${p}`, "lost");
      for (const p of s.down_ports) deadPorts.set(`${s.dpid}:${p}`, "down");
    }
    for (const [id, link] of seenLinks) {
      if (current.has(id)) continue;
      const state = deadPorts.get(`${link.a}:${link.a_port}`) || deadPorts.get(`${link.b}:${link.b_port}`);
      if (!byDpid.has(link.a) || !byDpid.has(link.b) || !state) {
        seenLinks.delete(id);
        continue;
      }
      elements.push({ group: "edges", data: { id, source: "sw:" + link.a, target: "sw:" + link.b, kind: "link", state }, classes: "link link-" + state });
    }

    const switchOfAgent = new Map(doc.switches.filter((s) => s.agent).map((s) => [s.agent, s.dpid]));
    doc.tunnels.forEach((t, i) => {
      const a = switchOfAgent.get(t.a);
      const b = switchOfAgent.get(t.b);
      if (!a || !b) return;
      const [left, right] = position.get(a).x <= position.get(b).x ? [a, b] : [b, a];
      const distance = Math.abs(position.get(right).x - position.get(left).x);
      elements.push({
        group: "edges",
        data: { id: `tn:${t.a}|${t.b}`, source: "sw:" + left, target: "sw:" + right, kind: "tunnel", state: t.state, pair: `${t.a}|${t.b}`, label: tunnelLabel(t), bend: -(40 + distance * 0.18 + (i % 3) * 18) },
        classes: "tunnel tunnel-" + t.state,
      });
    });
    return elements;
  }

  function drawFabric(doc) {
    const elements = elementsOf(doc);
    if (!cy) {
      cy = cytoscape({
        container: $("graph"),
        elements,
        style: graphStyle(),
        layout: { name: "preset", fit: true, padding: 40 },
        minZoom: 0.2,
        maxZoom: 3,
        boxSelectionEnabled: false,
      });
      cy.on("tap", "node, edge", (event) => select(event.target.id()));
      cy.on("tap", (event) => {
        if (event.target === cy) select(null);
      });
      window.goldilocksView.cy = cy;
      fitGraph();
      return;
    }
    const wanted = new Set(elements.map((e) => e.data.id));
    let added = false;
    cy.batch(() => {
      cy.elements().forEach((el) => {
        if (!wanted.has(el.id())) el.remove();
      });
      for (const e of elements) {
        const el = cy.getElementById(e.data.id);
        if (el.empty()) {
          cy.add(e);
          added = true;
        } else {
          el.data(e.data);
          el.classes(e.classes || "");
          if (e.position) el.position(e.position);
        }
      }
    });
    if (added) fitGraph();
  }

  function fitGraph() {
    cy.fit(undefined, 40);
    if (cy.zoom() > 1.6) {
      cy.zoom(1.6);
      cy.center();
    }
  }

  function refreshTunnelAges() {
    if (!cy || !fabric) return;
    for (const t of fabric.tunnels) {
      const edge = cy.getElementById(`tn:${t.a}|${t.b}`);
      if (!edge.empty()) edge.data("label", tunnelLabel(t));
    }
    const live = $("live");
    const since = (Date.now() - lastFabricOk) / 1000;
    live.textContent = since < 3 ? "live" : `no answer for ${age(since)}`;
    live.className = "live " + (since < 3 ? "ok" : "stale");
    if (selected) showSelection();
  }

  // -- selection details ----------------------------------------------------------------------
  let selected = null;

  function select(id) {
    selected = id;
    showSelection();
    if (id && id.startsWith("vm:")) {
      const name = id.slice(3);
      for (const picker of [$("quarantine-vm"), $("explain-src")]) {
        if (!picker.disabled && [...picker.options].some((o) => o.value === name)) picker.value = name;
      }
    }
  }

  function detailRows(pairs) {
    const dl = $("selection-details");
    dl.replaceChildren();
    for (const [term, value] of pairs) {
      const dt = document.createElement("dt");
      dt.textContent = term;
      const dd = document.createElement("dd");
      dd.textContent = value;
      dl.append(dt, dd);
    }
  }

  function showSelection() {
    const title = $("selection");
    if (!selected || !fabric) {
      title.textContent = "Click a switch, VM or tunnel.";
      title.className = "muted";
      detailRows([]);
      return;
    }
    title.className = "";
    if (selected.startsWith("vm:")) {
      const vm = fabric.vms.find((v) => v.name === selected.slice(3));
      if (!vm) return select(null);
      title.textContent = "VM " + vm.name;
      const rows = [
        ["labels", Object.entries(vm.labels).map(([k, v]) => `${k}=${v}`).join(", ") || "none"],
        ["MACs", vm.macs.join(", ")],
        ["IPs", vm.ips.join(", ") || "none"],
        ["where", vm.location ? `${switchName(vm.location.dpid)} port ${vm.location.port}` : "not seen yet"],
      ];
      if (vm.quarantine) {
        rows.push(["quarantine", `${vm.quarantine.mode}, by ${vm.quarantine.actor}, ${age(Date.now() / 1000 + clockSkew - vm.quarantine.since)} ago`]);
        rows.push(["reason", vm.quarantine.reason]);
      }
      detailRows(rows);
    } else if (selected.startsWith("sw:")) {
      const s = fabric.switches.find((x) => x.dpid === selected.slice(3));
      if (!s) return select(null);
      title.textContent = `${s.role === "hypervisor" ? "Hypervisor" : "Switch"} ${s.name}`;
      detailRows([
        ["dpid", s.dpid],
        ["role", s.role],
        ["connected", s.connected ? "yes" : "no"],
        ["agent", s.agent || "none"],
        ["ports down", s.down_ports.join(", ") || "none"],
        ["lost links on ports", s.lost_ports.join(", ") || "none"],
      ]);
    } else if (selected.startsWith("tn:")) {
      const t = fabric.tunnels.find((x) => `tn:${x.a}|${x.b}` === selected);
      if (!t) return select(null);
      const ageSeconds = handshakeAge(t);
      title.textContent = `Tunnel ${t.a} ⇄ ${t.b}`;
      detailRows([
        ["state", t.state],
        ["latest handshake", ageSeconds == null ? "never" : `${age(ageSeconds)} ago`],
        ["needed by a rule", t.needed ? "yes" : "no"],
      ]);
    } else if (selected.startsWith("ln:")) {
      const edge = cy && cy.getElementById(selected);
      title.textContent = "Link";
      if (edge && !edge.empty()) {
        detailRows([
          ["between", `${switchName(edge.source().data("dpid"))} and ${switchName(edge.target().data("dpid"))}`],
          ["state", edge.data("state")],
        ]);
      }
    } else {
      title.textContent = selected;
      detailRows([]);
    }
  }

  function switchName(dpid) {
    const s = fabric && fabric.switches.find((x) => x.dpid === dpid);
    return s ? s.name || dpid : dpid;
  }

  // -- panels fed by the fabric ---------------------------------------------------------------
  function fillSelect(select, names) {
    const keep = select.value;
    const current = [...select.options].map((o) => o.value);
    if (current.length === names.length && current.every((n, i) => n === names[i])) return;
    select.replaceChildren(
      ...names.map((name) => {
        const option = document.createElement("option");
        option.value = name;
        option.textContent = name;
        return option;
      }),
    );
    if (names.includes(keep)) select.value = keep;
  }

  function showQuarantine(doc) {
    const list = $("quarantine-list");
    const quarantined = doc.vms.filter((vm) => vm.quarantine);
    list.replaceChildren(
      ...quarantined.map((vm) => {
        const li = document.createElement("li");
        li.dataset.vm = vm.name;
        const text = document.createElement("div");
        const name = document.createElement("span");
        name.className = "vm";
        name.textContent = vm.name;
        const reason = document.createElement("div");
        reason.className = "reason";
        reason.textContent = vm.quarantine.reason;
        const how = document.createElement("div");
        how.className = "muted small";
        how.textContent = `${vm.quarantine.mode}, by ${vm.quarantine.actor}`;
        text.append(name, reason, how);
        li.append(text);
        if (role === "admin") {
          const release = document.createElement("button");
          release.type = "button";
          release.className = "secondary release";
          release.textContent = "Release";
          release.addEventListener("click", () => write("DELETE", "/v1/quarantine/" + encodeURIComponent(vm.name)));
          li.append(release);
        }
        return li;
      }),
    );
    $("quarantine-empty").hidden = quarantined.length > 0;
    fillSelect($("quarantine-vm"), doc.vms.filter((vm) => !vm.quarantine).map((vm) => vm.name));
    const parties = doc.vms.map((vm) => vm.name);
    fillSelect($("explain-src"), parties);
    fillSelect($("explain-dst"), parties);
  }

  // -- polling ------------------------------------------------------------------------------------
  function every(ms, task) {
    const mine = generation;
    const run = async () => {
      if (mine !== generation) return;
      try {
        await task(mine);
      } finally {
        if (mine === generation) timers.push(setTimeout(run, ms));
      }
    };
    run();
  }

  async function pollFabric(mine) {
    try {
      const answer = await api("GET", "/v1/fabric", undefined, fabricEtag ? { "If-None-Match": fabricEtag } : {});
      if (mine !== generation) return;
      lastFabricOk = Date.now();
      const serverTime = Number(answer.headers.get("X-Server-Time"));
      if (serverTime) clockSkew = serverTime - Date.now() / 1000;
      if (answer.status === 200) {
        fabric = answer.body;
        fabricEtag = answer.headers.get("ETag");
        drawFabric(fabric);
        showQuarantine(fabric);
        showSelection();
        window.goldilocksView.fabricUpdates += 1;
      }
      if ($("error").dataset.source === "poll") {
        showError("");
        delete $("error").dataset.source;
      }
    } catch (err) {
      if (mine !== generation || onAuthFailure(err)) return;
      showError("Fabric: " + describeError(err));
      $("error").dataset.source = "poll";
    }
  }

  async function pollPanels(mine) {
    try {
      const [rules, audit] = await Promise.all([api("GET", "/v1/policies"), api("GET", `/v1/audit?limit=${AUDIT_ROWS}`)]);
      if (mine !== generation) return;
      showRules(rules.body);
      showAudit(audit.body);
    } catch (err) {
      if (mine !== generation || onAuthFailure(err)) return;
      showError("Panels: " + describeError(err));
    }
  }

  function showRules(doc) {
    $("rules").replaceChildren(
      ...doc.policies.map((rule) => {
        const li = document.createElement("li");
        li.dataset.rule = rule.name;
        const name = document.createElement("strong");
        name.textContent = rule.name;
        const action = document.createElement("span");
        action.className = "action action-" + rule.action;
        action.textContent = rule.action;
        const what = document.createElement("div");
        what.className = "muted small";
        what.textContent = `${rule.src} → ${rule.dst}` + (rule.services ? ` · ${rule.services.join(", ")}` : "");
        li.append(name, " ", action, what);
        return li;
      }),
    );
    $("default-action").textContent = doc.default_action;
  }

  function showAudit(doc) {
    $("audit").replaceChildren(
      ...doc.entries.map((entry) => {
        const li = document.createElement("li");
        const head = document.createElement("div");
        const when = document.createElement("time");
        when.dateTime = entry.time;
        when.textContent = entry.time.replace("T", " ").replace(/\.\d+/, "");
        const what = document.createElement("strong");
        what.textContent = `${entry.action} ${entry.target}`;
        const who = document.createElement("span");
        who.className = "muted";
        who.textContent = `by ${entry.actor}`;
        head.append(when, " ", what, " ", who);
        const summary = document.createElement("div");
        summary.className = "summary";
        summary.textContent = entry.summary;
        li.append(head, summary);
        return li;
      }),
    );
  }

  function startView() {
    generation += 1;
    window.goldilocksView.fabricUpdates = 0;
    every(POLL_MS, pollFabric);
    every(PANEL_POLL_MS, pollPanels);
    timers.push(setInterval(refreshTunnelAges, 1000));
  }

  // -- writes (admin) -----------------------------------------------------------------------------
  async function write(method, path, body) {
    try {
      await api(method, path, body);
      showError("");
      fabricEtag = null; // redraw at once
      await Promise.all([pollFabric(generation), pollPanels(generation)]);
      return true;
    } catch (err) {
      if (!onAuthFailure(err)) showError(`${method} ${path}: ${describeError(err)}`);
      return false;
    }
  }

  // -- wiring ---------------------------------------------------------------------------------------
  window.goldilocksView = { cy: null, fabricUpdates: 0 }; // for tests and the curious: no token here

  document.addEventListener("DOMContentLoaded", () => {
    $("signin-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("token").value.trim();
      if (value) signIn(value);
    });
    $("sign-out").addEventListener("click", () => signOut(""));
    $("quarantine-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const vm = $("quarantine-vm").value;
      const ok = await write("POST", "/v1/quarantine", { vm, reason: $("quarantine-reason").value, mode: $("quarantine-mode").value });
      if (ok) $("quarantine-reason").value = "";
    });
    $("explain-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const query = new URLSearchParams({ src: $("explain-src").value, dst: $("explain-dst").value });
      const proto = $("explain-proto").value;
      const port = $("explain-port").value.trim();
      if (proto) query.set("proto", proto);
      if (port && (proto === "tcp" || proto === "udp")) query.set("dport", port);
      try {
        const doc = (await api("GET", "/v1/explain?" + query)).body;
        showExplain(doc);
        showError("");
      } catch (err) {
        if (!onAuthFailure(err)) showError("Explain: " + describeError(err));
      }
    });
  });

  function showExplain(doc) {
    const result = $("explain-result");
    $("explain-rule").textContent = doc.rule ? `rule ${doc.rule.position}: ${doc.rule.name}` : `the default action (${doc.default_action})`;
    const encrypted = doc.action === "encrypt" && doc.effective_action !== "deny";
    // An encrypt rule lets the flow through, in a tunnel: say so rather than a bare "allow".
    let action = encrypted ? "encrypt (allowed, through a tunnel)" : doc.effective_action;
    if (doc.quarantined.length) action += ` (quarantine: ${doc.quarantined.join(", ")})`;
    $("explain-action").textContent = action;
    $("explain-encrypted").textContent = encrypted ? "yes" : "no";
    $("explain-encrypted").dataset.encrypted = encrypted ? "yes" : "no";
    $("explain-path").textContent = doc.encryption ? doc.encryption.why : doc.effective_action === "deny" ? "dropped" : "in the clear";
    result.hidden = false;
  }
})();
