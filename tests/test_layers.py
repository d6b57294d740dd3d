"""--save layers: a multi-page TIFF, the scan then one named RGBA page per damage class present."""

from __future__ import annotations

import numpy as np

from damage_smp.labels import load_scheme
from damage_smp.predict import Job, write_outputs
from damage_smp.predict.layers import TILE, read_layers
from damage_smp.predict.owned import carries_mark, is_finished, read_record

SCHEME = load_scheme("artefact")


def test_layers_hold_the_scan_and_one_named_page_per_present_damage_class(tmp_path):
    rng = np.random.default_rng(0)
    h, w = TILE + 40, TILE + 70  # more than one tile each way: edge tiles are smaller
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    index = np.zeros((h, w), np.uint8)
    dust, hair = SCHEME.names.index("Dust"), SCHEME.names.index("Hair")
    index[10:200, 250:300] = hair
    index[280:, :20] = dust
    index[:5] = SCHEME.background_index  # not damage: no page
    job = Job(tmp_path / "in.png", tmp_path / "out" / "in")
    write_outputs(job, image.copy(), index, SCHEME, ("overlay", "layers"), overwrite=False)
    pages = read_layers(job.output("layers"))
    assert [name for name, _ in pages] == ["scan", "Dust", "Hair"]  # in class order, only those present
    assert np.array_equal(pages[0][1], image)  # the scan as read, not the tinted overlay
    for (_, rgba), c in zip(pages[1:], (dust, hair), strict=True):
        assert rgba.shape == (h, w, 4)
        assert np.array_equal(rgba[..., 3] == 255, index == c) and set(np.unique(rgba[..., 3])) == {0, 255}
        assert (rgba[index == c][:, :3] == SCHEME.display_colors[c]).all() and not rgba[index != c].any()
    assert carries_mark(job.output("layers")) and is_finished(job, read_record(job), ("overlay", "layers"))
