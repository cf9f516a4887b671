"""The report page stands alone and says how it was made; the table's wall clock counts the init."""

from __future__ import annotations

import html
import json
import re
import shutil

import pytest

from initium.records import ELAPSED, MetricSpec, cache_hit, load_results, seconds_to
from initium.report import group, mean_ci, summarize, write_report
from initium.runner import RunConfig, run

SPEC = MetricSpec("psnr", unit="dB", thresholds=(30.0,), ceiling=60.0)


def _record(seed: int, psnr: list[float | None], elapsed: list[float], *, init_s: float, **kw) -> dict:
    """A finished run's record as the runner writes it, with an evaluation curve at steps 0, 10, 20..."""
    steps = [10 * k for k in range(len(psnr))]
    spec = kw.pop("spec", SPEC)
    return {
        "task": "t", "arch": "a", "method": "noise", "seed": seed, "status": "ok", "steps": steps[-1],
        "metric": "psnr", "higher_is_better": spec.higher_is_better, "metric_spec": spec.to_dict(),
        "curve": {"step": steps, "psnr": psnr, ELAPSED: elapsed}, "wall": {"init_s": init_s, "train_s": elapsed[-1]},
        "steps_to": {f"{t:g}": None for t in spec.thresholds}, "method_info": {"cache": "miss"}, **kw,
    }  # fmt: skip


def test_time_to_threshold_is_init_plus_the_elapsed_time_where_the_curve_first_reaches_it():
    a = _record(0, [10.0, 25.0, 31.0, 29.0, 40.0], [0.0, 0.5, 1.25, 2.0, 2.5], init_s=3.0)
    b = _record(1, [10.0, 30.0, 35.0, 36.0, 40.0], [0.0, 0.75, 1.5, 2.25, 3.0], init_s=1.0)
    assert seconds_to(a, 30.0) == 3.0 + 1.25 and seconds_to(b, 30.0) == 1.0 + 0.75
    assert seconds_to(a, 50.0) is None  # never reached
    del b["curve"][ELAPSED]
    assert seconds_to(b, 30.0) is None  # a record from before the elapsed times
    table = summarize([a, _record(1, [10.0, 30.0, 35.0, 36.0, 40.0], [0.0, 0.75, 1.5, 2.25, 3.0], init_s=1.0)])
    col = table.columns.index("s→30 dB")
    mean, half = mean_ci([4.25, 1.75])
    assert table.rows[0][col] == f"{mean:.1f} ± {half:.1f}" == "3.0 ± 15.9"
    error = MetricSpec("mse", higher_is_better=False, thresholds=(0.1,))
    c = _record(0, [1.0, 0.5, 0.05, 0.01], [0.0, 1.0, 2.0, 3.0], init_s=0.5, spec=error, metric="mse")
    c["curve"]["mse"] = c["curve"].pop("psnr")
    assert seconds_to(c, 0.1) == 2.5  # "reaches" an error threshold from above


def test_values_past_the_ceiling_read_as_a_floor():
    past = [_record(s, [10.0, 134.1 + s], [0.0, 1.0], init_s=0.0) for s in range(2)]
    mixed = [_record(0, [10.0, 134.1], [0.0, 1.0], init_s=0.0), _record(1, [10.0, 50.0], [0.0, 1.0], init_s=0.0)]
    below = [_record(s, [10.0, 40.0 + s], [0.0, 1.0], init_s=0.0) for s in range(2)]
    col = summarize(past).columns.index("psnr@10")
    assert summarize(past).rows[0][col] == "> 60"
    assert summarize(mixed).rows[0][col] == "> 55.0"  # a bound: the mean with 134.1 taken at 60
    assert summarize(below).rows[0][col] == "40.5 ± 6.4"  # under the ceiling: mean ± CI as before
    error = MetricSpec("mse", higher_is_better=False, format=".3g", ceiling=1e-8)
    tiny = [_record(s, [1.0, 1e-12], [0.0, 1.0], init_s=0.0, spec=error, metric="mse") for s in range(2)]
    for r in tiny:
        r["curve"]["mse"] = r["curve"].pop("psnr")
    assert summarize(tiny).rows[0][summarize(tiny).columns.index("mse@10")] == "< 1e-08"
    with pytest.raises(ValueError, match="ceiling must be a finite number"):
        MetricSpec("psnr", ceiling=float("inf"))


def test_cache_hits_are_marked_in_the_label():
    hit = {"cache": "hit"}
    runs = [_record(s, [10.0, 40.0], [0.0, 1.0], init_s=0.1, method_info=hit) for s in range(2)]
    assert list(group(runs)) == ["noise (cached)"]
    runs[1]["method_info"] = {"cache": "miss"}
    assert list(group(runs)) == ["noise (cached 1/2)"]
    assert cache_hit({"method_info": {"0:rwf": {}, "1:noise": hit}}) and not cache_hit({"method_info": {}})
    assert summarize(runs).rows[0][0] == "noise (cached 1/2)"


@pytest.fixture(scope="module")
def two_images(tmp_path_factory):
    """Two images of one size fitted into one folder, the noise init cached by the first."""
    out = tmp_path_factory.mktemp("two")
    cache = out / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INITIUM_CACHE", str(cache))
        for image in ("camera", "coins"):
            cfg = RunConfig(
                task="image-fit", out=out, arch="siren(hidden=16)", methods=("default", "noise(steps=5)"), seeds=(0,),
                steps=30, thresholds=(15.0,), task_options={"image": image, "size": 16},
                command=f"initium run image-fit --image {image} --size 16",
            )  # fmt: skip
            run(cfg)
    return out


def test_a_second_image_of_the_same_grid_hits_the_noise_cache(two_images):
    records = load_results(two_images)
    noise = {r["task_config"]["image"]: r for r in records if r["method"].startswith("noise")}
    # the info also holds the noise budget it resolved (fraction, steps), the same for both pictures
    camera, coins = noise["camera"]["method_info"], noise["coins"]["method_info"]
    assert camera["cache"] == "miss" and coins["cache"] == "hit"
    assert {k: v for k, v in camera.items() if k != "cache"} == {k: v for k, v in coins.items() if k != "cache"}
    labels = [row[0] for row in summarize(records).rows]
    assert labels == [
        "image=camera/default", "image=camera/noise(steps=5)",
        "image=coins/default", "image=coins/noise(steps=5) (cached)",
    ]  # fmt: skip
    # each run keeps its own picture, so the reconstructions pair each with its own target
    refs = {r["task_config"]["image"]: r["reference"] for r in records}
    assert refs["camera"] != refs["coins"] and all((two_images / p).exists() for p in refs.values())
    for r in records:  # training seconds at every evaluation point, rising
        elapsed = r["curve"][ELAPSED]
        assert len(elapsed) == len(r["curve"]["step"]) and elapsed == sorted(elapsed) and elapsed[-1] > 0


def test_the_report_page_is_one_file_with_commands_configs_and_captions(two_images, tmp_path):
    files = write_report(two_images)
    page = files["html"].read_text()
    moved = tmp_path / "moved.html"  # alone, away from plots/: nothing it shows lives elsewhere
    shutil.copy(files["html"], moved)
    assert 'src="plots/' not in page and "plots/" not in page
    images = re.findall(r'<img src="([^"]*)"', page)
    assert len(images) == len([p for p in files.values() if p.suffix == ".png"]) >= 3
    assert all(src.startswith("data:image/png;base64,") for src in images)
    records = load_results(two_images)
    for r in records:
        assert html.escape(r["command"]) in page
        assert all(html.escape(json.dumps(part)) in page for part in r["method_config"])
    assert html.escape(json.dumps(records[0]["task_config"])) in page  # the image, its size ...
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    assert len(captions) == len(images) and all(len(c) > 80 for c in captions)
    assert any("frequency" in c and "cycles per pixel" in c for c in captions)  # the band plot's, from its spec
    assert any("seed 0" in c for c in captions)  # the reconstructions say whose they are
    assert "(cached)" in page and "loaded from the init cache" in page
