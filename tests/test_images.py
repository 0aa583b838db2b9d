"""prepare_image on every odd kind a crawl holds: what comes out, or why not."""

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import encode, odd_files, scene
from pipelines.media.images import ImageRejected, ImageSettings, prepare_image, sample_depth, target_size

SETTINGS = ImageSettings(image_size=64, resize="square", quality=90, max_pixels=100_000)
ODD = odd_files(64)


def decoded(jpeg: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(jpeg))
    assert img.format == "JPEG" and img.mode == "RGB"
    assert not img.info.get("progressive") and not img.info.get("progression")
    img.load()
    return img


@pytest.mark.parametrize("name", sorted(n for n in ODD if n.startswith("ok_")))
def test_every_valid_odd_kind_becomes_a_baseline_rgb_jpeg(name):
    out = prepare_image(ODD[name], SETTINGS)
    assert decoded(out.jpeg).size == (64, 64)


@pytest.mark.parametrize("name,code", [("bad_empty.jpg", "empty_file"), ("bad_truncated.jpg", "truncated_image"),
                                       ("bad_cut_closed.jpg", "truncated_image"),
                                       ("bad_claims_9000.jpg", "too_many_pixels"),
                                       ("bad_html.jpg", "not_an_image"), ("bad_huge.png", "too_many_pixels")])
def test_broken_inputs_are_rejected_with_their_reason(name, code):
    with pytest.raises(ImageRejected) as info:
        prepare_image(ODD[name], SETTINGS)
    assert info.value.code == code
    assert info.value.reason.startswith(code)


def test_html_reason_says_what_the_file_really_is():
    with pytest.raises(ImageRejected, match="HTML"):
        prepare_image(ODD["bad_html.jpg"], SETTINGS)


def test_matching_baseline_jpeg_passes_through_byte_for_byte():
    out = prepare_image(ODD["ok_baseline.jpg"], SETTINGS)
    assert out.passthrough and out.jpeg == ODD["ok_baseline.jpg"]


def test_progressive_jpeg_is_reencoded_even_at_target_geometry():
    out = prepare_image(ODD["ok_progressive.jpg"], SETTINGS)
    assert not out.passthrough and out.jpeg != ODD["ok_progressive.jpg"]


def test_exif_orientation_is_applied_and_reported():
    # Stored 32 wide x 64 high, tagged "rotate 90 CW to show": shown as 64 wide x 32 high.
    out = prepare_image(ODD["ok_exif_rotated.jpg"], ImageSettings(image_size=32, resize="shorter"))
    assert out.orig_size == (64, 32)
    assert decoded(out.jpeg).size == (64, 32)
    original = scene(2, 64, 32).astype(float)
    restored = np.asarray(decoded(out.jpeg), dtype=float)
    assert np.abs(restored - original).mean() < 12  # same picture, upright (rotated it would be far off)


def test_sixteen_bit_is_scaled_not_clipped():
    out = prepare_image(ODD["ok_16bit.png"], SETTINGS)
    arr = np.asarray(decoded(out.jpeg), dtype=float)
    assert arr[:8].mean() < 40 and arr[-8:].mean() > 215  # a ramp from black to white survives


def with_sbit(png: bytes, bits: int) -> bytes:
    """The PNG with an sBIT chunk (greyscale: one byte) after its IHDR, as a camera's converter writes it."""
    chunk = b"sBIT" + bytes([bits])
    at = 8 + 12 + int.from_bytes(png[8:12], "big")  # after the signature and IHDR
    return png[:at] + (1).to_bytes(4, "big") + chunk + zlib.crc32(chunk).to_bytes(4, "big") + png[at:]


def test_twelve_bit_data_in_a_sixteen_bit_png_is_scaled_from_its_real_depth():
    """Values 0..4095 scaled as 16-bit came out 16x too dark (0..15)."""
    ramp = np.linspace(0, 4095, 64 * 64).reshape(64, 64).astype(np.uint16)
    arr = np.asarray(decoded(prepare_image(encode(ramp, "PNG"), SETTINGS).jpeg), dtype=float)
    assert arr[:8].mean() < 40 and arr[-8:].mean() > 215
    # sBIT, where the file has it, says the depth: 10-bit data of a 12-bit sensor stays dark
    darker = (ramp // 4).astype(np.uint16)
    arr = np.asarray(decoded(prepare_image(with_sbit(encode(darker, "PNG"), 12), SETTINGS).jpeg), dtype=float)
    assert 40 < arr[-8:].mean() < 80
    assert [sample_depth(v) for v in (0, 255, 256, 1023, 4095, 4096, 65535, 70000)] == [8, 8, 10, 10, 12, 14, 16, 17]


def test_a_sliver_whose_resize_would_explode_is_refused_before_decoding():
    """2x4000 resized to a shorter side of 256 (256x512000) took 12 s and 400 MB, then corrupt_image."""
    sliver = encode(np.full((4000, 2, 3), 128, np.uint8), "PNG")
    with pytest.raises(ImageRejected) as e:
        prepare_image(sliver, ImageSettings(image_size=256, resize="shorter"))
    assert e.value.code == "too_many_pixels" and "2x4000 resized to 256x512000" in e.value.reason


def test_alpha_is_composited_over_white():
    rgba = np.zeros((64, 64, 4), np.uint8)  # fully transparent black
    out = prepare_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"), SETTINGS)
    assert np.asarray(decoded(out.jpeg)).min() > 245


def test_animated_gif_uses_the_first_frame():
    first = Image.open(io.BytesIO(ODD["ok_animated.gif"])).convert("RGB")
    out = np.asarray(decoded(prepare_image(ODD["ok_animated.gif"], SETTINGS).jpeg), dtype=float)
    assert np.abs(out - np.asarray(first, dtype=float)).mean() < 10


def test_multipage_tiff_uses_the_first_page():
    out = np.asarray(decoded(prepare_image(ODD["ok_multipage.tif"], SETTINGS).jpeg), dtype=float)
    assert np.abs(out - scene(20, 64, 64)).mean() < 10


@pytest.mark.parametrize("layout", [{}, {"compression": "tiff_lzw"}, {"compression": "tiff_lzw", "tiffinfo": {317: 2}},
                                    {"compression": "tiff_adobe_deflate"}, {"compression": "packbits"},
                                    {"compression": "jpeg"}, {"big_tiff": True}])  # 317: the horizontal predictor
def test_a_multipage_tiff_of_any_layout_gives_its_first_page_whatever_the_others_are(layout):
    first = Image.fromarray(np.full((48, 64, 3), (200, 40, 90), np.uint8))
    others = [Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 30, 3), dtype=np.uint8)),
              Image.fromarray(np.zeros((10, 10), np.uint8))]  # pages of other sizes and modes
    buf = io.BytesIO()
    first.save(buf, format="TIFF", save_all=True, append_images=others, **layout)
    out = np.asarray(decoded(prepare_image(buf.getvalue(), ImageSettings(image_size=64)).jpeg), dtype=float)
    assert np.abs(out - np.asarray(first.resize((64, 64)), dtype=float)).mean() < 4


@pytest.mark.parametrize("mode,size,expected", [("square", (640, 480), (256, 256)),
                                                ("shorter", (640, 480), (341, 256)),
                                                ("shorter", (300, 900), (256, 768)),
                                                ("keep", (640, 480), (640, 480))])
def test_target_geometry(mode, size, expected):
    assert target_size(size, ImageSettings(image_size=256, resize=mode)) == expected


def test_large_jpeg_takes_the_reduced_dct_path_and_still_validates():
    big = encode(scene(5, 1024, 768))
    out = prepare_image(big, ImageSettings(image_size=128, resize="shorter"))
    assert decoded(out.jpeg).size == (171, 128) and out.orig_size == (1024, 768)
    with pytest.raises(ImageRejected) as info:
        prepare_image(big[: len(big) * 2 // 3], ImageSettings(image_size=128, resize="shorter"))
    assert info.value.code == "truncated_image"


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="resize"):
        ImageSettings(resize="crop")
    with pytest.raises(ValueError, match="quality"):
        ImageSettings(quality=0)


def test_a_header_claiming_more_rows_than_the_data_holds_is_truncated():
    """A 16x16 file whose header says 9000x9000 became a grey image."""
    with pytest.raises(ImageRejected) as info:
        prepare_image(ODD["bad_claims_9000.jpg"], ImageSettings(64, "square", 90, 10**9))
    assert info.value.code == "truncated_image" and "9000x9000 JPEG" in info.value.reason
