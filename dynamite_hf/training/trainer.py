"""The training loop with Accelerate (spec section 2.4): one CPU process to many GPUs and nodes unchanged.

Each process reads its own deterministic share of the sample stream (`data.TrainingOrder`), so the
dataloader is not wrapped by Accelerate; the model and optimiser are (DDP over gloo on CPU, NCCL on GPU).
All randomness of a step (sample order, augmentation, clicks, the number of corrective passes, the loss's
point sampling) is derived from the seed, the process index and the micro-step, so a run resumed from
`save_state` continues exactly as the uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

from ..models.dynamite.configuration_dynamite import DynamiteConfig
from ..models.dynamite.image_processing_dynamite import DynamiteImageProcessor
from ..models.dynamite.modeling_dynamite import DynamiteModel
from .data import DynamiteTrainingDataset, TrainingOrder, collate
from .imagenet import load_imagenet_backbone
from .loss import click_disk_points, deep_supervision_loss
from .module import DynamiteForInteractiveTraining, multistep_schedule, parameter_groups, supervised_aux_count

logger = logging.getLogger(__name__)

ORIGINAL_SEED = 2091831170
# detectron2's LR steps of the released ep50 configs, as fractions of the 184,375 iterations.
ORIGINAL_MILESTONES = (163889 / 184375, 177546 / 184375)


@dataclass
class DynamiteTrainingArguments:
    """Arguments of `train_accelerate.py` (every field is a `--flag`)."""

    dataset: list[str] = field(
        metadata={"help": "save_to_disk folder(s) or Hub id(s) of scripts/build_dataset.py datasets (concatenated)"}
    )
    output_dir: str = field(metadata={"help": "checkpoints, logs and the final save_pretrained model"})
    preset: str = field(default="mobilenet_v2", metadata={"help": "model preset (see DynamiteConfig.from_preset)"})
    init: str = field(
        default="imagenet",
        metadata={"help": "imagenet (ImageNet backbone, mobilenet_v2 only) or scratch; ignored with --from-pretrained"},
    )
    from_pretrained: str | None = field(
        default=None,
        metadata={"help": "start from a save_pretrained folder / Hub id, or an original .pth checkpoint (converted)"},
    )
    config_overrides: str | None = field(
        default=None, metadata={"help": "comma-separated key=value config overrides, e.g. encoder_layers=3"}
    )
    crop_size: int = field(default=1024, metadata={"help": "square training crop (the paper: 1024)"})
    min_scale: float = field(default=0.1, metadata={"help": "large-scale jitter, smallest scale"})
    max_scale: float = field(default=2.0, metadata={"help": "large-scale jitter, largest scale"})
    min_area: int = field(default=400, metadata={"help": "instances of at most this many pixels are not used"})
    max_instances: int = field(default=30, metadata={"help": "subsampling cap per image"})
    batch_size: int = field(default=2, metadata={"help": "images per process and micro-step (the paper: 2 x 16 GPUs)"})
    gradient_accumulation_steps: int = field(default=1)
    max_steps: int = field(default=184375, metadata={"help": "optimiser steps (the paper: 184,375)"})
    learning_rate: float = field(default=1e-4)
    weight_decay: float = field(default=0.05)
    backbone_lr_multiplier: float = field(default=0.1)
    clip_grad_norm: float = field(default=0.01, metadata={"help": "full-model L2 norm clip (the original: 0.01)"})
    lr_milestones: str = field(
        default=",".join(f"{m:.6f}" for m in ORIGINAL_MILESTONES),
        metadata={"help": "LR drops (x gamma) as fractions of max_steps (values >= 1 are steps)"},
    )
    lr_gamma: float = field(default=0.1)
    warmup_steps: int = field(default=10)
    warmup_factor: float = field(default=1.0, metadata={"help": "detectron2's default 1.0 means no warm-up"})
    max_num_interactions: int = field(default=3, metadata={"help": "corrective passes per step drawn from 0..this"})
    corrective_clicks_first_image_only: bool = field(
        default=False, metadata={"help": "reproduce the original's quirk: corrective clicks for the first image only"}
    )
    num_points: int = field(default=12544, metadata={"help": "loss points per mask"})
    click_loss_radius: int = field(
        default=-1,
        metadata={
            "help": "also supervise every pixel within this radius of each click (-1: only the paper's sampled points)"
        },
    )
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 (GPU) or bf16"})
    seed: int = field(default=ORIGINAL_SEED)
    num_workers: int = field(default=0, metadata={"help": "dataloader worker processes per process"})
    checkpoint_every: int = field(default=1000, metadata={"help": "save_state every N steps (0: only at the end)"})
    checkpoints_total_limit: int = field(default=3)
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "a checkpoint folder, or 'latest'"})
    log_every: int = field(default=10)
    report_to: str = field(default="tensorboard", metadata={"help": "Accelerate tracker(s), comma-separated, or none"})
    eval_every: int = field(default=0, metadata={"help": "evaluate NoC every N steps on the main process (0: never)"})
    eval_dataset: str = field(default="grabcut")
    eval_data_root: str | None = field(default=None)
    eval_limit: int = field(default=10, metadata={"help": "objects evaluated each time"})
    click_loss_weight: float = field(
        default=1.0, metadata={"help": "weight of each click point against one sampled point (--click-loss-radius)"}
    )
    collective_timeout: float = field(
        default=1800,
        metadata={
            "help": "seconds a multi-process collective (gradient all-reduce, barrier, gather) may wait before the "
            "run stops with an error naming the process and the step"
        },
    )
    push_to_hub: bool = field(default=False)
    hub_model_id: str | None = field(default=None)

    def milestones(self) -> list[int]:
        values = [float(v) for v in self.lr_milestones.split(",") if v.strip()]
        return [int(round(v * self.max_steps)) if v < 1 else int(v) for v in values]

    def check(self) -> None:
        if self.init not in ("imagenet", "scratch"):
            raise ValueError(f"--init must be 'imagenet' or 'scratch', got {self.init!r}")
        for name in ("crop_size", "batch_size", "gradient_accumulation_steps", "max_steps", "num_points"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.crop_size % 32:
            raise ValueError(f"--crop-size must be a multiple of 32, got {self.crop_size}")
        if self.eval_every and not self.eval_data_root:
            raise ValueError("--eval-every needs --eval-data-root (the benchmark folder to evaluate on)")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push-to-hub needs --hub-model-id")


@dataclass
class TrainingState:
    """What `save_state` keeps beside the model, optimiser and scheduler: the position in the run."""

    step: int = 0
    micro_step: int = 0
    skipped: dict = field(default_factory=dict)

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.step, self.micro_step, self.skipped = state["step"], state["micro_step"], dict(state["skipped"])


def parse_overrides(text: str | None) -> dict:
    overrides = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, separator, value = item.partition("=")
        if not separator:
            raise ValueError(f"--config-overrides items must be key=value, got {item!r}")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return overrides


def build_model(arguments: DynamiteTrainingArguments) -> DynamiteModel:
    overrides = parse_overrides(arguments.config_overrides)
    source = arguments.from_pretrained
    if source and Path(source).is_file():
        from ..conversion import infer_preset, load_original_state_dict, read_original_checkpoint

        state_dict = read_original_checkpoint(source)
        model = DynamiteModel(DynamiteConfig.from_preset(infer_preset(state_dict), **overrides))
        load_original_state_dict(model, state_dict)
        return model
    if source:
        return DynamiteModel.from_pretrained(source, **overrides)
    model = DynamiteModel(DynamiteConfig.from_preset(arguments.preset, **overrides))
    return load_imagenet_backbone(model) if arguments.init == "imagenet" else model


def build_processor(arguments: DynamiteTrainingArguments) -> DynamiteImageProcessor:
    """The image processor saved with the trained model: the starting folder's, else the preset's (the released
    models' for a converted checkpoint)."""
    source = arguments.from_pretrained
    if source and Path(source).is_file():
        from ..conversion import infer_preset, read_original_checkpoint

        return DynamiteImageProcessor.from_preset(infer_preset(read_original_checkpoint(source)))
    if source:
        return DynamiteImageProcessor.from_pretrained(source)
    return DynamiteImageProcessor.from_preset(arguments.preset)


def load_training_dataset(names: list[str]):
    import datasets

    parts = []
    for name in names:
        path = Path(name)
        if path.exists():
            loaded = datasets.load_from_disk(str(path))
            parts.append(loaded["train"] if isinstance(loaded, datasets.DatasetDict) else loaded)
        else:
            parts.append(datasets.load_dataset(name, split="train"))
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer (names and bytes): equal digests mean identical weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _latest_checkpoint(folder: Path) -> Path | None:
    found = sorted(folder.glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    return found[-1] if found else None


class CollectiveTimeout(RuntimeError):
    """A multi-process collective failed or waited past `--collective-timeout`: another process died or hangs."""


_COLLECTIVE_FAILURE_WORDS = ("timed out", "timeout", "connection closed", "connection reset", "broken pipe")


@contextmanager
def collective_failures_named(rank: int, world: int, state: TrainingState, timeout: float) -> Iterator[None]:
    """Turn a collective's timeout or a lost peer into an error that names this process and the step, so a
    hung run ends (and can be resumed from its last checkpoint) instead of waiting forever."""
    try:
        yield
    except RuntimeError as error:
        failed = isinstance(error, torch.distributed.DistError) or any(
            word in str(error).lower() for word in _COLLECTIVE_FAILURE_WORDS
        )
        if world == 1 or not failed:
            raise
        raise CollectiveTimeout(
            f"process {rank} of {world}: a collective operation (gradient all-reduce, barrier or gather) failed or "
            f"waited more than {timeout:g} s at step {state.step} (micro-step {state.micro_step}); another process "
            f"died or hangs. Resume with --resume-from-checkpoint latest. Cause: {error}"
        ) from error


def evaluate_noc(model: DynamiteModel, processor: DynamiteImageProcessor, samples) -> dict[str, float]:
    from ..evaluation import evaluate_single_instance, single_instance_metrics
    from ..evaluation.protocols import ModelSegmenter
    from ..predictor import DynamitePredictor

    result = evaluate_single_instance(ModelSegmenter(DynamitePredictor(model, processor)), samples, progress=False)
    metrics = single_instance_metrics(result)
    return {f"eval/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def train(arguments: DynamiteTrainingArguments) -> dict:
    """Run (or resume) training; returns the summary also written to `<output_dir>/train_summary.json`. In a
    multi-process run every process exits at the end instead (after the outputs are written; see below)."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs, gather_object
    from tqdm.auto import tqdm

    arguments.check()
    output_dir = Path(arguments.output_dir)
    trackers = [t for t in arguments.report_to.split(",") if t and t != "none"]
    on_cpu = not (torch.cuda.is_available() or torch.backends.mps.is_available())
    accelerator = Accelerator(
        # backend None: Accelerate picks gloo / NCCL itself (and no process group at all for one process).
        kwargs_handlers=[InitProcessGroupKwargs(backend=None, timeout=timedelta(seconds=arguments.collective_timeout))],
        # Without an accelerator device, processes started by `accelerate launch --multi_gpu` / torchrun join
        # over gloo on the CPU (Accelerate only picks MULTI_CPU when told the run is on the CPU).
        cpu=on_cpu,
        gradient_accumulation_steps=arguments.gradient_accumulation_steps,
        mixed_precision=arguments.mixed_precision,
        log_with=trackers or None,
        project_dir=str(output_dir),
        step_scheduler_with_optimizer=False,
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    torch.manual_seed(arguments.seed + rank)

    model = build_model(arguments)
    processor = build_processor(arguments)
    # Process 0's initial weights (the ones DDP broadcasts): a re-run of the same command starts from these.
    initial_digest = weights_digest(model) if rank == 0 else None
    dataset = load_training_dataset(arguments.dataset)
    training_data = DynamiteTrainingDataset(
        dataset,
        arguments.crop_size,
        arguments.seed,
        processor.image_mean,
        processor.image_std,
        arguments.min_area,
        arguments.max_instances,
        arguments.min_scale,
        arguments.max_scale,
    )
    module = DynamiteForInteractiveTraining(model, arguments.corrective_clicks_first_image_only)
    module.train()
    optimizer = torch.optim.AdamW(
        parameter_groups(model, arguments.learning_rate, arguments.weight_decay, arguments.backbone_lr_multiplier),
        lr=arguments.learning_rate,
    )
    milestones = arguments.milestones()
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: multistep_schedule(
            step, milestones, arguments.lr_gamma, arguments.warmup_steps, arguments.warmup_factor
        ),
    )
    module, optimizer = accelerator.prepare(module, optimizer)
    state = TrainingState()
    accelerator.register_for_checkpointing(scheduler, state)

    checkpoints = output_dir / "checkpoints"
    if arguments.resume_from_checkpoint:
        path = (
            _latest_checkpoint(checkpoints)
            if arguments.resume_from_checkpoint == "latest"
            else Path(arguments.resume_from_checkpoint)
        )
        if path is None or not path.is_dir():
            raise FileNotFoundError(f"--resume-from-checkpoint: no checkpoint at {arguments.resume_from_checkpoint!r}")
        accelerator.load_state(str(path))
        accelerator.print(f"resumed from {path} at step {state.step}")
    if trackers:
        accelerator.init_trackers("dynamite", config={k: str(v) for k, v in asdict(arguments).items()})

    eval_samples = None
    if arguments.eval_every and accelerator.is_main_process:
        from ..data.benchmarks import read_dataset

        eval_samples = read_dataset(arguments.eval_dataset, arguments.eval_data_root)[: arguments.eval_limit]

    order = TrainingOrder(arguments.batch_size, rank, world, start=state.micro_step)
    loader = torch.utils.data.DataLoader(
        training_data, batch_sampler=order, collate_fn=collate, num_workers=arguments.num_workers
    )
    aux_count = supervised_aux_count(model)
    unwrapped = accelerator.unwrap_model(module)
    skipped = Counter(state.skipped)
    progress = tqdm(
        total=arguments.max_steps, initial=state.step, desc="training", disable=not accelerator.is_local_main_process
    )
    samples_done, timed_seconds, timed_from = 0, 0.0, None
    running: dict[str, float] = {}
    last_logs: dict[str, float] = {}
    with collective_failures_named(rank, world, state, arguments.collective_timeout):
        batches = iter(loader)
        while state.step < arguments.max_steps:
            batch = next(batches)
            skipped.update(batch.skipped)
            started = time.perf_counter()
            rng = np.random.default_rng([arguments.seed, rank, state.micro_step])
            generator = torch.Generator(device="cpu").manual_seed(int(rng.integers(2**62)))
            with accelerator.accumulate(module):
                with accelerator.autocast():
                    outputs = module(
                        batch.pixel_values.to(accelerator.device),
                        batch.instance_maps,
                        batch.padding_masks,
                        batch.clicks,
                        int(rng.integers(0, arguments.max_num_interactions + 1)),
                        rng,
                        aux_count,
                    )
                targets = []
                for instance_map, padding in zip(batch.instance_maps, batch.padding_masks, strict=True):
                    count = int(instance_map.max())
                    stacked = np.concatenate(
                        [
                            instance_map[None] == np.arange(1, count + 1)[:, None, None],
                            ((instance_map == 0) & ~padding)[None],
                        ]
                    )
                    targets.append(torch.from_numpy(stacked).to(accelerator.device))
                num_masks = torch.tensor(float(sum(len(t) for t in targets)), device=accelerator.device)
                num_masks = max(float(accelerator.reduce(num_masks, reduction="sum")) / world, 1.0)
                extra_points, extra_weight = None, 1.0
                if arguments.click_loss_radius >= 0:
                    size = tuple(batch.pixel_values.shape[-2:])
                    extra_points = [click_disk_points(c, size, arguments.click_loss_radius) for c in outputs.clicks]
                    extra_weight = arguments.click_loss_weight
                loss, logs = deep_supervision_loss(
                    outputs.pred_masks.float(),
                    [a.float() for a in outputs.aux_pred_masks],
                    outputs.query_labels,
                    [t.float() for t in targets],
                    num_masks,
                    generator=generator,
                    num_points=arguments.num_points,
                    extra_points=extra_points,
                    extra_weight=extra_weight,
                )
                if not math.isfinite(logs["loss"]):
                    raise FloatingPointError(
                        f"the loss is {logs['loss']} at step {state.step} (positions {batch.positions})"
                    )
                accelerator.backward(loss)
                if accelerator.sync_gradients and arguments.clip_grad_norm > 0:
                    logs["grad_norm"] = float(
                        accelerator.clip_grad_norm_(module.parameters(), arguments.clip_grad_norm)
                    )
                optimizer.step()
                optimizer.zero_grad()
            state.micro_step += 1
            for key, value in logs.items():
                running[key] = running.get(key, 0.0) + value
            running["count"] = running.get("count", 0.0) + 1
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            state.step += 1
            state.skipped = dict(skipped)
            progress.update(1)
            # Throughput over every step but the first (which pays for warm-up and allocation).
            if timed_from is None:
                timed_from = state.step
            else:
                timed_seconds += time.perf_counter() - started
                samples_done += arguments.batch_size * world * arguments.gradient_accumulation_steps

            if state.step % arguments.log_every == 0 or state.step == arguments.max_steps:
                count = running.pop("count")
                last_logs = {f"train/{k}": v / count for k, v in running.items()}
                last_logs["train/lr"] = max(scheduler.get_last_lr())  # the head's (the backbone runs lower)
                last_logs["train/skipped_rows"] = float(sum(skipped.values()))
                running = {}
                accelerator.log(last_logs, step=state.step)
                progress.set_postfix(loss=f"{last_logs['train/loss']:.3f}")
            if arguments.eval_every and state.step % arguments.eval_every == 0:
                if accelerator.is_main_process:
                    metrics = evaluate_noc(unwrapped.model, processor, eval_samples)
                    accelerator.log(metrics, step=state.step)
                    accelerator.print(f"step {state.step}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
                    unwrapped.train()
                accelerator.wait_for_everyone()
            if arguments.checkpoint_every and state.step % arguments.checkpoint_every == 0:
                _save_checkpoint(
                    accelerator, checkpoints, state.step, arguments.checkpoints_total_limit, model.config, processor
                )
    progress.close()
    # (decided from the step, never from the file system, so every process takes part in the same collectives)
    if arguments.checkpoint_every and state.step % arguments.checkpoint_every:
        _save_checkpoint(
            accelerator, checkpoints, state.step, arguments.checkpoints_total_limit, model.config, processor
        )

    with collective_failures_named(rank, world, state, arguments.collective_timeout):
        digests = gather_object([weights_digest(unwrapped.model)])
    summary = {
        "steps": state.step,
        "micro_steps": state.micro_step,
        "samples_per_second": samples_done / timed_seconds if timed_seconds else None,
        "num_processes": world,
        "crop_size": arguments.crop_size,
        "skipped_rows": dict(skipped),
        "initial_weight_digest": initial_digest,
        "rank_weight_digests": digests,
        "last_logs": last_logs,
    }
    if skipped:
        accelerator.print(f"skipped {sum(skipped.values())} unusable row(s): {dict(skipped)}")
    with collective_failures_named(rank, world, state, arguments.collective_timeout):
        accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped.model.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
        (output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
        if arguments.push_to_hub:
            unwrapped.model.push_to_hub(arguments.hub_model_id)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Every output is written. Accelerate's end_training() tears the process group down, but the DDP wrapper's
        # reducer still holds it, and freeing that (when train() returns) ran gloo's destructor after the other
        # process had gone: it hung now and then (about 1 two-process run in 8 here, and once in CI). So the
        # processes leave together and exit without running it.
        with collective_failures_named(rank, world, state, arguments.collective_timeout):
            accelerator.wait_for_everyone()
        accelerator.end_training()
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(0)
    accelerator.end_training()
    return summary


def export_checkpoint(checkpoint: str | Path, output: str | Path, config_source: str | Path | None = None) -> Path:
    """A `save_pretrained` folder (model, processor config) from a `checkpoints/step_N` folder of a run."""
    from safetensors.torch import load_file

    checkpoint = Path(checkpoint)
    weights = checkpoint / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"--checkpoint: {checkpoint} holds no model.safetensors (a checkpoints/step_N folder?)")
    if (checkpoint / "config.json").is_file():
        source = checkpoint
    elif config_source is not None:
        source = Path(config_source)
    else:
        raise ValueError(f"--checkpoint: {checkpoint} has no config.json; give --config (the run's starting model)")
    model = DynamiteModel(DynamiteConfig.from_pretrained(source))
    state = {key.removeprefix("model."): value for key, value in load_file(weights).items()}
    model.load_state_dict(state, strict=True)
    model.save_pretrained(output)
    if (source / "preprocessor_config.json").is_file():
        DynamiteImageProcessor.from_pretrained(source).save_pretrained(output)
    else:
        DynamiteImageProcessor.from_preset(_preset_of(model.config)).save_pretrained(output)
    return Path(output)


def _preset_of(config: DynamiteConfig) -> str:
    """The preset whose processor fits `config` (the CPU preset's for MobileNetV2, else the original's)."""
    return "mobilenet_v2" if config.backbone_type == "mobilenet_v2" else "resnet50"


def _save_checkpoint(
    accelerator,
    folder: Path,
    step: int,
    total_limit: int,
    config: DynamiteConfig,
    processor: DynamiteImageProcessor,
) -> None:
    path = folder / f"step_{step}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        # So that scripts/export_checkpoint.py can turn the checkpoint into a model on its own.
        config.to_json_file(path / "config.json")
        processor.save_pretrained(path)
    if accelerator.is_main_process and total_limit > 0:
        for old in sorted(folder.glob("step_*"), key=lambda p: int(p.name.split("_")[1]))[:-total_limit]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
