#!/usr/bin/python3
"""Generate a Llama-4 (text-only, Scout-like) checkpoint whose fused experts are large, for the
memory bench of fused-expert exports.

  gen_big_fused.py --out DIR --calib F.h5 [--experts E] [--hidden H] [--inter I] [--layers L]
                   [--mxfp4]

Names, shapes and config keys are those of tests/gen_fused.py's llama4text family:
model.layers.N.feed_forward.experts.gate_up_proj BF16 [E, H, 2I] and down_proj [E, I, H], a
router, a shared expert, attention, embeddings and lm_head (vocabulary 8000). The defaults (16
experts, H = I = 4096, one layer) make gate_up_proj 16 x 4096 x 8192 BF16 = 1.07 GB and down_proj
537 MB. Values are streamed as tests/bench/gen_big.py streams them (one random block, random
windows and signs, a power-of-two scale per tensor), under 100 MB of memory.

--mxfp4 writes gpt-oss's MXFP4 release instead (model_type gpt_oss, quant_method mxfp4):
mlp.experts.gate_up_proj_blocks U8 [E, 2I, H/32, 16], _scales [E, 2I, H/32] (bytes 118..127),
_bias BF16 [E, 2I], the same for down_proj, router with bias, attention with biases; with
--experts 32 --hidden 2880 --inter 2880 (gpt-oss-20b's experts) gate_up decodes to 1.06 GB of
BF16, exported in whole-expert pieces of 33 MB.

Calibration: input amax for every quantized module (fused experts:
<experts>/<proj>_input_quantizer/_amax); weight amax for down_proj and the linears, none for
gate_up_proj, whose amax the export then computes from its pieces on every rank and reduces
with a collective; k/v amax.
"""

import argparse
import json
import math
import os
import struct
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))
import gen_big as gb  # noqa: E402
import gen_checkpoint as gc  # noqa: E402

VOCAB = 8000


def tensors_of(L, E, H, I):
    heads, kv, hd = H // 128, max(1, H // 1024), 128
    t = [("model.embed_tokens.weight", (VOCAB, H), "w")]
    for i in range(L):
        p = "model.layers.%d." % i
        t += [(p + "input_layernorm.weight", (H,), "n"),
              (p + "self_attn.q_proj.weight", (heads * hd, H), "w"),
              (p + "self_attn.k_proj.weight", (kv * hd, H), "w"),
              (p + "self_attn.v_proj.weight", (kv * hd, H), "w"),
              (p + "self_attn.o_proj.weight", (H, heads * hd), "w"),
              (p + "post_attention_layernorm.weight", (H,), "n"),
              (p + "feed_forward.router.weight", (E, H), "w"),
              (p + "feed_forward.experts.gate_up_proj", (E, H, 2 * I), "w"),
              (p + "feed_forward.experts.down_proj", (E, I, H), "w"),
              (p + "feed_forward.shared_expert.gate_proj.weight", (I, H), "w"),
              (p + "feed_forward.shared_expert.up_proj.weight", (I, H), "w"),
              (p + "feed_forward.shared_expert.down_proj.weight", (H, I), "w")]
    t += [("model.norm.weight", (H,), "n"), ("lm_head.weight", (VOCAB, H), "w")]
    return t, {"heads": heads, "kv": kv, "hd": hd}


def tensors_mxfp4(L, E, H, I):
    heads, kv, hd = H // 64, max(1, H // 360), 64
    t = [("model.embed_tokens.weight", (VOCAB, H), "w")]
    for i in range(L):
        p = "model.layers.%d." % i
        t += [(p + "input_layernorm.weight", (H,), "n"),
              (p + "self_attn.q_proj.weight", (heads * hd, H), "w"),
              (p + "self_attn.k_proj.weight", (kv * hd, H), "w"),
              (p + "self_attn.v_proj.weight", (kv * hd, H), "w"),
              (p + "self_attn.o_proj.weight", (H, heads * hd), "w"),
              (p + "self_attn.sinks", (heads,), "n"),
              (p + "post_attention_layernorm.weight", (H,), "n"),
              (p + "mlp.router.weight", (E, H), "w"), (p + "mlp.router.bias", (E,), "n")]
        for attr, rows, cols in (("gate_up_proj", 2 * I, H), ("down_proj", H, I)):
            q = p + "mlp.experts." + attr
            t += [(q + "_blocks", (E, rows, cols // 32, 16), "b"),
                  (q + "_scales", (E, rows, cols // 32), "s"), (q + "_bias", (E, rows), "n")]
    t += [("model.norm.weight", (H,), "n"), ("lm_head.weight", (VOCAB, H), "w")]
    return t, {"heads": heads, "kv": kv, "hd": hd}


def nbytes(shape, kind):
    return math.prod(shape) * (1 if kind in "bs" else 2)


def write_raw(f, rng, n, kind):
    """MXFP4 bytes: random nibbles, or E8M0 scales 118..127; streamed in 16 MB pieces."""
    done = 0
    while done < n:
        k = min(n - done, 1 << 24)
        if kind == "b":
            f.write(rng.integers(0, 256, size=k, dtype=np.uint8).tobytes())
        else:
            f.write(rng.integers(118, 128, size=k, dtype=np.uint8).tobytes())
        done += k
    return 0.0


def calibration(rng, tensors, amax):
    data = {}

    def put(module, quantizer, buf, value):
        data["%s/%s/%s" % (module.replace(".", "/"), quantizer, buf)] = \
            np.array(value, dtype=np.float32)

    for name, shape, kind in tensors:
        if name.endswith("_blocks"):
            mod, attr = name[:-len("_blocks")].rsplit(".", 1)
            put(mod, attr + "_input_quantizer", "_amax", 10.0 ** rng.uniform(-0.5, 1.5))
            continue
        if kind != "w" or "router" in name or "embed" in name or "lm_head" in name:
            continue
        if name.endswith(".weight"):
            mod = name[:-len(".weight")]
            put(mod, "input_quantizer", "_amax", 10.0 ** rng.uniform(-0.5, 1.5))
            put(mod, "weight_quantizer", "_amax", amax[name])
            continue
        mod, attr = name.rsplit(".", 1)
        put(mod, attr + "_input_quantizer", "_amax", 10.0 ** rng.uniform(-0.5, 1.5))
        if attr == "down_proj":
            put(mod, attr + "_weight_quantizer", "_amax", amax[name])
    for name, _, _ in tensors:
        if name.endswith("self_attn.k_proj.weight"):
            attn = name[:-len(".k_proj.weight")]
            put(attn, "k_bmm_quantizer", "_amax", 10.0 ** rng.uniform(0.0, 1.5))
            put(attn, "v_bmm_quantizer", "_amax", 10.0 ** rng.uniform(0.0, 1.5))
    return data


def header(entries):
    """gen_big.header_bytes with U8 tensors too: (header bytes, tensor order)."""
    items = sorted(entries, key=lambda t: (-gc.DTYPE_RANK[t[1]], t[0]))
    head, offset, order = {"__metadata__": {"format": "pt"}}, 0, []
    for name, dtype, shape in items:
        n = math.prod(shape) * (1 if dtype == "U8" else 2)
        head[name] = {"dtype": dtype, "shape": [int(x) for x in shape],
                      "data_offsets": [offset, offset + n]}
        order.append(name)
        offset += n
    raw = json.dumps(head, separators=(",", ":")).encode("utf-8")
    raw += b" " * ((8 - len(raw) % 8) % 8)
    return struct.pack("<Q", len(raw)) + raw, order


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--calib", required=True)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--inter", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mxfp4", action="store_true", help="gpt-oss's MXFP4 release")
    args = ap.parse_args(argv)
    t0 = time.time()
    E, H, I, L = args.experts, args.hidden, args.inter, args.layers
    tensors, d = (tensors_mxfp4 if args.mxfp4 else tensors_of)(L, E, H, I)
    sizes = [nbytes(s, kind) for _, s, kind in tensors]
    k, assign = gb.split_shards(sizes)
    cfg = {"architectures": ["Llama4ForCausalLM"], "model_type": "llama4_text",
           "bos_token_id": 1, "eos_token_id": 2, "head_dim": d["hd"], "hidden_size": H,
           "intermediate_size": I, "intermediate_size_mlp": 2 * I,
           "interleave_moe_layer_step": 1, "num_attention_heads": d["heads"],
           "num_experts_per_tok": 1, "num_hidden_layers": L, "num_key_value_heads": d["kv"],
           "num_local_experts": E, "torch_dtype": "bfloat16", "transformers_version": "4.51.0",
           "vocab_size": VOCAB}
    if args.mxfp4:
        cfg.update({"architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss",
                    "head_dim": 64, "intermediate_size": I, "num_experts_per_tok": 4,
                    "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": [
                        "model.layers.*.self_attn", "model.layers.*.mlp.router",
                        "model.embed_tokens", "lm_head"]}})
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    src = gb.Source(rng)
    by_name = {n: (s, kind) for n, s, kind in tensors}
    amax, weight_map = {}, {}
    for s in range(k):
        fname = "model.safetensors" if k == 1 else "model-%05d-of-%05d.safetensors" % (s + 1, k)
        entries = [(n, "U8" if kind in "bs" else "BF16", shp)
                   for (n, shp, kind), a in zip(tensors, assign) if a == s]
        hdr, order = header(entries)
        with open(os.path.join(args.out, fname), "wb") as f:
            f.write(hdr)
            for name in order:
                shp, kind = by_name[name]
                write = write_raw if kind in "bs" else lambda f, r, n, k: src.write(f, n, k)
                amax[name] = write(f, rng, math.prod(shp), kind)
        weight_map.update({n: fname for n, _, _ in entries})
    if k > 1:
        gc._json(os.path.join(args.out, "model.safetensors.index.json"),
                 {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map})
    gc._json(os.path.join(args.out, "config.json"), cfg)
    gc.write_calibration(args.calib, calibration(rng, tensors, amax))
    big = max(range(len(tensors)), key=lambda i: sizes[i])
    print("gen_big_fused: %s: %d tensors, %s in %d shards; largest %s %s: %s; %.1f s"
          % (args.out, len(tensors), gb.human(sum(sizes)), k, tensors[big][0],
             list(tensors[big][1]), gb.human(sizes[big]), time.time() - t0))
    print("largest_tensor_bytes=%d" % sizes[big])
    return 0


if __name__ == "__main__":
    sys.exit(main())
