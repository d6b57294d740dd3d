"""Building a model whose every tensor a checkpoint is about to replace, without its random initialisation.

timm initialises an EfficientNet's weights in Python, one ``torch.nn.init`` call per layer, and smp builds the
encoder twice (once only to read its feature info). On the meta device those calls go through torch's Python
reference kernels, so they took ~85 of the ~135 ms that building Unet-lite0 for ``load_bundle`` cost
(docs/prediction.md). Inside ``skip_weight_init()`` the ``torch.nn.init`` functions return their tensor untouched
— in the calling thread only: every other thread initialises as usual — the way Hugging Face transformers'
``no_init_weights`` skips the initialisation of a model whose weights are loaded next. Use it only where the
caller then checks that every tensor came from the state dict (``models.model_with_weights``).
"""

from __future__ import annotations

import contextlib
import functools
import threading

from torch.nn import init

# the in-place initialisers of torch.nn.init (the deprecated names without "_" call these)
INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                  "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
                  "sparse_")  # fmt: skip
_state = threading.local()  # .skipping: this thread is inside skip_weight_init()
_install_lock = threading.Lock()
_installed = False


def skipping() -> bool:
    """Is this thread inside ``skip_weight_init()``?"""
    return getattr(_state, "skipping", False)


@contextlib.contextmanager
def skip_weight_init():
    """While the block runs, torch.nn.init's initialisers leave tensors as they are, in this thread."""
    _install()
    before = skipping()
    _state.skipping = True
    try:
        yield
    finally:
        _state.skipping = before


def _install() -> None:
    """Wrap each initialiser once (never removed): outside skip_weight_init() it is the original, called through."""
    global _installed
    with _install_lock:
        if _installed:
            return
        for name in INIT_FUNCTIONS:
            original = getattr(init, name, None)
            if original is not None:
                setattr(init, name, _skippable(original))
        _installed = True


def _skippable(original):
    @functools.wraps(original)
    def initialiser(tensor, *args, **kwargs):
        return tensor if skipping() else original(tensor, *args, **kwargs)

    return initialiser
