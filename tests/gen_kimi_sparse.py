#!/usr/bin/python3
"""Generate a sparse checkpoint with exactly the shape of Kimi-K2 (DeepSeek-V3 architecture).

  gen_kimi_sparse.py --out DIR [--layers N] [--shards K] [--nvfp4 | --int4]

DIR gets Kimi-K2's config.json (model_type kimi_k2, hidden 7168, 61 layers, first layer dense,
384 routed experts + 1 shared, MLA attention with q/kv LoRA, vocab 163840, no MTP layer), a
real model.safetensors.index.json and K shards (default 64, fewer with --layers) holding every
BF16 tensor of the real model by name and shape (the router's e_score_correction_bias in F32):
about 2.05 TB of weights. Each shard has a real safetensors header (as the Rust library writes
it: tensors sorted by dtype, then name; header padded to 8 bytes); its data section is a hole
(the file is truncated to its full size), so the whole checkpoint takes a few MB of disk and is
written in seconds. Only header readers (catalog, classify, plan) can use it: data reads as
zeros. --layers N (1..61) gives the same shapes with N layers (layer 0 dense, the rest MoE).

--nvfp4 writes instead what `nvfp4x export` makes of that checkpoint with calibration (ModelOpt's
unified layout: every linear but the routers, embeddings and lm_head quantized, FP8 KV scales,
10 GB shards, config.json quantization_config and hf_quant_config.json): the input for timing
export's pre-commit check at Kimi-K2 scale (docs/performance.md). The per-tensor scales hold
real values (one per layer, so fused groups and MoE layers agree); codes and block scales are
holes, read as zeros.

--int4 gives Kimi-K2-Thinking's release instead: every routed expert projection stored as
compressed-tensors pack-quantized INT4 (weight_packed I32 [out, in/8], weight_scale BF16
[out, in/32], weight_shape I64 [2]), config.json with its quantization_config (ignore list
included), 62 shards (default) spelled model-000NN-of-000062 as released: about 594 GB and
208,215 tensors. The weight_shape values are written for real (the exporter reads them while
cataloguing); every other data byte is a hole.
"""

import argparse
import json
import math
import os
import struct
import sys
import time

# safetensors' Dtype enum order; the Rust writer sorts tensors by descending dtype, then name.
DTYPE_ORDER = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "I16", "U16", "F16",
               "BF16", "I32", "U32", "F32", "F64", "I64", "U64"]
DTYPE_RANK = {d: i for i, d in enumerate(DTYPE_ORDER)}
DTYPE_SIZE = {"U8": 1, "F8_E4M3": 1, "BF16": 2, "F32": 4, "I32": 4, "I64": 8}
OUT_SHARD_BYTES = 10 * 10**9  # the export's default --max-shard-size

# Kimi-K2-Thinking's quantization_config (FAMILIES.md 3.1).
INT4_QUANTIZATION_CONFIG = {
    "config_groups": {"group_0": {
        "input_activations": None, "output_activations": None, "targets": ["Linear"],
        "weights": {"actorder": None, "block_structure": None, "dynamic": False,
                    "group_size": 32, "num_bits": 4, "observer": "minmax",
                    "observer_kwargs": {}, "strategy": "group", "symmetric": True,
                    "type": "int"}}},
    "format": "pack-quantized",
    "ignore": ["lm_head", "re:.*self_attn.*", "re:.*shared_experts.*",
               "re:.*mlp\\.(gate|up|gate_up|down)_proj.*"],
    "kv_cache_scheme": None,
    "quant_method": "compressed-tensors",
    "quantization_status": "compressed",
}

# Kimi-K2-Instruct's config.json, less its FP8 quantization_config (this checkpoint is BF16).
KIMI_K2_CONFIG = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "auto_map": {
        "AutoConfig": "configuration_deepseek.DeepseekV3Config",
        "AutoModel": "modeling_deepseek.DeepseekV3Model",
        "AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM",
    },
    "aux_loss_alpha": 0.001,
    "bos_token_id": 163584,
    "eos_token_id": 163585,
    "ep_size": 1,
    "first_k_dense_replace": 1,
    "hidden_act": "silu",
    "hidden_size": 7168,
    "initializer_range": 0.02,
    "intermediate_size": 18432,
    "kv_lora_rank": 512,
    "max_position_embeddings": 131072,
    "model_type": "kimi_k2",
    "moe_intermediate_size": 2048,
    "moe_layer_freq": 1,
    "n_group": 1,
    "n_routed_experts": 384,
    "n_shared_experts": 1,
    "norm_topk_prob": True,
    "num_attention_heads": 64,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 61,
    "num_key_value_heads": 64,
    "num_nextn_predict_layers": 0,
    "pretraining_tp": 1,
    "q_lora_rank": 1536,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "rms_norm_eps": 1e-06,
    "rope_scaling": {
        "beta_fast": 1.0, "beta_slow": 1.0, "factor": 32.0, "mscale": 1.0,
        "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096, "type": "yarn",
    },
    "rope_theta": 50000.0,
    "routed_scaling_factor": 2.827,
    "scoring_func": "sigmoid",
    "seq_aux": True,
    "tie_word_embeddings": False,
    "topk_group": 1,
    "topk_method": "noaux_tc",
    "torch_dtype": "bfloat16",
    "transformers_version": "4.48.3",
    "use_cache": True,
    "v_head_dim": 128,
    "vocab_size": 163840,
}


def expert_tensors(q, rows, cols, int4):
    """One routed expert projection: BF16, or INT4 pack-quantized (group 32)."""
    if not int4:
        return [(q + ".weight", "BF16", (rows, cols))]
    return [(q + ".weight_packed", "I32", (rows, cols // 8)),
            (q + ".weight_scale", "BF16", (rows, cols // 32)),
            (q + ".weight_shape", "I64", (2,))]


def kimi_tensors(cfg, int4=False):
    """[(name, dtype, shape)] in the real model's state-dict order."""
    H, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    heads, qr, kvr = cfg["num_attention_heads"], cfg["q_lora_rank"], cfg["kv_lora_rank"]
    nope, rope, vd = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    E, mi, inter = cfg["n_routed_experts"], cfg["moe_intermediate_size"], cfg["intermediate_size"]
    shared = cfg["n_shared_experts"] * mi
    V = cfg["vocab_size"]
    bf = "BF16"
    t = [("model.embed_tokens.weight", bf, (V, H))]
    for i in range(L):
        p = "model.layers.%d." % i
        t += [(p + "input_layernorm.weight", bf, (H,)),
              (p + "self_attn.q_a_proj.weight", bf, (qr, H)),
              (p + "self_attn.q_a_layernorm.weight", bf, (qr,)),
              (p + "self_attn.q_b_proj.weight", bf, (heads * (nope + rope), qr)),
              (p + "self_attn.kv_a_proj_with_mqa.weight", bf, (kvr + rope, H)),
              (p + "self_attn.kv_a_layernorm.weight", bf, (kvr,)),
              (p + "self_attn.kv_b_proj.weight", bf, (heads * (nope + vd), kvr)),
              (p + "self_attn.o_proj.weight", bf, (H, heads * vd)),
              (p + "post_attention_layernorm.weight", bf, (H,))]
        if i < cfg["first_k_dense_replace"]:
            t += [(p + "mlp.gate_proj.weight", bf, (inter, H)),
                  (p + "mlp.up_proj.weight", bf, (inter, H)),
                  (p + "mlp.down_proj.weight", bf, (H, inter))]
            continue
        t += [(p + "mlp.gate.weight", bf, (E, H)),
              (p + "mlp.gate.e_score_correction_bias", "F32", (E,))]
        for e in range(E):
            q = p + "mlp.experts.%d." % e
            t += expert_tensors(q + "gate_proj", mi, H, int4)
            t += expert_tensors(q + "up_proj", mi, H, int4)
            t += expert_tensors(q + "down_proj", H, mi, int4)
        t += [(p + "mlp.shared_experts.gate_proj.weight", bf, (shared, H)),
              (p + "mlp.shared_experts.up_proj.weight", bf, (shared, H)),
              (p + "mlp.shared_experts.down_proj.weight", bf, (H, shared))]
    t += [("model.norm.weight", bf, (H,)), ("lm_head.weight", bf, (V, H))]
    return t


def nbytes(dtype, shape):
    return DTYPE_SIZE[dtype] * math.prod(shape)


def split_shards(sizes, k):
    """Contiguous runs of the state dict, balanced by bytes, none empty -> shard per tensor."""
    total = sum(sizes)
    k = max(1, min(k, len(sizes)))
    assign, done = [], 0
    for i, n in enumerate(sizes):
        s = min(k - 1, (done + n // 2) * k // total)
        s = max(s, k - (len(sizes) - i))   # leave one tensor for every later shard
        if assign:
            s = min(max(s, assign[-1]), assign[-1] + 1)
        assign.append(s)
        done += n
    return k, assign


def weight_shape_value(name, tensors_by_name):
    """The [out, in] an INT4 X.weight_shape holds: X.weight_packed's rows and 8 x words."""
    rows, words = tensors_by_name[name[:-len("_shape")] + "_packed"]
    return struct.pack("<2q", rows, 8 * words)


def write_sparse_shard(path, entries, values=None):
    """Header for real, data section as a hole but for values {name: bytes}; returns the data
    bytes."""
    items = sorted(entries, key=lambda t: (-DTYPE_RANK[t[1]], t[0]))
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, dtype, shape in items:
        n = nbytes(dtype, shape)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    hdr = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    hdr += b" " * ((8 - len(hdr) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hdr)) + hdr)
        for name, _, _ in items:  # values may hold other shards' tensors too
            if values and name in values:
                f.seek(8 + len(hdr) + header[name]["data_offsets"][0])
                f.write(values[name])
    os.truncate(path, 8 + len(hdr) + offset)
    return offset


def split_by_size(sizes, limit):
    """Shards filled in order up to limit bytes, as the export cuts them -> (k, shard per
    tensor)."""
    assign, shard, used = [], 0, 0
    for n in sizes:
        if used and used + n > limit:
            shard, used = shard + 1, 0
        assign.append(shard)
        used += n
    return shard + 1, assign


def is_quantized(name, shape):
    """The export's default policy on this architecture."""
    return (len(shape) == 2 and name.endswith(".weight") and "embed_tokens" not in name
            and name != "lm_head.weight" and not name.endswith(".mlp.gate.weight"))


def layer_of(name):
    parts = name.split(".")
    return int(parts[2]) if len(parts) > 2 and parts[1] == "layers" else 0


def f32(x):
    return struct.pack("<f", x)


def nvfp4_tensors(cfg):
    """The export's tensors [(name, dtype, shape)] and scalar values {name: bytes}."""
    tensors, values = [], {}
    for name, dtype, shape in kimi_tensors(cfg, False):
        if not is_quantized(name, shape):
            tensors.append((name, dtype, shape))
            continue
        p, layer = name[:-len(".weight")], layer_of(name)
        rows, cols = shape
        tensors += [(name, "U8", (rows, cols // 2)),
                    (p + ".weight_scale", "F8_E4M3", (rows, cols // 16)),
                    (p + ".weight_scale_2", "F32", ()), (p + ".input_scale", "F32", ())]
        values[p + ".weight_scale_2"] = f32((1.0 + layer / 64.0) / 2688.0)
        values[p + ".input_scale"] = f32((2.0 + layer / 64.0) / 2688.0)
        if name.endswith(".self_attn.o_proj.weight"):
            attn = p[:-len("o_proj")]
            for kv in ("k_proj.k_scale", "v_proj.v_scale"):
                tensors.append((attn + kv, "F32", ()))
                values[attn + kv] = f32(0.0125)
    return tensors, values


def nvfp4_configs(cfg, tensors):
    """config.json with quantization_config, and hf_quant_config.json, as the export writes
    them."""
    excluded = sorted(n[:-len(".weight")] for n, d, s in tensors
                      if n.endswith(".weight") and len(s) == 2 and d == "BF16")
    producer = {"name": "modelopt", "version": "gen_kimi_sparse"}
    fp4 = {"dynamic": False, "num_bits": 4, "type": "float", "group_size": 16}
    qc = {"quant_method": "modelopt", "quant_algo": "NVFP4", "kv_cache_quant_algo": "FP8",
          "group_size": 16, "ignore": excluded, "producer": producer,
          "config_groups": {"group_0": {"weights": fp4, "input_activations": fp4,
                                        "targets": ["Linear"]}},
          "kv_cache_scheme": {"dynamic": False, "num_bits": 8, "type": "float"}}
    hq = {"producer": producer,
          "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": "FP8", "group_size": 16,
                           "exclude_modules": excluded}}
    return dict(cfg, quantization_config=qc), hq


def _json(path, obj):
    with open(path, "w") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="model directory to write")
    ap.add_argument("--layers", type=int, default=61, help="hidden layers, 1..61 (61)")
    ap.add_argument("--shards", type=int, default=0,
                    help="number of source shards (default 64, or 62 with --int4; scaled down "
                         "with --layers)")
    ap.add_argument("--nvfp4", action="store_true",
                    help="write the NVFP4 export of the checkpoint instead")
    ap.add_argument("--int4", action="store_true",
                    help="Kimi-K2-Thinking: routed experts INT4 pack-quantized")
    args = ap.parse_args(argv)
    if not 1 <= args.layers <= 61:
        ap.error("--layers must be 1..61")
    if args.nvfp4 and args.int4:
        ap.error("--nvfp4 and --int4 exclude each other")
    t0 = time.time()
    cfg = dict(KIMI_K2_CONFIG, num_hidden_layers=args.layers)
    if args.int4:
        cfg["quantization_config"] = INT4_QUANTIZATION_CONFIG
    tensors, values = nvfp4_tensors(cfg) if args.nvfp4 else (kimi_tensors(cfg, args.int4), {})
    by_name = {n: shape for n, _, shape in tensors}
    sizes = [nbytes(d, s) for _, d, s in tensors]
    total = sum(sizes)
    os.makedirs(args.out, exist_ok=True)
    if args.nvfp4:
        k, assign = split_by_size(sizes, OUT_SHARD_BYTES)
        cfg, hq = nvfp4_configs(cfg, tensors)
        _json(os.path.join(args.out, "hf_quant_config.json"), hq)
    else:
        k, assign = split_shards(sizes, args.shards or
                                 max(1, round((62 if args.int4 else 64) * args.layers / 61)))
    weight_map = {}
    for s in range(k):
        fname = ("model-%05d-of-%06d.safetensors" if args.int4
                 else "model-%05d-of-%05d.safetensors") % (s + 1, k)
        entries = [t for t, a in zip(tensors, assign) if a == s]
        values.update({n: weight_shape_value(n, by_name) for n, _, _ in entries
                       if n.endswith(".weight_shape")})
        write_sparse_shard(os.path.join(args.out, fname), entries, values)
        weight_map.update({n: fname for n, _, _ in entries})
    _json(os.path.join(args.out, "model.safetensors.index.json"),
          {"metadata": {"total_size": total}, "weight_map": weight_map})
    _json(os.path.join(args.out, "config.json"), cfg)
    _json(os.path.join(args.out, "generation_config.json"),
          {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"],
           "max_length": 131072, "transformers_version": cfg["transformers_version"]})
    with open(os.path.join(args.out, "configuration_deepseek.py"), "w") as f:
        f.write('"""Stand-in for Kimi-K2\'s remote-code configuration (test fixture)."""\n'
                "from transformers.configuration_utils import PretrainedConfig\n\n\n"
                "class DeepseekV3Config(PretrainedConfig):\n"
                '    model_type = "kimi_k2"\n\n'
                "    def __init__(self, **kwargs):\n"
                "        super().__init__(**kwargs)\n")
    print("gen_kimi_sparse: %s: %d layers, %d tensors, %d bytes (%.3f TB) in %d sparse shards; "
          "%.1f s" % (args.out, args.layers, len(tensors), total, total / 1e12, k,
                      time.time() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
