"""skip_weight_init: torch.nn.init leaves tensors alone in the calling thread only, and only inside the block."""

from __future__ import annotations

import threading

import torch
from torch import nn

from damage_smp.skip_init import skip_weight_init, skipping


def test_initialisers_leave_tensors_untouched_inside_the_block_and_work_after_it():
    t = torch.full((4, 5), 7.0)
    with skip_weight_init():
        assert skipping()
        for init in (nn.init.normal_, nn.init.zeros_, nn.init.kaiming_uniform_, nn.init.trunc_normal_):
            assert init(t) is t
        conv = nn.Conv2d(3, 4, 3)  # its reset_parameters calls kaiming_uniform_ / uniform_
        nn.init.constant_(conv.weight, 2.0)
        assert torch.equal(t, torch.full((4, 5), 7.0))
        assert not torch.all(conv.weight == 2.0)
    assert not skipping()
    nn.init.zeros_(t)
    assert torch.equal(t, torch.zeros(4, 5))
    nn.init.normal_(t)
    assert t.std() > 0.3


def test_other_threads_initialise_as_usual_while_one_thread_skips():
    inside, done = threading.Event(), threading.Event()
    seen = {}

    def other():
        inside.wait(10)
        t = torch.full((64,), 5.0)
        nn.init.zeros_(t)
        seen["other"] = (skipping(), float(t.abs().sum()))
        done.set()

    worker = threading.Thread(target=other)
    worker.start()
    with skip_weight_init():
        inside.set()
        assert done.wait(10)
        t = torch.full((64,), 5.0)
        nn.init.zeros_(t)
        seen["here"] = float(t.sum())
    worker.join()
    assert seen == {"other": (False, 0.0), "here": 320.0}


def test_nested_blocks_restore_the_outer_state():
    with skip_weight_init():
        with skip_weight_init():
            assert skipping()
        assert skipping()
    assert not skipping()
