"""One push: `scripts/push_to_hub.py --local-dir` writes exactly what the upload sends, in one commit (an `HfApi`
that records the calls stands in for the Hub); model cards and their metadata as `huggingface_hub` parses them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, ModelCard
from script_module import load_script
from tiny import tiny_model

from dynamite_hf import DynamiteImageProcessor, save_model_folder
from dynamite_hf import hub as hub_module

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "models" / "dynamite-mobilenet-v2"


class RecordingHfApi:
    """Records what an upload asks of the Hub; `remote_files` is what the repository already holds."""

    calls: list = []
    remote_files: list[str] = []

    def __init__(self, token=None) -> None:
        self.token = token

    def create_repo(self, repo_id, private=False, exist_ok=False, **kwargs):
        self.calls.append(("create_repo", repo_id, {"private": private, "exist_ok": exist_ok, **kwargs}))

    def list_repo_files(self, repo_id, **kwargs):
        self.calls.append(("list_repo_files", repo_id))
        return list(self.remote_files)

    def create_commit(self, repo_id, operations, commit_message, **kwargs):
        # The staged files exist only during the upload: read them now, as the Hub client would.
        added = {
            op.path_in_repo: Path(op.path_or_fileobj).read_bytes()
            for op in operations
            if isinstance(op, CommitOperationAdd)
        }
        deleted = [op.path_in_repo for op in operations if isinstance(op, CommitOperationDelete)]
        self.calls.append(("create_commit", repo_id, added, deleted, commit_message))

        class Info:
            commit_url = f"https://huggingface.co/{repo_id}/commit/0"

        return Info()


@pytest.fixture
def recording_api(monkeypatch):
    RecordingHfApi.calls, RecordingHfApi.remote_files = [], []
    monkeypatch.setattr(hub_module, "HfApi", RecordingHfApi)
    return RecordingHfApi


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


CARD = """---
license: apache-2.0
tags:
- dynamite
---

# tiny

```python
model_id = "runs/tiny"  # this folder
```

![plot](plot.png) and the [licence](LICENSE); [the paper](https://arxiv.org/abs/2304.06668).
"""


@pytest.fixture
def model_folder(tmp_path) -> Path:
    """A training output folder: a model with its card, the files the card links, a run summary, and what stays
    behind (checkpoints, logs)."""
    folder = tmp_path / "run"
    save_model_folder(tiny_model(), DynamiteImageProcessor.from_preset("mobilenet_v2"), folder)
    (folder / "README.md").write_text(CARD)
    (folder / "plot.png").write_bytes(b"\x89PNG plot")
    (folder / "LICENSE").write_text("Apache-2.0")
    (folder / "train_summary.json").write_text("{}")
    (folder / "notes.txt").write_text("not linked")
    (folder / "checkpoints" / "step_4").mkdir(parents=True)
    (folder / "checkpoints" / "step_4" / "model.safetensors").write_bytes(b"state")
    return folder


def test_the_push_uploads_exactly_the_local_dir_folder_in_one_commit(recording_api, model_folder, tmp_path, capsys):
    script = load_script("push_to_hub.py")
    local = tmp_path / "local"
    script.main(["--model", str(model_folder), "--repo-id", "someone/tiny", "--local-dir", str(local)])
    assert recording_api.calls == []  # --local-dir never reaches the Hub
    script.main(["--model", str(model_folder), "--repo-id", "someone/tiny", "--private", "--commit-message", "v1"])
    assert "pushed" in capsys.readouterr().out
    commits = [call for call in recording_api.calls if call[0] == "create_commit"]
    assert len(commits) == 1
    _, repo_id, added, deleted, message = commits[0]
    assert repo_id == "someone/tiny" and message == "v1" and deleted == []
    assert ("create_repo", "someone/tiny", {"private": True, "exist_ok": True}) in recording_api.calls
    assert added == folder_files(local)
    # Weights as they are on disk, configs, code, the card and what it links to, the run summary; nothing else.
    code = {p.name for p in model_folder.glob("*.py")}
    assert "pipeline_dynamite.py" in code
    extra = {"README.md", "plot.png", "LICENSE", "train_summary.json"}
    assert set(added) == code | extra | {"config.json", "preprocessor_config.json", "model.safetensors"}
    assert added["model.safetensors"] == (model_folder / "model.safetensors").read_bytes()
    config = json.loads(added["config.json"])
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel"} and "image-segmentation" in config["custom_pipelines"]
    assert set(json.loads(added["preprocessor_config.json"])["auto_map"]) == {"AutoImageProcessor", "AutoProcessor"}


def test_a_push_removes_the_code_and_weights_an_earlier_upload_left(recording_api, tmp_path) -> None:
    save_model_folder(tiny_model(), DynamiteImageProcessor.from_preset("mobilenet_v2"), tmp_path / "model")
    recording_api.remote_files = [".gitattributes", "README.md", "old_module.py", "model-00001-of-00002.safetensors"]
    hub_module.push_to_hub(tmp_path / "model", "someone/tiny")
    (_, _, added, deleted, _) = next(call for call in recording_api.calls if call[0] == "create_commit")
    assert sorted(deleted) == ["model-00001-of-00002.safetensors", "old_module.py"]
    assert "README.md" in added  # a card made for the folder, which had none


def test_the_upload_card_names_the_repository_and_keeps_the_metadata(model_folder, tmp_path) -> None:
    """The card's metadata is re-written by huggingface_hub with what loads the model added; its usage line names
    the repository instead of the local folder."""
    folder = hub_module.write_hub_folder(model_folder, tmp_path / "upload", "someone/tiny")
    card = ModelCard.load(folder / "README.md")
    assert card.data.license == "apache-2.0" and card.data.tags == ["dynamite"]
    assert (card.data.library_name, card.data.pipeline_tag) == ("transformers", "image-segmentation")
    assert 'model_id = "someone/tiny"\n' in card.text and "runs/tiny" not in card.text


def test_a_folder_without_a_card_gets_one_made_for_dynamite(tmp_path) -> None:
    save_model_folder(tiny_model(), DynamiteImageProcessor.from_preset("mobilenet_v2"), tmp_path / "model")
    hub_module.write_hub_folder(tmp_path / "model", tmp_path / "upload", "someone/tiny")
    card = ModelCard.load(tmp_path / "upload" / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-segmentation"
    assert "mobilenet_v2" in card.text and "arXiv:2304.06668" in card.text
    assert card.text.count('model_id = "someone/tiny"') == 2


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--model", "no/such/folder"], "not a model folder"),
        (["--model", str(BUNDLED), "--repo-id", "no-owner"], "repo_id must be"),
        (["--model", str(BUNDLED), "--local-dir", str(BUNDLED)], "not an empty folder"),
    ],
)
def test_bad_push_arguments_are_named(arguments, message, tmp_path, capsys) -> None:
    if "--repo-id" not in arguments:
        arguments = [*arguments, "--repo-id", "someone/x"]
    if "--local-dir" not in arguments:
        arguments = [*arguments, "--local-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit):
        load_script("push_to_hub.py").main(arguments)
    assert message in capsys.readouterr().err


def test_save_model_folder_keeps_the_pipeline_entry_off_the_models_config(tmp_path) -> None:
    """The entry is written to config.json only: a later plain `save_pretrained` of the model, which writes no
    pipeline code, must not name a pipeline. (`auto_map` stays, as transformers keeps it: that save writes the
    model's code.)"""
    model = tiny_model()
    save_model_folder(model, DynamiteImageProcessor.from_preset("mobilenet_v2"), tmp_path / "folder")
    assert "custom_pipelines" in json.loads((tmp_path / "folder" / "config.json").read_text())
    model.save_pretrained(tmp_path / "plain")
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert "custom_pipelines" not in config and set(config["auto_map"]) == {"AutoConfig", "AutoModel"}


# -- the bundled model card ---------------------------------------------------------------------------------------


def test_the_bundled_model_uploads_with_its_card_licence_and_plot(tmp_path) -> None:
    folder = hub_module.write_hub_folder(BUNDLED, tmp_path / "upload", "someone/dynamite")
    names = {path.name for path in folder.iterdir()}
    kept = {path.name for path in BUNDLED.iterdir() if path.suffix in (".py", ".json", ".safetensors")}
    assert names == kept | {"README.md", "LICENSE", "miou_per_click.png"}
    card, source = ModelCard.load(folder / "README.md"), ModelCard.load(BUNDLED / "README.md")
    assert card.data.to_dict() == source.data.to_dict()
    assert card.text.count('model_id = "someone/dynamite"') == source.text.count("model_id = ") == 3


# Which row of the card's evaluation table holds each result of the model-index.
TABLE_ROWS = {
    ("grabcut", "noc@85"): "| GrabCut (50 objects) |",
    ("grabcut", "noc@90"): "| GrabCut (50 objects) |",
    ("davis", "noc@85"): "| DAVIS (345 frames) |",
    ("davis", "noc@90"): "| DAVIS (345 frames) |",
    ("davis", "nci"): "| DAVIS multi-instance",
    ("grabcut", "positive_clicks_obeyed_%"): "| GrabCut, corrective clicks",
    ("grabcut", "negative_clicks_obeyed_%"): "| GrabCut, corrective clicks",
    ("davis", "instances_holding_their_click_%"): "| DAVIS frames of 2-4 objects",
}


def test_the_bundled_card_has_the_metadata_the_hub_reads() -> None:
    """Parsed by huggingface_hub: licence (research use only, with its file), datasets, tags, library, pipeline
    and a model-index whose every result is the figure of the card's evaluation table; the front matter is what
    huggingface_hub writes for that metadata; at most 200 lines."""
    text = (BUNDLED / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    card = ModelCard.load(BUNDLED / "README.md")
    data = card.data
    assert (data.license, data.license_name, data.license_link) == ("other", "research-only", "LICENSE")
    assert "research use only" in (BUNDLED / data.license_link).read_text()
    assert len(data.datasets) == 5 and "interactive-segmentation" in data.tags
    assert (data.library_name, data.pipeline_tag) == ("transformers", "image-segmentation")
    assert text.startswith(f"---\n{data.to_yaml()}\n---\n")
    assert len(data.eval_results) == 8
    for result in data.eval_results:
        prefix = TABLE_ROWS[result.dataset_type, result.metric_type]
        row = next(line for line in text.splitlines() if line.startswith(prefix))
        figures = [float(number) for number in re.findall(r"\d+(?:\.\d+)?", row.split("|")[3])]
        assert result.metric_value in figures, (result, row)
    assert "@inproceedings{rana2023dynamite" in text and "2304.06668" in text


def test_the_bundled_cards_predictor_snippet_runs(tmp_path) -> None:
    """The card's dynamite-hf snippet, run with the package on a photo-sized image: two instances' masks."""
    import numpy as np
    from PIL import Image

    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(image)
    blocks = re.findall(r"```python\n(.*?)```", (BUNDLED / "README.md").read_text(), flags=re.S)
    snippet = next(block for block in blocks if "dynamite_hf" in block)
    snippet = snippet.replace('"models/dynamite-mobilenet-v2"', repr(str(BUNDLED))).replace(
        '"photo.jpg"', repr(str(image))
    )
    namespace: dict = {}
    exec(snippet, namespace)
    assert namespace["masks"].shape == (2, 480, 640) and namespace["masks"].any(axis=(1, 2)).all()
