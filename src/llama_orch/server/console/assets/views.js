// Rendering of the status sections into the overview and the queue & tasks views.

import { $, bytes, el, ms, setText, short, sync } from "./dom.js";

function bar(fraction, label) {
  const pct = Math.max(0, Math.min(100, Math.round(fraction * 100)));
  const node = el("div", { class: pct >= 90 ? "bar hi" : "bar", role: "meter", "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": String(pct), "aria-label": label }, el("span"));
  node.firstChild.style.width = `${pct}%`;
  return node;
}

// replaceChildren without the parts a condition left out.
function fill(node, ...children) {
  node.replaceChildren(...children.filter((child) => child));
}

function field(dl, name, value) {
  dl.append(el("dt", { text: name }), el("dd", { text: value }));
}

export function renderGpus(gpus) {
  sync($("#gpus"), gpus, (g) => `${g.host || ""}:${g.index}`, () => el("article", { class: "card gpu" }), (card, g) => {
    const vram = g.vram_total_bytes ? g.vram_used_bytes / g.vram_total_bytes : 0;
    const dl = el("dl");
    // A declared (simulated) GPU has a size but no reading of its use.
    field(dl, "VRAM", g.simulated ? `${bytes(g.vram_total_bytes)}, use not measured` : `${bytes(g.vram_used_bytes)} / ${bytes(g.vram_total_bytes)}`);
    field(dl, "Utilisation", g.utilization_pct === null ? "not measured" : `${Math.round(g.utilization_pct)} %`);
    if (g.temperature_c !== null) field(dl, "Temperature", `${Math.round(g.temperature_c)} °C`);
    field(dl, "Replicas", g.replicas.length ? g.replicas.join(", ") : "none");
    // A cluster host's GPU is named host:index, as `llorch pools` writes it.
    const id = g.host ? `${g.host}:${g.index}` : String(g.index);
    fill(card,
      el("header", {}, el("h3", { text: `GPU ${id} · ${g.name}` }),
        g.simulated ? el("span", { class: "badge sim", text: "simulated" }) : null,
        g.stale ? el("span", { class: "badge stale", text: "host not answering" }) : null),
      bar(vram, `GPU ${id} VRAM used`),
      dl,
    );
  });
}

export function renderPools(pools, features, actions) {
  sync($("#pools"), pools, (p) => p.pool_id, (p) => {
    const card = el("article", { class: "card pool" });
    card.body = el("div");
    card.buttons = el("div", { class: "actions" });
    if (features.drain) card.buttons.append(el("button", { class: "small", text: "Drain", onclick: () => actions.drain(p.pool_id) }));
    if (features.reload) card.buttons.append(el("button", { class: "small", text: "Reload…", onclick: () => actions.reload(p.pool_id) }));
    card.append(card.body, card.buttons);
    return card;
  }, (card, p) => {
    const dl = el("dl");
    field(dl, "Engine", `${p.engine}@${p.engine_version || "unknown"}`);
    field(dl, "Model", p.model);
    field(dl, "Replicas", p.replicas.map((r) => `${r.replica_id}${r.host ? `@${r.host}` : ""} ${r.state} (${r.slots_busy}/${r.slots_total})`).join(", "));
    field(dl, "Slots busy", `${p.slots_busy} / ${p.slots_total}`);
    field(dl, "Queue", `${p.queue_depth.interactive} interactive · ${p.queue_depth.batch} batch (of ${p.queue_capacity})`);
    field(dl, "Tokens/s", p.tokens_per_s.toFixed(1));
    field(dl, "Restarts", p.restart_count === null || p.restart_count === undefined ? "—" : String(p.restart_count));
    if (p.last_exit) field(dl, "Last exit", p.last_exit);
    const op = p.last_operation;
    if (op) field(dl, "Last operation", `${op.kind} ${op.state.replace("_", " ")}${op.error ? `: ${op.error}` : ""}`);
    field(dl, "GPUs", p.devices.join(", "));
    fill(card.body,
      el("header", {},
        el("h3", { text: p.pool_id }),
        el("span", { class: `badge state state-${p.state}`, text: p.state }),
        p.simulated ? el("span", { class: "badge sim", text: "simulated" }) : null),
      bar(p.slots_total ? p.slots_busy / p.slots_total : 0, `${p.pool_id} slots busy`),
      dl,
      p.last_error ? el("p", { class: "err", text: `Last error: ${p.last_error}` }) : null,
    );
    card.dataset.state = p.state;
    card.buttons.hidden = !card.buttons.children.length;
  });
}

function cancelButton(id, actions) {
  return el("button", { class: "small", text: "Cancel", "aria-label": `Cancel task ${short(id)}`, onclick: () => actions.cancel(id) });
}

function cells(row, values) {
  values.forEach((value, i) => setText(row.cells[i], value));
}

export function renderQueues(queues, actions) {
  sync($("#queues"), queues, (q) => q.pool_id, (q) => {
    const table = el("table", { class: "grid" },
      el("caption"),
      el("thead", {}, el("tr", {}, ...["Position", "Task", "Priority", "Predicted start", "On time", "Waited", ""].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody"));
    return el("div", { class: "queue scroll" }, table);
  }, (wrap, q) => {
    const table = wrap.firstChild;
    const more = q.depth > q.tasks.length ? ` (first ${q.tasks.length} shown)` : "";
    setText(table.caption, `${q.pool_id}: ${q.depth} queued${more}`);
    table.tHead.hidden = q.depth === 0;
    sync(table.tBodies[0], q.tasks, (t) => t.task_id, (t) => {
      const row = el("tr", { "data-task": t.task_id }, ...Array.from({ length: 6 }, () => el("td")), el("td"));
      row.cells[6].append(cancelButton(t.task_id, actions));
      return row;
    }, (row, t) => cells(row, [t.position, short(t.task_id), t.priority, ms(t.predicted_start_ms), `${Math.round(t.on_time_probability * 100)} %`, ms(t.waited_ms)]));
  });
}

export function renderTasks(task, actions) {
  const running = $("#running");
  sync(running.tBodies[0], task.running, (t) => t.task_id, (t) => {
    const row = el("tr", { "data-task": t.task_id }, ...Array.from({ length: 6 }, () => el("td")), el("td"));
    row.cells[6].append(cancelButton(t.task_id, actions));
    return row;
  }, (row, t) => cells(row, [short(t.task_id), `${t.pool_id}/${t.replica_id || "?"}`, t.priority, t.tokens_out, t.tokens_per_s.toFixed(1), ms(t.running_ms)]));
  running.hidden = !task.running.length;
  $("#running-empty").hidden = task.running.length > 0;

  const finished = $("#finished");
  sync(finished.tBodies[0], task.finished, (t) => t.task_id, (t) => {
    const row = el("tr", { "data-task": t.task_id }, ...Array.from({ length: 6 }, () => el("td")), el("td"));
    row.cells[6].append(el("button", { class: "small", text: "Transcript", "aria-label": `Transcript of task ${short(t.task_id)}`, onclick: () => actions.transcript(t.task_id) }));
    return row;
  }, (row, t) => {
    cells(row, [short(t.task_id), t.pool_id, t.outcome === "error" ? `error ${t.error_code || ""}` : t.outcome, t.tokens_out, ms(t.duration_ms), `${ms(t.ago_ms)} ago`]);
    row.cells[2].className = `out-${t.outcome}`;
  });
  finished.hidden = !task.finished.length;
  $("#finished-empty").hidden = task.finished.length > 0;
}

// The catalog's verification of a model's bytes against its digest (GET /v1/catalog/models).
const VERIFICATION = { pass: "✓ verified", warn: "unverified (no digest to check)", fail: "✗ digest mismatch" };

export function pullText(pull) {
  if (!pull) return "";
  if (pull.state === "failed") return `failed: ${pull.error ? pull.error.message : "unknown error"}`;
  if (pull.state === "done") return "done";
  const total = pull.bytes_total ? ` of ${bytes(pull.bytes_total)} (${Math.floor((100 * pull.bytes_done) / pull.bytes_total)} %)` : "";
  const eta = pull.eta_s !== null && pull.eta_s !== undefined ? `, ${Math.ceil(pull.eta_s)} s left` : "";
  return `${bytes(pull.bytes_done)}${total}${eta}`;
}

export function renderModels(listing, actions) {
  const list = listing.models;
  sync($("#models").tBodies[0], list, (m) => m.id, (m) => {
    const row = el("tr", {}, ...Array.from({ length: 5 }, () => el("td")), el("td"));
    row.cells[5].append(el("button", { class: "small", text: "Verify", "aria-label": `Verify ${m.id}`, onclick: () => actions.verify(m.id) }));
    return row;
  }, (row, m) => {
    const pulling = m.pull && m.pull.state === "running" ? ` · ${pullText(m.pull)}` : "";
    cells(row, [
      m.id,
      `${m.state}${pulling}`,
      m.size_bytes === undefined ? "—" : bytes(m.size_bytes),
      m.digest ? `${m.digest.slice(0, 19)}…` : "—",
      m.verification ? VERIFICATION[m.verification] : "—",
    ]);
    row.cells[3].title = m.digest || "";
    row.cells[4].className = m.verification ? `verify-${m.verification}` : "";
  });
  $("#models-empty").hidden = list.length > 0;
}
