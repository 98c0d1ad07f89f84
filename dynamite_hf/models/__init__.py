"""The models of this package, each in a flat folder that imports only itself, torch and transformers."""
