from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from skimage.transform import resize
from torch import nn

import initium
import initium.runner
import initium.train
from initium.cli import main
from initium.metrics import psnr, psnr_from_mse
from initium.nn import ARCHS, DIPNet
from initium.report import summarize, write_report
from initium.runner import RunConfig, run, steps_to
from initium.tasks import TASKS
from initium.tasks.dip import DIPSR, DIPDenoise, DIPDenoiseConfig, DIPInpaint, DIPInpaintConfig, DIPSRConfig
from initium.train import fit

CPU = torch.device("cpu")
SMALL = {"channels": 16, "levels": 3}


def _setup(task):
    task.setup(CPU)
    return task


class Constant(nn.Module):
    """A 'net' whose output is a fixed image: lets a test put any picture through the loss."""

    def __init__(self, image: torch.Tensor) -> None:
        super().__init__()
        self.image = nn.Parameter(image.clone())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.image


# -- the network ---------------------------------------------------------------------------------


def test_dipnet_paper_structure():
    net = DIPNet()  # the paper's size: 32-channel latent, 5 levels of 128, skips of 4
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.padding_mode == "reflect" for c in convs if c.kernel_size[0] > 1)
    assert sum(c.stride == (2, 2) for c in convs) == 5  # downsampling by strided convs, once per level
    ups = [m for m in net.modules() if isinstance(m, nn.Upsample)]
    assert len(ups) == 5 and all(u.mode == "bilinear" for u in ups)
    assert all(m.negative_slope == 0.2 for m in net.modules() if isinstance(m, nn.LeakyReLU))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) > 10
    assert convs[0].in_channels == 32 and {c.out_channels for c in convs} == {4, 128, 3}
    assert net.default_lr == 0.01 and ARCHS.entry("dip").factory is DIPNet


def test_dipnet_shapes_range_and_skips():
    torch.manual_seed(0)
    net = DIPNet(in_channels=8, out_channels=1, **SMALL)
    out = net(torch.rand(2, 8, 32, 40))
    assert out.shape == (2, 1, 32, 40) and out.min() > 0 and out.max() < 1  # sigmoid head
    # the skip branch carries fine detail: without skips the net is a different (smaller) function
    no_skip = DIPNet(in_channels=8, out_channels=1, skip_channels=0, **SMALL)
    assert sum(p.numel() for p in no_skip.parameters()) < sum(p.numel() for p in net.parameters())
    assert no_skip(torch.rand(1, 8, 16, 16)).shape == (1, 1, 16, 16)


@pytest.mark.parametrize(
    ("shape", "message"), [((1, 8, 36, 32), "divisible by 2**3 = 8"), ((1, 3, 32, 32), "(B, 8, H, W)")]
)
def test_dipnet_bad_latent(shape, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        DIPNet(in_channels=8, **SMALL)(torch.rand(shape))


def test_dipnet_states_its_smallest_input():
    net = DIPNet(in_channels=8, **SMALL)  # 3 levels: sides a multiple of 8, at least 16 to train
    assert (net.side_multiple, net.min_side) == (8, 16) and (DIPNet().side_multiple, DIPNet().min_side) == (32, 64)
    assert net(torch.rand(1, 8, 16, 16)).shape == (1, 3, 16, 16)
    for mode in (net.train, net.eval):  # in eval mode reflection padding fails instead of BatchNorm
        mode()
        with pytest.raises(ValueError, match=r"at least 2\*\*3 x 2 = 16 .*got \(8, 8\); use a larger image or fewer"):
            net(torch.rand(1, 8, 8, 8))  # not torch's "Expected more than 1 value per channel"


@pytest.mark.parametrize(
    ("task", "size", "arch", "pieces"),
    [
        ("dip-denoise", 32, None, ("--size 32 is too small for --arch 'dip' with levels=5: it takes sides of at least"
         " 2**levels x 2 = 64", "use --size 64, or fewer levels: --arch 'dip(levels=4)'")),
        ("dip-inpaint", 8, "dip(channels=16,levels=3)", ("--size 8 is too small", "levels=3", "= 16",
         "--arch 'dip(channels=16,levels=2)'")),
        ("dip-denoise", 100, None, ("--size 100 is not a multiple of 2**levels = 32", "use --size 96 or 128")),
    ],
)  # fmt: skip
def test_too_small_an_image_for_the_net_fails_before_loading(tmp_path, monkeypatch, task, size, arch, pieces):
    monkeypatch.setattr(initium.train, "fit", lambda *a, **k: pytest.fail("training started"))
    monkeypatch.setattr("initium.tasks.dip.load_image", lambda *a, **k: pytest.fail("the image was loaded"))
    cfg = RunConfig(task=task, out=tmp_path, arch=arch, methods=("default",), seeds=(0,), steps=2,
                    task_options={"size": size})  # fmt: skip
    with pytest.raises(ValueError, match=".*".join(re.escape(p) for p in pieces)):
        run(cfg)
    assert not (tmp_path / "results.jsonl").exists()


def test_check_model_checks_the_side_too():
    task = _setup(DIPDenoise(DIPDenoiseConfig(size=32)))  # the API path: no runner, no estimate first
    with pytest.raises(ValueError, match="--size 32 is too small"):
        task.check_model(task.build_model("dip", {}), "dip")
    task.check_model(task.build_model("dip", SMALL), "dip(channels=16,levels=3)")


# -- the tasks -----------------------------------------------------------------------------------


def test_tasks_registered_with_dip_defaults():
    for name in ("dip-denoise", "dip-sr", "dip-inpaint"):
        task = _setup(TASKS.build(name, {"size": 32}))
        assert task.default_arch == "dip" and task.name == name
        model = task.build_model("dip", SMALL)
        assert model.default_lr == 0.01  # the runner trains at the architecture's own rate
        assert task.inputs.shape == (1, 32, 32, 32) and task.inputs.min() >= 0 and task.inputs.max() <= 0.1
        task.check_model(model, "dip")
        assert task.step_metric(torch.ones(3)) is None  # PSNR vs the clean image: eval steps only


def test_denoise_input_is_the_noisy_image():
    task = _setup(DIPDenoise(DIPDenoiseConfig(size=64, sigma=25.0)))
    noise = task.target - task.clean
    assert task.target.shape == task.clean.shape and task.target.min() >= 0 and task.target.max() <= 1
    # clipping to [0, 1] shrinks the noise a little below sigma = 25/255
    assert 0.8 * 25 / 255 < float(noise.std()) < 25 / 255 + 1e-3
    assert task.input_psnr == pytest.approx(psnr(task.target, task.clean))
    assert 19 < task.input_psnr < 22  # 20.2 dB for unclipped sigma = 25
    # the metrics: psnr against the clean image, fit_psnr against the input the net sees
    got = task.evaluate(task.target)
    assert got["psnr"] == pytest.approx(task.input_psnr) and got["fit_psnr"] == float("inf")
    got = task.evaluate(task.clean)
    assert got["psnr"] == float("inf") and got["fit_psnr"] == pytest.approx(task.input_psnr) and got["ssim"] == 1


def test_sr_operator_is_consistent():
    task = _setup(DIPSR(DIPSRConfig(image="camera", size=64, factor=4, gray=True)))
    assert task.target.shape == (1, 1, 16, 16)
    assert torch.equal(task.operator(task.clean), task.target)  # the LR input is A(ground truth)
    # the same operator is the one inside the loss: the ground truth itself fits perfectly ...
    loss, _ = task.forward_loss(Constant(task.clean), task.inputs, task.target)
    assert float(loss.detach()) < 1e-12
    # ... and the operator is a real anti-aliased downsampling of the image (agrees with
    # scikit-image's own to within interpolation-kernel differences, and keeps the mean)
    ref = resize(task.clean[0, 0].numpy(), (16, 16), anti_aliasing=True, order=3)
    assert psnr(task.target[0, 0], torch.from_numpy(ref).float()) > 28
    assert float(task.target.mean()) == pytest.approx(float(task.clean.mean()), abs=2e-3)
    # the bar to beat is bicubic upsampling of the LR image
    assert task.degraded.shape == task.clean.shape and task.input_psnr < 30


def test_inpaint_loss_ignores_unknown_pixels():
    task = _setup(DIPInpaint(DIPInpaintConfig(size=32, ratio=0.5, reg_noise_std=0.0)))
    mask = task.mask
    assert mask.shape == (1, 1, 32, 32) and 0.4 < float(1 - mask.mean()) < 0.6  # 50% unknown
    assert torch.equal(task.target, task.clean * mask)
    out = torch.rand_like(task.clean)
    junk = out + (1 - mask) * torch.randn_like(out) * 10  # change the unknown pixels only
    model = Constant(out)
    loss, _ = task.forward_loss(model, task.inputs, task.target)
    loss2, _ = task.forward_loss(Constant(junk), task.inputs, task.target)
    assert float(loss.detach()) == pytest.approx(float(loss2.detach()), rel=1e-6)
    loss.backward()
    assert torch.all(model.image.grad * (1 - mask) == 0) and torch.any(model.image.grad * mask != 0)
    # a change at a known pixel does change the loss
    known = mask[0, 0].nonzero()[0]
    moved = out.clone()
    moved[..., known[0], known[1]] += 0.5
    assert float(task.forward_loss(Constant(moved), task.inputs, task.target)[0].detach()) != pytest.approx(
        float(loss.detach())
    )
    # the loss is the MSE over the known pixels
    expect = ((out - task.clean) ** 2 * mask).sum() / (mask.sum() * 3)
    assert float(loss.detach()) == pytest.approx(float(expect.detach()), rel=1e-5)


def test_block_and_given_masks():
    block = _setup(DIPInpaint(DIPInpaintConfig(size=32, mask="block", ratio=0.25)))
    m = block.mask[0, 0]
    assert float(1 - m.mean()) == pytest.approx(0.25) and m[16, 16] == 0 and m[0, 0] == 1
    given = np.ones((32, 32), bool)
    given[:, :8] = False
    task = _setup(DIPInpaint(DIPInpaintConfig(size=32), mask=given))
    assert torch.equal(task.mask[0, 0], torch.from_numpy(given).float())
    other = given.copy()
    other[0, 8] = False
    assert task.describe()["mask_sha256"] != DIPInpaint(DIPInpaintConfig(size=32), mask=other).describe()["mask_sha256"]


def test_ema_and_jitter_in_forward_loss():
    task = _setup(DIPDenoise(DIPDenoiseConfig(size=32, ema=0.9, reg_noise_std=0.0)))
    torch.manual_seed(0)
    model = task.build_model("dip", SMALL)
    avg = None
    for _ in range(3):
        with torch.no_grad():
            _, pred = task.forward_loss(model, task.inputs, task.target)
            out = model(task.inputs)  # train-mode BatchNorm: the same output for the same input
            avg = out if avg is None else 0.9 * avg + 0.1 * out
            assert torch.allclose(pred, avg, atol=1e-6)  # avg_k = 0.9 avg_{k-1} + 0.1 out_k
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))  # a stand-in for an update
    # a new model (the runner's next run) starts a new average from its own output
    other = task.build_model("dip", SMALL)
    with torch.no_grad():
        _, first = task.forward_loss(other, task.inputs, task.target)
        assert torch.allclose(first, other(task.inputs), atol=1e-6)
    # jitter: the same model at the same latent sees a different input at every call
    jitter = _setup(DIPDenoise(DIPDenoiseConfig(size=32, ema=0.0, reg_noise_std=0.1)))
    with torch.no_grad():
        l1, p1 = jitter.forward_loss(model, jitter.inputs, jitter.target)
        l2, p2 = jitter.forward_loss(model, jitter.inputs, jitter.target)
        assert float(l1) != float(l2) and not torch.allclose(p1, p2)
        # and with ema = 0 the prediction is that step's raw output, not an average
        torch.manual_seed(5)
        _, p3 = jitter.forward_loss(model, jitter.inputs, jitter.target)
        torch.manual_seed(5)
        assert torch.allclose(p3, model(jitter.inputs + 0.1 * torch.randn_like(jitter.inputs)), atol=1e-6)


def test_summarize_run_peak_and_drop():
    task = _setup(DIPDenoise(DIPDenoiseConfig(size=32)))
    got = task.summarize_run({"step": [0, 10, 20, 30, 40], "psnr": [10.0, 25.0, None, 25.0, 21.5]})
    assert got == {"input_psnr": task.input_psnr, "peak_psnr": 25.0, "peak_step": 10, "psnr_drop": 3.5}
    assert task.summarize_run({"step": [], "psnr": []})["peak_psnr"] is None
    clean = _setup(DIPDenoise(DIPDenoiseConfig(size=32, sigma=0.0)))  # an infinite PSNR is no JSON number
    assert clean.summarize_run({"step": [0], "psnr": [30.0]})["input_psnr"] is None


@pytest.mark.parametrize(
    ("task", "options", "message"),
    [
        ("dip-denoise", {"sigma": -1.0}, "sigma must be"),
        ("dip-sr", {"size": 64, "factor": 3}, "factor=3 does not divide size=64"),
        ("dip-inpaint", {"ratio": 1.0}, "ratio"),
        ("dip-denoise", {"ema": 1.0}, "ema must be"),
        ("dip-denoise", {"reg_noise_std": -0.1}, "reg_noise_std"),
    ],
)
def test_bad_options_fail_before_training(tmp_path, monkeypatch, task, options, message):
    monkeypatch.setattr(initium.train, "fit", lambda *a, **k: pytest.fail("training started"))
    cfg = RunConfig(task=task, out=tmp_path, methods=("default",), seeds=(0,), steps=2, task_options=options)
    with pytest.raises(ValueError, match=message):
        run(cfg)
    assert not (tmp_path / "results.jsonl").exists()


def test_mask_shape_mismatch_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"mask has shape \(32, 48\).*give a \(32, 32\) mask"):
        DIPInpaint(DIPInpaintConfig(size=32), mask=np.ones((32, 48)))
    import skimage.io

    path = tmp_path / "mask.png"
    skimage.io.imsave(path, np.full((40, 40), 255, np.uint8), check_contrast=False)
    with pytest.raises(ValueError, match=r"mask .*mask.png' has shape \(40, 40, 1\)"):
        DIPInpaint(DIPInpaintConfig(size=32, mask=str(path)))
    with pytest.raises(ValueError, match="no pixel as known"):
        DIPInpaint(DIPInpaintConfig(size=32), mask=np.zeros((32, 32)))


def test_cli_takes_dip_options(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(initium.train, "fit", lambda *a, **k: pytest.fail("training started"))
    argv = ["run", "dip-sr", "--size", "30", "--factor", "4", "--steps", "2", "--seeds", "1", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "factor=4 does not divide size=30" in " ".join(capsys.readouterr().err.split())


# -- noise pretraining for DIP -------------------------------------------------------------------


def test_noise_pretrain_checks_the_latent():
    net = DIPNet(in_channels=8, **SMALL)
    with pytest.raises(ValueError, match=r"\(B, 8, H, W\)"):
        initium.noise_pretrain(net, torch.rand(64, 2), steps=1, cache=False)


def test_spectral_noise_pretrain_fits_a_field_over_the_image_grid():
    from initium.noise import NOISES, sample_noise

    torch.manual_seed(0)
    net = DIPNet(in_channels=8, out_channels=1, **SMALL)
    z = torch.rand(1, 8, 32, 32) * 0.1
    target = sample_noise(NOISES.build("spectral", {}), (1, 1, 32, 32), generator=torch.Generator().manual_seed(3),
                          spatial=(32, 32))  # fmt: skip
    before = float(torch.mean((net(z).detach() - target) ** 2))
    initium.noise_pretrain(net, z, steps=150, noise="spectral", seed=3, cache=False)
    after = float(torch.mean((net(z).detach() - target) ** 2))
    assert after < 0.3 * before  # it fitted that very field: a 1/f^2 field over (H, W), seed 3


def test_noise_pretraining_fits_the_noisy_image_sooner():
    """The fitting side of the trade-off: after 200 steps of Gaussian target-noise pretraining the
    net fits the noisy image (raw output, no jitter) to 22 dB in fewer steps than from its
    default init (32 px astronaut: 0.6-0.75x over seeds 0-3 when this test was written)."""
    task = _setup(DIPDenoise(DIPDenoiseConfig(image="astronaut", size=32, reg_noise_std=0.0, ema=0.0)))
    reached = []
    for pretrain in (0, 200):
        torch.manual_seed(0)
        model = task.build_model("dip", SMALL)
        if pretrain:
            initium.noise_pretrain(model, task.inputs, steps=pretrain, noise="gaussian", seed=0, cache=False)
        history = fit(model, task.inputs, task.target, steps=300, lr=0.01, forward_loss=task.forward_loss)
        reached.append(steps_to(psnr_from_mse(history).tolist(), 22.0))
    default, pretrained = reached
    assert default is not None and pretrained is not None
    assert pretrained <= 0.9 * default


def test_denoising_peak_beats_the_noisy_input(tmp_path):
    """DIP on a real image, fixed seed, through the runner: the peak PSNR of the EMA output against
    the clean image clears the noisy input's PSNR by 3 dB, and the record says where the peak was."""
    cfg = RunConfig(
        task="dip-denoise", out=tmp_path, arch="dip(channels=16,levels=3)", methods=("default",), seeds=(0,),
        steps=600, eval_every=50, task_options={"image": "astronaut", "size": 64},
    )  # fmt: skip
    (rec,) = run(cfg)
    curve = rec["curve"]
    assert rec["status"] == "ok" and rec["lr"] == 0.01 and rec["metric_every_step"] is None
    assert 19 < rec["input_psnr"] < 22
    assert rec["peak_psnr"] > rec["input_psnr"] + 3
    assert rec["peak_psnr"] == max(curve["psnr"]) and curve["psnr"][curve["step"].index(rec["peak_step"])] == max(
        curve["psnr"]
    )
    assert rec["psnr_drop"] == pytest.approx(rec["peak_psnr"] - curve["psnr"][-1])
    assert 0 < curve["ssim"][-1] <= 1 and curve["ssim"][-1] > curve["ssim"][0]
    assert curve["fit_psnr"][-1] > curve["fit_psnr"][2]  # it fits the noisy image ever closer
    files = write_report(tmp_path)  # the PSNR-vs-step plot per init
    assert files["metric"].name == "psnr.png" and files["metric"].stat().st_size > 0
    table = summarize([rec])  # the summary shows the peak, not only the last value
    row = dict(zip(table.columns, table.rows[0], strict=True))
    assert row["peak_psnr"] == f"{rec['peak_psnr']:.2f}" and row["peak_step"] == str(rec["peak_step"])
