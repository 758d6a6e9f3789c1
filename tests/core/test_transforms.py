"""Tests of benchmarks/core/transforms.py against independent numpy / scipy references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi

from benchmarks.core import sweeps
from benchmarks.core import transforms as T


def _image(height, width, channels=3, seed=0, low=0.0, high=1.0):
    rng = np.random.default_rng(seed)
    return (low + (high - low) * rng.random((height, width, channels))).astype(np.float32)


def _shift_with_fill(image, dy, dx, fill):
    """Integer shift output(y, x) = image(y - dy, x - dx), vacated pixels = fill (numpy)."""
    height, width, _ = image.shape
    out = np.full_like(image, fill)
    ys, xs = np.arange(height) - dy, np.arange(width) - dx
    rows, cols = (ys >= 0) & (ys < height), (xs >= 0) & (xs < width)
    out[np.ix_(rows, cols)] = image[np.ix_(ys[rows], xs[cols])]
    return out


# ----------------------------------------------------------------------------- crop


@pytest.mark.parametrize("offset", [(0, 0), (2, 5), (4, 0), (4, 6)])
def test_crop_equals_numpy_slicing(offset):
    image = _image(10, 12)
    dy, dx = offset
    out = T.crop(image, offset, out_size=(6, 6))
    np.testing.assert_array_equal(out, image[dy : dy + 6, dx : dx + 6])


@pytest.mark.parametrize("offset", [(-1, 0), (5, 0), (0, 7), (9, 9)])
def test_crop_out_of_range_concrete_offset_raises(offset):
    with pytest.raises(ValueError, match="offset"):
        T.crop(_image(10, 12), offset, out_size=(6, 6))


def test_crop_clamps_offset_under_jit():
    image = _image(10, 12)
    out = jax.jit(functools.partial(T.crop, out_size=(6, 6)))(image, jnp.array([9, -3]))
    np.testing.assert_array_equal(out, image[4:10, 0:6])


def test_validate_offsets_on_a_sweep():
    T.validate_offsets(sweeps.grid(0, 4, 1), max_offset=(4, 4))
    with pytest.raises(ValueError, match=r"offsets \[0, 5\] out of range"):
        T.validate_offsets(sweeps.grid(0, 5, 1), max_offset=(5, 4))


# ----------------------------------------------------------------------------- embed


@pytest.mark.parametrize("offset", [(0, 0), (4, 6), (2, 3)])
@pytest.mark.parametrize("fill", ["zero", "constant", "mean"])
def test_embed_places_image_and_fill(fill, offset):
    image = _image(8, 8)
    out = T.embed(
        image, offset, canvas_size=(12, 14), image_size=(8, 8), fill=fill, fill_value=0.25
    )
    background = {"zero": 0.0, "constant": 0.25, "mean": image.reshape(-1, 3).mean(0)}[fill]
    expected = np.broadcast_to(np.asarray(background, np.float32), (12, 14, 3)).copy()
    dy, dx = offset
    expected[dy : dy + 8, dx : dx + 8] = image
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_embed_downscale_is_antialiased():
    # A 2x antialiased linear downscale is the kernel [1, 3, 3, 1] / 8 on input pixels
    # 2i-1 .. 2i+2 (hand-worked triangle of half-width 2 at distances 1.5, 0.5, 0.5, 1.5).
    image = _image(16, 16, seed=1)
    out = np.asarray(T.embed(image, (0, 0), canvas_size=(8, 8), image_size=(8, 8)))
    weights = np.zeros((8, 16))
    for i in range(1, 7):
        weights[i, 2 * i - 1 : 2 * i + 3] = np.array([1, 3, 3, 1]) / 8
    expected = np.einsum("iy,jx,yxc->ijc", weights, weights, image)
    np.testing.assert_allclose(out[1:7, 1:7], expected[1:7, 1:7], atol=1e-5)


@pytest.mark.parametrize("offset", [(0, 0), (16, 24), (9, 3)])
def test_embed_inpaint_fills_every_hole(offset):
    image = _image(8, 8, low=0.2, high=0.8)
    out = np.asarray(
        T.embed(image, offset, canvas_size=(24, 32), image_size=(8, 8), fill="inpaint")
    )
    dy, dx = offset
    np.testing.assert_array_equal(out[dy : dy + 8, dx : dx + 8], image)
    assert np.all(np.isfinite(out)) and np.all(out > 0)
    low, high = image.reshape(-1, 3).min(0), image.reshape(-1, 3).max(0)
    assert np.all(out >= low - 1e-6) and np.all(out <= high + 1e-6)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"canvas_size": (8, 8), "image_size": (9, 4)}, "image_size"),
        ({"canvas_size": (8, 0), "image_size": (4, 4)}, "canvas_size"),
        ({"canvas_size": (8, 8), "image_size": (4, 4), "fill": "black"}, "fill"),
        ({"canvas_size": (8, 8), "image_size": (4, 4), "fill_value": "x"}, "fill_value"),
        (
            {"canvas_size": (8, 8), "image_size": (4, 4), "fill": "inpaint", "inpaint_iters": 0},
            "inpaint_iters",
        ),
    ],
)
def test_embed_invalid_static_args_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        T.embed(_image(8, 8), (0, 0), **kwargs)


@pytest.mark.parametrize("offset", [(5, 0), (0, -1), (0.0, 1.0), (1, 2, 3)])
def test_embed_invalid_offset_raises(offset):
    with pytest.raises(ValueError, match="offset"):
        T.embed(_image(8, 8), offset, canvas_size=(8, 8), image_size=(4, 4))


# ----------------------------------------------------------------------------- inpaint


def _masks():
    single = np.zeros((20, 24), bool)
    single[19, 0] = True
    sparse = np.random.default_rng(3).random((20, 24)) < 0.05
    block = np.zeros((20, 24), bool)
    block[8:12, 10:15] = True
    return {"single_corner": single, "sparse": sparse, "block": block}


@pytest.mark.parametrize("kind", ["single_corner", "sparse", "block"])
def test_inpaint_keeps_known_and_fills_every_hole(kind):
    mask = _masks()[kind]
    image = _image(20, 24, seed=2, low=0.2, high=0.8)
    out = np.asarray(T.inpaint(image, mask))
    np.testing.assert_array_equal(out[mask], image[mask])
    assert np.all(np.isfinite(out)) and np.all(out > 0)
    known = image[mask]
    assert np.all(out >= known.min(0) - 1e-6) and np.all(out <= known.max(0) + 1e-6)
    if kind == "single_corner":
        np.testing.assert_allclose(out, np.broadcast_to(known, out.shape), atol=1e-6)


@pytest.mark.parametrize("iters", [1, 2])
def test_inpaint_reaches_five_pixels_per_iteration(iters):
    mask = np.zeros((30, 30), bool)
    mask[12, 10] = True
    out = np.asarray(T.inpaint(np.full((30, 30, 1), 0.5, np.float32), mask, iters=iters))
    ys, xs = np.mgrid[:30, :30]
    reached = np.maximum(abs(ys - 12), abs(xs - 10)) <= 5 * iters
    np.testing.assert_array_equal(out[..., 0] > 0, reached)
    np.testing.assert_allclose(out[reached], 0.5, atol=1e-6)


def test_inpaint_invalid_args_raise():
    with pytest.raises(ValueError, match="mask"):
        T.inpaint(_image(4, 4), np.ones((4, 5)))
    with pytest.raises(ValueError, match="iters"):
        T.inpaint(_image(4, 4), np.ones((4, 4)), iters=-1)


# ----------------------------------------------------------------------------- circular


@pytest.mark.parametrize("shift", [(0, 0), (1, -2), (-13, 27), (12, 14), (5, 0)])
def test_circular_shift_equals_np_roll(shift):
    image = _image(12, 14)
    np.testing.assert_array_equal(
        T.circular_shift(image, shift), np.roll(image, shift, axis=(0, 1))
    )


def test_circular_shift_composes():
    image = _image(12, 14)
    twice = T.circular_shift(T.circular_shift(image, (3, -5)), (-7, 9))
    np.testing.assert_array_equal(twice, T.circular_shift(image, (-4, 4)))


@pytest.mark.parametrize("shift", [(0.5, 1.0), (1,), ((1, 2), (3, 4))])
def test_circular_shift_invalid_shift_raises(shift):
    with pytest.raises(ValueError, match="shift"):
        T.circular_shift(_image(4, 4), shift)


# ----------------------------------------------------------------------------- subpixel


@pytest.mark.parametrize("size", [(8, 10), (7, 9), (8, 9)])
@pytest.mark.parametrize("shift", [(1, 0), (-3, 4), (17, -23)])
def test_fourier_integer_shift_equals_roll(size, shift):
    image = _image(*size)
    out = T.subpixel_shift(image, jnp.asarray(shift, jnp.float32), method="fourier")
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, np.roll(image, shift, axis=(0, 1)), atol=1e-5)


@pytest.mark.parametrize("ky, kx", [(1, 2), (3, 5), (4, 1), (4, 5)])  # 4 and 5: Nyquist bins
def test_fourier_shift_of_band_limited_cosine(ky, kx):
    height, width, (dy, dx) = 8, 10, (0.37, -1.6)
    ys, xs = np.mgrid[:height, :width].astype(np.float64)
    wave = lambda y, x: np.cos(2 * np.pi * ky * y / height) * np.cos(2 * np.pi * kx * x / width)
    out = T.subpixel_shift(wave(ys, xs)[..., None], (dy, dx), method="fourier")
    np.testing.assert_allclose(out[..., 0], wave(ys - dy, xs - dx), atol=1e-5)


@pytest.mark.parametrize(
    "size, first, second",
    [((9, 11), (0.3, -0.45), (1.25, 0.6)), ((8, 10), (2.0, -3.0), (0.35, 0.7))],
)
def test_fourier_shifts_compose(size, first, second):
    image = _image(*size)
    twice = T.subpixel_shift(T.subpixel_shift(image, first), second)
    once = T.subpixel_shift(image, np.add(first, second))
    np.testing.assert_allclose(twice, once, atol=1e-5)


@pytest.mark.parametrize(
    "transform",
    [
        functools.partial(T.subpixel_shift, shift=(0.0, 0.0), method="fourier"),
        functools.partial(T.subpixel_shift, shift=(0.0, 0.0), method="lanczos3"),
        functools.partial(T.subpixel_shift, shift=(0.0, 0.0), method="bilinear"),
        functools.partial(T.circular_shift, shift=(0, 0)),
        functools.partial(T.rescale, scale=1.0),
        functools.partial(T.rescale, scale=1.0, method="nearest"),
        functools.partial(T.rotate, angle=0.0),
    ],
    ids=["fourier", "lanczos3", "bilinear", "circular", "rescale", "rescale_nearest", "rotate"],
)
def test_zero_shift_is_identity(transform):
    image = _image(9, 10)
    np.testing.assert_allclose(transform(image), image, atol=1e-6)


@pytest.mark.parametrize("method", ["lanczos3", "bilinear"])
@pytest.mark.parametrize("shift", [(2, -3), (0, 5), (-1, 0), (4, 4)])
def test_interpolated_integer_shift_equals_plain_shift(method, shift):
    image = _image(10, 11)
    out = T.subpixel_shift(image, shift, method=method, fill=0.3)
    np.testing.assert_allclose(out, _shift_with_fill(image, *shift, 0.3), atol=1e-5)


def _lanczos_matrix(n, d, pad):
    """[n, n + 2 pad] weights of an independent Lanczos-3 reference on a fill-padded axis."""
    source = np.arange(n)[:, None] - d  # real source coordinate of each output pixel
    taps = np.arange(-pad, n + pad)[None, :]
    x = source - taps
    weights = np.where(np.abs(x) < 3, np.sinc(x) * np.sinc(x / 3), 0.0)
    return weights / weights.sum(1, keepdims=True)


@pytest.mark.parametrize("shift", [(0.5, -0.5), (1.3, 2.75), (-4.2, 0.1)])
def test_lanczos_fractional_shift_matches_reference(shift):
    image, fill, pad = _image(10, 12), 0.2, 8
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), constant_values=fill)
    expected = np.einsum(
        "iy,jx,yxc->ijc",
        _lanczos_matrix(10, shift[0], pad),
        _lanczos_matrix(12, shift[1], pad),
        padded,
    )
    out = T.subpixel_shift(image, shift, method="lanczos3", fill=fill)
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("shift", [(0.5, -0.5), (1.3, 2.75), (-4.2, 0.1), (3.0, -1.0)])
def test_bilinear_shift_matches_scipy(shift):
    image, fill = _image(10, 12), 0.2
    out = np.asarray(T.subpixel_shift(image, shift, method="bilinear", fill=fill))
    full = ndi.shift(image, (*shift, 0), order=1, mode="grid-constant", cval=fill)
    np.testing.assert_allclose(out, full, atol=1e-5)
    # scipy's default mode: equal where the source and both neighbours are inside.
    default = ndi.shift(image, (*shift, 0), order=1)
    ys, xs = np.arange(10)[:, None] - shift[0], np.arange(12)[None, :] - shift[1]
    interior = (ys >= 1) & (ys <= 8) & (xs >= 1) & (xs <= 10)
    np.testing.assert_allclose(out[interior], default[interior], atol=1e-5)


@pytest.mark.parametrize("method", ["lanczos3", "bilinear"])
@pytest.mark.parametrize("shift", [(100.5, 0.0), (0.25, -40.0)])
def test_shift_beyond_the_image_is_all_fill(method, shift):
    out = T.subpixel_shift(_image(10, 12), shift, method=method, fill=0.7)
    np.testing.assert_allclose(out, 0.7, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"shift": (0.5, 0.5), "method": "cubic"}, "method"),
        ({"shift": (0.5, 0.5), "fill": "black"}, "fill"),
        ({"shift": (0.5, 0.5, 0.5)}, "shift"),
    ],
)
def test_subpixel_shift_invalid_args_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        T.subpixel_shift(_image(4, 4), **kwargs)


# ----------------------------------------------------------------------------- rescale


@pytest.mark.parametrize(
    "scale, method",
    [
        (0.5, "bilinear"),
        (0.8, "bilinear"),
        (1.3, "bilinear"),
        (2.0, "bilinear"),
        (0.7, "nearest"),
        (1.3, "nearest"),
    ],  # nearest: scales with no rounding ties
)
def test_rescale_matches_affine_transform(scale, method):
    image, fill = _image(15, 17), 0.1
    centre = np.array([7.0, 8.0, 0.0])
    matrix = np.diag([1 / scale, 1 / scale, 1.0])
    expected = ndi.affine_transform(
        image,
        matrix,
        centre - matrix @ centre,
        order={"bilinear": 1, "nearest": 0}[method],
        mode="grid-constant",
        cval=fill,
    )
    out = T.rescale(image, np.float32(scale).reshape(1), fill=fill, method=method)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_rescale_matches_zoom():
    image, fill = _image(16, 16), 0.1
    zoom = functools.partial(ndi.zoom, order=1, grid_mode=True, mode="grid-constant", cval=fill)
    enlarged = zoom(image, (2, 2, 1))  # [32, 32]: the centre 16 x 16 is the rescaled frame
    np.testing.assert_allclose(T.rescale(image, 2.0, fill=fill), enlarged[8:24, 8:24], atol=1e-5)
    shrunk = np.full_like(image, fill)
    shrunk[4:12, 4:12] = zoom(image, (0.5, 0.5, 1))  # [8, 8] pasted at the centre
    np.testing.assert_allclose(T.rescale(image, 0.5, fill=fill), shrunk, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"scale": 0.0}, "scale"),
        ({"scale": (1.0, 2.0)}, "scale"),
        ({"scale": 1.0, "method": "cubic"}, "method"),
    ],
)
def test_rescale_invalid_args_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        T.rescale(_image(4, 4), **kwargs)


# ----------------------------------------------------------------------------- rotate


@pytest.mark.parametrize("angle", [-30.0, -7.5, 15.0, 90.0, 180.0])
@pytest.mark.parametrize("size", [(15, 15), (12, 16)])
def test_rotate_matches_scipy(angle, size):
    image, fill = _image(*size), 0.1
    out = np.asarray(T.rotate(image, angle, fill=fill))
    full = ndi.rotate(image, angle, reshape=False, order=1, mode="grid-constant", cval=fill)
    np.testing.assert_allclose(out, full, atol=1e-5)
    # scipy's default (mode='constant', cval=0) agrees wherever the source is >= 1 px inside.
    default = ndi.rotate(image, angle, reshape=False, order=1)
    cy, cx = (size[0] - 1) / 2, (size[1] - 1) / 2
    ys, xs = np.mgrid[: size[0], : size[1]]
    interior = np.hypot(ys - cy, xs - cx) <= min(cy, cx) - 1
    np.testing.assert_allclose(out[interior], default[interior], atol=1e-5)


def test_rotate_is_counter_clockwise():
    image = np.zeros((5, 5, 1), np.float32)
    image[2, 4] = 1.0  # right of the centre
    expected = np.zeros_like(image)
    expected[0, 2] = 1.0  # above the centre (row 0 is the top)
    np.testing.assert_allclose(T.rotate(image, 90.0), expected, atol=1e-6)


def test_rotate_invalid_args_raise():
    with pytest.raises(ValueError, match="angle"):
        T.rotate(_image(4, 4), (1.0, 2.0))
    with pytest.raises(ValueError, match="fill"):
        T.rotate(_image(4, 4), 1.0, fill=None)
    with pytest.raises(ValueError, match="image"):
        T.rotate(np.zeros((4, 4)), 1.0)


# ----------------------------------------------------------------------------- jit / vmap

_SWEEP_CASES = {
    "crop": (functools.partial(T.crop, out_size=(6, 8)), sweeps.grid(0, 3, 3)),
    "embed": (
        functools.partial(T.embed, canvas_size=(16, 16), image_size=(6, 8), fill="mean"),
        sweeps.diagonal(0, 8, 4),
    ),
    "embed_inpaint": (
        functools.partial(T.embed, canvas_size=(16, 16), image_size=(6, 8), fill="inpaint"),
        sweeps.line(0, 8, 4, axis="x"),
    ),
    "circular": (T.circular_shift, sweeps.grid(-3, 2, 5)),
    "fourier": (
        functools.partial(T.subpixel_shift, method="fourier"),
        sweeps.line(-1.0, 1.0, 0.5, axis="y"),
    ),
    "lanczos3": (
        functools.partial(T.subpixel_shift, method="lanczos3", fill=0.5),
        sweeps.diagonal(-1.0, 1.0, 0.5),
    ),
    "bilinear": (
        functools.partial(T.subpixel_shift, method="bilinear"),
        sweeps.grid(-0.5, 0.5, 0.5),
    ),
    "rescale": (T.rescale, sweeps.line(0.5, 1.5, 0.25, axis="scalar")),
    "rotate": (T.rotate, sweeps.line(-15.0, 15.0, 7.5, axis="scalar")),
}


@pytest.mark.parametrize("case", list(_SWEEP_CASES))
def test_vmap_over_sweep_and_images_equals_loop(case):
    transform, sweep = _SWEEP_CASES[case]
    images = np.stack([_image(12, 12, seed=0), _image(12, 12, seed=1)])
    over_sweep = jax.vmap(transform, in_axes=(None, 0))
    batched = jax.jit(jax.vmap(over_sweep, in_axes=(0, None)))(images, sweep)
    single = jax.jit(transform)  # one image, one parameter: no batching rule involved
    looped = np.stack([np.stack([single(image, p) for p in sweep]) for image in images])
    assert batched.shape == looped.shape and batched.dtype == jnp.float32
    np.testing.assert_allclose(batched, looped, atol=1e-5)


@pytest.mark.parametrize("case", ["crop", "embed_inpaint", "fourier", "rotate"])
def test_jit_sweep_does_not_retrace(case):
    transform, sweep = _SWEEP_CASES[case]
    traces = []

    def counted(image, param):
        traces.append(None)
        return transform(image, param)

    run = jax.jit(jax.vmap(counted, in_axes=(None, 0)))
    image = _image(12, 12)
    first = run(image, sweep)
    other = sweep[::-1].copy()  # new values, same shape and dtype
    second = run(image, other)
    assert len(traces) == 1
    np.testing.assert_allclose(second, first[::-1], atol=1e-6)
