// The web console: turns the page's two forms into a streaming chat (A-Vibe) and a
// streaming image analysis (A-Vision) over the service's OpenAI API. Without JavaScript
// the forms post as before. No inline script (strict CSP): the page hands its limits and
// wording over in <script type="application/json" id="page-config">, and the prefix it is
// served under in <html data-root>.
(function () {
  "use strict";

  document.documentElement.classList.add("js");
  const config = JSON.parse(document.getElementById("page-config").textContent);
  // Behind a proxy that mounts the service under a prefix, the page names it in
  // <html data-root> ("" at the root): every request below starts with it.
  const root = document.documentElement.dataset.root || "";
  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------------ storage
  const store = {
    get(key) {
      try { return window.localStorage.getItem("avito." + key); } catch (e) { return null; }
    },
    set(key, value) {
      try { window.localStorage.setItem("avito." + key, value); } catch (e) { /* private mode */ }
    },
  };

  function authHeaders() {
    const key = store.get("apiKey");
    return key ? { Authorization: "Bearer " + key } : {};
  }

  // Settings stay as the user set them (across answers and reloads).
  for (const id of ["max_tokens", "temperature", "enable_thinking", "json_schema", "avision_json_schema"]) {
    const input = $(id);
    const saved = store.get("setting." + id);
    if (saved !== null) {
      if (input.type === "checkbox") input.checked = saved === "true";
      else input.value = saved;
    }
    input.addEventListener("change", () => {
      store.set("setting." + id, input.type === "checkbox" ? String(input.checked) : input.value);
    });
  }
  const keyInput = $("api-key");
  keyInput.value = store.get("apiKey") || "";
  keyInput.addEventListener("change", () => store.set("apiKey", keyInput.value.trim()));

  // ------------------------------------------------------------------ errors
  function describe(code, message, status) {
    const title = config.errorTitles[code] || (status ? "Ошибка " + status : "Ошибка");
    return message ? title + ": " + message : title;
  }

  class ShownError extends Error {
    constructor(text, requestId, code) {
      super(text);
      this.requestId = requestId || "";
      this.code = code || "";
    }
  }

  // Native errors are {"error": code, "message": ...}; OpenAI's {"error": {code, message}}.
  async function errorFrom(response) {
    let code = "";
    let message = "";
    try {
      const body = await response.json();
      if (body.error && typeof body.error === "object") {
        code = body.error.code || "";
        message = body.error.message || "";
      } else {
        code = body.error || "";
        message = body.message || "";
      }
    } catch (e) {
      message = response.statusText;
    }
    let text = describe(code, message, response.status);
    const retry = response.headers.get("Retry-After");
    if (retry) text += " Повторите через " + retry + " с.";
    if (response.status === 401) text += " Укажите ключ внизу страницы.";
    return new ShownError(text, response.headers.get("X-Request-ID"), code);
  }

  function showStatus(element, text, kind, requestId) {
    element.textContent = text;
    element.className = "status" + (kind ? " " + kind : "");
    if (requestId) {
      const small = document.createElement("small");
      small.textContent = " request id " + requestId;
      element.appendChild(small);
    }
  }

  // ------------------------------------------------------------------ streaming
  // Server-sent events from a fetch body: yields each `data:` payload, parsed.
  async function* events(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block
          .split("\n")
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (!data) continue;
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }

  // What the answer view shows: the thinking (folded by renderMarkdown), then the answer.
  const shownText = (result) =>
    result.reasoning ? "<think>" + result.reasoning + "</think>" + result.text : result.text;

  async function streamChat(model, messages, params, signal, onText) {
    const started = performance.now();
    const response = await fetch(root + "/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify({
        model: model,
        messages: messages,
        stream: true,
        stream_options: { include_usage: true },
        ...params,
      }),
      signal: signal,
    });
    if (!response.ok) throw await errorFrom(response);
    const requestId = response.headers.get("X-Request-ID");
    const result = { text: "", reasoning: "", usage: null, finish: null, firstToken: null, requestId: requestId };
    for await (const chunk of events(response)) {
      if (chunk.error) {
        const failure = chunk.error;
        throw new ShownError(describe(failure.code, failure.message), requestId, failure.code);
      }
      const choice = chunk.choices && chunk.choices[0];
      if (choice) {
        const piece = choice.delta && choice.delta.content;
        const thought = choice.delta && choice.delta.reasoning_content;
        if (piece || thought) {
          if (result.firstToken === null) result.firstToken = performance.now() - started;
          result.text += piece || "";
          result.reasoning += thought || "";
          onText(shownText(result));
        }
        if (choice.finish_reason) result.finish = choice.finish_reason;
      }
      if (chunk.usage) result.usage = chunk.usage;
    }
    result.elapsed = (performance.now() - started) / 1000;
    return result;
  }

  // ------------------------------------------------------------------ Markdown
  // marked turns the model's Markdown into HTML, showing any raw HTML the model writes as
  // text and an image as its description (the page loads nothing from elsewhere); DOMPurify
  // then removes anything active that is left (javascript: links, for one).
  const escapeHtml = (text) =>
    String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  if (window.marked) {
    window.marked.use({
      renderer: {
        html: (token) => escapeHtml(token.text),
        image: (token) => escapeHtml("[" + (token.text || "image") + "]"),
      },
    });
  }
  const PURIFY = { FORBID_TAGS: ["style", "img", "form", "input", "video", "audio"], FORBID_ATTR: ["style"] };

  function renderMarkdown(element, text) {
    const thinking = /^\s*<think>([\s\S]*?)(<\/think>|$)([\s\S]*)$/.exec(text);
    let answer = text;
    element.replaceChildren();
    if (thinking) {
      const details = document.createElement("details");
      details.className = "thinking";
      const summary = document.createElement("summary");
      summary.textContent = "Рассуждения";
      const body = document.createElement("div");
      body.textContent = thinking[1].trim();
      details.append(summary, body);
      element.appendChild(details);
      answer = thinking[3];
    }
    const body = document.createElement("div");
    body.className = "markdown";
    if (window.marked && window.DOMPurify) {
      body.innerHTML = window.DOMPurify.sanitize(window.marked.parse(answer), PURIFY);
      for (const pre of body.querySelectorAll("pre")) addCopyButton(pre);
    } else {
      body.textContent = answer;
    }
    element.appendChild(body);
  }

  function addCopyButton(pre) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "copy";
    button.textContent = "Копировать";
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(pre.querySelector("code")?.textContent ?? pre.textContent);
        button.textContent = "Скопировано";
      } catch (e) {
        button.textContent = "Не удалось";
      }
      setTimeout(() => { button.textContent = "Копировать"; }, 1500);
    });
    pre.appendChild(button);
  }

  // One render per animation frame, however fast tokens arrive.
  function throttledRender(element) {
    let pending = null;
    return (text) => {
      if (pending === null) {
        requestAnimationFrame(() => { renderMarkdown(element, pending); pending = null; });
      }
      pending = text;
    };
  }

  function figures(result, stopped) {
    const tokens = result.usage ? result.usage.completion_tokens : null;
    const parts = [];
    if (stopped) parts.push("остановлено");
    parts.push(result.elapsed.toFixed(2) + " с");
    if (result.firstToken !== null) parts.push("первый токен " + (result.firstToken / 1000).toFixed(2) + " с");
    if (tokens !== null) {
      parts.push("токенов: " + tokens);
      if (result.elapsed > 0) parts.push((tokens / result.elapsed).toFixed(1) + " ток/с");
    }
    if (result.requestId) parts.push("request id " + result.requestId);
    return parts.join(" · ");
  }

  function numberOr(input, fallback) {
    const value = Number(input.value);
    return input.value !== "" && Number.isFinite(value) ? value : fallback;
  }

  // The optional "JSON schema" box: its schema as response_format (the answer is then JSON
  // valid against it, shown indented), or nothing.
  function schemaFormat(box) {
    const text = box.value.trim();
    if (!text) return {};
    let schema;
    try {
      schema = JSON.parse(text);
    } catch (error) {
      throw new ShownError("JSON-схема: это не JSON (" + error.message + ")");
    }
    return { response_format: { type: "json_schema", json_schema: { name: "answer", schema: schema } } };
  }

  function renderJson(element, text) {
    let shown = text;
    try {
      shown = JSON.stringify(JSON.parse(text), null, 2);
    } catch (error) {
      // cut by max tokens, or stopped: shown as it came
    }
    const pre = document.createElement("pre");
    pre.className = "json";
    pre.textContent = shown;
    element.replaceChildren(pre);
  }

  // One streamed answer at a time per form, for A-Vibe and A-Vision alike: the form is busy
  // meanwhile; Stop aborts the fetch (the server sees the connection close and cancels the
  // generation) and the part shown stays, with its figures. run() resolves to
  // { text, stopped }; other errors are thrown for the caller to show.
  function streamRunner(form, sending, stop) {
    let controller = null;
    function busy(on) {
      sending.disabled = on;
      stop.hidden = !on;
      form.classList.toggle("busy", on);
    }
    stop.addEventListener("click", () => controller?.abort());
    return {
      get active() { return controller !== null; },
      abort() { controller?.abort(); },
      // view: { live (gets the "streaming" class), body, meta }; messages may be a promise.
      async run(role, messages, params, view) {
        controller = new AbortController();
        busy(true);
        view.live.classList.add("streaming");
        let shown = "";
        const json = Boolean(params.response_format);
        const final = json ? renderJson : renderMarkdown;
        const render = json ? (t) => renderJson(view.body, t) : throttledRender(view.body);
        const started = performance.now();
        try {
          const result = await streamChat(role, await messages, params, controller.signal, (t) => {
            shown = t;
            render(t);
          });
          final(view.body, json ? result.text : shownText(result));
          view.meta.textContent = figures(result, false);
          return { text: result.text, stopped: false };
        } catch (error) {
          if (error.name !== "AbortError") throw error;
          final(view.body, shown);
          view.meta.textContent = figures({ elapsed: (performance.now() - started) / 1000, firstToken: null, usage: null }, true);
          return { text: shown.replace(/^<think>[\s\S]*?(<\/think>|$)/, ""), stopped: true };
        } finally {
          view.live.classList.remove("streaming");
          controller = null;
          busy(false);
          form.dispatchEvent(new Event("answered"));
        }
      },
    };
  }

  // ------------------------------------------------------------------ A-Vibe chat
  const chat = $("chat");
  const avibeForm = $("avibe-form");
  const prompt = $("prompt");
  const avibeSend = $("avibe-send");
  const avibeStop = $("avibe-stop");
  const avibeNew = $("avibe-new");
  const avibeStatus = $("avibe-status");
  let history = [];
  const avibeRunner = streamRunner(avibeForm, avibeSend, avibeStop);

  $("avibe-answer")?.remove(); // a no-JS answer from a previous submit: the chat replaces it
  chat.hidden = false;
  avibeNew.hidden = false;

  function bubble(role, text) {
    const article = document.createElement("article");
    article.className = "message " + role;
    const body = document.createElement("div");
    body.className = "body";
    if (role === "user") body.textContent = text;
    article.appendChild(body);
    const meta = document.createElement("small");
    meta.className = "meta";
    article.appendChild(meta);
    chat.appendChild(article);
    article.scrollIntoView({ block: "end" });
    return { article: article, body: body, meta: meta };
  }

  avibeForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = prompt.value.trim();
    if (!text || avibeRunner.active) return;
    showStatus(avibeStatus, "");
    const turn = history.concat([{ role: "user", content: text }]);
    bubble("user", text);
    const answer = bubble("assistant", "");
    prompt.value = "";
    let params;
    try {
      params = {
        max_tokens: numberOr($("max_tokens"), config.maxTokensAvibe),
        temperature: numberOr($("temperature"), 0.7),
        enable_thinking: $("enable_thinking").checked,
        ...schemaFormat($("json_schema")),
      };
    } catch (error) {
      answer.article.remove();
      chat.lastElementChild?.remove();
      prompt.value = text;
      showStatus(avibeStatus, error.message, "error");
      return;
    }
    try {
      const view = { live: answer.article, body: answer.body, meta: answer.meta };
      const { text: said, stopped } = await avibeRunner.run("avibe", turn, params, view);
      // A stopped answer's part shown stays in the conversation, as in other chat UIs.
      if (!stopped || said) history = turn.concat([{ role: "assistant", content: said }]);
    } catch (error) {
      answer.article.remove();
      chat.lastElementChild?.remove(); // the question goes back into the box
      prompt.value = text;
      showStatus(avibeStatus, error.message || String(error), "error", error.requestId);
    }
  });

  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) avibeForm.requestSubmit();
  });
  avibeNew.addEventListener("click", () => {
    avibeRunner.abort();
    history = [];
    chat.replaceChildren();
    showStatus(avibeStatus, "");
    prompt.focus();
  });

  // ------------------------------------------------------------------ A-Vision
  const visionForm = $("avision-form");
  const imageInput = $("image");
  const dropzone = $("dropzone");
  const preview = $("preview");
  const imageInfo = $("image-info");
  const visionSend = $("avision-send");
  const visionStop = $("avision-stop");
  const visionStatus = $("avision-status");
  const visionLive = $("avision-live");
  let chosen = null;
  let previewUrl = null;
  const visionRunner = streamRunner(visionForm, visionSend, visionStop);
  visionForm.classList.toggle("available", $("avision-notice").hidden); // until the first poll

  function formatSize(bytes) {
    return bytes >= 1024 * 1024 ? (bytes / 1024 / 1024).toFixed(1) + " MB" : Math.ceil(bytes / 1024) + " KB";
  }

  // The server's own limits, checked before anything is uploaded.
  function choose(file) {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = null;
    chosen = null;
    preview.hidden = true;
    if (!file) { showStatus(imageInfo, ""); return; }
    if (!config.imageTypes.includes(file.type)) {
      imageInput.value = "";
      showStatus(imageInfo, "Этот файл не подходит (" + (file.type || "неизвестный тип") + "): нужен JPEG, PNG, WEBP или GIF.", "error");
      return;
    }
    if (file.size > config.maxImageBytes) {
      imageInput.value = "";
      showStatus(imageInfo, "Изображение слишком большое: " + formatSize(file.size) + ", можно до " + config.maxImageMb + " MB.", "error");
      return;
    }
    chosen = file;
    previewUrl = URL.createObjectURL(file);
    preview.src = previewUrl;
    preview.hidden = false;
    showStatus(imageInfo, (file.name || "изображение") + " · " + formatSize(file.size));
  }

  function useFiles(files) {
    const file = files && files[0];
    if (!file) return;
    try { // keep the form's own field in step, so the no-JS path would send the same
      const transfer = new DataTransfer();
      transfer.items.add(file);
      imageInput.files = transfer.files;
    } catch (e) { /* older browsers: the chosen file is still used */ }
    choose(file);
  }

  imageInput.addEventListener("change", () => choose(imageInput.files[0]));
  for (const name of ["dragenter", "dragover"]) {
    dropzone.addEventListener(name, (event) => { event.preventDefault(); dropzone.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    dropzone.addEventListener(name, () => dropzone.classList.remove("over"));
  }
  dropzone.addEventListener("drop", (event) => { event.preventDefault(); useFiles(event.dataTransfer.files); });
  document.addEventListener("paste", (event) => {
    const files = Array.from(event.clipboardData?.files || []).filter((f) => f.type.startsWith("image/"));
    if (files.length) { event.preventDefault(); useFiles(files); }
  });

  function dataUrl(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(new ShownError("Не удалось прочитать файл"));
      reader.readAsDataURL(file);
    });
  }

  visionForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (visionRunner.active) return;
    if (!chosen) {
      showStatus(imageInfo, "Выберите изображение.", "error");
      return;
    }
    if (!visionForm.classList.contains("available")) {
      showStatus(visionStatus, $("avision-notice").textContent, "error");
      return;
    }
    showStatus(visionStatus, "");
    $("avision-answer")?.remove();
    visionLive.hidden = false;
    visionLive.replaceChildren();
    const body = document.createElement("div");
    const meta = document.createElement("small");
    visionLive.append(body, meta);
    const question = $("question").value.trim() || config.defaultQuestion;
    const messages = dataUrl(chosen).then((url) => [{
      role: "user",
      content: [
        { type: "image_url", image_url: { url: url } },
        { type: "text", text: question },
      ],
    }]);
    try {
      const view = { live: visionLive, body: body, meta: meta };
      const params = { max_tokens: config.maxTokensAvision, ...schemaFormat($("avision_json_schema")) };
      await visionRunner.run("avision", messages, params, view);
    } catch (error) {
      visionLive.hidden = true;
      showStatus(visionStatus, error.message || String(error), "error", error.requestId);
    }
  });

  // ------------------------------------------------------------------ the client's budget
  // /api/metrics (free to read) tells the asking client its use of its token budgets.
  async function showUsage() {
    try {
      const response = await fetch(root + "/api/metrics", { headers: authHeaders(), cache: "no-store" });
      const client = (await response.json()).client;
      const parts = [];
      for (const [window, words] of [["tokens_per_minute", "в минуту"], ["tokens_per_day", "в сутки"]]) {
        const use = client && client[window];
        if (use && use.limit) parts.push(use.used + " из " + use.limit + " токенов " + words);
      }
      $("usage").textContent = parts.length ? "Ваш бюджет (" + client.client + "): " + parts.join(", ") : "";
    } catch (e) { /* metrics unavailable: nothing to show */ }
  }
  showUsage();
  for (const form of [avibeForm, visionForm]) form.addEventListener("answered", showUsage);

  // ------------------------------------------------------------------ live model badges
  // /api/health/models is free to read (no rate limit) and names each model's state.
  const STATE_WORDS = { ready: "готова", loading: "загружается", failed: "ошибка", not_configured: "не настроена" };

  function applyModels(models) {
    for (const [role, model] of Object.entries(models)) {
      const badge = document.querySelector('.model[data-role="' + role + '"]');
      if (!badge) continue;
      badge.className = "model " + model.state;
      badge.textContent = role + ": " + (STATE_WORDS[model.state] || model.state) + (model.model ? " (" + model.model + ")" : "");
      badge.title = model.reason || "";
    }
    const vision = models.avision;
    if (vision) {
      const notice = $("avision-notice");
      const available = vision.state !== "not_configured";
      notice.hidden = available && vision.state !== "failed";
      notice.textContent = vision.state === "failed"
        ? "A-Vision не загрузилась: " + (vision.reason || "")
        : notice.dataset.notConfigured; // the page's own words, for this install
      visionForm.classList.toggle("available", vision.state === "ready" || vision.state === "loading");
      visionSend.disabled = !(vision.state === "ready" || vision.state === "loading") || visionRunner.active;
    }
    return Object.values(models).some((m) => m.state === "loading");
  }

  async function pollModels() {
    let loading = false;
    try {
      const response = await fetch(root + "/api/health/models", { cache: "no-store" });
      const body = await response.json();
      if (body.models) loading = applyModels(body.models);
    } catch (e) { /* the service is restarting: try again */ }
    setTimeout(pollModels, loading ? 1000 : 5000);
  }
  pollModels();
})();
