#!/usr/bin/python3
"""Derive bad inputs from a good generated model + calibration, one directory per case.

  make_bad_inputs.py --good-model DIR --good-calib F --out DIR

The good inputs are only read. Each case gets OUT/<case>/model (a copy of the model) and
OUT/<case>/calib.h5 (a copy of the calibration), one of them damaged. OUT/cases.tsv has one
line per case, tab-separated, no header:
  case-name, model-dir, calib-path, extra-exporter-args (may be empty),
  expected substring of the error message (the file, tensor or dataset the error must name).
"""

import argparse
import json
import os
import shutil
import struct
import sys

import numpy as np

DTYPE_SIZE = {"U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "BF16": 2, "F16": 2, "F32": 4}
NAN_BITS = {"BF16": b"\xc0\x7f", "F16": b"\x00\x7e", "F32": b"\x00\x00\xc0\x7f"}


def read_header(path):
    with open(path, "rb") as f:
        buf = f.read()
    n = struct.unpack("<Q", buf[:8])[0]
    return json.loads(buf[8:8 + n]), buf[8 + n:]


def write_with_header(path, header, data):
    """Rewrite a shard with a new header (padded to 8, correct length prefix), same data."""
    hdr = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hdr += b" " * ((8 - len(hdr) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hdr)) + hdr + data)


def by_offset(header):
    return sorted((k for k in header if k != "__metadata__"),
                  key=lambda k: header[k]["data_offsets"][0])


class Cases:
    def __init__(self, good_model, good_calib, out):
        self.good_model, self.good_calib, self.out = good_model, good_calib, out
        self.rows = []
        with open(os.path.join(good_model, "model.safetensors.index.json")) as f:
            self.weight_map = json.load(f)["weight_map"]
        self.shards = sorted(set(self.weight_map.values()))
        if len(self.shards) < 3:
            raise SystemExit("make_bad_inputs: the good model needs at least 3 shards")

    def new(self, name, expect, copy_calib=True, extra=""):
        """Copies the good inputs into OUT/name; returns (model dir, calib path)."""
        case_dir = os.path.join(self.out, name)
        if os.path.exists(case_dir):
            shutil.rmtree(case_dir)
        model = os.path.join(case_dir, "model")
        shutil.copytree(self.good_model, model)
        calib = os.path.join(case_dir, "calib.h5")
        if copy_calib:
            shutil.copyfile(self.good_calib, calib)
        else:
            calib = os.path.join(case_dir, "absent_calib.h5")
        self.rows.append((name, os.path.abspath(model), os.path.abspath(calib), extra, expect))
        return model, calib

    def write_tsv(self):
        with open(os.path.join(self.out, "cases.tsv"), "w") as f:
            for row in self.rows:
                f.write("\t".join(row) + "\n")


def calib_datasets(path):
    import h5py
    names = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                names[name] = obj.size
        f.visititems(visit)
    return names


def set_dataset(path, name, values):
    import h5py
    with h5py.File(path, "r+") as f:
        dtype = f[name].dtype
        del f[name]
        f.create_dataset(name, data=np.asarray(values, dtype=dtype), track_times=False)


def poison_weight(model, weight_map, tensor):
    """Writes a NaN into element 19 of a weight, in place in the copied shard."""
    path = os.path.join(model, weight_map[tensor])
    header, _ = read_header(path)
    info = header[tensor]
    n = struct.unpack("<Q", open(path, "rb").read(8))[0]
    size = DTYPE_SIZE[info["dtype"]]
    pos = 8 + n + info["data_offsets"][0] + 19 * size
    with open(path, "r+b") as f:
        f.seek(pos)
        f.write(NAN_BITS[info["dtype"]])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--good-model", required=True, help="good model directory (3+ shards)")
    ap.add_argument("--good-calib", required=True, help="good calibration HDF5 file")
    ap.add_argument("--out", required=True, help="directory for the cases and cases.tsv")
    args = ap.parse_args(argv)
    good = os.path.realpath(args.good_model)
    if os.path.realpath(args.out) in (good, os.path.dirname(good)) or \
            os.path.realpath(args.out).startswith(good + os.sep):
        raise SystemExit("make_bad_inputs: --out must not contain or be inside the good model")
    os.makedirs(args.out, exist_ok=True)
    c = Cases(args.good_model, args.good_calib, args.out)
    first, second, last = c.shards[0], c.shards[1], c.shards[-1]
    ds = calib_datasets(args.good_calib)

    def module_of(dataset):
        return dataset.split("/weight_quantizer/")[0].split("/input_quantizer/")[0].replace("/", ".")

    scalar_w = sorted(d for d, n in ds.items() if d.endswith("weight_quantizer/_amax") and n == 1)
    static_w = sorted(d[:-len("_global_amax")] + "_amax" for d in ds
                      if d.endswith("weight_quantizer/_global_amax"))
    with_w = {module_of(d) for d in ds if "/weight_quantizer/" in d}
    computed = sorted(module_of(d) for d in ds if d.endswith("input_quantizer/_amax")
                      and module_of(d) not in with_w)
    q0 = "model/layers/0/self_attn/q_proj/input_quantizer/_amax"
    if q0 not in ds:
        q0 = "model/layers/0/self_attn/q_a_proj/input_quantizer/_amax"
    o0 = "model/layers/0/self_attn/o_proj/input_quantizer/_amax"
    if not (scalar_w and static_w and computed and q0 in ds and o0 in ds):
        raise SystemExit("make_bad_inputs: the good calibration lacks the statistics the cases need")

    model, _ = c.new("truncated_shard", last)
    path = os.path.join(model, last)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 64)

    model, _ = c.new("header_length_past_eof", first)
    path = os.path.join(model, first)
    with open(path, "r+b") as f:
        f.write(struct.pack("<Q", os.path.getsize(path)))

    model, _ = c.new("malformed_header_json", second)
    path = os.path.join(model, second)
    buf = bytearray(open(path, "rb").read())
    n = struct.unpack("<Q", buf[:8])[0]
    at = buf.index(b'"data_offsets":[', 8, 8 + n) + len('"data_offsets":')
    buf[at:at + 1] = b"("  # same length, no longer JSON
    open(path, "wb").write(bytes(buf))

    model, _ = c.new("overlapping_offsets", first)
    path = os.path.join(model, first)
    header, data = read_header(path)
    victim = by_offset(header)[2]
    begin, end = header[victim]["data_offsets"]
    header[victim]["data_offsets"] = [begin - 8, end - 8]  # length right, overlaps the previous
    write_with_header(path, header, data)

    model, _ = c.new("unknown_dtype", last)
    path = os.path.join(model, last)
    header, data = read_header(path)
    header[by_offset(header)[0]]["dtype"] = "Q8_0"
    write_with_header(path, header, data)

    # NaN in a quantized weight whose amax the calibration gives, and in one it must compute.
    tensor = module_of(scalar_w[0]) + ".weight"
    model, _ = c.new("nan_weight_calibrated_amax", tensor)
    poison_weight(model, c.weight_map, tensor)
    tensor = computed[0] + ".weight"
    model, _ = c.new("nan_weight_computed_amax", tensor)
    poison_weight(model, c.weight_map, tensor)

    _, calib = c.new("negative_input_amax", o0)
    set_dataset(calib, o0, np.full(ds_shape(args.good_calib, o0), -1.5))

    _, calib = c.new("nan_weight_amax", scalar_w[-1])
    set_dataset(calib, scalar_w[-1], np.full(ds_shape(args.good_calib, scalar_w[-1]), np.nan))

    _, calib = c.new("missing_input_amax", module_of(q0))
    delete_dataset(calib, q0)

    _, calib = c.new("static_block_amax_wrong_count", static_w[0])
    set_dataset(calib, static_w[0], np.full(ds[static_w[0]] - 1, 0.5))

    model, _ = c.new("missing_shard", second)
    os.remove(os.path.join(model, second))

    model, _ = c.new("missing_config", "config.json")
    os.remove(os.path.join(model, "config.json"))

    c.new("missing_calib", "", copy_calib=False)
    c.rows[-1] = c.rows[-1][:4] + (c.rows[-1][2],)  # the error must name the absent path

    c.write_tsv()
    for row in c.rows:
        print("%-32s %s" % (row[0], row[4]))
    print("make_bad_inputs: %d cases in %s" % (len(c.rows), os.path.join(args.out, "cases.tsv")))
    return 0


def ds_shape(path, name):
    import h5py
    with h5py.File(path, "r") as f:
        return f[name].shape


def delete_dataset(path, name):
    import h5py
    with h5py.File(path, "r+") as f:
        del f[name]


if __name__ == "__main__":
    sys.exit(main())
