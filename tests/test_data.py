"""Image folders as users have them: split folder names, junk files, empty folders, damaged images."""

import io

import numpy as np
import pytest
from PIL import Image

from tinytlc.data import load_data
from tinytlc.errors import TinyTLError


def images(root, classes, n=3, size=(12, 12), ext="png"):
    for c, colour in zip(classes, range(40, 256, 40)):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((*size, 3), colour + i, np.uint8)).save(root / c / f"{i}.{ext}")


@pytest.mark.parametrize("train,held", [("Train", "Test"), ("training_set", "test_set"), ("train", "validation"),
                                        ("train", "valid"), ("TRAINING", "Val"), ("train", "testing")])
def test_split_folder_names(tmp_path, train, held):
    images(tmp_path / train, ["cat", "dog", "bird"])
    images(tmp_path / held, ["cat", "dog", "bird"], n=2)
    data = load_data(str(tmp_path), 3)
    assert data.classes == ["bird", "cat", "dog"] and len(data.train) == 9 and len(data.test) == 6
    assert held in data.note


def test_lone_train_folder_holds_out_part_of_it(tmp_path):
    images(tmp_path / "train", ["a", "b"], n=10)
    data = load_data(str(tmp_path), 2)
    assert data.classes == ["a", "b"] and len(data.train) == 18 and len(data.test) == 2


def test_a_class_named_train_beside_others_stays_a_class(tmp_path):
    images(tmp_path, ["train", "plane"])
    assert load_data(str(tmp_path), 2).classes == ["plane", "train"]


def test_folders_without_usable_images_are_not_classes(tmp_path):
    images(tmp_path, ["a", "b", "c"])
    (tmp_path / "d_empty").mkdir()
    (tmp_path / "e_heic").mkdir()
    (tmp_path / "e_heic" / "x.heic").write_bytes(b"heic")
    data = load_data(str(tmp_path), 3)
    assert data.classes == ["a", "b", "c"]
    assert any("d_empty" in w and "e_heic" in w for w in data.warnings), data.warnings
    # a folder whose only image is damaged is no class either, with --skip-bad-images
    (tmp_path / "f_bad").mkdir()
    (tmp_path / "f_bad" / "0.png").write_bytes(b"not a png")
    data = load_data(str(tmp_path), 3, skip_bad=True)
    assert data.classes == ["a", "b", "c"]
    assert any("skipped 1 unreadable" in w for w in data.warnings), data.warnings


def test_jfif_and_pgm_are_images(tmp_path):
    images(tmp_path, ["a"], ext="jfif")
    (tmp_path / "b").mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8), 9 * i, np.uint8)).save(tmp_path / "b" / f"{i}.pgm")
    assert load_data(str(tmp_path), 2).classes == ["a", "b"]


def test_hidden_files_and_macos_junk_are_skipped(tmp_path):
    images(tmp_path, ["a", "b"])
    apple_double = b"\0\5\26\7\0\2\0\0Mac OS X        "
    for c in ("a", "b"):
        (tmp_path / "__MACOSX" / c).mkdir(parents=True)
        (tmp_path / "__MACOSX" / c / "._0.png").write_bytes(apple_double)
        (tmp_path / c / "._0.png").write_bytes(apple_double)
        (tmp_path / c / ".hidden.png").write_bytes(b"junk")
        (tmp_path / c / ".cache").mkdir()
        (tmp_path / c / ".cache" / "thumb.png").write_bytes(b"junk")
    data = load_data(str(tmp_path), 2)  # nothing to skip: no error
    assert data.classes == ["a", "b"] and len(data.train) + len(data.test) == 6 and not data.warnings


def test_empty_data_argument(tmp_path, monkeypatch):
    images(tmp_path, ["a", "b"])
    monkeypatch.chdir(tmp_path)  # "" must not mean the working directory
    for spec in ("", " "):
        with pytest.raises(TinyTLError, match="--data is empty"):
            load_data(spec, 2)


def test_held_out_classes_must_be_training_classes(tmp_path):
    images(tmp_path / "train", ["a", "b", "c"])
    images(tmp_path / "val", ["a", "c", "d"])
    with pytest.raises(TinyTLError, match="val: class folder.* d have no images in .*train"):
        load_data(str(tmp_path), 3)
    (tmp_path / "val" / "d").rename(tmp_path / "d_elsewhere")
    data = load_data(str(tmp_path), 3)
    assert data.classes == ["a", "b", "c"] and sorted(set(data.test.labels)) == [0, 2]
    assert any("no held-out images of b" in w for w in data.warnings), data.warnings


def test_no_held_out_images_is_said(tmp_path):
    images(tmp_path, ["a", "b"], n=1)
    data = load_data(str(tmp_path), 2)
    assert len(data.test) == 0 and any("no held-out images" in w for w in data.warnings)


def test_truncated_jpeg_is_found_before_training_and_skipped(tmp_path):
    images(tmp_path, ["a", "b"])
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buf, "JPEG")
    (tmp_path / "a" / "t.jpg").write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])
    with pytest.raises(TinyTLError, match="t.jpg: cannot read image.*--skip-bad-images"):
        load_data(str(tmp_path), 2)
    data = load_data(str(tmp_path), 2, skip_bad=True)
    assert len(data.train) + len(data.test) == 6
    for split in (data.train, data.test):
        for i in range(len(split)):
            split.load(i)


def test_labels_follow_the_trained_class_names(tmp_path):
    images(tmp_path, ["b_green", "c_blue"])
    data = load_data(str(tmp_path), 3, classes=["a_red", "b_green", "c_blue"])
    assert data.classes == ["a_red", "b_green", "c_blue"]
    assert sorted(set(data.train.labels) | set(data.test.labels)) == [1, 2]
    assert any("no class folder for a_red" in w for w in data.warnings)
    images(tmp_path, ["z_new"])
    with pytest.raises(TinyTLError, match="z_new are not among the 3 the model was trained on"):
        load_data(str(tmp_path), 3, classes=["a_red", "b_green", "c_blue"])


def _load_one(tmp_path, name, save):
    path = tmp_path / name
    save(path)
    from tinytlc.data import open_image, to_rgb8
    with open_image(path) as im:
        return to_rgb8(im)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(np.zeros((20, 40, 3), np.uint8))  # 40 wide, 20 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: upright it is 20 wide, 40 high
    assert _load_one(tmp_path, "r.jpg", lambda p: img.save(p, exif=exif)).shape == (40, 20, 3)


def test_transparency_is_composited_on_grey(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[1:3, 1:3] = 255  # opaque white square on a transparent black background
    rgb = _load_one(tmp_path, "a.png", lambda p: Image.fromarray(rgba).save(p))
    assert rgb[0, 0].tolist() == [128] * 3 and rgb[1, 1].tolist() == [255] * 3
    la = _load_one(tmp_path, "la.png", lambda p: Image.fromarray(rgba[..., [0, 3]]).save(p))
    assert la[0, 0].tolist() == [128] * 3


def test_deep_and_float_images_keep_their_brightness(tmp_path):
    import io
    dark = np.array([[0, 1000], [2000, 3000]])
    pgm = _load_one(tmp_path, "d.pgm", lambda p: p.write_bytes(b"P5\n2 2\n65535\n" + dark.astype(">u2").tobytes()))
    png = _load_one(tmp_path, "d.png", lambda p: Image.fromarray(dark.astype(np.uint16)).save(p))
    assert pgm[..., 0].tolist() == png[..., 0].tolist() == [[0, 4], [8, 12]]  # not stretched to 255
    f255 = _load_one(tmp_path, "f.tif", lambda p: Image.fromarray((dark / 100).astype(np.float32)).save(p))
    assert f255[..., 0].tolist() == [[0, 10], [20, 30]]
    unit = _load_one(tmp_path, "u.tif", lambda p: Image.fromarray(np.float32([[0, 0.5], [0.25, 1]])).save(p))
    assert unit[..., 0].tolist() == [[0, 128], [64, 255]]
    nan = np.float32([[np.nan, 0.5], [0.25, 1]])
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy RuntimeWarning
        got = _load_one(tmp_path, "n.tif", lambda p: Image.fromarray(nan).save(p))
    assert got[..., 0].tolist() == [[0, 128], [64, 255]]  # one NaN pixel, not a black image


def test_large_photos_load_without_warnings(tmp_path, monkeypatch):
    import warnings

    import tinytlc.data
    from PIL import Image as PILImage
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", PILImage.MAX_IMAGE_PIXELS)  # restored after the test
    monkeypatch.setattr(tinytlc.data, "MAX_PIXELS", 200)  # PIL warns above 100, refuses above 200
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _load_one(tmp_path, "big.png", lambda p: Image.new("RGB", (12, 12)).save(p)).shape == (12, 12, 3)
    images(tmp_path / "d", ["a", "b"], size=(20, 20))
    with pytest.raises(TinyTLError, match="0.png: more than 200 pixels, too large to read; downscale it"):
        load_data(str(tmp_path / "d"), 2)


def test_data_that_is_a_file_or_images_beside_the_classes(tmp_path):
    images(tmp_path, ["a", "b"])
    Image.new("RGB", (8, 8)).save(tmp_path / "stray.png")
    data = load_data(str(tmp_path), 2)
    assert data.classes == ["a", "b"] and any("stray.png" in w and "not in any class" in w for w in data.warnings)
    with pytest.raises(TinyTLError, match="stray.png: not a directory"):
        load_data(str(tmp_path / "stray.png"), 2)


def test_a_class_folder_given_as_the_data_says_so(tmp_path):
    """--data pointing at one class's folder: its images lie in it, not in class folders."""
    images(tmp_path, ["cat", "dog"])
    with pytest.raises(TinyTLError, match=r"cat: no images found .*; its \d+ images lie in it, not in class folders"):
        load_data(str(tmp_path / "cat"), 2)


def test_class_names_follow_whatever_unicode_normal_form(tmp_path):
    """A folder copied from macOS names a class in NFD (u + combining diaeresis), one made on Linux
    in NFC: the same class for a model trained on either."""
    import unicodedata

    from tinytlc.data import follow_classes
    nfd, nfc = (unicodedata.normalize(form, "Müsli") for form in ("NFD", "NFC"))
    assert nfd != nfc
    images(tmp_path, [nfd, "Brot"])
    data = load_data(str(tmp_path), 2)
    follow_classes(data, ["Brot", nfc], str(tmp_path))
    assert data.classes == ["Brot", nfc] and not data.warnings
