// ChatAPI web client: vanilla JavaScript over the public HTTP and websocket API.
"use strict";

(function () {
  const PAGE = 50;
  const TOKEN_KEY = "chatapi.token";
  const PHONE = window.matchMedia("(max-width: 700px)");
  const PIN_DISTANCE = 40;     // px from the bottom that still counts as "at the newest message"
  const TOP_DISTANCE = 150;    // px from the top where older messages start loading
  const BIG_PAGE = 1000;       // the largest page the server gives: used to reach an old message
  const TYPING_EVERY = 3500;   // ms between typing frames (the server keeps one per 3 s; it holds 5 s)
  const HIGHLIGHT_FOR = 4000;  // ms a message opened from a search result or a quote stays marked
  const EMOJIS = ["👍", "❤️", "😂", "🎉", "😮", "😢"];
  const $ = (id) => document.getElementById(id);

  const state = {
    token: localStorage.getItem(TOKEN_KEY),
    me: null,
    chats: new Map(),        // id -> chat
    users: new Map(),        // id -> {id, username, is_online}
    learning: null,          // a read of the people list for unknown names, in flight
    current: null,           // open chat id
    shown: new Map(),        // message id -> message, for the open chat (its current state)
    oldest: null,            // smallest id shown (paging cursor)
    lastId: new Map(),       // chat id -> highest message id seen (the read marker)
    cursor: new Map(),       // chat id -> highest seq seen: `since` of a join (edits included)
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
    olderLoad: null,         // the page of older messages being fetched (a promise)
    menu: null,              // id of the message whose actions are open
    compose: null,           // {mode: "reply" | "edit", message}: what the composer is doing
    typists: new Map(),      // chat id -> Map(user id -> {username, timer}): who types there
    typingSent: new Map(),   // chat id -> when this page last said it types there (ms)
    quotes: new Map(),       // message id -> message or promise: replied-to messages not shown
    search: null,            // {q, before}: the search whose results are listed
    highlight: { id: null, timer: 0 },  // the message marked after being opened from elsewhere
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
    state.cursor.clear();
    for (const typists of state.typists.values()) for (const t of typists.values()) clearTimeout(t.timer);
    state.typists.clear();
    state.typingSent.clear();
    state.quotes.clear();
    state.shown.clear();
    state.menu = null;
    setCompose(null);
    clearSearch();
    $("search-q").value = "";
    $("typing").textContent = "";
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
    const switching = state.current !== id;
    if (state.current && state.current !== id) {
      // A chat one is a member of stays followed: its badge keeps counting.
      if (previous && previous.is_member) state.following.add(state.current);
      else send({ type: "leave", chat_id: state.current });
    }
    const generation = ++state.generation;
    state.current = id;
    state.shown = new Map();
    state.menu = null;
    if (switching) setCompose(null);
    state.oldest = null;
    state.hasOlder = false;
    state.loadingOlder = false;  // a page of the previous chat still on its way is dropped
    state.olderLoad = null;
    state.loaded = false;
    state.pinned = true;
    setComposer(false);
    $("messages").replaceChildren();
    $("load-older").hidden = true;
    $("history-start").hidden = true;
    $("jump").hidden = true;
    renderPending();
    renderTyping();
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
    // Every change after this page was read: its highest seq, not a cursor this socket
    // raised meanwhile by following the chat (a change between the two would be lost).
    join(id, page.reduce((top, m) => Math.max(top, seqOf(m)), 0));
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

  // The page before the oldest message shown (one at a time: a second call gets the
  // first one's promise). Resolves to false when nothing could be loaded.
  function loadOlder(limit) {
    if (!state.current || !state.hasOlder || state.oldest === null) return Promise.resolve(false);
    if (state.loadingOlder) return state.olderLoad;
    state.loadingOlder = true;
    state.olderLoad = fetchOlder(typeof limit === "number" ? limit : PAGE);
    return state.olderLoad;
  }

  async function fetchOlder(limit) {
    const generation = state.generation;
    try {
      const page = await api("GET", "/chats/messages?id=" + state.current + "&limit=" + limit +
        "&before=" + state.oldest);
      if (generation !== state.generation) return false;
      state.hasOlder = page.length === limit;
      keepInPlace(() => addMessages(page, "start"));
      return true;
    } catch (err) {
      if (generation === state.generation) showError("chat-error", err);
      return false;
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
    const fresh = messages.filter((m) => m.chat_id === state.current && !state.shown.has(m.id));
    for (const m of messages) {
      // One already shown may come back newer (a replay after a reconnect): show that.
      const known = m.chat_id === state.current && state.shown.get(m.id);
      if (known && seqOf(m) > seqOf(known)) updateMessage(m);
    }
    for (const m of fresh) {
      state.shown.set(m.id, m);
      if (state.oldest === null || m.id < state.oldest) state.oldest = m.id;
      noteLastId(m.chat_id, m.id);
      noteCursor(m.chat_id, seqOf(m));
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

  // A message's place in the chat's sequence of changes (its id on a server without seq).
  function seqOf(m) {
    return typeof m.seq === "number" ? m.seq : m.id;
  }

  function noteCursor(chatId, seq) {
    if (seq > (state.cursor.get(chatId) || 0)) state.cursor.set(chatId, seq);
  }

  // A user's name: from the people list, else from a message of theirs on screen; an
  // unknown one (someone who joined since the list was read) asks for the list again,
  // and the messages on screen are shown again with the names it brings.
  function nameOf(userId) {
    const user = state.users.get(userId);
    if (user) return user.username;
    for (const m of state.shown.values()) if (m.owner_id === userId && m.username) return m.username;
    learnNames();
    return "user " + userId;
  }

  function learnNames() {
    if (state.learning) return;
    state.learning = refreshUsers().then(() => {
      for (const m of state.shown.values()) if (m.reactions) updateMessage(m);
      setTimeout(() => { state.learning = null; }, 2000);  // at most one list read every 2 s
    });
  }

  function messageNode(m, mine) {
    const li = document.createElement("li");
    li.className = "message" + (mine ? " mine" : "");
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = m.username || nameOf(m.owner_id);
    const text = document.createElement("p");
    text.className = "text";
    text.textContent = m.text;
    li.append(who, " ");
    return [li, text];
  }

  // One message as the history shows it: who, when, (edited), its actions button, the
  // message it replies to, its text, its reactions; a deleted one as a tombstone.
  function renderMessage(m) {
    const mine = Boolean(state.me && m.owner_id === state.me.id);
    const [li, text] = messageNode(m, mine);
    li.dataset.id = m.id;
    const when = document.createElement("time");
    when.dateTime = m.created_at;
    const date = new Date(m.created_at);
    li.dataset.day = dayKey(date);
    when.textContent = isNaN(date) ? "" : date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    when.title = isNaN(date) ? "" : date.toLocaleString([], { dateStyle: "full", timeStyle: "short" });
    li.append(when);
    if (m.deleted) {
      li.classList.add("deleted");
      text.textContent = "This message was deleted.";
      li.append(text);
      return li;
    }
    if (m.edited_at) {
      const edited = document.createElement("span");
      edited.className = "edited";
      edited.textContent = " (edited)";
      const at = new Date(m.edited_at);
      if (!isNaN(at)) edited.title = "Edited " + at.toLocaleString([], { dateStyle: "full", timeStyle: "short" });
      li.append(edited);
    }
    const more = document.createElement("button");
    more.type = "button";
    more.className = "more";
    more.textContent = "⋯";
    more.dataset.focusKey = "more";
    more.setAttribute("aria-label", "Actions");
    more.setAttribute("aria-expanded", String(state.menu === m.id));
    more.setAttribute("aria-controls", "actions-" + m.id);
    more.addEventListener("click", () => (state.menu === m.id ? closeMenu(false) : openMenu(m.id)));
    li.append(more);  // in the top right corner (style.css)
    if (m.reply_to) li.append(quoteNode(m.chat_id, m.reply_to));
    li.append(text);
    const reactions = reactionsNode(m);
    if (reactions) li.append(reactions);
    if (state.menu === m.id) {
      li.classList.add("menu-open");
      li.append(actionsNode(m));
    }
    if (state.highlight.id === m.id) li.classList.add("highlight");
    return li;
  }

  // Reactions as [{emoji, users: [{id, username}]}], in the server's order.
  function reactionsOf(m) {
    let list = m.reactions || [];
    if (!Array.isArray(list)) list = Object.entries(list).map(([emoji, users]) => ({ emoji, users }));
    return list.map((r) => ({
      emoji: r.emoji,
      users: (r.users || r.user_ids || []).map((u) => {
        if (typeof u === "number") return { id: u, username: nameOf(u) };
        const id = u.user_id !== undefined ? u.user_id : u.id;
        return { id, username: u.username || nameOf(id) };
      }),
    })).filter((r) => r.users.length);
  }

  function reactedByMe(reaction) {
    return Boolean(state.me && reaction.users.some((u) => u.id === state.me.id));
  }

  function names(users) {
    const list = users.map((u) => (state.me && u.id === state.me.id ? "you" : u.username));
    return list.length > 1 ? list.slice(0, -1).join(", ") + " and " + list[list.length - 1] : list.join("");
  }

  // Each emoji with its count; who reacted in its name (and tooltip); a tap adds or
  // removes one's own.
  function reactionsNode(m) {
    const reactions = reactionsOf(m);
    if (!reactions.length) return null;
    const box = document.createElement("div");
    box.className = "reactions";
    for (const r of reactions) {
      const chip = document.createElement("button");
      chip.type = "button";
      chip.className = "reaction";
      chip.dataset.emoji = r.emoji;
      chip.dataset.focusKey = "reaction-" + r.emoji;
      const mine = reactedByMe(r);
      chip.setAttribute("aria-pressed", String(mine));
      chip.title = names(r.users);
      const who = document.createElement("span");
      who.className = "visually-hidden";
      who.textContent = " from " + names(r.users);
      chip.append(r.emoji + " " + r.users.length, who);
      chip.addEventListener("click", () => react(m, r.emoji, !mine));
      box.append(chip);
    }
    return box;
  }

  // The open actions of a message: react, reply, edit, delete, and who reacted with what.
  function actionsNode(m) {
    const box = document.createElement("div");
    box.className = "actions";
    box.id = "actions-" + m.id;
    box.setAttribute("role", "group");
    box.setAttribute("aria-label", "Actions");
    const reactions = reactionsOf(m);
    const mineReacted = new Set(reactions.filter(reactedByMe).map((r) => r.emoji));
    const emojis = document.createElement("div");
    emojis.className = "emojis";
    for (const emoji of EMOJIS) {
      const add = !mineReacted.has(emoji);
      const b = actionButton(emoji, () => { closeMenu(false); react(m, emoji, add); });
      b.className = "emoji";
      b.dataset.focusKey = "emoji-" + emoji;
      b.setAttribute("aria-label", add ? "React with " + emoji : "Take back your " + emoji);
      b.setAttribute("aria-pressed", String(!add));
      emojis.append(b);
    }
    const commands = document.createElement("div");
    commands.className = "commands";
    commands.append(actionButton("Reply", () => { closeMenu(false); setCompose({ mode: "reply", message: m }); }));
    if (state.me && m.owner_id === state.me.id) {
      commands.append(actionButton("Edit", () => { closeMenu(false); setCompose({ mode: "edit", message: m }); }));
    }
    if (canDelete(m)) {
      const remove = actionButton("Delete", () => {
        // Asked once more, in place: a deletion cannot be taken back.
        const sure = document.createElement("span");
        sure.className = "confirm";
        sure.textContent = m.owner_id === (state.me && state.me.id)
          ? "Delete it for everyone?" : "Delete " + (m.username || nameOf(m.owner_id)) + "'s message for everyone?";
        const yes = actionButton("Yes, delete", () => {
          closeMenu(false);
          if (!send({ type: "delete", chat_id: m.chat_id, message_id: m.id })) notConnected("deleted");
        });
        yes.classList.add("danger");
        const no = actionButton("Keep it", () => { closeMenu(true); });
        commands.replaceChildren(sure, yes, no);
        yes.focus();
      });
      remove.dataset.focusKey = "delete";
      commands.append(remove);
    }
    box.append(emojis, commands);
    if (reactions.length) {
      const who = document.createElement("p");
      who.className = "reacted-by";
      who.textContent = reactions.map((r) => r.emoji + " " + names(r.users)).join(" · ");
      box.append(who);
    }
    box.addEventListener("keydown", (event) => {
      if (event.key === "Escape") { event.stopPropagation(); closeMenu(true); }
    });
    return box;
  }

  function actionButton(label, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.dataset.focusKey = label;
    b.addEventListener("click", onClick);
    return b;
  }

  function canDelete(m) {
    if (!state.me) return false;
    if (m.owner_id === state.me.id || state.me.is_admin) return true;
    const chat = state.chats.get(m.chat_id);
    return Boolean(chat && (chat.role === "owner" || chat.owner_id === state.me.id));
  }

  function messageItem(id) {
    return $("messages").querySelector('li.message[data-id="' + id + '"]');
  }

  function openMenu(id) {
    closeMenu(false);
    const li = messageItem(id);
    const m = state.shown.get(id);
    if (!li || !m || m.deleted) return;
    state.menu = id;
    li.classList.add("menu-open");
    const actions = actionsNode(m);
    li.append(actions);
    li.querySelector(".more").setAttribute("aria-expanded", "true");
    actions.scrollIntoView({ block: "nearest" });
    const first = actions.querySelector("button");
    if (first) first.focus({ preventScroll: true });
  }

  function closeMenu(focusBack) {
    const id = state.menu;
    state.menu = null;
    if (id === null) return;
    const li = messageItem(id);
    if (!li) return;
    li.classList.remove("menu-open");
    const actions = li.querySelector(".actions");
    if (actions) actions.remove();
    const more = li.querySelector(".more");
    if (more) {
      more.setAttribute("aria-expanded", "false");
      if (focusBack) more.focus();
    }
  }

  function react(m, emoji, add) {
    const frame = { type: add ? "react" : "unreact", chat_id: m.chat_id, message_id: m.id, emoji };
    if (!send(frame)) notConnected(add ? "added" : "taken back");
  }

  function notConnected(what) {
    showError("chat-error", { message: "Not connected: nothing was " + what + "; try again when the connection is back." });
  }

  // The message a reply answers, quoted above it; a click shows it in the history.
  function quoteNode(chatId, replyTo) {
    const quote = document.createElement("button");
    quote.type = "button";
    quote.className = "quote";
    quote.dataset.replyTo = replyTo;
    quote.title = "Show the original";
    const known = quoted(replyTo);
    if (known) fillQuote(quote, known); else {
      quote.textContent = "↩ …";
      fetchQuote(chatId, replyTo);
    }
    quote.addEventListener("click", () => reveal(replyTo));
    return quote;
  }

  function quoted(id) {
    const m = state.shown.get(id) || state.quotes.get(id);
    return m && !(m instanceof Promise) ? m : null;
  }

  function fillQuote(quote, m) {
    const who = document.createElement("span");
    who.className = "quote-who";
    const what = document.createElement("span");
    what.className = "quote-said";
    if (m.missing) {
      what.textContent = "a message that is not there any more";
    } else {
      who.textContent = (m.username || nameOf(m.owner_id)) + ": ";
      what.textContent = m.deleted ? "a deleted message" : m.text;
    }
    quote.replaceChildren("↩ ", who, what);
  }

  function fetchQuote(chatId, id) {
    if (state.quotes.has(id)) return;
    const asked = api("GET", "/chats/" + chatId + "/messages/" + id)
      .then((m) => {
        state.quotes.set(id, m);
        refreshQuotes(m);
      })
      .catch((err) => {
        if (err.status !== 404) return state.quotes.delete(id);  // asked again next time
        const m = { id, missing: true };
        state.quotes.set(id, m);
        refreshQuotes(m);
      });
    state.quotes.set(id, asked);
  }

  function refreshQuotes(m) {
    for (const quote of document.querySelectorAll('#messages .quote[data-reply-to="' + m.id + '"], #pending .quote[data-reply-to="' + m.id + '"]')) {
      fillQuote(quote, m);
    }
    const c = state.compose;
    if (c && c.message.id === m.id) {
      if (m.deleted) setCompose(null); else { c.message = m; describeCompose(); }
    }
  }

  // A changed message (an `update` frame, or a replay): shown in its place, as it is now.
  function updateMessage(m) {
    if (state.quotes.has(m.id)) state.quotes.set(m.id, m);
    const known = state.shown.get(m.id);
    if (!known || seqOf(m) < seqOf(known)) return;  // not on screen, or an older state
    state.shown.set(m.id, m);
    refreshQuotes(m);
    const old = messageItem(m.id);
    if (!old) return;
    const focus = old.contains(document.activeElement) ? document.activeElement.dataset.focusKey : null;
    if (m.deleted && state.menu === m.id) state.menu = null;
    const node = renderMessage(m);
    if (old.tabIndex === -1) node.tabIndex = -1;
    keepInPlace(() => old.replaceWith(node));
    if (focus !== null) {
      const again = (focus && node.querySelector('[data-focus-key="' + CSS.escape(focus) + '"]')) ||
        node.querySelector(".more") || node;
      if (again.tabIndex < 0 && again === node) node.tabIndex = -1;
      again.focus({ preventScroll: true });
    }
  }

  // Show a message of the open chat: older pages are loaded until it is there; then it is
  // scrolled to the middle of the history, marked for a moment and focused.
  async function reveal(id) {
    const generation = state.generation;
    for (let pages = 0; !state.shown.has(id) && state.hasOlder && state.oldest !== null &&
         id < state.oldest && pages < 200; pages += 1) {
      const loaded = await loadOlder(BIG_PAGE);
      if (generation !== state.generation) return false;
      if (!loaded) break;
    }
    const li = messageItem(id);
    if (!li) {
      showError("chat-error", { message: "That message is not in this chat any more." });
      return false;
    }
    const box = $("history");
    const view = box.getBoundingClientRect();
    const place = li.getBoundingClientRect();
    box.scrollTop += place.top - view.top - Math.max(0, (box.clientHeight - place.height) / 2);
    state.pinned = atBottom();
    if (state.pinned) $("jump").hidden = true;
    li.classList.remove("highlight");
    void li.offsetWidth;  // restart the animation
    li.classList.add("highlight");
    clearTimeout(state.highlight.timer);
    state.highlight = { id, timer: setTimeout(() => {
      const shown = messageItem(id);
      if (shown) shown.classList.remove("highlight");
      state.highlight = { id: null, timer: 0 };
    }, HIGHLIGHT_FOR) };
    li.tabIndex = -1;
    li.focus({ preventScroll: true });
    return true;
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
    li.append(note);
    if (frame.reply_to) li.append(quoteNode(frame.chat_id, frame.reply_to));
    li.append(text);
    if (failed) {
      const retry = document.createElement("button");
      retry.type = "button";
      retry.textContent = "Edit and resend";
      retry.addEventListener("click", () => {
        state.failed.delete(nonce);
        const box = $("composer-text");
        const original = frame.reply_to && state.shown.get(frame.reply_to);
        if (original && !original.deleted && !state.compose) setCompose({ mode: "reply", message: original });
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

  function join(chatId, since) {
    // Every message and change after the newest we have (0: the chat was empty), then live ones.
    if (since === undefined) since = state.cursor.get(chatId) || 0;
    send({ type: "join", chat_id: chatId, since });
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
        noteCursor(frame.chat_id, seqOf(frame));
        stopTyping(frame.chat_id, frame.owner_id);  // their message ends their "typing"
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
      case "update": {
        // A message changed (edited, deleted, reacted to): the frame is the whole message now.
        const m = frame.message || frame;
        noteCursor(m.chat_id, seqOf(m));
        if (m.chat_id === state.current) updateMessage(m);
        return;
      }
      case "typing":
        if (state.me && frame.user_id === state.me.id) return;  // another tab of ours
        startTyping(frame);
        return;
      case "joined":
        // Our cursor was beyond the chat's newest change (a restored server):
        // resume from where the server is, or a reconnect would skip messages.
        // (`last_id` is then the chat's highest seq; the read marker keeps message ids.)
        if (frame.cursor_reset) state.cursor.set(frame.chat_id, frame.last_id);
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
    if (state.compose && state.compose.mode === "edit") return sendEdit();
    if (!text.trim()) {
      showError("chat-error", { message: "Write something first." });
      return;
    }
    if ($("chat-error").dataset.kind !== "offline") showError("chat-error", null);
    const frame = { type: "message", chat_id: state.current, text, nonce: newNonce() };
    if (state.compose && state.compose.mode === "reply") frame.reply_to = state.compose.message.id;
    state.pending.set(frame.nonce, frame);  // sent again after a reconnect until it comes back
    send(frame);
    setCompose(null);
    box.value = "";
    renderPending();
    scrollToBottom();
    updateConnectionNote();
    box.focus();
  }

  // An edit goes out at once or not at all (it is not queued like a new message).
  function sendEdit() {
    const box = $("composer-text");
    const m = state.compose.message;
    if (!box.value.trim()) {
      showError("chat-error", { message: "Write something first (to take the message back, delete it from its actions)." });
      return;
    }
    if (box.value !== m.text) {
      const frame = { type: "edit", chat_id: m.chat_id, message_id: m.id, text: box.value };
      if (!send(frame)) return notConnected("changed");
    }
    showError("chat-error", null);
    setCompose(null);
    box.focus();
  }

  // ---- Replying and editing in the composer ---------------------------------

  function setCompose(compose) {
    const was = state.compose;
    const box = $("composer-text");
    if (was && was.mode === "edit") box.value = was.draft || "";  // what was being written before
    state.compose = compose;
    if (compose && compose.mode === "edit") {
      compose.draft = box.value;
      box.value = compose.message.text;
    }
    describeCompose();
    if (compose) {
      box.focus();
      if (compose.mode === "edit") box.setSelectionRange(box.value.length, box.value.length);
    }
  }

  function describeCompose() {
    const compose = state.compose;
    $("compose-bar").hidden = !compose;
    if (!compose) return;
    const what = $("compose-what");
    const cancel = $("compose-cancel");
    if (compose.mode === "edit") {
      what.textContent = "Editing your message (Enter saves, Escape cancels)";
      cancel.setAttribute("aria-label", "Cancel editing");
    } else {
      const m = compose.message;
      const who = document.createElement("strong");
      who.textContent = m.username || nameOf(m.owner_id);
      const said = document.createElement("span");
      said.className = "quote-said";
      said.textContent = m.text;
      what.replaceChildren("Replying to ", who, ": ", said);
      cancel.setAttribute("aria-label", "Cancel the reply");
    }
  }

  // ---- Typing ----------------------------------------------------------------

  function typed() {
    const chatId = state.current;
    if (!chatId || !$("composer-text").value.trim() || (state.compose && state.compose.mode === "edit")) return;
    const now = Date.now();
    if (now - (state.typingSent.get(chatId) || 0) < TYPING_EVERY) return;
    if (send({ type: "typing", chat_id: chatId })) state.typingSent.set(chatId, now);
  }

  function startTyping(frame) {
    let typists = state.typists.get(frame.chat_id);
    if (!typists) state.typists.set(frame.chat_id, typists = new Map());
    const known = typists.get(frame.user_id);
    if (known) clearTimeout(known.timer);
    const holds = (typeof frame.expires_in === "number" ? frame.expires_in : 5) * 1000;
    typists.set(frame.user_id, {
      username: frame.username || nameOf(frame.user_id),
      timer: setTimeout(() => stopTyping(frame.chat_id, frame.user_id), holds),
    });
    if (frame.chat_id === state.current) renderTyping();
  }

  function stopTyping(chatId, userId) {
    const typists = state.typists.get(chatId);
    const known = typists && typists.get(userId);
    if (!known) return;
    clearTimeout(known.timer);
    typists.delete(userId);
    if (chatId === state.current) renderTyping();
  }

  function renderTyping() {
    const who = [...(state.typists.get(state.current) || new Map()).values()].map((t) => t.username);
    let text = "";
    if (who.length === 1) text = who[0] + " is typing…";
    else if (who.length === 2) text = who[0] + " and " + who[1] + " are typing…";
    else if (who.length > 2) text = who[0] + ", " + who[1] + " and " + (who.length - 2) + " more are typing…";
    $("typing").textContent = text;
  }

  // ---- Search ----------------------------------------------------------------

  const SEARCH_PAGE = 20;

  async function runSearch(more) {
    if (!more) {
      const q = $("search-q").value.trim();
      if (!q) {
        clearSearch();
        showError("search-error", { message: "Type a word to find first." });
        $("search-q").focus();
        return;
      }
      state.search = { q, before: null };
      $("search-results").replaceChildren();
    }
    const search = state.search;
    if (!search) return;
    let answer;
    try {
      answer = await api("GET", "/search?q=" + encodeURIComponent(search.q) + "&limit=" + SEARCH_PAGE +
        (search.before ? "&before=" + search.before : ""));
    } catch (err) {
      if (state.search === search) showError("search-error", err);
      return;
    }
    if (state.search !== search) return;  // another search (or logout) meanwhile
    const found = Array.isArray(answer) ? answer : (answer.results || answer.messages || []);
    showError("search-error", null);
    $("search-box").hidden = false;
    $("search-results").append(...found.map(resultItem));
    if (found.length) search.before = found[found.length - 1].id;
    $("search-more").hidden = found.length < SEARCH_PAGE;
    $("search-none").hidden = $("search-results").children.length > 0;
    if (!more) {
      const first = $("search-results").querySelector("button");
      if (first) first.scrollIntoView({ block: "nearest" });
    }
  }

  function resultItem(m) {
    const li = document.createElement("li");
    const open = actionButton("", () => openResult(m));
    open.className = "result";
    open.dataset.id = m.id;
    const where = document.createElement("span");
    where.className = "result-where";
    const chat = state.chats.get(m.chat_id);
    const date = new Date(m.created_at);
    where.textContent = (chat ? chatLabel(chat) : "chat " + m.chat_id) + " · " + (m.username || nameOf(m.owner_id)) +
      (isNaN(date) ? "" : " · " + date.toLocaleString([], { dateStyle: "medium", timeStyle: "short" }));
    const said = document.createElement("span");
    said.className = "result-text";
    said.append(...marked(m.text, state.search ? state.search.q : ""));
    open.append(where, said);
    li.append(open);
    return li;
  }

  // The text with the words found marked (<mark>): each word of the query at the start of
  // a word of the text, case aside. (The server also folds diacritics: such a match
  // simply shows unmarked.)
  function marked(text, q) {
    const words = q.split(/\s+/).filter(Boolean).map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
    if (!words.length) return [text];
    const found = new RegExp("(?<![\\p{L}\\p{N}])(?:" + words.join("|") + ")", "giu");
    const parts = [];
    let at = 0;
    for (const match of text.matchAll(found)) {
      if (!match[0]) continue;
      parts.push(text.slice(at, match.index));
      const mark = document.createElement("mark");
      mark.textContent = match[0];
      parts.push(mark);
      at = match.index + match[0].length;
    }
    parts.push(text.slice(at));
    return parts;
  }

  // A result opens its chat (unless open) and shows the message there.
  async function openResult(m) {
    if (state.current !== m.chat_id || !state.loaded) {
      await openChat(m.chat_id, false);
    } else {
      showScreen("chat");
    }
    if (state.current === m.chat_id && state.loaded) await reveal(m.id);
  }

  function clearSearch() {
    state.search = null;
    $("search-results").replaceChildren();
    $("search-box").hidden = true;
    $("search-more").hidden = true;
    showError("search-error", null);
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
      } else if (event.key === "Escape" && state.compose) {
        event.preventDefault();
        setCompose(null);
      } else if (event.key === "ArrowUp" && !event.target.value && !state.compose) {
        // Up in an empty box edits one's newest message, as in other chat clients.
        const own = [...$("messages").querySelectorAll("li.message.mine:not(.deleted)")].pop();
        const m = own && state.shown.get(Number(own.dataset.id));
        if (m) {
          event.preventDefault();
          setCompose({ mode: "edit", message: m });
        }
      }
    });
    $("composer-text").addEventListener("input", typed);
    $("compose-cancel").addEventListener("click", () => setCompose(null));
    $("search-form").addEventListener("submit", (event) => {
      event.preventDefault();
      runSearch(false);
    });
    $("search-more").addEventListener("click", () => runSearch(true));
    $("search-close").addEventListener("click", () => {
      clearSearch();
      $("search-q").focus();
    });
    // A click elsewhere closes a message's open actions.
    document.addEventListener("click", (event) => {
      if (state.menu === null) return;
      // The path as dispatched: a button the click replaced is no longer inside its message.
      const open = messageItem(state.menu);
      if (!open || !event.composedPath().includes(open)) closeMenu(false);
    });
    for (const input of document.querySelectorAll("#reg-form input, #login-form input")) {
      // A corrected field loses its mark at once; others keep theirs until the next submit.
      input.addEventListener("input", () => { if (input.getAttribute("aria-invalid")) setFieldError(input, null); });
    }
  }

  document.addEventListener("DOMContentLoaded", start);
})();
