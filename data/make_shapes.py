"""Generate a synthetic image–caption data set of coloured shapes.

Every caption is determined by what is drawn, so a model fine-tuned on these pairs can
be checked against ground truth: "a red circle", "three blue squares",
"two green triangles left of a yellow circle", "a purple square above a red triangle".

Usage::

    python data/make_shapes.py OUT_DIR --n 2000 --seed 0 [--lang en|zh|en,zh]

writes ``OUT_DIR/images/000000.png ...`` and ``OUT_DIR/pairs.csv`` (columns ``image``,
path relative to OUT_DIR, and ``caption``). The same seed gives byte-identical output,
and pair ``i`` depends only on ``(seed, i)``, so ``--n 100`` is a prefix of ``--n 1000``.

``--lang zh`` writes Chinese captions ("一个红色的圆形") for the SAME images: the language
only chooses how a drawn scene is worded, never a random draw, so the English and Chinese
sets of one seed align pair by pair. Several languages (``--lang en,zh``) write one
column per language, ``caption_en``, ``caption_zh``, beside the same ``image`` column.

Only the standard library and Pillow are used. ``data/`` is not a package; import this
file by path (``importlib.util.spec_from_file_location``) to reuse the functions. (No
``from __future__ import annotations`` here: dataclasses with string annotations fail
to build when such a module is executed without being put in ``sys.modules``.)

Caption grammar::

    caption  := group                              (kind "single": count 1)
              | group                              (kind "count":  count 2-3)
              | group " " relation " " group       (kind "pair":   counts 1-2)
    group    := "a " colour " " shape | number " " colour " " shape "s"
    number   := "two" | "three"
    relation := "left of" | "above"
    colour   := red | green | blue | yellow | purple
    shape    := circle | square | triangle

In a pair the two groups differ in colour or shape; every object of the first group
lies wholly in the left (top) half and every object of the second in the right
(bottom) half.

Chinese grammar (``lang="zh"``), the same scenes::

    caption  := group                              一个红色的圆形 / 三个蓝色的正方形
              | group "在" group2 "的" relation    两个蓝色的正方形在一个黄色三角形的左边
    group    := number colour "的" shape
    group2   := number colour shape                (no 的 inside the second group)
    number   := 一个 | 两个 | 三个
    relation := 左边 (left of) | 上面 (above)
    colour   := 红色 | 绿色 | 蓝色 | 黄色 | 紫色
    shape    := 圆形 | 正方形 | 三角形
"""

import argparse
import csv
import math
import random
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 225),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 200),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
RELATIONS: tuple[str, ...] = ("left of", "above")
NUMBERS: dict[int, str] = {1: "a", 2: "two", 3: "three"}
#: Caption languages: English (the grammar above) and Chinese (the same scenes).
LANGUAGES: tuple[str, ...] = ("en", "zh")
ZH_COLOURS: dict[str, str] = {
    "red": "红色",
    "green": "绿色",
    "blue": "蓝色",
    "yellow": "黄色",
    "purple": "紫色",
}
ZH_SHAPES: dict[str, str] = {"circle": "圆形", "square": "正方形", "triangle": "三角形"}
ZH_NUMBERS: dict[int, str] = {1: "一个", 2: "两个", 3: "三个"}
ZH_RELATIONS: dict[str, str] = {"left of": "左边", "above": "上面"}
# Relative frequency of each caption kind in a generated set. Half are single objects,
# so a tiny model learns colour and shape within a minute of CPU fine-tuning.
DEFAULT_KINDS: dict[str, float] = {"single": 0.5, "count": 0.25, "pair": 0.25}

# Shapes are drawn this many times larger, then downsampled, for anti-aliased edges.
_SUPERSAMPLE = 4
# Radius range of an object, as a fraction of the image side, per caption kind: fewer
# objects are drawn bigger.
_RADIUS = {"single": (0.14, 0.22), "count": (0.09, 0.14), "pair": (0.08, 0.11)}
_NOISE_ALPHA = 0.06  # weight of uniform per-pixel noise blended over the image
_COLOUR_JITTER = 20  # max per-channel offset from the nominal colour
_MAX_TILT_DEG = 15.0  # polygons are rotated by at most this much
_GAP = 2.0  # pixels between the two halves of a "pair" scene


@dataclass(frozen=True)
class Group:
    """``count`` objects of one colour and shape."""

    count: int  # 1-3
    colour: str  # a key of COLOURS
    shape: str  # one of SHAPES

    @property
    def phrase(self) -> str:
        """The noun phrase, e.g. "a red circle" or "two blue squares"."""
        plural = "" if self.count == 1 else "s"
        return f"{NUMBERS[self.count]} {self.colour} {self.shape}{plural}"

    def phrase_zh(self, de: bool = True) -> str:
        """The Chinese noun phrase, e.g. "一个红色的圆形" (without 的 when not ``de``)."""
        joint = "的" if de else ""
        return f"{ZH_NUMBERS[self.count]}{ZH_COLOURS[self.colour]}{joint}{ZH_SHAPES[self.shape]}"


@dataclass(frozen=True)
class Scene:
    """What an image shows: one group, or two groups and their spatial relation."""

    groups: tuple[Group, ...]  # one or two groups
    relation: str | None = None  # one of RELATIONS when there are two groups

    def __post_init__(self) -> None:
        if len(self.groups) not in (1, 2):
            raise ValueError("a scene has one or two groups")
        if (len(self.groups) == 2) != (self.relation is not None):
            raise ValueError("a relation is needed exactly when there are two groups")
        if self.relation is not None and self.relation not in RELATIONS:
            raise ValueError(f"unknown relation {self.relation!r}")
        for g in self.groups:
            if g.colour not in COLOURS or g.shape not in SHAPES or g.count not in NUMBERS:
                raise ValueError(f"unsupported group {g!r}")

    @property
    def kind(self) -> str:
        """ "single", "count" or "pair"."""
        if self.relation is not None:
            return "pair"
        return "single" if self.groups[0].count == 1 else "count"

    @property
    def caption(self) -> str:
        if self.relation is None:
            return self.groups[0].phrase
        first, second = self.groups
        return f"{first.phrase} {self.relation} {second.phrase}"

    @property
    def caption_zh(self) -> str:
        """The caption in Chinese: "两个蓝色的正方形在一个黄色三角形的左边"."""
        if self.relation is None:
            return self.groups[0].phrase_zh()
        first, second = self.groups
        where = ZH_RELATIONS[self.relation]
        return f"{first.phrase_zh()}在{second.phrase_zh(de=False)}的{where}"

    def caption_in(self, lang: str) -> str:
        """The caption in ``lang`` (one of :data:`LANGUAGES`)."""
        if lang == "en":
            return self.caption
        if lang == "zh":
            return self.caption_zh
        raise ValueError(f"unknown caption language {lang!r} (known: {', '.join(LANGUAGES)})")


@dataclass(frozen=True)
class Placed:
    """One drawn object, in pixel coordinates of the output image."""

    shape: str
    colour: str
    x: float  # centre
    y: float
    r: float  # circumradius
    tilt: float  # degrees; ignored for circles


def _random_group(rng: random.Random, counts: Sequence[int]) -> Group:
    return Group(rng.choice(counts), rng.choice(list(COLOURS)), rng.choice(SHAPES))


def sample_scene(rng: random.Random, kinds: Mapping[str, float] | None = None) -> Scene:
    """Draw a random scene; ``kinds`` weights "single", "count" and "pair"."""
    weights = dict(DEFAULT_KINDS if kinds is None else kinds)
    kind = rng.choices(list(weights), weights=list(weights.values()))[0]
    if kind == "single":
        return Scene((_random_group(rng, [1]),))
    if kind == "count":
        return Scene((_random_group(rng, [2, 3]),))
    if kind != "pair":
        raise ValueError(f"unknown caption kind {kind!r}")
    first = _random_group(rng, [1, 2])
    second = _random_group(rng, [1, 2])
    while (second.colour, second.shape) == (first.colour, first.shape):
        second = _random_group(rng, [1, 2])
    return Scene((first, second), rng.choice(RELATIONS))


def _place_group(
    rng: random.Random,
    group: Group,
    box: tuple[float, float, float, float],
    radius: tuple[float, float],
    taken: list[Placed],
) -> None:
    """Add ``group.count`` non-overlapping objects wholly inside ``box`` to ``taken``."""
    x0, y0, x1, y1 = box
    lo, hi = radius
    for _ in range(group.count):
        for attempt in range(200):
            # Shrink the objects if the box turns out to be crowded.
            r = rng.uniform(lo, hi) * (0.97 ** (attempt // 20))
            x, y = rng.uniform(x0 + r, x1 - r), rng.uniform(y0 + r, y1 - r)
            if all(math.hypot(x - p.x, y - p.y) > r + p.r + 1.5 for p in taken):
                break
        tilt = rng.uniform(-_MAX_TILT_DEG, _MAX_TILT_DEG)
        taken.append(Placed(group.shape, group.colour, x, y, r, tilt))


def layout(scene: Scene, rng: random.Random, size: int = 64) -> list[Placed]:
    """Choose positions, sizes and tilts of every object of ``scene``."""
    lo, hi = _RADIUS[scene.kind]
    radius = (lo * size, hi * size)
    pad = 1.0
    whole = (pad, pad, size - pad, size - pad)
    taken: list[Placed] = []
    if scene.relation is None:
        _place_group(rng, scene.groups[0], whole, radius, taken)
    else:
        # A small gap between the halves keeps the relation unambiguous.
        a, b = size / 2 - _GAP / 2, size / 2 + _GAP / 2
        if scene.relation == "left of":
            boxes = [(pad, pad, a, size - pad), (b, pad, size - pad, size - pad)]
        else:  # "above"
            boxes = [(pad, pad, size - pad, a), (pad, b, size - pad, size - pad)]
        for group, box in zip(scene.groups, boxes, strict=True):
            _place_group(rng, group, box, radius, taken)
    return taken


def _polygon(p: Placed, scale: int) -> list[tuple[float, float]]:
    corners, start = (4, 45.0) if p.shape == "square" else (3, -90.0)
    # A triangle's circumradius is enlarged a little so its area is closer to the others.
    r = p.r * scale * (1.15 if p.shape == "triangle" else 1.0)
    cx, cy = p.x * scale, p.y * scale
    return [
        (
            cx + r * math.cos(math.radians(start + p.tilt + 360.0 * k / corners)),
            cy + r * math.sin(math.radians(start + p.tilt + 360.0 * k / corners)),
        )
        for k in range(corners)
    ]


def _jitter(rng: random.Random, rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    j = _COLOUR_JITTER
    return tuple(min(255, max(0, c + rng.randint(-j, j))) for c in rgb)  # type: ignore[return-value]


def render_scene(
    scene: Scene, rng: random.Random, size: int = 64
) -> tuple[Image.Image, list[Placed]]:
    """Draw ``scene`` as a ``size`` x ``size`` RGB image.

    Args:
        scene: what to draw.
        rng: source of all randomness (layout, background, colour jitter, noise).
        size: side of the square image in pixels.

    Returns:
        The image and the objects drawn, in the image's pixel coordinates.
    """
    placed = layout(scene, rng, size)
    grey = rng.randint(30, 100)
    background = tuple(min(255, max(0, grey + rng.randint(-8, 8))) for _ in range(3))
    big = size * _SUPERSAMPLE
    image = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(image)
    for p in placed:
        fill = _jitter(rng, COLOURS[p.colour])
        if p.shape == "circle":
            s, r = _SUPERSAMPLE, p.r * _SUPERSAMPLE
            draw.ellipse((p.x * s - r, p.y * s - r, p.x * s + r, p.y * s + r), fill=fill)
        else:
            draw.polygon(_polygon(p, _SUPERSAMPLE), fill=fill)
    image = image.resize((size, size), Image.Resampling.BOX)
    noise = Image.frombytes("RGB", (size, size), rng.randbytes(size * size * 3))
    return Image.blend(image, noise, _NOISE_ALPHA), placed


def _pair_rng(seed: int, index: int) -> random.Random:
    # Each pair has its own stream, so pair i does not depend on how many come before.
    return random.Random(seed * 1_000_003 + index)


@dataclass(frozen=True)
class Sample:
    """One generated pair, with the ground truth it was drawn from."""

    image: Image.Image
    scene: Scene
    placed: tuple[Placed, ...]

    @property
    def caption(self) -> str:
        return self.scene.caption


def make_sample(
    seed: int, index: int, size: int = 64, kinds: Mapping[str, float] | None = None
) -> Sample:
    """The ``index``-th sample of the data set with ``seed``."""
    rng = _pair_rng(seed, index)
    scene = sample_scene(rng, kinds)
    image, placed = render_scene(scene, rng, size)
    return Sample(image, scene, tuple(placed))


def make_pair(
    seed: int,
    index: int,
    size: int = 64,
    kinds: Mapping[str, float] | None = None,
    lang: str = "en",
) -> tuple[Image.Image, str]:
    """The ``index``-th image and caption (in ``lang``) of the data set with ``seed``."""
    sample = make_sample(seed, index, size, kinds)
    return sample.image, sample.scene.caption_in(lang)


def _parse_group(text: str) -> Group:
    words = text.split()
    counts = {word: count for count, word in NUMBERS.items()}
    if len(words) != 3 or words[0] not in counts:
        raise ValueError(f"not a group: {text!r}")
    count, colour, shape = counts[words[0]], words[1], words[2]
    if count > 1:
        if not shape.endswith("s"):
            raise ValueError(f"expected a plural in {text!r}")
        shape = shape[:-1]
    return Group(count, colour, shape)


def _zh_group(text: str, de: bool) -> Group:
    """Parse "一个红色的圆形" (``de``) or "一个红色圆形"."""
    for count, number in ZH_NUMBERS.items():
        for colour, colour_zh in ZH_COLOURS.items():
            for shape, shape_zh in ZH_SHAPES.items():
                if text == f"{number}{colour_zh}{'的' if de else ''}{shape_zh}":
                    return Group(count, colour, shape)
    raise ValueError(f"not a Chinese group: {text!r}")


def parse_caption_zh(caption: str) -> Scene:
    """Invert :attr:`Scene.caption_zh`; raises ``ValueError`` outside the grammar."""
    first, sep, rest = caption.partition("在")
    if not sep:
        return Scene((_zh_group(caption, de=True),))
    for relation, word in ZH_RELATIONS.items():
        suffix = f"的{word}"
        if rest.endswith(suffix):
            second = _zh_group(rest[: -len(suffix)], de=False)
            return Scene((_zh_group(first, de=True), second), relation)
    raise ValueError(f"not a Chinese caption of the grammar: {caption!r}")


def parse_caption(caption: str, lang: str = "en") -> Scene:
    """Invert :attr:`Scene.caption` (or :attr:`Scene.caption_zh` for ``lang="zh"``);
    raises ``ValueError`` outside the grammar."""
    if lang == "zh":
        return parse_caption_zh(caption)
    if lang != "en":
        raise ValueError(f"unknown caption language {lang!r} (known: {', '.join(LANGUAGES)})")
    for relation in RELATIONS:
        first, sep, second = caption.partition(f" {relation} ")
        if sep:
            return Scene((_parse_group(first), _parse_group(second)), relation)
    scene = Scene((_parse_group(caption),))
    if scene.caption != caption:
        raise ValueError(f"not a caption of the grammar: {caption!r}")
    return scene


def caption_columns(langs: Sequence[str]) -> list[str]:
    """The caption columns of ``pairs.csv`` for ``langs``: ``caption`` for one language,
    ``caption_<lang>`` each for several."""
    return ["caption"] if len(langs) == 1 else [f"caption_{lang}" for lang in langs]


def _parse_langs(lang: str | Sequence[str]) -> list[str]:
    langs = [x.strip() for x in lang.split(",")] if isinstance(lang, str) else list(lang)
    unknown = [x for x in langs if x not in LANGUAGES]
    if not langs or unknown or len(set(langs)) != len(langs):
        raise ValueError(f"bad caption languages {lang!r} (known: {', '.join(LANGUAGES)})")
    return langs


def make_shapes(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    size: int = 64,
    kinds: Mapping[str, float] | None = None,
    lang: str | Sequence[str] = "en",
) -> Path:
    """Write ``n`` image–caption pairs under ``out_dir``.

    Args:
        out_dir: created if missing; receives ``images/*.png`` and ``pairs.csv``.
        n: number of pairs.
        seed: the same seed gives byte-identical files.
        size: image side in pixels.
        kinds: relative weights of "single", "count" and "pair" captions.
        lang: caption language(s): "en", "zh", or several ("en,zh" or a list), which
            writes one ``caption_<lang>`` column each. The images never depend on it.

    Returns:
        The path of ``pairs.csv``.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    langs = _parse_langs(lang)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    width = max(6, len(str(n - 1)))
    csv_path = out / "pairs.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image", *caption_columns(langs)])
        for i in range(n):
            sample = make_sample(seed, i, size, kinds)
            rel = f"images/{i:0{width}d}.png"
            sample.image.save(out / rel, format="PNG")
            writer.writerow([rel, *(sample.scene.caption_in(x) for x in langs)])
    return csv_path


def _parse_kinds(text: str) -> dict[str, float]:
    """Parse "single=0.5,count=0.25,pair=0.25"."""
    kinds: dict[str, float] = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        if name.strip() not in DEFAULT_KINDS:
            raise argparse.ArgumentTypeError(f"unknown caption kind {name.strip()!r}")
        kinds[name.strip()] = float(weight)
    return kinds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="output directory")
    parser.add_argument("--n", type=int, default=1000, help="number of pairs")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument(
        "--kinds",
        type=_parse_kinds,
        default=None,
        help="caption kind weights, e.g. single=0.5,count=0.25,pair=0.25",
    )
    parser.add_argument(
        "--lang",
        default="en",
        help="caption language(s): en, zh, or en,zh for one caption column each [en]",
    )
    args = parser.parse_args(argv)
    try:
        langs = _parse_langs(args.lang)
    except ValueError as exc:
        parser.error(str(exc))
    path = make_shapes(args.out_dir, args.n, args.seed, args.size, args.kinds, langs)
    print(f"wrote {args.n} pairs to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
