#!/usr/bin/python3
"""Generate a sparse checkpoint with exactly the shape of Kimi-K2 (DeepSeek-V3 architecture).

  gen_kimi_sparse.py --out DIR [--layers N] [--shards K] [--int4]

DIR gets Kimi-K2's config.json (model_type kimi_k2, hidden 7168, 61 layers, first layer dense,
384 routed experts + 1 shared, MLA attention with q/kv LoRA, vocab 163840, no MTP layer), a
real model.safetensors.index.json and K shards (default 64, fewer with --layers) holding every
BF16 tensor of the real model by name and shape (the router's e_score_correction_bias in F32):
about 2.05 TB of weights. Each shard has a real safetensors header (as the Rust library writes
it: tensors sorted by dtype, then name; header padded to 8 bytes); its data section is a hole
(the file is truncated to its full size), so the whole checkpoint takes a few MB of disk and is
written in seconds. Only header readers (catalog, classify, plan) can use it: data reads as
zeros. --layers N (1..61) gives the same shapes with N layers (layer 0 dense, the rest MoE).

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
DTYPE_ORDER = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16",
               "I32", "U32", "F32", "F64", "I64", "U64"]
DTYPE_RANK = {d: i for i, d in enumerate(DTYPE_ORDER)}
DTYPE_SIZE = {"BF16": 2, "F32": 4, "I32": 4, "I64": 8}

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
        for name, data in (values or {}).items():
            f.seek(8 + len(hdr) + header[name]["data_offsets"][0])
            f.write(data)
    os.truncate(path, 8 + len(hdr) + offset)
    return offset


def _json(path, obj):
    with open(path, "w") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="model directory to write")
    ap.add_argument("--layers", type=int, default=61, help="hidden layers, 1..61 (61)")
    ap.add_argument("--shards", type=int, default=0,
                    help="number of shards (default 64, or 62 with --int4; scaled down with "
                         "--layers)")
    ap.add_argument("--int4", action="store_true",
                    help="Kimi-K2-Thinking: routed experts INT4 pack-quantized")
    args = ap.parse_args(argv)
    if not 1 <= args.layers <= 61:
        ap.error("--layers must be 1..61")
    t0 = time.time()
    cfg = dict(KIMI_K2_CONFIG, num_hidden_layers=args.layers)
    if args.int4:
        cfg["quantization_config"] = INT4_QUANTIZATION_CONFIG
    tensors = kimi_tensors(cfg, args.int4)
    by_name = {n: shape for n, _, shape in tensors}
    sizes = [nbytes(d, s) for _, d, s in tensors]
    total = sum(sizes)
    want = args.shards or max(1, round((62 if args.int4 else 64) * args.layers / 61))
    k, assign = split_shards(sizes, want)
    os.makedirs(args.out, exist_ok=True)
    weight_map = {}
    for s in range(k):
        fname = ("model-%05d-of-%06d.safetensors" if args.int4
                 else "model-%05d-of-%05d.safetensors") % (s + 1, k)
        entries = [t for t, a in zip(tensors, assign) if a == s]
        values = {n: weight_shape_value(n, by_name) for n, _, _ in entries
                  if n.endswith(".weight_shape")}
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
