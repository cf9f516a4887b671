"""The one training engine: data modes, options, checkpoint and resume."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from initium.nn import Siren
from initium.tasks import grid
from initium.train import Checkpoint, Epochs, Steps, TrainingDiverged, cosine, fit, progress_hook


class _Stop(Exception):
    """Stands in for a kill: raised from inside the loop, after the checkpoint at that step."""


def _image():
    return grid(8, 8), torch.rand(64, 1, generator=torch.Generator().manual_seed(0))


def _siren(seed=0):
    torch.manual_seed(seed)
    return Siren(2, 1, hidden=16)


def _classifier(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def _labelled():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 6, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_identical(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("kind", ["steps", "epochs"])
def test_a_killed_run_resumes_to_the_same_weights(tmp_path, kind):
    """Steps: Adam with a step decay; epochs: SGD with momentum over shuffled minibatches drawn
    from the global RNG, so the checkpoint must carry optimiser, schedule and RNG state."""
    if kind == "steps":
        coords, target = _image()
        make, kw = _siren, {"inputs": coords, "target": target, "lr": 1e-3, "lr_decay": (0.5, 7)}
    else:
        x, y = _labelled()
        make = _classifier
        kw = {"inputs": x, "target": y, "lr": 0.05, "batch_size": 8, "optimizer": "sgd", "loss_fn": F.cross_entropy}
    evals = [0, 5, 10, 15, 20]

    torch.manual_seed(123)
    whole = make()
    history = fit(whole, steps=20, evaluate_at=evals, **kw)

    seen: list[int] = []
    killed: list[int] = []

    def stop_at_15(step, _pred):
        seen.append(step)
        if step == 15 and not killed:  # once: after the checkpoint at 15 was written
            killed.append(step)
            raise _Stop

    torch.manual_seed(123)
    model = make()
    ckpt = Checkpoint(tmp_path / "ckpt", extra=lambda: list(seen), restore=lambda s: seen.__setitem__(slice(None), s))
    with pytest.raises(_Stop):
        fit(model, steps=20, evaluate_at=evals, on_eval=stop_at_15, checkpoint=ckpt, **kw)
    assert (tmp_path / "ckpt" / "state.safetensors").exists()
    torch.manual_seed(999)  # whatever the process did since: the checkpoint restores the RNG
    fresh = make(seed=5)  # other weights: all of them come from the checkpoint
    resumed = fit(fresh, steps=20, evaluate_at=evals, on_eval=stop_at_15, checkpoint=ckpt, **kw)
    assert ckpt.resumed_from == 15
    _assert_identical(_weights(fresh), _weights(whole))
    assert torch.equal(resumed, history)
    assert seen == evals  # the caller's own state came back with the checkpoint: no step twice
    assert not (tmp_path / "ckpt" / "state.json").exists()  # removed once the run is done


def test_a_process_killed_mid_run_resumes_bit_identical(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys, torch
            from safetensors.torch import save_file
            from initium.nn import Siren
            from initium.tasks import grid
            from initium.train import Checkpoint, fit

            out, kill = sys.argv[1], sys.argv[2] == "kill"
            torch.manual_seed(0)
            model = Siren(2, 1, hidden=16)
            target = torch.rand(64, 1, generator=torch.Generator().manual_seed(0))

            def on_eval(step, pred):
                if kill and step == 30:
                    os._exit(9)  # no cleanup, no exception handlers: as a kill -9 would

            ckpt = Checkpoint(out + "/ckpt") if sys.argv[3] == "ckpt" else None
            fit(model, grid(8, 8), target, steps=50, lr=1e-3, evaluate_at=range(0, 51, 10), on_eval=on_eval,
                checkpoint=ckpt)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out + "/final.safetensors")
            """
        )
    )
    env = os.environ | {"OMP_NUM_THREADS": "1"}

    def job(out, *args):
        out.mkdir()
        return subprocess.run([sys.executable, str(script), str(out), *args], env=env, capture_output=True, text=True)

    plain, killed = tmp_path / "plain", tmp_path / "killed"
    assert job(plain, "run", "none").returncode == 0
    assert job(killed, "kill", "ckpt").returncode == 9
    assert not (killed / "final.safetensors").exists() and (killed / "ckpt" / "state.json").exists()
    again = subprocess.run([sys.executable, str(script), str(killed), "run", "ckpt"], env=env, capture_output=True)
    assert again.returncode == 0, again.stderr
    from safetensors.torch import load_file

    _assert_identical(load_file(killed / "final.safetensors"), load_file(plain / "final.safetensors"))


def test_a_corrupt_checkpoint_is_ignored_with_a_warning(tmp_path, caplog):
    coords, target = _image()
    ckpt = tmp_path / "c"
    ckpt.mkdir()
    (ckpt / "state.json").write_text('{"unit": 3, "sha256": "nope"}')
    (ckpt / "state.safetensors").write_bytes(b"garbage")
    torch.manual_seed(0)
    a = fit(_siren(), coords, target, steps=5, lr=1e-3, checkpoint=Checkpoint(ckpt))
    b = fit(_siren(), coords, target, steps=5, lr=1e-3)
    assert torch.equal(a, b) and "unusable" in caplog.text


def test_epochs_measure_the_whole_set_and_shuffle_every_epoch():
    x, y = _labelled()
    model = _classifier()
    preds = {}
    history = fit(model, x, y, steps=3, lr=0.05, batch_size=8, optimizer="sgd", loss_fn=F.cross_entropy,
                  evaluate_at=[0, 3], on_eval=lambda k, p: preds.setdefault(k, p))  # fmt: skip
    assert history.shape == (4,) and preds[0].shape == (50, 3)
    with torch.no_grad():
        assert history[3] == pytest.approx(F.cross_entropy(model(x), y).item(), abs=1e-6)
    data = Epochs(x, y, 8, generator=torch.Generator().manual_seed(0))
    first = [b[1] for b in data.batches(0)]
    second = [b[1] for b in data.batches(1)]
    assert [len(b) for b in first] == [8] * 6 + [2]
    assert torch.equal(torch.cat(first).sort().values, y.sort().values)  # every sample once an epoch
    assert not all(torch.equal(a, b) for a, b in zip(first, second, strict=True))  # a new order


def test_drawn_steps_use_a_new_batch_every_step():
    seen = []

    def batch(step):
        seen.append(step)
        return torch.full((4, 6), float(step)), torch.zeros(4, dtype=torch.long)

    fit(_classifier(), Steps.drawn(batch), steps=4, lr=0.01, loss_fn=F.cross_entropy, optimizer="sgd")
    assert seen == [0, 1, 2, 3, 4]  # one per update, and the final measurement


def test_clip_grad_bounds_every_update():
    coords, target = _image()
    model = _siren()
    before = [p.detach().clone() for p in model.parameters()]
    # plain SGD without momentum: the update is lr * (clipped) gradient, so its norm is at most lr * clip
    fit(model, coords, target * 100, steps=1, lr=1.0, optimizer="sgd", momentum=0.0, clip_grad=1e-3)
    step = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before, strict=True)))
    assert 0 < float(step) <= 1e-3 + 1e-9


def test_schedules_change_the_learning_rate_per_unit():
    coords, target = _image()
    lrs = []
    model = _siren()

    def spy(opt, units):
        sched = cosine(opt, units)
        real = sched.step
        sched.step = lambda: (real(), lrs.append(opt.param_groups[0]["lr"]))
        return sched

    fit(model, coords, target, steps=4, lr=1.0, schedule=spy)
    assert lrs == pytest.approx([0.8535534, 0.5, 0.1464466, 0.0], abs=1e-6)
    with pytest.raises(ValueError, match="lr_decay or schedule"):
        fit(model, coords, target, steps=1, lr=1.0, schedule=cosine, lr_decay=(0.5, 1))


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"optimizer": "lbfgs"}, "optimizer"), ({"clip_grad": 0.0}, "clip_grad"), ({"batch_size": 0}, "batch_size")],
)
def test_bad_engine_options(kw, match):
    x, y = _labelled()
    with pytest.raises(ValueError, match=match):
        fit(_classifier(), x, y, steps=1, lr=0.1, loss_fn=F.cross_entropy, **kw)


def test_progress_events_carry_phase_and_counts_for_epochs():
    x, y = _labelled()
    events = []
    with progress_hook(events.append):
        fit(_classifier(), x, y, steps=2, lr=0.1, batch_size=16, loss_fn=F.cross_entropy, phase="epochs")
    assert [(e.phase, e.done, e.total) for e in events] == [("epochs", 1, 2), ("epochs", 2, 2)]


def test_minibatch_divergence_is_found_at_the_next_evaluation():
    x, y = _labelled()
    with pytest.raises(TrainingDiverged) as info:
        fit(_classifier(), x, y * 0, steps=6, lr=1e30, batch_size=10, optimizer="sgd", loss_fn=F.cross_entropy,
            evaluate_at=[0, 4])  # fmt: skip
    assert info.value.step >= 1 and len(info.value.history) == 5
