#!/usr/bin/python3
"""Writes the seed corpora of the libFuzzer harnesses in tests/fuzz/.

  make_corpus.py OUT        (the committed seeds: make_corpus.py tests/fuzz/corpus)

OUT/st_header/<seed>: input of fuzz_st_header.c, the data section length as 8 bytes
little-endian, then the header JSON. OUT/model_dir/<seed>: input of fuzz_model_dir.c, the files
of a model directory joined by SEP (config.json, index, shard 1, shard 2, hf_quant_config.json;
an empty part leaves the file out). Valid and invalid seeds both: the valid ones let the fuzzer
reach the checks behind the parsers, the invalid ones each break one rule. Deterministic; the
output directories are replaced.
"""

import json
import os
import shutil
import struct
import sys

SEP = b"\n@@@\n"
DTYPE_SIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
              "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8}
# safetensors' writer order: dtype descending in this order, then name.
DTYPE_ORDER = list(DTYPE_SIZE)


def nbytes(dtype, shape):
    n = DTYPE_SIZE[dtype]
    for d in shape:
        n *= d
    return n


def tensor_bytes(dtype, shape, fill):
    """Deterministic contents: fill is a bytes pattern repeated (F32 scalars: a float)."""
    n = nbytes(dtype, shape)
    if isinstance(fill, float):
        return struct.pack("<f", fill) if dtype == "F32" else b"\x00" * n
    return (fill * (n // len(fill) + 1))[:n]


def header_json(tensors, metadata=True):
    """tensors: [(name, dtype, shape)] -> (compact JSON dict text, data length), in writer order."""
    order = sorted(tensors, key=lambda t: (-DTYPE_ORDER.index(t[1]), t[0]))
    hdr, pos = {}, 0
    if metadata:
        hdr["__metadata__"] = {"format": "pt"}
    for name, dtype, shape in order:
        n = nbytes(dtype, shape)
        hdr[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + n]}
        pos += n
    return hdr, pos, order


def shard(tensors, fills):
    """A whole .safetensors file: tensors [(name, dtype, shape)], fills {name: fill}."""
    hdr, _, order = header_json(tensors)
    text = json.dumps(hdr, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    data = b"".join(tensor_bytes(d, s, fills.get(n, b"\x11")) for n, d, s in order)
    return struct.pack("<Q", len(text)) + text + data


def st_seed(json_text, data_bytes):
    if isinstance(json_text, (dict, list)):
        json_text = json.dumps(json_text, separators=(",", ":"))
    if isinstance(json_text, str):
        json_text = json_text.encode()
    return struct.pack("<Q", data_bytes) + json_text


def st_header_seeds():
    s = {}
    s["empty_object"] = st_seed("{}", 0)
    s["metadata_only"] = st_seed({"__metadata__": {"format": "pt"}}, 0)
    hdr, n, _ = header_json([("w", "F32", [])])
    s["f32_scalar"] = st_seed(hdr, n)
    hdr, n, _ = header_json([("a.weight", "BF16", [4, 8]), ("a.bias", "F16", [4]),
                             ("b", "I64", [2, 1, 3]), ("flag", "BOOL", [3]),
                             ("empty", "F32", [0, 5])])
    s["mixed_dtypes"] = st_seed(hdr, n)
    s["padded"] = st_seed(json.dumps(hdr, separators=(",", ":")) + "      ", n)
    s["leading_space"] = st_seed("  " + json.dumps(hdr), n)
    hdr, n, _ = header_json([("m.weight", "U8", [4, 8]), ("m.weight_scale", "F8_E4M3", [4, 1]),
                             ("m.weight_scale_2", "F32", []), ("m.input_scale", "F32", [])])
    s["nvfp4_module"] = st_seed(hdr, n)
    hdr, n, _ = header_json([("t_" + dt.lower(), dt, [2]) for dt in DTYPE_SIZE])
    s["every_dtype"] = st_seed(hdr, n)
    hdr, n, _ = header_json([("tab\tquote\"slash\\\u00e9\U0001F600", "U8", [1])])
    s["escaped_name"] = st_seed(hdr, n)
    s["utf8_name"] = st_seed(json.dumps(hdr, ensure_ascii=False), n)
    s["eight_dims"] = st_seed({"t": {"dtype": "U8", "shape": [1] * 8, "data_offsets": [0, 1]}}, 1)
    s["order_differs"] = st_seed('{"b":{"data_offsets":[4,6],"shape":[1],"dtype":"F16"},'
                                 '"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', 6)
    # Empty tensors may share an offset with a non-empty one: the walk is in (begin, end) order.
    s["empty_tensors_shared_offset"] = st_seed(
        '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
        '"e":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},'
        '"f":{"dtype":"F32","shape":[0,3],"data_offsets":[1,1]},'
        '"b":{"dtype":"U8","shape":[],"data_offsets":[1,2]}}', 2)
    # Invalid, one rule each.
    s["bad_hole"] = st_seed('{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},'
                            '"b":{"dtype":"U8","shape":[2],"data_offsets":[3,5]}}', 5)
    s["bad_overlap"] = st_seed('{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},'
                               '"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}', 3)
    s["bad_trailing"] = st_seed({"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}, 7)
    s["bad_truncated"] = st_seed({"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}, 1)
    s["bad_dtype"] = st_seed({"a": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}, 1)
    s["bad_size"] = st_seed({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, 4)
    s["bad_duplicate"] = st_seed('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                                 '"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}', 2)
    s["bad_field_twice"] = st_seed('{"a":{"dtype":"U8","dtype":"U8","shape":[1],'
                                   '"data_offsets":[0,1]}}', 1)
    s["bad_missing_field"] = st_seed({"a": {"dtype": "U8", "shape": [1]}}, 1)
    s["bad_metadata"] = st_seed({"__metadata__": {"n": 1}}, 0)
    s["bad_offsets_reversed"] = st_seed({"a": {"dtype": "U8", "shape": [0],
                                               "data_offsets": [1, 0]}}, 0)
    s["bad_negative"] = st_seed({"a": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 0]}}, 0)
    s["bad_fraction"] = st_seed('{"a":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}}', 1)
    s["bad_nine_dims"] = st_seed({"a": {"dtype": "U8", "shape": [1] * 9,
                                        "data_offsets": [0, 1]}}, 1)
    s["bad_overflow"] = st_seed({"a": {"dtype": "F64", "shape": [2 ** 31, 2 ** 31, 8],
                                       "data_offsets": [0, 0]}}, 0)
    s["bad_bom"] = st_seed(b"\xef\xbb\xbf{}", 0)
    s["bad_utf8"] = st_seed(b'{"\xc3\x28":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', 1)
    s["bad_control"] = st_seed(b'{"a\x01":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', 1)
    s["bad_after_object"] = st_seed("{} {}", 0)
    s["bad_not_object"] = st_seed("[1,2]", 0)
    s["bad_json"] = st_seed('{"a":', 0)
    s["short"] = b"{}"
    return s


def model_seed(config, index=None, shard1=b"", shard2=b"", hq=None):
    def js(x):
        if x is None:
            return b""
        return x if isinstance(x, bytes) else json.dumps(x, separators=(",", ":")).encode()
    parts = [js(config), js(index), shard1, shard2, js(hq)]
    for p in parts:
        assert SEP not in p, "a part contains the separator"
    # Trailing empty parts can go.
    while len(parts) > 1 and parts[-1] == b"":
        parts.pop()
    return SEP.join(parts)


def quantized_module(prefix, rows, cols, ws2=0.5, inp=0.25, scale=b"\x38"):
    t = [(prefix + ".weight", "U8", [rows, cols // 2]),
         (prefix + ".weight_scale", "F8_E4M3", [rows, cols // 16]),
         (prefix + ".weight_scale_2", "F32", []),
         (prefix + ".input_scale", "F32", [])]
    f = {prefix + ".weight": b"\x12\x9a", prefix + ".weight_scale": scale,
         prefix + ".weight_scale_2": ws2, prefix + ".input_scale": inp}
    return t, f


def nvfp4_config(exclude, layers=2, kv=False, weight_only=False):
    algo = "W4A16_NVFP4" if weight_only else "NVFP4"
    scheme = {"dynamic": False, "num_bits": 4, "type": "float", "group_size": 16}
    qc = {"quant_method": "modelopt", "quant_algo": algo, "group_size": 16, "ignore": exclude,
          "config_groups": {"group_0": {"weights": scheme,
                                        "input_activations": None if weight_only else scheme,
                                        "targets": ["Linear"]}},
          "kv_cache_scheme": {"dynamic": False, "num_bits": 8, "type": "float"} if kv else None,
          "producer": {"name": "modelopt", "version": "0.29.0"}}
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "num_hidden_layers": layers, "hidden_size": 32, "quantization_config": qc}
    hq = {"producer": {"name": "modelopt", "version": "0.29.0"},
          "quantization": {"quant_algo": algo, "kv_cache_quant_algo": "FP8" if kv else None,
                           "group_size": 16, "exclude_modules": exclude}}
    return config, hq


def index_for(shards):
    """shards: [(file, [(name, dtype, shape)])] -> index JSON."""
    wm, total = {}, 0
    for file, tensors in shards:
        for name, dtype, shape in tensors:
            wm[name] = file
            total += nbytes(dtype, shape)
    return {"metadata": {"total_size": total}, "weight_map": wm}


S1, S2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"


def model_dir_seeds():
    s = {}
    # A source model: what nx_catalog_load accepts.
    src1 = [("model.embed_tokens.weight", "BF16", [8, 4]),
            ("model.layers.0.self_attn.q_proj.weight", "BF16", [4, 16]),
            ("model.layers.0.mlp.gate_proj.weight", "BF16", [4, 16])]
    src2 = [("model.layers.1.self_attn.q_proj.weight", "BF16", [4, 16]),
            ("model.norm.weight", "F32", [4]), ("lm_head.weight", "BF16", [8, 4])]
    cfg = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 4}
    s["source_two_shards"] = model_seed(cfg, index_for([(S1, src1), (S2, src2)]),
                                        shard(src1, {}), shard(src2, {}))
    s["source_single_file"] = model_seed(cfg, None, shard(src1 + src2, {}))
    vlm = {"model_type": "llava", "text_config": {"model_type": "llama", "num_hidden_layers": 1,
                                                  "num_local_experts": 2}}
    s["source_text_config"] = model_seed(vlm, None, shard(src1, {}))

    # An NVFP4 checkpoint that verify passes, and variations of it.
    q, qf = quantized_module("model.layers.0.self_attn.q_proj", 4, 32)
    k, kf = quantized_module("model.layers.0.self_attn.k_proj", 4, 32)
    ex = [("model.embed_tokens.weight", "BF16", [8, 4]), ("lm_head.weight", "BF16", [8, 4]),
          ("model.norm.weight", "BF16", [4])]
    config, hq = nvfp4_config(["lm_head", "model.embed_tokens"], layers=1)
    s["nvfp4_good"] = model_seed(config, index_for([(S1, q + k), (S2, ex)]),
                                 shard(q + k, {**qf, **kf}), shard(ex, {}), hq)
    s["nvfp4_single_no_hq"] = model_seed(config, None, shard(q + ex, qf))
    kvs = [("model.layers.0.self_attn.k_proj.k_scale", "F32", []),
           ("model.layers.0.self_attn.v_proj.v_scale", "F32", [])]
    kcfg, khq = nvfp4_config(["lm_head"], layers=1, kv=True)
    s["nvfp4_kv_fp8"] = model_seed(kcfg, index_for([(S1, q + kvs)]),
                                   shard(q + kvs, {**qf, kvs[0][0]: 1.0, kvs[1][0]: 0.0}), b"", khq)
    wcfg, whq = nvfp4_config(["lm_head"], weight_only=True)
    s["nvfp4_weight_only"] = model_seed(wcfg, index_for([(S1, q)]), shard(q, qf), b"", whq)
    # MoE: two experts of gate/up/down, one with another input_scale, one expert missing a proj.
    moe, moef = [], {}
    for e in range(3):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            if e == 2 and proj == "up_proj":
                continue
            t, f = quantized_module("model.layers.0.mlp.experts.%d.%s" % (e, proj), 2, 16,
                                    inp=0.25 if e else 0.5)
            moe += t
            moef.update(f)
    moe.append(("model.layers.0.mlp.gate.weight", "BF16", [3, 16]))
    mcfg, mhq = nvfp4_config(["lm_head", "model.layers.0.mlp.gate"], layers=1)
    mcfg["num_experts"] = 3
    s["nvfp4_moe"] = model_seed(mcfg, index_for([(S1, moe)]), shard(moe, moef), b"", mhq)
    # Fused siblings with different weight_scale_2, a NaN block scale, a bad layout.
    v, vf = quantized_module("model.layers.0.self_attn.v_proj", 4, 32, ws2=0.125, scale=b"\x7f")
    bad = [("model.layers.0.mlp.up_proj.weight", "U8", [4, 3]),
           ("model.layers.0.mlp.up_proj.weight_scale", "F16", [4]),
           ("model.layers.0.mlp.up_proj.weight_scale_2", "BF16", [1]),
           ("model.layers.0.mlp.gate_proj.weight", "BF16", [4, 6]),
           ("model.layers.0.mlp.gate_proj.input_scale", "F32", [])]
    s["nvfp4_violations"] = model_seed(config, index_for([(S1, q + k + v), (S2, bad)]),
                                       shard(q + k + v, {**qf, **kf, **vf}), shard(bad, {}), hq)

    # DeepSeek-V4: the release (FP8 and MXFP4 with E8M0 .scale) and its mixed FP8 + NVFP4 export.
    v4src = [("layers.0.attn.wq_a.weight", "F8_E4M3", [4, 32]),
             ("layers.0.attn.wq_a.scale", "F8_E8M0", [1, 1]),
             ("layers.0.ffn.experts.0.w1.weight", "I8", [2, 16]),
             ("layers.0.ffn.experts.0.w1.scale", "F8_E8M0", [2, 1]),
             ("embed.weight", "BF16", [8, 4])]
    v4qc = {"quant_method": "fp8", "fmt": "e4m3", "scale_fmt": "ue8m0",
            "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
    v4cfg = {"model_type": "deepseek_v4", "num_hidden_layers": 1, "n_routed_experts": 1,
             "expert_dtype": "fp4", "quantization_config": v4qc}
    s["dsv4_source"] = model_seed(v4cfg, index_for([(S1, v4src[:2]), (S2, v4src[2:])]),
                                  shard(v4src[:2], {}), shard(v4src[2:], {}))
    w1, w1f = quantized_module("layers.0.ffn.experts.0.w1", 2, 32)
    w3, w3f = quantized_module("layers.0.ffn.experts.0.w3", 2, 32)
    layers = {"layers.0.ffn.experts": {"quant_algo": "NVFP4", "group_size": 16}}
    excl = ["*.attn.*", "*.ffn.shared_experts.*", "head", "mtp.*"]
    out_qc = dict(v4qc, moe_quant_algo="NVFP4", quant_algo="MIXED_PRECISION", group_size=16,
                  kv_cache_quant_algo=None, quantized_layers=layers, ignore=excl,
                  producer={"name": "modelopt", "version": "dsv4-nvfp4-experts"})
    v4hq = {"producer": out_qc["producer"], "quantization": {
        "quant_algo": "MIXED_PRECISION", "kv_cache_quant_algo": None, "group_size": 16,
        "quantized_layers": layers, "exclude_modules": excl}}
    v4out = v4src[:2] + [v4src[4]] + w1 + w3
    s["dsv4_mixed_export"] = model_seed(dict(v4cfg, quantization_config=out_qc),
                                        index_for([(S1, v4out)]),
                                        shard(v4out, {**w1f, **w3f}), b"", v4hq)

    # Invalid inputs, one per rule of the loaders.
    good_index = index_for([(S1, src1), (S2, src2)])
    s1, s2 = shard(src1, {}), shard(src2, {})
    s["bad_config_json"] = model_seed(b'{"num_hidden_layers": 2', good_index, s1, s2)
    s["bad_config_not_object"] = model_seed(b"[2]", good_index, s1, s2)
    s["bad_config_no_layers"] = model_seed({"model_type": "llama"}, good_index, s1, s2)
    s["bad_config_layers_fraction"] = model_seed(b'{"num_hidden_layers": 1.5}', good_index, s1,
                                                 s2)
    s["bad_index_no_map"] = model_seed(cfg, {"metadata": {}}, s1, s2)
    s["bad_index_path"] = model_seed(cfg, {"weight_map": {"a": "../x.safetensors"}}, s1, s2)
    s["bad_index_non_string"] = model_seed(cfg, {"weight_map": {"a": 1}}, s1, s2)
    s["bad_index_missing_shard"] = model_seed(cfg, index_for([(S1, src1), ("gone.safetensors",
                                                                           src2)]), s1, s2)
    s["bad_index_unlisted"] = model_seed(cfg, index_for([(S1, src1)]), s1, s2)
    s["bad_index_wrong_shard"] = model_seed(cfg, index_for([(S2, src1), (S1, src2)]), s1, s2)
    s["bad_index_duplicate"] = model_seed(cfg, b'{"weight_map": {"a": "' + S1.encode() +
                                          b'", "a": "' + S1.encode() + b'"}}', s1)
    both = src1 + [("model.extra.weight", "F32", [2])]
    s["bad_shard_in_both"] = model_seed(cfg, index_for([(S2, both), (S1, src1)]), s1,
                                        shard(both, {}))
    s["bad_shard_truncated"] = model_seed(cfg, good_index, s1[:-3], s2)
    s["bad_shard_short"] = model_seed(cfg, good_index, b"\x10\x00", s2)
    s["bad_hq_json"] = model_seed(config, index_for([(S1, q)]), shard(q, qf), b"", b"{oops")
    s["bad_no_shards"] = model_seed(cfg)
    s.update(fused_seeds())
    return s


def fused_seeds():
    """Fused experts (src/fused.c, src/verify_fused.c): gpt-oss's MXFP4 source, Qwen3.5's
    [E, out, in] source, and a Llama-4 export in the fused [E, in/2, out] layout."""
    s = {}
    x = "model.layers.0.mlp.experts."
    mx = [(x + "gate_up_proj_blocks", "U8", [2, 4, 1, 16]), (x + "gate_up_proj_scales", "U8",
                                                               [2, 4, 1]),
          (x + "gate_up_proj_bias", "BF16", [2, 4]),
          (x + "down_proj_blocks", "U8", [2, 32, 1, 16]),
          (x + "down_proj_scales", "U8", [2, 32, 1]), (x + "down_proj_bias", "BF16", [2, 32]),
          ("model.layers.0.mlp.router.weight", "BF16", [2, 32])]
    cfg = {"model_type": "gpt_oss", "num_hidden_layers": 1, "hidden_size": 32,
           "quantization_config": {"quant_method": "mxfp4"}}
    s["fused_gptoss_mxfp4"] = model_seed(cfg, None, shard(mx, {x + "gate_up_proj_scales": b"\x7f",
                                                          x + "down_proj_scales": b"\x7e"}))
    qw = [("model.language_model.layers.0.mlp.experts.gate_up_proj", "BF16", [2, 8, 16]),
          ("model.language_model.layers.0.mlp.experts.down_proj", "BF16", [2, 16, 4])]
    cfg = {"model_type": "qwen3_5_moe", "text_config": {"model_type": "qwen3_5_moe_text",
                                                        "num_hidden_layers": 1}}
    s["fused_qwen35_split"] = model_seed(cfg, None, shard(qw, {}))
    y = "model.layers.0.feed_forward.experts."
    l4 = [(y + "gate_up_proj", "U8", [2, 16, 64]), (y + "gate_up_proj_weight_scale", "F8_E4M3",
                                                    [2, 2, 64]),
          (y + "gate_up_proj_weight_scale_2", "F32", []), (y + "gate_up_proj_input_scale", "F32",
                                                            []),
          (y + "down_proj", "U8", [2, 16, 32]), (y + "down_proj_weight_scale", "F8_E4M3",
                                                 [2, 2, 32]),
          (y + "down_proj_weight_scale_2", "F32", []), (y + "down_proj_input_scale", "F32", []),
          ("model.layers.0.feed_forward.router.weight", "BF16", [2, 32])]
    fills = {y + "gate_up_proj_weight_scale_2": 0.5, y + "gate_up_proj_input_scale": 0.25,
             y + "down_proj_weight_scale_2": 0.5, y + "down_proj_input_scale": 0.25}
    config, hq = nvfp4_config(["model.layers.0.feed_forward.router"], layers=1)
    config["model_type"] = "llama4_text"
    s["fused_llama4_export"] = model_seed(config, None, shard(l4, fills), b"", hq)
    return s


def write(out, name, seeds):
    d = os.path.join(out, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    for seed, data in sorted(seeds.items()):
        with open(os.path.join(d, seed), "wb") as f:
            f.write(data)
    return sum(len(x) for x in seeds.values())


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    total = write(out, "st_header", st_header_seeds())
    total += write(out, "model_dir", model_dir_seeds())
    print("make_corpus: %d bytes of seeds in %s" % (total, out))


if __name__ == "__main__":
    main()
