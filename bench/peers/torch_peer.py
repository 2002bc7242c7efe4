#!/usr/bin/env python3
"""torch_peer.py: PyTorch peer baselines on the shapes of strata-bench engine (Llama-3-8B, bf16, random weights).

Prints one JSON line per case:
  {"bench":"copy", "gbs":...}                          device copy bandwidth (bytes read + written)
  {"peer":"torch.compile", "batch":B, "decode_tok_s":...}  a static-KV-cache decode loop written here in plain
      PyTorch (fused QKV and gate/up, SDPA with GQA), torch.compile(mode="reduce-overhead") so that CUDA graphs
      replay each step; decode of 64 tokens after a 512-token context
  {"peer":"hf-generate", "batch":B, "decode_tok_s":...}   transformers LlamaForCausalLM.generate (greedy), decode
      rate from the time of 33 new tokens minus the time of 1
  {"peer":"hf-forward", "case":"prefill", "prefill_tok_s":...}  one 2,048-token forward of transformers
usage: torch_peer.py [--batches 1 32] [--skip-hf] [--skip-compile]"""
import argparse
import json
import time

import torch
import torch.nn.functional as F

V, C, L, H, HKV, D, FF, THETA, EPS = 128256, 4096, 32, 32, 8, 128, 14336, 500000.0, 1e-5
PARAMS = V * C * 2 + L * (C * (H + 2 * HKV) * D + H * D * C + 3 * C * FF + 2 * C) + C
CTX, GEN = 512, 64


def timed(fn, reps):
    """Median seconds of FN over REPS runs, timed with CUDA events after a warm-up."""
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / 1e3)
    return sorted(ts)[len(ts) // 2]


def copy_bandwidth():
    a = torch.randn(1 << 30, device="cuda", dtype=torch.bfloat16)  # 2 GiB
    b = torch.empty_like(a)
    t = timed(lambda: b.copy_(a), 10)
    print(json.dumps({"bench": "copy", "gbs": round(2 * a.numel() * 2 / t / 1e9, 1)}), flush=True)
    del a, b


class Peer(torch.nn.Module):
    """Llama-3-8B decode with a static KV cache (L, B, Hkv, S, D) held as buffers (CUDA-graph friendly)."""

    def __init__(self, batch, seq):
        super().__init__()
        g = torch.Generator(device="cuda").manual_seed(0)
        # parameters, not plain attributes: CUDA graphs treat them as static (no copy per replay)
        P = lambda t: torch.nn.Parameter(t, requires_grad=False)
        r = lambda *s: P((torch.randn(*s, device="cuda", generator=g) * 0.02).to(torch.bfloat16))
        one = lambda: P(torch.ones(C, device="cuda", dtype=torch.bfloat16))
        PL = torch.nn.ParameterList
        self.emb, self.head, self.norm = r(V, C), r(V, C), one()
        self.wqkv = PL([r((H + 2 * HKV) * D, C) for _ in range(L)])
        self.wo = PL([r(C, H * D) for _ in range(L)])
        self.w13 = PL([r(2 * FF, C) for _ in range(L)])
        self.w2 = PL([r(C, FF) for _ in range(L)])
        self.n1 = PL([one() for _ in range(L)])
        self.n2 = PL([one() for _ in range(L)])
        self.register_buffer("kc", torch.randn(L, batch, HKV, seq, D, device="cuda", dtype=torch.bfloat16))
        self.register_buffer("vc", torch.randn(L, batch, HKV, seq, D, device="cuda", dtype=torch.bfloat16))
        inv = 1.0 / THETA ** (torch.arange(0, D, 2, device="cuda").float() / D)
        ang = torch.arange(seq, device="cuda").float()[:, None] * inv[None]
        self.register_buffer("cos", ang.cos())
        self.register_buffer("sin", ang.sin())
        self.seq = seq

    @staticmethod
    def rms(x, w):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS)).to(x.dtype) * w

    def rope(self, x, pos):
        c, s = self.cos[pos][:, None], self.sin[pos][:, None]
        x1, x2 = x.float().chunk(2, -1)
        return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], -1).to(x.dtype)

    def forward(self, tok, pos):
        B = tok.shape[0]
        bidx = torch.arange(B, device=tok.device)
        mask = (torch.arange(self.seq, device=tok.device)[None] <= pos[:, None])[:, None, None]
        x = self.emb[tok]
        for l in range(L):
            qkv = self.rms(x, self.n1[l]) @ self.wqkv[l].t()
            q, k, v = qkv.split([H * D, HKV * D, HKV * D], -1)
            q, k = self.rope(q.view(B, H, D), pos), self.rope(k.view(B, HKV, D), pos)
            self.kc[l, bidx, :, pos] = k
            self.vc[l, bidx, :, pos] = v.view(B, HKV, D)
            o = F.scaled_dot_product_attention(q[:, :, None], self.kc[l], self.vc[l], attn_mask=mask, enable_gqa=True)
            x = x + o.reshape(B, H * D) @ self.wo[l].t()
            gu = self.rms(x, self.n2[l]) @ self.w13[l].t()
            gt, up = gu.chunk(2, -1)
            x = x + (F.silu(gt) * up) @ self.w2[l].t()
        return (self.rms(x, self.norm) @ self.head.t()).argmax(-1)


def compiled_decode(batches):
    for b in batches:
        m = Peer(b, CTX + GEN + 8)
        step = torch.compile(m.forward, mode="reduce-overhead", fullgraph=True)
        tok = torch.randint(0, V, (b,), device="cuda")
        t0 = time.time()
        for i in range(3):  # compile and record the graph
            step(tok, torch.full((b,), CTX + i, device="cuda", dtype=torch.long))
        torch.cuda.synchronize()
        compile_s = time.time() - t0

        def run():
            t = tok
            for i in range(GEN):
                t = step(t, torch.full((b,), CTX + i, device="cuda", dtype=torch.long)).clone()

        t = timed(run, 3)
        print(json.dumps({"peer": "torch.compile", "batch": b, "prompt_len": CTX, "gen_len": GEN, "params": PARAMS,
                          "decode_tok_s": round(b * GEN / t, 1), "step_ms": round(t / GEN * 1e3, 3),
                          "compile_s": round(compile_s, 1)}), flush=True)
        del m, step
        torch.cuda.empty_cache()


def hf_peers(batches):
    import transformers
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=C, intermediate_size=FF, num_hidden_layers=L,
                                   num_attention_heads=H, num_key_value_heads=HKV, rope_theta=THETA,
                                   max_position_embeddings=8192, rms_norm_eps=EPS)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = transformers.LlamaForCausalLM(cfg).eval()
    torch.set_default_dtype(torch.float32)
    with torch.no_grad():
        ids = torch.randint(0, V, (1, 2048), device="cuda")
        t = timed(lambda: model(ids, use_cache=False), 3)
        print(json.dumps({"peer": "hf-forward", "case": "prefill", "prompt_len": 2048, "params": PARAMS,
                          "prefill_tok_s": round(2048 / t, 1)}), flush=True)
        for b in batches:
            ids = torch.randint(0, V, (b, CTX), device="cuda")
            gen = lambda n: model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                           min_new_tokens=n, do_sample=False, pad_token_id=0)
            t1, t33 = timed(lambda: gen(1), 1), timed(lambda: gen(33), 1)
            print(json.dumps({"peer": "hf-generate", "batch": b, "prompt_len": CTX, "gen_len": 32, "params": PARAMS,
                              "decode_tok_s": round(b * 32 / (t33 - t1), 1)}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-compile", action="store_true")
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    torch.backends.cuda.matmul.allow_tf32 = True
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__}", flush=True)
    copy_bandwidth()
    if not a.skip_compile:
        compiled_decode(a.batches)
    if not a.skip_hf:
        hf_peers(a.batches)


if __name__ == "__main__":
    main()
