// The console's script editor, bundled by `make vendor` (esbuild) into static/vendor/codemirror.min.js with the
// pinned CodeMirror 6 packages: Python highlighting, the sandbox's compile errors as one types (a lint source
// that posts the code to the console's check view), and breakpoints set by clicking the gutter.
import { basicSetup } from "codemirror";
import { EditorView, gutter, GutterMarker } from "@codemirror/view";
import { StateField, StateEffect, RangeSet } from "@codemirror/state";
import { python } from "@codemirror/lang-python";
import { linter, lintGutter } from "@codemirror/lint";

const toggle = StateEffect.define({ map: (v, mapping) => ({ pos: mapping.mapPos(v.pos), on: v.on }) });
const marker = new (class extends GutterMarker { toDOM() { const s = document.createElement("span"); s.className = "cm-breakpoint"; s.textContent = "●"; return s; } })();

const breakpoints = StateField.define({
  create() { return RangeSet.empty; },
  update(set, tr) {
    set = set.map(tr.changes);
    for (const e of tr.effects) if (e.is(toggle)) {
      set = e.value.on ? set.update({ add: [marker.range(e.value.pos)] }) : set.update({ filter: (from) => from !== e.value.pos });
    }
    return set;
  },
});

function flip(view, pos) {
  let on = false;
  view.state.field(breakpoints).between(pos, pos, () => { on = true; });
  view.dispatch({ effects: toggle.of({ pos, on: !on }) });
}

const breakpointGutter = [breakpoints, gutter({
  class: "cm-breakpoint-gutter",
  markers: (v) => v.state.field(breakpoints),
  initialSpacer: () => marker,
  domEventHandlers: { mousedown(view, line) { flip(view, line.from); return true; } },
})];

function checker(checkUrl, csrf) {
  return linter(async (view) => {
    const body = new URLSearchParams({ code: view.state.doc.toString() });
    const answer = await fetch(checkUrl, { method: "POST", body, headers: { "X-CSRFToken": csrf }, credentials: "same-origin" });
    if (!answer.ok) return [];
    const { error } = await answer.json();
    if (!error) return [];
    const doc = view.state.doc;
    const line = doc.line(Math.min(Math.max(error.line || 1, 1), doc.lines));
    let from = Math.min(line.from + Math.max((error.column || 1) - 1, 0), line.to);
    if (from === line.to && from > line.from) from -= 1;  // an error past the line's end marks its last character
    return [{ from, to: Math.max(from + 1, line.to), severity: "error", message: error.message }];
  }, { delay: 400 });
}

window.HubschedEditor = {
  // textarea: the form field kept in step (the form posts it); returns { view, breakpoints() -> [line numbers] }
  create(textarea, { checkUrl, csrf }) {
    const view = new EditorView({
      doc: textarea.value,
      extensions: [breakpointGutter, basicSetup, python(), lintGutter(), checker(checkUrl, csrf),
        EditorView.updateListener.of((u) => { if (u.docChanged) textarea.value = u.state.doc.toString(); })],
    });
    textarea.style.display = "none";
    textarea.after(view.dom);
    return {
      view,
      breakpoints() {
        const lines = [];
        view.state.field(breakpoints).between(0, view.state.doc.length, (from) => { lines.push(view.state.doc.lineAt(from).number); });
        return lines;
      },
      toggleLine(number) { flip(view, view.state.doc.line(number).from); },
    };
  },
};
