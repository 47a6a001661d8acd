// Keyframe filmstrip on Load Keyframes.
//
// After the node runs, its "kfp_filmstrip" output names a filmstrip the pack keeps on the server
// (route /kfp/filmstrip/<run>): thumbnails of every Nth frame with the hole tinted, keyframes
// outlined, and a scrubber showing any frame at the node's width. Clicking a thumbnail (or the
// button under the scrubber) toggles that frame as a keyframe by rewriting the node's "keyframes"
// widget, so the choice is saved in the workflow and sent in prompts like any widget value.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const NODE = "KFP_LoadKeyframes";
const ROUTE = "/kfp/filmstrip";
const MAX_THUMBS = 12;
const STYLE_ID = "kfp-filmstrip-style";

const CSS = `
.kfp-filmstrip { display: flex; flex-direction: column; gap: 4px; width: 100%; height: 100%;
  font: 11px sans-serif; color: #ddd; box-sizing: border-box; overflow: hidden; }
.kfp-strip { display: flex; gap: 2px; overflow-x: auto; flex: 0 0 auto; }
.kfp-thumb { position: relative; flex: 0 0 auto; cursor: pointer; border: 2px solid transparent;
  border-radius: 3px; line-height: 0; }
.kfp-thumb img { height: 40px; display: block; border-radius: 2px; }
.kfp-thumb span { position: absolute; left: 2px; bottom: 2px; line-height: 1; font-size: 9px;
  background: rgba(0,0,0,.6); padding: 1px 2px; border-radius: 2px; }
.kfp-thumb.kfp-key { border-color: #ffb300; }
.kfp-thumb.kfp-current { outline: 1px solid #4fc3f7; }
.kfp-view { flex: 1 1 auto; min-height: 0; display: flex; justify-content: center; align-items: center;
  background: #111; border-radius: 3px; position: relative; }
.kfp-view img { max-width: 100%; max-height: 100%; object-fit: contain; }
.kfp-view.kfp-key { box-shadow: inset 0 0 0 2px #ffb300; }
.kfp-bar { display: flex; gap: 6px; align-items: center; flex: 0 0 auto; }
.kfp-bar input[type=range] { flex: 1 1 auto; }
.kfp-bar button { font-size: 11px; padding: 1px 6px; cursor: pointer; }
.kfp-msg { padding: 6px; opacity: .8; }
`;

function addStyle() {
  if (document.getElementById(STYLE_ID)) return;
  const style = document.createElement("style");
  style.id = STYLE_ID;
  style.textContent = CSS;
  document.head.appendChild(style);
}

// The grammar of the keyframes widget (pipelines/frames.py parse_keyframes): "0,20,40", ranges
// "0-60:20", negative indices from the end. Returns a Set, or null when the text does not parse.
export function parseKeyframes(text, n) {
  let t = (text ?? "").trim();
  if (t.startsWith("[") && t.endsWith("]")) t = t.slice(1, -1);
  const out = new Set();
  const index = (v) => {
    const i = parseInt(v, 10);
    const j = i < 0 ? i + n : i;
    if (!(j >= 0 && j < n)) throw new Error("out of range");
    return j;
  };
  try {
    for (const raw of t.split(/[,;]/)) {
      const token = raw.trim();
      if (!token) continue;
      const range = /^(-?\d+)\s*-\s*(-?\d+)(?:\s*:\s*(-?\d+))?$/;
      const parts = /^-?\d+$/.test(token) || range.test(token) ? [token] : token.split(/\s+/);
      for (const part of parts) {
        if (/^-?\d+$/.test(part)) {
          out.add(index(part));
          continue;
        }
        const m = range.exec(part);
        if (!m) return null;
        const a = index(m[1]);
        const b = index(m[2]);
        const step = m[3] === undefined ? 1 : parseInt(m[3], 10);
        if (step < 1 || a > b) return null;
        for (let i = a; i <= b; i += step) out.add(i);
      }
    }
  } catch {
    return null;
  }
  return out;
}

export function formatKeyframes(set) {
  return [...set].sort((a, b) => a - b).join(",");
}

function frameUrl(run, frame) {
  return api.apiURL(`${ROUTE}/${run}/${frame}`);
}

class Filmstrip {
  constructor(node) {
    this.node = node;
    this.meta = null;
    this.current = 0;
    this.root = document.createElement("div");
    this.root.className = "kfp-filmstrip";
    this.root.dataset.kfp = "filmstrip";
    this.message("Queue the workflow to see the clip here.");
  }

  widget() {
    return this.node.widgets?.find((w) => w.name === "keyframes");
  }

  keys() {
    const n = this.meta?.num_frames ?? 0;
    const parsed = parseKeyframes(this.widget()?.value ?? "", n);
    return parsed ?? new Set(this.meta?.keyframes ?? []);
  }

  message(text) {
    this.root.replaceChildren();
    const p = document.createElement("div");
    p.className = "kfp-msg";
    p.textContent = text;
    this.root.appendChild(p);
  }

  async show(meta) {
    // Check that the server still has this run (it keeps the last few only).
    try {
      const r = await api.fetchApi(`${ROUTE}/${meta.run}`);
      if (!r.ok) {
        this.meta = null;
        this.message("The clip preview has expired: queue the workflow again.");
        return;
      }
      this.meta = await r.json();
    } catch {
      this.meta = null;
      this.message("The clip preview is not available.");
      return;
    }
    this.current = Math.min(this.current, this.meta.num_frames - 1);
    this.build();
    // Make room for the strip and the scrubbed frame if the node is smaller.
    const need = this.node.computeSize?.();
    if (need && this.node.size[1] < need[1]) this.node.setSize([this.node.size[0], need[1]]);
    this.node.setDirtyCanvas?.(true, true);
  }

  build() {
    const meta = this.meta;
    this.root.replaceChildren();
    const stored = meta.frames;
    const every = Math.max(1, Math.ceil(meta.num_frames / MAX_THUMBS));
    const strip = document.createElement("div");
    strip.className = "kfp-strip";
    this.thumbs = [];
    for (let f = 0; f < meta.num_frames; f += every) {
      const cell = document.createElement("div");
      cell.className = "kfp-thumb";
      cell.dataset.frame = String(f);
      cell.title = `frame ${f}: click to toggle as keyframe`;
      const img = document.createElement("img");
      img.loading = "lazy";
      img.draggable = false;
      img.src = frameUrl(meta.run, f);
      const label = document.createElement("span");
      label.textContent = String(f);
      cell.append(img, label);
      cell.addEventListener("pointerdown", (e) => e.stopPropagation());
      cell.addEventListener("click", (e) => {
        e.stopPropagation();
        this.toggle(f);
        this.scrub(f);
      });
      strip.appendChild(cell);
      this.thumbs.push(cell);
    }
    const view = document.createElement("div");
    view.className = "kfp-view";
    this.view = view;
    this.big = document.createElement("img");
    this.big.draggable = false;
    view.appendChild(this.big);

    const bar = document.createElement("div");
    bar.className = "kfp-bar";
    const range = document.createElement("input");
    range.type = "range";
    range.min = "0";
    range.max = String(meta.num_frames - 1);
    range.step = "1";
    range.value = String(this.current);
    range.addEventListener("pointerdown", (e) => e.stopPropagation());
    range.addEventListener("input", () => this.scrub(parseInt(range.value, 10)));
    this.range = range;
    this.label = document.createElement("span");
    const button = document.createElement("button");
    button.textContent = "toggle keyframe";
    button.addEventListener("pointerdown", (e) => e.stopPropagation());
    button.addEventListener("click", (e) => {
      e.stopPropagation();
      this.toggle(this.current);
    });
    bar.append(range, this.label, button);
    this.root.append(strip, view, bar);
    this.stored = stored;
    this.scrub(this.current);
  }

  scrub(frame) {
    if (!this.meta) return;
    this.current = frame;
    this.range.value = String(frame);
    this.big.src = frameUrl(this.meta.run, frame);
    this.refresh();
  }

  refresh() {
    if (!this.meta) return;
    const keys = this.keys();
    for (const cell of this.thumbs) {
      const f = parseInt(cell.dataset.frame, 10);
      cell.classList.toggle("kfp-key", keys.has(f));
      cell.classList.toggle("kfp-current", f === this.current);
    }
    this.view.classList.toggle("kfp-key", keys.has(this.current));
    this.label.textContent = `${this.current} / ${this.meta.num_frames - 1}${
      keys.has(this.current) ? " (keyframe)" : ""
    }`;
  }

  toggle(frame) {
    const w = this.widget();
    if (!w) return;
    const keys = this.keys();
    if (keys.has(frame)) keys.delete(frame);
    else keys.add(frame);
    w.value = formatKeyframes(keys);
    w.callback?.(w.value, app.canvas, this.node);
    this.node.graph?.setDirtyCanvas?.(true, true);
    app.graph?.change?.();
    this.refresh();
  }
}

app.registerExtension({
  name: "keyframe_propagation.filmstrip",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE) return;
    addStyle();

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      const strip = new Filmstrip(this);
      this.kfpFilmstrip = strip;
      const widget = this.addDOMWidget("filmstrip", "kfp_filmstrip", strip.root, {
        serialize: false,
        hideOnZoom: false,
        getMinHeight: () => (strip.meta ? 220 : 30),
      });
      widget.serialize = false; // not a value: keeps widgets_values and prompts unchanged
      const kw = this.widgets?.find((w) => w.name === "keyframes");
      if (kw) {
        const cb = kw.callback;
        kw.callback = function () {
          const out = cb?.apply(this, arguments);
          strip.refresh();
          return out;
        };
      }
      return r;
    };

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      const r = onExecuted?.apply(this, arguments);
      const meta = output?.kfp_filmstrip?.[0];
      if (meta && this.kfpFilmstrip) this.kfpFilmstrip.show(meta);
      return r;
    };
  },
});
