// wgprobe status page: polls the aggregator's API and draws the fleet, or one relay in detail (#/servers/NAME).
// Every string from the API (relay names, labels, reasons, details) came from agents and inventories: it is only
// ever inserted as text (append/textContent), never parsed as HTML. No external resource, no build step.
"use strict";
(() => {
  const STATES = ["down", "degraded", "unknown", "up"];
  const FAILING = new Set(["down", "degraded"]);
  const STAGES = ["handshake", "tunnel", "forward", "egress", "mtu"];
  const query = new URLSearchParams(location.search);
  const POLL_MS = Math.min(Math.max(Number(query.get("refresh")) || 5, 1), 300) * 1000;
  const $ = (id) => document.getElementById(id);

  // -- building blocks -----------------------------------------------------------------------------------------
  function el(tag, className, ...children) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child)); // a string becomes a Text node
    }
    return node;
  }
  function badge(state, text) {
    return el("span", "state state-" + (STATES.includes(state) ? state : "unknown"), text ?? state);
  }
  function relayLink(name) {
    const link = el("a", null, name);
    link.href = "#/servers/" + encodeURIComponent(name);
    return link;
  }
  // Ages are reckoned by the aggregator's clock, not this browser's: a laptop's clock that is off must not make a
  // relay look down for longer (or shorter) than it is.
  let clockOffset = 0;
  function serverNow() {
    return Date.now() + clockOffset;
  }
  function ago(iso) {
    if (!iso) return "never";
    const seconds = Math.max(0, (serverNow() - Date.parse(iso)) / 1000);
    if (seconds < 90) return Math.round(seconds) + " s ago";
    if (seconds < 5400) return Math.round(seconds / 60) + " min ago";
    if (seconds < 172800) return Math.round(seconds / 3600) + " h ago";
    return Math.round(seconds / 86400) + " d ago";
  }
  function when(iso) {
    const node = el("time", null, ago(iso));
    if (iso) { node.dateTime = iso; node.title = iso; }
    return node;
  }
  function labelText(labels) {
    return Object.entries(labels || {}).map(([k, v]) => k + "=" + v).join(" ");
  }
  function place(server) {
    return [server.country, server.city].filter(Boolean).join("-") || server.location || "";
  }
  function placeName(group) {
    const same = !group.code || group.name.toLowerCase() === group.code.toLowerCase();
    return same ? group.name : group.name + " (" + group.code + ")";
  }
  function ms(seconds) {
    return (seconds * 1000).toFixed(seconds < 0.01 ? 2 : 1) + " ms";
  }
  function cells(row, values) {
    for (const value of values) row.append(el("td", null, value));
    return row;
  }
  function setConnection(ok, text) {
    const node = $("connection");
    node.textContent = text;
    node.classList.toggle("failed", !ok);
  }

  // -- the fleet ------------------------------------------------------------------------------------------------
  let placesKey = null;
  const tiles = new Map(); // relay name -> {tile, word, state, search, city}
  const cityNodes = []; // {node, counts, country}
  const countryNodes = []; // {node, counts}

  function renderFleet(fleet) {
    const totals = $("totals");
    totals.replaceChildren(...STATES.map((s) => badge(s, s + " " + (fleet.states[s] || 0))));
    const down = fleet.states.down || 0;
    document.title = (down ? down + " down · " : "") + "wgprobe: relay status";
    renderFailing(fleet.failing);
    renderShared(fleet.shared_labels);
    renderAgents(fleet.agents);
    renderPlaces(fleet.countries);
    applyFilter();
  }

  function renderFailing(failing) {
    $("failing-empty").hidden = failing.length > 0;
    $("failing").hidden = failing.length === 0;
    $("failing").tBodies[0].replaceChildren(...failing.map((s) => {
      const row = el("tr");
      row.append(el("td", null, badge(s.state)), el("td", null, relayLink(s.name)));
      cells(row, [s.reason || "", when(s.since), s.agents_failing + " of " + s.agents_voting + " (quorum " + s.quorum + ")",
        place(s)]);
      row.append(el("td", "labels", labelText(s.labels)));
      return row;
    }));
  }

  function renderShared(shared) {
    $("shared-section").hidden = shared.length === 0;
    $("shared").tBodies[0].replaceChildren(...shared.map((l) => cells(el("tr"), [
      l.name + "=" + l.value, String(l.failing), String(l.fleet), Math.round(l.share_of_failing * 100) + "%"])));
  }

  function renderAgents(agents) {
    $("agents-empty").hidden = agents.length > 0;
    $("agents").hidden = agents.length === 0;
    $("agents").tBodies[0].replaceChildren(...agents.map((a) => {
      const row = el("tr");
      row.append(el("td", null, a.name), el("td", null, badge(a.state === "ok" ? "up" : "down", a.state)));
      cells(row, [when(a.since), when(a.last_result_at), String(a.relays_voting), a.round ?? "", a.version || "",
        (a.control_ok ? "held" : "failed" + (a.control_detail ? ": " + a.control_detail : ""))
          + (a.broker_ok === false ? " (broker out of reach at its last check)" : "")
          + (a.clock_off ? " (its clock is off by " + Math.round(a.clock_offset_seconds) + " s)" : "")]);
      return row;
    }));
  }

  function renderPlaces(countries) {
    const key = JSON.stringify(countries.map((c) => [c.name, c.cities.map((ci) => [ci.name, ci.servers.map((s) => s.name)])]));
    if (key !== placesKey) buildPlaces(countries);
    placesKey = key;
    countries.forEach((country, i) => {
      countryNodes[i].counts.textContent = countText(country.states);
    });
    let cityIndex = 0;
    for (const country of countries) {
      for (const city of country.cities) {
        cityNodes[cityIndex++].counts.textContent = countText(city.states);
        for (const server of city.servers) updateTile(tiles.get(server.name), server);
      }
    }
  }

  function buildPlaces(countries) {
    tiles.clear();
    cityNodes.length = 0;
    countryNodes.length = 0;
    const parts = [];
    for (const country of countries) {
      const countryCounts = el("span", "counts");
      const countryNode = el("section", "country", el("h3", null, placeName(country) + " ", countryCounts));
      const entry = { node: countryNode, counts: countryCounts };
      countryNodes.push(entry);
      for (const city of country.cities) {
        const cityCounts = el("span", "counts");
        const list = el("div", "tiles");
        const cityNode = el("div", "city", el("h4", null, placeName(city) + " ", cityCounts), list);
        const cityEntry = { node: cityNode, counts: cityCounts, country: entry };
        cityNodes.push(cityEntry);
        for (const server of city.servers) {
          const word = el("span", "word");
          const tile = el("a", "tile", el("span", "name", server.name), word);
          tile.href = "#/servers/" + encodeURIComponent(server.name);
          tile.dataset.relay = server.name;
          list.append(tile);
          tiles.set(server.name, { tile, word, state: null, search: "", city: cityEntry });
        }
        countryNode.append(cityNode);
      }
      parts.push(countryNode);
    }
    $("places").replaceChildren(...parts);
  }

  function updateTile(entry, server) {
    const text = server.state + (FAILING.has(server.state) && server.reason ? " · " + server.reason : "");
    if (entry.state !== server.state || entry.word.textContent !== text) {
      entry.tile.className = "tile state state-" + server.state;
      entry.word.textContent = text;
      entry.tile.dataset.state = server.state;
      entry.tile.title = server.name + ": " + text;
    }
    entry.state = server.state;
    entry.search = [server.name, server.state, server.reason || "", place(server), labelText(server.labels)].join(" ").toLowerCase();
  }

  function countText(states) {
    const parts = STATES.filter((s) => states[s]).map((s) => states[s] + " " + s);
    return "— " + parts.join(" · ");
  }

  function applyFilter() {
    const needle = $("filter").value.trim().toLowerCase();
    const failingOnly = $("failing-only").checked;
    const cityShown = new Map();
    let shown = 0;
    for (const entry of tiles.values()) {
      const visible = (!failingOnly || FAILING.has(entry.state)) && (!needle || entry.search.includes(needle));
      if (entry.tile.hidden === visible) entry.tile.hidden = !visible;
      if (visible) {
        shown += 1;
        cityShown.set(entry.city, true);
      }
    }
    const countryShown = new Set();
    for (const city of cityNodes) {
      const visible = cityShown.has(city);
      city.node.hidden = !visible;
      if (visible) countryShown.add(city.country);
    }
    for (const country of countryNodes) country.node.hidden = !countryShown.has(country);
    $("shown").textContent = "showing " + shown + " of " + tiles.size;
  }

  // -- one relay ------------------------------------------------------------------------------------------------
  function renderDetail(d) {
    const head = el("div", "detail-head", el("h2", null, d.name), badge(d.state), el("span", null, "since ", when(d.since)));
    const facts = el("dl", "facts");
    const fact = (term, ...value) => facts.append(el("dt", null, term), el("dd", null, ...value));
    fact("reason", d.reason || "none");
    fact("agents", d.agents_failing + " failing of " + d.agents_voting + " voting; " + d.quorum + " make it down");
    fact("location", place(d) || "unknown");
    fact("labels", labelText(d.labels) || "none");
    const f = d.last_failure;
    if (f) {
      fact("last failure", when(f.at), " by " + f.agent + ": " + (f.reason || "failed") + " at " + (f.stage || "?") +
        " on port " + f.port + " " + f.family + (f.detail ? " (" + f.detail + ")" : "") +
        (f.evidence ? "; evidence " + f.evidence : ""));
    } else {
      fact("last failure", "none seen");
    }
    const agents = d.agents.map(renderAgentView);
    const history = el("table", "list");
    history.append(el("thead", null, cells(el("tr"), ["when", "from", "to", "reason"])));
    history.append(el("tbody", null, ...d.history.slice().reverse().map((h) =>
      cells(el("tr"), [when(h.at), badge(h.previous), badge(h.state), h.reason || ""]))));
    $("detail").replaceChildren(head, facts, el("h3", null, "Agents"), ...(agents.length ? agents : [el("p", "note", "No agent has reported on this relay.")]),
      el("h3", null, "Health changes"), d.history.length ? history : el("p", "note", "None since the aggregator started."));
    document.title = d.name + ": " + d.state + " · wgprobe";
  }

  function renderAgentView(a) {
    const vote = a.vote ? "votes " + a.vote : "does not vote" + (a.excluded ? " (" + a.excluded + ")" : "");
    const box = el("section", "agent", el("h3", null, a.agent + " ", el("span", "counts", vote)));
    box.append(el("p", "note", "newest result ", when(a.taken_at), " (round " + a.round + ", " + (a.fresh ? "fresh" : "stale") +
      ", control check " + (a.control_ok ? "held" : "failed") + ", " + (a.ok ? "every path passed" : "failed: " + (a.reason || "?")) +
      ", took " + ms(a.duration_seconds) + ")"));
    const table = el("table", "list");
    table.append(el("thead", null, cells(el("tr"), ["port", "family", "entry", "path", ...STAGES, "evidence", "taken"])));
    const body = el("tbody");
    for (const p of a.paths) {
      const row = el("tr");
      cells(row, [p.port_slot === String(p.port) ? String(p.port) : p.port + " (" + p.port_slot + ")", p.family, p.entry]);
      row.append(el("td", p.ok ? "stage-ok" : "stage-failed", p.ok ? "✓ ok" : "✕ " + (p.reason || "failed")));
      const byName = new Map(p.stages.map((s) => [s.name, s]));
      for (const name of STAGES) row.append(stageCell(byName.get(name)));
      cells(row, [p.evidence || "", when(p.taken_at)]);
      body.append(row);
    }
    table.append(body);
    box.append(table);
    return box;
  }

  function stageCell(s) {
    if (!s) return el("td", "stage-unjudged", "–");
    if (!s.judged) return el("td", "stage-unjudged", "– not judged");
    const loss = s.loss > 0 ? " · loss " + Math.round(s.loss * 100) + "%" : "";
    const text = s.ok ? "✓ " + ms(s.seconds) + loss : "✕ " + (s.reason || "failed") + " (waited " + ms(s.seconds) + ")";
    const cell = el("td", s.ok ? "stage-ok" : "stage-failed", text);
    cell.title = s.sent + " sent, " + s.received + " answered" + (s.detail ? "; " + s.detail : "");
    if (s.detail) cell.append(el("div", "detail", s.detail));
    return cell;
  }

  function renderMissing(name, problem) {
    const parts = [el("h2", null, name), el("p", null, problem.detail || "not found")];
    if (problem.suggestions && problem.suggestions.length) {
      const list = el("p", null, "Did you mean ");
      problem.suggestions.forEach((s, i) => list.append(i ? ", " : "", relayLink(s)));
      parts.push(list);
    }
    $("detail").replaceChildren(...parts);
  }

  // -- routing and polling --------------------------------------------------------------------------------------
  function route() {
    const match = /^#\/servers\/(.+)$/.exec(location.hash);
    if (!match) return { view: "fleet" };
    try { return { view: "detail", name: decodeURIComponent(match[1]) }; } catch { return { view: "fleet" }; }
  }

  // User Timing marks (performance.getEntriesByType("measure")): what a render costs, for tests and curious people.
  function timed(name, work) {
    const start = performance.now();
    work();
    performance.measure("wgprobe-render-" + name, { start, end: performance.now() });
  }

  let timer = null;
  let sequence = 0;
  async function poll() {
    clearTimeout(timer);
    const mine = ++sequence;
    const where = route();
    $("fleet-view").hidden = where.view !== "fleet";
    $("detail-view").hidden = where.view !== "detail";
    const url = where.view === "fleet" ? "/api/v1/servers" : "/api/v1/servers/" + encodeURIComponent(where.name);
    try {
      const response = await fetch(url, { cache: "no-store", signal: AbortSignal.timeout(Math.max(POLL_MS, 10000)) });
      const body = await response.json();
      if (mine !== sequence) return; // a newer poll (the route changed) owns the page
      const said = Date.parse(body.generated_at || response.headers.get("Date") || "");
      if (!Number.isNaN(said)) clockOffset = said - Date.now();
      if (where.view === "detail" && response.status === 404) renderMissing(where.name, body);
      else if (!response.ok) throw new Error("HTTP " + response.status + (body && body.detail ? ": " + body.detail : ""));
      else if (where.view === "fleet") timed("fleet", () => renderFleet(body));
      else timed("detail", () => renderDetail(body));
      const stamp = body.generated_at ? new Date(body.generated_at) : new Date();
      const updated = "updated " + stamp.toLocaleTimeString() + " · every " + POLL_MS / 1000 + " s";
      // The aggregator serves, but hears no agent: its verdicts age into unknown. Said where the page says it is live.
      if (body.broker_connected === false) setConnection(false, updated + " · the aggregator has lost the MQTT broker: verdicts are going stale");
      else setConnection(true, updated);
      document.body.dataset.ready = "1";
      document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
    } catch (error) {
      if (mine !== sequence) return;
      setConnection(false, "update failed (" + String(error.message || error) + "); retrying");
    } finally {
      if (mine === sequence) timer = setTimeout(poll, POLL_MS);
    }
  }

  function start() {
    $("filter").addEventListener("input", applyFilter);
    $("failing-only").addEventListener("change", applyFilter);
    window.addEventListener("hashchange", () => { window.scrollTo(0, 0); poll(); });
    poll();
  }
  start();
})();
