// Runs: the recent ones with their state, and one run's steps, outputs and
// log lines, followed live (the run's event stream, or polling each second
// when the API has no stream endpoint) until the run ends.

import { all, api, stream } from "./api.js";
import { runAssets } from "./assets.js";
import { badge, duration, h, json, replace, shortId, when } from "./dom.js";

const FINAL = new Set(["succeeded", "failed", "cancelled", "timed_out"]);
const STEP_ENDED = new Set(["succeeded", "failed"]);
const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled", "timed_out"];

/** Task titles by id, for showing runs by name; fetched once per view. */
async function taskTitles() {
  const tasks = await all("tasks", {}, 500);
  return new Map(tasks.map((t) => [t.id, t.title]));
}

export function runsView(root, ctx) {
  let alive = true;
  let statusFilter = "";
  let titles = new Map();
  const body = h("div", { class: "card" }, h("p", { class: "muted" }, "Loading runs…"));
  const statusSelect = h("select", { id: "run-status", onchange: () => {
    statusFilter = statusSelect.value;
    load();
  } }, h("option", { value: "" }, "any"), STATUSES.map((s) => h("option", { value: s }, s)));
  replace(root,
    h("div", { class: "view-head" },
      h("h1", {}, "Recent runs"),
      h("div", { class: "toolbar" },
        h("label", { for: "run-status" }, "Status"), statusSelect,
        h("button", { type: "button", class: "secondary", onclick: () => load(true) }, "Refresh"),
        h("span", { class: "muted small" }, "refreshes every 3 s"))),
    body);

  async function load(fresh = false) {
    try {
      if (fresh || !titles.size) titles = await taskTitles();
      const page = await api("GET", "runs", { query: { status: statusFilter, limit: 50 } });
      if (!alive) return;
      replace(body, page.items.length ? table(page.items, titles) : h("p", { class: "muted" }, "No runs yet."));
    } catch (err) {
      if (alive) ctx.showProblem(err);
    }
  }
  load();
  const timer = setInterval(load, 3000);
  return () => {
    alive = false;
    clearInterval(timer);
  };
}

function table(runs, titles) {
  return h("table", { class: "runs" },
    h("caption", { class: "visually-hidden" }, "Recent runs, newest first"),
    h("thead", {}, h("tr", {}, ["Run", "Task", "Status", "Attempt", "Scheduled for", "Started", "Duration", "Worker"]
      .map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, runs.map((r) => h("tr", { "data-run-id": r.id },
      h("th", { scope: "row" }, h("a", { href: `#/runs/${r.id}` }, shortId(r.id))),
      h("td", {}, h("a", { href: `#/tasks/${r.task_id}` }, titles.get(r.task_id) || shortId(r.task_id))),
      h("td", {}, badge(r.status)),
      h("td", {}, String(r.attempt)),
      h("td", {}, when(r.scheduled_for)),
      h("td", {}, when(r.started_at)),
      h("td", {}, duration(r.duration_ms)),
      h("td", { class: "muted small" }, r.worker_id || "—")))));
}

// -- one run, live ---------------------------------------------------------------------------

export function runView(root, ctx, runId) {
  let alive = true;
  let run = null;
  let title = null;
  const lines = new Map(); // log line id -> line, so a line seen twice shows once
  const openInputs = new Set();
  const controller = new AbortController();
  const head = h("div", { class: "view-head" }, h("h1", {}, "Run ", shortId(runId)));
  const live = h("p", { class: "live muted", id: "run-live", "aria-live": "polite" }, "loading…");
  const facts = h("dl", { class: "facts card" });
  const errorBox = h("div", {});
  const steps = h("ol", { class: "steps" });
  const logs = h("ol", { class: "logs", role: "log", "aria-label": "Log lines" });
  const cancel = h("button", { type: "button", class: "danger", hidden: true, onclick: cancelRun }, "Cancel run…");
  const assets = runAssets(ctx, runId);

  replace(root, head, h("div", { class: "controls card" }, live, cancel), facts, errorBox,
    h("section", { class: "card", "aria-labelledby": "h-steps" }, h("h2", { id: "h-steps" }, "Steps"), steps),
    assets.section,
    h("section", { class: "card", "aria-labelledby": "h-logs" }, h("h2", { id: "h-logs" }, "Logs"), logs));

  let drawing = false;
  function draw() {
    if (drawing) return;
    drawing = true;
    requestAnimationFrame(() => {
      drawing = false;
      if (alive && run) render();
    });
  }

  function render() {
    replace(head, h("h1", {}, "Run ", shortId(run.id)), badge(run.status));
    head.querySelector(".badge").id = "run-status";
    replace(facts,
      fact("Task", h("a", { href: `#/tasks/${run.task_id}` }, title || shortId(run.task_id))),
      fact("Attempt", String(run.attempt)),
      fact("Scheduled for", when(run.scheduled_for)),
      fact("Queued", when(run.queued_at)),
      fact("Started", when(run.started_at)),
      fact("Finished", when(run.finished_at)),
      fact("Duration", duration(run.duration_ms)),
      fact("Worker", run.worker_id || "—"),
      fact("Cost", run.cost || "0"));
    facts.lastElementChild.id = "run-cost";
    replace(errorBox, run.error ? h("div", { class: "run-error card", role: "note" }, h("h2", {}, "Error"), h("pre", {}, run.error)) : null);
    cancel.hidden = FINAL.has(run.status);
    replace(steps, run.steps.length ? run.steps.map(stepItem) : h("li", { class: "muted" }, "No step has started yet."));
    const sorted = [...lines.values()].sort((a, b) => a.id - b.id);
    replace(logs, sorted.length ? sorted.map((l) => h("li", { class: `log-${l.level}` },
      when(l.at), h("span", { class: "level" }, l.level),
      l.step_id ? h("code", { class: "step-id" }, l.step_id) : null,
      h("span", { class: "message" }, l.message))) : h("li", { class: "muted" }, "No log lines yet."));
  }

  function stepItem(step, index) {
    const key = `${index}:${step.id}`;
    const input = step.input !== undefined
      ? h("details", { open: openInputs.has(key), ontoggle: (e) => {
        if (e.target.open) openInputs.add(key); else openInputs.delete(key);
      } }, h("summary", {}, "Input"), json(step.input))
      : null;
    return h("li", { class: `step step-${step.status}`, "data-step-id": step.id },
      h("div", { class: "step-head" },
        h("strong", {}, step.id), " ", h("code", {}, step.uses), " ", badge(step.status),
        h("span", { class: "muted small" }, ` ${duration(step.duration_ms)}`),
        step.cost ? h("span", { class: "muted small step-cost" }, ` · cost ${step.cost}`) : null),
      step.detail ? h("p", { class: "muted" }, step.detail) : null,
      step.resumed_from ? h("p", { class: "muted small" }, `Reused from attempt ${step.resumed_from}`) : null,
      step.status === "waiting" ? remoteLine(step.remote) : null,
      step.error ? h("pre", { class: "step-error" }, step.error) : null,
      step.output !== undefined ? [h("h3", {}, "Output"), json(step.output)] : null,
      step.output_truncated ? h("p", { class: "muted small" }, "Output too large to stream; shown when the run ends.") : null,
      input);
  }

  // A remote step's offer: who holds it and what it last reported.
  function remoteLine(remote) {
    if (!remote) return h("p", { class: "muted step-remote" }, "Waiting for a remote worker.");
    const holder = remote.state === "claimed"
      ? `Held by ${remote.holder_name || remote.holder_agent_id}`
      : "Waiting for a remote worker to claim it";
    const progress = remote.progress ? ` · ${remote.progress}` : "";
    return h("p", { class: "muted step-remote" }, holder + progress);
  }

  function onEvent(name, data) {
    if (name === "run") {
      run = data;
    } else if (name === "state" && run) {
      run.status = data.status;
      run.attempt = data.attempt;
    } else if (name === "step" && run) {
      run.steps[data.index] = { ...(run.steps[data.index] || {}), ...data.step };
      if (STEP_ENDED.has(data.step?.status)) assets.refresh(); // it may have made assets
    } else if (name === "cost" && run) {
      run.cost = data.run_cost;
    } else if (name === "log") {
      lines.set(data.id, data);
    }
    draw();
  }

  async function fetchRun() {
    run = await api("GET", `runs/${runId}`, { signal: controller.signal });
    for (const line of await all(`runs/${runId}/logs`)) lines.set(line.id, line);
    draw();
    assets.show(run); // steps make assets: asked again whenever the run is
  }

  async function cancelRun() {
    if (!(await ctx.confirm("Stop this run? A running step is interrupted.", "Cancel run"))) return;
    try {
      onEvent("run", await api("POST", `runs/${runId}/cancel`));
    } catch (err) {
      ctx.showProblem(err);
    }
  }

  async function follow() {
    try {
      await fetchRun();
      title = (await api("GET", `tasks/${run.task_id}`, { signal: controller.signal }).catch(() => null))?.title;
      draw();
    } catch (err) {
      if (alive) ctx.showProblem(err);
      live.textContent = "";
      return;
    }
    if (FINAL.has(run.status)) {
      live.textContent = "This run has ended.";
      return;
    }
    live.textContent = "Live: following the run as it happens…";
    let outcome;
    try {
      outcome = await stream(`runs/${runId}/stream`, onEvent, controller.signal);
    } catch {
      outcome = "broken";
    }
    if (!alive || outcome === "aborted") return;
    // No stream here (or it ended early): ask every second until the run ends.
    if (!FINAL.has(run.status)) live.textContent = "Live: checking every second…";
    while (alive && !FINAL.has(run.status)) {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      if (!alive) return;
      try {
        await fetchRun();
      } catch (err) {
        if (err.name !== "AbortError") ctx.showProblem(err);
        return;
      }
    }
    if (alive) {
      await fetchRun().catch(() => {}); // the final outputs and every line
      live.textContent = "This run has ended.";
    }
  }
  follow();
  return () => {
    alive = false;
    controller.abort();
    assets.close();
  };
}

function fact(term, value) {
  return h("div", {}, h("dt", {}, term), h("dd", {}, value));
}
