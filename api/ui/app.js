// The dashboard's shell: the token, the problem banner, and a hash router that
// gives each view its container and takes back a clean-up function.

import { ApiProblem, api, token } from "./api.js";
import { assetsView } from "./assets.js";
import { h, replace } from "./dom.js";
import { runView, runsView } from "./runs.js";
import { taskView, tasksView } from "./tasks.js";

const $ = (id) => document.getElementById(id);
const view = $("view");
const problemBox = $("problem");
let cleanup = null;

/** Show what the API said went wrong: its title, detail, each field error, the request id. */
function showProblem(err) {
  if (err?.name === "AbortError") return;
  const p = err instanceof ApiProblem ? err : new ApiProblem(0, { title: "Error", detail: String(err) });
  replace(
    problemBox,
    h("div", { class: "problem-head" },
      h("h2", {}, p.status ? `${p.status} · ${p.title}` : p.title),
      h("button", { type: "button", class: "secondary small", onclick: clearProblem }, "Dismiss")),
    p.detail && p.detail !== p.title ? h("p", { class: "detail" }, p.detail) : null,
    p.errors.length
      ? h("ul", { class: "field-errors" },
        p.errors.map((e) => h("li", {}, h("code", {}, e.field || (e.loc || []).join(".")), " ", e.message)))
      : null,
    p.requestId ? h("p", { class: "request-id" }, "request id ", h("code", {}, p.requestId)) : null,
  );
  problemBox.hidden = false;
  if (p.status === 401) signedOut();
}

function clearProblem() {
  problemBox.hidden = true;
  problemBox.replaceChildren();
}

/** A modal yes/no question; resolves true when the user confirms. */
function confirmAction(text, okLabel) {
  const dialog = $("confirm-dialog");
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

const ctx = {
  showProblem,
  clearProblem,
  confirm: confirmAction,
  go: (hash) => {
    if (location.hash === hash) route();
    else location.hash = hash;
  },
};

const routes = [
  [/^#\/tasks\/([0-9a-f-]{36})$/, taskView, "tasks"],
  [/^#\/tasks$/, tasksView, "tasks"],
  [/^#\/runs\/([0-9a-f-]{36})$/, runView, "runs"],
  [/^#\/runs$/, runsView, "runs"],
  [/^#\/assets$/, assetsView, "assets"],
];

function route() {
  if (cleanup) cleanup();
  cleanup = null;
  clearProblem();
  if (!token.get()) {
    view.replaceChildren();
    return;
  }
  const hash = location.hash || "#/tasks";
  const found = routes.find(([re]) => re.test(hash));
  if (!found) {
    location.replace("#/tasks");
    return;
  }
  const [re, render, section] = found;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.view === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  view.replaceChildren();
  cleanup = render(view, ctx, ...hash.match(re).slice(1));
}

function signedIn() {
  const t = token.get();
  $("token-form").hidden = true;
  $("token-state").hidden = false;
  $("token-prefix").textContent = `${t.slice(0, 12)}…`;
  $("welcome").hidden = true;
}

function signedOut() {
  token.forget();
  if (cleanup) cleanup();
  cleanup = null;
  view.replaceChildren();
  $("token-form").hidden = false;
  $("token-state").hidden = true;
  $("welcome").hidden = false;
}

$("token-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("token-input");
  const value = input.value.trim();
  if (!value) {
    showProblem(new ApiProblem(0, { title: "No token", detail: "Paste a token that starts with pao_." }));
    return;
  }
  token.set(value);
  try {
    await api("GET", "tasks", { query: { limit: 1 } }); // says 401 now rather than later
  } catch (err) {
    showProblem(err);
    if (err.status === 401) return;
  }
  input.value = "";
  signedIn();
  route();
  $("main").focus();
});

$("forget-token").addEventListener("click", () => {
  signedOut();
  clearProblem();
  $("token-input").focus();
});

window.addEventListener("hashchange", route);
if (token.get()) signedIn();
route();
