"""Self-supervised pre-training on unlabelled scans: ``damage-smp pretrain INPUTS --out DIR``.

The whole network (encoder and decoder of the same smp arch/encoder that ``train`` uses) learns to restore random
native-resolution crops corrupted in the style of Models Genesis (``corrupt``); ``loop`` is the training loop, built
on train.py's pieces; ``config`` holds PretrainConfig. ``train --init-from DIR`` then starts encoder and decoder
from DIR/model.pt (pretrained.py), ``--encoder-weights DIR/encoder.pt`` the encoder alone.
"""

from .config import PretrainConfig

__all__ = ["PretrainConfig", "pretrain"]


def __getattr__(name: str):
    """``pretrain`` (the loop, which imports torch) on first use, so the CLI reads PretrainConfig without torch."""
    if name == "pretrain":
        from .loop import pretrain

        return pretrain
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
