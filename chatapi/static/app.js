// ChatAPI web client: vanilla JavaScript over the public HTTP and websocket API.
"use strict";

(function () {
  const PAGE = 50;
  const TOKEN_KEY = "chatapi.token";
  const $ = (id) => document.getElementById(id);

  const state = {
    token: localStorage.getItem(TOKEN_KEY),
    me: null,
    chats: new Map(),        // id -> chat
    users: new Map(),        // id -> {id, username, is_online}
    current: null,           // open chat id
    seen: new Set(),         // message ids shown for the open chat
    oldest: null,            // smallest id shown (paging cursor)
    lastId: new Map(),       // chat id -> highest message id seen
    hasOlder: false,
    loadingOlder: false,
    pending: new Map(),      // nonce -> frame sent but not yet echoed
    ws: null,
    retry: 0,
    retryTimer: null,
    generation: 0,           // bumps on logout / chat switch to drop stale answers
  };

  // ---- HTTP ----------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      let text = (body && body.error) || "request failed (" + status + ")";
      const details = Object.entries((body && body.details) || {})
        .filter(([field, reason]) => !text.includes(String(reason)))
        .map(([field, reason]) => field + ": " + reason);
      if (details.length) text += " (" + details.join(", ") + ")";
      super(text);
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const headers = {};
    if (state.token) headers.Authorization = "Bearer " + state.token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let resp;
    try {
      resp = await fetch(path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new ApiError(0, { error: "the server cannot be reached; try again in a moment" });
    }
    if (resp.status === 204) return null;
    let data = null;
    try { data = await resp.json(); } catch (err) { data = null; }
    if (!resp.ok) {
      const error = new ApiError(resp.status, data);
      if (resp.status === 401 && state.token && !path.startsWith("/auth/")) {
        signedOut("Your session has ended; please log in again.");
      }
      throw error;
    }
    return data;
  }

  function showError(id, err) {
    $(id).textContent = err ? (err.message || String(err)) : "";
  }

  // ---- Session -------------------------------------------------------------

  async function start() {
    wireEvents();
    if (!state.token) return showAuth();
    try {
      state.me = await api("GET", "/users/me");
    } catch (err) {
      if (err.status !== 401) {
        // Server down: keep the token and try again shortly.
        showAuth();
        showError("login-error", err);
        setTimeout(start2, 2000);
        return;
      }
      return;  // signedOut() already showed the forms
    }
    enter();
  }

  async function start2() {
    if (!state.token || state.me) return;
    try { state.me = await api("GET", "/users/me"); } catch (err) {
      if (err.status !== 401) setTimeout(start2, 2000);
      return;
    }
    showError("login-error", null);
    enter();
  }

  function showAuth() {
    $("auth-view").hidden = false;
    $("chat-view").hidden = true;
    $("session").hidden = true;
  }

  function signIn(answer) {
    state.token = answer.token;
    localStorage.setItem(TOKEN_KEY, answer.token);
    state.me = { id: answer.id, username: answer.username };
    enter();
  }

  function enter() {
    $("auth-view").hidden = true;
    $("chat-view").hidden = false;
    $("session").hidden = false;
    $("me-name").textContent = state.me.username;
    for (const id of ["login-error", "reg-error"]) showError(id, null);
    refreshChats().then(() => {
      const wanted = Number((location.hash.match(/chat=(\d+)/) || [])[1]);
      if (wanted && state.chats.has(wanted)) openChat(wanted);
    });
    refreshUsers();
    connect();
  }

  function signedOut(message) {
    state.generation += 1;
    state.token = null;
    state.me = null;
    localStorage.removeItem(TOKEN_KEY);
    clearTimeout(state.retryTimer);
    const ws = state.ws;
    state.ws = null;
    if (ws) ws.close(1000, "logged out");
    state.current = null;
    state.pending.clear();
    state.lastId.clear();
    $("messages").replaceChildren();
    $("chat-list").replaceChildren();
    $("user-list").replaceChildren();
    setComposer(false);
    $("chat-title").textContent = "Pick a chat";
    history.replaceState(null, "", location.pathname);
    showAuth();
    showError("login-error", message ? { message } : null);
  }

  async function logout() {
    try { await api("POST", "/auth/logout"); } catch (err) { /* signed out locally anyway */ }
    signedOut(null);
    $("login-email").focus();
  }

  // ---- Chats and people ----------------------------------------------------

  async function refreshChats() {
    let chats;
    try { chats = await api("GET", "/chats/"); } catch (err) { return showError("new-chat-error", err); }
    state.chats = new Map(chats.map((c) => [c.id, c]));
    renderChats();
  }

  function renderChats() {
    const list = $("chat-list");
    list.replaceChildren(...[...state.chats.values()].map((chat) => {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "chat-link";
      button.dataset.chatId = chat.id;
      button.textContent = chat.name;
      if (chat.id === state.current) button.setAttribute("aria-current", "true");
      button.addEventListener("click", () => openChat(chat.id));
      li.append(button);
      return li;
    }));
  }

  async function refreshUsers() {
    try {
      const users = await api("GET", "/users/");
      for (const u of users) state.users.set(u.id, { id: u.id, username: u.username, is_online: u.is_online });
      renderUsers();
    } catch (err) { /* the list stays as it was */ }
  }

  function renderUsers() {
    // Our own open socket makes us online, whatever an older answer said.
    const self = state.me && state.users.get(state.me.id);
    if (self && state.ws && state.ws.readyState === WebSocket.OPEN) self.is_online = true;
    const users = [...state.users.values()].sort(
      (a, b) => (b.is_online - a.is_online) || a.username.localeCompare(b.username));
    $("user-list").replaceChildren(...users.map((u) => {
      const li = document.createElement("li");
      li.className = u.is_online ? "online" : "offline";
      li.dataset.userId = u.id;
      li.textContent = u.username;
      const status = document.createElement("span");
      status.className = "visually-hidden";
      status.textContent = u.is_online ? " (online)" : " (offline)";
      li.append(status);
      return li;
    }));
  }

  // ---- History -------------------------------------------------------------

  async function openChat(id) {
    if (state.current && state.current !== id) send({ type: "leave", chat_id: state.current });
    const generation = ++state.generation;
    state.current = id;
    state.seen = new Set();
    state.oldest = null;
    state.hasOlder = false;
    setComposer(false);
    $("messages").replaceChildren();
    showError("chat-error", null);
    $("chat-title").textContent = (state.chats.get(id) || { name: "Chat " + id }).name;
    history.replaceState(null, "", "#chat=" + id);
    renderChats();
    let page;
    try {
      page = await api("GET", "/chats/messages?id=" + id + "&limit=" + PAGE);
    } catch (err) {
      if (generation === state.generation) showError("chat-error", err);
      return;
    }
    if (generation !== state.generation) return;
    state.hasOlder = page.length === PAGE;
    addMessages(page, "end");
    scrollToBottom();
    setComposer(true);
    join(id);
  }

  async function loadOlder() {
    if (!state.current || !state.hasOlder || state.loadingOlder || state.oldest === null) return;
    const generation = state.generation;
    state.loadingOlder = true;
    const box = $("history");
    try {
      const page = await api("GET", "/chats/messages?id=" + state.current + "&limit=" + PAGE +
        "&before=" + state.oldest);
      if (generation !== state.generation) return;
      state.hasOlder = page.length === PAGE;
      const before = box.scrollHeight;
      addMessages(page, "start");
      box.scrollTop += box.scrollHeight - before;  // keep the reader where they were
    } catch (err) {
      showError("chat-error", err);
    } finally {
      state.loadingOlder = false;
      $("load-older").hidden = !state.hasOlder;
    }
  }

  function addMessages(messages, where) {
    const list = $("messages");
    const fresh = messages.filter((m) => m.chat_id === state.current && !state.seen.has(m.id));
    for (const m of fresh) {
      state.seen.add(m.id);
      if (state.oldest === null || m.id < state.oldest) state.oldest = m.id;
      noteLastId(m.chat_id, m.id);
    }
    if (where === "start") {
      list.prepend(...fresh.map(renderMessage));
    } else {
      for (const m of fresh) {
        // Live and replayed messages arrive in id order, but keep the list sorted anyway.
        const node = renderMessage(m);
        let after = list.lastElementChild;
        while (after && Number(after.dataset.id) > m.id) after = after.previousElementSibling;
        if (after) after.after(node); else list.prepend(node);
      }
    }
    $("load-older").hidden = !state.hasOlder;
  }

  function noteLastId(chatId, id) {
    if (id > (state.lastId.get(chatId) || 0)) state.lastId.set(chatId, id);
  }

  function renderMessage(m) {
    const li = document.createElement("li");
    li.className = "message" + (state.me && m.owner_id === state.me.id ? " mine" : "");
    li.dataset.id = m.id;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = m.username || (state.users.get(m.owner_id) || {}).username || "user " + m.owner_id;
    const when = document.createElement("time");
    when.dateTime = m.created_at;
    const date = new Date(m.created_at);
    when.textContent = isNaN(date) ? "" : date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    when.title = isNaN(date) ? "" : date.toLocaleString();
    const text = document.createElement("p");
    text.className = "text";
    text.textContent = m.text;
    li.append(who, " ", when, text);
    return li;
  }

  function nearBottom() {
    const box = $("history");
    return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  }

  function scrollToBottom() {
    const box = $("history");
    box.scrollTop = box.scrollHeight;
  }

  function setComposer(enabled) {
    $("composer-text").disabled = !enabled;
    $("send").disabled = !enabled;
  }

  // ---- Websocket -----------------------------------------------------------

  function setConnection(text, cls) {
    const el = $("connection");
    el.textContent = text;
    el.className = cls;
  }

  function connect() {
    clearTimeout(state.retryTimer);
    if (!state.token) return;
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(scheme + location.host + "/chats/ws?token=" + encodeURIComponent(state.token));
    state.ws = ws;
    setConnection(state.retry ? "reconnecting…" : "connecting…", "connecting");
    ws.addEventListener("open", () => {
      if (state.ws !== ws) return;
      state.retry = 0;
      setConnection("connected", "connected");
      renderUsers();
      // Catch up on the open chat only (one join: the frame rate limit is per socket).
      if (state.current && !$("composer-text").disabled) join(state.current);
      for (const frame of state.pending.values()) ws.send(JSON.stringify(frame));
      // What changed while we were away: people and chats.
      refreshUsers();
      refreshChats();
    });
    ws.addEventListener("message", (event) => {
      if (state.ws !== ws) return;
      let frame;
      try { frame = JSON.parse(event.data); } catch (err) { return; }
      onFrame(frame);
    });
    ws.addEventListener("close", (event) => {
      if (state.ws !== ws) return;
      state.ws = null;
      if (event.code === 4001) return signedOut("You were logged out.");
      setConnection("reconnecting…", "offline");
      const delay = Math.min(5000, 300 * 2 ** state.retry) * (0.75 + Math.random() / 2);
      state.retry = Math.min(state.retry + 1, 10);
      state.retryTimer = setTimeout(reconnect, delay);
    });
  }

  async function reconnect() {
    if (!state.token) return;
    // A refused handshake does not tell why: ask over HTTP whether the token still works.
    try { await api("GET", "/users/me"); } catch (err) {
      if (err.status === 401) return;   // signedOut() has run
    }
    if (state.token && !state.ws) connect();
  }

  function send(frame) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) {
      state.ws.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  function join(chatId) {
    // Everything after the newest message we have (0: the chat was empty), then live ones.
    send({ type: "join", chat_id: chatId, since: state.lastId.get(chatId) || 0 });
  }

  function onFrame(frame) {
    switch (frame.type) {
      case "message": {
        if (frame.nonce) state.pending.delete(frame.nonce);
        noteLastId(frame.chat_id, frame.id);
        if (frame.chat_id !== state.current) return;
        const stick = nearBottom() || (state.me && frame.owner_id === state.me.id);
        addMessages([frame], "end");
        if (stick) scrollToBottom();
        return;
      }
      case "presence":
        for (const u of frame.users || []) {
          state.users.set(u.user_id, { id: u.user_id, username: u.username, is_online: u.is_online });
        }
        renderUsers();
        return;
      case "error":
        if (frame.nonce) state.pending.delete(frame.nonce);
        showError("chat-error", { message: frame.error });
        return;
      default:
        return;  // joined, left and frame types this page does not know
    }
  }

  function newNonce() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2);
  }

  function sendMessage() {
    const box = $("composer-text");
    const text = box.value;
    if (!state.current) return;
    if (!text.trim()) {
      showError("chat-error", { message: "write something first" });
      return;
    }
    showError("chat-error", null);
    const frame = { type: "message", chat_id: state.current, text, nonce: newNonce() };
    state.pending.set(frame.nonce, frame);  // sent again after a reconnect until it comes back
    if (!send(frame)) showError("chat-error", { message: "not connected: the message will be sent on reconnection" });
    box.value = "";
    box.focus();
  }

  // ---- Events --------------------------------------------------------------

  function formData(form) {
    return Object.fromEntries(new FormData(form).entries());
  }

  function wireEvents() {
    $("login-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      showError("login-error", null);
      const data = formData(event.target);
      try {
        signIn(await api("POST", "/auth/login", { email: data.email, password: data.password }));
        event.target.reset();
      } catch (err) { showError("login-error", err); }
    });
    $("reg-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      showError("reg-error", null);
      const data = formData(event.target);
      try {
        signIn(await api("POST", "/auth/reg", data));
        event.target.reset();
      } catch (err) { showError("reg-error", err); }
    });
    $("new-chat-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      showError("new-chat-error", null);
      const input = $("new-chat-name");
      try {
        const chat = await api("POST", "/chats/create", { name: input.value });
        input.value = "";
        state.chats.set(chat.id, chat);
        renderChats();
        await openChat(chat.id);
        $("composer-text").focus();
      } catch (err) { showError("new-chat-error", err); }
    });
    $("refresh-chats").addEventListener("click", refreshChats);
    $("logout").addEventListener("click", logout);
    $("load-older").addEventListener("click", loadOlder);
    $("history").addEventListener("scroll", () => {
      if ($("history").scrollTop < 40) loadOlder();
    });
    $("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      sendMessage();
    });
    $("composer-text").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        sendMessage();
      }
    });
    // New chats of other people: look again now and then (HTTP, not the socket's budget).
    setInterval(() => { if (state.token && state.me && !document.hidden) refreshChats(); }, 15000);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
