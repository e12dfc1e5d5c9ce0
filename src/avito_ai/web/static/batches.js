// The console's Batches section: upload a JSONL file of requests, watch each batch's
// progress, cancel one, download its output and errors — over the service's own Batch API
// (/v1/files, /v1/batches), with the API key the page keeps (footer). No inline script.
(function () {
  "use strict";

  const root = document.documentElement.dataset.root || "";
  const $ = (id) => document.getElementById(id);
  const section = $("batches");
  if (!section) return;
  const FINISHED = ["completed", "failed", "expired", "cancelled"];
  const STATUS = {
    validating: "проверка", in_progress: "выполняется", finalizing: "завершение",
    completed: "готово", failed: "ошибка", expired: "истёк срок", cancelling: "отмена…",
    cancelled: "отменён",
  };

  function headers() {
    let key = null;
    try { key = window.localStorage.getItem("avito.apiKey"); } catch (e) { /* private mode */ }
    return key ? { Authorization: "Bearer " + key } : {};
  }

  async function call(method, path, body) {
    const response = await fetch(root + path, { method, headers: headers(), body });
    if (!response.ok) {
      let message = response.statusText;
      try { message = (await response.json()).error.message || message; } catch (e) { /* not JSON */ }
      throw new Error(response.status + ": " + message);
    }
    return response;
  }

  function say(text, isError) {
    const status = $("batch-status");
    status.textContent = text;
    status.classList.toggle("error", Boolean(isError));
  }

  async function download(fileId, name) {
    try {
      const blob = await (await call("GET", "/v1/files/" + fileId + "/content")).blob();
      const link = document.createElement("a");
      link.href = URL.createObjectURL(blob);
      link.download = name;
      document.body.appendChild(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    } catch (e) {
      say("Не удалось скачать: " + e.message, true);
    }
  }

  function button(text, className, onClick) {
    const element = document.createElement("button");
    element.type = "button";
    element.textContent = text;
    element.className = className;
    element.addEventListener("click", onClick);
    return element;
  }

  function render(batch) {
    const counts = batch.request_counts;
    const item = document.createElement("li");
    item.className = "batch " + batch.status;
    item.dataset.id = batch.id;
    item.dataset.status = batch.status;
    const title = document.createElement("div");
    title.className = "batch-title";
    const name = document.createElement("code");
    name.textContent = batch.id;
    const state = document.createElement("span");
    state.className = "batch-state";
    state.textContent = (STATUS[batch.status] || batch.status) + " · " + batch.endpoint;
    title.append(name, state);
    const bar = document.createElement("progress");
    bar.max = counts.total || 1;
    bar.value = counts.completed + counts.failed;
    bar.setAttribute("aria-label", "Выполнено строк");
    const figures = document.createElement("small");
    figures.className = "batch-counts";
    figures.textContent = counts.completed + " готово, " + counts.failed + " с ошибкой из " + counts.total;
    item.append(title, bar, figures);
    if (batch.errors && batch.errors.data && batch.errors.data.length) {
      const list = document.createElement("ul");
      list.className = "batch-errors";
      for (const error of batch.errors.data.slice(0, 10)) {
        const line = document.createElement("li");
        line.textContent = "строка " + error.line + ": " + error.message;
        list.appendChild(line);
      }
      item.appendChild(list);
    }
    const actions = document.createElement("div");
    actions.className = "buttons";
    const cancellable = !FINISHED.includes(batch.status) && batch.status !== "cancelling";
    // Which buttons the item has: while it stays the same, the buttons on the page stay.
    item.dataset.actions = [cancellable, batch.output_file_id || "", batch.error_file_id || ""].join("|");
    if (cancellable) {
      actions.appendChild(button("Отменить", "secondary batch-cancel", async () => {
        try { await call("POST", "/v1/batches/" + batch.id + "/cancel"); refresh(); }
        catch (e) { say("Не удалось отменить: " + e.message, true); }
      }));
    }
    if (batch.output_file_id) {
      actions.appendChild(button("Результаты", "batch-output", () => download(batch.output_file_id, batch.id + "_output.jsonl")));
    }
    if (batch.error_file_id) {
      actions.appendChild(button("Ошибки", "secondary batch-errors-file", () => download(batch.error_file_id, batch.id + "_errors.jsonl")));
    }
    item.appendChild(actions);
    return item;
  }

  // An item drawn again in place: its figures are new, its buttons the same nodes while
  // they are the same buttons (a click begun as the list refreshes lands on what it began on).
  function patch(item, fresh) {
    item.className = fresh.className;
    item.dataset.status = fresh.dataset.status;
    const keep = item.dataset.actions === fresh.dataset.actions ? item.querySelector(":scope > .buttons") : null;
    item.dataset.actions = fresh.dataset.actions;
    for (const child of [...item.children]) if (child !== keep) child.remove();
    for (const child of [...fresh.children]) {
      if (!(keep && child.classList.contains("buttons"))) item.insertBefore(child, keep);
    }
  }

  let timer = null;
  async function refresh() {
    clearTimeout(timer);
    try {
      const page = await (await call("GET", "/v1/batches?limit=20")).json();
      const list = $("batch-list");
      const shown = [...list.children];
      const same = shown.length === page.data.length && shown.every((li, i) => li.dataset.id === page.data[i].id);
      if (same) {
        page.data.forEach((batch, i) => patch(shown[i], render(batch)));
      } else {
        list.replaceChildren(...page.data.map(render));
      }
      $("batch-empty").hidden = page.data.length > 0;
      const busy = page.data.some((b) => !FINISHED.includes(b.status));
      timer = setTimeout(refresh, busy ? 1000 : 5000);
    } catch (e) {
      say("Пакеты недоступны: " + e.message, true);
      timer = setTimeout(refresh, 5000);
    }
  }

  $("batch-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = $("batch-file").files[0];
    if (!file) return;
    const send = $("batch-send");
    send.disabled = true;
    say("Загрузка…");
    try {
      const form = new FormData();
      form.append("purpose", "batch");
      form.append("file", file, file.name);
      const uploaded = await (await call("POST", "/v1/files", form)).json();
      const body = JSON.stringify({
        input_file_id: uploaded.id, endpoint: $("batch-endpoint").value, completion_window: "24h",
      });
      const response = await fetch(root + "/v1/batches", {
        method: "POST", body, headers: { ...headers(), "Content-Type": "application/json" },
      });
      if (!response.ok) {
        let message = response.statusText;
        try { message = (await response.json()).error.message || message; } catch (e) { /* not JSON */ }
        throw new Error(response.status + ": " + message);
      }
      const batch = await response.json();
      say("Пакет " + batch.id + " создан");
      $("batch-form").reset();
      refresh();
    } catch (e) {
      say("Не удалось создать пакет: " + e.message, true);
    } finally {
      send.disabled = false;
    }
  });

  refresh();
})();
