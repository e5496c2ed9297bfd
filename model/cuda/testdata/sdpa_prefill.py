#!/usr/bin/env python3
"""PyTorch baseline for model/cuda's BenchmarkLlama8B: a full prefill of a
Llama-3-8B-shaped model (random bf16 weights, the same shapes: dim 4096,
32 layers, 32 query / 8 KV heads of 128, SwiGLU 14336, vocab 128256, llama3
RoPE) with torch.nn.functional.scaled_dot_product_attention (causal; flash
kernel on Ampere/Hopper), timed from the call to the last token's logits on
the host, like the Go benchmark. Needs only torch.

usage: sdpa_prefill.py [--tokens 4096,16384,32768] [--repeat 2] [--json FILE]
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 4096, 14336, 32, 32, 8, 128, 128256
THETA, EPS = 500000.0, 1e-5
SCALING = dict(factor=8.0, low=1.0, high=4.0, original=8192)


def inv_freq(device):
    f = 1.0 / (THETA ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float64) / HEAD_DIM))
    low_wl = SCALING["original"] / SCALING["low"]
    high_wl = SCALING["original"] / SCALING["high"]
    wl = 2 * math.pi / f
    smooth = (SCALING["original"] / wl - SCALING["low"]) / (SCALING["high"] - SCALING["low"])
    scaled = torch.where(wl > low_wl, f / SCALING["factor"], f)
    mid = (wl >= high_wl) & (wl <= low_wl)
    scaled = torch.where(mid, (1 - smooth) * f / SCALING["factor"] + smooth * f, scaled)
    return scaled.to(device)


def uniform(shape, fan_in, device, gen):
    s = math.sqrt(3.0 / fan_in)
    return torch.empty(shape, dtype=torch.bfloat16, device=device).uniform_(-s, s, generator=gen)


class Model:
    def __init__(self, device):
        gen = torch.Generator(device=device)
        gen.manual_seed(1)
        self.emb = uniform((VOCAB, DIM), 3, device, gen)
        self.cls = uniform((VOCAB, DIM), DIM, device, gen)
        qkv = (HEADS + 2 * KV_HEADS) * HEAD_DIM
        self.layers = []
        for _ in range(LAYERS):
            self.layers.append(dict(
                wqkv=uniform((qkv, DIM), DIM, device, gen),
                wo=uniform((DIM, HEADS * HEAD_DIM), HEADS * HEAD_DIM, device, gen),
                w13=uniform((2 * HIDDEN, DIM), DIM, device, gen),
                w2=uniform((DIM, HIDDEN), HIDDEN, device, gen),
                n1=torch.ones(DIM, dtype=torch.bfloat16, device=device),
                n2=torch.ones(DIM, dtype=torch.bfloat16, device=device)))
        self.norm = torch.ones(DIM, dtype=torch.bfloat16, device=device)
        self.freq = inv_freq(device)

    @staticmethod
    def rmsnorm(x, w):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS)).to(x.dtype) * w

    @staticmethod
    def rotate(x, cos, sin):  # x [1, heads, n, hd]; HF rotate_half
        h = x.shape[-1] // 2
        rot = torch.cat((-x[..., h:], x[..., :h]), dim=-1)
        return x * cos + rot * sin

    @torch.inference_mode()
    def prefill(self, ids):
        n = ids.shape[0]
        pos = torch.arange(n, device=ids.device, dtype=torch.float64)
        ang = torch.outer(pos, self.freq)
        ang = torch.cat((ang, ang), dim=-1)
        cos, sin = ang.cos().to(torch.bfloat16), ang.sin().to(torch.bfloat16)
        x = self.emb[ids]
        group = HEADS // KV_HEADS
        for L in self.layers:
            h = self.rmsnorm(x, L["n1"])
            qkv = h @ L["wqkv"].T
            q, k, v = qkv.split([HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], dim=-1)
            q = q.view(n, HEADS, HEAD_DIM).transpose(0, 1).unsqueeze(0)
            k = k.view(n, KV_HEADS, HEAD_DIM).transpose(0, 1).unsqueeze(0)
            v = v.view(n, KV_HEADS, HEAD_DIM).transpose(0, 1).unsqueeze(0)
            q, k = self.rotate(q, cos, sin), self.rotate(k, cos, sin)
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + a.squeeze(0).transpose(0, 1).reshape(n, HEADS * HEAD_DIM) @ L["wo"].T
            h = self.rmsnorm(x, L["n2"])
            g, u = (h @ L["w13"].T).split([HIDDEN, HIDDEN], dim=-1)
            x = x + (F.silu(g) * u) @ L["w2"].T
        logits = (self.rmsnorm(x[-1:], self.norm) @ self.cls.T).float()
        return logits.cpu()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", default="4096,16384,32768")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    dev = torch.device("cuda")
    m = Model(dev)
    rows = []
    for n in [int(s) for s in args.tokens.split(",")]:
        ids = torch.randint(3, VOCAB, (n,), device=dev)
        m.prefill(ids)  # warm-up
        torch.cuda.synchronize()
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            m.prefill(ids)
            times.append(time.perf_counter() - t0)
        best = min(times)
        rows.append(dict(tokens=n, mode="torch_sdpa_full", ms=best * 1e3, tokens_per_s=n / best))
        print(f"torch sdpa prefill tokens={n}: {best * 1e3:.1f} ms, {n / best:.0f} tok/s", flush=True)
    out = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
