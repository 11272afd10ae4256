// Small helpers to build the page from data without innerHTML: every text the
// API returns (titles, outputs, log lines) goes in as text, never as markup.

/** h("a", {href: "#/x", class: "y"}, "text", child, ...) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A status or decision as a coloured label; the colour is never the only cue. */
export function badge(value) {
  const text = String(value || "—");
  return h("span", { class: `badge b-${text.replace(/[^a-z_]/g, "")}` }, text.replace("_", " "));
}

const dateTime = new Intl.DateTimeFormat(undefined, {
  weekday: "short",
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
});

/** A <time> in the viewer's zone, with the exact instant in its title. */
export function when(iso) {
  if (!iso) return "—";
  const at = new Date(iso);
  return h("time", { datetime: at.toISOString(), title: at.toISOString() }, dateTime.format(at));
}

/** The task's own wall time as the API gave it ("2026-03-09T08:30:00+02:00"). */
export function wallTime(local) {
  if (!local) return "—";
  return h("time", { datetime: local }, local.replace("T", " ").replace(/\.\d+/, ""));
}

export function relative(iso, now = Date.now()) {
  const seconds = Math.round((new Date(iso).getTime() - now) / 1000);
  const abs = Math.abs(seconds);
  const [n, unit] =
    abs < 60 ? [abs, "s"] : abs < 3600 ? [Math.round(abs / 60), "min"]
      : abs < 86400 ? [Math.round(abs / 3600), "h"] : [Math.round(abs / 86400), "d"];
  return seconds >= 0 ? `in ${n} ${unit}` : `${n} ${unit} ago`;
}

export function duration(ms) {
  if (ms === null || ms === undefined) return "—";
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}

export function shortId(id) {
  return String(id).slice(0, 8);
}

/** JSON shown as readable text. */
export function json(value) {
  return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}
