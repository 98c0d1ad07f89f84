"""DynaMITe as transformers keeps a model: configuration, modeling (backbones, pixel decoder, interactive
transformer), image processing, the processor and the pipeline. The files import only each other, torch,
transformers, numpy and PIL, so they travel with every saved model folder as its remote code (`dynamite_hf.hub`)."""
