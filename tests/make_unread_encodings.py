#!/usr/bin/python3
"""Derive sources in encodings nvfp4x does not read from a good generated model, one per case.

  make_unread_encodings.py --good-model DIR --good-calib F --out DIR

Each case is OUT/<case>/model, a copy of the good model in which one linear (LINEAR below) is
stored the way another quantization tool stores it, by names and dtypes alone (the bytes are
placeholders: the export must refuse before reading them), or whose config.json declares a
quantization method or format nvfp4x does not decode. OUT/cases.tsv has make_bad_inputs.py's
format: case, model dir, calib path, extra args, the substring the one error line must hold.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_bad_inputs import Cases, read_header, write_with_header  # noqa: E402

LINEAR = "model.layers.1.self_attn.o_proj"
DTYPE_SIZE = {"U8": 1, "I8": 1, "F8_E4M3": 1, "BF16": 2, "F16": 2, "I32": 4, "F32": 4,
              "I64": 8}


def edit_shard(model, weight_map, anchor, drop=(), add=None):
    """Rewrites the shard holding `anchor`: tensors in `drop` removed, `add` {name: (dtype,
    shape)} added with zero bytes; the index follows."""
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
    for name, (dtype, shape) in add.items():
        n = DTYPE_SIZE[dtype]
        for d in shape:
            n *= d
        tensors[name] = (dtype, list(shape), bytes(n))
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
    model, _ = c.new("packed_without_scale", LINEAR + ".weight_packed")
    edit_shard(model, wm, w, drop=[w], add={LINEAR + ".weight_packed": ("I32", [out, inp // 8])})
    model, _ = c.new("mxfp4_blocks", LINEAR + "_blocks")
    edit_shard(model, wm, w, drop=[w], add={
        LINEAR + "_blocks": ("U8", [out, inp // 32, 16]), LINEAR + "_scales": ("U8", [out, inp // 32])})
    # MXFP4 declared, but on a linear: nvfp4x reads it only as gpt-oss's fused experts.
    model, _ = c.new("mxfp4_outside_experts", LINEAR + "_blocks is not a fused expert")
    edit_shard(model, wm, w, drop=[w], add={
        LINEAR + "_blocks": ("U8", [out, inp // 32, 16]), LINEAR + "_scales": ("U8", [out, inp // 32])})
    set_quant_config(model, {"quant_method": "mxfp4"})
    model, _ = c.new("mxfp4_blocks_without_scales", LINEAR + "_blocks has no")
    edit_shard(model, wm, w, drop=[w], add={LINEAR + "_blocks": ("U8", [out, inp // 32, 16])})
    set_quant_config(model, {"quant_method": "mxfp4"})

    # config.json declares what nvfp4x does not decode.
    model, _ = c.new("unknown_quant_method", "\"fancy_int3\"")
    set_quant_config(model, {"quant_method": "fancy_int3", "bits": 3})
    model, _ = c.new("gptq_quant_method", "\"gptq\"")
    set_quant_config(model, {"quant_method": "gptq", "bits": 4, "group_size": 128})
    model, _ = c.new("modelopt_quant_method", "\"modelopt\"")
    set_quant_config(model, {"quant_method": "modelopt", "quant_algo": "NVFP4"})
    model, _ = c.new("ct_pack_quantized", "\"pack-quantized\"")
    set_quant_config(model, ct_config("pack-quantized", "group", 4, "int"))
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

    c.write_tsv()
    for row in c.rows:
        print("%-34s %s" % (row[0], row[4]))
    print("make_unread_encodings: %d cases in %s" % (len(c.rows),
                                                      os.path.join(args.out, "cases.tsv")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
