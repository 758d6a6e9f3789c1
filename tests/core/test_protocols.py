"""Protocols: sweeps, reference entries, the sign of shifts, and flag errors."""

import jax
import numpy as np
import pytest

from benchmarks.core import protocols

RNG = np.random.default_rng(0)
IMAGE = RNG.random((32, 32, 3), dtype=np.float32)


def _sweep(proto, image=IMAGE):
    return np.asarray(jax.vmap(proto.transform, (None, 0))(image, proto.params))


@pytest.mark.parametrize("name", protocols.PROTOCOLS)
def test_every_protocol_runs_with_static_shapes(name):
    proto = protocols.build(name, IMAGE.shape)
    out = _sweep(proto)
    assert out.shape == (len(proto.params), *proto.output_shape)
    assert len(proto.x) == len(proto.params) >= 2
    assert np.isfinite(out).all()


@pytest.mark.parametrize("name", ["circular", "translate", "subpixel"])
def test_reference_entry_is_the_untransformed_image(name):
    proto = protocols.build(name, IMAGE.shape, max_shift=3)
    out = _sweep(proto)
    np.testing.assert_allclose(out[proto.reference_index], IMAGE, atol=1e-5)


def test_crop_content_moves_by_plus_d():
    # Paper protocol: 234 -> 224 windows, diagonal 1-px steps, 9 positions.
    big = RNG.random((234, 234, 1), dtype=np.float32)
    proto = protocols.build("crop", big.shape, crop_size=224, min_shift=0, max_shift=8)
    out = _sweep(proto, big)
    assert out.shape == (9, 224, 224, 1)
    np.testing.assert_array_equal(proto.params[:, 0], np.arange(9))
    for k in range(1, 9):  # window k shows the content of window 0 moved by (+k, +k)
        np.testing.assert_array_equal(out[k][k:, k:], out[0][: 224 - k, : 224 - k])


def test_circular_equals_np_roll():
    proto = protocols.build("circular", IMAGE.shape, sweep="grid", max_shift=2)
    out = _sweep(proto)
    assert len(out) == 25
    for p, o in zip(proto.params.astype(int), out):
        np.testing.assert_array_equal(o, np.roll(IMAGE, tuple(p), axis=(0, 1)))


def test_embed_places_the_small_image_at_centre_plus_d():
    proto = protocols.build("embed", IMAGE.shape, embed_size=16, min_shift=-4, max_shift=3)
    out = _sweep(proto)
    assert len(out) == 8 and proto.params[proto.reference_index].tolist() == [0, 0]
    for p, o in zip(proto.params.astype(int), out):
        top = 8 + p[0]
        mass = np.zeros((32, 32), bool)
        mass[top : top + 16, top : top + 16] = True
        assert o[~mass].max() == 0 and o[mass].min() > 0


def test_rescale_and_rotate_sweeps():
    r = protocols.build("rescale", IMAGE.shape, scale_min=0.5, scale_max=1.5, num_scales=5)
    np.testing.assert_allclose(r.x, [0.5, 0.75, 1.0, 1.25, 1.5])
    assert r.reference_index == 2
    np.testing.assert_allclose(_sweep(r)[2], IMAGE, atol=1e-5)
    a = protocols.build("rotate", IMAGE.shape, angle_max=3, angle_step=1)
    np.testing.assert_allclose(a.x, [-3, -2, -1, 0, 1, 2, 3])
    np.testing.assert_allclose(_sweep(a)[3], IMAGE, atol=1e-5)


def test_random_sweep_is_seeded():
    a = protocols.build("circular", IMAGE.shape, sweep="random", num_random=7, seed=3)
    b = protocols.build("circular", IMAGE.shape, sweep="random", num_random=7, seed=3)
    c = protocols.build("circular", IMAGE.shape, sweep="random", num_random=7, seed=4)
    np.testing.assert_array_equal(a.params, b.params)
    assert not np.array_equal(a.params, c.params)
    assert np.abs(a.params).max() <= 4


@pytest.mark.parametrize(
    "name, kwargs, flag",
    [
        ("shear", {}, "transform"),
        ("crop", {"crop_size": 30, "max_shift": 4}, "crop_size"),
        ("embed", {"embed_size": 16, "max_shift": 9}, "max_shift"),
        ("circular", {"max_shift": 2, "min_shift": 3}, "max_shift"),
        ("rescale", {"scale_min": 1.2, "scale_max": 1.1}, "scale_max"),
        ("rotate", {"fill": "mean"}, "fill"),
        ("circular", {"sweep": "spiral"}, "sweep"),
    ],
)
def test_bad_options_name_the_argument(name, kwargs, flag):
    # The library names its own argument (`name=value`), never a --flag: the CLI translates.
    with pytest.raises(protocols.ProtocolError, match=rf"(?<![-\w]){flag}="):
        protocols.build(name, IMAGE.shape, **kwargs)


def test_grid_pairs_are_horizontal_and_vertical_neighbours():
    # A 3x3 grid, row-major: index = 3 * row + col.
    proto = protocols.build("circular", IMAGE.shape, sweep="grid", max_shift=1)
    np.testing.assert_array_equal(
        proto.pairs(1),
        [[0, 1], [1, 2], [3, 4], [4, 5], [6, 7], [7, 8]]  # horizontal, row by row
        + [[0, 3], [1, 4], [2, 5], [3, 6], [4, 7], [5, 8]],  # vertical
    )
    np.testing.assert_array_equal(proto.pairs(2), [[0, 2], [3, 5], [6, 8], [0, 6], [1, 7], [2, 8]])
    # Every pair is one pixel apart along one axis: no (+1, -2) jumps of the flattened grid.
    steps = np.abs(proto.params[proto.pairs(1)[:, 1]] - proto.params[proto.pairs(1)[:, 0]])
    np.testing.assert_array_equal(np.sort(steps, axis=1), np.tile([0, 1], (12, 1)))


@pytest.mark.parametrize(
    "name, kwargs, length",
    [
        ("crop", {"max_shift": 4}, 5),
        ("circular", {"sweep": "horizontal", "max_shift": 2}, 5),
        ("rescale", {"num_scales": 7}, 7),
        ("rotate", {"angle_max": 2}, 5),
    ],
)
def test_ordered_sweeps_pair_consecutive_entries(name, kwargs, length):
    proto = protocols.build(name, IMAGE.shape, **kwargs)
    k = np.arange(length - 1)
    np.testing.assert_array_equal(proto.pairs(1), np.stack([k, k + 1], axis=1))
    np.testing.assert_array_equal(proto.pairs(3)[:, 1] - proto.pairs(3)[:, 0], 3)


def test_random_sweep_has_no_neighbours():
    proto = protocols.build("circular", IMAGE.shape, sweep="random", num_random=6)
    assert proto.pairs(1).shape == (0, 2) and not proto.has_neighbours
    assert proto.flip_pairs(3).shape == (0, 2)


def test_flip_distance_longer_than_the_sweep_names_the_argument():
    proto = protocols.build("crop", IMAGE.shape, max_shift=4)  # 5 entries
    assert len(proto.flip_pairs(4)) == 1
    with pytest.raises(protocols.ProtocolError, match=r"(?<!-)flip_distance=5.*1..4"):
        proto.flip_pairs(5)


def test_crop_padding_puts_the_unshifted_image_at_d_0():
    # CIFAR's protocol: the image zero-padded by 4, 32 px windows at offsets 0..8.
    proto = protocols.build("crop", IMAGE.shape, crop_padding=4, max_shift=4)
    out = _sweep(proto)
    assert out.shape == (9, 32, 32, 3) and proto.params[proto.reference_index].tolist() == [0, 0]
    np.testing.assert_array_equal(out[proto.reference_index], IMAGE)
    padded = np.pad(IMAGE, ((4, 4), (4, 4), (0, 0)))
    for p, o in zip(proto.params.astype(int), out):  # content moved by +d: corner 4 - d
        np.testing.assert_array_equal(o, padded[4 - p[0] : 36 - p[0], 4 - p[1] : 36 - p[1]])


@pytest.mark.parametrize(
    "name, kwargs, flag",
    [
        ("rescale", {"sweep": "grid"}, "sweep"),
        ("rotate", {"sweep": "diagonal"}, "sweep"),
        ("rescale", {"canvas_size": 40}, "canvas_size"),
        ("circular", {"crop_padding": 4}, "crop_padding"),
        ("crop", {"embed_size": 8}, "embed_size"),
        ("translate", {"shift_step": 0.5}, "shift_step"),
        ("inpaint", {"fill": "mean"}, "fill"),
        ("crop", {"crop_padding": -1}, "crop_padding"),
    ],
)
def test_options_a_protocol_does_not_use_are_refused(name, kwargs, flag):
    with pytest.raises(protocols.ProtocolError, match=rf"(?<![-\w]){flag}="):
        protocols.build(name, IMAGE.shape, **kwargs)


def test_padded_crop_windows_never_shrink_silently():
    # CIFAR's protocol: 32 px windows of the image padded by 4, shifts -4..4.
    proto = protocols.build("crop", IMAGE.shape, crop_padding=4, max_shift=4)
    assert proto.output_shape == IMAGE.shape and proto.options["crop_size"] == 32
    narrower = protocols.build("crop", IMAGE.shape, crop_padding=4, max_shift=2)
    assert narrower.output_shape == IMAGE.shape  # not 36 px windows
    # Shifts -8..8 need 16 px of slack: refused, with what would fit.
    with pytest.raises(protocols.ProtocolError, match=r"max_shift <= 4.*crop_padding >= 8.*24"):
        protocols.build("crop", IMAGE.shape, crop_padding=4, max_shift=8)
    explicit = protocols.build("crop", IMAGE.shape, crop_padding=4, max_shift=8, crop_size=24)
    assert explicit.output_shape == (24, 24, 3) and explicit.options["crop_size"] == 24


def test_options_record_the_sizes_actually_used():
    crop = protocols.build("crop", IMAGE.shape, max_shift=4)  # Azulay's crop: 28 px windows
    assert crop.options["crop_size"] == 28 and crop.options["min_shift"] == 0
    embed = protocols.build("embed", IMAGE.shape, max_shift=2)
    assert (embed.options["canvas_size"], embed.options["embed_size"]) == (32, 16)
    assert embed.input_shape == IMAGE.shape
