"""Training data: a class-per-folder image tree, a folder of MNIST-format idx files
(e.g. Fashion-MNIST), or `synthetic:N`. Images are kept at their stored size and preprocessed
per batch (resize to the model's resolution, [0, 1] RGB, the backbone's mean/std), so a large
set costs little memory.
"""

from __future__ import annotations

import gzip
import os
import unicodedata
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from tinytlc.errors import TinyTLError, check_int, check_path

IMAGE_EXTS = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
              ".pbm", ".pnm"}
FASHION_MNIST = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"]


@dataclass
class Split:
    """Labelled images; `load(i)` returns image i as uint8 HxWx3 (or HxW for grayscale)."""
    labels: np.ndarray
    load: Callable[[int], np.ndarray]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Data:
    classes: list[str]
    train: Split
    test: Split
    note: str = field(default="")
    warnings: list[str] = field(default_factory=list)  # said on stderr, one line each
    folder: str = ""  # an image folder's real path ("" for other data)
    drawn: bool = False  # its held-out images were drawn at random (no val/ or test/ folder)


@dataclass
class Preprocess:
    resolution: int
    mean: list[float]
    std: list[float]
    channels: int = 3  # 1: the model takes grayscale images (RGB is averaged)

    @classmethod
    def from_manifest(cls, manifest: dict) -> "Preprocess":
        p = manifest["preprocess"]
        return cls(p["resolution"], p["mean"], p["std"], p.get("channels", 3))

    def __call__(self, images: list[np.ndarray], flip: np.ndarray | None = None) -> np.ndarray:
        """uint8 images of any size -> float32 NCHW at the model's resolution, normalised."""
        if all(img.shape == images[0].shape for img in images):
            out = self._resize(np.stack(images))  # one interpolate call for the batch
        else:
            out = np.concatenate([self._resize(img[None]) for img in images])
        if flip is not None:
            out[flip] = out[flip, :, :, ::-1]
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        if self.channels == 1:
            out, mean, std = out.mean(1, keepdims=True), mean.mean(keepdims=True), std.mean(keepdims=True)
        out -= mean[:, None, None]
        out /= std[:, None, None]
        return out

    def _resize(self, batch: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.array(batch, dtype=np.float32)).div_(255)  # a copy: sources may be read-only
        t = t[:, None] if t.ndim == 3 else t.permute(0, 3, 1, 2)  # grayscale NHW or NHWC -> NCHW
        if t.shape[1] == 1:
            t = t.expand(-1, 3, -1, -1)
        if t.shape[-2:] != (self.resolution, self.resolution):
            t = F.interpolate(t, size=(self.resolution, self.resolution), mode="bilinear",
                              align_corners=False, antialias=True)
        return t.contiguous().numpy()


def random_resized_crop(img: np.ndarray, rng: np.random.Generator, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)):
    """A random crop covering `scale` of the area with aspect ratio in `ratio` (as torchvision's
    RandomResizedCrop draws it); the whole image when no draw fits."""
    h, w = img.shape[:2]
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        cw, ch = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            return img[top:top + ch, left:left + cw]
    return img


def batches(split: Split, batch_size: int, pre: Preprocess, rng: np.random.Generator | None = None,
            augment: bool = False):
    """Yield (x, y); shuffled when `rng` is given; with `augment`, random resized crops and flips."""
    order = rng.permutation(len(split)) if rng is not None else np.arange(len(split))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        images = [split.load(int(i)) for i in idx]
        flip = None
        if augment and rng is not None:
            images = [random_resized_crop(img, rng) for img in images]
            flip = rng.random(len(idx)) < 0.5
        yield pre(images, flip), split.labels[idx].astype(np.int64)


# ---- sources ---------------------------------------------------------------------------------

def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
        dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    except (OSError, struct.error, EOFError) as e:
        raise TinyTLError(f"{path}: not an idx file ({e})") from e
    if zero != 0 or dtype != 0x08:
        raise TinyTLError(f"{path}: not an unsigned-byte idx file")
    body = raw[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)):
        raise TinyTLError(f"{path}: header says {dims} ({int(np.prod(dims))} bytes), file holds {len(body)} "
                          "(wrong image sizes or truncated file)")
    return np.frombuffer(body, np.uint8).reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_idx(folder: Path) -> Data:
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        img, lab = _find(folder, f"{prefix}-images-idx3-ubyte"), _find(folder, f"{prefix}-labels-idx1-ubyte")
        if img is None or lab is None:
            raise TinyTLError(f"{folder}: missing {prefix}-images-idx3-ubyte or {prefix}-labels-idx1-ubyte")
        images, labels = _read_idx(img), _read_idx(lab)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise TinyTLError(f"{folder}: {img.name} has shape {images.shape}, {lab.name} {labels.shape}: "
                              "expected N images of HxW and N labels")
        parts[split] = Split(labels.astype(np.int64), lambda i, a=images: a[i])
    if parts["train"].load(0).shape != parts["test"].load(0).shape:
        raise TinyTLError(f"{folder}: train and test images differ in size")
    n = int(max(parts["train"].labels.max(), parts["test"].labels.max())) + 1
    classes = FASHION_MNIST if "fashion" in str(folder).lower() and n == 10 else [str(c) for c in range(n)]
    return Data(classes, parts["train"], parts["test"])


MAX_PIXELS = 400_000_000  # PIL's default (179 MP) refuses 200 MP phone photos; beyond this: one line


def open_image(path: Path):
    """PIL's Image.open, without its decompression-bomb warning on stderr for large photos."""
    import warnings

    from PIL import Image
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS // 2  # PIL warns above it and refuses above twice it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def to_rgb8(im) -> np.ndarray:
    """Any PIL image as upright uint8 RGB. EXIF orientation is applied (phone photos); transparent
    pixels are composited on mid grey (their stored colour is arbitrary, often black); 16- and 32-bit
    and float modes are scaled by their type's range, not per image (PIL's convert("RGB") clips them)."""
    from PIL import ImageOps
    if im.getexif().get(0x0112, 1) != 1:  # Orientation
        im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if im.mode.startswith("I;16") or im.format in ("PPM", "PNG"):
            top = 65535.0  # (PIL reads a 16-bit PGM as mode I, scaled to 16 bits)
        elif im.mode == "F":
            top = 1.0 if a.min() >= 0 and a.max() <= 1 else 255.0  # [0, 1] floats or [0, 255] ones
        else:
            top = next(t for t in (255.0, 65535.0, 2.0 ** 31 - 1) if a.max() <= t)
        a = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=-1)
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        from PIL import Image
        rgba = im.convert("RGBA")
        return np.asarray(Image.alpha_composite(Image.new("RGBA", rgba.size, (128, 128, 128, 255)), rgba).convert("RGB"))
    return np.asarray(im.convert("RGB"))


def _image_loader(paths: list[Path]):
    from PIL import UnidentifiedImageError

    def load(i: int) -> np.ndarray:
        try:
            with open_image(paths[i]) as im:
                return to_rgb8(im)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            raise TinyTLError(f"{paths[i]}: cannot read image ({e}); fix or remove it, or pass --skip-bad-images") from e
    return load


def check_images(paths: list[Path], skip_bad: bool, skipped: list[Path]) -> list[Path]:
    """Decode every image before training starts (verify() alone passes a truncated JPEG): one line
    naming the first bad file, or, with skip_bad, the good ones (the bad ones go to `skipped`)."""
    good = []
    for path in paths:
        try:
            with open_image(path) as im:
                im.draft(None, (1, 1))  # a JPEG decodes at 1/8 scale: every byte is still read, faster
                im.load()
            good.append(path)
        except Exception as e:  # PIL raises many types for damaged files
            if not skip_bad and type(e).__name__ == "DecompressionBombError":
                raise TinyTLError(f"{path}: more than {MAX_PIXELS:,} pixels, too large to read; downscale it") from e
            if not skip_bad:
                raise TinyTLError(f"{path}: cannot read image ({type(e).__name__}: {str(e)[:120]}); "
                                  "fix or remove it, or pass --skip-bad-images") from e
            skipped.append(path)
    return good


# Hidden files and folders, macOS resource forks (._photo.jpg) and zip leftovers (__MACOSX/) are not data.
JUNK = (".", "__MACOSX")
# Split folder names, compared case-insensitively; the first held-out name found is used.
TRAIN_SPLITS = ("train", "training", "training_set", "train_set", "trainset")
HELD_SPLITS = ("val", "valid", "validation", "validation_set", "val_set", "dev", "test", "testing", "test_set",
               "testset")


def _subfolders(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(JUNK))


def _class_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()
                  and not any(part.startswith(JUNK) for part in p.relative_to(folder).parts))


def _scan_classes(root: Path, skip_bad: bool, skipped: list[Path], warnings: list[str]) -> dict[str, list[Path]]:
    """Class folder name -> its readable images; a folder with none is not a class (said in `warnings`)."""
    found, empty = {}, []
    for d in _subfolders(root):
        files = check_images(_class_images(d), skip_bad, skipped)
        if files:
            found[d.name] = files
        else:
            empty.append(d.name)
    if empty:
        warnings.append(f"{root}: no readable image in {', '.join(empty[:5])}{', ...' if len(empty) > 5 else ''}; "
                        "not taken as class(es)")
    return found


def _split_folders(root: Path) -> tuple[Path | None, Path | None]:
    """root/train (any common name and case) and root/val or root/test, if that is the layout. A lone
    train folder is a split too; beside class folders it is a class."""
    dirs = {d.name.lower(): d for d in _subfolders(root)}
    train = next((dirs[n] for n in TRAIN_SPLITS if n in dirs), None)
    held = next((dirs[n] for n in HELD_SPLITS if n in dirs), None)
    if train is None and held is not None and len(dirs) == 1:
        return None, held  # a lone test/ folder: held-out images only (eval)
    if train is None or (held is None and len(dirs) > 1):
        return None, None
    return train, held


def _labelled(found: dict[str, list[Path]], classes: list[str]) -> tuple[list[Path], np.ndarray]:
    paths = [p for c in classes for p in found.get(c, [])]
    labels = [i for i, c in enumerate(classes) for _ in found.get(c, [])]
    return paths, np.asarray(labels, np.int64)


def load_image_folder(root: Path, held_out: float = 0.1, seed: int = 0, skip_bad: bool = False,
                      min_classes: int = 2) -> Data:
    """root/<class>/*.jpg, or root/train/<class>/... with root/val (or test)/<class>/... (common split
    names in any case: Train/Test, training_set/test_set, train/validation ...). Training needs 2
    classes; scoring a trained model (its class names known) needs `min_classes` 1."""
    skipped, warnings = [], []
    train_dir, held_dir = _split_folders(root)
    drawn = held_dir is None
    if held_dir is not None:
        train = _scan_classes(train_dir, skip_bad, skipped, warnings) if train_dir is not None else {}
        held = _scan_classes(held_dir, skip_bad, skipped, warnings)
        extra = [c for c in held if c not in train]
        if extra and train:
            raise TinyTLError(f"{held_dir}: class folder(s) {', '.join(extra[:5])} have no images in {train_dir}; "
                              "the held-out classes must be training classes (same folder names)")
        classes = list(train or held)
        missing = [c for c in classes if c not in held]
        if missing and held:
            warnings.append(f"{held_dir}: no held-out images of {', '.join(missing[:5])}"
                            f"{', ...' if len(missing) > 5 else ''}")
        train_paths, train_labels = _labelled(train, classes)
        test_paths, test_labels = _labelled(held, classes)
        note = f"test split from {held_dir.name}/"
    else:
        found = _scan_classes(train_dir or root, skip_bad, skipped, warnings)
        loose = [p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(JUNK)]
        if loose and found:
            warnings.append(f"{root}: {len(loose)} image(s) beside the class folders (e.g. {loose[0].name}) are not "
                            "in any class; left out")
        classes = list(found)
        paths, labels = _labelled(found, classes)
        rng = np.random.default_rng(seed)
        test_mask = np.zeros(len(paths), bool)
        for c in range(len(classes)):  # stratified: held_out of every class, at least one image
            idx = np.flatnonzero(labels == c)
            if len(idx) > 1:
                test_mask[rng.choice(idx, max(1, round(held_out * len(idx))), replace=False)] = True
        train_paths = [p for p, m in zip(paths, test_mask) if not m]
        test_paths = [p for p, m in zip(paths, test_mask) if m]
        train_labels, test_labels = labels[~test_mask], labels[test_mask]
        note = f"{held_out:.0%} of each class held out (seed {seed})"
    if skipped:
        warnings.append(f"skipped {len(skipped)} unreadable image(s) (--skip-bad-images), e.g. {skipped[0]}")
    if len(train_paths) + len(test_paths) == 0:
        loose = [p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(JUNK)]
        hint = f"; its {len(loose)} images lie in it, not in class folders: is it one class? give its parent" \
            if loose else ""
        raise TinyTLError(f"{root}: no images found (expected {root}/<class>/<image> files){hint}")
    if len(classes) < min_classes:
        raise TinyTLError(f"{root}: images of only {len(classes)} class found; need at least 2 class folders")
    if len(test_paths) == 0:
        warnings.append(f"{root}: no held-out images (a val/ folder, or 2 or more images a class), so no held-out "
                        "accuracy")
    return Data(classes, Split(train_labels, _image_loader(train_paths)), Split(test_labels, _image_loader(test_paths)),
                note, warnings, os.path.realpath(root), drawn)


def synthetic(n: int, num_classes: int, seed: int = 0, size: int = 32) -> Data:
    """Separable images: each class has its own colour and a smooth pattern; plus pixel noise."""
    rng = np.random.default_rng(seed)
    colours = rng.uniform(60, 195, (num_classes, 1, 1, 3))
    coarse = rng.uniform(-40, 40, (num_classes, 4, 4, 3))
    protos = colours + np.repeat(np.repeat(coarse, size // 4, 1), size // 4, 2)

    def make(count: int, offset: int) -> Split:
        labels = np.arange(count) % num_classes
        noise_seed = seed + offset

        def load(i: int) -> np.ndarray:
            r = np.random.default_rng([noise_seed, i])
            return np.clip(protos[labels[i]] + r.normal(0, 25, protos.shape[1:]), 0, 255).astype(np.uint8)
        return Split(labels.astype(np.int64), load)
    return Data([f"class{c}" for c in range(num_classes)], make(n, 1), make(max(num_classes, n // 5), 2),
                f"synthetic, {n} train images")


SYNTHETIC_MAX = 10_000_000


def load_data(spec: str | os.PathLike, num_classes: int, limit: int | None = None, seed: int = 0,
              test_limit: int | None = None, skip_bad: bool = False, classes: list[str] | None = None,
              min_classes: int = 2) -> Data:
    """Resolve --data. `limit` (`test_limit`) keeps a fixed random subset of the training (held-out)
    split. `classes`: the class names a model was trained on; labels follow them by name.
    `min_classes`: class folders an image folder needs (eval scores one class of a trained model)."""
    check_path("--data", spec)
    check_int("num_classes", num_classes, 2)
    check_int("--limit", limit, 2, optional=True)
    check_int("test_limit", test_limit, 1, optional=True)
    spec = os.fspath(spec)
    if not spec.strip():
        raise TinyTLError("--data is empty; give an image folder, an idx folder or synthetic:N")
    if spec.startswith("synthetic:"):
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            raise TinyTLError(f"--data {spec}: expected synthetic:N with N a number of images") from None
        if not 2 <= n <= SYNTHETIC_MAX:
            raise TinyTLError(f"--data {spec}: need 2 to {SYNTHETIC_MAX:,} images")
        data = synthetic(n, num_classes, seed)
    else:
        root = Path(spec)
        if not root.is_dir():
            raise TinyTLError(f"--data {spec}: {'not a directory' if root.exists() else 'no such directory'}")
        is_idx = any(p.name.endswith(("idx3-ubyte", "idx3-ubyte.gz")) for p in root.iterdir())
        data = load_idx(root) if is_idx else load_image_folder(root, seed=seed, skip_bad=skip_bad,
                                                               min_classes=min_classes)
    if classes is not None and data.classes != classes:
        follow_classes(data, classes, spec)
    if len(data.classes) > num_classes:
        raise TinyTLError(f"--data {spec} has {len(data.classes)} classes, the model was compiled for "
                          f"{num_classes} (compile with --num-classes {len(data.classes)})")
    if limit is not None and limit < len(data.train):
        data.train = subset(data.train, limit, seed)
    if test_limit is not None and test_limit < len(data.test):
        data.test = subset(data.test, test_limit, seed)
    return data


def follow_classes(data: Data, classes: list[str], spec: str) -> None:
    """Relabel `data` by class name to a trained model's class list (a folder lacking a class would
    otherwise shift every later label by one). Names compare in Unicode NFC: a folder copied from
    macOS spells "Müsli" with a combining diaeresis (NFD), Linux with one character."""
    trained = {unicodedata.normalize("NFC", c): c for c in classes}
    data.classes = [trained.get(unicodedata.normalize("NFC", c), c) for c in data.classes]
    unknown = [c for c in data.classes if c not in classes]
    if unknown:
        raise TinyTLError(f"--data {spec}: class(es) {', '.join(unknown[:5])} are not among the {len(classes)} the "
                          f"model was trained on ({', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''})")
    missing = [c for c in classes if c not in data.classes]
    if missing:
        data.warnings.append(f"--data {spec} has no class folder for {', '.join(missing[:5])}"
                             f"{', ...' if len(missing) > 5 else ''} (the other classes keep their labels)")
    to_trained = np.array([classes.index(c) for c in data.classes], np.int64)
    for split in (data.train, data.test):
        split.labels = to_trained[split.labels]
    data.classes = list(classes)


def subset(split: Split, n: int, seed: int = 0) -> Split:
    idx = np.sort(np.random.default_rng(seed).permutation(len(split))[:n])
    return Split(split.labels[idx], lambda i, s=split, m=idx: s.load(int(m[i])))
