"""Train DynaMITe with Accelerate on datasets built by scripts/build_dataset.py.

    # one CPU process, the CPU preset with its ImageNet backbone: 100 steps of about 5 s on 2 cores
    python train_accelerate.py --dataset data/coco128 --output-dir runs/cpu --crop-size 256 --max-steps 100
    # several processes (gloo on CPUs, NCCL on GPUs; add --num_machines/--machine_rank/--main_process_ip for nodes)
    accelerate launch --multi_gpu --num_processes 2 train_accelerate.py --dataset data/coco128 \
        --output-dir runs/ddp --crop-size 256 --max-steps 100
    # continue a run that stopped (Ctrl-C saves a checkpoint and prints this command)
    python train_accelerate.py ... --resume-from-checkpoint latest

Mixed precision comes from --mixed-precision, else from `accelerate launch --mixed_precision` or `accelerate config`.
Every option: python train_accelerate.py --help (defaults follow the paper's recipe, spec section 2).
"""

from __future__ import annotations

import os
import sys

from transformers import HfArgumentParser

from dynamite_hf.inference.runtime import tune_cpu_allocator
from dynamite_hf.training import DynamiteTrainingArguments, train
from dynamite_hf.training.launch import INTERRUPTED_EXIT_CODE
from dynamite_hf.training.trainer import TrainingInterrupted, TrainingSetupError


def main(argv: list[str] | None = None) -> None:
    parser = HfArgumentParser(DynamiteTrainingArguments, description=__doc__)
    (arguments,) = parser.parse_args_into_dataclasses(args=argv if argv is not None else sys.argv[1:])
    try:
        arguments.check()
    except ValueError as error:
        parser.error(str(error))
    tune_cpu_allocator()
    try:
        train(arguments)
    except TrainingSetupError as error:
        # (every process of a launch finds the same problem: one message)
        if os.environ.get("RANK", "0") == "0":
            print(f"{parser.prog}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except TrainingInterrupted:
        sys.exit(INTERRUPTED_EXIT_CODE)  # the checkpoint and the resume command are printed
    except KeyboardInterrupt:
        print(
            f"interrupted without saving; any earlier checkpoint is in {arguments.output_dir}/checkpoints "
            "(--resume-from-checkpoint latest)",
            file=sys.stderr,
        )
        sys.exit(INTERRUPTED_EXIT_CODE)


if __name__ == "__main__":
    main()
