"""llmkit: build language models from scratch and fine-tune them, driven by Hydra configs."""

__version__ = "0.1.0"
