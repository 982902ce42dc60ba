// The async_store demo page: drag and drop (or paste), one upload and progress bar per file,
// delete without a reload. Plain JavaScript; without it the form posts and the page reloads.
//
// Each file goes to the tus endpoint (the form's data-tus, /files/) with tus-js-client
// (vendor/tus.min.js, which defines `tus`), a few MiB per request: when the connection drops or
// the server restarts, the upload asks the server how much it has and sends only the rest.
//
// On S3 (the form has data-direct) each file goes straight to the bucket instead, with Uppy's
// core and its AwsS3 plugin (vendor/uppy.min.js, which defines `Uppy`; no Uppy UI): the app
// only signs, then confirms what arrived (data-confirm) and answers its card.
"use strict";

const PARALLEL = 3; // uploads at once; the others wait their turn
const RECHECK = 1000; // ms between two looks at a card whose background upload is on its way
// Bytes per PATCH: what a drop can cost, and how often the server counts what it has.
const CHUNK = 5 * 1024 * 1024;
// ms to wait before each new attempt when the server is out of reach (back to the first one
// whenever bytes got through): a restart takes seconds; this gives up after about a minute.
const RETRY_DELAYS = [0, 1000, 2000, 3000, 5000, 5000, 10000, 10000, 10000, 20000];
// An answer that the server could not store the file (503: S3 is down) is tried this many more
// times, then shown: it seldom heals in seconds, and the upload stays resumable.
const SERVER_ERROR_RETRIES = 2;

const form = document.getElementById("upload-form");
const input = document.getElementById("afile");
const drop = document.getElementById("drop");
const queue = document.getElementById("queue");
const queueHead = document.getElementById("queue-head");
const gallery = document.getElementById("gallery");
const empty = document.getElementById("empty");
const count = document.getElementById("count");
const status = document.getElementById("status");

const waiting = [];
let running = 0;
// Upload URLs this page is sending to now: a second copy of a file must not resume the same one.
const sending = new Set();

function announce(text) {
  status.textContent = text;
}

function formatSize(size) {
  if (size < 1024) return `${size} bytes`;
  for (const unit of ["KiB", "MiB", "GiB"]) {
    size /= 1024;
    if (size < 1024 || unit === "GiB") return `${size.toFixed(1)} ${unit}`;
  }
}

function updateCount() {
  const n = gallery.children.length;
  count.textContent = `${n} file${n === 1 ? "" : "s"}`;
  empty.hidden = n > 0;
}

// --- the queue ---------------------------------------------------------------------------

function queueItem(file) {
  const item = document.createElement("li");
  const name = document.createElement("span");
  name.className = "qname";
  name.textContent = file.name;
  name.title = file.name;
  const state = document.createElement("span");
  state.className = "qstate";
  state.textContent = `waiting · ${formatSize(file.size)}`;
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.className = "link cancel";
  cancel.textContent = "Cancel";
  cancel.setAttribute("aria-label", `Cancel ${file.name}`);
  const bar = document.createElement("progress");
  bar.max = 100;
  bar.value = 0;
  bar.setAttribute("aria-label", `Upload of ${file.name}`);
  const side = document.createElement("span");
  side.append(state, " ", cancel);
  // Why an upload failed, on a line of its own: a long message never pushes the name out.
  const reason = document.createElement("span");
  reason.className = "qreason";
  reason.hidden = true;
  item.append(name, side, reason, bar);
  queue.prepend(item);
  queueHead.hidden = false;
  // stop: set while the upload runs (cancels it); message: the server's last error line.
  return { file, item, state, reason, bar, cancel, stop: null, message: "" };
}

function finish(job, ok, text, reason = "") {
  job.item.classList.add(ok ? "done" : "failed");
  job.state.textContent = text;
  job.reason.textContent = reason;
  job.reason.hidden = !reason;
  job.cancel.remove();
}

function enqueue(files) {
  for (const file of files) {
    const job = queueItem(file);
    job.cancel.addEventListener("click", () => {
      if (job.stop) {
        job.stop();
      } else {
        waiting.splice(waiting.indexOf(job), 1);
        finish(job, false, "cancelled");
      }
    });
    waiting.push(job);
  }
  pump();
}

function pump() {
  while (running < PARALLEL && waiting.length > 0) {
    const job = waiting.shift();
    running += 1;
    send(job).finally(() => {
      running -= 1;
      pump();
    });
  }
}

// tus-js-client would start the whole file again when a HEAD (where did my upload stop?) is
// answered with a server error, such as S3 being down while the finished upload is stored. Thrown
// from onAfterResponse, it is an error to retry like any other instead.
class ServerError extends Error {
  constructor(status) {
    super(`the server answered ${status}`);
    this.status = status;
  }
}

// The HTTP status of a failed attempt; 0 when no answer came (the server is down or restarting).
function statusOf(error) {
  if (error.originalResponse) return error.originalResponse.getStatus();
  return error.causingError instanceof ServerError ? error.causingError.status : 0;
}

function progress(job, sent) {
  const size = job.file.size;
  const percent = size === 0 ? 100 : Math.floor((100 * sent) / size);
  job.bar.value = percent;
  job.state.textContent = `${percent} % of ${formatSize(size)}`;
}

function send(job) {
  return form.dataset.direct ? sendToBucket(job) : sendThroughApp(job);
}

// One tus upload per file, so each progress bar is its own file's.
function sendThroughApp(job) {
  return new Promise((resolve) => {
    let url = null;
    const settle = (ok, text, reason = "") => {
      sending.delete(url);
      job.stop = null;
      finish(job, ok, text, reason);
      resolve();
    };
    const upload = new tus.Upload(job.file, {
      endpoint: form.dataset.tus,
      chunkSize: CHUNK,
      retryDelays: RETRY_DELAYS,
      metadata: { filename: job.file.name, filetype: job.file.type },
      // The same file picked again after a reload carries on; once stored, it starts afresh.
      removeFingerprintOnSuccess: true,
      onUploadUrlAvailable() {
        url = upload.url;
        sending.add(url);
      },
      onProgress(sent) {
        progress(job, sent);
      },
      onAfterResponse(request, response) {
        const status = response.getStatus();
        // The server's one line ("503 Service Unavailable: cannot reach the S3 endpoint…");
        // a HEAD's answer has no body, so the last PATCH's line is kept.
        const text = (response.getBody() || "").trim();
        if (status >= 400 && text) job.message = text;
        if (request.getMethod() === "HEAD" && status >= 500) throw new ServerError(status);
      },
      onShouldRetry(error, attempt, options) {
        const status = statusOf(error);
        // A 423 to the HEAD after a 5xx: every byte is on the server and storing the file
        // fails for now (S3 down): retried as the server error it follows, not forever.
        const failing = status >= 500 || (status === 423 && job.message);
        const retry = failing
          ? attempt < SERVER_ERROR_RETRIES
          : tus.defaultOptions.onShouldRetry(error, attempt, options);
        if (retry) job.state.textContent = status === 0 ? "reconnecting…" : "retrying…";
        return retry;
      },
      onSuccess({ lastResponse }) {
        const path = lastResponse.getHeader("Upload-Stored-Path");
        sending.delete(url);
        job.stop = null;
        job.cancel.remove();
        if (!path) {
          settle(false, "failed", "the server did not say where it stored the file");
          return;
        }
        const stored = decodeURIComponent(path);
        const query = new URLSearchParams({ path: stored });
        const ask = (headers) => fetch(`${form.dataset.card}?${query}`, { headers });
        showCard(job, ask, `stored as ${stored}, but the server is out of reach: reload the page`)
          .then(resolve);
      },
      onError(error) {
        const status = statusOf(error);
        const unreachable = "network error: is the server running?";
        const reason = job.message || (status ? `${status} from the server` : unreachable);
        settle(false, "failed", reason);
        announce(`${job.file.name} failed: ${reason}`);
      },
    });
    job.stop = () => {
      // Terminates it too: the server removes what arrived.
      upload.abort(true).catch(() => {});
      settle(false, "cancelled");
    };
    upload.findPreviousUploads().then((previous) => {
      const mine = previous.find((p) => !sending.has(p.uploadUrl));
      if (mine) upload.resumeFromPreviousUpload(mine);
      if (job.stop) upload.start(); // not cancelled meanwhile
    });
  });
}

// --- straight to the bucket (S3) ------------------------------------------------------------

const PART = 5 * 1024 * 1024; // S3's smallest part
const MULTIPART_OVER = 2 * PART; // a larger file goes in parts, a smaller one in one POST
const MAX_PARTS = 10000; // S3's most

// Why an upload to the bucket failed, in words. Uppy's errors carry the request that failed
// (`source`): one to the bucket that got no answer (status 0) is, on a running bucket, its CORS
// rule keeping this page out; one the app refused says why in its cause.
function bucketError(error) {
  const request = error.source;
  if (request && request.status === 0) {
    return (
      `the bucket did not answer this page: its CORS rule must let ${location.origin} in ` +
      "(docs/direct.md), and the bucket must be up"
    );
  }
  if (request && request.status) {
    const said = /<Message>([^<]*)<\/Message>/.exec(request.responseText || "");
    return `the bucket answered ${request.status}${said ? `: ${said[1]}` : ""}`;
  }
  const cause = error.cause && error.cause.message;
  return cause && !error.message.includes(cause) ? `${error.message}: ${cause}` : error.message;
}

// One headless Uppy per file, so each progress bar is its own file's: the AwsS3 plugin asks the
// app's direct-upload endpoints (data-direct) to sign, a presigned POST or each part of a
// multipart upload, and sends the bytes to the bucket itself. Then the page posts the upload's
// key to data-confirm: the app stores the file under its name, adds its row, answers its card.
function sendToBucket(job) {
  return new Promise((resolve) => {
    const uppy = new Uppy.Uppy({ autoProceed: false });
    uppy.use(Uppy.AwsS3, {
      endpoint: form.dataset.direct,
      shouldUseMultipart: (file) => file.size > MULTIPART_OVER,
      getChunkSize: (file) => Math.max(PART, Math.ceil(file.size / MAX_PARTS)),
    });
    const settle = (ok, text, reason = "") => {
      job.stop = null;
      finish(job, ok, text, reason);
      uppy.destroy();
      resolve();
    };
    uppy.on("upload-progress", (file, { bytesUploaded }) => progress(job, bytesUploaded));
    uppy.on("upload-error", (file, error) => {
      const reason = bucketError(error);
      settle(false, "failed", reason);
      announce(`${job.file.name} failed: ${reason}`);
    });
    uppy.on("upload-success", (file, response) => {
      job.stop = null;
      job.cancel.remove();
      const key = response.body.key || (file.s3Multipart && file.s3Multipart.key);
      if (!key) {
        settle(false, "failed", "the upload's key is unknown: nothing to confirm");
        return;
      }
      job.state.textContent = "confirming…";
      const ask = (headers) =>
        fetch(form.dataset.confirm, { method: "POST", headers, body: new URLSearchParams({ key }) });
      const lost = "in the bucket, but the app is out of reach to confirm it: upload it again";
      showCard(job, ask, lost).then(() => {
        uppy.destroy();
        resolve();
      });
    });
    let id;
    try {
      id = uppy.addFile({ name: job.file.name, type: job.file.type, data: job.file });
    } catch (error) {
      settle(false, "failed", error.message);
      return;
    }
    // Removing the file aborts its upload (a multipart one is aborted in the bucket too).
    job.stop = () => {
      uppy.removeFile(id);
      settle(false, "cancelled");
    };
    uppy.upload().catch(() => {}); // a failure is an upload-error, shown above
  });
}

// --- the card --------------------------------------------------------------------------------

// The upload is stored and has its row: its card, from ask(headers), the server's answer (the
// card of the stored path tus answered with, or of the confirmed direct upload). `lost`: what
// to say when the server is out of reach.
async function showCard(job, ask, lost) {
  const fail = (reason) => {
    finish(job, false, "failed", reason);
    announce(`${job.file.name} failed: ${reason}`);
  };
  let response;
  try {
    response = await ask({ "X-Requested-With": "XMLHttpRequest" });
  } catch {
    fail(lost);
    return;
  }
  if (!response.ok) {
    fail((await response.text()).trim() || `${response.status} ${response.statusText}`);
    return;
  }
  job.bar.value = 100;
  const cards = addCards(await response.text());
  const stored = () => {
    finish(job, true, `stored · ${formatSize(job.file.size)}`);
    announce(`${job.file.name} uploaded`);
  };
  const onTheirWay = cards.filter((card) => card.dataset.status === "uploading");
  if (onTheirWay.length === 0) {
    stored();
    return;
  }
  // Background uploads: spooled on the server, delivered to the store in a moment.
  job.state.textContent = `uploading · ${formatSize(job.file.size)}`;
  const found = await Promise.all(onTheirWay.map(watch));
  if (found.every(Boolean)) stored();
  else finish(job, false, "deleted before it was delivered");
}

function parseCards(html) {
  const template = document.createElement("template");
  template.innerHTML = html; // the server's own template, names escaped
  return [...template.content.children];
}

function addCards(html) {
  const cards = parseCards(html);
  gallery.prepend(...cards);
  updateCount();
  return cards;
}

// A card whose background upload is on its way: ask the server again until its file is
// delivered, then show it as stored (thumbnail, link). Resolves to false if it was deleted.
async function watch(card) {
  for (;;) {
    await new Promise((wake) => setTimeout(wake, RECHECK));
    if (!card.isConnected) return false; // deleted on this page
    let response;
    try {
      const headers = { "X-Requested-With": "XMLHttpRequest" };
      response = await fetch(card.dataset.card, { headers });
    } catch {
      continue; // the server is restarting: look again later
    }
    if (response.status === 404) {
      card.remove();
      updateCount();
      return false;
    }
    if (!response.ok) continue;
    const [now] = parseCards(await response.text());
    if (now && now.dataset.status !== "uploading") {
      if (!card.isConnected) return false;
      card.replaceWith(now);
      return true;
    }
  }
}

for (const card of gallery.querySelectorAll(".card[data-status='uploading']")) watch(card);

document.getElementById("clear").addEventListener("click", () => {
  for (const item of queue.querySelectorAll(".done, .failed")) item.remove();
  queueHead.hidden = queue.children.length === 0;
});

// --- picking and dropping ------------------------------------------------------------------

input.addEventListener("change", () => {
  enqueue([...input.files]);
  input.value = ""; // the same file may be picked again
});

form.addEventListener("submit", (event) => {
  event.preventDefault();
  enqueue([...input.files]);
  input.value = "";
});

let depth = 0; // dragenter/dragleave fire for every child the pointer crosses
drop.addEventListener("dragenter", (event) => {
  event.preventDefault();
  depth += 1;
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => {
  depth -= 1;
  if (depth === 0) drop.classList.remove("over");
});
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  event.dataTransfer.dropEffect = "copy";
});
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  depth = 0;
  drop.classList.remove("over");
  enqueue([...event.dataTransfer.files]);
});
// A screenshot or a copied file, pasted anywhere on the page.
window.addEventListener("paste", (event) => {
  const files = [...event.clipboardData.files];
  if (files.length > 0) {
    event.preventDefault();
    enqueue(files);
  }
});
// A file dropped next to the zone must not replace the page with the file.
for (const type of ["dragover", "drop"]) {
  window.addEventListener(type, (event) => event.preventDefault());
}

// --- delete --------------------------------------------------------------------------------

gallery.addEventListener("submit", async (event) => {
  const deleteForm = event.target.closest("form.delete");
  if (!deleteForm) return;
  event.preventDefault();
  const card = deleteForm.closest(".card");
  const name = card.querySelector(".name").textContent;
  const button = deleteForm.querySelector("button");
  button.disabled = true;
  let response;
  try {
    response = await fetch(deleteForm.action, {
      method: "POST",
      headers: { "X-Requested-With": "XMLHttpRequest" },
    });
  } catch {
    response = null;
  }
  if (!response || !(response.ok || response.status === 404)) {
    button.disabled = false;
    announce(`Could not delete ${name}`);
    alert(`Could not delete ${name}: ${response ? await response.text() : "network error"}`);
    return;
  }
  // Keyboard users keep their place: focus moves to the next card (or the previous one).
  const next = card.nextElementSibling || card.previousElementSibling;
  card.classList.add("leaving");
  setTimeout(() => {
    card.remove();
    updateCount();
    (next ? next.querySelector(".name") : document.getElementById("files-title")).focus();
  }, 200);
  announce(`${name} deleted`);
});
document.getElementById("files-title").tabIndex = -1;
