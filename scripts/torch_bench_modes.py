#!/usr/bin/env python3
"""PyTorch side of `cargo xtask bench` for every fusion mode, `temporal` and `adaptive` included.

`bench_train.py` (the PyTorch reference's benchmark, in `../shared/reference`) knows eeg_only, concat,
cross_attention and gated. This program runs its workload and timing (`run_one`) on a PyTorch model of the
newer modes: the reference's encoders and classifier around the fusion layer of
`crates/fusion/tests/reference/fusion_reference.py`, the PyTorch statement of what `fusion` computes (its
parity is tested), at the model's sizes (128-d latents, 8 tokens, 4 heads, temporal width 64, 2 layers).
The encoders' sequences before pooling feed `temporal`, each step placed at its centre in seconds.
The other configs go to `bench_train.py` unchanged. Same flags and JSON as `bench_train.py --config`:

    TORCH_BENCH=scripts/torch_bench_modes.py ../shared/tools/side-by-side.sh temporal 3
    python scripts/torch_bench_modes.py --config temporal      # JSON on stdout
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.environ.get("EMOFUSE_REFERENCE", os.path.join(HERE, "..", "..", "shared", "reference"))
sys.path.insert(0, REFERENCE)
sys.path.insert(0, os.path.join(HERE, "..", "crates", "fusion", "tests", "reference"))

try:
    import safetensors.torch  # noqa: F401  (the parity exporter writes with it)
except ImportError:  # only the exporter needs it, not the layer: let the import pass without it
    import types

    sys.modules["safetensors"] = types.ModuleType("safetensors")
    sys.modules["safetensors.torch"] = types.ModuleType("safetensors.torch")
    sys.modules["safetensors.torch"].save_file = None

import bench_train  # noqa: E402
import fusion_reference as fr  # noqa: E402
import reference_model as rm  # noqa: E402

NEW_MODES = ("temporal", "adaptive")
# The reference's own builder: `main` replaces `rm.build` with `build` below, which hands it the other configs.
REFERENCE_BUILD = rm.build


def step_times(steps: int, seconds: float = 5.0) -> torch.Tensor:
    """The centre of each of `steps` equal steps of a `seconds` window."""
    return torch.tensor([seconds * (i + 0.5) / steps for i in range(steps)], dtype=torch.float32)


class ModesModel(nn.Module):
    """EEG and audio encoders (sequences kept), the fusion layer of one mode, dropout, the classifier."""

    def __init__(self, mode: str):
        super().__init__()
        self.use_audio = True
        self.eeg_encoder = rm.EEGEncoder()
        self.audio_encoder = rm.AudioEncoder()
        cfg = fr.config(mode, ["eeg", "audio"], absent=False)
        cfg.update(latent_dim=rm.LATENT_DIM, tokens=rm.XATTN_TOKENS, heads=rm.XATTN_HEADS, temporal_dim=64)
        self.fusion = fr.Fusion(cfg)
        for m in self.fusion.modules():
            if isinstance(m, fr.Attention):  # left uninitialised by the reference (its export overwrites it)
                nn.init.xavier_uniform_(m.in_proj_weight)
        self.dropout = nn.Dropout(rm.DROPOUT)
        self.classifier = rm.EmotionClassifier()
        self._times = {}

    def times(self, steps: int) -> torch.Tensor:
        if steps not in self._times:
            self._times[steps] = step_times(steps)
        return self._times[steps]

    def forward(self, eeg, audio):
        seqs = [self.eeg_encoder.convs(eeg).transpose(1, 2), self.audio_encoder.convs(audio).transpose(1, 2)]
        latents = [s.mean(1) for s in seqs]
        times = [self.times(s.shape[1]) for s in seqs]
        fused, _ = self.fusion(latents, seqs, times, None)
        return self.classifier(self.dropout(fused))


def build(name: str):
    if name in NEW_MODES:
        return ModesModel(name)
    return REFERENCE_BUILD(name)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="eeg_only, concat, cross_attention, gated, temporal, adaptive")
    ap.add_argument("--threads", default="2")
    args = ap.parse_args()
    rm.build = build  # `run_one` builds its model through the reference module
    print(json.dumps(bench_train.run_one(args.config, int(args.threads.split(",")[0]))))


if __name__ == "__main__":
    main()
