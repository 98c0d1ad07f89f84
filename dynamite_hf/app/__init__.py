"""The Gradio app over `DynamitePredictor` (`app.py` at the repository root starts it)."""
