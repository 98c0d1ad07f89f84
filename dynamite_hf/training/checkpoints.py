"""Where a run writes and what it resumes from: the output folder's rules, `save_state` checkpoints
(`<output_dir>/checkpoints/step_N`), and what changes when a run resumes with another process count or batch."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..models.dynamite.configuration_dynamite import DynamiteConfig
from ..models.dynamite.image_processing_dynamite import DynamiteImageProcessor

CHECKPOINTS = "checkpoints"
TRACKER_PROJECT = "dynamite"  # Accelerate's trackers log to <output_dir>/<project>
# Everything a run writes into its output folder.
RUN_OUTPUTS = (
    CHECKPOINTS,
    TRACKER_PROJECT,
    "train_summary.json",
    "model.safetensors",
    "config.json",
    "preprocessor_config.json",
)


def checkpoints_of(output_dir: str | Path) -> list[Path]:
    """The run's `step_N` checkpoints, oldest first."""
    folder = Path(output_dir) / CHECKPOINTS
    found = [p for p in folder.glob("step_*") if p.is_dir() and p.name.split("_", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("_", 1)[1]))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = checkpoints_of(output_dir)
    return found[-1] if found else None


def earlier_run_outputs(output_dir: str | Path) -> list[str]:
    """The names in `output_dir` that an earlier run wrote (empty for a new or unrelated folder)."""
    folder = Path(output_dir)
    checkpoints = [f"{CHECKPOINTS}/{p.name}" for p in checkpoints_of(folder)]
    return checkpoints + [name for name in RUN_OUTPUTS[1:] if (folder / name).exists()]


def check_output_dir(output_dir: str | Path, resuming: bool, overwrite: bool) -> None:
    """Refuse to train afresh into a folder an earlier run wrote: its checkpoints would sit beside the new ones
    (and `--resume-from-checkpoint latest` could pick them up) unless the run resumes it or starts clean."""
    found = earlier_run_outputs(output_dir)
    if found and not resuming and not overwrite:
        raise ValueError(
            f"--output-dir {output_dir} holds an earlier run ({'; '.join(found)}). Continue it with "
            "--resume-from-checkpoint latest, start clean with --overwrite-output-dir (deletes those files), or "
            "choose another --output-dir"
        )


def clear_run_outputs(output_dir: str | Path) -> list[str]:
    """Delete what an earlier run wrote into `output_dir` (only the names a run writes); returns them."""
    folder = Path(output_dir)
    removed = []
    for name in RUN_OUTPUTS:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def resolve_resume(output_dir: str | Path, value: str) -> Path:
    """The checkpoint `--resume-from-checkpoint VALUE` names: a `step_N` folder, or `latest` of this run."""
    if value == "latest":
        path = latest_checkpoint(output_dir)
        if path is None:
            raise FileNotFoundError(
                f"--resume-from-checkpoint latest: {Path(output_dir) / CHECKPOINTS} holds no step_N checkpoint "
                "(is --output-dir the run's folder? To start a new run, leave --resume-from-checkpoint out)"
            )
    else:
        path = Path(value)
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"--resume-from-checkpoint {value}: {path} is not a checkpoint (expected a <output-dir>/{CHECKPOINTS}/"
            "step_N folder holding model.safetensors, or 'latest')"
        )
    return path


def describe_batch_change(
    saved: tuple[int, int, int], current: tuple[int, int, int], step: int, max_steps: int, samples: int
) -> str | None:
    """What changes when a run saved with (processes, batch size, accumulation) `saved` resumes with `current`;
    None when nothing does."""
    if saved == current:
        return None
    (processes, batch, accumulation), (new_processes, new_batch, new_accumulation) = saved, current
    effective, new_effective = processes * batch * accumulation, new_processes * new_batch * new_accumulation
    text = (
        f"this checkpoint was written by a run of {processes} process(es) x batch {batch} x {accumulation} "
        f"accumulation step(s) = {effective} samples a step; it resumes on {new_processes} x {new_batch} x "
        f"{new_accumulation} = {new_effective}."
    )
    if new_effective != effective:
        text += (
            f" The remaining {max(max_steps - step, 0)} steps each see {new_effective} samples instead of "
            f"{effective}, with the same learning-rate schedule (by step)."
        )
        if effective % (new_processes * new_batch) == 0:
            keep = f"--gradient-accumulation-steps {effective // (new_processes * new_batch)}"
        elif effective % (new_processes * new_accumulation) == 0:
            keep = f"--batch-size {effective // (new_processes * new_accumulation)}"
        else:
            keep = None
        if keep:
            text += f" To keep {effective} samples a step, use {keep}."
    text += (
        f" The sample stream continues at sample {samples}, but the run will not equal an uninterrupted run "
        "(other samples per process, other random draws)."
    )
    return text


def save_checkpoint(
    accelerator,
    output_dir: Path,
    step: int,
    total_limit: int,
    config: DynamiteConfig,
    processor: DynamiteImageProcessor | None = None,
) -> Path:
    """`save_state` into `checkpoints/step_N` (with the model config and the image processor, so
    scripts/export_checkpoint.py can turn it into a model on its own), keeping the newest `total_limit` (0: all).
    Every process must call it.

    The state is written to `step_N.partial` and renamed when complete, so a run killed while saving never
    leaves a `step_N` that `--resume-from-checkpoint latest` would pick and fail to load."""
    folder = Path(output_dir) / CHECKPOINTS
    path, partial = folder / f"step_{step}", folder / f"step_{step}.partial"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)  # left by a save that was killed
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    if accelerator.is_main_process:
        config.to_json_file(partial / "config.json")
        if processor is not None:
            processor.save_pretrained(partial)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if path.exists():
            shutil.rmtree(path)
        partial.rename(path)
        if total_limit > 0:
            for old in checkpoints_of(output_dir)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return path
