#!/usr/bin/python3
"""Derive sources in encodings nvfp4x does not read from a good generated model, one per case.

  make_unread_encodings.py --good-model DIR --good-calib F --out DIR

Each case is OUT/<case>/model, a copy of the good model in which one linear (LINEAR below) is
stored the way another quantization tool stores it, by names and dtypes alone (the bytes are
placeholders: the export must refuse before reading them), or whose config.json declares a
quantization method or format nvfp4x does not decode; and Kimi-K2-Thinking's INT4
pack-quantized layout on that linear, broken in each way README "Source encodings" lists
(the weight_shape values are real: the detection reads them). OUT/cases.tsv has make_bad_inputs.py's
format: case, model dir, calib path, extra args, the substring the one error line must hold.
"""

import argparse
import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_bad_inputs import Cases, read_header, write_with_header  # noqa: E402

LINEAR = "model.layers.1.self_attn.o_proj"
DTYPE_SIZE = {"U8": 1, "I8": 1, "F8_E4M3": 1, "BF16": 2, "F16": 2, "I32": 4, "F32": 4,
              "I64": 8}


def edit_shard(model, weight_map, anchor, drop=(), add=None):
    """Rewrites the shard holding `anchor`: tensors in `drop` removed, `add` {name: (dtype,
    shape[, bytes])} added (zero bytes unless given); the index follows."""
    add = add or {}
    shard = weight_map[anchor]
    path = os.path.join(model, shard)
    header, data = read_header(path)
    meta = header.pop("__metadata__", None)
    tensors = {}
    for name, info in header.items():
        if name in drop:
            continue
        b, e = info["data_offsets"]
        tensors[name] = (info["dtype"], info["shape"], data[b:e])
    for name, spec in add.items():
        dtype, shape = spec[0], spec[1]
        n = DTYPE_SIZE[dtype]
        for d in shape:
            n *= d
        tensors[name] = (dtype, list(shape), spec[2] if len(spec) > 2 else bytes(n))
    new, blob, off = {}, bytearray(), 0
    if meta is not None:
        new["__metadata__"] = meta
    for name in sorted(tensors):
        dtype, shape, raw = tensors[name]
        new[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        blob += raw
        off += len(raw)
    write_with_header(path, new, bytes(blob))
    index_path = os.path.join(model, "model.safetensors.index.json")
    index = json.load(open(index_path))
    for name in drop:
        index["weight_map"].pop(name, None)
    for name in add:
        index["weight_map"][name] = shard
    index.setdefault("metadata", {})["total_size"] = \
        index["metadata"].get("total_size", 0) + len(blob) - sum(
            i["data_offsets"][1] - i["data_offsets"][0] for k, i in header.items())
    json.dump(index, open(index_path, "w"), indent=2)


def set_quant_config(model, qc):
    path = os.path.join(model, "config.json")
    cfg = json.load(open(path))
    cfg["quantization_config"] = qc
    json.dump(cfg, open(path, "w"), indent=2)


def ct_config(fmt, strategy="tensor", num_bits=8, typ="float"):
    return {"quant_method": "compressed-tensors", "format": fmt,
            "quantization_status": "compressed", "ignore": ["lm_head"],
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
                "num_bits": num_bits, "type": typ, "strategy": strategy, "symmetric": True,
                "dynamic": False, "group_size": None if strategy != "group" else 32}}}}


def int4_config(**weights):
    """Kimi-K2-Thinking's quantization_config, with weights fields overridden (None deletes)."""
    w = {"actorder": None, "block_structure": None, "dynamic": False, "group_size": 32,
         "num_bits": 4, "observer": "minmax", "observer_kwargs": {}, "strategy": "group",
         "symmetric": True, "type": "int"}
    w.update(weights)
    return {"quant_method": "compressed-tensors", "format": "pack-quantized",
            "quantization_status": "compressed", "kv_cache_scheme": None,
            "ignore": ["lm_head", "re:.*self_attn\\.(q_a|kv_a|kv_b|q_b)_proj.*",
                       "re:.*shared_experts.*", "re:.*mlp\\.(gate|up|gate_up|down)_proj.*"],
            "config_groups": {"group_0": {"targets": ["Linear"], "input_activations": None,
                                          "output_activations": None, "weights": w}}}


def int4_tensors(out, inp, packed_cols=None, scale_cols=None, shape=None):
    """X.weight_packed, X.weight_scale, X.weight_shape for LINEAR, INT4 group 32 (bytes are
    zeros but the shape's values)."""
    vals = shape or [out, inp]
    return {LINEAR + ".weight_packed": ("I32", [out, packed_cols or inp // 8]),
            LINEAR + ".weight_scale": ("BF16", [out, scale_cols or inp // 32]),
            LINEAR + ".weight_shape": ("I64", [2], struct.pack("<2q", *vals))}


def int4_cases(c, wm, w, out, inp):
    """Kimi-K2-Thinking's INT4 layout on one linear (o_proj of layer 1), broken one way each
    (README "Source encodings"): the one error line names the tensor or field."""
    def case(name, expect, qc, drop=(w,), **tensors):
        model, _ = c.new(name, expect)
        edit_shard(model, wm, w, drop=drop, add=int4_tensors(out, inp, **tensors))
        set_quant_config(model, qc)
        return model
    base = int4_config()
    case("int4_weight_shape_wrong", LINEAR + ".weight_shape", base, shape=[out + 1, inp])
    case("int4_weight_shape_not_in", LINEAR + ".weight_packed", base, shape=[out, inp + 8])
    case("int4_packed_width", LINEAR + ".weight_packed", base, packed_cols=inp // 8 + 1)
    case("int4_scale_count", LINEAR + ".weight_scale", base, scale_cols=inp // 16)
    model = case("int4_missing_scale", LINEAR + ".weight_packed", base)
    edit_shard(model, wm, w, drop=[LINEAR + ".weight_scale"])
    model = case("int4_missing_weight_shape", LINEAR + ".weight_packed", base)
    edit_shard(model, wm, w, drop=[LINEAR + ".weight_shape"])
    model = case("int4_zero_point", LINEAR + ".weight_zero_point", base)
    edit_shard(model, wm, w, add={LINEAR + ".weight_zero_point": ("I32", [out // 8, 3])})
    model = case("int4_g_idx", LINEAR + ".weight_g_idx", base)
    edit_shard(model, wm, w, add={LINEAR + ".weight_g_idx": ("I32", [inp])})
    case("int4_asymmetric", "weights.symmetric", int4_config(symmetric=False))
    case("int4_actorder", "weights.actorder", int4_config(actorder="group"))
    case("int4_8_bits", "weights.num_bits", int4_config(num_bits=8))
    case("int4_type_float", "weights.type", int4_config(type="float"))
    case("int4_strategy_tensor", "weights.strategy", int4_config(strategy="tensor",
                                                                  group_size=None))
    case("int4_dynamic", "weights.dynamic", int4_config(dynamic=True))
    qc = int4_config()
    qc["config_groups"]["group_0"]["input_activations"] = {"num_bits": 8, "type": "float"}
    case("int4_input_activations", "input_activations", qc)
    qc = int4_config()
    qc["ignore"].append("re:.*o_proj")
    case("int4_ignored_but_packed", "re:.*o_proj", qc)
    qc = int4_config()
    qc["ignore"].append("re:(?i)O_PROJ")
    case("int4_unreadable_ignore_regex", "re:(?i)O_PROJ", qc)
    model, _ = c.new("int4_declared_none_stored", "no tensor is stored so")
    set_quant_config(model, int4_config())
    model, _ = c.new("int4_without_config", LINEAR + ".weight_packed")
    edit_shard(model, wm, w, drop=[w], add=int4_tensors(out, inp))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--good-model", required=True)
    ap.add_argument("--good-calib", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    c = Cases(args.good_model, args.good_calib, args.out)
    wm = c.weight_map
    w = LINEAR + ".weight"
    hdr, _ = read_header(os.path.join(args.good_model, wm[w]))
    out, inp = hdr[w]["shape"]

    # Tensor names of other tools, no quantization_config: the names alone must be refused.
    model, _ = c.new("gptq_names", LINEAR + ".g_idx")
    edit_shard(model, wm, w, drop=[w], add={
        LINEAR + ".qweight": ("I32", [inp // 8, out]), LINEAR + ".qzeros": ("I32", [1, out // 8]),
        LINEAR + ".scales": ("F16", [1, out]), LINEAR + ".g_idx": ("I32", [inp])})
    model, _ = c.new("awq_names", LINEAR + ".qweight")
    edit_shard(model, wm, w, drop=[w], add={
        LINEAR + ".qweight": ("I32", [inp, out // 8]), LINEAR + ".qzeros": ("I32", [1, out // 8]),
        LINEAR + ".scales": ("F16", [1, out])})
    model, _ = c.new("bitsandbytes_4bit_names", w + ".absmax")
    edit_shard(model, wm, w, drop=[w], add={
        w: ("U8", [out * inp // 2, 1]), w + ".absmax": ("F32", [out * inp // 64]),
        w + ".quant_map": ("F32", [16]), w + ".quant_state.bitsandbytes__nf4": ("U8", [64])})
    model, _ = c.new("bitsandbytes_int8_names", LINEAR + ".SCB")
    edit_shard(model, wm, w, drop=[w], add={
        w: ("I8", [out, inp]), LINEAR + ".SCB": ("F32", [out]),
        LINEAR + ".weight_format": ("U8", [1])})
    model, _ = c.new("int8_weight_without_scale", w)
    edit_shard(model, wm, w, drop=[w], add={w: ("I8", [out, inp])})
    model, _ = c.new("mxfp4_blocks", LINEAR + "_blocks")
    edit_shard(model, wm, w, drop=[w], add={
        LINEAR + "_blocks": ("U8", [out, inp // 32, 16]), LINEAR + "_scales": ("U8", [out, inp // 32])})

    # config.json declares what nvfp4x does not decode.
    model, _ = c.new("unknown_quant_method", "\"fancy_int3\"")
    set_quant_config(model, {"quant_method": "fancy_int3", "bits": 3})
    model, _ = c.new("gptq_quant_method", "\"gptq\"")
    set_quant_config(model, {"quant_method": "gptq", "bits": 4, "group_size": 128})
    model, _ = c.new("modelopt_quant_method", "\"modelopt\"")
    set_quant_config(model, {"quant_method": "modelopt", "quant_algo": "NVFP4"})
    model, _ = c.new("ct_nvfp4_pack_quantized", "\"nvfp4-pack-quantized\"")
    set_quant_config(model, ct_config("nvfp4-pack-quantized", "tensor_group", 4))
    model, _ = c.new("ct_float_block_strategy", "weights.strategy \"block\"")
    set_quant_config(model, ct_config("float-quantized", "block"))
    model, _ = c.new("quantization_config_without_method", "no quant_method")
    set_quant_config(model, {"bits": 4})

    # An FP8 source whose weight and scale do not pair up.
    model, _ = c.new("fp8_weight_without_scale", w)
    edit_shard(model, wm, w, drop=[w], add={w: ("F8_E4M3", [out, inp])})
    set_quant_config(model, {"quant_method": "fp8", "activation_scheme": "dynamic"})
    model, _ = c.new("fp8_scale_without_weight", w + "_scale")
    edit_shard(model, wm, w, drop=[w], add={
        w + "_scale": ("F32", []), LINEAR + ".input_scale": ("F32", [])})
    set_quant_config(model, ct_config("float-quantized", "tensor"))
    model, _ = c.new("fp8_scale_wrong_shape", w + "_scale")
    edit_shard(model, wm, w, drop=[w], add={w: ("F8_E4M3", [out, inp]),
                                             w + "_scale": ("F32", [out, 2])})
    set_quant_config(model, ct_config("float-quantized", "channel"))

    int4_cases(c, wm, w, out, inp)

    c.write_tsv()
    for row in c.rows:
        print("%-34s %s" % (row[0], row[4]))
    print("make_unread_encodings: %d cases in %s" % (len(c.rows),
                                                      os.path.join(args.out, "cases.tsv")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
