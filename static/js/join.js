/*
 * The learner's side of a class, in the top bar: join with the teacher's code and
 * a display name (the learner token is kept where api.js keeps the server token,
 * so every POST/PUT/DELETE carries it; the server also sets an HttpOnly cookie
 * for reads and event streams), see who you are, leave, and start the
 * assignment the teacher pushed with one click (its URL-hash config, read by
 * state.js's hashToConfig exactly as a shared link is).
 */

import { $, el } from "./dom.js";
import { hashToConfig, toRunRequest } from "./state.js";

export function mountJoin(context) {
  const { api, state, showError, openRun, refreshRunList } = context;
  const box = $("class-box");
  const me = { role: null, learner: null, klass: null };
  window.__kernelscope.classroom = me;

  async function startAssignment(assignment) {
    const { config } = hashToConfig(`#${assignment.hash}`, state.defaults);
    const body = { ...toRunRequest(config, state.presets), name: `assignment: ${assignment.title || "from the teacher"}` };
    try {
      const run = await api.startRun(body);
      await refreshRunList();
      openRun(run.id);
    } catch (error) {
      showError(error.message);
    }
  }

  function renderJoinForm() {
    const code = el("input", { id: "join-code", placeholder: "join code", autocomplete: "off", maxlength: "64" });
    const name = el("input", { id: "join-name", placeholder: "your name", maxlength: "40" });
    const button = el("button", { type: "button", id: "join-button" }, "join class");
    button.addEventListener("click", async () => {
      try {
        const joined = await api.postJSON("/api/classes/join", { code: code.value.trim(), name: name.value });
        api.setToken(joined.token);
        await load();
        await refreshRunList();
      } catch (error) {
        showError(error.message);
      }
    });
    box.replaceChildren(code, name, button);
  }

  function renderLearner() {
    const who = el("span", { id: "class-me" }, `${me.learner.name} · ${me.klass.name}`);
    const leave = el("button", { type: "button", id: "leave-button" }, "leave");
    leave.addEventListener("click", async () => {
      try { await api.deleteJSON("/api/classes/session"); } catch { /* the token may be gone already */ }
      api.setToken(null);
      await load();
      await refreshRunList();
    });
    const parts = [who, leave];
    const assignment = me.klass.assignment;
    if (assignment) {
      const start = el("button", { type: "button", id: "assignment-button", class: "primary" }, "start the assignment");
      start.title = assignment.hash;
      start.addEventListener("click", () => startAssignment(assignment));
      parts.push(el("span", { id: "assignment-title" }, `assignment: ${assignment.title || "(untitled)"}`), start);
    }
    box.replaceChildren(...parts);
  }

  async function load() {
    let answer = await api.getJSON("/api/classes/me");
    if (answer.role !== "learner" && api.hasToken() && !load.restored) {
      // a token kept in this browser but no cookie (a new browser session): reads need the cookie again
      load.restored = true;
      try {
        await api.postJSON("/api/classes/session");
        answer = await api.getJSON("/api/classes/me");
      } catch { /* a token of another server or class: the join form stays */ }
    }
    me.role = answer.role;
    me.learner = answer.learner ?? null;
    me.klass = answer.class ?? null;
    if (me.learner) renderLearner();
    else if (answer.classes_exist) renderJoinForm();
    else box.replaceChildren();  // no class on this server: the page is as it always was
  }

  load().catch((error) => showError(error.message));
  // the teacher may push an assignment at any time
  setInterval(() => { if (!document.hidden && me.learner) load().catch(() => {}); }, 10000);
  return { load };
}
