// gemma-chat's chat page: a client of the server's sessions API (/v1/sessions), like any other.
// The server keeps the chats, their system prompts and (in the session's metadata, under
// "web_ui") the page's settings, so a reload or another browser shows the same.
// Answers stream as server-sent events over fetch; Stop aborts the request, which the server
// sees as a disconnect: it stops generating and keeps the session as it was.
"use strict";

(function () {
  const KEY_STORAGE = "gemma-chat.api-key";
  const CURRENT_STORAGE = "gemma-chat.current-session";
  const DEFAULT_TITLE = "New chat";

  const $ = (id) => document.getElementById(id);
  const ui = {
    app: $("app"),
    sessionList: $("session-list"),
    newSession: $("new-session"),
    openSidebar: $("open-sidebar"),
    closeSidebar: $("close-sidebar"),
    backdrop: $("backdrop"),
    keyPanel: $("key-panel"),
    keyForm: $("key-form"),
    apiKey: $("api-key"),
    forgetKey: $("forget-key"),
    health: $("health"),
    title: $("session-title"),
    toggleSettings: $("toggle-settings"),
    settings: $("settings"),
    systemPrompt: $("system-prompt"),
    model: $("model"),
    temperature: $("temperature"),
    maxTokens: $("max-tokens"),
    saveSettings: $("save-settings"),
    settingsNote: $("settings-note"),
    notice: $("notice"),
    messages: $("messages"),
    empty: $("empty"),
    composer: $("composer"),
    input: $("input"),
    send: $("send"),
    stop: $("stop"),
    regenerate: $("regenerate"),
  };

  const state = {
    sessions: [], // summaries, as GET /v1/sessions gives them
    current: null, // the open session (its detail)
    models: [],
    generating: null, // {controller, stopped} while an answer streams
    healthTimer: null,
  };

  // -- HTTP -----------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message, code, retryAfter) {
      super(message);
      this.status = status;
      this.code = code;
      this.retryAfter = retryAfter;
    }
  }

  function headers(json) {
    const h = {};
    if (json) h["Content-Type"] = "application/json";
    const key = localStorage.getItem(KEY_STORAGE);
    if (key) h["Authorization"] = "Bearer " + key;
    return h;
  }

  async function errorOf(response) {
    let message = response.status + " " + response.statusText;
    let code = null;
    try {
      const body = await response.json();
      if (body && body.error) {
        message = body.error.message || message;
        code = body.error.code || null;
      }
    } catch (_) {
      // not JSON: the status line says enough
    }
    const retryAfter = Number(response.headers.get("Retry-After")) || null;
    return new ApiError(response.status, message, code, retryAfter);
  }

  async function api(method, path, body, signal) {
    let response;
    try {
      response = await fetch(path, {
        method,
        headers: headers(body !== undefined),
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
      });
    } catch (exc) {
      if (exc.name === "AbortError") throw exc;
      throw new ApiError(0, "The server cannot be reached (" + exc.message + ").", null, null);
    }
    if (!response.ok) throw await errorOf(response);
    return response;
  }

  const getJson = async (path) => (await api("GET", path)).json();

  // -- notices --------------------------------------------------------------------------------

  function notify(text, kind) {
    ui.notice.textContent = text;
    ui.notice.className = "notice" + (kind === "error" ? " error" : "");
    ui.notice.hidden = !text;
    ui.notice.dataset.kind = kind || "";
  }

  // What the page says about a failed request; true when it was told.
  function explain(exc) {
    if (exc.name === "AbortError") return true;
    if (!(exc instanceof ApiError)) {
      notify("Unexpected error: " + exc.message, "error");
      return true;
    }
    if (exc.status === 401) {
      ui.keyPanel.open = true;
      notify(
        localStorage.getItem(KEY_STORAGE)
          ? "The server refused the API key: enter the right one under \u201cAPI key\u201d."
          : "The server needs an API key: enter it under \u201cAPI key\u201d (bottom left).",
        "error",
      );
      ui.apiKey.focus();
    } else if (exc.status === 503) {
      notify(
        "The model is still loading; the page retries by itself" +
          (exc.retryAfter ? " (every " + exc.retryAfter + " s)." : "."),
        "info",
      );
      watchHealth();
    } else if (exc.status === 429) {
      const wait = exc.retryAfter || 1;
      notify(
        "The server is busy (" + exc.message + "). Try again in " + wait + " s.",
        "error",
      );
    } else if (exc.status === 0) {
      notify(exc.message, "error");
      watchHealth();
    } else {
      notify(exc.message, "error");
    }
    return true;
  }

  // -- health ---------------------------------------------------------------------------------

  async function checkHealth() {
    try {
      const response = await fetch("health");
      const body = await response.json();
      ui.health.textContent = body.status === "healthy" ? "model ready" : "model " + body.status;
      ui.health.className = "health " + (response.ok ? "ok" : "bad");
      return response.ok;
    } catch (_) {
      ui.health.textContent = "server unreachable";
      ui.health.className = "health bad";
      return false;
    }
  }

  // While the model loads (or the server is away): poll /health, then load what failed.
  function watchHealth() {
    if (state.healthTimer !== null) return;
    state.healthTimer = setInterval(async () => {
      if (await checkHealth()) {
        clearInterval(state.healthTimer);
        state.healthTimer = null;
        if (ui.notice.dataset.kind === "info" || ui.notice.dataset.kind === "error") notify("");
        await start();
      }
    }, 2000);
  }

  // -- sessions -------------------------------------------------------------------------------

  function settingsOf(session) {
    const web = (session && session.metadata && session.metadata.web_ui) || {};
    return {
      model: typeof web.model === "string" ? web.model : null,
      temperature: typeof web.temperature === "number" ? web.temperature : null,
      max_tokens: typeof web.max_tokens === "number" ? web.max_tokens : null,
    };
  }

  function renderSessionList() {
    ui.sessionList.replaceChildren();
    const sorted = [...state.sessions].sort((a, b) => b.updated_at.localeCompare(a.updated_at));
    for (const session of sorted) {
      const li = document.createElement("li");
      li.dataset.id = session.id;
      if (state.current && state.current.id === session.id) {
        li.className = "current";
        li.setAttribute("aria-current", "true");
      }
      const open = document.createElement("button");
      open.type = "button";
      open.className = "open";
      open.textContent = session.title;
      const small = document.createElement("small");
      small.textContent =
        session.message_count + (session.message_count === 1 ? " message" : " messages");
      open.appendChild(small);
      open.addEventListener("click", () => openSession(session.id));
      const rename = toolButton("\u270E", "Rename \u201c" + session.title + "\u201d", "rename");
      rename.addEventListener("click", () => startRename(li, session));
      const remove = toolButton("\u2715", "Delete \u201c" + session.title + "\u201d", "delete");
      remove.addEventListener("click", () => deleteSession(session));
      li.append(open, rename, remove);
      ui.sessionList.appendChild(li);
    }
  }

  function toolButton(symbol, label, name) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "tool " + name;
    button.textContent = symbol;
    button.title = label;
    button.setAttribute("aria-label", label);
    return button;
  }

  function startRename(li, session) {
    const input = document.createElement("input");
    input.type = "text";
    input.value = session.title;
    input.setAttribute("aria-label", "New title");
    li.replaceChildren(input);
    input.focus();
    input.select();
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      const title = input.value.trim();
      if (save && title && title !== session.title) {
        try {
          await updateSession(session.id, { title });
        } catch (exc) {
          explain(exc);
        }
      }
      renderSessionList();
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        finish(true);
      } else if (event.key === "Escape") {
        event.preventDefault();
        event.stopPropagation();
        finish(false);
      }
    });
    input.addEventListener("blur", () => finish(true));
  }

  async function updateSession(id, change) {
    const detail = await (await api("PATCH", "v1/sessions/" + encodeURIComponent(id), change)).json();
    replaceSummary(detail);
    if (state.current && state.current.id === id) {
      state.current = detail;
      ui.title.textContent = detail.title;
    }
    return detail;
  }

  function replaceSummary(detail) {
    const summary = { ...detail };
    delete summary.messages;
    const at = state.sessions.findIndex((s) => s.id === detail.id);
    if (at >= 0) state.sessions[at] = summary;
    else state.sessions.push(summary);
    renderSessionList();
  }

  async function deleteSession(session) {
    if (!window.confirm("Delete the chat \u201c" + session.title + "\u201d?")) return;
    try {
      await api("DELETE", "v1/sessions/" + encodeURIComponent(session.id));
    } catch (exc) {
      if (!(exc instanceof ApiError && exc.status === 404)) {
        explain(exc);
        return;
      }
    }
    state.sessions = state.sessions.filter((s) => s.id !== session.id);
    if (state.current && state.current.id === session.id) {
      state.current = null;
      const next = [...state.sessions].sort((a, b) => b.updated_at.localeCompare(a.updated_at))[0];
      if (next) await openSession(next.id);
      else await newSession();
    }
    renderSessionList();
  }

  async function newSession() {
    const previous = state.current ? settingsOf(state.current) : null;
    const body = { title: DEFAULT_TITLE };
    if (previous) body.metadata = { web_ui: previous };
    try {
      const detail = await (await api("POST", "v1/sessions", body)).json();
      replaceSummary(detail);
      showSession(detail);
      closeSidebar();
      ui.input.focus();
    } catch (exc) {
      explain(exc);
    }
  }

  async function openSession(id) {
    if (state.generating) return;
    try {
      showSession(await getJson("v1/sessions/" + encodeURIComponent(id)));
      closeSidebar();
    } catch (exc) {
      if (exc instanceof ApiError && exc.status === 404) {
        state.sessions = state.sessions.filter((s) => s.id !== id);
        renderSessionList();
      }
      explain(exc);
    }
  }

  function showSession(detail) {
    state.current = detail;
    localStorage.setItem(CURRENT_STORAGE, detail.id);
    ui.title.textContent = detail.title;
    ui.messages.replaceChildren(ui.empty);
    ui.empty.hidden = detail.messages.length > 0;
    for (const message of detail.messages) {
      const node = addMessage(message.role, message.content);
      if (message.role === "assistant" && message.token_count !== null) {
        node.querySelector(".stats").textContent = message.token_count + " tokens";
      }
    }
    showSettings(detail);
    renderSessionList();
    updateButtons();
    scrollToEnd(true);
  }

  // -- settings -------------------------------------------------------------------------------

  function showSettings(detail) {
    const settings = settingsOf(detail);
    ui.systemPrompt.value = detail.system_prompt || "";
    ui.model.value = settings.model && state.models.includes(settings.model) ? settings.model : "";
    ui.temperature.value = settings.temperature === null ? "" : String(settings.temperature);
    ui.maxTokens.value = settings.max_tokens === null ? "" : String(settings.max_tokens);
    ui.settingsNote.textContent = "";
  }

  function numberOrNull(input, integer) {
    const text = input.value.trim();
    if (!text) return null;
    const value = Number(text);
    if (!Number.isFinite(value) || (integer && !Number.isInteger(value))) {
      throw new Error(input.id.replace("-", " ") + " must be " + (integer ? "a whole number" : "a number"));
    }
    return value;
  }

  function settingsFromForm() {
    return {
      model: ui.model.value || null,
      temperature: numberOrNull(ui.temperature, false),
      max_tokens: numberOrNull(ui.maxTokens, true),
    };
  }

  async function saveSettings() {
    if (!state.current) return;
    let webUi;
    try {
      webUi = settingsFromForm();
    } catch (exc) {
      ui.settingsNote.textContent = exc.message + ".";
      return;
    }
    const metadata = { ...(state.current.metadata || {}), web_ui: webUi };
    try {
      await updateSession(state.current.id, { system_prompt: ui.systemPrompt.value, metadata });
      ui.settingsNote.textContent = "Saved with this chat.";
    } catch (exc) {
      ui.settingsNote.textContent = "";
      explain(exc);
    }
  }

  async function loadModels() {
    try {
      const list = await getJson("v1/models");
      state.models = list.data.map((m) => m.id);
    } catch (exc) {
      state.models = [];
    }
    ui.model.replaceChildren();
    const served = document.createElement("option");
    served.value = "";
    served.textContent = state.models.length ? state.models[0] + " (default)" : "default";
    ui.model.appendChild(served);
    for (const id of state.models.slice(1)) {
      const option = document.createElement("option");
      option.value = id;
      option.textContent = id;
      ui.model.appendChild(option);
    }
  }

  // -- messages -------------------------------------------------------------------------------

  function addMessage(role, content) {
    ui.empty.hidden = true;
    const node = document.createElement("div");
    node.className = "message " + role;
    const body = document.createElement("div");
    body.className = "body";
    node.appendChild(body);
    if (role === "assistant") {
      window.GemmaMarkdown.render(content, body);
      const stats = document.createElement("div");
      stats.className = "stats";
      node.appendChild(stats);
    } else {
      body.textContent = content; // the user's text, as typed
    }
    ui.messages.appendChild(node);
    return node;
  }

  function scrollToEnd(force) {
    const m = ui.messages;
    const near = m.scrollHeight - m.scrollTop - m.clientHeight < 120;
    if (force || near) m.scrollTop = m.scrollHeight;
  }

  function updateButtons() {
    const busy = state.generating !== null;
    ui.send.hidden = busy;
    ui.stop.hidden = !busy;
    const last = state.current && state.current.messages[state.current.messages.length - 1];
    ui.regenerate.disabled = busy || !last || last.role !== "assistant";
    ui.newSession.disabled = busy;
  }

  function generationBody(extra) {
    const body = { stream: true, ...extra };
    const settings = settingsOf(state.current);
    if (settings.model) body.model = settings.model;
    if (settings.temperature !== null) body.temperature = settings.temperature;
    if (settings.max_tokens !== null) body.max_tokens = settings.max_tokens;
    return body;
  }

  function dropUnsaved() {
    for (const node of ui.messages.querySelectorAll(".unsaved")) node.remove();
  }

  async function sendMessage() {
    const content = ui.input.value;
    if (!content.trim() || state.generating || !state.current) return;
    dropUnsaved();
    notify("");
    ui.input.value = "";
    const userNode = addMessage("user", content);
    const session = state.current;
    const finished = await streamAnswer(
      "v1/sessions/" + encodeURIComponent(session.id) + "/messages",
      generationBody({ content }),
      [userNode],
    );
    if (!finished) {
      if (!ui.input.value) ui.input.value = content; // not kept: back in the box to send again
      return;
    }
    if (session.title === DEFAULT_TITLE && state.current && state.current.id === session.id) {
      const title = content.trim().replace(/\s+/g, " ").slice(0, 48);
      try {
        await updateSession(session.id, { title });
      } catch (_) {
        // the chat keeps its default title
      }
    }
  }

  async function regenerate() {
    if (state.generating || !state.current) return;
    dropUnsaved();
    notify("");
    const nodes = ui.messages.querySelectorAll(".message.assistant");
    const old = nodes[nodes.length - 1];
    if (old) old.hidden = true; // shown again if the new answer does not replace it
    const finished = await streamAnswer(
      "v1/sessions/" + encodeURIComponent(state.current.id) + "/regenerate",
      generationBody({}),
      [],
    );
    if (old && finished) old.remove();
    else if (old) old.hidden = false;
  }

  // Streams one answer into a new message; true when it completed (the server stored it).
  async function streamAnswer(path, body, pendingNodes) {
    const controller = new AbortController();
    const generation = { controller, stopped: false };
    state.generating = generation;
    updateButtons();
    const node = addMessage("assistant", "");
    node.classList.add("streaming");
    const target = node.querySelector(".body");
    const stats = node.querySelector(".stats");
    scrollToEnd(true);
    const started = performance.now();
    let firstToken = null;
    let text = "";
    let final = null;
    let failure = null;
    let scheduled = false;
    const paint = () => {
      scheduled = false;
      window.GemmaMarkdown.render(text, target);
      scrollToEnd(false);
    };
    try {
      const response = await api("POST", path, body, controller.signal);
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          for (const line of event.split("\n")) {
            if (!line.startsWith("data: ")) continue;
            const data = line.slice(6);
            if (data === "[DONE]") continue;
            const chunk = JSON.parse(data);
            if (chunk.error) {
              failure = chunk.error.message;
              continue;
            }
            const delta = (chunk.delta && chunk.delta.content) || "";
            if (delta) {
              if (firstToken === null) firstToken = performance.now();
              text += delta;
              node.dataset.chunks = String(Number(node.dataset.chunks || 0) + 1);
              if (!scheduled) {
                scheduled = true;
                requestAnimationFrame(paint);
              }
            }
            if (chunk.finish_reason) final = chunk;
          }
        }
      }
    } catch (exc) {
      if (exc.name !== "AbortError") {
        failure = exc;
      }
    }
    const ended = performance.now();
    state.generating = null;
    node.classList.remove("streaming");
    window.GemmaMarkdown.render(text, target);
    if (final && !generation.stopped) {
      const tokens = final.usage ? final.usage.completion_tokens : null;
      const parts = [];
      if (tokens !== null) parts.push(tokens + " tokens");
      if (firstToken !== null) parts.push("first token " + ((firstToken - started) / 1000).toFixed(2) + " s");
      // The decoding rate: the tokens after the first, over the time after the first.
      if (tokens > 1 && firstToken !== null && ended > firstToken) {
        parts.push(((tokens - 1) / ((ended - firstToken) / 1000)).toFixed(1) + " tokens/s");
      }
      if (final.finish_reason === "length") parts.push("cut at max tokens");
      stats.textContent = parts.join(" \u00B7 ");
      node.dataset.finished = "true";
      await refreshCurrent();
      updateButtons();
      return true;
    }
    // Not complete: the server kept nothing of this turn.
    for (const pending of pendingNodes) pending.classList.add("unsaved");
    node.classList.add("unsaved");
    const label = document.createElement("span");
    label.className = "state";
    label.textContent = (generation.stopped ? "Stopped" : "Failed") + " \u2014 not saved";
    stats.replaceChildren(label);
    if (failure instanceof Error) explain(failure);
    else if (failure) notify(failure, "error"); // an error event in the stream: its message
    else if (!generation.stopped) notify("The answer broke off; nothing of it was kept.", "error");
    if (generation.stopped) node.dataset.stopped = "true";
    updateButtons();
    return false;
  }

  function stop() {
    if (!state.generating) return;
    state.generating.stopped = true;
    state.generating.controller.abort();
  }

  // The open session as the server has it now (after a turn: its message ids and counts).
  async function refreshCurrent() {
    if (!state.current) return;
    try {
      const detail = await getJson("v1/sessions/" + encodeURIComponent(state.current.id));
      state.current = detail;
      replaceSummary(detail);
    } catch (exc) {
      explain(exc);
    }
  }

  // -- sidebar on phones ----------------------------------------------------------------------

  function openSidebar() {
    ui.app.classList.add("sidebar-open");
    ui.backdrop.hidden = false;
    ui.newSession.focus();
  }

  function closeSidebar() {
    ui.app.classList.remove("sidebar-open");
    ui.backdrop.hidden = true;
  }

  // -- start ----------------------------------------------------------------------------------

  async function start() {
    ui.apiKey.value = localStorage.getItem(KEY_STORAGE) || "";
    await checkHealth();
    try {
      state.sessions = (await getJson("v1/sessions")).data;
    } catch (exc) {
      explain(exc);
      return;
    }
    await loadModels();
    renderSessionList();
    const remembered = localStorage.getItem(CURRENT_STORAGE);
    const target =
      state.sessions.find((s) => s.id === remembered) ||
      [...state.sessions].sort((a, b) => b.updated_at.localeCompare(a.updated_at))[0];
    if (target) await openSession(target.id);
    else await newSession();
    ui.input.focus();
  }

  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    sendMessage();
  });
  ui.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      sendMessage();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      if (state.generating) {
        event.preventDefault();
        stop();
      } else if (ui.app.classList.contains("sidebar-open")) {
        closeSidebar();
      }
    }
  });
  ui.stop.addEventListener("click", stop);
  ui.regenerate.addEventListener("click", regenerate);
  ui.newSession.addEventListener("click", newSession);
  ui.openSidebar.addEventListener("click", openSidebar);
  ui.closeSidebar.addEventListener("click", closeSidebar);
  ui.backdrop.addEventListener("click", closeSidebar);
  ui.toggleSettings.addEventListener("click", () => {
    ui.settings.hidden = !ui.settings.hidden;
    ui.toggleSettings.setAttribute("aria-expanded", String(!ui.settings.hidden));
    if (!ui.settings.hidden) ui.systemPrompt.focus();
  });
  ui.saveSettings.addEventListener("click", saveSettings);
  ui.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = ui.apiKey.value.trim();
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
    ui.keyPanel.open = false;
    notify("");
    start();
  });
  ui.forgetKey.addEventListener("click", () => {
    localStorage.removeItem(KEY_STORAGE);
    ui.apiKey.value = "";
  });

  start();
})();
