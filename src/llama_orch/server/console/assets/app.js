// The console: follows /v1/events, renders each section, routes between views, and runs the
// buttons (cancel, drain, reload, transcripts) through the public API.

import { AuthRequired, call, events, setToken } from "./net.js";
import { $, short } from "./dom.js";
import { pullText, renderGpus, renderModels, renderPools, renderQueues, renderTasks } from "./views.js";
import { Playground } from "./playground.js";

const state = { meta: null, gpu: null, pool: null, queue: null, task: null };
let featureKey = "";
let modelsTimer = null;

function notice(text) {
  const banner = $("#banner");
  banner.textContent = text || "";
  banner.hidden = !text;
}

function connection(text, live) {
  const conn = $("#conn");
  conn.textContent = text;
  conn.className = live ? "conn live" : "conn down";
}

// -- auth ------------------------------------------------------------------------------------

let authWaiters = [];

function askToken(error) {
  const dialog = $("#auth");
  $("#auth-why").textContent = `The server answered 401: ${error.message}.`;
  if (!dialog.open) dialog.showModal();
  $("#auth-token").focus();
  return new Promise((resolve) => authWaiters.push(resolve));
}

// Without a token nothing here works: Escape does not dismiss the question.
$("#auth").addEventListener("cancel", (e) => e.preventDefault());

$("#auth-form").addEventListener("submit", (e) => {
  e.preventDefault();
  setToken($("#auth-token").value.trim());
  $("#auth-token").value = "";
  $("#auth").close();
  const waiters = authWaiters;
  authWaiters = [];
  waiters.forEach((resolve) => resolve());
});

// Runs `fn`, asking for a token and retrying while the server answers 401.
export async function authed(fn) {
  for (;;) {
    try {
      return await fn();
    } catch (error) {
      if (!(error instanceof AuthRequired)) throw error;
      setToken(null);
      await askToken(error);
    }
  }
}

// -- actions ---------------------------------------------------------------------------------

const actions = {
  async cancel(id) {
    try {
      await authed(() => call("POST", `/v1/tasks/${id}/cancel`));
      notice("");
    } catch (error) {
      notice(`Cancel of ${short(id)} failed: ${error.message}`);
    }
  },
  async drain(poolId) {
    notice("");
    try {
      await authed(() => call("POST", `/v1/pools/${encodeURIComponent(poolId)}/drain`, { deadline_ms: 60000 }));
    } catch (error) {
      notice(`Drain of ${poolId} failed: ${error.message}`);
    }
  },
  reload(poolId) {
    const dialog = $("#reload");
    dialog.dataset.pool = poolId;
    $("#reload-error").hidden = true;
    $("#h-reload").textContent = `Reload pool ${poolId}`;
    const current = (state.pool?.pools || []).find((p) => p.pool_id === poolId);
    $("#reload-model").value = current ? current.model : "";
    dialog.showModal();
    if (state.meta && state.meta.features.catalog) pickFromCatalog();
  },
  async verify(modelId) {
    const status = $("#pull-status");
    try {
      await authed(() => call("POST", `${modelPath(modelId)}/verify`));
      status.textContent = `Verifying ${modelId}: the result shows in the table.`;
      refreshModels();
    } catch (error) {
      status.textContent = `Verify of ${modelId} failed: ${error.message}`;
    }
  },
  async transcript(id) {
    const dialog = $("#transcript");
    const out = $("#transcript-out");
    const status = $("#transcript-status");
    out.textContent = "";
    status.textContent = `Task ${short(id)}: replaying…`;
    $("#h-transcript").textContent = `Transcript of ${short(id)}`;
    dialog.showModal();
    try {
      await authed(async () => {
        for await (const { event, data } of events(`/v1/tasks/${id}/stream`)) {
          if (event === "token") out.textContent += data.t;
          else if (event === "end") status.textContent = data.canceled ? `Canceled after ${data.tokens_out} tokens.` : `Ended after ${data.tokens_out} tokens.`;
          else if (event === "error") status.textContent = `Error ${data.code}: ${data.message}`;
        }
      });
    } catch (error) {
      status.textContent = `Cannot replay: ${error.message}`;
    }
  },
};

// The dialog stays open until the server accepts the reload, and shows its refusal otherwise.
$("#reload-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const dialog = $("#reload");
  const poolId = dialog.dataset.pool;
  const shown = $("#reload-error");
  shown.hidden = true;
  try {
    await authed(() => call("POST", `/v1/pools/${encodeURIComponent(poolId)}/reload`, { new_model_ref: $("#reload-model").value }));
    dialog.close();
  } catch (error) {
    shown.textContent = `Reload of ${poolId} refused: ${error.message}`;
    shown.hidden = false;
  }
});
$("#reload-close").addEventListener("click", () => $("#reload").close());

// -- rendering -------------------------------------------------------------------------------

const playground = new Playground(authed);

function apply(name, data) {
  state[name] = data;
  if (name === "meta") {
    const key = JSON.stringify(data.features);
    if (key !== featureKey) {
      featureKey = key;
      $("#pools").replaceChildren();  // rebuild the cards with the buttons this server offers
      $('nav a[data-view="models"]').hidden = !data.features.catalog;
      if (state.pool) renderPools(state.pool.pools, data.features, actions);
    }
  } else if (name === "gpu") renderGpus(data.gpus);
  else if (name === "pool") {
    if (state.meta) renderPools(data.pools, state.meta.features, actions);
    // When the first data was on screen (read by bench/console.py).
    if (!performance.getEntriesByName("llorch:pools").length) performance.mark("llorch:pools");
    playground.pools(data.pools);
    fillModels(data.pools);
  } else if (name === "queue") renderQueues(data.queues, actions);
  else if (name === "task") renderTasks(data, actions);
}

// The reload dialog offers the catalog's Active models where the server has a catalog.
async function pickFromCatalog() {
  try {
    const listed = await authed(() => call("GET", "/v1/catalog/models"));
    const ids = listed.models.filter((m) => m.state === "Active").map((m) => m.id);
    $("#reload-models").replaceChildren(...ids.map((id) => Object.assign(document.createElement("option"), { value: id })));
  } catch (error) {
    notice(`Cannot list models: ${error.message}`);
  }
}

function fillModels(pools) {
  if (state.meta && state.meta.features.catalog) return;  // the catalog fills it instead
  const list = $("#reload-models");
  const models = [...new Set(pools.map((p) => p.model))];
  if (list.children.length === models.length) return;
  list.replaceChildren(...models.map((m) => Object.assign(document.createElement("option"), { value: m })));
}

async function follow() {
  let delay = 500;
  for (;;) {
    try {
      await authed(async () => {
        for await (const { event, data } of events("/v1/events")) {
          if (event === "meta") connection("Live", true);
          delay = 500;
          apply(event, data);
        }
      });
      connection("Server closed the feed; reconnecting…", false);
    } catch (error) {
      connection(`Disconnected (${error.message}); reconnecting…`, false);
    }
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(5000, delay * 2);
  }
}

// -- views -----------------------------------------------------------------------------------

// A catalog id keeps its '/' in the path (hf:org/repo/file.gguf); every other character that
// means something in a URL ('#', '?', '%', a space in a file name) is escaped.
function modelPath(id) {
  return `/v1/catalog/models/${id.split("/").map(encodeURIComponent).join("/")}`;
}

async function refreshModels() {
  try {
    renderModels(await authed(() => call("GET", "/v1/catalog/models")), actions);
  } catch (error) {
    notice(`Cannot list models: ${error.message}`);
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// A local path registers at once (201); a remote ref starts a pull (202) whose progress is read
// from the model's own resource until it is done or failed.
async function pull(ref) {
  const status = $("#pull-status");
  const send = $("#pull-send");
  send.disabled = true;
  status.textContent = `Pulling ${ref}…`;
  try {
    const answer = await authed(() => call("POST", "/v1/catalog/models", { ref }));
    if (answer.status === "started") await followPull(answer.id, status);
    else status.textContent = `Registered ${answer.id}.`;
  } catch (error) {
    status.textContent = `Pull of ${ref} failed: ${error.message}`;
  } finally {
    send.disabled = false;
    refreshModels();
  }
}

async function followPull(id, status) {
  for (;;) {
    const model = await authed(() => call("GET", modelPath(id)));
    const progress = model.pull;
    if (progress && progress.state === "failed") throw new Error(progress.error ? `${progress.error.code}: ${progress.error.message}` : "the pull failed");
    if (!progress || progress.state === "done") {
      status.textContent = `Pulled ${id}.`;
      return;
    }
    status.textContent = `Pulling ${id}: ${pullText(progress)}`;
    refreshModels();
    await sleep(1000);
  }
}

$("#pull").addEventListener("submit", (e) => {
  e.preventDefault();
  pull($("#pull-ref").value.trim());
});

function route() {
  let view = location.hash.slice(1) || "overview";
  if (view === "models" && !(state.meta && state.meta.features.catalog)) view = state.meta ? "overview" : view;
  for (const section of document.querySelectorAll("main > section")) section.hidden = section.dataset.view !== view;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.view === view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  clearInterval(modelsTimer);
  if (view === "models") {
    refreshModels();
    modelsTimer = setInterval(refreshModels, 3000);
  }
}

window.addEventListener("hashchange", route);
route();
follow();
