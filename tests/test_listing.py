"""``initium list [PATTERN]``, ``initium.list_methods(pattern)`` and ``initium run TASK --help``:
what a user reads to find methods, tasks, architectures, images and a task's own options."""

from __future__ import annotations

import pytest
import skimage.data

import initium
from initium._registry import matching, summary
from initium.cli import main
from initium.methods import METHODS
from initium.tasks import IMAGE_DESCRIPTIONS, SAMPLE_IMAGES, TASKS


def _rows(text: str) -> dict[str, str]:
    """``name -> description`` from ``initium list``'s indented lines."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("  "):
            name, _, doc = line.strip().partition(" ")
            rows[name] = doc.strip()
    return rows


def test_run_task_help_lists_the_tasks_options_with_defaults_and_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "image-fit", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal's width
    assert info.value.code == 0
    assert "--size SIZE `size`: side in pixels after a centre square crop; default: 256" in out
    assert "--image IMAGE `image`: a bundled scikit-image sample or a file; default: 'camera'" in out
    assert "--scale {resize,crop}" in out and "default: 'resize'" in out and "--gray, --no-gray" in out


def test_help_before_the_task_name_is_the_general_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and "--methods" in out and "--size" not in out


def test_a_derived_config_documents_its_parents_fields(capsys):
    with pytest.raises(SystemExit):
        main(["run", "dip-sr", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "`ema`: decay of the moving average of outputs (0: off); default: 0.99" in out  # from DIPConfig
    assert "`factor`: the super-resolution factor; default: 4" in out  # DIPSRConfig's own


def test_list_filters_by_pattern_and_describes(capsys):
    assert main(["list", "noise*"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert set(rows) == set(initium.list_methods("noise*")) and "noise" in rows and "rwf" not in out
    assert rows["noise"] == METHODS.entry("noise").doc and rows["noise"].startswith("Target-noise pretraining")
    assert "tasks" not in out and "images" not in out  # kinds without a match are left out


def test_list_describes_every_kind_one_line_each(capsys):
    assert main(["list"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert set(TASKS.names()) | set(SAMPLE_IMAGES) | set(METHODS.names()) <= set(rows)
    assert rows["camera"] == "grey 512x512 photograph of a cameraman"
    assert rows["image-fit"].startswith("Fit an image with a coordinate network")
    assert rows["siren"].startswith("SIREN")
    assert all(rows[name] for name in rows), "every row has a description"


def test_list_without_a_match_says_so(capsys):
    assert main(["list", "zzz*"]) == 1
    assert "nothing matches 'zzz*'" in capsys.readouterr().err


def test_list_methods_filters_like_timm():
    assert initium.list_methods("rwf*") == ["rwf"]
    assert initium.list_methods("RWF") == ["rwf"]  # case-insensitive
    assert initium.list_methods() == METHODS.names() and len(initium.list_methods()) >= 10
    assert initium.list_methods("*noise") == ["fa-noise", "noise"] and initium.list_methods("nothing*") == []


def test_matching_and_summary():
    assert matching(["a", "ab", "b"], "a*") == ["a", "ab"] and matching(["b", "a"], None) == ["b", "a"]
    assert summary("He et al. 2015: ``Var(W)``. Second sentence.\n\nBody.") == "He et al. 2015: `Var(W)`"
    assert summary("Wrap in :class:`~initium.nn.X`: one\nslope. More.") == "Wrap in X: one slope"
    long = summary("word " * 60)
    assert long.endswith("...") and len(long) <= 110


def test_every_bundled_image_is_described_truthfully():
    assert set(IMAGE_DESCRIPTIONS) == set(SAMPLE_IMAGES)
    for name, text in IMAGE_DESCRIPTIONS.items():
        shape = getattr(skimage.data, name)().shape
        assert f"{shape[0]}x{shape[1]}" in text, (name, shape, text)
        assert ("grey" in text or "black-and-white" in text) == (len(shape) == 2), (name, shape, text)
