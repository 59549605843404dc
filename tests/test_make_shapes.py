"""Tests of the synthetic shapes generator, data/make_shapes.py."""

import csv
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, load_make_shapes

SCRIPT = ROOT / "data" / "make_shapes.py"


ms = load_make_shapes()


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _nearest_colour(rgb: tuple[float, float, float]) -> str:
    return min(
        ms.COLOURS,
        key=lambda name: sum((a - b) ** 2 for a, b in zip(rgb, ms.COLOURS[name], strict=True)),
    )


def _mean_rgb_inside(image, p, shrink: float = 0.5) -> tuple[float, float, float]:
    """Mean colour of the pixels within ``shrink * radius`` of an object's centre."""
    pixels = image.load()
    inside = [
        pixels[x, y]
        for y in range(image.height)
        for x in range(image.width)
        if (x + 0.5 - p.x) ** 2 + (y + 0.5 - p.y) ** 2 <= (shrink * p.r) ** 2
    ]
    assert inside, "object too small to sample"
    return tuple(sum(c[i] for c in inside) / len(inside) for i in range(3))


def test_same_seed_gives_identical_files(tmp_path):
    a = ms.make_shapes(tmp_path / "a", 12, seed=3)
    b = ms.make_shapes(tmp_path / "b", 12, seed=3)
    assert a.read_bytes() == b.read_bytes()
    for row in _read_csv(a):
        assert (a.parent / row["image"]).read_bytes() == (b.parent / row["image"]).read_bytes()


def test_different_seed_gives_different_data(tmp_path):
    a = ms.make_shapes(tmp_path / "a", 12, seed=3)
    b = ms.make_shapes(tmp_path / "b", 12, seed=4)
    assert a.read_bytes() != b.read_bytes()
    rows = _read_csv(a)
    assert any(
        (a.parent / r["image"]).read_bytes() != (b.parent / r["image"]).read_bytes() for r in rows
    )


def test_csv_columns_and_images(tmp_path):
    from PIL import Image

    path = ms.make_shapes(tmp_path, 7, seed=0)
    assert path == tmp_path / "pairs.csv"
    with path.open(newline="", encoding="utf-8") as f:
        assert next(csv.reader(f)) == ["image", "caption"]
    rows = _read_csv(path)
    assert len(rows) == 7
    for row in rows:
        assert not Path(row["image"]).is_absolute()
        with Image.open(tmp_path / row["image"]) as image:
            assert image.format == "PNG"
            assert image.mode == "RGB"
            assert image.size == (64, 64)
        assert ms.parse_caption(row["caption"]).caption == row["caption"]


def test_smaller_n_is_a_prefix(tmp_path):
    small = _read_csv(ms.make_shapes(tmp_path / "s", 5, seed=1))
    large = _read_csv(ms.make_shapes(tmp_path / "l", 9, seed=1))
    assert small == large[:5]


def test_single_red_circle_is_red_and_round():
    scene = ms.Scene((ms.Group(1, "red", "circle"),))
    assert scene.caption == "a red circle"
    image, placed = ms.render_scene(scene, random.Random(0))
    assert len(placed) == 1
    r, g, b = _mean_rgb_inside(image, placed[0])
    assert r > 150 and g < 100 and b < 100
    # A circle fills about pi/4 of its bounding box; a square fills (nearly) all of it.
    p = placed[0]
    red = [
        (x, y)
        for y in range(image.height)
        for x in range(image.width)
        if _nearest_colour(image.getpixel((x, y))) == "red" and image.getpixel((x, y))[0] > 150
    ]
    box_area = (max(x for x, _ in red) - min(x for x, _ in red) + 1) * (
        max(y for _, y in red) - min(y for _, y in red) + 1
    )
    assert 0.65 < len(red) / box_area < 0.9, p


@pytest.mark.parametrize("colour", sorted(ms.COLOURS))
def test_every_colour_is_drawn_as_named(colour):
    for shape in ms.SHAPES:
        scene = ms.Scene((ms.Group(1, colour, shape),))
        image, placed = ms.render_scene(scene, random.Random(1))
        assert _nearest_colour(_mean_rgb_inside(image, placed[0])) == colour


def test_sampled_captions_match_what_is_drawn():
    for index in range(60):
        sample = ms.make_sample(seed=5, index=index)
        assert ms.parse_caption(sample.caption) == sample.scene
        groups = sample.scene.groups
        assert len(sample.placed) == sum(g.count for g in groups)
        for p in sample.placed:
            assert _nearest_colour(_mean_rgb_inside(sample.image, p)) == p.colour
        # Objects are drawn group by group, in caption order.
        first = sample.placed[: groups[0].count]
        second = sample.placed[groups[0].count :]
        assert all((p.colour, p.shape) == (groups[0].colour, groups[0].shape) for p in first)
        if sample.scene.relation == "left of":
            assert max(p.x + p.r for p in first) < min(p.x - p.r for p in second)
        elif sample.scene.relation == "above":
            assert max(p.y + p.r for p in first) < min(p.y - p.r for p in second)


def test_all_caption_kinds_occur():
    captions = [ms.make_pair(seed=0, index=i)[1] for i in range(300)]
    kinds = {ms.parse_caption(c).kind for c in captions}
    assert kinds == {"single", "count", "pair"}
    assert "a red circle" in captions


def test_kinds_can_be_restricted():
    captions = [ms.make_pair(0, i, kinds={"single": 1.0})[1] for i in range(50)]
    assert all(ms.parse_caption(c).kind == "single" for c in captions)


def test_parse_caption_rejects_text_outside_the_grammar():
    for bad in ["a red", "a red circles", "two red circle", "a pink circle", "red circle"]:
        with pytest.raises(ValueError):
            ms.parse_caption(bad)


def test_cli_writes_the_same_files_as_the_function(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "cli"), "--n", "4", "--seed", "2"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    expected = ms.make_shapes(tmp_path / "api", 4, seed=2)
    assert (tmp_path / "cli" / "pairs.csv").read_bytes() == expected.read_bytes()
    assert len(_read_csv(expected)) == 4
    assert (tmp_path / "cli" / "images" / "000003.png").read_bytes() == (
        tmp_path / "api" / "images" / "000003.png"
    ).read_bytes()


# -- Chinese captions (--lang zh) ------------------------------------------------------------


def test_chinese_captions_follow_the_grammar():
    assert ms.Scene((ms.Group(1, "red", "circle"),)).caption_zh == "一个红色的圆形"
    assert ms.Scene((ms.Group(3, "blue", "square"),)).caption_zh == "三个蓝色的正方形"
    pair = ms.Scene((ms.Group(2, "blue", "square"), ms.Group(1, "yellow", "triangle")), "left of")
    assert pair.caption_zh == "两个蓝色的正方形在一个黄色三角形的左边"
    above = ms.Scene((ms.Group(1, "purple", "circle"), ms.Group(2, "green", "square")), "above")
    assert above.caption_zh == "一个紫色的圆形在两个绿色正方形的上面"
    for scene in (pair, above):
        assert ms.parse_caption(scene.caption_zh, lang="zh") == scene


def test_chinese_set_has_the_same_images_and_aligned_captions(tmp_path):
    en = ms.make_shapes(tmp_path / "en", 40, seed=7)
    zh = ms.make_shapes(tmp_path / "zh", 40, seed=7, lang="zh")
    en_rows, zh_rows = _read_csv(en), _read_csv(zh)
    assert [r["image"] for r in en_rows] == [r["image"] for r in zh_rows]
    for e, z in zip(en_rows, zh_rows, strict=True):
        assert (en.parent / e["image"]).read_bytes() == (zh.parent / z["image"]).read_bytes()
        # The same scene, worded in each language.
        assert ms.parse_caption(z["caption"], lang="zh") == ms.parse_caption(e["caption"])
        assert z["caption"] != e["caption"]
        assert all("\u4e00" <= ch <= "\u9fff" for ch in z["caption"])


def test_chinese_set_is_deterministic(tmp_path):
    a = ms.make_shapes(tmp_path / "a", 10, seed=3, lang="zh")
    b = ms.make_shapes(tmp_path / "b", 10, seed=3, lang="zh")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != ms.make_shapes(tmp_path / "c", 10, seed=4, lang="zh").read_bytes()


def test_both_languages_in_one_file(tmp_path):
    both = ms.make_shapes(tmp_path / "both", 12, seed=2, lang="en,zh")
    with both.open(newline="", encoding="utf-8") as f:
        assert next(csv.reader(f)) == ["image", "caption_en", "caption_zh"]
    en = _read_csv(ms.make_shapes(tmp_path / "en", 12, seed=2))
    zh = _read_csv(ms.make_shapes(tmp_path / "zh", 12, seed=2, lang=["zh"]))
    rows = _read_csv(both)
    assert [r["caption_en"] for r in rows] == [r["caption"] for r in en]
    assert [r["caption_zh"] for r in rows] == [r["caption"] for r in zh]
    assert (tmp_path / "both" / "images" / "000011.png").read_bytes() == (
        tmp_path / "en" / "images" / "000011.png"
    ).read_bytes()


def test_every_chinese_grammar_element_occurs():
    scenes = [ms.make_sample(seed=0, index=i).scene for i in range(400)]
    captions = [s.caption_zh for s in scenes]
    assert {ms.parse_caption(c, lang="zh").kind for c in captions} == {"single", "count", "pair"}
    for word in [*ms.ZH_COLOURS.values(), *ms.ZH_SHAPES.values(), *ms.ZH_NUMBERS.values()]:
        assert any(word in c for c in captions), word
    for word in ms.ZH_RELATIONS.values():
        assert any(c.endswith(f"的{word}") for c in captions), word
    assert [ms.parse_caption(c, lang="zh") for c in captions] == scenes
    assert ms.make_pair(0, 5, lang="zh")[1] == scenes[5].caption_zh


def test_parse_chinese_caption_rejects_text_outside_the_grammar():
    bad = [
        "一个红色圆形",
        "一个粉色的圆形",
        "四个红色的圆形",
        "一个红色的圆形在一个蓝色的方形的左边",
        "红色的圆形",
    ]
    for text in bad:
        with pytest.raises(ValueError):
            ms.parse_caption(text, lang="zh")
    with pytest.raises(ValueError):
        ms.parse_caption("a red circle", lang="fr")
    with pytest.raises(ValueError):
        ms.make_shapes("unused", 1, lang="fr")


def test_cli_lang_option(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(SCRIPT), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    ok = run(str(tmp_path / "cli"), "--n", "3", "--seed", "1", "--lang", "zh")
    assert ok.returncode == 0, ok.stderr
    expected = ms.make_shapes(tmp_path / "api", 3, seed=1, lang="zh")
    assert (tmp_path / "cli" / "pairs.csv").read_bytes() == expected.read_bytes()
    bad = run(str(tmp_path / "bad"), "--n", "1", "--lang", "xx")
    assert bad.returncode == 2 and "xx" in bad.stderr
