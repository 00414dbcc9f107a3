"""Tests for sslall.data._synthetic: determinism, file layout, argument checks and learnability."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sslall.data._synthetic import SyntheticSample, render_cell, write_dataset


def _bytes(paths: list[Path]) -> list[bytes]:
    return [p.read_bytes() for p in paths]


@pytest.mark.parametrize("size", [16, 33])
def test_render_cell_is_rgb_of_the_requested_size(size: int) -> None:
    image = render_cell(0, 3, np.random.default_rng(0), size=size)
    assert image.mode == "RGB"
    assert image.size == (size, size)


def test_render_cell_is_deterministic_by_generator_seed() -> None:
    def draw(seed: int) -> bytes:
        return render_cell(1, 3, np.random.default_rng(seed), size=24).tobytes()

    assert draw(5) == draw(5)
    assert draw(5) != draw(6)


def test_render_cell_handles_more_classes_than_the_archetype_table() -> None:
    images = [render_cell(c, 12, np.random.default_rng(0), size=16, difficulty=0.0)
              for c in range(12)]
    assert len({im.tobytes() for im in images}) == 12


def test_render_cell_looks_like_a_stained_smear() -> None:
    # A light background at the corners, darker purple-ish stain in the middle.
    arr = np.asarray(render_cell(0, 2, np.random.default_rng(1), size=64, difficulty=0.0),
                     dtype=float)
    centre = arr[28:36, 28:36].reshape(-1, 3).mean(axis=0)
    assert centre.mean() < 150
    assert centre[2] > centre[1]  # blue above green: purple nucleus
    assert np.median(arr.reshape(-1, 3).mean(axis=1)) > 170


def test_write_dataset_layout_and_determinism(tmp_path: Path) -> None:
    first = write_dataset(tmp_path / "a", ["L1", "L2"], 3, size=16, seed=7)
    again = write_dataset(tmp_path / "b", ["L1", "L2"], 3, size=16, seed=7)
    other = write_dataset(tmp_path / "c", ["L1", "L2"], 3, size=16, seed=8)

    assert [s.path.relative_to(tmp_path / "a").as_posix() for s in first] == [
        f"{c}/{c}_{i:05d}.png" for c in ("L1", "L2") for i in range(3)]
    assert [s.label for s in first] == ["L1"] * 3 + ["L2"] * 3
    assert all(isinstance(s, SyntheticSample) and s.patient is None for s in first)
    assert not (tmp_path / "a" / "manifest.csv").exists()
    with Image.open(first[0].path) as im:
        assert (im.mode, im.size, im.format) == ("RGB", (16, 16), "PNG")

    assert _bytes([s.path for s in first]) == _bytes([s.path for s in again])
    assert all(x != y for x, y in zip(_bytes([s.path for s in first]),
                                      _bytes([s.path for s in other]), strict=True))
    assert len(set(_bytes([s.path for s in first]))) == 6


def test_images_do_not_depend_on_how_many_are_drawn(tmp_path: Path) -> None:
    # Each image has its own seed from (seed, class, index); the number of classes does
    # matter, since classes are drawn partly toward each other's archetypes.
    few = write_dataset(tmp_path / "few", ["a", "b"], 2, size=16, seed=3)
    many = write_dataset(tmp_path / "many", ["a", "b"], 5, size=16, seed=3)
    by_name = {s.path.name: s.path.read_bytes() for s in many}
    assert all(by_name[s.path.name] == s.path.read_bytes() for s in few)


def test_manifest_lists_every_image_with_a_patient(tmp_path: Path) -> None:
    samples = write_dataset(tmp_path, ["L1", "L2", "L3"], 4, size=16, patients=3, seed=1)
    with open(tmp_path / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "label", "patient"]
    assert [(r["path"], r["label"], r["patient"]) for r in rows] == [
        (s.path.relative_to(tmp_path).as_posix(), s.label, s.patient) for s in samples]
    assert all(re.fullmatch(r"P00[0-2]", r["patient"]) for r in rows)
    assert all((tmp_path / r["path"]).is_file() for r in rows)
    assert len({r["patient"] for r in rows}) > 1


def test_patients_shift_the_stain(tmp_path: Path) -> None:
    # The same cell drawn for two different patients differs only by the patient's offset.
    plain = write_dataset(tmp_path / "plain", ["a"], 12, size=16, seed=2)
    with_p = write_dataset(tmp_path / "pat", ["a"], 12, size=16, seed=2, patients=2)
    assert {s.patient for s in with_p} == {"P000", "P001"}
    assert all(a.path.read_bytes() != b.path.read_bytes()
               for a, b in zip(plain, with_p, strict=True))


@pytest.mark.parametrize("classes", [["ALL-L1", "blast.2", "Ünïcode_cell", "x"], ["0", "1"],
                                     ["only"]])
def test_any_safe_class_names_work(tmp_path: Path, classes: list[str]) -> None:
    samples = write_dataset(tmp_path, classes, 1, size=16)
    assert [s.label for s in samples] == classes
    assert all(s.path.parent.name == s.label and s.path.is_file() for s in samples)


def test_other_formats(tmp_path: Path) -> None:
    (sample,) = write_dataset(tmp_path, ["a"], 1, size=16, fmt="jpg")
    assert sample.path.name == "a_00000.jpg"
    with Image.open(sample.path) as im:
        assert (im.format, im.mode) == ("JPEG", "RGB")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"classes": []}, "empty"),
        ({"classes": ["a", "a"]}, "duplicate"),
        ({"classes": ["Blast", "blast"]}, "duplicate"),
        ({"classes": ["a/b"]}, "safe folder name"),
        ({"classes": [".."]}, "safe folder name"),
        ({"classes": [".hidden"]}, "safe folder name"),
        ({"classes": [""]}, "safe folder name"),
        ({"classes": ["a b"]}, "safe folder name"),
        ({"classes": ["manifest.csv"]}, "safe folder name"),
        ({"n_per_class": 0}, "n_per_class"),
        ({"size": 15}, "size"),
        ({"difficulty": 1.5}, "difficulty"),
        ({"difficulty": -0.1}, "difficulty"),
        ({"patients": -1}, "patients"),
        ({"seed": -1}, "seed"),
        ({"fmt": "gif"}, "fmt"),
    ],
)
def test_write_dataset_rejects_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"classes": ["a", "b"], "n_per_class": 1, "size": 16} | kwargs
    classes, n = args.pop("classes"), args.pop("n_per_class")
    with pytest.raises(ValueError, match=match) as info:
        write_dataset(tmp_path / "out", classes, n, **args)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("class_index", "n_classes", "size", "difficulty"),
                         [(3, 3, 32, 0.5), (-1, 3, 32, 0.5), (0, 0, 32, 0.5), (0, 2, 8, 0.5),
                          (0, 2, 32, 2.0)])
def test_render_cell_rejects_bad_arguments(class_index: int, n_classes: int, size: int,
                                           difficulty: float) -> None:
    with pytest.raises(ValueError):
        render_cell(class_index, n_classes, np.random.default_rng(0), size=size,
                    difficulty=difficulty)


# Learnability: a linear model on colour histograms and a coarse thumbnail.

N_CLASSES = 4


def _features(image: Image.Image) -> np.ndarray:
    arr = np.asarray(image, dtype=np.float32) / 255
    hist = [np.histogram(arr[..., c], bins=8, range=(0, 1))[0] / arr[..., c].size
            for c in range(3)]
    thumb = np.asarray(image.resize((4, 4), Image.Resampling.BOX), dtype=np.float32) / 255
    return np.concatenate([*hist, thumb.ravel()])


def _data(per_class: int, seed: int, difficulty: float) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for c in range(N_CLASSES):
        for i in range(per_class):
            rng = np.random.default_rng([seed, c, i])
            xs.append(_features(render_cell(c, N_CLASSES, rng, size=32, difficulty=difficulty)))
            ys.append(c)
    return np.array(xs), np.array(ys)


def _accuracy(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
              per_class: int, repeats: int) -> float:
    """Mean test accuracy of models trained on `per_class` random labels per class."""
    accs = []
    for rep in range(repeats):
        rng = np.random.default_rng(rep)
        idx = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False)
                              for c in range(N_CLASSES)])
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000))
        model.fit(x[idx], y[idx])
        accs.append(float((model.predict(x_test) == y_test).mean()))
    return float(np.mean(accs))


def test_more_labels_measurably_help() -> None:
    x, y = _data(100, seed=1, difficulty=0.5)
    x_test, y_test = _data(50, seed=2, difficulty=0.5)
    few = _accuracy(x, y, x_test, y_test, per_class=5, repeats=4)
    many = _accuracy(x, y, x_test, y_test, per_class=100, repeats=1)
    assert many > 0.65, f"100 labels per class: {many:.2f} (chance 0.25)"
    assert many - few > 0.08, f"5 labels: {few:.2f}, 100 labels: {many:.2f}"
    assert few < 0.85, f"5 labels per class should leave the model imperfect: {few:.2f}"


def test_difficulty_makes_classes_overlap() -> None:
    accs = {}
    for difficulty in (0.1, 0.9):
        x, y = _data(60, seed=3, difficulty=difficulty)
        x_test, y_test = _data(40, seed=4, difficulty=difficulty)
        accs[difficulty] = _accuracy(x, y, x_test, y_test, per_class=60, repeats=1)
    assert accs[0.1] > 0.8, accs
    assert accs[0.1] - accs[0.9] > 0.15, accs
    assert accs[0.9] > 0.3, accs  # still above chance (0.25)
