"""`scripts/benchmark_app.py`: its clients reproduce what gradio_client and the page get, and it prints figures."""

from __future__ import annotations

import hashlib
import re
import sys
import threading
from pathlib import Path

import pytest
from app_server import running_app
from test_app import write_image
from test_app_browser import CHROMIUM
from tiny import tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import benchmark_app  # noqa: E402

gradio_client = pytest.importorskip("gradio_client")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    tiny_model().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def server(model_dir):
    with running_app(model_dir) as url:
        yield url


def test_browser_protocol_client_gets_what_gradio_client_gets(server, tmp_path) -> None:
    """The same session through the page's requests and through gradio_client: the same messages and the
    byte-identical overlays, so the default client times the app's real work."""
    image = Path(write_image(tmp_path, 3))
    clicks = [(20.0, 30.0, False), (40.0, 10.0, True), (35.0, 70.0, False)]
    page = benchmark_app.BrowserProtocolClient(server)
    reference = gradio_client.Client(server, verbose=False)
    assert "ready" in page.upload_image(image)[2]
    assert "ready" in reference.predict([gradio_client.handle_file(str(image))], api_name="/upload")[1]
    for row, col, background in clicks:
        _, overlay, message, *_ = page.click(row, col, background)
        expected_overlay, expected_message, *_ = reference.predict(row, col, background, api_name="/click")
        assert re.sub(r"\d+ ms", "", message) == re.sub(r"\d+ ms", "", expected_message)
        assert message.startswith("Click on")
        received = hashlib.sha256(page.fetch(overlay)).hexdigest()
        assert received == hashlib.sha256(Path(expected_overlay).read_bytes()).hexdigest()


def test_clients_refuse_an_error_message_as_a_timed_click(server, tmp_path) -> None:
    """A click the app answers with an error is not timed as a success."""
    page = benchmark_app.BrowserProtocolClient(server)
    message = page.click(5.0, 5.0, False)[2]  # no image uploaded
    assert message.startswith("⚠️ Upload an image")


@pytest.mark.slow
@pytest.mark.parametrize("client", ["browser", "chromium"])
def test_benchmark_prints_its_figures(model_dir, tmp_path, capsys, client) -> None:
    if client == "chromium" and not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    benchmark_app.main(["--model", str(model_dir), "--size", "120x160", "--clicks", "6", "--client", client])
    printed = capsys.readouterr().out
    assert f"1 session(s) x 6 clicks over HTTP ({client} client)" in printed
    median, p95 = (int(v) for v in re.search(r"median (\d+) ms, p95 (\d+) ms", printed).groups())
    assert 0 < median <= p95
    assert re.search(r"app peak memory \(VmHWM\): \d+ MB", printed)


def test_sessions_start_clicking_together(server, tmp_path) -> None:
    """Two sessions through the page's requests: each gets its own timings."""
    image = Path(write_image(tmp_path, 4))
    barrier = threading.Barrier(2)
    results = []
    threads = [
        threading.Thread(
            target=lambda seed: results.append(benchmark_app.run_session(server, image, seed, 3, barrier)),
            args=(seed,),
        )
        for seed in (1, 2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [len(times) for times in results] == [3, 3]


@pytest.mark.slow
def test_the_abuse_benchmark_prints_its_figures(model_dir, capsys) -> None:
    """Issue 42: the abusive client (clicks at the limits, large uploads, the stateless call at the limits) beside
    normal sessions, both halves timed in one run, and the app's memory; a short run with small limits."""
    arguments = ["--abuse", "--model", str(model_dir), "--size", "120x160", "--abuse-size", "300x400"]
    arguments += ["--minutes", "0.15", "--rounds", "1", "--settle-s", "2", "--sessions", "2"]
    arguments += ["--app-args", "--max-instances 6 --max-clicks 30 --max-upload-mb 1 --max-images 2"]
    arguments[-1] += " --closed-session-seconds 3"
    benchmark_app.main(arguments)
    printed = capsys.readouterr().out
    assert "abuse benchmark: 2 normal sessions on a 160x120 photo" in printed
    for half in ("without", "beside"):
        clicks, median, p95 = (
            int(v)
            for v in re.search(
                rf"normal sessions {half} the abuser: (\d+) clicks, median (\d+) ms, p95 (\d+)", printed
            ).groups()
        )
        assert clicks > 0 and 0 < median <= p95
    assert re.search(r"p95 beside / without the abuser: \d+\.\d\d", printed)
    assert re.search(r"session 2: alone p95 \d+ ms, abused p95 \d+ ms", printed)
    for loop in ("clicks", "uploads", "segment"):
        assert re.search(rf"abuser {loop}: [1-9]\d* requests answered", printed), printed
    assert "limits read from the app: 6 instances, 30 clicks per image" in printed
    idle, peak, high_water, after, after_grace = (
        float(v)
        for v in re.search(
            r"idle before (\d+) MB after a first visitor's 25 clicks \(\d+ MB after the first click\), peak (\d+) MB \(high-water mark (\d+) MB\), 2 s after the sessions ended (\d+) MB, "
            r"2 s after the app ended them \(3 s after their pages closed\) (\d+) MB",
            printed,
        ).groups()
    )
    assert 0 < idle <= peak <= high_water + 1 and 0 < after <= high_water and 0 < after_grace <= high_water
