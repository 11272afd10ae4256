// The public HTTP API, as the dashboard uses it: a bearer token, JSON bodies,
// problem responses turned into ApiProblem errors, and live streams read with
// fetch() (EventSource cannot send an Authorization header).

const TOKEN_KEY = "pao.token";
// The API is the parent of /ui/, so the page works under a path prefix too.
const BASE = new URL("..", document.baseURI);

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  forget: () => sessionStorage.removeItem(TOKEN_KEY),
};

/** What went wrong, as the API's problem+json said it (or as close as we can tell). */
export class ApiProblem extends Error {
  constructor(status, body) {
    super(body.detail || body.title || `HTTP ${status}`);
    this.status = status;
    this.title = body.title || `HTTP ${status}`;
    this.detail = body.detail || "";
    this.errors = Array.isArray(body.errors) ? body.errors : [];
    this.requestId = body.request_id || null;
  }
}

function url(path, query) {
  const u = new URL(path.replace(/^\//, ""), BASE);
  for (const [key, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") u.searchParams.set(key, value);
  }
  return u;
}

function headers(extra) {
  const h = { Accept: "application/json", ...extra };
  const t = token.get();
  if (t) h.Authorization = `Bearer ${t}`;
  return h;
}

async function problemOf(response) {
  let body = {};
  try {
    body = await response.json();
  } catch {
    body = { title: response.statusText || `HTTP ${response.status}` };
  }
  return new ApiProblem(response.status, body);
}

/** One request; resolves to the parsed body (null for 204), rejects with ApiProblem. */
export async function api(method, path, { query, body, signal } = {}) {
  let response;
  try {
    response = await fetch(url(path, query), {
      method,
      signal,
      headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiProblem(0, {
      title: "The API cannot be reached",
      detail: `${err.message}. Is pao api running?`,
    });
  }
  if (!response.ok) throw await problemOf(response);
  return response.status === 204 ? null : response.json();
}

/**
 * A file's bytes (an asset's content) as a Blob, fetched with the token; rejects with
 * ApiProblem. Only for what the page shows itself (an image preview): downloads go
 * through a signed link, so the browser streams them to disk.
 */
export async function blob(path, signal) {
  let response;
  try {
    response = await fetch(url(path), { headers: headers({ Accept: "*/*" }), signal });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiProblem(0, { title: "The API cannot be reached", detail: err.message });
  }
  if (!response.ok) throw await problemOf(response);
  return response.blob();
}

/**
 * POST a multipart form (a file upload), calling onProgress(sent, total) as the body
 * goes out: fetch() cannot tell upload progress, XMLHttpRequest can. Resolves to the
 * parsed answer, rejects with ApiProblem.
 */
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url(path));
    for (const [key, value] of Object.entries(headers())) xhr.setRequestHeader(key, value);
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded, event.total);
    });
    xhr.addEventListener("load", () => {
      let body = {};
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        body = { title: xhr.statusText || `HTTP ${xhr.status}` };
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new ApiProblem(xhr.status, body));
    });
    xhr.addEventListener("error", () => reject(new ApiProblem(0, {
      title: "The upload broke off",
      detail: "The API could not be reached, or closed the connection. Nothing was stored; try again.",
    })));
    xhr.send(form);
  });
}

/** Every item of a paged list, following next_cursor up to `max` items. */
export async function all(path, query = {}, max = 1000) {
  const items = [];
  let cursor = null;
  do {
    const page = await api("GET", path, { query: { ...query, limit: 100, cursor } });
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor && items.length < max);
  return items;
}

/**
 * Follow a Server-Sent Events endpoint, calling onEvent(name, data) for each event.
 * Resolves to "ended" when the server closes the stream, "absent" when the
 * endpoint does not exist (404/405: an older API), "aborted" when `signal` fires;
 * rejects with ApiProblem for other errors.
 */
export async function stream(path, onEvent, signal) {
  let response;
  try {
    response = await fetch(url(path), { headers: headers({ Accept: "text/event-stream" }), signal });
  } catch (err) {
    if (err.name === "AbortError") return "aborted";
    throw new ApiProblem(0, { title: "The API cannot be reached", detail: err.message });
  }
  if (response.status === 404 || response.status === 405) {
    // A run that does not exist is a 404 too; the caller's poll reports that properly.
    return "absent";
  }
  if (!response.ok) throw await problemOf(response);
  if (!(response.headers.get("content-type") || "").startsWith("text/event-stream")) {
    return "absent";
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return "ended";
      buffer += value.replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        dispatch(block, onEvent);
      }
    }
  } catch (err) {
    if (err.name === "AbortError") return "aborted";
    throw new ApiProblem(0, { title: "The live stream broke off", detail: err.message });
  } finally {
    reader.releaseLock();
  }
}

function dispatch(block, onEvent) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue; // comments are heartbeats
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") name = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return;
  let parsed;
  try {
    parsed = JSON.parse(data.join("\n"));
  } catch {
    return; // not ours to show
  }
  onEvent(name, parsed);
}
