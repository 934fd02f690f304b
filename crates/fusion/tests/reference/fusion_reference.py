#!/usr/bin/env python3
"""PyTorch reference of the `fusion` crate's layer over a set of modalities.

It states, in PyTorch, what `fusion::Fusion::fuse_set` computes: every mode (concat, cross_attention,
gated, temporal, adaptive) over N modalities, each with a per-sample presence mask. `--export DIR` writes,
for each case below, `<case>.weights.safetensors` (the layer's tensors under the crate's names),
`<case>.io.safetensors` (inputs, the fused output in evaluation, and the gradient of
`sum(fused * r)` with respect to every tensor and input) and `<case>.json` (the layer's config).
`crates/fusion/tests/parity.rs` checks the Rust layer against these files.

Run in a throwaway environment:
    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch safetensors numpy
    /tmp/ref/bin/python crates/fusion/tests/reference/fusion_reference.py --export crates/fusion/tests/reference
"""
from __future__ import annotations

import argparse
import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

TAG = {"eeg": "e", "audio": "a", "video": "v"}
EXPERTS = ("concat", "cross_attention", "gated", "temporal")
ROUTER_HIDDEN = 64


def periods(pairs: int) -> list[float]:
    """Periods in seconds, geometric from 0.1 s to 20 s."""
    return [0.1 * 200.0 ** (i / (pairs - 1) if pairs > 1 else 0.0) for i in range(pairs)]


def time_code(times: torch.Tensor, dim: int) -> torch.Tensor:
    """(T,) seconds -> (T, dim): sin and cos pairs."""
    p = torch.tensor(periods(dim // 2), dtype=torch.float64)
    phase = 2 * math.pi * times[:, None] / p[None, :]
    out = torch.stack([phase.sin(), phase.cos()], dim=-1).reshape(len(times), -1)
    return out


def rotary(x: torch.Tensor, times: torch.Tensor, heads: int) -> torch.Tensor:
    """Rotate feature pairs (2f, 2f+1) within each head by 2*pi*t/P_f."""
    b, t, e = x.shape
    hd = e // heads
    p = torch.tensor(periods(hd // 2), dtype=x.dtype)
    angle = 2 * math.pi * times.to(x.dtype)[:, None] / p[None, :]  # (T, hd/2)
    cos = angle.cos().repeat(1, heads)[None]  # (1, T, e/2) head-major
    sin = angle.sin().repeat(1, heads)[None]
    pairs = x.reshape(b, t, e // 2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).reshape(b, t, e)


class Attention(nn.Module):
    """Multi-head attention in nn.MultiheadAttention's tensor layout, optionally with rotary time codes."""

    def __init__(self, embed: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed, embed))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed))
        self.out_proj = nn.Linear(embed, embed)

    def forward(self, query, context, q_times=None, k_times=None):
        e = query.shape[-1]
        w, bias = self.in_proj_weight, self.in_proj_bias
        q = F.linear(query, w[:e], bias[:e])
        k = F.linear(context, w[e : 2 * e], bias[e : 2 * e])
        v = F.linear(context, w[2 * e :], bias[2 * e :])
        if q_times is not None:
            q, k = rotary(q, q_times, self.heads), rotary(k, k_times, self.heads)
        b, tq, _ = q.shape
        tk = k.shape[1]
        hd = e // self.heads
        split = lambda x, t: x.reshape(b, t, self.heads, hd).transpose(1, 2)
        scores = split(q, tq) @ split(k, tk).transpose(-1, -2) / math.sqrt(hd)
        weights = scores.softmax(-1)
        ctx = (weights @ split(v, tk)).transpose(1, 2).reshape(b, tq, e)
        return self.out_proj(ctx)


class Stream(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, 2 * dim)
        self.ff2 = nn.Linear(2 * dim, dim)


class Layer(nn.Module):
    def __init__(self, modalities, dim, heads):
        super().__init__()
        for m in modalities:
            self.add_module(m, Stream(dim, heads))
        for q in modalities:
            for k in modalities:
                if q != k:
                    self.add_module(f"attn_{TAG[q]}2{TAG[k]}", Attention(dim, heads))


def build_temporal(owner, modalities, latent, dim, layers, heads):
    for m in modalities:
        owner.add_module(f"{m}_in", nn.Linear(latent, dim))
        owner.add_module(f"{m}_out_norm", nn.LayerNorm(dim))
    owner.layers = nn.ModuleList([Layer(modalities, dim, heads) for _ in range(layers)])
    owner.out = nn.Linear(dim, latent)


def temporal_forward(owner, modalities, dim, seqs, times, masks, count):
    n = len(seqs)
    h = [getattr(owner, f"{m}_in")(x) + time_code(t, dim).to(x.dtype) for m, x, t in zip(modalities, seqs, times)]
    for layer in owner.layers:
        streams = [getattr(layer, m) for m in modalities]
        normed = [s.norm1(x) for s, x in zip(streams, h)]
        new = []
        for i, (x, s) in enumerate(zip(h, streams)):
            ctx = None
            for j in range(n):
                if j == i:
                    continue
                att = getattr(layer, f"attn_{TAG[modalities[i]]}2{TAG[modalities[j]]}")
                c = att(normed[i], normed[j], times[i], times[j])
                if masks is not None:
                    c = c * masks[j][:, :, None]
                ctx = c if ctx is None else ctx + c
            if ctx is not None:
                if masks is not None:
                    ctx = ctx / torch.clamp(count - masks[i], min=1.0)[:, :, None]
                elif n > 2:
                    ctx = ctx / (n - 1)
                x = x + ctx
            y = s.norm2(x)
            x = x + s.self_attn(y, y, times[i], times[i])
            y = s.norm3(x)
            x = x + s.ff2(F.relu(s.ff1(y)))
            new.append(x)
        h = new
    pooled = [getattr(owner, f"{m}_out_norm")(x).mean(1) for m, x in zip(modalities, h)]
    if masks is not None:
        mixed = sum(p * m for p, m in zip(pooled, masks)) / count
    else:
        mixed = sum(pooled) / n
    return owner.out(mixed)


class Fusion(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        d, n = cfg["latent_dim"], len(cfg["modalities"])
        for m in cfg["modalities"]:
            self.register_parameter(f"{m}_scale", nn.Parameter(torch.ones(d)))
            if cfg["absent_embeddings"] and cfg["mode"] in ("concat", "adaptive"):
                self.register_parameter(f"{m}_absent", nn.Parameter(torch.zeros(d)))
        self.build(self, cfg["mode"])

    def build(self, owner, mode):
        cfg = self.cfg
        d, n, mods = cfg["latent_dim"], len(cfg["modalities"]), cfg["modalities"]
        if mode == "concat":
            owner.proj = nn.Linear(n * d, d)
        elif mode == "gated":
            owner.gate_fc = nn.Linear(n * d, n * d)
            owner.proj_fc = nn.Linear(n * d, d)
        elif mode == "cross_attention":
            for q in mods:
                for k in mods:
                    if q != k:
                        owner.add_module(f"attn_{TAG[q]}2{TAG[k]}", Attention(d // cfg["tokens"], cfg["heads"]))
            owner.blend_logits = nn.Parameter(torch.zeros(n))
            owner.proj = nn.Linear(d, d)
        elif mode == "temporal":
            build_temporal(owner, mods, d, cfg["temporal_dim"], cfg["temporal_layers"], cfg["heads"])
        elif mode == "adaptive":
            for e in EXPERTS:
                sub = nn.Module()
                self.build(sub, e)
                owner.add_module(e, sub)
            owner.router_in = nn.Linear(n * d, ROUTER_HIDDEN)
            owner.router_out = nn.Linear(ROUTER_HIDDEN, len(EXPERTS))

    def run(self, owner, mode, xs, seqs, times, masks, count):
        cfg = self.cfg
        d, n, mods = cfg["latent_dim"], len(cfg["modalities"]), cfg["modalities"]
        b = xs[0].shape[0]
        if mode == "concat":
            parts = xs
            if masks is not None:
                parts = []
                for m, x, mask in zip(mods, xs, masks):
                    kept = x * mask
                    if hasattr(self, f"{m}_absent"):
                        kept = kept + (1 - mask) * getattr(self, f"{m}_absent")[None]
                    parts.append(kept)
            return owner.proj(torch.cat(parts, -1)), None
        if mode == "gated":
            parts = xs if masks is None else [x * m for x, m in zip(xs, masks)]
            c = torch.cat(parts, -1)
            g = torch.sigmoid(owner.gate_fc(c))
            h = c * g
            if masks is not None:
                h = h * (n / count)
            return owner.proj_fc(h), None
        if mode == "cross_attention":
            t = cfg["tokens"]
            tok = [x.reshape(b, t, d // t) for x in xs]
            w = owner.blend_logits.softmax(0)
            if masks is None:
                w = w[None].expand(b, n)
            else:
                raw = torch.cat(masks, 1) * w[None]
                w = raw / raw.sum(1, keepdim=True)
            mixed = 0
            for i in range(n):
                ctx = None
                for j in range(n):
                    if j == i:
                        continue
                    c = getattr(owner, f"attn_{TAG[mods[i]]}2{TAG[mods[j]]}")(tok[i], tok[j])
                    if masks is not None:
                        c = c * masks[j][:, :, None]
                    ctx = c if ctx is None else ctx + c
                xi = tok[i]
                if ctx is not None:
                    if masks is not None:
                        ctx = ctx / torch.clamp(count - masks[i], min=1.0)[:, :, None]
                    elif n > 2:
                        ctx = ctx / (n - 1)
                    xi = xi + ctx
                mixed = mixed + xi.reshape(b, d) * w[:, i : i + 1]
            return owner.proj(mixed), None
        if mode == "temporal":
            scaled = [s * getattr(self, f"{m}_scale") for m, s in zip(mods, seqs)]
            return temporal_forward(owner, mods, cfg["temporal_dim"], scaled, times, masks, count), None
        if mode == "adaptive":
            parts = xs if masks is None else [x * m for x, m in zip(xs, masks)]
            hidden = F.relu(owner.router_in(torch.cat(parts, -1)))
            weights = owner.router_out(hidden).softmax(-1)
            mixed = 0
            for k, e in enumerate(EXPERTS):
                pre, _ = self.run(getattr(owner, e), e, xs, seqs, times, masks, count)
                mixed = mixed + F.relu(pre) * weights[:, k : k + 1]
            return mixed, weights
        raise ValueError(mode)

    def forward(self, latents, seqs, times, masks):
        mods = self.cfg["modalities"]
        xs = [l * getattr(self, f"{m}_scale") for m, l in zip(mods, latents)]
        count = None if masks is None else sum(masks)
        pre, router = self.run(self, self.cfg["mode"], xs, seqs, times, masks, count)
        return F.relu(pre), router


def config(mode, modalities, absent=True):
    # Smaller than the model's (128-d latents, 8 tokens, 4 heads, width 64) so that the files stay small;
    # every path is the same.
    return {
        "mode": mode,
        "latent_dim": 32,
        "dropout": 0.0,
        "tokens": 4,
        "heads": 2,
        "seed": 0,
        "modalities": modalities,
        "absent_embeddings": absent,
        "temporal_dim": 16,
        "temporal_layers": 2,
        "router_balance": 0.0,
    }


STEPS = {"eeg": 6, "audio": 9, "video": 4}
CASES = {
    # name: (config, presence per modality per sample (batch 3), or None for all present)
    "temporal_masked": (config("temporal", ["eeg", "audio"]), [[1, 1, 0], [1, 0, 1]]),
    "temporal_full": (config("temporal", ["eeg", "audio"]), None),
    "concat3_masked": (config("concat", ["eeg", "audio", "video"]), [[1, 0, 1], [1, 1, 0], [0, 1, 1]]),
    "gated3_masked": (config("gated", ["eeg", "audio", "video"]), [[1, 0, 1], [1, 1, 0], [0, 0, 1]]),
    "cross_attention3_masked": (config("cross_attention", ["eeg", "audio", "video"]), [[1, 0, 1], [1, 1, 0], [0, 1, 1]]),
    "adaptive_masked": (config("adaptive", ["eeg", "audio"]), [[1, 1, 0], [1, 0, 1]]),
    # Appended after the others: their draws, and so their files, stay as they were.
    "temporal3_masked": (config("temporal", ["eeg", "audio", "video"]), [[1, 0, 1], [1, 1, 0], [0, 1, 1]]),
    "adaptive3_masked": (config("adaptive", ["eeg", "audio", "video"]), [[1, 0, 1], [1, 1, 0], [0, 0, 1]]),
}


def export(out: str, seed: int = 1234) -> None:
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(seed)
    for name, (cfg, presence) in CASES.items():
        model = Fusion(cfg).double()
        # Every tensor away from its initial value, so that every path is exercised; values representable
        # in f32, so that the stored files hold exactly what was computed with.
        f32 = lambda t: t.float().double()
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(f32(torch.randn_like(p) * 0.5))
        b, d, mods = 3, cfg["latent_dim"], cfg["modalities"]
        latents = [f32(torch.randn(b, d, dtype=torch.float64)).requires_grad_() for _ in mods]
        seqs = [f32(torch.randn(b, STEPS[m], d, dtype=torch.float64)).requires_grad_() for m in mods]
        times = [torch.tensor([5.0 * (i + 0.5) / STEPS[m] for i in range(STEPS[m])], dtype=torch.float64) for m in mods]
        masks = None if presence is None else [torch.tensor(p, dtype=torch.float64)[:, None] for p in presence]
        fused, router = model(latents, seqs, times, masks)
        r = torch.randn_like(fused)
        (fused * r).sum().backward()
        tensors = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, os.path.join(out, f"{name}.weights.safetensors"))
        io = {"fused": fused.detach().float(), "r": r.float()}
        for m, l, s, t in zip(mods, latents, seqs, times):
            io[f"latent.{m}"] = l.detach().float()
            io[f"sequence.{m}"] = s.detach().float()
            io[f"times.{m}"] = t.float()
            io[f"grad.latent.{m}"] = (l.grad if l.grad is not None else torch.zeros_like(l)).float()
            io[f"grad.sequence.{m}"] = (s.grad if s.grad is not None else torch.zeros_like(s)).float()
        if masks is not None:
            for m, mask in zip(mods, masks):
                io[f"present.{m}"] = mask[:, 0].float()
        if router is not None:
            io["router"] = router.detach().float()
        for k, p in model.named_parameters():
            io[f"grad.{k}"] = (p.grad if p.grad is not None else torch.zeros_like(p)).float()
        save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(out, f"{name}.io.safetensors"))
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            json.dump({"config": cfg, "torch": torch.__version__, "seed": seed}, f, indent=1)
        print(name, sum(p.numel() for p in model.parameters()), "parameters")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--export", required=True)
    export(ap.parse_args().export)
