#!/usr/bin/python3
"""Generate a multi-GB Qwen3-MoE checkpoint (BF16) and its calibration file, fast, for benchmarks.

  gen_big.py --out DIR --calib F.h5 --size-gb G [--experts E] [--hidden H] [--seed S]

The layout, tensor names and config.json keys are those of tests/gen_checkpoint.py's qwen3moe
family; the number of layers is chosen so that the model holds about G GB (1e9 bytes) of BF16.
The vocabulary is 32000, so the largest tensors are model.embed_tokens and lm_head
(32000 x H; 131 MB for H = 2048): "3 x largest tensor + 200 MB" is then a meaningful memory
bound for an exporting rank.

Speed and memory: one random block of 2^24 BF16 normals is drawn once; every tensor is streamed
into its shard in 8 MB chunks, each a window of that block at a random offset with random signs
and a per-tensor power-of-two scale (exact exponent shift). About 1 s/GB plus the disk, under
100 MB of memory. Shards are ~1-1.5 GB (contiguous runs of the state dict, balanced by bytes),
written as the Rust safetensors library writes them (tensors sorted by dtype, then name).

Calibration (schema of DESIGN.md), for every linear the default policy quantizes: input amax for
all of them; a scalar weight amax (the true max |W|, sometimes a little below it) for ~90%, none
for the rest; in every MoE layer one expert with no statistics at all; k/v bmm amax for every
attention. Deterministic for a given seed.
"""

import argparse
import json
import math
import os
import struct
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import gen_checkpoint as gc  # noqa: E402  (DTYPE_RANK, qwen3moe config keys, default policy)

VOCAB = 32000
POOL = 1 << 24       # BF16 values in the random block
CHUNK = 1 << 22      # BF16 values per write (8 MB)
SHARD_MAX = 1.5e9    # bytes per shard at most (shards are balanced below this)


def qwen3_tensors(L, E, H):
    """[(name, shape, kind)] in state-dict order; kind: 'w' linear/embedding, 'n' norm."""
    heads = max(1, H // 64)
    kv_heads = max(1, heads // 8)
    head_dim = 128
    moe_inter = max(16, (3 * H // 8) // 16 * 16)
    t = [("model.embed_tokens.weight", (VOCAB, H), "w")]
    for i in range(L):
        p = "model.layers.%d." % i
        t += [(p + "input_layernorm.weight", (H,), "n"),
              (p + "self_attn.q_proj.weight", (heads * head_dim, H), "w"),
              (p + "self_attn.k_proj.weight", (kv_heads * head_dim, H), "w"),
              (p + "self_attn.v_proj.weight", (kv_heads * head_dim, H), "w"),
              (p + "self_attn.o_proj.weight", (H, heads * head_dim), "w"),
              (p + "self_attn.q_norm.weight", (head_dim,), "n"),
              (p + "self_attn.k_norm.weight", (head_dim,), "n"),
              (p + "post_attention_layernorm.weight", (H,), "n"),
              (p + "mlp.gate.weight", (E, H), "w")]
        for e in range(E):
            q = p + "mlp.experts.%d." % e
            t += [(q + "gate_proj.weight", (moe_inter, H), "w"),
                  (q + "up_proj.weight", (moe_inter, H), "w"),
                  (q + "down_proj.weight", (H, moe_inter), "w")]
    t += [("model.norm.weight", (H,), "n"), ("lm_head.weight", (VOCAB, H), "w")]
    dims = {"heads": heads, "kv_heads": kv_heads, "head_dim": head_dim, "moe_inter": moe_inter}
    return t, dims


def nbytes(shape):
    return 2 * math.prod(shape)


def choose_layers(size_bytes, E, H):
    one, _ = qwen3_tensors(1, E, H)
    two, _ = qwen3_tensors(2, E, H)
    fixed = 2 * sum(nbytes(s) for _, s, _ in one) - sum(nbytes(s) for _, s, _ in two)
    per_layer = sum(nbytes(s) for _, s, _ in one) - fixed
    return max(1, int(round((size_bytes - fixed) / per_layer)))


def split_shards(sizes):
    """Contiguous runs balanced by bytes, none above SHARD_MAX unless one tensor is; -> [k]."""
    total = sum(sizes)
    k = max(1, min(len(sizes), math.ceil(total / SHARD_MAX)))
    assign, done = [], 0
    for i, n in enumerate(sizes):
        s = min(k - 1, int((done + n / 2) * k // total))
        s = max(s, k - (len(sizes) - i))
        if assign:
            s = min(max(s, assign[-1]), assign[-1] + 1)
        assign.append(s)
        done += n
    return k, assign


def header_bytes(entries):
    """entries: [(name, dtype, shape)] -> (header bytes incl. length prefix, order, offsets)."""
    items = sorted(entries, key=lambda t: (-gc.DTYPE_RANK[t[1]], t[0]))
    header, offset, order = {"__metadata__": {"format": "pt"}}, 0, []
    for name, dtype, shape in items:
        n = nbytes(shape)
        header[name] = {"dtype": dtype, "shape": [int(x) for x in shape],
                        "data_offsets": [offset, offset + n]}
        order.append(name)
        offset += n
    hdr = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    hdr += b" " * ((8 - len(hdr) % 8) % 8)
    return struct.pack("<Q", len(hdr)) + hdr, order, offset


class Source:
    """Streams plausible BF16 bits: windows of one random normal block, random signs, 2^-k."""

    def __init__(self, rng):
        self.rng = rng
        pool = np.empty(POOL + CHUNK, dtype="<u2")
        for i in range(0, POOL + CHUNK, CHUNK):
            a = rng.standard_normal(CHUNK, dtype=np.float32)
            pool[i:i + CHUNK] = a.view(np.uint32) >> 16   # truncate to BF16
        pool &= 0x7FFF                                     # magnitudes; signs are drawn per use
        pool[pool < 0x1000] = 0x3F80                       # keep exponents shiftable (never hit)
        self.pool = pool
        self.buf = np.empty(CHUNK, dtype="<u2")

    def write(self, f, n, kind):
        """Write n BF16 values to f; returns max |x| as float."""
        rng, amax = self.rng, 0
        if kind == "n":   # norm: 1 + small noise, positive
            x = 1.0 + 0.05 * rng.standard_normal(n, dtype=np.float32)
            bits = (x.view(np.uint32) >> 16).astype("<u2")
            f.write(bits.data)
            return float(np.abs(x).max())
        shift = np.uint16(int(rng.integers(5, 9)) << 7)   # scale 2^-5 .. 2^-8
        done = 0
        while done < n:
            k = min(CHUNK, n - done)
            out = self.buf[:k]
            off = int(rng.integers(POOL))
            np.bitwise_and(rng.bit_generator.random_raw((k + 3) // 4).view("<u2")[:k],
                           np.uint16(0x8000), out=out)
            np.bitwise_or(out, self.pool[off:off + k], out=out)
            np.subtract(out, shift, out=out)
            amax = max(amax, int(np.max(out & np.uint16(0x7FFF))))
            f.write(out.data)
            done += k
        return float(np.array([amax << 16], dtype=np.uint32).view(np.float32)[0])


def quantized(name, kind, shape):
    mod = name[:-len(".weight")]
    return kind == "w" and len(shape) == 2 and gc.default_quantized(mod, shape[1], 1 << 30)


def calibration(rng, tensors, amax, E):
    data = {}

    def put(module, quantizer, buf, value, rng=rng):
        data["%s/%s/%s" % (module.replace(".", "/"), quantizer, buf)] = \
            np.full(() if rng.random() < 0.7 else (1,), value, dtype=np.float32)

    layers = sorted({int(n.split(".")[2]) for n, _, _ in tensors if n.startswith("model.layers.")})
    silent = {i: int(rng.integers(E)) for i in layers}
    for name, shape, kind in tensors:
        if not quantized(name, kind, shape):
            continue
        mod = name[:-len(".weight")]
        ex = gc._routed_expert(mod)
        if ex and silent[int(mod.split(".")[2])] == ex[1]:
            continue
        put(mod, "input_quantizer", "_amax", 10.0 ** rng.uniform(-0.5, 1.5))
        if rng.random() < 0.9:
            w = amax[name] * (1.0 if rng.random() < 0.7 else rng.uniform(0.85, 1.0))
            put(mod, "weight_quantizer", "_amax", w)
    for i in layers:
        attn = "model.layers.%d.self_attn" % i
        put(attn, "k_bmm_quantizer", "_amax", 10.0 ** rng.uniform(0.0, 1.5))
        put(attn, "v_bmm_quantizer", "_amax", 10.0 ** rng.uniform(0.0, 1.5))
    return data


def human(n):
    return "%.1f MB" % (n / 1e6) if n < 1e9 else "%.2f GB" % (n / 1e9)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="model directory to write")
    ap.add_argument("--calib", required=True, help="calibration HDF5 file to write")
    ap.add_argument("--size-gb", type=float, required=True, help="approximate BF16 bytes / 1e9")
    ap.add_argument("--experts", type=int, default=16, help="routed experts per layer (16)")
    ap.add_argument("--hidden", type=int, default=2048, help="hidden size, multiple of 64 (2048)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.hidden < 64 or args.hidden % 64 or args.experts < 1 or args.size_gb <= 0:
        ap.error("--hidden must be a positive multiple of 64, --experts and --size-gb positive")
    t0 = time.time()
    E, H = args.experts, args.hidden
    L = choose_layers(args.size_gb * 1e9, E, H)
    tensors, d = qwen3_tensors(L, E, H)
    sizes = [nbytes(s) for _, s, _ in tensors]
    total = sum(sizes)
    k, assign = split_shards(sizes)

    cfg, _, _, _ = gc.build_qwen3moe(np.random.default_rng(0))   # the fixture's config keys
    cfg.update({"hidden_size": H, "num_hidden_layers": L, "max_window_layers": L,
                "num_experts": E, "num_experts_per_tok": min(E, 8),
                "num_attention_heads": d["heads"], "num_key_value_heads": d["kv_heads"],
                "head_dim": d["head_dim"], "moe_intermediate_size": d["moe_inter"],
                "intermediate_size": 4 * d["moe_inter"], "vocab_size": VOCAB})

    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    src = Source(rng)
    by_name = {n: (s, kind) for n, s, kind in tensors}
    amax, weight_map = {}, {}
    for s in range(k):
        fname = "model.safetensors" if k == 1 else "model-%05d-of-%05d.safetensors" % (s + 1, k)
        entries = [(n, "BF16", shp) for (n, shp, _), a in zip(tensors, assign) if a == s]
        hdr, order, _ = header_bytes(entries)
        with open(os.path.join(args.out, fname), "wb") as f:
            f.write(hdr)
            for name in order:
                shp, kind = by_name[name]
                amax[name] = src.write(f, math.prod(shp), kind)
        weight_map.update({n: fname for n, _, _ in entries})
    if k > 1:
        gc._json(os.path.join(args.out, "model.safetensors.index.json"),
                 {"metadata": {"total_size": total}, "weight_map": weight_map})
    gc._json(os.path.join(args.out, "config.json"), cfg)
    gc._json(os.path.join(args.out, "generation_config.json"),
             {"_from_model_config": True, "bos_token_id": cfg["bos_token_id"],
              "eos_token_id": cfg["eos_token_id"],
              "transformers_version": cfg["transformers_version"]})
    data = calibration(rng, tensors, amax, E)
    gc.write_calibration(args.calib, data)

    big = max(range(len(tensors)), key=lambda i: sizes[i])
    print("gen_big: %s: %d layers x %d experts, hidden %d, %d tensors, %d bytes (%s) in %d shards; "
          "%s: %d datasets; %.1f s"
          % (args.out, L, E, H, len(tensors), total, human(total), k, args.calib, len(data),
             time.time() - t0))
    print("gen_big: largest tensor %s %s BF16: %d bytes (%s)"
          % (tensors[big][0], list(tensors[big][1]), sizes[big], human(sizes[big])))
    print("largest_tensor_bytes=%d" % sizes[big])
    print("total_bytes=%d" % total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
