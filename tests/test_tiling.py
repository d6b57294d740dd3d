"""Sliding-window inference: coverage, odd shapes, blending against a naive reference, memory bound."""

from __future__ import annotations

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
from torch import nn

from damage_smp import tiling
from damage_smp.tiling import (
    gaussian_weights,
    iter_blended_rows,
    iter_tile_batches,
    pad_to_multiple,
    plan_tiles,
    predict_index,
    predict_probs,
    tile_grid,
)


class Pointwise(nn.Module):
    """1x1 conv on x / 255: no spatial context, so tiling must not change its output at all. Cheap."""

    def __init__(self, classes: int, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, classes, 1)
        nn.init.normal_(self.conv.weight, std=4.0)

    def forward(self, x):  # (N, 3, H, W) 0..255 -> (N, C, H, W)
        return self.conv(x / 255)


class SmallConv(nn.Module):
    """Three 3x3 convs (receptive field 7 px, zero padding): context effects limited to tile seams."""

    def __init__(self, classes: int, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, classes, 3, padding=1),
        )  # fmt: skip

    def forward(self, x):
        return self.net(x / 255 - 0.5)


class TinyUnet(nn.Module):
    """A real smp U-Net (resnet18, random weights) that normalises inside, like DamageModel."""

    def __init__(self, classes: int, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = smp.Unet("resnet18", encoder_weights=None, classes=classes)

    def forward(self, x):
        return self.net(x / 255)


def textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    """(h, w, 3) uint8: smooth colour regions plus noise (gives a conv net something to segment)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    region = (yy // 23 + xx // 37) % 4
    palette = np.array([[200, 60, 60], [60, 200, 60], [60, 60, 200], [200, 200, 60]])
    return (palette[region] + rng.integers(-40, 40, (h, w, 3))).clip(0, 255).astype(np.uint8)


def naive_blend(model, image: np.ndarray, num_classes: int, tile: int, overlap: float) -> torch.Tensor:
    """Reference: whole-image (C, H, W) accumulators, one tile at a time, written from the definition."""
    h, w = image.shape[:2]
    plan = plan_tiles(h, w, tile, overlap)
    x = tiling.pad_to(torch.from_numpy(image).permute(2, 0, 1), *plan.padded).float()
    acc, wsum = torch.zeros(num_classes, *plan.padded), torch.zeros(plan.padded)
    g = gaussian_weights(plan.tile)
    th, tw = plan.tile
    with torch.no_grad():
        for y, x0 in plan.coords:
            p = torch.softmax(model.eval()(x[None, :, y : y + th, x0 : x0 + tw]), 1)[0]
            acc[:, y : y + th, x0 : x0 + tw] += p * g
            wsum[y : y + th, x0 : x0 + tw] += g
    return (acc / wsum)[:, :h, :w]


# ------------------------------------------------------------------------------------------- geometry
def test_gaussian_weights_peak_in_centre_and_positive_borders():
    g = gaussian_weights(64)
    assert g.shape == (64, 64) and g.dtype == torch.float32
    assert g.max() == pytest.approx(1.0, abs=1e-3) and g[31:33, 31:33].min() > 0.99
    assert g.min() >= 1e-6 and g[0, 0] < 1e-4 and g[0, 32] >= 1e-3  # borders count, but little
    assert torch.equal(g, g.flip(0)) and torch.equal(g, g.flip(1)) and torch.equal(g, g.T)
    assert gaussian_weights((32, 96)).shape == (32, 96)


@pytest.mark.parametrize(
    "h, w, tile, overlap",
    [(512, 512, 512, 0.25), (1021, 767, 512, 0.25), (2000, 37, 32, 0.5), (700, 1300, 256, 0.0), (97, 65, 64, 0.9)],
)
def test_tile_grid_covers_every_pixel_and_stays_inside(h, w, tile, overlap):
    coords = tile_grid(h, w, tile, overlap)
    covered = np.zeros((h, w), np.int32)
    for y, x in coords:
        assert 0 <= y <= h - tile and 0 <= x <= w - tile
        covered[y : y + tile, x : x + tile] += 1
    assert covered.min() >= 1
    ys, xs = sorted({y for y, _ in coords}), sorted({x for _, x in coords})
    assert ys[0] == 0 and ys[-1] == h - tile and xs[0] == 0 and xs[-1] == w - tile  # flush with the border
    stride = max(1, int(tile * (1 - overlap)))
    assert all(b - a <= stride for a, b in zip(ys, ys[1:], strict=False))
    assert coords == sorted(coords)  # row-major: the strip accumulation relies on it


def test_plan_pads_only_small_sides_to_multiples_of_32():
    assert plan_tiles(37, 2000, 512).padded == (64, 2000) and plan_tiles(37, 2000, 512).tile == (64, 512)
    assert plan_tiles(5, 5, 512).padded == (32, 32) and plan_tiles(5, 5, 512).tile == (32, 32)
    assert plan_tiles(1021, 767, 512).padded == (1021, 767)  # big sides are never padded
    with pytest.raises(ValueError, match="--tile 500"):
        plan_tiles(100, 100, 500)
    with pytest.raises(ValueError, match="--overlap"):
        plan_tiles(100, 100, 64, overlap=1.0)


def test_pad_to_multiple_reflects_where_it_can_and_crops_back():
    t = torch.arange(2 * 40 * 50, dtype=torch.float32).reshape(2, 40, 50)
    p = pad_to_multiple(t)
    assert p.shape == (2, 64, 64)
    assert torch.equal(p[:, :40, :50], t)
    assert torch.equal(p[:, 40, :50], t[:, 38, :])  # reflected, not zero
    small = pad_to_multiple(torch.ones(3, 5, 5, dtype=torch.uint8))
    assert small.shape == (3, 32, 32) and small.dtype == torch.uint8 and small[:, 5:, :].sum() == 0  # constant
    assert pad_to_multiple(torch.ones(1, 3, 64, 96)).shape == (1, 3, 64, 96)
    mixed = pad_to_multiple(torch.arange(40 * 5, dtype=torch.float32).reshape(1, 40, 5))  # reflect H, zero W
    assert mixed.shape == (1, 64, 32) and torch.equal(mixed[0, 40, :5], mixed[0, 38, :5]) and mixed[0, :, 5:].sum() == 0


# ------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("h, w", [(1021, 767), (37, 2000), (5, 5)])
def test_output_is_exactly_the_input_size(h, w):
    image = textured(h, w)
    idx = predict_index(Pointwise(4), image, 4, tile=512, overlap=0.25, batch_size=4)
    assert idx.shape == (h, w) and idx.dtype == np.uint8 and idx.max() < 4


@pytest.mark.parametrize("h, w", [(37, 200), (5, 5)])
def test_odd_sizes_through_a_real_unet(h, w):
    model = TinyUnet(3)
    probs = predict_probs(model, textured(h, w), 3, tile=64, overlap=0.5)
    assert probs.shape == (3, h, w) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(0), torch.ones(h, w))


def test_tensor_and_array_inputs_agree():
    image = textured(70, 90)
    a = predict_index(SmallConv(3), image, 3, tile=64)
    b = predict_index(SmallConv(3), torch.from_numpy(image).permute(2, 0, 1), 3, tile=64)
    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------- blending
def test_strip_blending_equals_a_naive_whole_image_blend():
    """The ring-buffer strips give the probabilities of a plain (C, H, W) accumulation (float tolerance),
    with batches that span tile rows (batch_size 3) and a height that is not a multiple of the stride."""
    model, image = SmallConv(4), textured(170, 230)
    probs = predict_probs(model, image, 4, tile=64, overlap=0.5, batch_size=3)
    torch.testing.assert_close(probs, naive_blend(model, image, 4, 64, 0.5), atol=1e-5, rtol=1e-4)
    idx = predict_index(model, image, 4, tile=64, overlap=0.5, batch_size=3)
    np.testing.assert_array_equal(idx, probs.argmax(0).numpy())  # same code path: exact


@pytest.mark.parametrize("accum", [torch.float32, torch.float16])
def test_a_channels_last_model_blends_to_the_same_probabilities(accum):
    """The default model runs in channels_last: its output is softmaxed and blended in that layout (a band
    of (rows, W, C) memory, buffers reused between batches and blocks) and must give what the plain layout
    gives: the naive blend's probabilities, and the same classes."""
    model, image = SmallConv(5), textured(150, 210)
    model_cl = SmallConv(5).to(memory_format=torch.channels_last)
    plain = predict_probs(model, image, 5, tile=64, overlap=0.5, batch_size=3, accum_dtype=accum)
    assert tiling.STATS["n_tiles"] > 3  # several batches: the reused softmax buffer is written again
    cl = predict_probs(model_cl, image, 5, tile=64, overlap=0.5, batch_size=3, accum_dtype=accum)
    tol = {"atol": 1e-5, "rtol": 1e-4} if accum == torch.float32 else {"atol": 2e-3, "rtol": 2e-3}
    torch.testing.assert_close(cl, plain, **tol)
    torch.testing.assert_close(cl, naive_blend(model, image, 5, 64, 0.5), **tol)
    idx = predict_index(model_cl, image, 5, tile=64, overlap=0.5, batch_size=3, accum_dtype=accum)
    np.testing.assert_array_equal(idx, cl.argmax(0).numpy())  # same code path: exact
    with torch.no_grad():  # one tile: the softmax of the model's own channels_last output
        x = tiling.pad_to(torch.from_numpy(image[:64, :64]).permute(2, 0, 1), 64, 64).float()[None]
        logits = model_cl.eval()(x)
    assert not logits.is_contiguous()  # the layout the fast path is for
    one = predict_probs(model_cl, image[:64, :64], 5, tile=64)
    torch.testing.assert_close(one, torch.softmax(logits.contiguous(), 1)[0], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("h, w", [(64, 64), (40, 57)])  # exactly one tile, and one padded up to it
def test_one_tile_images_skip_blending_and_match_the_naive_blend(h, w):
    """An image one tile covers: the tile's softmax as it is (no window, no accumulators), which is what the
    naive weighted blend gives too; blocks come out of inference mode and in eval mode, as for many tiles."""
    model, image = SmallConv(4).train(), textured(h, w)
    probs = predict_probs(model, image, 4, tile=64, overlap=0.5)
    assert tiling.STATS["n_tiles"] == 1 and tiling.STATS["accumulator_bytes"] == 0
    torch.testing.assert_close(probs, naive_blend(model, image, 4, 64, 0.5), atol=1e-6, rtol=1e-5)
    padded = tiling.pad_to(torch.from_numpy(image).permute(2, 0, 1), 64, 64).float()[None]
    with torch.no_grad():
        exact = torch.softmax(model.eval()(padded), 1)[0, :, :h, :w]
    assert torch.equal(probs, exact)
    model.train()
    calls = []
    idx = predict_index(model, image, 4, tile=64, progress=lambda *a: calls.append(a))
    np.testing.assert_array_equal(idx, exact.argmax(0).numpy())
    assert calls == [(1, 1)] and model.training
    for *_, block in iter_blended_rows(model, image, 4, tile=64):
        assert not torch.is_inference_mode_enabled() and not model.training and block.shape == (4, h, w)
    assert model.training


def test_blended_blocks_cover_the_image_once_outside_inference_mode():
    """iter_blended_rows hands every pixel on exactly once, top to bottom, and never leaves the caller in
    inference mode between blocks (the caller may be a training loop)."""
    h, w = 150, 70
    seen = np.zeros((h, w), np.int32)
    last_row = 0
    for y0, y1, x0, x1, probs in iter_blended_rows(SmallConv(3), textured(h, w), 3, tile=64, overlap=0.5):
        assert not torch.is_inference_mode_enabled()
        assert probs.shape == (3, y1 - y0, x1 - x0) and y0 >= last_row
        last_row = y0
        seen[y0:y1, x0:x1] += 1
    assert (seen == 1).all()


def test_sliding_window_matches_a_whole_image_pass():
    """Tolerance: >= 99.9 % identical argmax for a conv net with a 7-px receptive field.

    A tile sees zero padding instead of its neighbours' pixels only within 3 px of its inner borders, where
    the Gaussian window gives it ~1e-3 of the weight of the overlapping tile that sees real context; the
    remaining differences are float rounding. (A *randomly initialised* deep U-Net is not a fair subject:
    its huge receptive field and near-tied logits make argmax flip with any change of context.)
    """
    model, image = SmallConv(5), textured(200, 260)
    with torch.no_grad():
        whole = model(torch.from_numpy(image).permute(2, 0, 1)[None].float())[0]  # (C, H, W)
    for overlap in (0.25, 0.5):
        idx = predict_index(model, image, 5, tile=64, overlap=overlap, batch_size=4)
        agree = float((idx == whole.argmax(0).numpy()).mean())
        assert agree >= 0.999, f"overlap {overlap}: only {agree:.4%} identical"
    probs = predict_probs(model, image, 5, tile=64, overlap=0.5)
    assert float((probs - torch.softmax(whole, 0)).abs().mean()) < 1e-3


def test_tta_unflips_its_outputs():
    """A pointwise model commutes with flips, so TTA must reproduce the plain prediction; a TTA that
    forgot to flip its outputs back would scramble the map."""
    image = textured(90, 130)
    plain = predict_probs(Pointwise(3), image, 3, tile=64, overlap=0.25)
    tta = predict_probs(Pointwise(3), image, 3, tile=64, overlap=0.25, tta=True)
    torch.testing.assert_close(tta, plain, atol=1e-5, rtol=1e-4)
    model = SmallConv(3)  # not flip-equivariant: TTA really averages something different
    assert not torch.allclose(
        predict_probs(model, image, 3, tile=64, tta=True), predict_probs(model, image, 3, tile=64), atol=1e-3
    )


def test_progress_eval_mode_and_model_state():
    model = TinyUnet(2).train()
    calls = []
    predict_index(
        model, textured(100, 140), 2, tile=64, overlap=0.25, batch_size=2, progress=lambda *a: calls.append(a)
    )
    n = tiling.STATS["n_tiles"]
    assert calls[-1] == (n, n) and [c[0] for c in calls] == sorted(c[0] for c in calls) and len(calls) == -(-n // 2)
    assert model.training  # restored after inference in eval mode
    bn = model.net.encoder.bn1
    assert int(bn.num_batches_tracked) == 0  # eval mode: BatchNorm statistics untouched


def test_bfloat16_autocast_and_float16_accumulators():
    image, model = textured(80, 120), SmallConv(4)
    ref = predict_index(model, image, 4, tile=64)
    amp = predict_index(model, image, 4, tile=64, amp_dtype=torch.bfloat16)
    assert float((amp == ref).mean()) > 0.95
    np.testing.assert_array_equal(predict_index(model, image, 4, tile=64, amp_dtype="bf16"), amp)
    with pytest.raises(ValueError, match="--amp 'fp8'"):
        predict_index(model, image, 4, tile=64, amp_dtype="fp8")
    # float16 accumulators: differences only where float32 probabilities are tied to fp16 precision
    half = predict_index(model, image, 4, tile=64, accum_dtype=torch.float16)
    top2 = predict_probs(model, image, 4, tile=64).topk(2, dim=0).values  # (2, H, W)
    margin = (top2[0] - top2[1]).numpy()
    assert float((half == ref).mean()) >= 0.99
    assert margin[half != ref].max(initial=0) < 2e-3  # (the rim, weights ~1e-6, is scaled out of subnormals)


def test_user_errors():
    with pytest.raises(ValueError, match="expected"):
        predict_index(Pointwise(3), textured(64, 64), 4, tile=64)  # model has 3 classes, caller says 4
    with pytest.raises(ValueError, match="uint8"):
        predict_index(Pointwise(3), textured(64, 64).astype(np.float32), 3, tile=64)
    with pytest.raises(ValueError, match="RGB"):
        predict_index(Pointwise(3), np.zeros((64, 64), np.uint8), 3, tile=64)
    with pytest.raises(ValueError, match="--batch-size"):
        next(iter_tile_batches(textured(64, 64), plan_tiles(64, 64, 64), batch_size=0))


# ------------------------------------------------------------------------------------------- memory
def accumulator_bytes(h: int, w: int, classes: int, tile: int, **kw) -> int:
    """Start a real prediction, read the accumulator sizes it allocated, and stop it (cheap)."""
    rows = iter_blended_rows(Pointwise(classes), np.zeros((h, w, 3), np.uint8), classes, tile=tile, **kw)
    next(rows)
    rows.close()
    return tiling.STATS["accumulator_bytes"]


def test_memory_is_bounded_by_tile_and_width_not_area():
    """The accumulators predict_index really allocates: (C, tile, W) + (tile, W) float32, whatever H is."""
    classes, tile, (h, w) = 17, 256, (1000, 1500)
    image = textured(h, w)
    idx = predict_index(Pointwise(classes), image, classes, tile=tile, overlap=0.25, batch_size=8)
    stats = dict(tiling.STATS)
    assert stats["accumulator_shape"] == (classes, tile, w)
    assert stats["accumulator_bytes"] == (classes + 1) * tile * w * 4  # float32 band + weight band
    assert stats["accumulator_bytes"] < classes * h * w * 4 / 3  # never C x H x W
    # a pointwise model has no context, so the strips must reproduce a whole-image pass
    with torch.no_grad():
        whole = Pointwise(classes)(torch.from_numpy(image).permute(2, 0, 1)[None].float())[0].argmax(0)
    assert float((idx == whole.numpy()).mean()) >= 0.9999
    # a 6x taller image costs nothing more; a 2x wider one 2x; float16 halves the class band
    assert accumulator_bytes(6 * h, w, classes, tile) == stats["accumulator_bytes"]
    assert accumulator_bytes(h, 2 * w, classes, tile) == 2 * stats["accumulator_bytes"]
    half = accumulator_bytes(h, w, classes, tile, accum_dtype=torch.float16)
    assert half == classes * tile * w * 2 + tile * w * 4
