"""The Gradio page over `DynamiteApp` (`annotator.py`): widgets, the page script (`page.js`) and the wiring.

Every action on the page (canvas clicks, buttons, shortcuts, the class and image lists, the view settings) is
queued by the page script and sent through one hidden event, numbered in the order it was made; the server applies
them in that order (`AnnotationSession.turn`). The HTTP endpoints (`/upload`, `/click`, ...) call the same methods
for scripts and `gradio_client`, on the client's session; `/segment` is stateless (an image and its clicks in, a
label-map PNG and COCO JSON out). The page's own two events are callable but kept off the API page
(`api_visibility="undocumented"`).

What protects a public server (`launch`): Gradio's `max_file_size` and queue size, the request guard (`guard.py`:
request sizes, requests per session), per-event concurrency for the stateless call and exports, and sessions that
free their images' features when their page closes and end `closed_session_seconds` later, or after
`session_idle_minutes` without an action, taking Gradio's state of them along.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import json
import os
from pathlib import Path
from typing import Any

import anyio
import gradio as gr
from starlette.middleware import Middleware

from .. import export
from ..models.dynamite.modeling_dynamite import DynamiteModel
from ..models.dynamite.processing_dynamite import DynamiteProcessor
from ..predictor import load_processor
from .annotator import LOOK_RANGES, DynamiteApp
from .guard import RequestGuard
from .limits import AppLimits
from .session import AnnotationSession
from .uploads import limit_decoder_pixels

HERE = Path(__file__).resolve().parent
EXAMPLES = [
    ("coffee.jpg", "Coffee cup (CC0)"),
    ("cat.jpg", "Cat (CC0)"),
    ("astronaut.jpg", "Astronaut (public domain)"),
    ("coins.jpg", "Coins (no known copyright)"),
]
# Gradio's cache of uploads and served files (every overlay is a file): checked every 10 minutes, files older than an
# hour deleted, so a visitor clicking in a tight loop (a few hundred KB a click) cannot fill the disk.
GRADIO_DELETE_CACHE = (600, 3600)
# At most this many stateless calls, and exports, run at once (the others wait in Gradio's queue): each holds an
# image's features and masks while it runs.
HEAVY_EVENT_CONCURRENCY = 2
SHORTCUTS = (
    ("N", "new instance"),
    ("B", "background clicks on / off"),
    ("Z", "undo (also Ctrl+Z)"),
    ("Delete", "remove the selected instance"),
    ("→ / ←", "next / previous image"),
    ("wheel or + / −", "zoom"),
    ("drag", "pan"),
    ("0", "fit the image"),
)


def page_css() -> str:
    """The page's style: the zoomable canvas and a colour swatch before each instance, in the overlay's colours."""
    swatches = "\n".join(
        f"#instance label:nth-of-type({len(export.INSTANCE_COLORS)}n+{k + 1}) span::before "
        f"{{ background: rgb{tuple(int(v) for v in color)}; }}"
        for k, color in enumerate(export.INSTANCE_COLORS)
    )
    return (HERE / "page.css").read_text() + swatches


def launch(demo: gr.Blocks, limits: AppLimits | None = None, **kwargs: Any) -> None:
    """Start `demo` with the page's script and style, held to `limits` (default: `AppLimits()`; `kwargs`:
    `gr.Blocks.launch`'s). Sets Pillow's pixel limit for the process (`uploads.limit_decoder_pixels`)."""
    limits = limits if limits is not None else AppLimits()
    head = f"<script>{(HERE / 'page.js').read_text()}</script>"
    limit_decoder_pixels(limits.max_megapixels)
    # The computations are scheduled by the app's lanes (`scheduler.py`), so Gradio may run every session's event at
    # once (up to its thread pool); a bounded queue, and the guard's requests per session, keep it from growing.
    demo.queue(default_concurrency_limit=None, max_size=limits.max_queue)

    def pending(session_hash: str) -> int:
        return len(demo._queue.pending_event_ids_session.get(session_hash, ()))

    guard = Middleware(RequestGuard, limits=limits, pending=pending)
    demo.launch(
        head=head,
        css=page_css(),
        max_file_size=limits.max_upload_mb * 2**20,
        app_kwargs={"middleware": [guard]},
        **kwargs,
    )


def load_app_model(model: str | None) -> tuple[DynamiteModel, DynamiteProcessor, str]:
    """The model and processor named by `model`, else `$DYNAMITE_MODEL`, else the bundled default, else a labelled
    fallback; and the model's label for the page."""
    from ..models.dynamite.configuration_dynamite import DynamiteConfig
    from ..models.dynamite.image_processing_dynamite import DynamiteImageProcessor
    from ..training.imagenet import load_imagenet_backbone

    name = model or os.environ.get("DYNAMITE_MODEL")
    bundled = Path(__file__).resolve().parents[2] / "models" / "dynamite-mobilenet-v2"
    if name or (bundled / "config.json").is_file():
        source = name or bundled
        return DynamiteModel.from_pretrained(source), load_processor(source), name or f"bundled {bundled.name}"
    label = "FALLBACK: CPU preset with an untrained head (no trained model bundled yet): masks are not meaningful"
    fallback = DynamiteModel(DynamiteConfig.from_preset("mobilenet_v2"))
    try:
        load_imagenet_backbone(fallback)
    except FileNotFoundError:  # the ImageNet weights package is not installed
        label += " (and a random backbone)"
    return fallback, DynamiteProcessor(DynamiteImageProcessor.from_preset("mobilenet_v2")), label


def _snapshot(session: AnnotationSession) -> dict[str, Any]:
    """What each output shows, to send only the outputs an action changed (re-drawing the instance list, say,
    costs the page time on every click)."""
    image = session.image
    key = image.key if image else ""
    look = (session.look.alpha, session.look.radius, session.look.masks_only)
    selected = image.selected if image else 0
    return {
        "canvas": (key, image.annotation.clicks if image else (), selected, look),
        "annotations": tuple(i.annotation for i in session.images),
        "instances": (key, image.annotation.classes if image else (), selected, session.new_class),
        "classes": (tuple(session.classes), _class_value(session)),
        "images": (tuple((i.name, i.num_instances) for i in session.images), session.current),
        "key": key,
    }


def _class_value(session: AnnotationSession) -> str:
    image = session.image
    if image is None or image.selected >= image.num_instances:
        return session.new_class
    return image.annotation.classes[image.selected]


def _instance_choices(session: AnnotationSession) -> dict[str, Any]:
    image = session.image
    classes = image.annotation.classes if image else ()
    choices = [(f"Instance {k + 1} · {name}", k) for k, name in enumerate(classes)]
    choices.append((f"Instance {len(classes) + 1} (new) · {session.new_class}", len(classes)))
    return gr.update(choices=choices, value=min(image.selected, len(classes)) if image else 0)


def _image_choices(session: AnnotationSession) -> dict[str, Any]:
    choices = [
        (f"{index + 1}. {image.name} ({image.num_instances} instance{'' if image.num_instances == 1 else 's'})", index)
        for index, image in enumerate(session.images)
    ]
    return gr.update(choices=choices, value=session.current if choices else None)


def _status(messages: list[str]) -> str:
    """The last action's message, after every refusal among the earlier ones (none goes unsaid)."""
    messages = [m for m in messages if m]
    if not messages:
        return ""
    return " ".join([*(m for m in messages[:-1] if m.startswith("⚠️")), messages[-1]])


# A public demo runs for days. Set for the app's process unless the operator set them (read when the queue is made
# and when the first oneDNN product runs):
# - Gradio recomputes a pandas summary of its last 10,000 events after every event (for its monitoring page): tens
#   of ms of CPU per event on a busy demo, at normal priority beside the clicks, and memory that stays. Every 1,000
#   events over the last 1,000 keeps that page at a small fraction of the cost.
# - oneDNN's primitive cache and ideep's (1,024 entries each by default) keep memory for every product shape; a
#   click's shapes change with its number of queries, so a long-running app fills them (about 0.4 GB after ten
#   minutes of the abuse benchmark), up to about 1 MB per entry at the limits. A click uses about 12 entries (6 of
#   them per number of queries), four sessions clicking at once about 30: 32 entries hold that.
SERVER_ENVIRONMENT = {
    "GRADIO_ANALYTICS_CACHE_FREQUENCY": "1000",
    "GRADIO_ANALYTICS_MAX_EVENTS": "1000",
    "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "32",
    "LRU_CACHE_CAPACITY": "32",
}


def build_demo(app: DynamiteApp) -> gr.Blocks:
    """The Gradio Blocks page over `app` (start it with `launch`, which adds the page script and style)."""
    for name, value in SERVER_ENVIRONMENT.items():
        os.environ.setdefault(name, value)

    def view(session, messages, before, files=None, look_sent=False, instances_sent=False):
        """The outputs after an action (`before`: `_snapshot` from before it, None to send everything;
        `instances_sent`: send the instance list even if unchanged, to undo a refused choice in the page)."""
        after = _snapshot(session)

        def changed(part):
            return before is None or before[part] != after[part] or (part == "instances" and instances_sent)

        image = gr.skip()
        if changed("canvas"):
            try:
                image = app.render(session)
            except Exception as error:  # never a traceback in the UI; the session is kept
                image, messages = gr.skip(), [*messages, f"⚠️ The overlay could not be drawn ({error})."]
        downloads = files if files else (None if before is not None and changed("annotations") else gr.skip())
        classes = gr.update(choices=session.classes, value=_class_value(session)) if changed("classes") else gr.skip()
        look = session.look
        looks = [gr.update(value=v) if look_sent else gr.skip() for v in (look.alpha, look.radius, look.masks_only)]
        outputs = [
            session,
            image,
            _status(messages) or gr.skip(),
            _instance_choices(session) if changed("instances") else gr.skip(),
            downloads,
            classes,
            _image_choices(session) if changed("images") else gr.skip(),
            after["key"] if changed("key") else gr.skip(),
            *looks,
        ]
        return outputs

    def on_apply(request: gr.Request, session: AnnotationSession, actions: str):
        """The page's queued actions (JSON from `page.js`), applied in the order they were made."""
        app.remember(request.session_hash, session)
        try:
            batch = [action for action in json.loads(actions) if isinstance(action, dict)] if actions else []
        except (TypeError, ValueError):
            batch = []
        if not batch:
            return [gr.skip()] * len(outputs)
        sequences = [a["seq"] for a in batch if isinstance(a.get("seq"), int)]
        first, last = (min(sequences), max(sequences)) if sequences else (None, None)
        with session.turn(first, last) as warnings:
            before = _snapshot(session)
            messages, files = app.apply(session, batch)
            # A view setting that was clamped or refused is sent back, so its box shows the value in force; others
            # are not (a slider being dragged would jump back to where an earlier answer left it).
            refused = {
                action.get("kind") for action, message in zip(batch, messages, strict=True) if message.startswith("⚠️")
            }
            return view(
                session,
                [*warnings, *messages],
                before,
                files,
                look_sent="look" in refused,
                instances_sent="select_instance" in refused,
            )

    def on_upload(request: gr.Request, session: AnnotationSession, paths, sequence):
        app.remember(request.session_hash, session)
        if not paths:  # the box emptied after the previous upload: nothing to do, but its turn is taken
            with session.turn(_sequence(sequence)):
                return [gr.skip()] * (len(outputs) + 1)
        with session.turn(_sequence(sequence)) as warnings:
            before = _snapshot(session)
            message = app.add_images(session, paths if isinstance(paths, list) else [paths])
            # The box is emptied for the next upload (the images are in the session's list).
            return [*view(session, [*warnings, message], before), None]

    def api(method):
        """An HTTP endpoint: `method(session, *arguments)` -> message, outside the page's numbering."""

        def handler(request: gr.Request, session: AnnotationSession, *arguments):
            app.remember(request.session_hash, session)
            with session.turn(None):
                before = _snapshot(session)
                return view(session, [method(session, *arguments)], before)

        return handler

    def on_api_export(request: gr.Request, session: AnnotationSession):
        app.remember(request.session_hash, session)
        with session.turn(None):
            files, message = app.export(session)
            return files or None, message

    async def on_segment(request: gr.Request, image: str | None, clicks: Any):
        """The stateless call: refusals are Gradio errors (`gradio_client` raises them as `AppError`). A coroutine:
        the work runs in a thread, and Gradio's event loop then schedules `forget_if_stateless`."""
        session_hash = request.session_hash
        try:
            if not image:
                raise gr.Error("image: give an image file (gradio_client: handle_file(path))", print_exception=False)
            segment = functools.partial(app.segment, image, clicks, owner=session_hash, name=Path(image).name)
            return await anyio.to_thread.run_sync(segment)
        except ValueError as error:
            raise gr.Error(str(error), print_exception=False) from None
        finally:
            if session_hash:
                grace = app.limits.closed_session_seconds
                asyncio.get_running_loop().call_later(grace + 1.0, forget_if_stateless, session_hash, grace)

    def forget_if_stateless(session_hash: str, grace: float) -> None:
        """Gradio keeps what it made for a session (about 100 KB here) until 10,000 newer sessions push it out, and
        never expires one that holds no state: a script that makes each stateless call with a new session (a new
        `gradio_client.Client`) would grow the server by that much per call. Dropped once the session has been
        quiet for `grace` seconds, unless it holds a page's state (which ends as the page's session does)."""
        holder = demo.state_holder
        state = holder.session_data.get(session_hash)
        last_used = holder.time_last_used.get(session_hash)
        if state is None or state.state_data:
            return
        if last_used is not None and (datetime.datetime.now() - last_used).total_seconds() < grace:
            return  # used again since: that call's own timer follows
        forget(session_hash)

    async def on_unload(request: gr.Request) -> None:
        # On Gradio's event loop (a coroutine), which then ends the session once its grace period is over, whether
        # or not any request comes meanwhile, and where Gradio reads and expires its sessions' state.
        app.release(request.session_hash)
        asyncio.get_running_loop().call_later(app.limits.closed_session_seconds + 1.0, end_quiet_sessions)

    def end_quiet_sessions() -> None:
        for session_hash in app.end_quiet_sessions():
            forget(session_hash)

    def forget(session_hash: str) -> None:
        """Drop Gradio's bookkeeping of a session the app has ended: Gradio keeps every session's copy of the page's
        config (and its state) until 10,000 newer sessions push it out, hundreds of KB each with this page. On the
        event loop, where Gradio reads and expires that bookkeeping; those objects reference each other, so the
        lanes' next idle check collects them."""
        holder = demo.state_holder  # made when the server starts, before any session
        with holder.lock:
            holder.session_data.pop(session_hash, None)
            holder.time_last_used.pop(session_hash, None)
        app.lanes.memory_freed(cycles=True)

    def end_session(session: AnnotationSession) -> None:
        """Gradio's callback for a session whose state expired (`--session-idle-minutes` without an action, an hour
        after its page closed)."""
        # A function, not the bound method `app.end_session`: Gradio keeps the callback in the page's config and
        # deep-copies that config for every page load (`GET /config`), and a bound method is copied with its
        # object (here the app and its model).
        app.end_session(session)
        if session.session_hash:
            forget(session.session_hash)

    with gr.Blocks(title="DynaMITe: multi-instance interactive segmentation", delete_cache=GRADIO_DELETE_CACHE) as demo:
        state = gr.State(
            AnnotationSession(),
            delete_callback=end_session,
            time_to_live=app.limits.session_idle_minutes * 60,
        )
        gr.Markdown(
            "## DynaMITe: click several objects, get all their masks\n"
            f"Model: **{app.model_label}**. Add images (several at once) or pick an example, click an object, "
            "**Add instance** for the next one, name its **class**; turn on **background clicks** to mark what is "
            "not an object. **Export dataset** gives every image's masks as one COCO dataset."
        )
        with gr.Row():
            with gr.Column(scale=3):
                # JPEG for the display: WebP (the default) takes ~0.4 s to encode a 2-MP overlay, JPEG ~25 ms.
                canvas = gr.Image(
                    label="Click to segment", interactive=False, type="numpy", format="jpeg", elem_id="canvas"
                )
                with gr.Row(equal_height=True):
                    previous_button = gr.Button("◀ Previous", elem_id="previous-image", scale=1, min_width=80)
                    images = gr.Dropdown(
                        label="Image", choices=[], elem_id="images", interactive=True, scale=4, show_label=False
                    )
                    next_button = gr.Button("Next ▶", elem_id="next-image", scale=1, min_width=80)
                status = gr.Markdown("Add images or pick an example.", elem_id="status")
                gr.Markdown(
                    "**Shortcuts:** " + " · ".join(f"<kbd>{key}</kbd> {what}" for key, what in SHORTCUTS),
                    elem_id="shortcuts",
                )
            with gr.Column(scale=1):
                # Any file type: the app answers a non-image with a message (a type filter drops it silently).
                # A fixed height: the widgets below stay where they are while files arrive.
                upload = gr.File(
                    label="Add images", file_count="multiple", type="filepath", height=140, elem_id="upload"
                )
                gr.Examples(
                    examples=[[[str(HERE / "examples" / name)]] for name, _ in EXAMPLES],
                    inputs=upload,
                    example_labels=[label for _, label in EXAMPLES],
                    label="Examples (photos free to use: licences in examples/README.md)",
                )
                # The buttons above the instance list, which grows: they never move under the pointer.
                with gr.Row():
                    add_button = gr.Button("Add instance", elem_id="add-instance")
                    # Read by the page script at each click: a click is a background click if this was ticked.
                    gr.Checkbox(label="Background clicks", value=False, elem_id="background")
                with gr.Row():
                    undo_button = gr.Button("Undo", elem_id="undo")
                    remove_button = gr.Button("Remove instance", elem_id="remove")
                    reset_button = gr.Button("Reset", elem_id="reset")
                class_name = gr.Dropdown(
                    label="Class (of the selected instance, and of new ones)",
                    choices=["object"],
                    value="object",
                    allow_custom_value=True,
                    interactive=True,
                    elem_id="class",
                )
                instance = gr.Radio(
                    label="Instance", choices=[("Instance 1 (new) · object", 0)], value=0, elem_id="instance"
                )
                masks_only = gr.Checkbox(label="Show masks only", value=False, elem_id="masks-only")
                alpha = gr.Slider(*LOOK_RANGES["alpha"], value=0.5, step=0.05, label="Alpha", elem_id="alpha")
                radius = gr.Slider(*LOOK_RANGES["radius"], value=5, step=1, label="Click radius", elem_id="radius")
                export_button = gr.Button("Export dataset", elem_id="export")
                files = gr.File(label="Downloads", file_count="multiple", elem_id="downloads")
        # Filled in by the page script: the queued actions (JSON), the upload's place in their order, the image
        # shown (clicks name the image they were made on).
        actions = gr.Textbox(visible=False)
        sequence = gr.Number(visible=False)
        image_key = gr.Textbox(visible="hidden", elem_id="image-key")
        apply_button = gr.Button(visible="hidden", elem_id="apply")

        outputs = [state, canvas, status, instance, files, class_name, images, image_key, alpha, radius, masks_only]
        page = {"api_visibility": "undocumented", "show_progress": "minimal"}
        apply_button.click(
            on_apply,
            [state, actions],
            outputs,
            js="(session, actions) => [session, window.dynamite.drain()]",
            trigger_mode="always_last",
            api_name="page_actions",
            **page,
        )
        upload.change(
            on_upload,
            [state, upload, sequence],
            [*outputs, upload],
            js="(session, paths, sequence) => [session, paths, window.dynamite.stamp()]",
            trigger_mode="multiple",
            api_name="page_upload",
            **page,
        )

        def push(trigger, action: str, inputs=None) -> None:
            """`trigger` queues `action` (a JS object literal; `value` is the input's value, if any) in the page."""
            argument = "value" if inputs else ""
            trigger(None, inputs, None, js=f"({argument}) => {{ window.dynamite.push({action}); }}", queue=False)

        push(add_button.click, "{kind: 'add_instance'}")
        push(undo_button.click, "{kind: 'undo'}")
        push(remove_button.click, "{kind: 'remove_instance'}")
        push(reset_button.click, "{kind: 'reset'}")
        push(previous_button.click, "{kind: 'previous'}")
        push(next_button.click, "{kind: 'next'}")
        push(export_button.click, "{kind: 'export'}")
        push(instance.input, "{kind: 'select_instance', instance: value}", [instance])
        push(class_name.input, "{kind: 'class', name: value}", [class_name])
        push(images.input, "{kind: 'image', index: value}", [images])
        # The view settings go to the server raw: it clamps or refuses them in words (a slider's own check would
        # put an "Error" badge on every output instead).
        push(alpha.input, "{kind: 'look', alpha: value}", [alpha])
        push(radius.input, "{kind: 'look', radius: value}", [radius])
        push(masks_only.input, "{kind: 'look', masks_only: value}", [masks_only])

        # HTTP endpoints (gradio_client, scripts): the same methods, in the order the requests arrive.
        def endpoint(name: str, method, inputs=()) -> None:
            gr.Button(visible=False).click(
                api(method), [state, *inputs], outputs, api_name=name, show_progress="minimal"
            )

        files_input = gr.File(visible=False, file_count="multiple", type="filepath")
        row_input, col_input, number_input = (
            gr.Number(visible=False),
            gr.Number(visible=False),
            gr.Number(visible=False),
        )
        background_input, text_input = gr.Checkbox(visible=False), gr.Textbox(visible=False)
        endpoint("upload", lambda session, paths: app.add_images(session, paths or []), [files_input])
        endpoint(
            "click",
            lambda session, row, col, bg: app.click(session, row, col, bool(bg)),
            [row_input, col_input, background_input],
        )
        endpoint("add_instance", app.add_instance)
        endpoint("select_instance", app.select_instance, [number_input])
        endpoint("set_class", app.set_class, [text_input])
        endpoint("show_image", app.show_image, [number_input])
        endpoint("undo", app.undo)
        endpoint("remove_instance", app.remove_instance)
        endpoint("reset", app.reset)
        gr.Button(visible=False).click(
            on_api_export,
            [state],
            [files, status],
            api_name="export",
            concurrency_id="export",
            concurrency_limit=HEAVY_EVENT_CONCURRENCY,
        )
        # The stateless call: an image and its clicks in, the label map (PNG) and COCO JSON out; no session used.
        segment_image = gr.File(visible=False, type="filepath", label="image")
        segment_clicks = gr.JSON(visible=False, label="clicks")
        gr.Button(visible=False).click(
            on_segment,
            [segment_image, segment_clicks],
            [gr.File(visible=False, label="label_map"), gr.JSON(visible=False, label="coco")],
            api_name="segment",
            concurrency_id="segment",
            concurrency_limit=HEAVY_EVENT_CONCURRENCY,
            show_progress="hidden",
        )
        demo.unload(on_unload)
    return demo


def _sequence(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
