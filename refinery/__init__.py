"""refinery: data-centric fine-tuning, one round at a time."""

__version__ = "0.1.0"
