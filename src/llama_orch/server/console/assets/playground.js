// The playground: submit a prompt to a pool, show its queue position, then its tokens.

import { call, events, uuid } from "./net.js";
import { $, ms, short } from "./dom.js";

export class Playground {
  constructor(authed) {
    this.authed = authed;
    this.known = [];
    this.taskId = null;
    $("#play").addEventListener("submit", (e) => {
      e.preventDefault();
      this.send();
    });
    $("#play-cancel").addEventListener("click", () => this.cancel());
  }

  pools(pools) {
    const select = $("#play-pool");
    const ids = pools.map((p) => p.pool_id).join(",");
    this.known = pools;
    if (select.dataset.ids === ids) return;
    const chosen = select.value;
    select.replaceChildren(...pools.map((p) => Object.assign(document.createElement("option"), { value: p.pool_id, textContent: `${p.model} (${p.pool_id})` })));
    if (pools.some((p) => p.pool_id === chosen)) select.value = chosen;
    select.dataset.ids = ids;
  }

  status(text) {
    $("#play-status").textContent = text;
  }

  async send() {
    const pool = this.known.find((p) => p.pool_id === $("#play-pool").value);
    if (!pool) return;
    const out = $("#play-out");
    out.textContent = "";
    const id = uuid();
    const body = {
      task_id: id,
      session_id: uuid(),
      workload: "completion",
      model_ref: pool.model_ref || pool.model,
      engine: pool.engine,
      ctx: Math.min(pool.ctx_max || 2048, 4096),
      priority: $("#play-priority").value,
      max_tokens: Number($("#play-max").value),
      deadline_ms: 600000,
      prompt: $("#play-prompt").value,
    };
    $("#play-send").disabled = true;
    this.status("Submitting…");
    try {
      const admitted = await this.authed(() => call("POST", "/v1/tasks", body));
      this.taskId = id;
      $("#play-cancel").disabled = false;
      this.status(`Task ${short(id)} queued on ${admitted.pool_id} at position ${admitted.queue_position}; predicted start in ${ms(admitted.predicted_start_ms)}.`);
      let tokens = 0;
      for await (const { event, data } of events(`/v1/tasks/${id}/stream`)) {
        if (event === "started") {
          const simulated = data.simulated ? " Simulated engine: no real inference." : "";
          this.status(`Task ${short(id)} at queue position ${data.queue_position}; predicted start in ${ms(data.predicted_start_ms)}.${simulated}`);
        } else if (event === "token") {
          if (tokens === 0) this.status(`Task ${short(id)} streaming…`);
          tokens += data.n || 1;
          out.textContent += data.t;
        } else if (event === "end") {
          this.status(data.canceled ? `Task ${short(id)} canceled after ${data.tokens_out} tokens.` : `Task ${short(id)} ended: ${data.tokens_out} tokens in ${ms(data.decode_time_ms)}.`);
        } else if (event === "error") {
          this.status(`Task ${short(id)} failed: ${data.code}: ${data.message}`);
        }
      }
    } catch (error) {
      this.status(`Failed: ${error.message}`);
    } finally {
      this.taskId = null;
      $("#play-send").disabled = false;
      $("#play-cancel").disabled = true;
    }
  }

  async cancel() {
    if (!this.taskId) return;
    try {
      await this.authed(() => call("POST", `/v1/tasks/${this.taskId}/cancel`));
    } catch (error) {
      this.status(`Cancel failed: ${error.message}`);
    }
  }
}
