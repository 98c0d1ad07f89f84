"""train_accelerate.py as researchers run it, on a tiny model and real coco128-seg images: mixed precision (bf16
with corrective-click passes), the settings `accelerate launch` / `accelerate config` pass on, the plan printed
before the first step, a launch that got one process where it asked for several, the output folder's rules,
resuming on another process count, Ctrl-C, and arguments checked before anything is built."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from accelerate_launch import free_port
from tiny import TINY_HEAD

from dynamite_hf.training.trainer import DynamiteTrainingArguments

ROOT = Path(__file__).resolve().parents[1]
COCO128 = ROOT.parent / "shared" / "data" / "coco128-seg"
requires_data = pytest.mark.skipif(not COCO128.is_dir(), reason=f"{COCO128} is not present")

TINY = ",".join(f"{key}={value}" for key, value in TINY_HEAD.items())
# A tiny head on the CPU preset's backbone, from scratch, 128 px crops: a step takes about 0.1 s.
QUICK = ["--init", "scratch", "--config-overrides", TINY, "--crop-size", "128", "--batch-size", "2"]
QUICK += ["--num-points", "1024", "--min-area", "50", "--report-to", "none", "--log-every", "1", "--lr-milestones", ""]
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch"]


def environment() -> dict[str, str]:
    """The test's environment without any launcher variables of an enclosing run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "MASTER_", "WORLD_SIZE", "RANK"))}
    return {**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def train(args: list[str], launcher: list[str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    command = [*(launcher or [sys.executable]), str(ROOT / "train_accelerate.py"), *args]
    result = subprocess.run(command, capture_output=True, text=True, env=environment(), cwd=ROOT, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def summary(output: Path) -> dict:
    return json.loads((output / "train_summary.json").read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Six coco128-seg images, built as scripts/build_dataset.py builds them."""
    from dynamite_hf.data.instances import build_dataset
    from dynamite_hf.data.sources import read_source

    folder = tmp_path_factory.mktemp("data") / "coco6"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        examples = [e for _, e in zip(range(6), read_source(f"yolo:{COCO128}"), strict=False)]
        build_dataset(examples).save_to_disk(folder)
    return folder


@pytest.fixture(scope="module")
def float32_run(data, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """Four float32 steps with up to 3 corrective-click passes each, checkpointed only at the end."""
    output = tmp_path_factory.mktemp("runs") / "float32"
    args = ["--dataset", str(data), "--output-dir", str(output), "--max-steps", "4", "--checkpoint-every", "0"]
    return output, train([*args, "--max-num-interactions", "3", *QUICK])


def corrective_passes(seed: int, micro_steps: int, max_interactions: int) -> list[int]:
    """The corrective-click passes each micro-step of process 0 draws (as the trainer draws them)."""
    draws = []
    for micro_step in range(micro_steps):
        rng = np.random.default_rng([seed, 0, micro_step])
        rng.integers(2**62)  # the loss generator's seed comes first
        draws.append(int(rng.integers(0, max_interactions + 1)))
    return draws


# -- precision ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
@requires_data
def test_bf16_training_with_click_passes_stays_finite_and_differs_from_float32(data, float32_run, tmp_path) -> None:
    reference, _ = float32_run
    assert sum(corrective_passes(2091831170, 4, 3)) >= 3, "the seed must give corrective-click passes"
    output = tmp_path / "bf16"
    args = ["--dataset", str(data), "--output-dir", str(output), "--max-steps", "4", "--checkpoint-every", "0"]
    result = train([*args, "--max-num-interactions", "3", "--mixed-precision", "bf16", *QUICK])
    assert "precision    bf16 autocast" in result.stdout
    bf16, float32 = summary(output), summary(reference)
    assert bf16["mixed_precision"] == "bf16" and float32["mixed_precision"] == "no"
    for key in ("train/loss", "train/loss_bce", "train/loss_dice", "train/grad_norm"):
        assert np.isfinite(bf16["last_logs"][key]), key
    # bf16 rounds the interactive transformer's activations: the same run, other numbers, close ones
    loss, reference_loss = bf16["last_logs"]["train/loss"], float32["last_logs"]["train/loss"]
    assert loss != reference_loss and abs(loss - reference_loss) < 0.1 * reference_loss
    assert bf16["rank_weight_digests"] != float32["rank_weight_digests"]


def _config_file(folder: Path, **values: object) -> Path:
    """An `accelerate config` file (the keys `accelerate config` writes for a local machine)."""
    settings = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "distributed_type": "NO",
        "downcast_bf16": "no",
        "machine_rank": 0,
        "main_training_function": "main",
        "mixed_precision": "no",
        "num_machines": 1,
        "num_processes": 1,
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": True,
        **values,
    }
    path = folder / "accelerate_config.yaml"
    path.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in settings.items()))
    return path


@requires_data
@pytest.mark.slow
def test_the_launchers_mixed_precision_is_used_unless_the_flag_overrides_it(data, tmp_path) -> None:
    """`accelerate launch --mixed_precision bf16` and an `accelerate config` saying bf16 both train in bf16
    (with no --mixed-precision); the script's flag wins over them."""
    common = ["--dataset", str(data), "--max-steps", "2", "--checkpoint-every", "0", "--max-num-interactions", "0"]
    common += QUICK
    runs = {
        "launch": ([*LAUNCH, "--num_processes", "1", "--mixed_precision", "bf16"], []),
        "config": ([*LAUNCH, "--config_file", str(_config_file(tmp_path, mixed_precision="bf16"))], []),
        "flag": ([*LAUNCH, "--num_processes", "1", "--mixed_precision", "bf16"], ["--mixed-precision", "no"]),
    }
    results = {}
    for name, (launcher, flags) in runs.items():
        output = tmp_path / name
        log = train([*common, "--output-dir", str(output), *flags], launcher)
        results[name] = summary(output), log.stdout
    float32, stdout = results["flag"]
    assert float32["mixed_precision"] == "no" and "(mixed precision no, from --mixed-precision)" in stdout
    for name in ("launch", "config"):
        ran, stdout = results[name]
        assert ran["mixed_precision"] == "bf16", name
        assert "bf16 autocast, the pixel decoder and the loss in float32 (from accelerate launch" in stdout, name
        assert ran["last_logs"]["train/loss"] != float32["last_logs"]["train/loss"], name
    assert results["launch"][0]["rank_weight_digests"] == results["config"][0]["rank_weight_digests"]


# -- launch and plan ----------------------------------------------------------------------------------------------


@requires_data
@pytest.mark.parametrize("how", ["--num_processes 2", pytest.param("accelerate config", marks=pytest.mark.slow)])
def test_a_launch_that_asked_for_several_processes_but_started_one_stops(how, data, tmp_path) -> None:
    if how == "accelerate config":
        config = _config_file(tmp_path, distributed_type="MULTI_CPU", num_processes=2, main_process_port=free_port())
        launcher = [*LAUNCH, "--config_file", str(config)]
    else:
        launcher = [*LAUNCH, "--num_processes", "2", "--main_process_port", str(free_port())]
    output = tmp_path / "run"
    args = ["--dataset", str(data), "--output-dir", str(output), "--max-steps", "2", *QUICK]
    result = train(args, launcher, check=False)
    assert result.returncode != 0
    assert "accelerate launch was asked for several processes" in result.stderr
    assert "accelerate launch --multi_gpu --num_processes N train_accelerate.py" in result.stderr
    assert not output.exists()


@pytest.mark.slow
@requires_data
def test_the_plan_is_printed_before_the_first_step(data, float32_run) -> None:
    output, result = float32_run
    log = result.stdout + result.stderr
    plan = log[: log.index("training:")]
    assert "processes    1, 1 thread(s) each; devices: cpu" in plan
    assert "precision    float32 (mixed precision no, from default)" in plan
    assert "batch        2 image(s) x 1 process(es) x 1 accumulation step(s) = 2 a step, 128 px crops" in plan
    assert "steps        0 -> 4, learning rate 0.0001" in plan
    import datasets

    from dynamite_hf.training.trainer import count_instances

    built = datasets.load_from_disk(str(data))
    assert f"dataset      {data}: {len(built)} images, {count_instances(built)} instances" in plan
    assert count_instances(built) == sum(len(a) for a in built["areas"]) > len(built)
    assert f"checkpoints  {output / 'checkpoints' / 'step_N'}, at the end" in plan
    assert f"final model  {output} (save_pretrained" in plan


# -- outputs ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@requires_data
def test_checkpoint_every_0_writes_the_final_checkpoint(float32_run) -> None:
    output, _ = float32_run
    assert [p.name for p in (output / "checkpoints").iterdir()] == ["step_4"]
    assert (output / "checkpoints" / "step_4" / "model.safetensors").is_file()
    assert (output / "checkpoints" / "step_4" / "config.json").is_file()


@pytest.mark.slow
@requires_data
def test_the_final_model_and_an_exported_checkpoint_are_remote_code_folders(float32_run, tmp_path) -> None:
    """The run's final save and `export_checkpoint` write whole model folders (`save_model_folder`): code, `auto_map`
    entries and the pipeline, as tests/test_remote_code.py loads them without the package."""
    from dynamite_hf.training.trainer import export_checkpoint

    output, _ = float32_run
    exported = export_checkpoint(output / "checkpoints" / "step_4", tmp_path / "exported")
    for folder in (output, exported):
        config = json.loads((folder / "config.json").read_text())
        assert set(config["auto_map"]) == {"AutoConfig", "AutoModel"}, folder
        assert config["custom_pipelines"]["image-segmentation"]["impl"].startswith("pipeline_dynamite.")
        processor = json.loads((folder / "preprocessor_config.json").read_text())
        assert set(processor["auto_map"]) == {"AutoImageProcessor", "AutoProcessor"}
    code = sorted(path.name for path in output.glob("*.py"))
    assert "pipeline_dynamite.py" in code and code == sorted(path.name for path in exported.glob("*.py"))
    assert (output / "model.safetensors").read_bytes() == (exported / "model.safetensors").read_bytes()


def _wait_for_step(log: Path, process: subprocess.Popen, step: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not re.search(rf"\| {step}/", log.read_text().replace("\r", "\n")):
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)


@pytest.mark.slow
@requires_data
def test_ctrl_c_saves_a_checkpoint_and_prints_the_command_that_resumes(data, tmp_path) -> None:
    output, log = tmp_path / "run", tmp_path / "log.txt"
    args = ["--dataset", str(data), "--output-dir", str(output), "--max-steps", "100000", *QUICK]
    command = [sys.executable, str(ROOT / "train_accelerate.py"), *args, "--max-num-interactions", "1"]
    with open(log, "w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=environment(), cwd=ROOT)
    try:
        _wait_for_step(log, process, 3)
        process.send_signal(signal.SIGINT)
        returncode = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    text = log.read_text()
    assert returncode == 130, text[-3000:]
    assert "Traceback" not in text
    assert "SIGINT: stopping after this step and saving a checkpoint (Ctrl-C again quits without saving)" in text
    stopped = re.search(r"stopped at step (\d+) of 100000 \(SIGINT\); checkpoint: (\S+)\nResume with:\n  (.+)\n", text)
    assert stopped, text[-3000:]
    step, checkpoint, resume = int(stopped[1]), Path(stopped[2]), shlex.split(stopped[3])
    assert step >= 3 and checkpoint == output / "checkpoints" / f"step_{step}"
    assert (checkpoint / "model.safetensors").is_file() and not list(checkpoint.parent.glob("*.partial"))
    assert resume[:2] == ["python", str(ROOT / "train_accelerate.py")]
    assert resume[-2:] == ["--resume-from-checkpoint", "latest"] and resume[2:-2] == command[2:]
    # the printed command continues the run (for two more steps here)
    resume[resume.index("--max-steps") + 1] = str(step + 2)
    continued = train(resume[2:])
    assert f"resumed from {checkpoint} at step {step}" in continued.stdout
    assert summary(output)["steps"] == step + 2


@requires_data
@pytest.mark.slow
def test_two_processes_stop_together_on_ctrl_c_and_a_one_process_resume_says_what_changes(data, tmp_path) -> None:
    """Ctrl-C in the terminal of `accelerate launch --multi_gpu` (SIGINT to the whole process group, which the
    launcher forwards once more): both processes stop at the same step, one checkpoint, one resume command."""
    output, log = tmp_path / "run", tmp_path / "log.txt"
    args = ["--dataset", str(data), "--output-dir", str(output), "--max-steps", "100000", *QUICK]
    launcher = [*LAUNCH, "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--dynamo_backend", "no"]
    launcher += ["--main_process_port", str(free_port())]
    command = [*launcher, str(ROOT / "train_accelerate.py"), *args]
    with open(log, "w") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, env=environment(), cwd=ROOT, start_new_session=True
        )
    try:
        _wait_for_step(log, process, 3)
        os.killpg(process.pid, signal.SIGINT)
        returncode = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    text = log.read_text()
    assert returncode != 0
    assert len(re.findall("stopped at step", text)) == 1, text[-3000:]
    # one notice (process 0's), without the quit hint: the launcher's forwarded signal must not quit the run
    assert len(re.findall(r"SIGINT: stopping after this step and saving a checkpoint\n", text)) == 1
    step = int(re.search(r"stopped at step (\d+) of 100000", text)[1])
    assert "accelerate launch <the same launch options> " in text
    assert [p.name for p in (output / "checkpoints").iterdir()] == [f"step_{step}"]
    assert {p.name for p in (output / "checkpoints" / f"step_{step}").glob("random_states_*")} == {
        "random_states_0.pkl",
        "random_states_1.pkl",
    }
    resumed = train([*args[:5], str(step + 1), *args[6:], "--resume-from-checkpoint", "latest"])
    warning = resumed.stderr[resumed.stderr.index("warning: --resume-from-checkpoint") :]
    assert "written by a run of 2 process(es) x batch 2 x 1 accumulation step(s) = 4 samples a step" in warning
    assert "it resumes on 1 x 2 x 1 = 2" in warning
    assert "To keep 4 samples a step, use --gradient-accumulation-steps 2." in warning
    assert f"continues at sample {step * 4}" in warning
    assert summary(output)["steps"] == step + 1


def test_a_second_ctrl_c_quits_at_once_except_under_torchrun(monkeypatch) -> None:
    from dynamite_hf.training.launch import StopRequest

    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN for a job started in the background
    stop = StopRequest(announce=False)
    with stop.installed():
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
    # under torchrun (accelerate launch --multi_gpu) every Ctrl-C arrives twice: repeats are ignored
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    stop = StopRequest(announce=False)
    with stop.installed():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.signal_name == "SIGTERM"


# -- arguments ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("learning_rate", -1.0, "--learning-rate must be a positive number, got -1.0"),
        ("learning_rate", float("nan"), "--learning-rate must be a positive number"),
        ("weight_decay", -0.1, "--weight-decay must be at least 0"),
        ("max_scale", 0.05, "--max-scale must be at least --min-scale"),
        ("crop_size", 100, "--crop-size must be a multiple of 32"),
        ("max_num_interactions", -1, "--max-num-interactions must be at least 0"),
        ("mixed_precision", "fp32", "--mixed-precision must be no, bf16 or fp16"),
        ("lr_milestones", "0.5,late", "--lr-milestones must be comma-separated numbers"),
        ("preset", "resnet50", "--init imagenet needs --preset mobilenet_v2"),
        ("config_overrides", "hidden_dim=48", "--config-overrides: pixel_decoder_dim"),
        ("from_pretrained", "runs/nowhere", "--from-pretrained runs/nowhere: no such file or folder"),
    ],
)
def test_arguments_are_checked_before_anything_is_built(flag, value, message, tmp_path, monkeypatch) -> None:
    # In a project with a runs/ folder, runs/nowhere is a mistyped local path, not the Hub id owner "runs".
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    arguments = DynamiteTrainingArguments(dataset=["data/x"], output_dir="runs/x", **{flag: value})
    with pytest.raises(ValueError, match=re.escape(message)):
        arguments.check()


class ModelBuilt(Exception):
    """Raised in place of building the model: the run got past every check before it."""


@pytest.fixture
def until_the_model(monkeypatch):
    """train() in this process up to where it builds the model, without the environment of an enclosing launch:
    returns the mixed precision Accelerate was set to by then (any earlier error propagates). Accelerate's process
    state is reset after every call."""
    from accelerate.state import AcceleratorState

    from dynamite_hf.training import trainer

    def build_model(arguments):
        raise ModelBuilt(AcceleratorState().mixed_precision)

    monkeypatch.setattr(trainer, "build_model", build_model)
    for name in [k for k in os.environ if k.startswith(("ACCELERATE_", "MASTER_"))]:
        monkeypatch.delenv(name)

    def run(arguments: DynamiteTrainingArguments) -> str:
        try:
            trainer.train(arguments)
        except ModelBuilt as built:
            return built.args[0]
        finally:
            AcceleratorState._reset_state(True)
        raise AssertionError("train() returned without building the model")

    return run


@requires_data
def test_the_runs_inputs_are_checked_before_the_model_is_built(until_the_model, data, tmp_path, monkeypatch) -> None:
    from dynamite_hf.training import TrainingSetupError

    def arguments(**values) -> DynamiteTrainingArguments:
        return DynamiteTrainingArguments(**{"dataset": [str(data)], "output_dir": str(tmp_path / "run"), **values})

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()  # so that runs/coco129 is a mistyped local path, not a Hub id
    with pytest.raises(TrainingSetupError, match="--dataset runs/coco129: no such folder"):
        until_the_model(arguments(dataset=["runs/coco129"]))
    with pytest.raises(TrainingSetupError, match="--resume-from-checkpoint latest: .* holds no step_N checkpoint"):
        until_the_model(arguments(resume_from_checkpoint="latest"))
    with pytest.raises(TrainingSetupError, match=r"fp16 \(from --mixed-precision\) needs a GPU"):
        until_the_model(arguments(mixed_precision="fp16"))
    # what `accelerate launch --num_processes 2` (no --multi_gpu) exports to the one process it starts
    launcher = {"ACCELERATE_DYNAMO_BACKEND": "NO", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    with monkeypatch.context() as launched:
        for name, value in launcher.items():
            launched.setenv(name, value)
        with pytest.raises(TrainingSetupError, match="started only this one"):
            until_the_model(arguments())
    assert until_the_model(arguments()) == "no"


@requires_data
def test_mixed_precision_comes_from_the_launcher_unless_the_flag_sets_it(until_the_model, data, tmp_path, monkeypatch):
    arguments = DynamiteTrainingArguments(dataset=[str(data)], output_dir=str(tmp_path / "run"))
    assert until_the_model(arguments) == "no"
    # `accelerate launch --mixed_precision bf16`, or an `accelerate config` saying bf16, exports this
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert until_the_model(arguments) == "bf16"
    arguments.mixed_precision = "no"
    assert until_the_model(arguments) == "no"
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    arguments.mixed_precision = "bf16"
    assert until_the_model(arguments) == "bf16"


@requires_data
def test_a_new_run_into_a_used_folder_refuses_unless_it_resumes_or_starts_clean(until_the_model, data, tmp_path):
    used = tmp_path / "used"
    (used / "checkpoints" / "step_5").mkdir(parents=True)
    (used / "model.safetensors").write_bytes(b"the earlier run's model")
    (used / "notes.txt").write_text("the user's own file")
    arguments = DynamiteTrainingArguments(dataset=[str(data)], output_dir=str(used))
    with pytest.raises(ValueError, match=rf"--output-dir {used} holds an earlier run \(checkpoints/step_5; model"):
        until_the_model(arguments)
    assert (used / "model.safetensors").is_file()
    arguments.resume_from_checkpoint = "latest"  # resuming is allowed; but this step_5 is no checkpoint
    with pytest.raises(ValueError, match="--resume-from-checkpoint latest: .*step_5 is not a checkpoint"):
        until_the_model(arguments)
    (used / "checkpoints" / "step_5" / "model.safetensors").write_bytes(b"")
    assert until_the_model(arguments) == "no"
    arguments.resume_from_checkpoint, arguments.overwrite_output_dir = None, True
    assert until_the_model(arguments) == "no"
    assert sorted(p.name for p in used.iterdir()) == ["notes.txt"]


def test_the_cli_reports_a_bad_argument_without_a_traceback(capsys) -> None:
    import train_accelerate

    with pytest.raises(SystemExit) as exit:
        train_accelerate.main(["--dataset", "d", "--output-dir", "o", "--learning-rate", "-1"])
    assert exit.value.code == 2
    assert "error: --learning-rate must be a positive number, got -1.0" in capsys.readouterr().err
