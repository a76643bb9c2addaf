/*
 * The page's one DOM helper: `$` finds an element by id, `el` makes one.
 * el("div", "panel") sets the class; el("input", {type: "number", min: "1"})
 * sets attributes; a third argument becomes the text. Every module builds its
 * nodes with these, so there is one way to make an element.
 */

export const $ = (id) => document.getElementById(id);

export function el(tag, attributes = {}, text) {
  const node = document.createElement(tag);
  if (typeof attributes === "string") {
    if (attributes) node.className = attributes;
  } else {
    for (const [key, value] of Object.entries(attributes ?? {})) node.setAttribute(key, value);
  }
  if (text != null) node.textContent = text;
  return node;
}

/* Whether `element` is on screen, or within `margin` of it (a hidden view's elements are not),
   kept by an IntersectionObserver: {visible}. `onChange(visible)` hears each change. What is off
   screen need not be drawn or fetched; it is brought up to date when it comes on screen. */
export function watchOnScreen(element, onChange = () => {}, margin = "300px") {
  const watch = { visible: true };   // until the observer's first answer (and without one)
  if (typeof IntersectionObserver === "undefined") return watch;
  new IntersectionObserver((entries) => {
    const visible = entries[entries.length - 1].isIntersecting;
    if (visible === watch.visible) return;
    watch.visible = visible;
    onChange(visible);
  }, { rootMargin: margin }).observe(element);
  return watch;
}

/* A label holding its text and a control: <label>text <input></label>. */
export function labelled(text, control) {
  const node = el("label", {}, text);
  node.append(control);
  return node;
}

/* Set a number input's min/max from a bound GET /api/defaults serves ({min, max, ...}); returns the input. */
export function bounded(input, bound) {
  if (bound?.min != null) input.min = String(bound.min);
  if (bound?.max != null) input.max = String(bound.max);
  return input;
}

/* The banner at the top of the page: a message that goes away after a few seconds. */
export function showError(message) {
  const banner = $("banner");
  banner.textContent = message;
  banner.hidden = false;
  clearTimeout(showError.timer);
  showError.timer = setTimeout(() => { banner.hidden = true; }, 8000);
}

/* Fill a bar's inner element to `fraction` (clamped to 0..1; not a number: empty), kept in its
   data-fraction. Drawn as a scale, not a width: a width change lays out the page again, and a
   bar that follows a training run changes many times a second. */
export function setFill(fill, fraction) {
  const f = Number.isFinite(fraction) ? Math.max(0, Math.min(1, fraction)) : 0;
  fill.dataset.fraction = String(f);
  fill.style.transform = `scaleX(${f})`;
}

/* Set a node's text only when it differs: writing the same text still replaces the node's text
   and makes the browser lay the page out again, and live views write many times a second. */
export function setText(node, text) {
  const value = String(text);
  if (node.textContent !== value) node.textContent = value;
}
