"""The data both evaluation and training read, in one place:

- `benchmarks`: readers of the benchmark layouts on disk, yielding `EvaluationSample`s (the evaluation's item);
- `instances`: the Hugging Face `datasets` schema training reads, the readers of the layouts users have, and the
  conversion of evaluation samples to and from its rows;
- `synthetic`: generated training examples (textured shapes, copy-paste composites, photo regions);
- `sources`: a source spec (`KIND:PATH[:PATH]`) -> examples, from a reader or a generator.

Each imports only the ones listed before it.
"""
