"""kdtui: compress BERT-family models from the terminal (Meta-KD distillation, CAP pruning)."""

__version__ = "0.1.0"
