"""The data both evaluation and training read, in one place:

- `benchmarks`: readers of the benchmark layouts on disk, yielding `EvaluationSample`s (the evaluation's item);
- `instances`: the Hugging Face `datasets` schema training reads, its source readers, and the conversion of
  evaluation samples to and from its rows.

`instances` imports `benchmarks`, never the other way round. (`dynamite_hf.evaluation.datasets` and
`dynamite_hf.instance_datasets`, the former homes, re-export these names.)
"""
