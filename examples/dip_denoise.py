"""Deep-image-prior denoising in a few lines: a small DIPNet fitted to a noisy 64 px astronaut
(sigma 25/255), from its default init and after 300 steps of spectral (1/f^2) target-noise
pretraining; prints the PSNR against the clean image at a few steps and the peak.

    python examples/dip_denoise.py
"""

import torch

import initium
from initium.tasks.dip import DIPDenoise, DIPDenoiseConfig
from initium.train import fit

task = DIPDenoise(DIPDenoiseConfig(image="astronaut", size=64, sigma=25.0))  # EMA 0.99, jitter 1/30
task.setup(torch.device("cpu"))
print(f"noisy input: {task.input_psnr:.2f} dB")

for noise in (None, "spectral"):
    torch.manual_seed(0)
    model = task.build_model("dip", {"channels": 32, "levels": 4})  # the paper's net: {} (5 x 128)
    if noise:
        initium.noise_pretrain(model, task.inputs, steps=300, noise=noise, seed=0, cache=False)
    curve: dict[int, float] = {}

    def record(step: int, pred: torch.Tensor, curve: dict[int, float] = curve) -> None:
        curve[step] = task.evaluate(pred)["psnr"]  # the EMA of outputs against the clean image

    fit(
        model, task.inputs, task.target, steps=1000, lr=0.01, forward_loss=task.forward_loss,
        evaluate_at=range(0, 1001, 50), on_eval=record,
    )  # fmt: skip
    peak = max(curve, key=curve.get)
    shown = ", ".join(f"{k}: {curve[k]:.1f}" for k in (100, 250, 500, 1000))
    print(f"{noise or 'default':>8}: {shown} dB; peak {curve[peak]:.2f} dB at step {peak}")
