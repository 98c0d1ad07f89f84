#!/usr/bin/env python
"""DynaMITe in the browser: click several objects, get all their masks (Gradio; the Hugging Face Spaces entry point).

python app.py                          # bundled model (or a labelled fallback), http://127.0.0.1:7860
python app.py --model path/or/hub-id   # or set DYNAMITE_MODEL
python app.py --max-instances 50       # or set DYNAMITE_MAX_INSTANCES=50: every limit below (docs/app.md "Limits")
"""

from __future__ import annotations

import argparse
import os
import signal

from dynamite_hf.inference.runtime import tune_cpu_allocator

if __name__ == "__main__":
    # Before the imports below start threads: glibc keeps a thread that has already allocated on the heap it had.
    tune_cpu_allocator(single_arena=True)

from dynamite_hf.app.annotator import DynamiteApp  # noqa: E402
from dynamite_hf.app.gradio_app import build_demo, launch, load_app_model  # noqa: E402
from dynamite_hf.app.limits import AppLimits  # noqa: E402
from dynamite_hf.app.session import DEFAULT_MAX_CACHE_MB, DEFAULT_MAX_SESSIONS  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="save_pretrained folder or Hub id (default: $DYNAMITE_MODEL, then bundled)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME"), help="default 127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument(
        "--max-sessions",
        type=int,
        default=int(os.environ.get("DYNAMITE_MAX_SESSIONS", DEFAULT_MAX_SESSIONS)),
        help="images whose features stay cached, about one per session at work (least recently used evicted first)",
    )
    parser.add_argument(
        "--max-cache-mb",
        type=int,
        default=int(os.environ.get("DYNAMITE_MAX_CACHE_MB", DEFAULT_MAX_CACHE_MB)),
        help="megabytes of cached image features across sessions (least recently used evicted first)",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        default=os.environ.get("DYNAMITE_INT8", "") not in ("", "0"),
        help="opt-in int8 FFN layers (faster clicks, slightly different masks: docs/performance.md 'int8'); "
        "or set DYNAMITE_INT8=1",
    )
    AppLimits.add_arguments(parser)
    args = parser.parse_args(argv)
    limits = AppLimits.from_arguments(args)
    tune_cpu_allocator(single_arena=True)
    model, processor, label = load_app_model(args.model)
    if args.int8:
        from dynamite_hf.inference.int8 import quantize_int8

        model, label = quantize_int8(model), f"{label} (int8)"
    demo = build_demo(DynamiteApp(model, label, args.max_sessions, args.max_cache_mb, processor, limits))
    # A stop by SIGTERM (a container or Space being stopped) shuts down as Ctrl+C does: Gradio closes its server
    # and the interpreter exits normally, removing the app's export folder instead of leaving it behind.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    launch(demo, limits, server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
