"""The Gradio app: a real server on localhost driven over HTTP with gradio_client (one server for most tests, a new
client per session), the app's logic in-process, concurrency, bad input, several images, exports."""

from __future__ import annotations

import gc
import io
import json
import re
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from app_server import app_process, running_app
from PIL import Image
from pycocotools import mask as mask_utils
from tiny import save_app_model, tiny_model

import dynamite_hf.app.annotator
import dynamite_hf.app.session
from dynamite_hf import Click, DynamiteModel, DynamitePredictor
from dynamite_hf.app.annotator import DynamiteApp
from dynamite_hf.app.gradio_app import EXAMPLES, HERE
from dynamite_hf.app.session import AnnotationSession, PredictorCache
from dynamite_hf.app.uploads import MAX_MEGAPIXELS, MAX_SIDE, MIN_SIDE, decode_upload, display_size
from dynamite_hf.export import INSTANCE_COLORS, label_palette

gradio_client = pytest.importorskip("gradio_client")
# Outputs of every endpoint but /export (gradio_client leaves out the session state).
CANVAS, STATUS, INSTANCES, DOWNLOADS, CLASS, IMAGES = range(6)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_app_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def server(model_dir):
    with running_app(model_dir) as url:
        yield url


def write_image(folder, seed: int, name: str | None = None, size=(60, 80)) -> str:
    image = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    path = Path(folder) / (name or f"image_{seed}.png")
    Image.fromarray(image).save(path)
    return str(path)


def predictor_label_map(model, image, clicks) -> np.ndarray:
    predictor = DynamitePredictor(model if isinstance(model, DynamiteModel) else DynamiteModel.from_pretrained(model))
    predictor.set_image(image)
    predictor.set_clicks(clicks)
    return predictor.label_map


def upload(client, *paths) -> list:
    return client.predict([gradio_client.handle_file(str(p)) for p in paths], api_name="/upload")


def export_zip(client) -> tuple[zipfile.ZipFile, dict, str]:
    """The exported dataset: the zip, its COCO JSON and the message."""
    files, message = client.predict(api_name="/export")
    archive = zipfile.ZipFile(next(f for f in files if str(f).endswith("dataset.zip")))
    return archive, json.loads(archive.read("coco.json")), message


def png(archive: zipfile.ZipFile, name: str) -> Image.Image:
    return Image.open(io.BytesIO(archive.read(name)))


def run_session(url, image_path, clicks_spec):
    """Upload, click as specified, export; returns (label map read from the export, status messages)."""
    client = gradio_client.Client(url, verbose=False)
    messages = [upload(client, image_path)[STATUS]]
    for action, *arguments in clicks_spec:
        api = "/click" if action == "click" else f"/{action}"
        messages.append(client.predict(*arguments, api_name=api)[STATUS])
    archive, _, message = export_zip(client)
    messages.append(message)
    return np.asarray(png(archive, f"label_maps/{Path(image_path).stem}.png")), messages


@pytest.mark.slow
def test_a_server_stopped_by_sigterm_removes_its_files(model_dir, tmp_path) -> None:
    """A Space or container is stopped with SIGTERM: the app's folder (uploads, exports) must go with it, not pile
    up in the temporary directory from one restart to the next."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    image_path = write_image(tmp_path, 0)
    extra_env = {"TMPDIR": str(temporary), "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    with app_process(model_dir, extra_env=extra_env) as (url, process):
        run_session(url, image_path, [("click", 10, 15, False)])
        folders = list(temporary.glob("dynamite-app-*"))
        assert len(folders) == 1 and any(path.name == "coco.json" for path in folders[0].rglob("*"))
    assert process.returncode == 0  # shut down, not killed
    assert list(temporary.iterdir()) == []


def test_session_over_http(server, model_dir, tmp_path) -> None:
    image_path = write_image(tmp_path, 0)
    spec = [
        ("click", 10, 15, False),  # instance 1
        ("add_instance",),
        ("click", 40, 60, False),  # instance 2
        ("click", 45, 20, False),  # instance 2 again
        ("click", 5, 75, True),  # background
        ("undo",),  # drops the background click
    ]
    label_map, messages = run_session(server, image_path, spec)
    assert "ready" in messages[0] and "Click on instance 1" in messages[1] and "Click on instance 2" in messages[3]
    assert "background" in messages[5] and messages[6] == "Undone." and "Exported" in messages[-1]
    clicks = [Click(0, 10.0, 15.0, 0), Click(1, 40.0, 60.0, 1), Click(1, 45.0, 20.0, 2)]
    assert np.array_equal(label_map, predictor_label_map(model_dir, image_path, clicks))


@pytest.mark.slow
def test_eight_simultaneous_sessions_get_their_own_masks(model_dir, tmp_path) -> None:
    """8 clients at once against a cache of 3 images: evictions rebuild from each session's own state."""
    jobs = [(write_image(tmp_path, seed), [("click", 5 + 5 * seed, 10 + 6 * seed, False)]) for seed in range(8)]
    with running_app(model_dir, max_sessions=3) as url, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda job: run_session(url, *job), jobs))
    for (image_path, spec), (label_map, _) in zip(jobs, results, strict=True):
        ((_, row, col, _),) = spec
        assert np.array_equal(label_map, predictor_label_map(model_dir, image_path, [Click(0, row, col, 0)]))


def test_bad_input_gives_messages_and_keeps_clicks(server, tmp_path) -> None:
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    text_file = tmp_path / "notes.txt"
    text_file.write_text("a text file")
    client = gradio_client.Client(server, verbose=False)
    assert "before clicking" in client.predict(3, 3, False, api_name="/click")[STATUS]
    assert "Nothing to export" in client.predict(api_name="/export")[1]
    message = upload(client, not_an_image)[STATUS]
    # Named once, as the user uploaded it: the server's temporary folder stays out of the message.
    assert "'notes.png' is not a readable image" in message and message.count("notes.png") == 1, message
    assert tempfile.gettempdir() not in message, message
    assert "'notes.txt' is not a readable image" in upload(client, text_file)[STATUS]
    upload(client, write_image(tmp_path, 1))
    client.predict(10, 10, False, api_name="/click")
    assert "outside" in client.predict(500, 10, False, api_name="/click")[STATUS]
    for row, col, name, given in (("abc", 10, "row", "'abc'"), (10, None, "col", "None")):
        message = client.predict(row, col, False, api_name="/click")[STATUS]
        assert f"{name} must be a number" in message and given in message, message
    message = upload(client, text_file)[STATUS]
    assert "'notes.txt' is not a readable image" in message and "images already here are kept" in message
    assert "Exported 1 image(s), 1 instance(s)" in client.predict(api_name="/export")[1]  # the click survived


def test_a_new_image_and_reset_clear_the_downloads(server, tmp_path) -> None:
    """The downloads are the dataset as it was exported: a new image or a changed mask empties the list."""
    client = gradio_client.Client(server, verbose=False)
    upload(client, write_image(tmp_path, 1))
    for action in ("/upload", "/reset"):
        client.predict(10, 10, False, api_name="/click")
        assert client.predict(api_name="/export")[0]
        outputs = upload(client, write_image(tmp_path, 2)) if action == "/upload" else client.predict(api_name=action)
        assert outputs[DOWNLOADS] is None, f"{action} left the downloads: {outputs}"


def test_instance_list_is_sent_only_when_it_changes(server, tmp_path) -> None:
    """A click that refines an instance leaves the instance list alone (re-drawing it costs the page time on
    every click); a click that starts an instance, or choosing the next one, sends the new list."""
    skip = {"__type__": "update"}
    client = gradio_client.Client(server, verbose=False)
    upload(client, write_image(tmp_path, 1))
    started = client.predict(10, 10, False, api_name="/click")[INSTANCES]
    assert started["choices"] == [["Instance 1 · object", 0], ["Instance 2 (new) · object", 1]]
    assert started["value"] == 0
    assert client.predict(12, 14, False, api_name="/click")[INSTANCES] == skip
    assert client.predict(40, 50, True, api_name="/click")[INSTANCES] == skip  # a background click
    assert client.predict(api_name="/add_instance")[INSTANCES]["value"] == 1
    assert client.predict(api_name="/add_instance")[INSTANCES] == skip  # already on the new instance
    assert client.predict(30, 60, False, api_name="/click")[INSTANCES]["choices"][-1] == [
        "Instance 3 (new) · object",
        2,
    ]
    assert client.predict(api_name="/undo")[INSTANCES]["choices"][-1] == ["Instance 2 (new) · object", 1]


def test_several_images_keep_their_work_and_export_as_one_dataset(server, model_dir, tmp_path) -> None:
    """Issue 41, item 2: several images in one session, moving between them keeps each one's clicks (undo
    included), an upload adds and never replaces, and the export holds every image."""
    first, second, third = (write_image(tmp_path, seed, f"photo_{seed}.png") for seed in (1, 2, 3))
    client = gradio_client.Client(server, verbose=False)
    outputs = upload(client, first, second)
    assert outputs[STATUS].startswith("Added 2 images. Image 1/2 'photo_1.png' 80x60 ready"), outputs[STATUS]
    assert [label for label, _ in outputs[IMAGES]["choices"]] == [
        "1. photo_1.png (0 instances)",
        "2. photo_2.png (0 instances)",
    ]
    client.predict(10, 15, False, api_name="/click")
    client.predict(api_name="/add_instance")
    client.predict(40, 60, False, api_name="/click")
    assert "Image 2/2 'photo_2.png'" in client.predict(1, api_name="/show_image")[STATUS]
    client.predict(30, 30, False, api_name="/click")
    outputs = upload(client, third)  # shown at once; the other two keep their work
    assert "Image 3/3 'photo_3.png'" in outputs[STATUS] and outputs[IMAGES]["value"] == 2
    assert "Image 1/3 'photo_1.png' 80x60 ready, 2 instance(s)" in client.predict(0, api_name="/show_image")[STATUS]
    assert client.predict(api_name="/undo")[STATUS] == "Undone."  # the first image's history came back with it
    client.predict(20, 70, False, api_name="/click")  # instance 2 again, elsewhere
    archive, coco, message = export_zip(client)
    assert message.startswith("Exported 3 image(s) (1 without instances), 3 instance(s) in 1 class(es): object")
    assert [image["file_name"] for image in coco["images"]] == ["photo_1.png", "photo_2.png", "photo_3.png"]
    assert [(a["image_id"], a["instance"]) for a in coco["annotations"]] == [(1, 1), (1, 2), (2, 1)]
    assert sorted(name for name in archive.namelist() if name.startswith("label_maps/")) == [
        "label_maps/photo_1.png",
        "label_maps/photo_2.png",
        "label_maps/photo_3.png",
    ]
    expected = {
        "photo_1": [Click(0, 10.0, 15.0, 0), Click(1, 20.0, 70.0, 1)],
        "photo_2": [Click(0, 30.0, 30.0, 0)],
        "photo_3": [],
    }
    model = DynamiteModel.from_pretrained(model_dir)
    for (stem, clicks), path in zip(expected.items(), (first, second, third), strict=True):
        exported = np.asarray(png(archive, f"label_maps/{stem}.png"))
        truth = predictor_label_map(model, path, clicks) if clicks else np.zeros((60, 80))
        assert np.array_equal(exported, truth), stem


def test_uploads_of_every_kind_open_as_people_expect(server, tmp_path) -> None:
    """Issue 41, item 3: a 16-bit PNG is scaled (not shown white), transparency is laid over white and said, a
    too-large file is refused by name in words a person reads, and none of it loses the session's work."""
    gradient = np.tile(np.linspace(0, 65535, 128).astype(np.uint16), (96, 1))
    Image.fromarray(gradient).save(tmp_path / "scan16.png")
    rgba = np.zeros((96, 128, 4), dtype=np.uint8)
    rgba[:, :, 0] = 200
    rgba[:, :64, 3] = 255  # the left half opaque red, the right half fully transparent
    Image.fromarray(rgba).save(tmp_path / "cutout.png")
    huge = (12_000, 9_000)
    Image.new("L", huge).save(tmp_path / "huge.png")  # 108 MP of zeros: a small file
    client = gradio_client.Client(server, verbose=False)
    outputs = upload(client, tmp_path / "scan16.png")
    assert "'scan16.png' is a 16-bit image: its values are scaled from 0-65535 to 0-255." in outputs[STATUS]
    shown = np.asarray(Image.open(outputs[CANVAS]).convert("L"), dtype=float)  # 512 x 384, JPEG
    expected = np.tile(np.linspace(0, 255, shown.shape[1]), (shown.shape[0], 1))
    assert np.abs(shown - expected).mean() < 6  # a ramp from black to white, not a white image
    client.predict(10, 10, False, api_name="/click")
    outputs = upload(client, tmp_path / "cutout.png")
    assert (
        "'cutout.png' has transparent pixels (50 % of the image): they are shown and segmented as if laid over white"
        in outputs[STATUS]
    )
    shown = np.asarray(Image.open(outputs[CANVAS]).convert("RGB"), dtype=int)
    assert np.abs(shown[:, 10] - (200, 0, 0)).max() < 30 and np.abs(shown[:, -10] - 255).max() < 30
    message = upload(client, tmp_path / "huge.png")[STATUS]
    assert message.startswith(
        f"⚠️ 'huge.png' is too large to open here (12000x9000 pixels, 108 megapixels; this app opens images up to "
        f"{MAX_MEGAPIXELS} megapixels: the app's operator sets it with --max-megapixels or DYNAMITE_MAX_MEGAPIXELS)."
    ), message
    assert "max_image_pixels" not in message and "images already here are kept" in message
    assert "Exported 2 image(s) (1 without instances), 1 instance(s)" in client.predict(api_name="/export")[1]


def test_exports_use_file_names_classes_and_the_screens_numbering(server, tmp_path) -> None:
    """Issue 41, item 4: COCO's file_name is the uploaded name, each instance has the class the user named (the
    class list is kept across images and exported as categories), the colour label map sits beside the grey one,
    and instance k is "Instance k" on screen, value k in the label maps, instance_00k.png and COCO's instance k."""
    street, park = write_image(tmp_path, 4, "street.png"), write_image(tmp_path, 5, "park.png")
    client = gradio_client.Client(server, verbose=False)
    upload(client, street, park)
    assert client.predict("car", api_name="/set_class")[STATUS] == "New instances will be 'car'."
    client.predict(10, 10, False, api_name="/click")
    client.predict(api_name="/add_instance")
    client.predict("  person ", api_name="/set_class")
    outputs = client.predict(40, 60, False, api_name="/click")
    assert [label for label, _ in outputs[INSTANCES]["choices"]] == [
        "Instance 1 · car",
        "Instance 2 · person",
        "Instance 3 (new) · person",
    ]
    assert "⚠️ A class needs a name" in client.predict("", api_name="/set_class")[STATUS]
    client.predict(1, api_name="/show_image")
    outputs = client.predict(20, 20, False, api_name="/click")  # on the second image: the class new ones get
    assert [label for label, _ in outputs[INSTANCES]["choices"]] == ["Instance 1 · person", "Instance 2 (new) · person"]
    outputs = client.predict("dog", api_name="/set_class")  # renamed: it was a dog
    assert "Instance 1 is now 'dog'" in outputs[STATUS]
    assert [value for _, value in outputs[CLASS]["choices"]] == ["object", "car", "person", "dog"]
    archive, coco, message = export_zip(client)
    assert message.startswith("Exported 2 image(s), 3 instance(s) in 3 class(es): car, person, dog."), message
    assert [image["file_name"] for image in coco["images"]] == ["street.png", "park.png"]
    assert coco["categories"] == [{"id": 1, "name": "car"}, {"id": 2, "name": "person"}, {"id": 3, "name": "dog"}]
    assert [(a["image_id"], a["instance"], a["category_id"]) for a in coco["annotations"]] == [
        (1, 1, 1),
        (1, 2, 2),
        (2, 1, 3),
    ]
    assert [a["id"] for a in coco["annotations"]] == [1, 2, 3]
    grey = np.asarray(png(archive, "label_maps/street.png"))
    assert set(np.unique(grey)) <= {0, 1, 2} and {1, 2} <= set(np.unique(grey))
    colour = png(archive, "label_maps_color/street.png")
    assert colour.mode == "P" and np.array_equal(np.asarray(colour), grey)  # the same ids...
    palette = np.array(colour.getpalette()[: 3 * 3]).reshape(3, 3)
    assert np.array_equal(palette, label_palette(3))  # ...in the overlay's colours
    assert tuple(palette[1]) == tuple(INSTANCE_COLORS[0])
    masks = sorted(name for name in archive.namelist() if name.startswith("instance_masks/street/"))
    assert masks == ["instance_masks/street/instance_001.png", "instance_masks/street/instance_002.png"]
    for number in (1, 2):
        mask = np.asarray(png(archive, f"instance_masks/street/instance_00{number}.png"))
        assert np.array_equal(mask > 0, grey == number)


def test_same_named_images_are_refused_by_name(tmp_path) -> None:
    """Two images that would share their exported file names: the second is refused, saying how to add it."""
    app = DynamiteApp(tiny_model(), "tiny")
    session = AnnotationSession()
    (tmp_path / "a").mkdir()
    first = write_image(tmp_path, 0, "cat.png")
    other = write_image(tmp_path / "a", 1, "Cat.jpg")
    app.add_images(session, [first])
    message = app.add_images(session, [other])
    assert "'Cat.jpg' was not added: image 1, 'cat.png', has the same name" in message and "Rename" in message
    assert [image.name for image in session.images] == ["cat.png"]


def test_page_actions_apply_in_the_order_made_whatever_order_they_arrive_in(tmp_path, monkeypatch) -> None:
    """The page numbers its actions; a batch that reaches the server before an earlier one waits for it, and an
    action that never comes is reported after a while instead of holding the session."""
    app = DynamiteApp(tiny_model(num_static_bg_queries=0), "tiny")
    session = AnnotationSession()
    app.add_images(session, [write_image(tmp_path, 0)])
    applied = []

    def send(first, actions):
        with session.turn(first, first + len(actions) - 1):
            applied.append(first)
            app.apply(session, actions)

    display_height, display_width = session.image.overlay_size
    later = threading.Thread(target=send, args=(2, [{"kind": "click", "x": 300, "y": 300}]))
    later.start()  # arrives first
    time.sleep(0.2)
    assert applied == []  # waiting for action 1
    send(1, [{"kind": "click", "x": 30, "y": 30}])
    later.join(5)
    assert applied == [1, 2] and [c.instance for c in session.image.clicks] == [0, 0]
    send(3, [{"kind": "add_instance"}, {"kind": "click", "x": 100, "y": 200}])
    assert [c.instance for c in session.image.clicks] == [0, 0, 1]

    monkeypatch.setattr(dynamite_hf.app.session, "ORDER_TIMEOUT_S", 0.2)
    with session.turn(7) as warnings:  # 5 and 6 never come
        assert "2 earlier action(s) from this page never reached the server" in warnings[0]
    assert session.next_sequence == 8
    assert (display_height, display_width) == display_size(60, 80)


def test_export_counts_every_clicked_instance_and_names_the_empty_ones(tmp_path, monkeypatch) -> None:
    app = DynamiteApp(tiny_model(), "tiny")
    session = AnnotationSession()
    app.add_images(session, [write_image(tmp_path, 0, "photo.png")])
    app.click(session, 10, 10, False)
    app.add_instance(session)
    app.click(session, 40, 60, False)
    only_first = np.zeros(session.image.size, dtype=np.int32)
    only_first[:20, :20] = 1  # instance 2's mask came out empty
    monkeypatch.setattr(app.cache, "label_map", lambda image, owner="", pixels=None: only_first)
    shown = np.zeros(session.image.overlay_size, dtype=np.int32)
    shown[:100, :100] = 1  # the same at the overlay's size
    monkeypatch.setattr(app.cache, "overlay", lambda image, owner="", pixels=None: (None, shown))
    files, message = app.export(session)
    assert "Exported 1 image(s), 2 instance(s)" in message and "instance(s) 2 empty" in message, message
    with zipfile.ZipFile(next(f for f in files if f.endswith("dataset.zip"))) as archive:
        coco = json.loads(archive.read("coco.json"))
        masks = [name for name in archive.namelist() if name.startswith("instance_masks/")]
    assert [a["instance"] for a in coco["annotations"]] == [1, 2] and coco["annotations"][1]["area"] == 0
    assert masks == ["instance_masks/photo/instance_001.png", "instance_masks/photo/instance_002.png"]
    assert "Instance 2 is empty" in app.click(session, 45, 62, False)


def test_a_long_running_app_keeps_only_its_newest_exports_and_removes_its_files_with_itself(
    tmp_path, monkeypatch
) -> None:
    """A server that runs for days must not fill its disk with exports (Gradio serves its own copy of each), and
    an app that goes away takes its folder (exports, the sessions' uploads) with it; so does a session that ends."""
    monkeypatch.setattr(dynamite_hf.app.annotator, "MAX_EXPORTS_KEPT", 2)
    app = DynamiteApp(tiny_model(), "tiny")
    session = AnnotationSession()
    app.add_images(session, [write_image(tmp_path, 0)])
    app.click(session, 10, 10, False)
    exports = [app.export(session)[0] for _ in range(3)]
    folders = [Path(files[0]).parent for files in exports]
    assert len(set(folders)) == 3 and all(folder.parent == app.export_root for folder in folders)
    assert not folders[0].exists()
    assert all(Path(path).is_file() for files in exports[1:] for path in files)  # the newest two, whole
    ended = AnnotationSession()
    app.add_images(ended, [write_image(tmp_path, 1)])
    assert ended.folder.is_dir() and ended.image.key in app.cache
    app.end_session(ended)
    assert not ended.folder.exists() and ended.image.key not in app.cache
    root = app.work_root
    del app, session
    gc.collect()
    assert not root.exists()


def test_overlay_is_drawn_at_display_size_and_exports_at_the_image_size(tmp_path) -> None:
    """The overlay's longest side is 512-1024 px whatever the image; clicks map back; exports keep full size."""
    model = tiny_model(num_static_bg_queries=0)
    app = DynamiteApp(model, "tiny")
    large = tmp_path / "large.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (600, 1400, 3), dtype=np.uint8)).save(large)
    session = AnnotationSession()
    app.add_images(session, [large])
    image = session.image
    assert image.overlay_size == (439, 1024) and app.cache.overlay(image)[0].shape == (439, 1024, 3)
    row, col = image.image_point(219.5, 512.5)  # the centre of overlay pixel (219, 512), in the image's pixels
    assert abs(row - 219.5 * 600 / 439) < 1e-9 and abs(col - 512.5 * 1400 / 1024) < 1e-9
    app.click(session, row, col, False)
    assert app.render(session).shape == (439, 1024, 3)
    files, _ = app.export(session)
    with zipfile.ZipFile(files[0]) as archive:
        exported = np.asarray(png(archive, "label_maps/large.png"))
    assert np.array_equal(exported, predictor_label_map(model, str(large), image.clicks))  # the image's own masks
    app.add_images(session, [write_image(tmp_path, 0)])  # 60x80: enlarged so it can be clicked
    assert session.image.overlay_size == (384, 512) and app.render(session).shape == (384, 512, 3)


def test_images_too_small_to_click_are_refused(tmp_path) -> None:
    app = DynamiteApp(tiny_model(), "tiny")
    for size in ((1, 1), (MIN_SIDE - 1, 200)):
        path = tmp_path / f"small_{size[0]}.png"
        Image.new("RGB", size, (10, 20, 30)).save(path)
        session = AnnotationSession()
        message = app.add_images(session, [path])
        assert session.image is None and f"at least {MIN_SIDE} px" in message and f"{size[0]}x{size[1]}" in message


def test_huge_upload_is_downscaled_with_a_notice(tmp_path) -> None:
    app = DynamiteApp(tiny_model(), "tiny")
    path = tmp_path / "huge.png"
    Image.new("RGB", (3 * MAX_SIDE, 1000), (10, 20, 30)).save(path)
    session = AnnotationSession()
    message = app.add_images(session, [path])
    assert max(session.image.size) == MAX_SIDE and f"Downscaled from {3 * MAX_SIDE}x1000" in message


def test_decoding_scales_16_bit_flattens_transparency_and_takes_the_first_frame(tmp_path) -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16).repeat(40, 0).repeat(10, 1)
    Image.fromarray(values).save(tmp_path / "grey16.png")
    decoded = decode_upload(tmp_path / "grey16.png")
    assert decoded.pixels.dtype == np.uint8 and decoded.pixels.shape == (40, 40, 3)
    assert list(decoded.pixels[0, ::10, 0]) == [0, 1, 128, 255]
    floats = np.linspace(-1, 1, 40 * 40, dtype=np.float32).reshape(40, 40)
    Image.fromarray(floats, mode="F").save(tmp_path / "depth.tif")
    decoded = decode_upload(tmp_path / "depth.tif")
    assert decoded.pixels[0, 0, 0] == 0 and decoded.pixels[-1, -1, 0] == 255 and "stretched" in decoded.notes[0]
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[..., 2] = 100
    rgba[..., 3] = 64  # a quarter opaque blue over white
    Image.fromarray(rgba).save(tmp_path / "glass.png")
    decoded = decode_upload(tmp_path / "glass.png", "glass.png")
    assert tuple(decoded.pixels[0, 0]) == (191, 191, 216) and "100 % of the image" in decoded.notes[0]
    opaque = rgba.copy()
    opaque[..., 3] = 255
    Image.fromarray(opaque).save(tmp_path / "opaque.png")
    assert decode_upload(tmp_path / "opaque.png").notes == ()  # an alpha channel that hides nothing: no note
    frames = [Image.new("RGB", (40, 40), color) for color in ("red", "blue")]
    frames[0].save(tmp_path / "pages.gif", save_all=True, append_images=frames[1:])
    decoded = decode_upload(tmp_path / "pages.gif")
    assert "2 frames or pages: the first is used" in decoded.notes[0] and decoded.pixels[0, 0, 0] > 200


def test_the_examples_are_small_photos_with_their_licences_named() -> None:
    credits = (HERE / "examples" / "README.md").read_text()
    for name, label in EXAMPLES:
        path = HERE / "examples" / name
        assert path.stat().st_size < 80_000 and f"`{name}`" in credits
        licence = label[label.index("(") + 1 : -1]
        row = next(line for line in credits.splitlines() if f"`{name}`" in line)
        assert licence in row, (name, licence, row)
        pixels = decode_upload(path).pixels
        assert min(pixels.shape[:2]) >= 300 and pixels.std() > 30  # a photo, not a flat synthetic scene


def test_predictor_cache_is_bounded_and_rebuilds_the_same_result(tmp_path) -> None:
    model = tiny_model()
    app = DynamiteApp(model, "tiny", max_sessions=2)
    sessions = []
    for seed in range(4):
        session = AnnotationSession()
        app.add_images(session, [write_image(tmp_path, seed)])
        app.click(session, 10, 10, False)
        sessions.append(session)
    assert len(app.cache) == 2  # bounded: the two least recently used images were evicted
    first = app.cache.label_map(sessions[0].image)  # rebuilt from the image file and the session's clicks
    assert len(app.cache) == 2
    assert isinstance(app.cache, PredictorCache)
    image = sessions[0].image
    assert np.array_equal(first, predictor_label_map(model, image.pixels(), image.clicks))


def test_predictor_cache_is_bounded_by_bytes_and_keeps_the_image_it_serves(tmp_path) -> None:
    model = tiny_model()
    app = DynamiteApp(model, "tiny", max_sessions=8)
    session = AnnotationSession()
    app.add_images(session, [write_image(tmp_path, seed, f"photo_{seed}.png") for seed in range(4)])
    for index in range(1, 4):
        app.show_image(session, index)
    one_image = app.cache._images[session.images[0].key].nbytes()
    features = app.cache._images[session.images[0].key].predictor.image_embeddings
    assert one_image > features.nbytes() > features.mask_features.nbytes  # image, features, label maps

    cache = PredictorCache(model, app.processor, max_images=8, max_bytes=int(2.5 * one_image))
    for image in session.images:
        cache.overlay(image)
    assert list(cache._images) == [image.key for image in session.images[2:]]  # two fit; the oldest went first
    assert cache.nbytes() <= cache.max_bytes

    alone = PredictorCache(model, app.processor, max_images=8, max_bytes=one_image // 2)
    for image in session.images[:2]:
        alone.overlay(image)
    assert list(alone._images) == [session.images[1].key]  # over the budget alone, but the image served stays

    with pytest.raises(ValueError, match="max_cache_mb.*got 0"):
        DynamiteApp(model, "tiny", max_cache_mb=0)


def test_remove_instance_and_reset_are_undoable_and_renumber_like_the_predictor(tmp_path) -> None:
    app = DynamiteApp(tiny_model(), "tiny")
    session = AnnotationSession()
    app.add_images(session, [write_image(tmp_path, 0)])
    app.click(session, 10, 10, False)
    app.add_instance(session)
    app.set_class(session, "cat")
    app.click(session, 40, 60, False)
    app.add_instance(session)
    app.set_class(session, "dog")
    app.click(session, 30, 20, False)
    app.select_instance(session, 1)
    message = app.remove_instance(session)
    image = session.image
    assert [(c.instance, c.row, c.timestamp) for c in image.clicks] == [(0, 10.0, 0), (1, 30.0, 1)]
    assert image.annotation.classes == ("object", "dog") and "Removed instance 2" in message
    app.undo(session)
    assert [c.instance for c in image.clicks] == [0, 1, 2] and image.annotation.classes == ("object", "cat", "dog")
    assert "cleared" in app.reset(session) and image.clicks == []
    assert app.undo(session) == "Undone." and len(image.clicks) == 3


def readme_segment_example() -> str:
    """The README's gradio_client example of the stateless call, as written."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    return next(block for block in blocks if 'api_name="/segment"' in block)


def test_the_stateless_call_segments_an_image_from_json_clicks(server, model_dir, tmp_path) -> None:
    """Issue 39 item 5: /segment takes an image and its clicks as JSON and gives the label map (PNG) and the COCO JSON
    the predictor gives, through the README's gradio_client example run as it is written; it keeps no session."""
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(7).integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(photo)
    code = readme_segment_example().replace("http://127.0.0.1:7860/", server).replace('"photo.jpg"', repr(str(photo)))
    namespace: dict = {}
    exec(code, namespace)  # the README's own lines
    label_map = np.asarray(Image.open(namespace["label_map_png"]))
    expected = predictor_label_map(
        model_dir,
        decode_upload(photo).pixels,
        [Click(0, 120.0, 300.0, 0), Click(1, 400.0, 80.0, 1), Click(None, 10.0, 10.0, 2)],
    )
    assert label_map.shape == (480, 640) and np.array_equal(label_map, expected)
    coco = namespace["coco"]
    assert coco["images"] == [{"id": 1, "file_name": "photo.jpg", "height": 480, "width": 640}]
    assert [a["instance"] for a in coco["annotations"]] == [0, 1]
    for annotation in coco["annotations"]:
        rle = dict(annotation["segmentation"], counts=annotation["segmentation"]["counts"].encode())
        assert np.array_equal(mask_utils.decode(rle).astype(bool), label_map == annotation["instance"] + 1)
    client = namespace["client"]
    assert "Nothing to export" in client.predict(api_name="/export")[1]  # the call used no session

    # A large image is worked on at 2048 px: the clicks (in its own pixels) come along, and the sizes say so.
    large = tmp_path / "large.png"
    Image.fromarray(np.random.default_rng(8).integers(0, 256, (2000, 3000, 3), dtype=np.uint8)).save(large)
    clicks = json.dumps([{"row": 1500, "col": 2400, "instance": 0}])  # a JSON string is taken too
    label_map_png, coco = client.predict(gradio_client.handle_file(str(large)), clicks, api_name="/segment")
    scale = 2048 / 3000
    expected = predictor_label_map(model_dir, decode_upload(large).pixels, [Click(0, 1500 * scale, 2400 * scale, 0)])
    assert np.array_equal(np.asarray(Image.open(label_map_png)), expected)
    assert (coco["images"][0]["height"], coco["images"][0]["width"]) == (1365, 2048)
    for clicks, message in (
        ([{"row": 1, "col": 1}], r"clicks\[0\] needs row, col and instance"),
        ([{"row": 999, "col": 1, "instance": 0}], r"clicks\[0\] at \(row=999, col=1\) lies outside the 640x480 image"),
        ("[not json", "clicks is not valid JSON"),
    ):
        with pytest.raises(gradio_client.exceptions.AppError, match=message):
            client.predict(gradio_client.handle_file(str(photo)), clicks, api_name="/segment")


def test_the_api_page_lists_the_api_and_not_the_pages_own_events(server) -> None:
    """Issue 39 item 5: the stateless call and the session endpoints are documented; the page's own events are
    callable but undocumented (Gradio 6's api_visibility), and the JS-only buttons have no endpoint."""
    info = httpx.get(f"{server}gradio_api/info").json()
    assert sorted(info["named_endpoints"]) == sorted(
        f"/{name}"
        for name in (
            "upload",
            "click",
            "add_instance",
            "select_instance",
            "set_class",
            "show_image",
            "undo",
            "remove_instance",
            "reset",
            "export",
            "segment",
        )
    )
    assert info["unnamed_endpoints"] == {}
    dependencies = httpx.get(f"{server}config").json()["dependencies"]
    visibility = {d["api_name"]: d["api_visibility"] for d in dependencies if d.get("api_name")}
    assert visibility["page_actions"] == visibility["page_upload"] == "undocumented"
    assert visibility["segment"] == "public"
