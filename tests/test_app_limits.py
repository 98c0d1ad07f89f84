"""Issue 42, a public app that survives abuse: every limit over HTTP against a real server started with small limits
(each refusal names its limit and how to change it, and the session keeps what it had), hostile files, the compute
lanes that keep heavy requests from starving clicks, and memory that stays bounded."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from app_server import running_app
from PIL import Image, ImageFile
from test_app import STATUS, export_zip, upload, write_image
from tiny import save_app_model, tiny_model

import dynamite_hf.app.scheduler
from dynamite_hf.app.annotator import DynamiteApp
from dynamite_hf.app.limits import AppLimits
from dynamite_hf.app.scheduler import INTERACTIVE_MAX_INSTANCES, ComputeLanes, UsageLedger
from dynamite_hf.app.session import AnnotationSession
from dynamite_hf.app.uploads import UploadRefused, decode_upload, limit_decoder_pixels

gradio_client = pytest.importorskip("gradio_client")
LIMITS = {
    "--max-instances": 2,
    "--max-clicks": 4,
    "--max-images": 2,
    "--max-upload-mb": 1,
    "--max-request-kb": 8,
    "--max-megapixels": 1,
    "--max-history-kb": 2,
    "--max-pending": 2,
    "--max-requests-per-second": 20,
}


@contextlib.contextmanager
def served_demo(model_dir: Path, limits: AppLimits | None = None):
    """The app over the tiny model, its page served on a free local port: `(app, demo)`, closed afterwards."""
    from dynamite_hf.app.gradio_app import build_demo, launch
    from dynamite_hf.models.dynamite.modeling_dynamite import DynamiteModel

    app = DynamiteApp(DynamiteModel.from_pretrained(model_dir), "tiny", limits=limits)
    demo = build_demo(app)
    launch(demo, server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        yield app, demo
    finally:
        demo.close()


def fresh_interpreter(script: str, environment: dict[str, str] | None = None) -> str:
    """The standard output of `script` run by a new Python interpreter (process-wide state of its own: the allocator,
    thread priorities, native libraries' pools)."""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_app_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def limited(model_dir):
    """An app whose limits are small enough to reach in a few requests."""
    with running_app(model_dir, extra_args=[str(v) for item in LIMITS.items() for v in item]) as url:
        yield url


def client_with_image(url: str, folder: Path, seed: int = 0):
    client = gradio_client.Client(url, verbose=False)
    assert "ready" in upload(client, write_image(folder, seed))[STATUS]
    return client


def assert_names_the_limit(message: str, name: str, value: int) -> None:
    """A refusal in words: the limit's value, its argument and its environment variable."""
    assert str(value) in message, message
    assert f"{AppLimits.flag(name)} or {AppLimits.variable(name)}" in message, message


def png_file(path: Path, size: tuple[int, int], mode: str = "RGB", noise: bool = False) -> Path:
    """A PNG of `size` (width, height): noise (a file as large as its pixels) or one colour (a tiny file)."""
    if noise:
        channels = {"RGB": 3, "L": 1}[mode]
        pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
        Image.fromarray(pixels.squeeze()).save(path)
    else:
        Image.new(mode, size).save(path)
    return path


def join(url: str, session_hash: str, api_name: str, data: list, times: int = 1) -> httpx.Response | list:
    """Join the queue for `api_name` as a page would (`times` times in a row: a list of responses), without reading
    the answer."""
    config = httpx.get(f"{url}config").json()
    fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == api_name)
    body = {"data": data, "fn_index": fn_index, "session_hash": session_hash, "event_data": None, "trigger_id": None}
    with httpx.Client() as http:
        responses = [http.post(f"{url}gradio_api/queue/join", json=body) for _ in range(times)]
    return responses[0] if times == 1 else responses


# -- the limits over HTTP --------------------------------------------------------------------------------------------
def test_instances_per_image_over_http(limited, tmp_path) -> None:
    client = client_with_image(limited, tmp_path)
    client.predict(10, 10, False, api_name="/click")
    client.predict(api_name="/add_instance")
    client.predict(40, 60, False, api_name="/click")
    for refused in (client.predict(api_name="/add_instance"), client.predict(2, api_name="/select_instance")):
        assert refused[STATUS].startswith("⚠️ No new instance: this image has 2 instances"), refused[STATUS]
        assert_names_the_limit(refused[STATUS], "max_instances", 2)
    assert "Click on instance 2" in client.predict(45, 20, False, api_name="/click")[STATUS]  # refines, as selected
    _, coco, _ = export_zip(client)
    assert [a["instance"] for a in coco["annotations"]] == [1, 2]


def test_clicks_per_image_over_http(limited, tmp_path) -> None:
    client = client_with_image(limited, tmp_path)
    for index in range(4):
        assert "Click on" in client.predict(5 + 10 * index, 10, index == 3, api_name="/click")[STATUS]
    refused = client.predict(50, 50, False, api_name="/click")[STATUS]
    assert refused.startswith("⚠️ Click not added: this image has 4 clicks"), refused
    assert_names_the_limit(refused, "max_clicks", 4)
    assert client.predict(api_name="/undo")[STATUS] == "Undone."
    assert "Click on instance 1" in client.predict(50, 50, False, api_name="/click")[STATUS]  # room for one again
    assert "Exported 1 image(s), 1 instance(s)" in export_zip(client)[2]


def test_undo_history_bytes_per_image_over_http(limited, tmp_path) -> None:
    """2 KB of history holds about three steps: undo goes back that far and then says why it stops."""
    client = client_with_image(limited, tmp_path)
    for index in range(4):
        client.predict(5 + 10 * index, 10, False, api_name="/click")
    messages = [client.predict(api_name="/undo")[STATUS] for _ in range(4)]
    assert messages[0] == "Undone." and messages[-1].startswith("Nothing more to undo"), messages
    assert_names_the_limit(messages[-1], "max_history_kb", 2)
    assert "Exported 1 image(s), 1 instance(s)" in export_zip(client)[2]  # what is left of the clicks


def test_images_per_session_over_http(limited, tmp_path) -> None:
    client = gradio_client.Client(limited, verbose=False)
    paths = [write_image(tmp_path, seed, f"photo_{seed}.png") for seed in range(3)]
    message = upload(client, *paths)[STATUS]
    assert message.startswith("Added 2 images.") and "⚠️ 'photo_2.png' was not added" in message, message
    assert_names_the_limit(message, "max_images", 2)
    message = upload(client, write_image(tmp_path, 5, "later.png"))[STATUS]
    assert "'later.png' was not added: this session holds 2 images" in message
    assert "images already here are kept" in message
    client.predict(10, 10, False, api_name="/click")
    assert export_zip(client)[2].startswith("Exported 2 image(s)")


def test_upload_sizes_over_http(limited, tmp_path) -> None:
    """A file over --max-upload-mb is refused by Gradio before it is stored (reworded to name the limit), a request
    with more than a session's worth of files by the guard, both before any decoding; the session goes on."""
    client = client_with_image(limited, tmp_path)
    client.predict(10, 10, False, api_name="/click")
    big = png_file(tmp_path / "big.png", (720, 720), noise=True)
    assert 1 < big.stat().st_size / 2**20 < 2
    with open(big, "rb") as handle:
        response = httpx.post(f"{limited}gradio_api/upload", files={"files": ("big.png", handle)})
    assert response.status_code == 413
    detail = response.json()["detail"]
    assert detail.startswith("File refused: it is larger than 1 MB"), detail
    assert_names_the_limit(detail, "max_upload_mb", 1)
    parts = [png_file(tmp_path / f"part_{k}.png", (500, 560), noise=True) for k in range(3)]  # 0.8 MB each
    response = httpx.post(f"{limited}gradio_api/upload", files=[("files", (p.name, p.read_bytes())) for p in parts])
    assert response.status_code == 413 and "one request may carry at most 2 MB" in response.json()["detail"]
    response = httpx.post(f"{limited}gradio_api/upload", files=[("files", (p.name, p.read_bytes())) for p in parts[:2]])
    assert response.status_code == 200 and len(response.json()) == 2  # within both limits
    assert "Exported 1 image(s), 1 instance(s)" in export_zip(client)[2]


def test_request_size_over_http(limited, tmp_path) -> None:
    """Any other request body over --max-request-kb is refused before Gradio reads it, with or without a declared
    length."""
    client = client_with_image(limited, tmp_path)
    client.predict(10, 10, False, api_name="/click")
    response = join(limited, client.session_hash, "set_class", [None, "x" * 10_000])
    assert response.status_code == 413
    assert_names_the_limit(response.json()["detail"], "max_request_kb", 8)
    body = json.dumps({"data": [None, "x" * 10_000], "fn_index": 0, "session_hash": client.session_hash}).encode()
    streamed = httpx.post(
        f"{limited}gradio_api/queue/join",
        content=(body[i : i + 1000] for i in range(0, len(body), 1000)),  # chunked: no length declared
        headers={"content-type": "application/json"},
    )
    assert streamed.status_code == 413
    assert client.predict("cat", api_name="/set_class")[STATUS].startswith("Instance 1 is now 'cat'")


def test_requests_per_session_over_http(limited) -> None:
    """A session with --max-pending requests waiting or running gets no more into the queue every visitor shares;
    once it has read their answers it may send again."""
    session_hash = uuid.uuid4().hex
    responses = [join(limited, session_hash, "add_instance", [None]) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert_names_the_limit(responses[2].json()["detail"], "max_pending", 2)
    assert join(limited, uuid.uuid4().hex, "add_instance", [None]).status_code == 200  # other sessions go on
    with httpx.stream("GET", f"{limited}gradio_api/queue/data", params={"session_hash": session_hash}) as stream:
        completed = sum('"process_completed"' in line for line in stream.iter_lines())
    assert completed == 2
    assert join(limited, session_hash, "add_instance", [None]).status_code == 200


def test_request_rate_per_session_over_http(limited) -> None:
    """A session sending requests faster than --max-requests-per-second (bursts of twice that) is refused: a tight
    loop of cheap requests would otherwise spend the server's time; other sessions go on."""
    session_hash = uuid.uuid4().hex
    details = [r.json().get("detail", "") for r in join(limited, session_hash, "add_instance", [None], times=50)]
    assert "requests waiting or running" in details[5]  # the queue's share refused first...
    assert details[-1].startswith("Request refused: this session sent more than 20 requests a second"), details[-1]
    assert_names_the_limit(details[-1], "max_requests_per_second", 20)
    assert join(limited, uuid.uuid4().hex, "add_instance", [None]).status_code == 200


def test_a_decompression_bomb_is_refused_by_its_header_over_http(limited, tmp_path) -> None:
    """A tiny file that declares more pixels than --max-megapixels is refused by name before it is decoded."""
    client = client_with_image(limited, tmp_path)
    bomb = png_file(tmp_path / "bomb.png", (1600, 1250))  # 2 megapixels in a few KB
    assert bomb.stat().st_size < 20_000
    message = upload(client, bomb)[STATUS]
    assert message.startswith("⚠️ 'bomb.png' is too large to open here (1600x1250 pixels, 2 megapixels;"), message
    assert_names_the_limit(message, "max_megapixels", 1)
    assert "images already here are kept" in message


def test_the_stateless_call_obeys_the_same_limits(limited, tmp_path) -> None:
    client = gradio_client.Client(limited, verbose=False)
    image = gradio_client.handle_file(write_image(tmp_path, 0))
    refusals = {
        "max_instances": [{"row": 5, "col": 5 + k, "instance": k} for k in range(3)],
        "max_clicks": [{"row": 5, "col": 5 + k, "instance": 0} for k in range(5)],
    }
    for name, clicks in refusals.items():
        with pytest.raises(gradio_client.exceptions.AppError) as error:
            client.predict(image, clicks, api_name="/segment")
        assert_names_the_limit(error.value.message, name, LIMITS[AppLimits.flag(name)])
    with pytest.raises(gradio_client.exceptions.AppError) as error:
        bomb = png_file(tmp_path / "bomb.png", (1600, 1250))
        client.predict(gradio_client.handle_file(str(bomb)), [{"row": 5, "col": 5, "instance": 0}], api_name="/segment")
    assert "'bomb.png' is too large to open here" in error.value.message
    with pytest.raises(ValueError, match="exceeds the maximum file size of 1048576 bytes"):  # gradio_client checks
        big = png_file(tmp_path / "big.png", (720, 720), noise=True)  # the app's max_file_size before sending
        client.predict(gradio_client.handle_file(str(big)), [], api_name="/segment")
    response = join(limited, uuid.uuid4().hex, "segment", [None, [{"row": 1, "col": 1, "instance": 0}] * 400])
    assert response.status_code == 413  # 400 clicks of JSON: over 8 KB
    label_map, coco = client.predict(image, refusals["max_instances"][:2], api_name="/segment")
    assert Image.open(label_map).size == (80, 60) and len(coco["annotations"]) == 2


# -- configuration ---------------------------------------------------------------------------------------------------
def test_limits_come_from_arguments_then_environment_variables_then_defaults(capsys) -> None:
    def parse(argv, environ):
        parser = argparse.ArgumentParser()
        AppLimits.add_arguments(parser, environ)
        return AppLimits.from_arguments(parser.parse_args(argv))

    assert parse([], {}) == AppLimits()
    limits = parse(["--max-clicks", "50"], {"DYNAMITE_MAX_CLICKS": "40", "DYNAMITE_MAX_INSTANCES": "5"})
    assert (limits.max_clicks, limits.max_instances, limits.max_images) == (50, 5, AppLimits().max_images)
    for argv, environ, named in (
        ([], {"DYNAMITE_MAX_IMAGES": "many"}, "--max-images or $DYNAMITE_MAX_IMAGES), got 'many'"),
        (["--max-upload-mb", "0"], {}, "--max-upload-mb or $DYNAMITE_MAX_UPLOAD_MB), got '0'"),
    ):
        with pytest.raises(SystemExit):
            parse(argv, environ)
        assert named in capsys.readouterr().err
    with pytest.raises(ValueError, match="max_clicks must be a positive integer"):
        AppLimits(max_clicks=0)


# -- hostile files, in process ---------------------------------------------------------------------------------------
def test_a_bomb_is_refused_before_any_pixel_is_decoded(tmp_path, monkeypatch) -> None:
    """The refusal comes from the header: decoding is never started. Pillow gets the same limit for the process
    (`limit_decoder_pixels`), so whatever else opens an image refuses a bomb too."""
    bomb = png_file(tmp_path / "bomb.png", (3000, 2000))  # 6 megapixels
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("a bomb was decoded"))
    with pytest.raises(UploadRefused, match=r"6 megapixels; this app opens images up to 5 megapixels"):
        decode_upload(bomb, max_megapixels=5)
    monkeypatch.undo()
    previous = Image.MAX_IMAGE_PIXELS
    try:
        limit_decoder_pixels(2)
        with pytest.raises(Image.DecompressionBombError), Image.open(bomb) as opened:
            opened.load()
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def test_a_bomb_within_the_pixel_limit_is_decoded_at_the_working_size(tmp_path) -> None:
    """A 16-bit PNG of 59 megapixels in 110 KB (within the default 100): decoded, its memory is its own decoded size
    (119 MB) and the working-size image, not float copies of the whole (2 GB before)."""
    bomb = png_file(tmp_path / "scan.png", (9000, 6600), mode="I;16")
    assert bomb.stat().st_size < 200_000
    script = (
        "import resource, sys\n"
        "from dynamite_hf.app.uploads import decode_upload\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "decoded = decode_upload(sys.argv[1])\n"
        "print(decoded.pixels.shape, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(bomb)], capture_output=True, text=True, check=True)
    shape, increase = result.stdout.rsplit(" ", 1)
    assert shape == "(1502, 2048, 3)" and float(increase) < 400, result.stdout


# -- fairness: the compute lanes -------------------------------------------------------------------------------------
def test_a_click_runs_while_a_heavy_computation_holds_the_background_lane() -> None:
    """The interactive lane does not wait for the background one; the background lane's thread (and the threads it
    starts, its OpenMP team) has the lowest CPU priority on Linux."""
    lanes = ComputeLanes()
    started, release = threading.Event(), threading.Event()
    heavy = threading.Thread(
        target=lanes.run, args=("abuser", lambda: started.set() or release.wait(10), True), daemon=True
    )
    heavy.start()
    assert started.wait(5)
    assert lanes.run("visitor", lambda: "click", background=False) == "click"  # while the heavy one still runs
    assert heavy.is_alive()
    release.set()
    heavy.join(5)
    if sys.platform.startswith("linux"):
        assert lanes.background.lowered_priority
        assert os.getpriority(os.PRIO_PROCESS, lanes.background.thread.native_id) == 19
        assert os.sched_getscheduler(lanes.background.thread.native_id) == os.SCHED_IDLE
        assert os.getpriority(os.PRIO_PROCESS, lanes.interactive.thread.native_id) == os.getpriority(os.PRIO_PROCESS, 0)
        assert os.sched_getscheduler(lanes.interactive.thread.native_id) == os.sched_getscheduler(0)
    lanes.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread priorities are per thread on Linux only")
def test_only_the_background_lanes_own_threads_get_its_priority() -> None:
    """OpenCV's workers, which draw every overlay, keep a normal priority although the background lane's work was
    the first to use OpenCV in the process (as an upload's decoding is in the app); the background lane's OpenMP team
    gets the lane's priority. In a fresh interpreter: which thread makes a pool is decided once per process."""
    script = (
        "import os, cv2, numpy as np, torch\n"
        "from dynamite_hf.app.scheduler import ComputeLanes\n"
        "torch.set_num_threads(2)\n"
        "def lowest():\n"
        "    return {int(t) for t in os.listdir('/proc/self/task') if os.sched_getscheduler(int(t)) == os.SCHED_IDLE}\n"
        "lanes = ComputeLanes()\n"
        "image = np.zeros((3000, 4000, 3), np.uint8)\n"
        "lanes.run('upload', lambda: cv2.resize(image, (1000, 750), interpolation=cv2.INTER_AREA), True)\n"
        "assert lowest() == {lanes.background.thread.native_id}, lowest()\n"
        "x = torch.randn(512, 512)\n"
        "lanes.run('features', lambda: x @ x, True)\n"
        "print(len(lowest() - {lanes.background.thread.native_id}))\n"
    )
    assert fresh_interpreter(script).split() == ["1"]  # the team's second thread


def test_the_least_used_session_goes_first_in_a_lane() -> None:
    """A session that has used the lane a lot waits behind one that has not, whatever the order of arrival."""
    lanes = ComputeLanes()
    lanes.ledger.charge("abuser", 30.0)
    busy, release, order = threading.Event(), threading.Event(), []
    blocker = threading.Thread(target=lanes.run, args=("x", lambda: busy.set() or release.wait(10), True))
    blocker.start()
    assert busy.wait(5)
    waiting = []
    for owner in ("abuser", "abuser", "visitor"):  # the visitor arrives last
        waiting.append(threading.Thread(target=lanes.run, args=(owner, lambda o=owner: order.append(o), True)))
        waiting[-1].start()
        while len(lanes.background) < len(waiting):
            time.sleep(0.01)
    release.set()
    for thread in (blocker, *waiting):
        thread.join(5)
    assert order == ["visitor", "abuser", "abuser"]
    ledger = UsageLedger(half_life_s=0.1)
    ledger.charge("a", 8.0)
    time.sleep(0.3)
    assert ledger.usage("a") < 2.0  # halved every 0.1 s
    lanes.close()


def test_the_app_sends_small_previews_to_the_interactive_lane_and_the_rest_to_the_background(tmp_path) -> None:
    app = DynamiteApp(tiny_model(), "tiny", limits=AppLimits(max_instances=20))
    calls = []
    run = app.lanes.run

    def spy(owner, function, background):
        calls.append(background)
        return run(owner, function, background)

    app.lanes.run = spy
    session = AnnotationSession()
    app.add_images(session, [write_image(tmp_path, 0, size=(60, 80))])
    assert calls and all(calls)  # decoding, image features
    calls.clear()
    app.click(session, 10, 10, False)
    assert calls == [False]  # a click's preview on cached features
    for index in range(INTERACTIVE_MAX_INSTANCES):
        app.add_instance(session)
        app.click(session, 2 + 5 * index, 40, False)
    calls.clear()
    app.click(session, 50, 70, False)
    assert session.image.num_instances > INTERACTIVE_MAX_INSTANCES and calls == [True]
    calls.clear()
    app.export(session)
    assert len(calls) == 2 and all(calls)  # the export, and inside it the exact masks (run in place)


def test_the_lanes_return_free_memory_once_idle(monkeypatch) -> None:
    trims = []
    monkeypatch.setattr(dynamite_hf.app.scheduler, "IDLE_TRIM_S", 0.2)
    monkeypatch.setattr(dynamite_hf.app.scheduler, "release_free_memory", lambda: trims.append(time.monotonic()))
    lanes = ComputeLanes()
    lanes.run("a", lambda: None, background=True)
    lanes.run("a", lambda: None, background=False)
    time.sleep(1.0)
    assert len(trims) == 1  # once per idle spell
    lanes.run("a", lambda: None, background=False)
    time.sleep(1.0)
    assert len(trims) == 2
    lanes.close()


def test_a_closed_pages_features_go_back_to_the_os_although_no_computation_follows(tmp_path, monkeypatch) -> None:
    """The features freed when a page closes are returned at the next idle check, not at the end of some later
    computation: the lanes had already gone idle (and returned what was free then) before the page closed."""
    trims = []
    monkeypatch.setattr(dynamite_hf.app.scheduler, "IDLE_TRIM_S", 0.2)
    monkeypatch.setattr(dynamite_hf.app.scheduler, "release_free_memory", lambda: trims.append(time.monotonic()))
    app = DynamiteApp(tiny_model(), "tiny")
    session = AnnotationSession()
    app.remember("page", session)
    app.add_images(session, [write_image(tmp_path, 0, size=(60, 80))])
    time.sleep(1.0)
    assert len(trims) == 1 and len(app.cache) == 1
    app.release("page")
    time.sleep(1.0)
    assert len(app.cache) == 0 and len(trims) == 2


def test_objects_that_reference_each_other_are_collected_when_idle_after_a_session_ends(monkeypatch) -> None:
    """An ended session's state and Gradio's copy of the page reference each other: Python frees them only at its
    next collection of cyclic garbage, which an idle app may not run for hours. The lanes' idle check runs one when
    told such objects were dropped, and only then (it holds the interpreter for about 0.2 s)."""
    import weakref

    monkeypatch.setattr(dynamite_hf.app.scheduler, "IDLE_TRIM_S", 0.2)
    monkeypatch.setattr(dynamite_hf.app.scheduler, "release_free_memory", lambda: None)

    class State:  # stands for a session's state, which refers back to itself
        pass

    def dropped_cycle():
        state = State()
        state.itself = state
        alive = weakref.ref(state)
        del state
        return alive

    lanes = ComputeLanes()
    gc.disable()  # no automatic collection meanwhile: the app's own allocations would trigger one at random
    try:
        lanes.run("a", lambda: None, background=False)
        plain = dropped_cycle()
        lanes.memory_freed()
        time.sleep(1.0)
        assert plain() is not None  # a trim alone collects nothing
        session = dropped_cycle()
        lanes.memory_freed(cycles=True)
        time.sleep(1.0)
        assert session() is None and plain() is None
    finally:
        gc.enable()
        lanes.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_memory_that_worker_threads_used_goes_back_once_released() -> None:
    """After large computations in threads that ran at once (a server's worker threads), `release_free_memory` gives
    their memory back to the OS when the allocator was tuned as the app tunes it (`single_arena`, before any thread
    allocates). With a heap per thread, glibc cannot return the free top of a thread's heap: 40 or 80 MB stayed here
    in ten runs out of ten. A fresh interpreter: which heap a thread uses is decided at its first allocation."""
    script = (
        "import threading, numpy as np\n"
        "from dynamite_hf.inference.runtime import release_free_memory, tune_cpu_allocator\n"
        "tune_cpu_allocator(single_arena=True)\n"
        "def resident_mb():\n"
        "    return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20\n"
        "together = threading.Barrier(4)\n"
        "def work():\n"
        "    together.wait()  # the four threads exist at once\n"
        "    block = np.ones(5 * 2**20)  # 40 MB, written\n"
        "    del block\n"
        "release_free_memory()\n"
        "before = resident_mb()\n"
        "threads = [threading.Thread(target=work) for _ in range(4)]\n"
        "for thread in threads:\n"
        "    thread.start()\n"
        "for thread in threads:\n"
        "    thread.join()\n"
        "release_free_memory()\n"
        "print(resident_mb() - before)\n"
    )
    environment = {key: value for key, value in os.environ.items() if key != "MALLOC_ARENA_MAX"}
    assert float(fresh_interpreter(script, environment)) < 10


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="PyTorch built without MKL")
def test_the_work_buffers_of_matrix_products_go_back_once_released() -> None:
    """MKL keeps the work buffers of PyTorch's matrix products for reuse (about 3 MB per thread for the mask head's
    product here); `release_free_memory` hands them back, so they do not stay in the heap while the app is idle.
    glibc's count of bytes in use, in a fresh interpreter with one thread, its allocator tuned as the app's."""
    script = (
        "import ctypes, torch\n"
        "from dynamite_hf.inference.runtime import release_free_memory, tune_cpu_allocator\n"
        "tune_cpu_allocator(single_arena=True)  # as the app runs\n"
        "class Info(ctypes.Structure):\n"
        "    _fields_ = [(name, ctypes.c_size_t) for name in ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd',\n"
        "                'usmblks', 'fsmblks', 'uordblks', 'fordblks', 'keepcost')]\n"
        "libc = ctypes.CDLL('libc.so.6')\n"
        "libc.mallinfo2.restype = Info\n"
        "torch.set_num_threads(1)\n"
        "embedding, features = torch.randn(1, 40, 128), torch.randn(1, 128, 300 * 400)\n"
        "release_free_memory()\n"
        "before = libc.mallinfo2().uordblks\n"
        "logits = torch.bmm(embedding, features)\n"
        "del logits\n"
        "kept = libc.mallinfo2().uordblks - before\n"
        "release_free_memory()\n"
        "print(kept / 2**20, (libc.mallinfo2().uordblks - before) / 2**20)\n"
    )
    kept, after = (float(value) for value in fresh_interpreter(script).split())
    assert kept > 1 and after < 0.5, (kept, after)


def test_a_lane_keeps_nothing_of_a_finished_computation() -> None:
    """A lane's result (an image's predictor and features) is the caller's alone: dropped by the caller, it is
    freed, not held by the lane's thread until its next job."""
    import weakref

    class Features:  # stands for the tens of MB a computation returns
        pass

    lanes = ComputeLanes()
    for background in (True, False):
        result = lanes.run("a", Features, background=background)
        alive = weakref.ref(result)
        del result
        gc.collect()
        assert alive() is None
    lanes.close()


def test_the_server_bounds_gradios_analytics_and_the_native_caches(monkeypatch) -> None:
    """`build_demo` sets the server's environment unless the operator did: Gradio's per-event pandas summary
    every 1,000 events over the last 1,000 (its default: after every event, over 10,000), oneDNN's and ideep's
    primitive caches at 32 entries; the queue `launch` makes uses them."""
    from dynamite_hf.app.gradio_app import SERVER_ENVIRONMENT, build_demo

    for name in SERVER_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GRADIO_ANALYTICS_MAX_EVENTS", "500")  # the operator's own choice stays
    demo = build_demo(DynamiteApp(tiny_model(), "tiny"))
    assert os.environ["GRADIO_ANALYTICS_MAX_EVENTS"] == "500"
    assert {name: os.environ[name] for name in SERVER_ENVIRONMENT if name != "GRADIO_ANALYTICS_MAX_EVENTS"} == {
        "GRADIO_ANALYTICS_CACHE_FREQUENCY": "1000",
        "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "32",
        "LRU_CACHE_CAPACITY": "32",
    }
    demo.queue()
    assert (demo._queue.ANAYLTICS_CACHE_FREQUENCY, demo._queue.ANALYTICS_MAX_EVENTS) == (1000, 500)


# -- bounded memory --------------------------------------------------------------------------------------------------
def test_a_session_holds_a_bounded_history_and_only_small_things(tmp_path) -> None:
    app = DynamiteApp(tiny_model(), "tiny", limits=AppLimits(max_history_kb=4))
    session = AnnotationSession()
    app.add_images(session, [write_image(tmp_path, 0)])
    app.click(session, 10, 10, False)
    for index in range(2000):  # renaming needs no model run: the cheapest way to grow a history
        app.set_class(session, f"class {index % 7}")
    image = session.image
    assert image.history_nbytes() <= 4 * 1024 and session.nbytes() <= 4 * 1024
    assert 2 < len(image.history) < 40 and image.history_trimmed
    assert image.annotation.classes == (f"class {1999 % 7}",) and image.clicks  # the newest step is whole
    app.show_image(session, 0)
    files, _ = app.export(session)
    assert image.exact is not None and image.exact[1].is_file()  # exact masks on disk, not in the session


def test_a_closed_page_frees_its_images_and_a_dropped_session_its_files(model_dir, tmp_path) -> None:
    """The page's heartbeat ends (a tab closed, `Client.close`): Gradio's unload event frees the session's cached
    features at once. A session Gradio drops without calling back (past its capacity) takes its files with it."""
    with served_demo(model_dir) as (app, demo):
        client = gradio_client.Client(demo.local_url, verbose=False)
        upload(client, write_image(tmp_path, 0))
        client.predict(10, 10, False, api_name="/click")
        (session,) = app._sessions.values()
        key = session.image.key
        assert key in app.cache
        client.close()
        deadline = time.monotonic() + 30
        while key in app.cache and time.monotonic() < deadline:
            time.sleep(0.2)
        assert key not in app.cache
        assert session.image.clicks and session.folder.is_dir()  # its work stays, should the page come back
    dropped = AnnotationSession()
    app.add_images(dropped, [write_image(tmp_path, 1)])
    folder = dropped.folder
    assert folder.is_dir()
    del dropped
    gc.collect()
    assert not folder.exists()


def test_a_closed_pages_session_ends_after_its_grace_period_without_another_request(model_dir, tmp_path) -> None:
    """Once a closed page's grace period is over, its session ends although no request follows (the last visitor of
    the day): its files go, and nothing keeps its state in memory, Gradio's bookkeeping of it included (Gradio keeps
    that until 10,000 newer sessions push it out)."""
    import weakref

    with served_demo(model_dir, AppLimits(closed_session_seconds=1)) as (app, demo):
        client = gradio_client.Client(demo.local_url, verbose=False)
        upload(client, write_image(tmp_path, 0))
        client.predict(10, 10, False, api_name="/click")
        (session,) = app._sessions.values()
        session_hash, folder, alive = session.session_hash, session.folder, weakref.ref(session)
        assert session_hash in demo.state_holder.session_data and folder.is_dir()
        del session
        client.close()
        deadline = time.monotonic() + 30
        while (folder.exists() or session_hash in demo.state_holder.session_data) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not folder.exists()
        assert session_hash not in demo.state_holder.session_data
        gc.collect()
        assert alive() is None


def test_sessions_that_only_made_stateless_calls_leave_nothing_in_gradio(model_dir, tmp_path) -> None:
    """Gradio keeps what it made for every session (about 100 KB with this page) until 10,000 newer sessions push it
    out, and never expires a session that holds no state: a script making each `/segment` call with a new client
    would grow the server by that much per call. Such a session is dropped once it has been quiet for
    `--closed-session-seconds`; a page's session that also called it keeps its state."""
    image = gradio_client.handle_file(str(write_image(tmp_path, 0)))
    clicks = [{"row": 5, "col": 5, "instance": 0}]
    with served_demo(model_dir, AppLimits(closed_session_seconds=1)) as (app, demo):
        scripts = [gradio_client.Client(demo.local_url, verbose=False) for _ in range(3)]
        for script in scripts:
            script.predict(image, clicks, api_name="/segment")
        page = gradio_client.Client(demo.local_url, verbose=False)
        upload(page, write_image(tmp_path, 1))
        page.predict(image, clicks, api_name="/segment")
        hashes = [script.session_hash for script in scripts]
        assert all(session_hash in demo.state_holder.session_data for session_hash in hashes)
        deadline = time.monotonic() + 30
        while any(h in demo.state_holder.session_data for h in hashes) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(session_hash in demo.state_holder.session_data for session_hash in hashes)
        assert page.session_hash in demo.state_holder.session_data
        assert page.predict(10, 10, False, api_name="/click")[STATUS].startswith("Click on instance 1")  # it goes on
        for client in (*scripts, page):
            client.close()


def test_a_session_whose_state_expires_leaves_nothing_in_gradio(model_dir, tmp_path) -> None:
    """A client that never closes its session: Gradio calls the state's delete callback once it has been idle for
    `--session-idle-minutes`; the app ends the session and drops Gradio's bookkeeping of it too."""
    import gradio as gr

    with served_demo(model_dir) as (app, demo):
        client = gradio_client.Client(demo.local_url, verbose=False)
        upload(client, write_image(tmp_path, 0))
        (session,) = app._sessions.values()
        assert session.session_hash in demo.state_holder.session_data
        (state,) = [block for block in demo.blocks.values() if isinstance(block, gr.State)]
        state.delete_callback(session)  # what Gradio's expiry calls, on its event loop
        assert session.session_hash not in demo.state_holder.session_data
        assert not session.folder.exists()
        client.close()


def test_a_closed_pages_files_go_after_a_grace_period_unless_it_comes_back(tmp_path) -> None:
    """Gradio keeps a closed session's state for an hour; its uploads go sooner (a visitor could otherwise fill the
    disk with sessions opened and closed), unless the page acts again (a dropped connection that came back)."""
    app = DynamiteApp(tiny_model(), "tiny", limits=AppLimits(closed_session_seconds=1))
    gone, back = AnnotationSession(), AnnotationSession()
    for session_hash, session in (("gone", gone), ("back", back)):
        app.remember(session_hash, session)
        app.add_images(session, [write_image(tmp_path, 0, f"{session_hash}.png")])
    app.release("gone")
    app.release("back")
    assert gone.folder.is_dir() and back.folder.is_dir()  # within the grace period
    app.remember("back", back)  # it acts again
    assert app.end_quiet_sessions() == [] and gone.folder.is_dir()  # nothing ends before the grace is over
    time.sleep(1.2)
    assert app.end_quiet_sessions() == ["gone"]
    assert not gone.folder.exists() and back.folder.is_dir()
    assert "ready" in app.show_image(back, 0)


def test_a_page_load_copies_nothing_of_the_model(monkeypatch) -> None:
    """Gradio deep-copies the page's config for every page load (`GET /config`): nothing in it may lead to the app's
    model (a bound method of the app as the session state's callback did: every weight copied per page load, at
    the clicks' priority)."""
    import torch
    from fastapi.testclient import TestClient
    from gradio.routes import App

    from dynamite_hf.app.gradio_app import build_demo

    copies = []
    original = torch.nn.Parameter.__deepcopy__
    monkeypatch.setattr(torch.nn.Parameter, "__deepcopy__", lambda self, memo: copies.append(1) or original(self, memo))
    demo = build_demo(DynamiteApp(tiny_model(), "tiny"))
    with TestClient(App.create_app(demo)) as client:
        response = client.get("/config")
    assert response.status_code == 200 and response.json()["components"]
    assert copies == []
