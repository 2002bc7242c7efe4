#!/usr/bin/env python3
"""hf_parity.py: whole-model parity with Hugging Face transformers on random weights.

For three tiny configurations (Llama 3 with GQA and llama3 RoPE scaling, Qwen2 with QKV bias, Qwen3 with
QK norm and a head dim unlike hidden/heads) it draws random weights, saves them as safetensors +
config.json, decodes 32 greedy tokens with transformers (f32, CPU: the reference) and with our
greedy_ids program on the requested devices, and compares the ids. f32 on cuda must match all 32;
bf16 is reported (how many leading tokens match) but not required, since bf16 rounding may flip a
near-tie of random weights.

usage: hf_parity.py GREEDY_IDS_BINARY WORKDIR  -> exit 1 when an f32 run differs."""
import json
import math
import os
import subprocess
import sys

import torch
import transformers

STEPS = 32
PROMPT = [1, 5, 17, 42, 99, 3, 250, 7]

CONFIGS = {
    "llama3-gqa-ropescale": (transformers.LlamaConfig, dict(
        vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=2048,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64},
        tie_word_embeddings=False)),
    "qwen2-qkvbias": (transformers.Qwen2Config, dict(
        vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=2048,
        tie_word_embeddings=True, use_sliding_window=False)),
    "qwen3-qknorm": (transformers.Qwen3Config, dict(
        vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=64, rms_norm_eps=1e-6, rope_theta=1000000.0,
        max_position_embeddings=2048, tie_word_embeddings=True, use_sliding_window=False)),
}


def randomize(model):
    """Weights large enough that the logits are far from uniform (the default init gives near-ties)."""
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                std = 1.0 if "embed" in name else 1.0 / math.sqrt(p.shape[1])
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:  # biases
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def hf_greedy(model):
    ids = torch.tensor([PROMPT])
    out = []
    with torch.no_grad():
        for _ in range(STEPS):
            nxt = int(model(ids).logits[0, -1].argmax())
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out


def write_config(path, cfg_kwargs, arch):
    """Our loader reads rope_theta / rope_scaling at the top level (transformers 5 may nest them)."""
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    cfg["rope_theta"] = cfg_kwargs["rope_theta"]
    cfg["rope_scaling"] = cfg_kwargs.get("rope_scaling")
    cfg["architectures"] = [arch]
    cfg.pop("eos_token_id", None)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)


def main():
    binary, work = sys.argv[1], sys.argv[2]
    runs = [("cuda", "f32", True), ("cuda", "bf16", False), ("cpu", "f32", True)]
    failed = 0
    torch.manual_seed(0)
    for name, (cls, kw) in CONFIGS.items():
        cfg = cls(**kw)
        model = transformers.AutoModelForCausalLM.from_config(cfg).float().eval()
        randomize(model)
        path = os.path.join(work, name)
        model.save_pretrained(path, safe_serialization=True)
        write_config(path, kw, type(model).__name__)
        ref = hf_greedy(model)
        print(f"{name}: transformers {transformers.__version__} greedy: {' '.join(map(str, ref[:12]))} ...")
        for dev, dt, required in runs:
            r = subprocess.run([binary, path, dev, dt, str(STEPS)] + [str(i) for i in PROMPT],
                               capture_output=True, text=True)
            if r.returncode != 0:
                print(f"  FAIL {dev} {dt}: greedy_ids exited {r.returncode}: {r.stderr.strip()[-400:]}")
                failed += required
                continue
            got = [int(x) for x in r.stdout.split()]
            same = 0
            while same < min(len(got), len(ref)) and got[same] == ref[same]:
                same += 1
            ok = same == STEPS
            tag = "ok  " if ok else ("FAIL" if required else "info")
            print(f"  {tag} {dev:4s} {dt:4s}: {same}/{STEPS} greedy tokens identical to transformers")
            if not ok and required:
                failed += 1
    print(f"hf_parity: {'FAILED' if failed else 'passed'} ({failed} required runs differ)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
