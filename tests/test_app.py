"""The Gradio app: a real server on localhost driven over HTTP with gradio_client, concurrency, bad input."""

from __future__ import annotations

import gc
import json
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from app_server import app_process, running_app
from PIL import Image
from tiny import tiny_model

import dynamite_hf.app.gradio_app
from dynamite_hf import Click, DynamiteModel, DynamitePredictor
from dynamite_hf.app.gradio_app import MAX_SIDE, MIN_SIDE, DynamiteApp, PredictorCache, SessionState

gradio_client = pytest.importorskip("gradio_client")
LOOK = (0.5, 3, False)  # alpha, click radius, masks only


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    tiny_model(num_static_bg_queries=0).save_pretrained(
        folder
    )  # every pixel goes to some instance unless a bg click claims it
    return folder


def write_image(folder, seed: int) -> str:
    image = np.random.default_rng(seed).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    path = folder / f"image_{seed}.png"
    Image.fromarray(image).save(path)
    return str(path)


def expected_label_map(model_dir, image_path, clicks) -> np.ndarray:
    predictor = DynamitePredictor(DynamiteModel.from_pretrained(model_dir))
    predictor.set_image(image_path)
    predictor.set_clicks(clicks)
    return predictor.label_map


def run_session(url, image_path, clicks_spec):
    """Upload, click as specified, export; returns (label map read from the export, status messages)."""
    client = gradio_client.Client(url, verbose=False)
    messages = [client.predict(gradio_client.handle_file(image_path), *LOOK, api_name="/upload")[1]]
    for action, *arguments in clicks_spec:
        if action == "click":
            messages.append(client.predict(*arguments, *LOOK, api_name="/click")[1])
        else:
            messages.append(client.predict(*LOOK, api_name=f"/{action}")[1])
    files, message = client.predict(api_name="/export")
    messages.append(message)
    label_file = next(f for f in files if str(f).endswith("label_map.png"))
    return np.asarray(Image.open(label_file)), messages


def test_a_server_stopped_by_sigterm_removes_its_exports(model_dir, tmp_path) -> None:
    """A Space or container is stopped with SIGTERM: the app's export folder must go with it, not pile up in the
    temporary directory from one restart to the next."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    image_path = write_image(tmp_path, 0)
    extra_env = {"TMPDIR": str(temporary), "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    with app_process(model_dir, extra_env=extra_env) as (url, process):
        run_session(url, image_path, [("click", 10, 15, False)])
        exports = list(temporary.glob("dynamite-exports-*"))
        assert len(exports) == 1 and any(path.name == "coco.json" for path in exports[0].rglob("*"))
    assert process.returncode == 0  # shut down, not killed
    assert list(temporary.iterdir()) == []


def test_session_over_http(model_dir, tmp_path) -> None:
    image_path = write_image(tmp_path, 0)
    spec = [
        ("click", 10, 15, False),  # instance 1
        ("add_instance",),
        ("click", 40, 60, False),  # instance 2
        ("click", 45, 20, False),  # instance 2 again
        ("click", 5, 75, True),  # background
        ("undo",),  # drops the background click
    ]
    with running_app(model_dir) as url:
        label_map, messages = run_session(url, image_path, spec)
    assert "ready" in messages[0] and "Click on instance 1" in messages[1] and "Click on instance 2" in messages[3]
    assert "background" in messages[5] and messages[6] == "Undone." and "Exported" in messages[-1]
    clicks = [Click(0, 10.0, 15.0, 0), Click(1, 40.0, 60.0, 1), Click(1, 45.0, 20.0, 2)]
    assert np.array_equal(label_map, expected_label_map(model_dir, image_path, clicks))


def test_eight_simultaneous_sessions_get_their_own_masks(model_dir, tmp_path) -> None:
    """8 clients at once against a cache of 3 sessions: evictions rebuild from each session's own state."""
    jobs = [(write_image(tmp_path, seed), [("click", 5 + 5 * seed, 10 + 6 * seed, False)]) for seed in range(8)]
    with running_app(model_dir, max_sessions=3) as url, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda job: run_session(url, *job), jobs))
    for (image_path, spec), (label_map, _) in zip(jobs, results, strict=True):
        ((_, row, col, _),) = spec
        assert np.array_equal(label_map, expected_label_map(model_dir, image_path, [Click(0, row, col, 0)]))


def test_bad_input_gives_messages_and_keeps_clicks(model_dir, tmp_path) -> None:
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    text_file = tmp_path / "notes.txt"
    text_file.write_text("a text file")
    with running_app(model_dir) as url:
        client = gradio_client.Client(url, verbose=False)
        assert "before clicking" in client.predict(3, 3, False, *LOOK, api_name="/click")[1]
        assert "Nothing to export" in client.predict(api_name="/export")[1]
        message = client.predict(gradio_client.handle_file(str(not_an_image)), *LOOK, api_name="/upload")[1]
        # Named once, as the user uploaded it: the server's temporary folder stays out of the message.
        assert "'notes.png' is not a readable image" in message and message.count("notes.png") == 1, message
        assert tempfile.gettempdir() not in message, message
        message = client.predict(gradio_client.handle_file(str(text_file)), *LOOK, api_name="/upload")[1]
        assert "'notes.txt' is not a readable image" in message, message
        client.predict(gradio_client.handle_file(write_image(tmp_path, 1)), *LOOK, api_name="/upload")
        client.predict(10, 10, False, *LOOK, api_name="/click")
        assert "outside" in client.predict(500, 10, False, *LOOK, api_name="/click")[1]
        for row, col, name, given in (("abc", 10, "row", "'abc'"), (10, None, "col", "None")):
            message = client.predict(row, col, False, *LOOK, api_name="/click")[1]
            assert f"{name} must be a number" in message and given in message, message
        files, message = client.predict(api_name="/export")  # the earlier click survived the errors
        assert "Exported 1 instance" in message


def test_new_image_and_reset_clear_the_downloads(model_dir, tmp_path) -> None:
    with running_app(model_dir) as url:
        client = gradio_client.Client(url, verbose=False)
        for action in ("/upload", "/reset"):
            client.predict(gradio_client.handle_file(write_image(tmp_path, 1)), *LOOK, api_name="/upload")
            client.predict(10, 10, False, *LOOK, api_name="/click")
            assert client.predict(api_name="/export")[0]
            if action == "/upload":
                outputs = client.predict(gradio_client.handle_file(write_image(tmp_path, 2)), *LOOK, api_name=action)
            else:
                outputs = client.predict(*LOOK, api_name=action)
            assert len(outputs) == 4 and outputs[3] is None, f"{action} left the downloads: {outputs}"


def test_instance_list_is_sent_only_when_it_changes(model_dir, tmp_path) -> None:
    """A click that refines an instance leaves the instance list alone (re-drawing it costs the page time on
    every click); a click that starts an instance, or choosing the next one, sends the new list."""
    skip = {"__type__": "update"}
    with running_app(model_dir) as url:
        client = gradio_client.Client(url, verbose=False)
        client.predict(gradio_client.handle_file(write_image(tmp_path, 1)), *LOOK, api_name="/upload")
        started = client.predict(10, 10, False, *LOOK, api_name="/click")[2]
        assert started["choices"] == [["Instance 1", 0], ["Instance 2 (new)", 1]] and started["value"] == 0
        assert client.predict(12, 14, False, *LOOK, api_name="/click")[2] == skip
        assert client.predict(40, 50, True, *LOOK, api_name="/click")[2] == skip  # a background click
        assert client.predict(*LOOK, api_name="/add_instance")[2]["value"] == 1
        assert client.predict(*LOOK, api_name="/add_instance")[2] == skip  # already on the new instance
        assert client.predict(30, 60, False, *LOOK, api_name="/click")[2]["choices"][-1] == ["Instance 3 (new)", 2]
        assert client.predict(*LOOK, api_name="/undo")[2]["choices"][-1] == ["Instance 2 (new)", 1]


def test_export_counts_every_clicked_instance_and_names_the_empty_ones(tmp_path, monkeypatch) -> None:
    app = DynamiteApp(tiny_model(), "tiny")
    state, _ = app.load(SessionState(), write_image(tmp_path, 0), "s")
    state, _ = app.click(state, 10, 10, False, "s")
    state, _ = app.add_instance(state)
    state, _ = app.click(state, 40, 60, False, "s")
    only_first = np.zeros(state.image.shape[:2], dtype=np.int32)
    only_first[:20, :20] = 1  # instance 2's mask came out empty
    monkeypatch.setattr(app.cache, "label_map", lambda session, state, size=None: only_first)
    files, message = app.export(state, "s")
    assert "Exported 2 instance(s)" in message and "Instance 2 is empty" in message, message
    coco = json.loads(Path(next(f for f in files if f.endswith("coco.json"))).read_text())
    assert [a["instance"] for a in coco["annotations"]] == [0, 1] and coco["annotations"][1]["area"] == 0
    with zipfile.ZipFile(next(f for f in files if f.endswith(".zip"))) as archive:
        assert archive.namelist() == ["instance_000.png", "instance_001.png"]
    assert "Instance 2 is empty" in app.click(state, 45, 62, False, "s")[1]


def test_a_long_running_app_keeps_only_its_newest_exports_and_removes_them_with_itself(tmp_path, monkeypatch) -> None:
    """A server that runs for days must not fill its disk with exports (Gradio serves its own copy of each), and
    an app that goes away takes its folder with it."""
    monkeypatch.setattr(dynamite_hf.app.gradio_app, "MAX_EXPORTS_KEPT", 2)
    app = DynamiteApp(tiny_model(), "tiny")
    state, _ = app.load(SessionState(), write_image(tmp_path, 0), "s")
    state, _ = app.click(state, 10, 10, False, "s")
    exports = [app.export(state, "s")[0] for _ in range(3)]
    folders = [Path(files[0]).parent for files in exports]
    assert len(set(folders)) == 3 and all(folder.parent == app.export_root for folder in folders)
    assert not folders[0].exists()
    assert all(Path(path).is_file() for files in exports[1:] for path in files)  # the newest two, whole
    root = app.export_root
    del app, state
    gc.collect()
    assert not root.exists()


def test_overlay_is_drawn_at_display_size_and_exports_at_the_image_size(tmp_path) -> None:
    """The overlay's longest side is 512-1024 px whatever the image; clicks map back; exports keep full size."""
    model = tiny_model(num_static_bg_queries=0)
    app = DynamiteApp(model, "tiny")
    large = tmp_path / "large.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (600, 1400, 3), dtype=np.uint8)).save(large)
    state, _ = app.load(SessionState(), str(large), "s")
    assert state.display.shape == (439, 1024, 3)
    row, col = state.image_point(219, 512)  # the centre of overlay pixel (219, 512), in the image's pixels
    assert abs(row - 219.5 * 600 / 439) < 1e-9 and abs(col - 512.5 * 1400 / 1024) < 1e-9
    state, _ = app.click(state, row, col, False, "s")
    assert app.render(state, "s", *LOOK).shape == (439, 1024, 3)
    files, _ = app.export(state, "s")
    exported = np.asarray(Image.open(next(f for f in files if f.endswith("label_map.png"))))
    assert np.array_equal(exported, expected_label_map_from(model, state))  # the masks of the image itself
    state, _ = app.load(state, write_image(tmp_path, 0), "s")  # 60x80: enlarged so it can be clicked
    assert state.display.shape == (384, 512, 3) and app.render(state, "s", *LOOK).shape == (384, 512, 3)


def test_images_too_small_to_click_are_refused(tmp_path) -> None:
    app = DynamiteApp(tiny_model(), "tiny")
    for size in ((1, 1), (MIN_SIDE - 1, 200)):
        path = tmp_path / f"small_{size[0]}.png"
        Image.new("RGB", size, (10, 20, 30)).save(path)
        state, message = app.load(SessionState(), str(path), "session")
        assert state.image is None and f"at least {MIN_SIDE} px" in message and f"{size[0]}x{size[1]}" in message


def test_huge_upload_is_downscaled_with_a_notice(tmp_path) -> None:
    app = DynamiteApp(tiny_model(), "tiny")
    path = tmp_path / "huge.png"
    Image.new("RGB", (3 * MAX_SIDE, 1000), (10, 20, 30)).save(path)
    state, message = app.load(SessionState(), str(path), "session")
    assert max(state.image.shape[:2]) == MAX_SIDE and "Downscaled" in message


def test_predictor_cache_is_bounded_and_rebuilds_the_same_result(tmp_path) -> None:
    model = tiny_model()
    app = DynamiteApp(model, "tiny", max_sessions=2)
    states = []
    for seed in range(4):
        state, _ = app.load(SessionState(), write_image(tmp_path, seed), f"s{seed}")
        state, _ = app.click(state, 10, 10, False, f"s{seed}")
        states.append(state)
    assert len(app.cache) == 2  # bounded: the two least recently used sessions were evicted
    first = app.cache.label_map("s0", states[0])  # rebuilt from the session's own state
    assert len(app.cache) == 2
    assert isinstance(app.cache, PredictorCache)
    assert np.array_equal(first, expected_label_map_from(model, states[0]))


def test_predictor_cache_is_bounded_by_bytes_and_keeps_the_session_it_serves(tmp_path) -> None:
    model = tiny_model()
    app = DynamiteApp(model, "tiny", max_sessions=8)
    state, _ = app.load(SessionState(), write_image(tmp_path, 0), "probe")
    one_session = app.cache.nbytes()
    features = app.cache._sessions["probe"].predictor.image_embeddings
    assert one_session > features.nbytes() > features.mask_features.nbytes  # image, features, label maps

    cache = PredictorCache(model, app.processor, max_sessions=8, max_bytes=int(2.5 * one_session))
    states = [app.load(SessionState(), write_image(tmp_path, seed), "probe")[0] for seed in range(4)]
    for seed, state in enumerate(states):
        cache.label_map(f"s{seed}", state, state.display.shape[:2])
    assert list(cache._sessions) == ["s2", "s3"]  # two fit in 2.5 sessions' bytes; the oldest went first
    assert cache.nbytes() <= cache.max_bytes

    alone = PredictorCache(model, app.processor, max_sessions=8, max_bytes=one_session // 2)
    for seed, state in enumerate(states[:2]):
        alone.label_map(f"s{seed}", state, state.display.shape[:2])
    assert list(alone._sessions) == ["s1"]  # over the budget alone, but the session being served stays

    with pytest.raises(ValueError, match="max_cache_mb.*got 0"):
        DynamiteApp(model, "tiny", max_cache_mb=0)


def expected_label_map_from(model, state) -> np.ndarray:
    predictor = DynamitePredictor(model)
    predictor.set_image(state.image)
    predictor.set_clicks(state.clicks)
    return predictor.label_map


def test_remove_instance_in_the_app_renumbers_like_the_predictor(tmp_path) -> None:
    app = DynamiteApp(tiny_model(), "tiny")
    state, _ = app.load(SessionState(), write_image(tmp_path, 0), "s")
    state, _ = app.click(state, 10, 10, False, "s")
    state, _ = app.add_instance(state)
    state, _ = app.click(state, 40, 60, False, "s")
    state, _ = app.add_instance(state)
    state, _ = app.click(state, 30, 20, False, "s")
    state, _ = app.select_instance(state, 1)
    state, message = app.remove_instance(state)
    assert [(c.instance, c.row, c.timestamp) for c in state.clicks] == [(0, 10.0, 0), (1, 30.0, 1)]
    assert "Removed instance 2" in message
    state, _ = app.undo(state)
    assert [c.instance for c in state.clicks] == [0, 1, 2]
