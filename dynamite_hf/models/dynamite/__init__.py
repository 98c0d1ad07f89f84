"""DynaMITe as transformers keeps a model: configuration, modeling (backbones, pixel decoder, interactive
transformer) and image processing."""
