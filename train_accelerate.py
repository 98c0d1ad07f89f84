"""Train DynaMITe with Accelerate on datasets built by scripts/build_dataset.py.

    # one CPU process, the CPU preset with its ImageNet backbone
    python train_accelerate.py --dataset data/coco128 --output-dir runs/cpu --crop-size 320 --max-steps 2000
    # several processes or GPUs, unchanged (gloo on CPU, NCCL on GPU; add --num_machines/--machine_rank for nodes)
    accelerate launch --num_processes 2 train_accelerate.py --dataset data/coco128 --output-dir runs/ddp
    # resume exactly where a run stopped
    python train_accelerate.py ... --resume-from-checkpoint latest

Every option: python train_accelerate.py --help (defaults follow the paper's recipe, spec section 2).
"""

from __future__ import annotations

import sys

from transformers import HfArgumentParser

from dynamite_hf.inference.runtime import tune_cpu_allocator
from dynamite_hf.training import DynamiteTrainingArguments, train


def main(argv: list[str] | None = None) -> None:
    parser = HfArgumentParser(DynamiteTrainingArguments, description=__doc__)
    (arguments,) = parser.parse_args_into_dataclasses(args=argv if argv is not None else sys.argv[1:])
    try:
        arguments.check()
    except ValueError as error:
        parser.error(str(error))
    tune_cpu_allocator()
    train(arguments)


if __name__ == "__main__":
    main()
