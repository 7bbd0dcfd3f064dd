"""The labeling app in Gradio: one prompt, its K responses, a ranking built with the mouse or the keyboard.

The ranking interaction is Gradio's own components: one button per response adds it to the ranking, best first
(keys ``a``..``i`` press them; ``=`` makes the next pick tie with the previous one, Backspace undoes, Enter
submits). The ranking is written in a text box as it grows (``B > A = C > D``), by small client-side functions
(Gradio's ``js=`` events), and sent when it is submitted. Everything the model wrote, and everything a labeler
typed, is shown in ``gr.Textbox`` components, which render text, never HTML or Markdown, so a response holding
``<script>`` or ``<img onerror=...>`` is shown as those characters and runs nothing. The only HTML on the page is
the progress bar, built from integers.

Requests carry component values only (which shown response was picked, ratings); the item on a labeler's screen
is kept by the server (:class:`instructgpt.labeling.LabelStore`), and no request names a file.
"""

# no `from __future__ import annotations`: Gradio reads the `gr.Request` annotation of handlers at run time
import string
from typing import Any

from instructgpt.data.formats import prompt_text
from instructgpt.infra.errors import InstructGPTError
from instructgpt.labeling.store import FLAGS, QUALITY_SCALE, LabelingError, LabelStore, check_labeler_id

LETTERS = string.ascii_uppercase
FLAG_LABELS = {
    "fails_instruction": "fails to follow the instruction",
    "inappropriate": "inappropriate content",
    "hallucination": "hallucination",
}

# Keyboard shortcuts: a..i pick a response, `=` ties the next pick, Backspace undoes, Enter submits. Keys typed
# into a text field (the labeler id, a flag reason) are left alone.
KEYBOARD_JS = """
<script>
document.addEventListener("keydown", (event) => {
  const target = event.target;
  const editable = target && (target.isContentEditable ||
    ((target.tagName === "INPUT" || target.tagName === "TEXTAREA") && !target.readOnly && !target.disabled));
  if (editable || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key.toLowerCase();
  const letters = "abcdefghi";
  let id = null;
  if (key.length === 1 && letters.includes(key)) id = "pick-" + letters.indexOf(key);
  else if (key === "=") id = "tie";
  else if (key === "backspace") id = "undo";
  else if (key === "enter") id = "submit";
  const button = id && document.getElementById(id);
  if (button && button.offsetParent !== null) { event.preventDefault(); button.click(); }
});
</script>
"""


def parse_ranking(text: str | None) -> list[list[int]]:
    """``"B > A = C > D"`` (shown letters, best first, ``=`` for a tie) as places of shown positions."""
    text = (text or "").strip()
    if not text:
        return []
    if text.endswith("="):
        raise LabelingError("finish the tie: pick the response that ties with the previous one")
    tiers = []
    for place in text.split(">"):
        letters = [part.strip() for part in place.split("=")]
        if not all(len(x) == 1 and x in LETTERS for x in letters):
            raise LabelingError("the ranking is malformed")
        tiers.append([LETTERS.index(x) for x in letters])
    return tiers


# The ranking is built in the browser, in the ranking box itself ("B > A = "), by these functions: a pick is
# instant and never lost, however fast keys are pressed, and the server only reads the box when it is submitted.
def pick_js(letter: str) -> str:
    return (
        f"(r) => {{ r = r || ''; if (r.split(/[^A-Z]+/).includes('{letter}')) return r; "
        f"if (r === '' || r.endsWith(' = ')) return r + '{letter}'; return r + ' > {letter}'; }}"
    )


TIE_JS = "(r) => (r && !r.endsWith(' = ')) ? r + ' = ' : (r || '')"
UNDO_JS = (
    "(r) => { r = r || ''; if (r.endsWith(' = ')) return r.slice(0, -3); return r.replace(/( [>=] )?[A-Z]$/, ''); }"
)
CLEAR_JS = "() => ''"


def progress_html(progress: dict[str, int]) -> str:
    """A progress bar of done/total; built from integers only, so it holds no text anyone wrote."""
    done, total, mine = int(progress["done"]), int(progress["total"]), int(progress["mine"])
    return (
        f'<div id="progress-text">{done} / {total} done · you ranked {mine}</div>'
        f'<progress id="progress-bar" value="{done}" max="{total}" style="width:100%"></progress>'
    )


def build_app(
    store: LabelStore,
    *,
    rate_metadata: bool = True,
    use_login: bool = False,
    browser_secret: str | None = None,
    title: str = "Rank the responses",
) -> Any:
    """The Gradio Blocks app over ``store``. ``use_login``: the labeler id is the login name (``auth``), not typed.

    ``browser_secret`` encrypts the labeler id the browser keeps (Gradio's ``BrowserState``); the same secret after
    a restart lets a reloaded page continue as the same labeler.
    """
    import gradio as gr

    k_max = store.max_responses
    with gr.Blocks(title="instructgpt label", analytics_enabled=False) as demo:
        labeler_state = gr.State(None)
        saved_id = gr.BrowserState("", storage_key="instructgpt-label-labeler", secret=browser_secret)
        gr.Markdown(
            f"## {title}\nPick the responses from best to worst with the buttons or the keys A, B, C, ... "
            + ("Press = before a pick to tie it with the previous one. " if store.allow_ties else "")
            + "Backspace undoes, Enter submits."
        )
        with gr.Row(visible=not use_login) as login_row:
            name = gr.Textbox(label="Labeler id", placeholder="your name", elem_id="labeler-id", scale=4)
            start = gr.Button("Start", elem_id="start", scale=1)
        with gr.Column(visible=False) as work:
            progress = gr.HTML(elem_id="progress")
            prompt = gr.Textbox(label="Prompt", interactive=False, elem_id="prompt", lines=2)
            columns, texts, picks, qualities, flags = [], [], [], [], []
            with gr.Row():
                for j in range(k_max):
                    with gr.Column(min_width=200) as column:
                        texts.append(
                            gr.Textbox(
                                label=f"Response {LETTERS[j]}", interactive=False, lines=6, elem_id=f"response-{j}"
                            )
                        )
                        picks.append(gr.Button(f"Pick {LETTERS[j]}", elem_id=f"pick-{j}"))
                        qualities.append(
                            gr.Dropdown(
                                choices=[str(q) for q in range(QUALITY_SCALE[0], QUALITY_SCALE[1] + 1)],
                                value=None,
                                label="Overall quality (1-7)",
                                visible=rate_metadata,
                                elem_id=f"quality-{j}",
                            )
                        )
                        flags.append(
                            gr.CheckboxGroup(
                                choices=[(FLAG_LABELS[f], f) for f in FLAGS],
                                label="Problems",
                                visible=rate_metadata,
                                elem_id=f"flags-{j}",
                            )
                        )
                    columns.append(column)
            ranking = gr.Textbox(label="Your ranking, best first", interactive=False, elem_id="ranking")
            with gr.Row():
                tie = gr.Button("= Tie with previous", elem_id="tie", visible=store.allow_ties)
                undo = gr.Button("Undo", elem_id="undo")
                clear = gr.Button("Clear", elem_id="clear")
                submit = gr.Button("Submit ranking", variant="primary", elem_id="submit")
            with gr.Row():
                skip = gr.Button("Skip this prompt", elem_id="skip")
                flag = gr.Button("Flag this prompt", variant="stop", elem_id="flag")
                reason = gr.Textbox(label="Why flag (optional)", elem_id="flag-reason", scale=3)
        status = gr.Textbox(label="Status", interactive=False, elem_id="status")

        screen = [work, login_row, progress, prompt, *columns, *texts, *qualities, *flags, ranking, reason]

        def show(labeler: str | None, message: str = "") -> list[Any]:
            """Updates for every component of ``screen`` plus the status line: the labeler's current item."""
            if labeler is None:
                return [
                    gr.update(visible=False),
                    gr.update(visible=not use_login),
                    *[gr.update()] * (len(screen) - 2),
                    message,
                ]
            item_index = store.current(labeler)
            head = [gr.update(visible=True), gr.update(visible=False), progress_html(store.progress(labeler))]
            if item_index is None:
                return [
                    gr.update(visible=False),
                    gr.update(visible=False),
                    *[gr.update()] * (len(screen) - 2),
                    f"All done, {labeler}: nothing left for you to rank. Thank you!",
                ]
            item = store.items[item_index]
            order = store.display_order(labeler, item_index)
            k = len(order)
            updates = [*head, prompt_text(item.prompt)]
            updates += [gr.update(visible=j < k) for j in range(k_max)]
            updates += [item.responses[order[j]] if j < k else "" for j in range(k_max)]
            updates += [gr.update(value=None) for _ in range(k_max)]
            updates += [gr.update(value=[]) for _ in range(k_max)]
            updates += ["", ""]
            return updates + [message]

        def begin(typed: str, request: gr.Request):
            try:
                labeler = check_labeler_id(request.username if use_login else typed)
            except LabelingError as err:
                return [None, gr.update(), *show(None, str(err))]
            return [labeler, labeler, *show(labeler, f"Labeling as {labeler}.")]

        def on_load(saved: str, request: gr.Request):
            """A reload resumes: the login name, or the id this browser used last.

            With nothing to resume it changes nothing: the page already shows the login row, and a labeler who typed
            an id and pressed Start before this (slow) event came back must not be logged out by it.
            """
            if use_login or saved:
                return begin(saved, request)
            return [gr.update()] * len(outputs)

        outputs = [labeler_state, saved_id, *screen, status]
        start.click(begin, inputs=[name], outputs=outputs)
        name.submit(begin, inputs=[name], outputs=outputs)
        demo.load(on_load, inputs=[saved_id], outputs=outputs)

        for j, button in enumerate(picks):
            button.click(None, inputs=[ranking], outputs=[ranking], js=pick_js(LETTERS[j]))
        tie.click(None, inputs=[ranking], outputs=[ranking], js=TIE_JS)
        undo.click(None, inputs=[ranking], outputs=[ranking], js=UNDO_JS)
        clear.click(None, inputs=[ranking], outputs=[ranking], js=CLEAR_JS)

        def save(labeler, text, *ratings):
            if labeler is None:
                return [labeler, gr.update(), *show(None, "enter a labeler id first")]
            metadata = [
                {"quality": ratings[j], **{f: f in (ratings[k_max + j] or []) for f in FLAGS}} for j in range(k_max)
            ]
            try:
                store.submit(labeler, parse_ranking(text), metadata)
            except InstructGPTError as err:  # a bad ranking, or the disk full: not saved, the item stays
                return [labeler, gr.update(), *[gr.update()] * len(screen), str(err)]
            return [labeler, gr.update(), *show(labeler, "Saved. Next prompt.")]

        submit.click(save, inputs=[labeler_state, ranking, *qualities, *flags], outputs=outputs)

        def pass_on(flagged: bool):
            def handler(labeler, why):
                if labeler is None:
                    return [labeler, gr.update(), *show(None, "enter a labeler id first")]
                try:
                    store.skip(labeler, flag=flagged, reason=why)
                except InstructGPTError as err:
                    return [labeler, gr.update(), *[gr.update()] * len(screen), str(err)]
                return [labeler, gr.update(), *show(labeler, "Flagged. Next prompt." if flagged else "Skipped.")]

            return handler

        skip.click(pass_on(False), inputs=[labeler_state, reason], outputs=outputs)
        flag.click(pass_on(True), inputs=[labeler_state, reason], outputs=outputs)
    return demo
