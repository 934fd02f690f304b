#!/usr/bin/env python3
"""PyTorch reference of the `encoders` crate's video encoder.

It states, in PyTorch, what `encoders::VideoEncoder` computes: every frame of a (B, T, H, W) luma window
through the same Conv2d -> BatchNorm2d -> ReLU blocks, the spatial mean, then Conv1d -> BatchNorm1d -> ReLU
blocks over the frames and the mean over time. `--export DIR` writes `video.weights.safetensors` (the
encoder's tensors under the crate's names, running statistics included) and `video.io.safetensors`: the
input, the training-mode latent, the gradient of `sum(latent * r)` with respect to every parameter and the
input, the running statistics after that step, and the evaluation-mode latent afterwards.
`crates/encoders/tests/video_parity.rs` checks the Rust encoder against these files.

Run in a throwaway environment:
    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch safetensors numpy
    /tmp/ref/bin/python crates/encoders/tests/reference/video_reference.py --export crates/encoders/tests/reference
"""
from __future__ import annotations

import argparse
import os

import torch
import torch.nn as nn
from safetensors.torch import save_file

FRAME_BLOCKS = [(16, 3, 2, 1), (32, 3, 2, 1), (64, 3, 2, 1)]  # (out, kernel, stride, padding)
TEMPORAL_BLOCKS = [(128, 3, 1, 1)]


class ConvEncoder1d(nn.Module):
    def __init__(self, cin: int, blocks):
        super().__init__()
        layers = []
        for out, k, s, p in blocks:
            layers.append(nn.Sequential(nn.Conv1d(cin, out, k, s, p), nn.BatchNorm1d(out), nn.ReLU()))
            cin = out
        self.convs = nn.Sequential(*layers)

    def forward(self, x):  # (B, C, T) -> (B, D, T')
        return self.convs(x)


class VideoEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        cin, layers = 1, []
        for out, k, s, p in FRAME_BLOCKS:
            layers.append(nn.Sequential(nn.Conv2d(cin, out, k, s, p), nn.BatchNorm2d(out), nn.ReLU()))
            cin = out
        self.frames = nn.Sequential(*layers)
        self.temporal = ConvEncoder1d(cin, TEMPORAL_BLOCKS)

    def forward(self, x):  # (B, T, H, W) -> (B, D)
        b, t, h, w = x.shape
        f = self.frames(x.reshape(b * t, 1, h, w))
        pooled = f.flatten(2).mean(-1).reshape(b, t, -1).transpose(1, 2)
        return self.temporal(pooled).mean(-1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--export", required=True)
    args = parser.parse_args()
    torch.manual_seed(20261129)
    enc = VideoEncoder()
    # Move BatchNorm parameters and running statistics away from their defaults.
    with torch.no_grad():
        for name, t in enc.state_dict().items():
            if t.dtype.is_floating_point and (".1." in name):
                t.copy_(0.7 + 0.3 * torch.rand_like(t))
    weights = {k: v.clone().contiguous() for k, v in enc.state_dict().items() if "num_batches" not in k}
    x = torch.randn(3, 10, 24, 32, requires_grad=True)
    r = torch.randn(3, 128)
    enc.train()
    latent = enc(x)
    (latent * r).sum().backward()
    io = {"input": x.detach().clone(), "r": r, "train.latent": latent.detach().clone(), "grad.input": x.grad.clone()}
    for name, p in enc.named_parameters():
        io[f"grad.{name}"] = p.grad.clone()
    for name, t in enc.state_dict().items():
        if "running" in name:
            io[f"after.{name}"] = t.clone()
    enc.eval()
    with torch.no_grad():
        io["eval.latent"] = enc(x.detach())
    os.makedirs(args.export, exist_ok=True)
    save_file(weights, os.path.join(args.export, "video.weights.safetensors"))
    save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(args.export, "video.io.safetensors"))


if __name__ == "__main__":
    main()
