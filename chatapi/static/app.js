// ChatAPI web client: vanilla JavaScript over the public HTTP and websocket API.
"use strict";

(function () {
  const PAGE = 50;
  const TOKEN_KEY = "chatapi.token";
  const PHONE = window.matchMedia("(max-width: 700px)");
  const PIN_DISTANCE = 40;     // px from the bottom that still counts as "at the newest message"
  const TOP_DISTANCE = 150;    // px from the top where older messages start loading
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
    loaded: false,           // the newest page of the open chat is shown
    loadingOlder: false,
    pinned: true,            // the history follows new messages (the reader is at the bottom)
    pending: new Map(),      // nonce -> frame sent but not yet echoed
    failed: new Map(),       // nonce -> {frame, error}: refused by the server
    ws: null,
    retry: 0,
    retryTimer: null,
    generation: 0,           // bumps on logout / chat switch to drop stale answers
    following: new Set(),    // chats this socket follows for their unread badges
    readTimers: new Map(),   // chat id -> pending read-marker update
  };

  // ---- HTTP ----------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.error) || "the request failed (" + status + ")");
      this.status = status;
      this.details = (body && body.details) || {};
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
      throw new ApiError(0, { error: "The server cannot be reached; try again in a moment." });
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

  // ---- Forms: every field checked at once, problems in plain words ----------

  const EMAIL = /^[^@\s]+@[^@\s]+\.[^@\s]+$/;
  const CONTROL = /[\p{Cc}\p{Cf}]/u;

  const CHECKS = {
    email(value) {
      const email = value.trim();
      if (!email) return "Enter your email address.";
      if (email.length > 254 || !EMAIL.test(email)) return "This does not look like an email address (like name@example.com).";
      return null;
    },
    username(value) {
      const name = value.trim();
      if (!name) return "Choose a username.";
      if (name.length < 3) return "Use at least 3 characters for the username.";
      if (name.length > 50) return "Use at most 50 characters for the username.";
      if (CONTROL.test(name)) return "The username contains invisible characters; type it again.";
      return null;
    },
    password(value) {
      if (!value) return "Choose a password.";
      if (value.length < 8) return "Use at least 8 characters for the password.";
      if (value.length > 128) return "Use at most 128 characters for the password.";
      return null;
    },
    loginPassword(value) {
      return value ? null : "Enter your password.";
    },
  };

  // The server's reason for a field (`details`), said the way a person would.
  const SERVER_WORDS = {
    email: { "already taken": "An account with this email already exists. Log in instead?" },
    username: { "already taken": "This username is taken; choose another one." },
  };

  function setFieldError(input, message) {
    const box = $(input.id + "-error");
    box.textContent = message || "";
    if (message) input.setAttribute("aria-invalid", "true"); else input.removeAttribute("aria-invalid");
  }

  // Check `checks` ({input id: check}); show every problem; focus the first. True when all pass.
  function checkForm(formErrorId, checks) {
    showError(formErrorId, null);
    let first = null;
    let count = 0;
    for (const [id, check] of Object.entries(checks)) {
      const input = $(id);
      const problem = check(input.value);
      setFieldError(input, problem);
      if (problem) {
        count += 1;
        first = first || input;
      }
    }
    if (first) {
      showError(formErrorId, { message: count === 1 ? "Please fix the problem marked above." : "Please fix the " + count + " problems marked above." });
      first.focus();
    }
    return !first;
  }

  // A server refusal shown next to the field it names, or for the whole form.
  function showServerError(formErrorId, prefix, err) {
    const fields = Object.entries(err.details || {});
    let shown = false;
    for (const [field, reason] of fields) {
      const input = $(prefix + "-" + field);
      if (!input) continue;
      const words = (SERVER_WORDS[field] || {})[reason] || "The server did not accept this: it " + reason + ".";
      setFieldError(input, words);
      if (!shown) input.focus();
      shown = true;
    }
    showError(formErrorId, shown ? { message: "Please fix the problem marked above." } : err);
  }

  function clearFieldErrors(form) {
    for (const input of $(form).querySelectorAll("input")) {
      if ($(input.id + "-error")) setFieldError(input, null);
    }
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
    setSkipLink();
  }

  function signIn(answer) {
    state.token = answer.token;
    localStorage.setItem(TOKEN_KEY, answer.token);
    state.me = { id: answer.id, username: answer.username };
    enter(true);
  }

  function enter(signedIn) {
    $("auth-view").hidden = true;
    $("chat-view").hidden = false;
    $("session").hidden = false;
    $("me-name").textContent = state.me.username;
    for (const id of ["login-error", "reg-error"]) showError(id, null);
    clearFieldErrors("login-form");
    clearFieldErrors("reg-form");
    showScreen("list");
    refreshChats().then(() => {
      const wanted = Number((location.hash.match(/chat=(\d+)/) || [])[1]);
      if (wanted && state.chats.has(wanted)) return openChat(wanted, false);
      // Just signed in: the form that had the focus is gone; go on from the chat list.
      if (signedIn) {
        ($("chat-list").querySelector("button") || $("new-chat-name")).focus();
      }
    });
    refreshUsers();
    connect();
    api("GET", "/users/me").then((me) => {
      if (state.me && state.me.id === me.id) state.me = me;
      $("invites").hidden = !me.is_admin;
    }).catch(() => {});
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
    state.loaded = false;
    state.pending.clear();
    state.failed.clear();
    state.lastId.clear();
    state.chats.clear();
    state.users.clear();
    $("messages").replaceChildren();
    $("pending").replaceChildren();
    $("chat-list").replaceChildren();
    $("dm-list").replaceChildren();
    $("user-list").replaceChildren();
    $("members").hidden = true;
    $("members-toggle").hidden = true;
    $("invites").hidden = true;
    $("invite-code").textContent = "";
    state.following.clear();
    document.title = "ChatAPI";
    $("load-older").hidden = true;
    $("history-start").hidden = true;
    $("jump").hidden = true;
    showError("chat-error", null);
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

  // The skip link always points at something on screen.
  function setSkipLink() {
    const link = $("skip");
    if (!$("auth-view").hidden) {
      link.href = "#login-email";
      link.textContent = "Skip to the login form";
    } else if (state.current && !$("composer-text").disabled && isVisible($("composer-text"))) {
      link.href = "#composer-text";
      link.textContent = "Skip to the message box";
    } else if (isVisible($("chat-list")) && state.chats.size) {
      link.href = "#chat-list";
      link.textContent = "Skip to the chat list";
    } else if (isVisible($("new-chat-name"))) {
      link.href = "#new-chat-name";
      link.textContent = "Skip to the new chat form";
    } else {
      link.href = "#history";
      link.textContent = "Skip to the messages";
    }
  }

  function isVisible(el) {
    return el.getClientRects().length > 0;
  }

  // On a phone the chat list and the conversation are two screens; elsewhere both show.
  function showScreen(name) {
    $("chat-view").dataset.screen = name;
    setSkipLink();
  }

  // ---- Chats and people ----------------------------------------------------

  async function refreshChats() {
    const token = state.token;
    let chats;
    try { chats = await api("GET", "/chats/"); } catch (err) { return showError("new-chat-error", err); }
    if (state.token !== token) return;  // logged out meanwhile
    // Chats are never deleted: keep one a chat_created frame brought while this answer was on its way.
    const visible = new Set(chats.map((c) => c.id));
    for (const c of chats) state.chats.set(c.id, c);
    // A private chat one left or was removed from is gone from the list.
    for (const [id, c] of state.chats) if (!visible.has(id) && c.kind && c.kind !== "public") state.chats.delete(id);
    state.chats = new Map([...state.chats.entries()].sort((a, b) => a[0] - b[0]));
    renderChats();
    followChats();
  }

  function renderChats() {
    // Re-rendering must not drop the keyboard focus of a chat button.
    const focused = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.chatId : undefined;
    const chats = [...state.chats.values()];
    const rooms = chats.filter((chat) => chat.kind !== "direct");
    const direct = chats.filter((chat) => chat.kind === "direct");
    $("chat-list").replaceChildren(...rooms.map(chatItem));
    $("dm-list").replaceChildren(...direct.map(chatItem));
    $("no-chats").hidden = rooms.length > 0;
    $("no-dms").hidden = direct.length > 0;
    const total = chats.reduce((sum, chat) => sum + (chat.unread || 0), 0);
    document.title = total ? "(" + (total > 999 ? "999+" : total) + ") ChatAPI" : "ChatAPI";
    setSkipLink();
    if (focused !== undefined) {
      const again = document.querySelector('.chat-link[data-chat-id="' + focused + '"]');
      if (again) again.focus();
    }
  }

  function chatLabel(chat) {
    return chat.kind === "direct" && chat.other_user ? chat.other_user.username : chat.name;
  }

  function chatItem(chat) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "chat-link";
    button.dataset.chatId = chat.id;
    button.textContent = chatLabel(chat);
    // The name stays the button's name; "private" and the unread count describe it.
    const described = [];
    if (chat.kind === "private") {
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.id = "tag-" + chat.id;
      tag.textContent = "private";
      button.append(tag);
      described.push(tag.id);
    }
    if (chat.unread) {
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.id = "badge-" + chat.id;
      badge.textContent = chat.unread_capped ? "999+" : String(chat.unread);
      badge.title = badge.textContent + " unread";
      button.append(badge);
      described.push(badge.id);
    }
    button.setAttribute("aria-label", chatLabel(chat));
    if (described.length) button.setAttribute("aria-describedby", described.join(" "));
    if (chat.id === state.current) button.setAttribute("aria-current", "true");
    button.addEventListener("click", () => openChat(chat.id, true));
    li.append(button);
    return li;
  }

  // Follow every chat one is a member of, so that its badge counts new messages live.
  function followChats() {
    for (const chat of state.chats.values()) {
      if (chat.is_member && chat.id !== state.current && !state.following.has(chat.id)) {
        if (send({ type: "join", chat_id: chat.id })) state.following.add(chat.id);
      }
    }
  }

  // The open chat is read up to its newest message: move the marker (once things settle).
  function markRead(chatId) {
    clearTimeout(state.readTimers.get(chatId));
    state.readTimers.set(chatId, setTimeout(async () => {
      state.readTimers.delete(chatId);
      const chat = state.chats.get(chatId);
      const last = state.lastId.get(chatId);
      // Only what is on screen is read: the chat must still be the open one.
      if (state.current !== chatId || !chat || !chat.is_member || !last ||
          document.visibilityState === "hidden") return;
      try {
        await api("POST", "/chats/" + chatId + "/read", { message_id: last });
      } catch (err) { return; }
      chat.unread = 0;
      chat.unread_capped = false;
      renderChats();
    }, 200));
  }

  async function startDirect(userId) {
    try {
      const chat = await api("POST", "/chats/create", { kind: "direct", user_id: userId });
      await refreshChats();
      await openChat(chat.id, true);
    } catch (err) { showError("new-chat-error", err); }
  }

  // ---- Members -------------------------------------------------------------

  async function refreshMembers() {
    const chatId = state.current;
    const chat = state.chats.get(chatId);
    if (!chat || $("members").hidden) return;
    let members;
    try { members = await api("GET", "/chats/" + chatId + "/members"); } catch (err) {
      return showError("members-error", err);
    }
    if (state.current !== chatId) return;
    showError("members-error", null);
    const mine = members.find((m) => m.user_id === state.me.id);
    const manages = chat.kind !== "direct" && ((mine && mine.role === "owner") || state.me.is_admin);
    $("member-list").replaceChildren(...members.map((m) => {
      const li = document.createElement("li");
      li.textContent = m.username + (m.role === "owner" ? " (owner)" : "");
      if (manages && m.user_id !== state.me.id) {
        const remove = document.createElement("button");
        remove.type = "button";
        remove.textContent = "Remove";
        remove.setAttribute("aria-label", "Remove " + m.username);
        remove.addEventListener("click", async () => {
          try { await api("DELETE", "/chats/" + chatId + "/members/" + m.user_id); } catch (err) {
            return showError("members-error", err);
          }
          refreshMembers();
        });
        li.append(remove);
      }
      return li;
    }));
    const form = $("add-member-form");
    form.hidden = !manages;
    const inside = new Set(members.map((m) => m.user_id));
    $("add-member-user").replaceChildren(...[...state.users.values()]
      .filter((u) => !inside.has(u.id))
      .map((u) => new Option(u.username, String(u.id))));
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
      if (state.me && u.id !== state.me.id) {
        const dm = document.createElement("button");
        dm.type = "button";
        dm.className = "dm";
        dm.textContent = "DM";
        dm.setAttribute("aria-label", "Direct chat with " + u.username);
        dm.addEventListener("click", () => startDirect(u.id));
        li.append(dm);
      }
      return li;
    }));
  }

  // ---- History -------------------------------------------------------------

  async function openChat(id, byUser) {
    const previous = state.chats.get(state.current);
    if (state.current && state.current !== id) {
      // A chat one is a member of stays followed: its badge keeps counting.
      if (previous && previous.is_member) state.following.add(state.current);
      else send({ type: "leave", chat_id: state.current });
    }
    const generation = ++state.generation;
    state.current = id;
    state.seen = new Set();
    state.oldest = null;
    state.hasOlder = false;
    state.loaded = false;
    state.pinned = true;
    setComposer(false);
    $("messages").replaceChildren();
    $("load-older").hidden = true;
    $("history-start").hidden = true;
    $("jump").hidden = true;
    renderPending();
    showError("chat-error", null);
    const opened = state.chats.get(id);
    $("chat-title").textContent = opened ? chatLabel(opened) : "Chat " + id;
    $("members-toggle").hidden = !opened || opened.kind === "public";
    $("members").hidden = true;
    $("members-toggle").setAttribute("aria-expanded", "false");
    history.replaceState(null, "", "#chat=" + id);
    renderChats();
    showScreen("chat");
    let page;
    try {
      page = await api("GET", "/chats/messages?id=" + id + "&limit=" + PAGE);
    } catch (err) {
      if (generation === state.generation) showError("chat-error", err);
      return;
    }
    if (generation !== state.generation) return;
    state.hasOlder = page.length === PAGE;
    state.loaded = true;
    addMessages(page, "end");
    setComposer(true);
    scrollToBottom();
    join(id);
    // Joining makes one a member (a public chat included): its badge counts from now on.
    if (opened) opened.is_member = true;
    markRead(id);
    if (byUser || document.activeElement === document.body) $("composer-text").focus({ preventScroll: true });
    fillHistory();
  }

  // A short first page leaves no room to scroll: load older pages until there is some.
  function fillHistory() {
    const box = $("history");
    if (state.hasOlder && box.scrollHeight <= box.clientHeight + TOP_DISTANCE) {
      loadOlder().then(() => { if (!state.loadingOlder) fillHistory(); });
    }
  }

  async function loadOlder() {
    if (!state.current || !state.hasOlder || state.loadingOlder || state.oldest === null) return;
    const generation = state.generation;
    state.loadingOlder = true;
    try {
      const page = await api("GET", "/chats/messages?id=" + state.current + "&limit=" + PAGE +
        "&before=" + state.oldest);
      if (generation !== state.generation) return;
      state.hasOlder = page.length === PAGE;
      keepInPlace(() => addMessages(page, "start"));
    } catch (err) {
      if (generation === state.generation) showError("chat-error", err);
    } finally {
      if (generation === state.generation) state.loadingOlder = false;
      updateHistoryEdges();
    }
  }

  // Change the list without moving what the reader sees: the first message on screen
  // stays at the same height (or the bottom stays the bottom when pinned).
  function keepInPlace(change) {
    const box = $("history");
    if (state.pinned) {
      change();
      scrollToBottom();
      return;
    }
    const top = box.getBoundingClientRect().top;
    // A message, not a day separator: separators come and go as older pages arrive.
    const anchor = [...$("messages").querySelectorAll("li.message")]
      .find((el) => el.getBoundingClientRect().bottom > top);
    const before = anchor ? anchor.getBoundingClientRect().top : 0;
    change();
    if (anchor && anchor.isConnected) box.scrollTop += anchor.getBoundingClientRect().top - before;
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
        while (after && (after.classList.contains("day") || Number(after.dataset.id) > m.id)) {
          after = after.previousElementSibling;
        }
        if (after) after.after(node); else list.prepend(node);
      }
    }
    markDays();
    updateHistoryEdges();
  }

  // One separator before the first message of each day (in the reader's time zone),
  // touching only what changed, so that the live region announces no old separator.
  function markDays() {
    const list = $("messages");
    let previous = null;
    for (const li of [...list.children]) {
      if (li.classList.contains("day")) {
        const next = li.nextElementSibling;
        if (!next || next.classList.contains("day") || next.dataset.day === previous ||
            next.dataset.day !== li.dataset.day) li.remove();
        continue;
      }
      const day = li.dataset.day;
      const before = li.previousElementSibling;
      if (day !== previous && !(before && before.classList.contains("day") && before.dataset.day === day)) {
        const sep = document.createElement("li");
        sep.className = "day";
        sep.dataset.day = day;
        sep.textContent = dayLabel(new Date(li.querySelector("time").dateTime));
        li.before(sep);
      }
      previous = day;
    }
  }

  function dayKey(date) {
    return isNaN(date) ? "" : date.getFullYear() + "-" + date.getMonth() + "-" + date.getDate();
  }

  function dayLabel(date) {
    const today = new Date();
    const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
    if (dayKey(date) === dayKey(today)) return "Today";
    if (dayKey(date) === dayKey(yesterday)) return "Yesterday";
    const options = { weekday: "long", day: "numeric", month: "long" };
    if (date.getFullYear() !== today.getFullYear()) options.year = "numeric";
    return date.toLocaleDateString([], options);
  }

  function updateHistoryEdges() {
    $("load-older").hidden = !state.hasOlder;
    $("history-start").hidden = !(state.loaded && !state.hasOlder);
  }

  function noteLastId(chatId, id) {
    if (id > (state.lastId.get(chatId) || 0)) state.lastId.set(chatId, id);
  }

  function messageNode(m, mine) {
    const li = document.createElement("li");
    li.className = "message" + (mine ? " mine" : "");
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = m.username || (state.users.get(m.owner_id) || {}).username || "user " + m.owner_id;
    const text = document.createElement("p");
    text.className = "text";
    text.textContent = m.text;
    li.append(who, " ");
    return [li, text];
  }

  function renderMessage(m) {
    const [li, text] = messageNode(m, state.me && m.owner_id === state.me.id);
    li.dataset.id = m.id;
    const when = document.createElement("time");
    when.dateTime = m.created_at;
    const date = new Date(m.created_at);
    li.dataset.day = dayKey(date);
    when.textContent = isNaN(date) ? "" : date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    when.title = isNaN(date) ? "" : date.toLocaleString([], { dateStyle: "full", timeStyle: "short" });
    li.append(when, text);
    return li;
  }

  // Messages sent from this page that the server has not stored yet (or refused).
  function renderPending() {
    const items = [];
    for (const [nonce, frame] of state.pending) {
      if (frame.chat_id !== state.current) continue;
      const connected = state.ws && state.ws.readyState === WebSocket.OPEN;
      items.push(pendingNode(nonce, frame, connected ? "sending…" : "waiting for the connection…", false));
    }
    for (const [nonce, { frame, error }] of state.failed) {
      if (frame.chat_id === state.current) items.push(pendingNode(nonce, frame, "not sent: " + error, true));
    }
    const box = $("history");
    const stick = state.pinned;
    $("pending").replaceChildren(...items);
    if (stick) box.scrollTop = box.scrollHeight;
  }

  function pendingNode(nonce, frame, status, failed) {
    const [li, text] = messageNode({ username: state.me ? state.me.username : "", text: frame.text }, true);
    li.classList.add(failed ? "failed" : "pending");
    li.dataset.nonce = nonce;
    const note = document.createElement("span");
    note.className = "state";
    note.textContent = status;
    li.append(note, text);
    if (failed) {
      const retry = document.createElement("button");
      retry.type = "button";
      retry.textContent = "Edit and resend";
      retry.addEventListener("click", () => {
        state.failed.delete(nonce);
        const box = $("composer-text");
        if (!box.value) box.value = frame.text;
        renderPending();
        updateConnectionNote();
        box.focus();
      });
      li.append(retry);
    }
    return li;
  }

  function atBottom() {
    const box = $("history");
    return box.scrollHeight - box.scrollTop - box.clientHeight <= PIN_DISTANCE;
  }

  function scrollToBottom() {
    const box = $("history");
    box.scrollTop = box.scrollHeight;
    state.pinned = true;
    $("jump").hidden = true;
  }

  function setComposer(enabled) {
    $("composer-text").disabled = !enabled;
    $("send").disabled = !enabled;
    setSkipLink();
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
      state.following = new Set();  // a new socket follows nothing yet
      setConnection("connected", "connected");
      renderUsers();
      // Catch up on the open chat only (one join: the frame rate limit is per socket).
      if (state.current && !$("composer-text").disabled) join(state.current);
      for (const frame of state.pending.values()) ws.send(JSON.stringify(frame));
      renderPending();
      updateConnectionNote();
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
      renderPending();
      updateConnectionNote();
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

  // The note under the history while messages wait for the connection; gone once they left.
  function updateConnectionNote() {
    const note = $("chat-error");
    const waiting = state.pending.size;
    const offline = !(state.ws && state.ws.readyState === WebSocket.OPEN);
    if (waiting && offline) {
      note.textContent = "Not connected: " + (waiting === 1 ? "your message" : waiting + " messages") +
        " will be sent when the connection is back.";
      note.dataset.kind = "offline";
    } else if (note.dataset.kind === "offline") {
      note.textContent = "";
      delete note.dataset.kind;
    }
  }

  function onFrame(frame) {
    switch (frame.type) {
      case "message": {
        const mine = frame.nonce && state.pending.delete(frame.nonce);
        noteLastId(frame.chat_id, frame.id);
        if (frame.chat_id === state.current) {
          const stick = state.pinned || mine;
          if (mine) renderPending();
          keepInPlace(() => addMessages([frame], "end"));
          if (stick) scrollToBottom(); else $("jump").hidden = false;
          markRead(frame.chat_id);
        } else if (state.me && frame.owner_id !== state.me.id) {
          const chat = state.chats.get(frame.chat_id);
          if (chat && chat.is_member) {
            chat.unread = Math.min(999, (chat.unread || 0) + 1);
            renderChats();
          }
        }
        if (mine) updateConnectionNote();
        return;
      }
      case "joined":
        // Our cursor was beyond the chat's newest message (a restored server):
        // resume from where the server is, or a reconnect would skip messages.
        if (frame.cursor_reset) state.lastId.set(frame.chat_id, frame.last_id);
        return;
      case "chat_created":
        if (frame.chat && !state.chats.has(frame.chat.id)) {
          // A private or direct chat is announced to its members only.
          const member = frame.chat.kind !== "public" || (state.me && frame.chat.owner_id === state.me.id);
          state.chats.set(frame.chat.id, { ...frame.chat, is_member: member, unread: 0 });
          if (frame.chat.kind === "direct") refreshChats();  // the other user's name
          renderChats();
          followChats();
        }
        return;
      case "read":
        // Read on another device (or tab): this one's badge follows.
        if (frame.chat_id !== state.current) refreshChats();
        return;
      case "member_added":
        if (state.me && frame.user_id === state.me.id) refreshChats();
        if (frame.chat_id === state.current) refreshMembers();
        return;
      case "member_role":
        if (frame.chat_id === state.current) refreshMembers();
        return;
      case "member_removed":
      case "member_left":
        if (state.me && frame.user_id === state.me.id) {
          state.following.delete(frame.chat_id);
          const chat = state.chats.get(frame.chat_id);
          if (chat && chat.kind !== "public") state.chats.delete(frame.chat_id);
          else if (chat) chat.is_member = false;
          renderChats();
          if (frame.chat_id === state.current) {
            setComposer(false);
            showError("chat-error", { message: frame.type === "member_left"
              ? "You left this chat." : "You were removed from this chat." });
          }
        } else if (frame.chat_id === state.current) {
          refreshMembers();
        }
        return;
      case "presence":
        for (const u of frame.users || []) {
          state.users.set(u.user_id, { id: u.user_id, username: u.username, is_online: u.is_online });
        }
        renderUsers();
        return;
      case "error": {
        const frameSent = frame.nonce && state.pending.get(frame.nonce);
        if (frameSent) {
          state.pending.delete(frame.nonce);
          state.failed.set(frame.nonce, { frame: frameSent, error: frame.error });
          renderPending();
          updateConnectionNote();
        } else {
          showError("chat-error", { message: frame.error });
        }
        return;
      }
      default:
        return;  // left and frame types this page does not know
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
      showError("chat-error", { message: "Write something first." });
      return;
    }
    if ($("chat-error").dataset.kind !== "offline") showError("chat-error", null);
    const frame = { type: "message", chat_id: state.current, text, nonce: newNonce() };
    state.pending.set(frame.nonce, frame);  // sent again after a reconnect until it comes back
    send(frame);
    box.value = "";
    renderPending();
    scrollToBottom();
    updateConnectionNote();
    box.focus();
  }

  // ---- Events --------------------------------------------------------------

  function formData(form) {
    return Object.fromEntries(new FormData(form).entries());
  }

  function wireEvents() {
    $("login-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      if (!checkForm("login-error", { "login-email": CHECKS.email, "login-password": CHECKS.loginPassword })) return;
      const data = formData(event.target);
      try {
        signIn(await api("POST", "/auth/login", { email: data.email, password: data.password }));
        event.target.reset();
      } catch (err) { showError("login-error", err); }
    });
    $("reg-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const checks = { "reg-email": CHECKS.email, "reg-username": CHECKS.username, "reg-password": CHECKS.password };
      if (!checkForm("reg-error", checks)) return;
      const data = formData(event.target);
      if (!data.invite) delete data.invite;
      try {
        signIn(await api("POST", "/auth/reg", data));
        event.target.reset();
      } catch (err) { showServerError("reg-error", "reg", err); }
    });
    $("new-chat-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      showError("new-chat-error", null);
      const input = $("new-chat-name");
      if (!input.value.trim()) {
        showError("new-chat-error", { message: "Type a name for the new chat first." });
        input.focus();
        return;
      }
      try {
        const kind = $("new-chat-private").checked ? "private" : "public";
        const chat = await api("POST", "/chats/create", { name: input.value, kind });
        input.value = "";
        $("new-chat-private").checked = false;
        state.chats.set(chat.id, { ...chat, is_member: true, role: "owner", unread: 0 });
        renderChats();
        await openChat(chat.id, true);
      } catch (err) { showError("new-chat-error", err); }
    });
    $("logout").addEventListener("click", logout);
    $("members-toggle").addEventListener("click", () => {
      const open = $("members").hidden;
      $("members").hidden = !open;
      $("members-toggle").setAttribute("aria-expanded", String(open));
      if (open) refreshMembers();
    });
    $("add-member-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const userId = Number($("add-member-user").value);
      if (!userId) return;
      try {
        await api("POST", "/chats/" + state.current + "/members", { user_id: userId });
      } catch (err) { return showError("members-error", err); }
      refreshMembers();
    });
    $("new-invite").addEventListener("click", async () => {
      try {
        const invite = await api("POST", "/invites", { uses: 1 });
        $("invite-code").textContent = "Invite code (one registration, until " +
          invite.expires_at.slice(0, 10) + "): " + invite.code;
      } catch (err) { $("invite-code").textContent = err.message; }
    });
    $("load-older").addEventListener("click", loadOlder);
    $("jump").addEventListener("click", () => {
      scrollToBottom();
      $("composer-text").focus({ preventScroll: true });
    });
    $("back").addEventListener("click", () => {
      showScreen("list");
      const button = $("chat-list").querySelector('[aria-current="true"]');
      if (button) button.focus();
    });
    $("skip").addEventListener("click", (event) => {
      const target = document.querySelector(event.currentTarget.getAttribute("href"));
      if (!target) return;
      event.preventDefault();
      if (target.tabIndex < 0 && !/^(INPUT|TEXTAREA|BUTTON)$/.test(target.tagName)) target.tabIndex = -1;
      const first = target.id === "chat-list" ? target.querySelector("button") : null;
      (first || target).focus();
    });
    $("history").addEventListener("scroll", () => {
      state.pinned = atBottom();
      if (state.pinned) $("jump").hidden = true;
      if ($("history").scrollTop < TOP_DISTANCE) loadOlder();
    });
    // The box changes size (a phone's keyboard, a window resize): keep the newest in view.
    new ResizeObserver(() => { if (state.pinned) scrollToBottom(); }).observe($("history"));
    PHONE.addEventListener("change", setSkipLink);
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
    for (const input of document.querySelectorAll("#reg-form input, #login-form input")) {
      // A corrected field loses its mark at once; others keep theirs until the next submit.
      input.addEventListener("input", () => { if (input.getAttribute("aria-invalid")) setFieldError(input, null); });
    }
  }

  document.addEventListener("DOMContentLoaded", start);
})();
