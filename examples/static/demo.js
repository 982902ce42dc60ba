// The async_store demo page: drag and drop (or paste), one upload and progress bar per file,
// delete without a reload. Plain JavaScript; without it the form posts and the page reloads.
"use strict";

const PARALLEL = 3; // uploads at once; the others wait their turn
const RECHECK = 1000; // ms between two looks at a card whose background upload is on its way

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
  return { file, item, state, reason, bar, cancel, xhr: null };
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
      if (job.xhr) {
        job.xhr.abort(); // the server sees the body stop: nothing of it is kept
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

// One request per file, so each progress bar is its own file's.
function send(job) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    job.xhr = xhr;
    const body = new FormData();
    body.append("afile", job.file, job.file.name);
    xhr.open("POST", form.action);
    xhr.setRequestHeader("X-Requested-With", "XMLHttpRequest");
    xhr.upload.addEventListener("progress", (event) => {
      if (!event.lengthComputable) return;
      const percent = Math.floor((100 * event.loaded) / event.total);
      job.bar.value = percent;
      job.state.textContent = `${percent} % of ${formatSize(job.file.size)}`;
    });
    xhr.addEventListener("load", () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        job.bar.value = 100;
        const cards = addCards(xhr.responseText);
        const stored = () => {
          finish(job, true, `stored · ${formatSize(job.file.size)}`);
          announce(`${job.file.name} uploaded`);
        };
        const onTheirWay = cards.filter((card) => card.dataset.status === "uploading");
        if (onTheirWay.length === 0) {
          stored();
        } else {
          // Background uploads: spooled on the server, delivered to the store in a moment.
          job.state.textContent = `uploading · ${formatSize(job.file.size)}`;
          job.cancel.remove();
          Promise.all(onTheirWay.map(watch)).then((found) => {
            if (found.every(Boolean)) stored();
            else finish(job, false, "deleted before it was delivered");
          });
        }
      } else {
        // The server's one line ("503 Service Unavailable: cannot reach the S3 endpoint…").
        const reason = xhr.responseText.trim() || `${xhr.status} ${xhr.statusText}`;
        finish(job, false, "failed", reason);
        announce(`${job.file.name} failed: ${reason}`);
      }
      resolve();
    });
    xhr.addEventListener("error", () => {
      finish(job, false, "failed", "network error: is the server running?");
      resolve();
    });
    xhr.addEventListener("abort", () => {
      finish(job, false, "cancelled");
      resolve();
    });
    xhr.send(body);
  });
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
