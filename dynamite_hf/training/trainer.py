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

from ..data.instances import is_hub_id, load_instance_dataset
from ..hub import push_to_hub as push_folder_to_hub
from ..hub import save_model_folder
from ..models.dynamite.configuration_dynamite import DynamiteConfig
from ..models.dynamite.image_processing_dynamite import DynamiteImageProcessor
from ..models.dynamite.modeling_dynamite import DynamiteModel
from .checkpoints import (
    TRACKER_PROJECT,
    check_output_dir,
    clear_run_outputs,
    describe_batch_change,
    resolve_resume,
    save_checkpoint,
)
from .data import DynamiteTrainingDataset, TrainingOrder, collate
from .imagenet import load_imagenet_backbone
from .launch import (
    INTERRUPTED_EXIT_CODE,
    StopRequest,
    check_launched_processes,
    describe_run,
    ignore_interrupts_in_worker,
    precision_source,
    resume_command,
)
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
    mixed_precision: str | None = field(
        default=None,
        metadata={
            "help": "no, bf16 (CPU or GPU) or fp16 (GPU); default: what `accelerate launch --mixed_precision` or "
            "`accelerate config` set, else no. The pixel decoder and the loss stay in float32, as in the original"
        },
    )
    seed: int = field(default=ORIGINAL_SEED)
    num_workers: int = field(default=0, metadata={"help": "dataloader worker processes per process"})
    checkpoint_every: int = field(
        default=1000, metadata={"help": "save_state every N steps, and always at the end (0: only at the end)"}
    )
    checkpoints_total_limit: int = field(default=3, metadata={"help": "checkpoints kept, the newest (0: all)"})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "a checkpoints/step_N folder, or 'latest' (the newest in --output-dir)"}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "start afresh in an --output-dir an earlier run wrote, deleting its checkpoints and model"},
    )
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
    push_to_hub: bool = field(
        default=False,
        metadata={
            "help": "upload the final model folder (weights, configs, code, train_summary.json and a model card) to "
            "--hub-model-id in one commit, as scripts/push_to_hub.py does"
        },
    )
    hub_model_id: str | None = field(default=None, metadata={"help": "the Hub repository of --push-to-hub: user/name"})

    def milestones(self) -> list[int]:
        values = [float(v) for v in self.lr_milestones.split(",") if v.strip()]
        return [int(round(v * self.max_steps)) if v < 1 else int(v) for v in values]

    def check(self) -> None:
        """Every argument against what it accepts, before anything is built (ValueError naming the flag)."""

        def flag(name: str) -> str:
            return "--" + name.replace("_", "-")

        if not self.dataset:
            raise ValueError("--dataset needs at least one dataset folder or Hub id")
        if self.init not in ("imagenet", "scratch"):
            raise ValueError(f"--init must be 'imagenet' or 'scratch', got {self.init!r}")
        if self.mixed_precision not in (None, "no", "fp16", "bf16"):
            raise ValueError(f"--mixed-precision must be no, bf16 or fp16, got {self.mixed_precision!r}")
        at_least = {
            "crop_size": 32,
            "batch_size": 1,
            "gradient_accumulation_steps": 1,
            "max_steps": 1,
            "num_points": 1,
            "max_instances": 1,
            "log_every": 1,
            "eval_limit": 1,
            "min_area": 0,
            "max_num_interactions": 0,
            "warmup_steps": 0,
            "num_workers": 0,
            "checkpoint_every": 0,
            "checkpoints_total_limit": 0,
            "eval_every": 0,
            "click_loss_radius": -1,
            "weight_decay": 0,
            "backbone_lr_multiplier": 0,
            "clip_grad_norm": 0,
            "warmup_factor": 0,
            "click_loss_weight": 0,
        }
        for name, minimum in at_least.items():
            if getattr(self, name) < minimum:
                raise ValueError(f"{flag(name)} must be at least {minimum}, got {getattr(self, name)}")
        for name in ("learning_rate", "min_scale", "lr_gamma", "collective_timeout"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{flag(name)} must be a positive number, got {value}")
        if self.max_scale < self.min_scale:
            raise ValueError(f"--max-scale must be at least --min-scale ({self.min_scale}), got {self.max_scale}")
        if self.crop_size % 32:
            raise ValueError(f"--crop-size must be a multiple of 32, got {self.crop_size}")
        try:
            milestones = self.milestones()
        except ValueError:
            raise ValueError(
                f"--lr-milestones must be comma-separated numbers (fractions of --max-steps, or steps), got "
                f"{self.lr_milestones!r}"
            ) from None
        if any(m < 0 for m in milestones):
            raise ValueError(f"--lr-milestones must not be negative, got {self.lr_milestones!r}")
        overrides = parse_overrides(self.config_overrides)
        if not self.from_pretrained:
            if self.init == "imagenet" and self.preset != "mobilenet_v2":
                raise ValueError(
                    f"--init imagenet needs --preset mobilenet_v2 (the only backbone whose ImageNet weights install "
                    f"offline), got --preset {self.preset}: use --init scratch or --from-pretrained"
                )
            try:  # the config is cheap: its own checks run before the model is built
                DynamiteConfig.from_preset(self.preset, **overrides)
            except (ValueError, TypeError) as error:
                raise ValueError(f"--preset {self.preset} / --config-overrides: {error}") from None
        elif not Path(self.from_pretrained).exists() and not is_hub_id(self.from_pretrained):
            raise ValueError(
                f"--from-pretrained {self.from_pretrained}: no such file or folder (a save_pretrained folder, an "
                "original .pth checkpoint, or a Hub id owner/name)"
            )
        if self.eval_every and not self.eval_data_root:
            raise ValueError("--eval-every needs --eval-data-root (the benchmark folder to evaluate on)")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push-to-hub needs --hub-model-id")
        if self.resume_from_checkpoint and self.overwrite_output_dir:
            raise ValueError(
                "--overwrite-output-dir deletes the checkpoints --resume-from-checkpoint would read: give one of them"
            )


@dataclass
class TrainingState:
    """What `save_state` keeps beside the model, optimiser and scheduler: the position in the run."""

    step: int = 0
    micro_step: int = 0
    skipped: dict = field(default_factory=dict)
    # The layout that wrote it, and the samples consumed, so a resume with another layout knows what changes.
    num_processes: int = 1
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    samples: int = 0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.step, self.micro_step, self.skipped = state["step"], state["micro_step"], dict(state["skipped"])
        # (checkpoints written before these fields: the current layout, as then nothing can be known to change)
        for name in ("num_processes", "batch_size", "gradient_accumulation_steps"):
            setattr(self, name, state.get(name, getattr(self, name)))
        self.samples = state.get("samples", self.micro_step * self.num_processes * self.batch_size)

    @property
    def layout(self) -> tuple[int, int, int]:
        return self.num_processes, self.batch_size, self.gradient_accumulation_steps


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


def load_training_datasets(names: list[str]) -> list[tuple[str, object]]:
    """Each `--dataset` as (name, `datasets.Dataset`): built folders, never sent to the Hub, or Hub ids."""
    return [(name, load_instance_dataset(name, argument="--dataset")) for name in names]


def count_instances(dataset) -> int:
    """Instances over every row (the length of each row's `areas`), read from the Arrow column."""
    import pyarrow.compute as pc

    return int(pc.sum(pc.list_value_length(dataset.with_format("arrow")["areas"])).as_py() or 0)


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer (names and bytes): equal digests mean identical weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


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


class TrainingSetupError(ValueError):
    """The run cannot start as asked (launch, precision, output folder, checkpoint or data); nothing was built."""


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped the run at a step boundary; `checkpoint` holds it, `resume` continues it."""

    def __init__(self, message: str, checkpoint: Path, resume: str) -> None:
        super().__init__(message)
        self.checkpoint, self.resume = checkpoint, resume


def train(arguments: DynamiteTrainingArguments) -> dict:
    """Run (or resume) training; returns the summary also written to `<output_dir>/train_summary.json`. In a
    multi-process run every process exits at the end instead (after the outputs are written; see below).

    Everything that can be checked is checked before the model is built: the arguments, the process count the
    launcher started, the precision on this device, the output folder, the checkpoint to resume and the
    datasets. Ctrl-C (or SIGTERM) stops after the current optimiser step with a checkpoint: `TrainingInterrupted`
    in one process, exit status 130 in several."""
    import datasets
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
        # None: what `accelerate launch` / `accelerate config` set (Accelerate's ACCELERATE_MIXED_PRECISION), as
        # Accelerate's own example scripts take it.
        mixed_precision=arguments.mixed_precision,
        log_with=trackers or None,
        project_dir=str(output_dir),
        step_scheduler_with_optimizer=False,
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    precision_from = precision_source(arguments.mixed_precision)
    try:
        check_launched_processes(world)
        if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
            raise ValueError(
                f"mixed precision fp16 (from {precision_from}) needs a GPU: on the CPU Accelerate would train in "
                "float32 without a word. Use bf16 on the CPU, or no"
            )
        resuming = arguments.resume_from_checkpoint is not None
        check_output_dir(output_dir, resuming=resuming, overwrite=arguments.overwrite_output_dir)
        resume_path = resolve_resume(output_dir, arguments.resume_from_checkpoint) if resuming else None
        datasets_by_name = load_training_datasets(arguments.dataset)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        raise TrainingSetupError(str(error)) from error
    if arguments.overwrite_output_dir:
        accelerator.wait_for_everyone()  # every process has checked the folder before it is emptied
        if accelerator.is_main_process:
            removed = clear_run_outputs(output_dir)
            if removed:
                accelerator.print(f"--overwrite-output-dir: deleted {', '.join(removed)} from {output_dir}")
        accelerator.wait_for_everyone()
    torch.manual_seed(arguments.seed + rank)

    model = build_model(arguments)
    processor = build_processor(arguments)
    # Process 0's initial weights (the ones DDP broadcasts): a re-run of the same command starts from these.
    initial_digest = weights_digest(model) if rank == 0 else None
    parts = [dataset for _, dataset in datasets_by_name]
    dataset = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
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
    state = TrainingState(
        num_processes=world,
        batch_size=arguments.batch_size,
        gradient_accumulation_steps=arguments.gradient_accumulation_steps,
    )
    layout = state.layout
    accelerator.register_for_checkpointing(scheduler, state)

    if resume_path is not None:
        accelerator.load_state(str(resume_path))
        accelerator.print(f"resumed from {resume_path} at step {state.step}")
        change = describe_batch_change(state.layout, layout, state.step, arguments.max_steps, state.samples)
        if change:
            accelerator.print(f"warning: --resume-from-checkpoint: {change}", file=sys.stderr)
        state.num_processes, state.batch_size, state.gradient_accumulation_steps = layout
    start_step = state.step
    if trackers:
        accelerator.init_trackers(TRACKER_PROJECT, config={k: str(v) for k, v in asdict(arguments).items()})

    eval_samples = None
    if arguments.eval_every and accelerator.is_main_process:
        from ..data.benchmarks import read_dataset

        eval_samples = read_dataset(arguments.eval_dataset, arguments.eval_data_root)[: arguments.eval_limit]

    order = TrainingOrder(arguments.batch_size, rank, world, start=state.micro_step, first_position=state.samples)
    loader = torch.utils.data.DataLoader(
        training_data,
        batch_sampler=order,
        collate_fn=collate,
        num_workers=arguments.num_workers,
        worker_init_fn=ignore_interrupts_in_worker,
    )
    aux_count = supervised_aux_count(model)
    unwrapped = accelerator.unwrap_model(module)
    skipped = Counter(state.skipped)

    with collective_failures_named(rank, world, state, arguments.collective_timeout):
        devices = gather_object([str(accelerator.device)])
    parameters = sum(p.numel() for p in model.parameters())
    accelerator.print(
        describe_run(
            num_processes=world,
            distributed_type=str(accelerator.distributed_type).split(".")[-1],
            devices=devices,
            threads=torch.get_num_threads(),
            mixed_precision=accelerator.mixed_precision,
            precision_from=precision_from,
            batch_size=arguments.batch_size,
            gradient_accumulation_steps=arguments.gradient_accumulation_steps,
            start_step=start_step,
            max_steps=arguments.max_steps,
            milestones=milestones,
            learning_rate=arguments.learning_rate,
            crop_size=arguments.crop_size,
            model=f"{model_origin(arguments)}, {parameters / 1e6:.1f} M parameters",
            datasets=[(name, len(part), count_instances(part)) for name, part in datasets_by_name],
            output_dir=str(output_dir),
            checkpoint_every=arguments.checkpoint_every,
            checkpoints_total_limit=arguments.checkpoints_total_limit,
        )
    )
    progress = tqdm(
        total=arguments.max_steps, initial=state.step, desc="training", disable=not accelerator.is_local_main_process
    )
    samples_done, timed_seconds, timed_from = 0, 0.0, None
    running: dict[str, float] = {}
    last_logs: dict[str, float] = {}
    saved_at = None
    stop = StopRequest(announce=accelerator.is_main_process)
    with collective_failures_named(rank, world, state, arguments.collective_timeout), stop.installed():
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
                # The loss outside autocast, in float32 (deep_supervision_loss casts), as the original's loss
                # ran: its point sampling (grid_sample) and BCE autocast to float32.
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
                    outputs.pred_masks,
                    outputs.aux_pred_masks,
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
            state.samples += arguments.batch_size * world
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
                save_checkpoint(
                    accelerator, output_dir, state.step, arguments.checkpoints_total_limit, model.config, processor
                )
                saved_at = state.step
            # Every process learns of a stop request at the same step (one all-reduce), so all save together.
            if stop.requested:
                accelerator.set_trigger()
            if accelerator.check_trigger():
                break
        progress.close()
        # (decided from the step, never from the file system, so every process takes part in the same collectives)
        if state.step > start_step and saved_at != state.step:
            save_checkpoint(
                accelerator, output_dir, state.step, arguments.checkpoints_total_limit, model.config, processor
            )
    checkpoint = output_dir / "checkpoints" / f"step_{state.step}"
    if state.step < arguments.max_steps:
        command = resume_command(world)
        cause = f" ({stop.signal_name})" if stop.signal_name else ""
        message = (
            f"stopped at step {state.step} of {arguments.max_steps}{cause}; checkpoint: {checkpoint}\n"
            f"Resume with:\n  {command}"
        )
        accelerator.print(message)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            _leave_together(accelerator, rank, world, state, arguments.collective_timeout, INTERRUPTED_EXIT_CODE)
        accelerator.end_training()
        raise TrainingInterrupted(message, checkpoint, command)

    with collective_failures_named(rank, world, state, arguments.collective_timeout):
        digests = gather_object([weights_digest(unwrapped.model)])
    summary = {
        "steps": state.step,
        "micro_steps": state.micro_step,
        "samples_per_second": samples_done / timed_seconds if timed_seconds else None,
        "num_processes": world,
        "mixed_precision": accelerator.mixed_precision,
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
        save_model_folder(unwrapped.model, processor, output_dir)
        (output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
        if arguments.push_to_hub:
            commit = push_folder_to_hub(output_dir, arguments.hub_model_id)
            accelerator.print(f"pushed to {commit.commit_url}")
        accelerator.print(f"model: {output_dir}; last checkpoint: {checkpoint}")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        _leave_together(accelerator, rank, world, state, arguments.collective_timeout, 0)
    accelerator.end_training()
    return summary


def _leave_together(accelerator, rank: int, world: int, state: TrainingState, timeout: float, status: int) -> None:
    """End every process of a multi-process run with `status`, once all outputs are written.

    Accelerate's end_training() tears the process group down, but the DDP wrapper's reducer still holds it, and
    freeing that (when train() returns) ran gloo's destructor after the other process had gone: it hung now and
    then (about 1 two-process run in 8 here, and once in CI). So the processes leave together and exit without
    running it."""
    with collective_failures_named(rank, world, state, timeout):
        accelerator.wait_for_everyone()
    accelerator.end_training()
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(status)


def model_origin(arguments: DynamiteTrainingArguments) -> str:
    """Where the model starts, in words, for the plan."""
    if arguments.from_pretrained:
        return f"from {arguments.from_pretrained}"
    start = "ImageNet backbone" if arguments.init == "imagenet" else "from scratch"
    return f"preset {arguments.preset}, {start}"


def export_checkpoint(checkpoint: str | Path, output: str | Path, config_source: str | Path | None = None) -> Path:
    """A model folder (`save_model_folder`: weights, configs, code) from a `checkpoints/step_N` folder of a run."""
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
    if (source / "preprocessor_config.json").is_file():
        processor = DynamiteImageProcessor.from_pretrained(source)
    else:
        processor = DynamiteImageProcessor.from_preset(_preset_of(model.config))
    return save_model_folder(model, processor, output)


def _preset_of(config: DynamiteConfig) -> str:
    """The preset whose processor fits `config` (the CPU preset's for MobileNetV2, else the original's)."""
    return "mobilenet_v2" if config.backbone_type == "mobilenet_v2" else "resnet50"
