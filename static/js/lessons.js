/*
 * Guided lessons that ask before they show. A lesson (question, choices, the runs that answer
 * it, what its reveal measures and where it points) is data the server serves from
 * engine/lessons.py through GET /api/lessons; this module only walks it:
 *
 *   question  the learner picks a choice (the start button waits for one);
 *   running   one click sends the lesson's own start request (POST /api/comparisons with the
 *             body the server gave) and opens the run the lesson points at in the live view;
 *   revealed  once every run has ended: the measure of each run, read from the API (snapshot
 *             symmetry, validation accuracy, layer summary, filter explanation), which choice
 *             the measured number supports, and the element that shows it, highlighted.
 *
 * `#lesson=<id>` opens a lesson; `#lesson_steps=N` trains its runs for N steps instead (short
 * runs for a quick look and for the browser tests). While a lesson is on, body[data-lesson]
 * hides the controls it does not need (static/css/explain.css).
 */

import { $, el } from "./dom.js";

const TERMINAL = new Set(["completed", "stopped", "diverged", "failed", "interrupted"]);
const fmt = (v) => (v == null || !Number.isFinite(Number(v)) ? "–" : Number(v).toFixed(3));

/* context: {api, state, debug, openRun, showView, writeHash, showError, explain}. */
export function mountLessons(context) {
  const { api, state, debug } = context;
  const shown = { lessons: null, lesson: null, panel: null, choice: null, runs: null, poll: null, generation: 0 };
  debug.lesson = null;

  async function lessons() {
    if (!shown.lessons) shown.lessons = (await api.getJSON("/api/lessons")).lessons;
    return shown.lessons;
  }

  // ---------------------------------------------------------------- the menu

  async function buildMenu() {
    const menu = el("nav", { class: "lesson-menu", id: "lesson-menu", "aria-label": "guided lessons" });
    menu.append(el("span", {}, "Lessons:"));
    try {
      for (const lesson of await lessons()) {
        const link = el("a", { href: `#lesson=${lesson.id}`, "data-lesson": lesson.id, title: lesson.title }, lesson.id);
        link.addEventListener("click", (event) => { event.preventDefault(); enter(lesson.id); });
        menu.append(link);
      }
    } catch (error) {
      context.showError(`lessons: ${error.message}`);
    }
    document.querySelector(".topbar .brand")?.after(menu);
  }

  // ---------------------------------------------------------------- entering and leaving

  async function enter(id) {
    const all = await lessons();
    const lesson = all.find((l) => l.id === id);
    if (!lesson) {
      context.showError(`lesson: no lesson ${JSON.stringify(id)}; lessons are ${all.map((l) => l.id).join(", ")}`);
      return;
    }
    leave({ keepHash: true });
    shown.generation += 1;
    Object.assign(shown, { lesson, choice: null, runs: null });
    state.view.lesson = id;
    context.writeHash();
    document.body.dataset.lesson = id;
    context.showView("live");
    drawQuestion(lesson);
    debug.lesson = { id, phase: "question", choice: null, runs: null, measured: null };
  }

  function leave({ keepHash = false } = {}) {
    shown.generation += 1;
    if (shown.poll) clearInterval(shown.poll);
    shown.poll = null;
    shown.panel?.remove();
    shown.panel = null;
    shown.lesson = null;
    delete document.body.dataset.lesson;
    for (const node of document.querySelectorAll(".lesson-focus")) node.classList.remove("lesson-focus");
    if (!keepHash) {
      state.view.lesson = null;
      state.view.lessonSteps = null;
      context.writeHash();
      debug.lesson = null;
    }
  }

  // ---------------------------------------------------------------- question

  function drawQuestion(lesson) {
    const panel = el("section", { class: "panel lesson-panel", id: "lesson-panel", "data-lesson": lesson.id });
    const head = el("div", "panel-head");
    head.append(el("h2", {}, `Lesson · ${lesson.title}`));
    const quit = el("button", { type: "button", class: "ghost", id: "lesson-leave" }, "leave lesson");
    quit.addEventListener("click", () => leave());
    head.append(quit);
    panel.append(head, el("p", "lesson-question", lesson.question));
    const choices = el("div", { class: "lesson-choices", role: "radiogroup" });
    const start = el("button", { type: "button", class: "primary", id: "lesson-start", disabled: "" },
      "answer, then start the runs that tell");
    for (const choice of lesson.choices) {
      const input = el("input", { type: "radio", name: "lesson-choice", value: choice.id });
      input.addEventListener("change", () => { shown.choice = choice.id; start.disabled = false; });
      const label = el("label", { "data-choice": choice.id });
      label.append(input, el("span", {}, choice.text));
      choices.append(label);
    }
    const progress = el("div", { class: "lesson-progress", id: "lesson-progress" });
    const row = el("div", "lesson-row");
    row.append(start, progress);
    start.addEventListener("click", () => startRuns(lesson, panel));
    panel.append(choices, row);
    shown.panel = panel;
    const main = document.querySelector("main.main");
    main.insertBefore(panel, main.firstChild);
  }

  // ---------------------------------------------------------------- running

  async function startRuns(lesson, panel) {
    const generation = shown.generation;
    const start = $("lesson-start");
    start.disabled = true;
    for (const input of panel.querySelectorAll("input[name=lesson-choice]")) input.disabled = true;
    const body = structuredClone(lesson.start.body);
    const steps = state.view.lessonSteps;
    if (steps) body.base = { ...body.base, steps, eval_every: Math.min(body.base.eval_every ?? steps, steps) };
    let answer;
    try {
      answer = await api.postJSON(lesson.start.path, body);
    } catch (error) {
      context.showError(`lesson ${lesson.id}: ${error.message}`);
      start.disabled = false;
      return;
    }
    if (generation !== shown.generation) return;
    shown.runs = answer.run_ids.map((id, i) => ({ id, label: answer.labels[i], status: "queued", step: 0, steps: body.base.steps }));
    Object.assign(debug.lesson, { phase: "running", choice: shown.choice, runs: shown.runs.map((r) => r.id) });
    start.textContent = "runs started";
    context.openRun(shown.runs[lesson.point_at.run].id);
    shown.poll = setInterval(() => poll(lesson, generation), 1000);
    poll(lesson, generation);
  }

  async function poll(lesson, generation) {
    if (shown.polling || generation !== shown.generation) return;
    shown.polling = true;
    try {
      for (const run of shown.runs) {
        if (TERMINAL.has(run.status)) continue;
        const got = await api.getRun(run.id);
        Object.assign(run, { status: got.status, step: got.step ?? run.step });
      }
    } catch { /* the next poll tries again */ } finally {
      shown.polling = false;
    }
    if (generation !== shown.generation) return;
    $("lesson-progress").textContent = shown.runs.map((r) => `${r.label}: ${r.status} ${r.step}/${r.steps}`).join(" · ");
    if (shown.runs.every((r) => TERMINAL.has(r.status))) {
      clearInterval(shown.poll);
      shown.poll = null;
      offerReveal(lesson, generation);
    }
  }

  function offerReveal(lesson, generation) {
    if ($("lesson-reveal-button")) return;
    const button = el("button", { type: "button", class: "primary", id: "lesson-reveal-button" }, "reveal the answer");
    button.addEventListener("click", () => { button.disabled = true; reveal(lesson, generation); });
    $("lesson-start").after(button);
  }

  // ---------------------------------------------------------------- reveal

  /* The spec index of the `order`-th conv layer of a run (0 = conv1), from its latest snapshot. */
  async function convIndex(runId, order) {
    const snapshot = await api.getSnapshot(runId, "latest", false);
    const convs = snapshot.layers.filter((l) => l.type === "conv");
    return { index: convs[order].index, snapshot, layer: convs[order] };
  }

  /* Each run's measurement: {value, cells: [column values]} plus the column names. */
  const MEASURES = {
    async symmetry(run, m) {
      const { index, layer } = await convIndex(run.id, m.layer);
      const first = await api.getSnapshot(run.id, 0, false);
      const start = first.layers.find((l) => l.index === index)?.symmetry;
      return { value: layer.symmetry, cells: [fmt(start), fmt(layer.symmetry)] };
    },
    async val_accuracy(run) {
      const points = await api.getMetrics(run.id);
      const last = [...points].reverse().find((p) => p.val_acc != null);
      return { value: last?.val_acc ?? null, cells: [last ? String(last.step) : "–", fmt(last?.val_loss), fmt(last?.val_acc)] };
    },
    async detector_share(run, m) {
      const { index } = await convIndex(run.id, m.layer);
      const s = await api.getLayerSummary(run.id, index);   // every part: the last point is the run's end
      const first = s.points[0], last = s.points[s.points.length - 1];
      return { value: last.detector_share, cells: [fmt(first.detector_share), fmt(last.detector_share), fmt(last.mean_score), fmt(s.score_chance)] };
    },
    async relative_change(run, m) {
      const { index } = await convIndex(run.id, m.layer);
      const r = await api.getJSON(`/api/runs/${encodeURIComponent(run.id)}/snapshots/latest/filters/${index}/${m.filter}`);
      const t = r.trajectory;
      const last = t.relative_change[t.relative_change.length - 1];
      const name = (label) => String(label ?? "–").replace(/_/g, " ");
      return { value: last, cells: [fmt(last), `${name(t.label[0])} ${fmt(t.score[0])}`, `${name(t.label[t.label.length - 1])} ${fmt(t.score[t.score.length - 1])}`] };
    },
  };
  const COLUMNS = {
    symmetry: ["symmetry at step 0", "at the end"],
    val_accuracy: ["step", "validation loss", "validation accuracy"],
    detector_share: ["detector share at step 0", "at the end", "mean score", "chance"],
    relative_change: ["‖W − W₀‖/‖W₀‖", "detector at step 0", "at the end"],
  };

  async function reveal(lesson, generation) {
    const m = lesson.measure;
    const rows = [];
    try {
      for (const run of shown.runs) rows.push({ run, ...(await MEASURES[m.kind](run, m)) });
    } catch (error) {
      context.showError(`lesson ${lesson.id}: ${error.message}`);
      $("lesson-reveal-button").disabled = false;
      return;
    }
    if (generation !== shown.generation) return;
    const value = rows[m.run].value;
    const supported = value == null ? null
      : lesson.choices.find((c) => c.range && value >= c.range[0] && value < c.range[1]) ?? null;
    const picked = lesson.choices.find((c) => c.id === shown.choice);
    const box = el("div", { class: "lesson-reveal", id: "lesson-reveal" });
    box.append(el("p", {}, `Measured in run ${rows[m.run].run.label}: ${m.text} = `));
    box.lastChild.append(el("b", { id: "lesson-measured" }, fmt(value)));
    const table = el("table");
    const head = el("tr");
    head.append(el("th", {}, "run"), ...COLUMNS[m.kind].map((c) => el("th", {}, c)));
    table.append(head);
    for (const row of rows) {
      const tr = el("tr", { "data-run": row.run.id });
      tr.append(el("td", {}, `${row.run.label} (${row.run.status})`), ...row.cells.map((c) => el("td", {}, c)));
      table.append(tr);
    }
    box.append(table);
    const verdict = supported
      ? `This run supports “${supported.text}”. You answered “${picked?.text ?? "–"}”: `
        + (supported.id === picked?.id ? "your prediction holds." : "the run says otherwise.")
      : "The measured value falls outside every choice's range; look at the runs above.";
    box.append(el("p", { class: "lesson-verdict", id: "lesson-verdict" }, verdict));
    box.append(el("p", "lesson-why", lesson.why));
    shown.panel.append(box);
    debug.lesson = { ...debug.lesson, phase: "revealed", measured: { value, supports: supported?.id ?? null, rows: rows.map((r) => r.cells) } };
    await pointAt(lesson, generation);
  }

  /* Open the run the lesson points at and highlight what shows the answer. */
  async function pointAt(lesson, generation) {
    const target = lesson.point_at;
    const run = shown.runs[target.run];
    if (state.view.run !== run.id) context.openRun(run.id);
    for (const node of document.querySelectorAll(".lesson-focus")) node.classList.remove("lesson-focus");
    let focus = null;
    if (target.target === "symmetry" || target.target === "explain") {
      const { index, layer } = await convIndex(run.id, target.layer);
      if (generation !== shown.generation) return;
      if (target.target === "symmetry") {
        focus = await waitFor(`.layer-panel[data-layer="${index}"] .meter`);
      } else {
        const scores = (layer.detectors ?? []).map((d, f) => ({ f: d.filter ?? f, score: d.score }));
        const filter = target.filter === "best" ? scores.reduce((a, b) => (b.score > a.score ? b : a)).f : target.filter;
        focus = await waitFor(`.layer-panel[data-layer="${index}"] .filter-card[data-filter="${filter}"]`);
        context.explain?.open(index, filter);
      }
    } else {
      focus = $(target.target);
    }
    if (!focus || generation !== shown.generation) return;
    focus.classList.add("lesson-focus");
    focus.scrollIntoView({ block: "center", behavior: "smooth" });
    debug.lesson = { ...debug.lesson, focus: focus.id || focus.className };
  }

  function waitFor(selector, timeoutMs = 60_000) {
    return new Promise((resolve) => {
      const started = performance.now();
      const look = () => {
        const node = document.querySelector(selector);
        if (node) resolve(node);
        else if (performance.now() - started > timeoutMs) resolve(null);
        else setTimeout(look, 100);
      };
      look();
    });
  }

  // ---------------------------------------------------------------- wiring

  buildMenu();
  window.addEventListener("hashchange", () => {
    const p = new URLSearchParams(location.hash.replace(/^#/, ""));
    const id = p.get("lesson");
    const steps = Number(p.get("lesson_steps"));
    state.view.lessonSteps = Number.isInteger(steps) && steps > 0 ? steps : state.view.lessonSteps;
    if (id && id !== shown.lesson?.id) enter(id);
  });
  if (state.view.lesson) enter(state.view.lesson);
  return { enter, leave };
}
