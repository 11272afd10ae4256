// Tasks: the list with each task's next occurrences on a shared timeline, a
// form to create one, and one task's page with its controls, coming
// occurrences, runs and the decision record of past occurrences.

import { all, api, stream } from "./api.js";
import { badge, duration, h, relative, replace, shortId, wallTime, when } from "./dom.js";

const WINDOWS = { "24 hours": 24, "7 days": 24 * 7, "30 days": 24 * 30 };
const FINAL_TASK = new Set(["cancelled", "completed"]);
const OCCURRENCES = 60; // asked per task for the timeline
const KINDS = ["cron", "rrule", "once", "event", "condition"];
const EXAMPLE_PIPELINE = {
  pipeline: [{ id: "hello", uses: "log", with: { message: "hello from the dashboard" } }],
};

/** Run `fn` over `items` with at most `limit` at a time (the API is shared). */
async function pooled(items, limit, fn) {
  const out = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

// -- the list and its timeline ---------------------------------------------------------------

export function tasksView(root, ctx) {
  let windowHours = Number(sessionStorage.getItem("pao.window") || 24 * 7);
  let statusFilter = "";
  let alive = true;
  const body = h("div", { class: "card" }, h("p", { class: "muted" }, "Loading tasks…"));

  const windowSelect = h("select", { id: "window", onchange: () => {
    windowHours = Number(windowSelect.value);
    sessionStorage.setItem("pao.window", String(windowHours));
    load();
  } }, Object.entries(WINDOWS).map(([label, hours]) =>
    h("option", { value: hours, selected: hours === windowHours }, `next ${label}`)));
  const statusSelect = h("select", { id: "status-filter", onchange: () => {
    statusFilter = statusSelect.value;
    load();
  } }, h("option", { value: "" }, "any"),
  ["active", "paused", "completed", "cancelled"].map((s) => h("option", { value: s }, s)));

  replace(root,
    h("div", { class: "view-head" },
      h("h1", {}, "Tasks"),
      h("div", { class: "toolbar" },
        h("label", { for: "status-filter" }, "Status"), statusSelect,
        h("label", { for: "window" }, "Timeline"), windowSelect,
        h("button", { type: "button", class: "secondary", onclick: () => load() }, "Refresh"))),
    createForm(ctx),
    body);

  async function load() {
    try {
      const tasks = await all("tasks", { status: statusFilter }, 200);
      const upcoming = await pooled(tasks, 6, (task) =>
        task.status === "active" && task.schedule_kind !== "event"
          ? api("GET", `tasks/${task.id}/occurrences`, { query: { count: OCCURRENCES } }).then((o) => o.items)
          : Promise.resolve([]));
      if (alive) replace(body, taskTable(tasks, upcoming, windowHours));
    } catch (err) {
      if (alive) ctx.showProblem(err);
    }
  }
  load();
  const timer = setInterval(load, 60000); // the timeline moves with the clock
  return () => {
    alive = false;
    clearInterval(timer);
  };
}

function taskTable(tasks, upcoming, windowHours) {
  if (!tasks.length) {
    return h("p", { class: "muted" }, "No tasks yet. Create one above, or with POST /tasks.");
  }
  const start = Date.now();
  const end = start + windowHours * 3600 * 1000;
  return h("table", { class: "tasks" },
    h("caption", { class: "visually-hidden" }, "Tasks and their next occurrences"),
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "Task"),
      h("th", { scope: "col" }, "Schedule"),
      h("th", { scope: "col" }, "Status"),
      h("th", { scope: "col" }, "Next run"),
      h("th", { scope: "col", class: "timeline-col" }, axis(start, end)))),
    h("tbody", {}, tasks.map((task, i) => h("tr", { "data-task-id": task.id },
      h("th", { scope: "row" }, h("a", { href: `#/tasks/${task.id}` }, task.title)),
      h("td", {}, h("span", { class: "kind" }, task.schedule_kind), " ",
        h("code", { class: "expr" }, task.schedule_expr)),
      h("td", {}, badge(task.status)),
      h("td", {}, task.next_run_at
        ? [when(task.next_run_at), h("div", { class: "muted small" }, relative(task.next_run_at))]
        : "—"),
      h("td", { class: "timeline-col" }, lane(task, upcoming[i], start, end))))));
}

/** Where the axis puts a tick: each day (or each few hours), in the viewer's zone. */
function ticks(start, end) {
  const hours = (end - start) / 3600000;
  const step = hours <= 24 ? 3 : hours <= 24 * 7 ? 24 : 24 * 5;
  const first = new Date(start);
  first.setMinutes(0, 0, 0);
  if (step >= 24) first.setHours(0);
  else first.setHours(first.getHours() - (first.getHours() % step));
  const fmt = new Intl.DateTimeFormat(undefined, step >= 24
    ? { weekday: "short", day: "numeric" } : { hour: "2-digit", minute: "2-digit" });
  const out = [];
  for (let t = first.getTime() + step * 3600000; t < end; t += step * 3600000) {
    out.push({ at: t, label: fmt.format(new Date(t)), left: ((t - start) / (end - start)) * 100 });
  }
  return out;
}

function axis(start, end) {
  const el = h("div", { class: "axis", "aria-label": "Timeline, your local time" });
  for (const tick of ticks(start, end)) {
    const label = h("span", { class: "tick" }, tick.label);
    label.style.left = `${tick.left}%`;
    el.append(label);
  }
  return el;
}

function lane(task, occurrences, start, end) {
  const list = h("ol", { class: "lane", "aria-label": `Next occurrences of ${task.title}` });
  for (const tick of ticks(start, end)) {
    const line = h("li", { class: "grid", "aria-hidden": "true" });
    line.style.left = `${tick.left}%`;
    list.append(line);
  }
  const position = (at) => ((new Date(at).getTime() - start) / (end - start)) * 100;
  const inside = occurrences.filter((o) => position(o.at) >= 0 && position(o.at) <= 100);
  for (const o of inside) {
    const mark = h("li", { class: "mark", title: `${o.local} (task's time)` },
      h("span", { class: "visually-hidden" }, wallTime(o.local)));
    mark.style.left = `${position(o.at)}%`;
    list.append(mark);
  }
  if (inside.length && inside.length === occurrences.length && occurrences.length >= OCCURRENCES) {
    // Only the first ones were asked for: say the rest go on rather than leave a gap.
    const more = h("li", { class: "lane-more" }, "and more…");
    more.style.left = `${position(inside[inside.length - 1].at)}%`;
    list.append(more);
  }
  if (!inside.length) {
    const why = task.status !== "active" ? task.status
      : task.schedule_kind === "event" ? "fires on events" : "nothing in this window";
    list.append(h("li", { class: "lane-note" }, why));
  }
  return list;
}

// -- creating a task -------------------------------------------------------------------------

function field(label, name, control, hint) {
  const id = `new-${name}`;
  control.id = id;
  control.name = name;
  control.dataset.field = name;
  return h("div", { class: "field" },
    h("label", { for: id }, label), control,
    hint ? h("small", { class: "hint" }, hint) : null,
    h("small", { class: "field-error", id: `${id}-error`, "aria-live": "polite" }));
}

function createForm(ctx) {
  const kind = h("select", {}, KINDS.map((k) => h("option", { value: k, selected: k === "cron" }, k)));
  const form = h("form", { class: "create", novalidate: true },
    field("Title", "title", h("input", { required: true, value: "Hello from the dashboard" })),
    field("Schedule kind", "schedule_kind", kind),
    field("Schedule", "schedule_expr", h("input", { required: true, value: "0 9 * * 1-5" }),
      "cron: five fields · rrule: FREQ=… · once: ISO 8601 · event: type or prefix*"),
    field("Time zone", "timezone", h("input", { placeholder: "the API's default" }), "IANA name, e.g. Europe/Chisinau"),
    field("Pipeline (payload JSON)", "payload",
      h("textarea", { rows: 6, spellcheck: "false" }, JSON.stringify(EXAMPLE_PIPELINE, null, 2))),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Create task")));

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    ctx.clearProblem();
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
    for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
    const data = Object.fromEntries(new FormData(form));
    let payload;
    try {
      payload = JSON.parse(data.payload || "{}");
    } catch (err) {
      markField(form, "payload", `not valid JSON: ${err.message}`);
      return;
    }
    const body = {
      title: data.title,
      schedule_kind: data.schedule_kind,
      schedule_expr: data.schedule_expr,
      payload,
    };
    if (data.timezone.trim()) body.timezone = data.timezone.trim();
    try {
      const task = await api("POST", "tasks", { body });
      ctx.go(`#/tasks/${task.id}`);
    } catch (err) {
      ctx.showProblem(err);
      for (const e of err.errors || []) markField(form, String(e.field || "").split(/[.[]/)[0], e.message);
    }
  });
  return h("details", { class: "card create-card" }, h("summary", {}, "New task"), form);
}

function markField(form, name, message) {
  const control = form.querySelector(`[data-field="${CSS.escape(name)}"]`);
  if (!control) return;
  control.setAttribute("aria-invalid", "true");
  control.setAttribute("aria-describedby", `${control.id}-error`);
  const out = form.querySelector(`#${control.id}-error`);
  out.textContent = out.textContent ? `${out.textContent}; ${message}` : message;
}

// -- one task --------------------------------------------------------------------------------

export function taskView(root, ctx, taskId) {
  let alive = true;
  let task = null;
  let olderFrom = null;
  const controller = new AbortController();
  const head = h("div", { class: "view-head" }, h("h1", {}, "Task ", shortId(taskId)));
  const facts = h("dl", { class: "facts card" });
  const snoozeInput = h("input", { id: "snooze-seconds", type: "number", min: 1, value: 600, inputmode: "numeric" });
  const buttons = {
    run: h("button", { type: "button", onclick: () => act("run_now") }, "Run now"),
    pause: h("button", { type: "button", class: "secondary", onclick: () => act("pause") }, "Pause"),
    resume: h("button", { type: "button", class: "secondary", onclick: () => act("resume") }, "Resume"),
    snooze: h("button", { type: "submit", class: "secondary" }, "Snooze"),
    cancel: h("button", { type: "button", class: "danger", onclick: cancelTask }, "Cancel task…"),
  };
  const controls = h("div", { class: "controls card", role: "group", "aria-label": "Task controls" },
    buttons.run, buttons.pause, buttons.resume,
    h("form", { class: "inline", onsubmit: (e) => {
      e.preventDefault();
      act("snooze", { seconds: Number(snoozeInput.value) });
    } }, h("label", { for: "snooze-seconds" }, "by"), snoozeInput, h("span", {}, "s"), buttons.snooze),
    buttons.cancel,
    h("span", { class: "live muted", id: "task-live", "aria-live": "polite" }));
  const upcoming = h("div", {});
  const runs = h("div", {});
  const record = h("div", {});
  const older = h("button", { type: "button", class: "secondary", hidden: true, onclick: () => loadRecord(true) },
    "Show older occurrences");

  replace(root, head, controls, facts,
    h("div", { class: "columns" },
      h("section", { class: "card", "aria-labelledby": "h-upcoming" }, h("h2", { id: "h-upcoming" }, "Coming occurrences"), upcoming),
      h("section", { class: "card", "aria-labelledby": "h-runs" }, h("h2", { id: "h-runs" }, "Runs"), runs)),
    h("section", { class: "card", "aria-labelledby": "h-record" },
      h("h2", { id: "h-record" }, "Decision record"),
      h("p", { class: "muted small" }, "What the scheduler decided for each past occurrence, and the run it led to."),
      record, older));

  async function act(action, body) {
    ctx.clearProblem();
    try {
      const result = await api("POST", `tasks/${taskId}/${action}`, { body });
      if (action === "run_now") {
        ctx.go(`#/runs/${result.id}`);
        return;
      }
      showTask(result);
      loadAll();
    } catch (err) {
      ctx.showProblem(err);
    }
  }

  async function cancelTask() {
    const ok = await ctx.confirm(
      `Cancel "${task ? task.title : taskId}" for good? Queued work is dropped and a running run is stopped.`,
      "Cancel task");
    if (ok) act("cancel");
  }

  function showTask(t) {
    task = t;
    replace(head, h("h1", {}, t.title), badge(t.status));
    replace(facts,
      fact("Schedule", h("span", {}, h("span", { class: "kind" }, t.schedule_kind), " ", h("code", {}, t.schedule_expr))),
      fact("Time zone", t.timezone),
      fact("Next run", t.next_run_at ? [when(t.next_run_at), ` (${relative(t.next_run_at)})`] : "—"),
      fact("Priority", String(t.priority)),
      fact("Retries", `${t.max_retries}, ${t.backoff_strategy.replace("_", " ")}`),
      fact("Created", when(t.created_at)),
      t.description ? fact("Description", t.description) : null,
      fact("Id", h("code", {}, t.id)));
    const ended = FINAL_TASK.has(t.status);
    buttons.run.disabled = ended;
    buttons.pause.disabled = t.status !== "active";
    buttons.resume.disabled = t.status !== "paused";
    buttons.snooze.disabled = t.status !== "active";
    snoozeInput.disabled = t.status !== "active";
    buttons.cancel.disabled = ended;
  }

  async function loadRecord(more) {
    const query = { past: true, count: 50 };
    if (more && olderFrom) query.from = olderFrom;
    const page = await api("GET", `tasks/${taskId}/occurrences`, { query, signal: controller.signal });
    const rows = page.items.map(recordRow);
    if (more) record.querySelector("tbody")?.append(...rows);
    else replace(record, page.items.length ? recordTable(rows) : h("p", { class: "muted" }, "No past occurrences yet."));
    olderFrom = page.items.length ? page.items[page.items.length - 1].at : olderFrom;
    if (!more || page.items.length < 50) older.hidden = page.items.length < 50;
  }

  async function loadAll() {
    try {
      const t = await api("GET", `tasks/${taskId}`, { signal: controller.signal });
      if (!alive) return;
      showTask(t);
      const [next, recent] = await Promise.all([
        t.status === "active" && t.schedule_kind !== "event"
          ? api("GET", `tasks/${taskId}/occurrences`, { query: { count: 8 }, signal: controller.signal })
          : { items: [] },
        api("GET", "runs", { query: { task_id: taskId, limit: 10 }, signal: controller.signal }),
      ]);
      if (!alive) return;
      replace(upcoming, next.items.length
        ? h("ol", { class: "upcoming" }, next.items.map((o) => upcomingItem(o, t)))
        : h("p", { class: "muted" }, t.schedule_kind === "event" ? "Fires when a matching event arrives." : "Nothing coming."));
      replace(runs, recent.items.length ? runsTable(recent.items) : h("p", { class: "muted" }, "No runs yet."));
      await loadRecord(false);
    } catch (err) {
      if (alive) ctx.showProblem(err);
    }
  }

  // Live: the task's stream says when its runs move; without one, poll.
  let timer = null;
  let pending = null;
  const refreshSoon = () => {
    if (!pending) pending = setTimeout(() => { pending = null; loadAll(); }, 250);
  };
  loadAll().then(async () => {
    const live = document.getElementById("task-live");
    live.textContent = "live";
    let outcome;
    try {
      outcome = await stream(`tasks/${taskId}/stream`, refreshSoon, controller.signal);
    } catch {
      outcome = "broken";
    }
    if (!alive || outcome === "aborted") return;
    live.textContent = "refreshing every 3 s";
    timer = setInterval(loadAll, 3000);
  });
  return () => {
    alive = false;
    controller.abort();
    clearInterval(timer);
    clearTimeout(pending);
  };
}

/** A coming fire time; one before `next_run_at` was snoozed past, and says so. */
function upcomingItem(o, task) {
  const moved = task.next_run_at && new Date(o.at) < new Date(task.next_run_at);
  return h("li", {}, h("span", { class: moved ? "moved" : null }, wallTime(o.local)),
    h("span", { class: "muted small" }, moved ? " snoozed to the next run" : ` ${relative(o.at)}`));
}

function fact(term, value) {
  return h("div", {}, h("dt", {}, term), h("dd", {}, value));
}

function runsTable(items) {
  return h("table", { class: "runs compact" },
    h("thead", {}, h("tr", {}, ["Run", "Status", "Attempt", "Scheduled for", "Duration"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, items.map((r) => h("tr", {},
      h("td", {}, h("a", { href: `#/runs/${r.id}` }, shortId(r.id))),
      h("td", {}, badge(r.status)),
      h("td", {}, String(r.attempt)),
      h("td", {}, when(r.scheduled_for)),
      h("td", {}, duration(r.duration_ms))))));
}

function recordTable(rows) {
  return h("table", { class: "record" },
    h("thead", {}, h("tr", {}, ["Occurrence (task's time)", "Decision", "Why", "Decided", "Run"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows));
}

function recordRow(o) {
  return h("tr", {},
    h("td", {}, wallTime(o.local)),
    h("td", {}, badge(o.decision)),
    h("td", { class: "why" }, o.detail || "—"),
    h("td", {}, when(o.decided_at)),
    h("td", {}, o.run_id ? [h("a", { href: `#/runs/${o.run_id}` }, shortId(o.run_id)), " ", badge(o.run_status)] : "—"));
}

