#!/usr/bin/python3
"""Plant one consumer-rule defect in an exported checkpoint directory, in place.

  plant_defect.py DIR --double NAME   F32 scalar NAME times 2 (e.g. one weight_scale_2 of a
                                      fused group: T5; one expert's input_scale: M2)
  plant_defect.py DIR --drop NAME     remove tensor NAME from its shard and the index (e.g. an
                                      expert's input_scale: M1); the shard stays valid

The shard is rewritten as the exporter lays it out (same tensor order, offsets tiling the data
section, header padded to 8 bytes), so the planted defect is the only one.
"""

import argparse
import json
import os
import struct
import sys

INDEX = "model.safetensors.index.json"


def read_shard(path):
    with open(path, "rb") as f:
        buf = f.read()
    n = struct.unpack("<Q", buf[:8])[0]
    return json.loads(buf[8:8 + n]), 8 + n, buf


def shard_of(d, name):
    index = os.path.join(d, INDEX)
    if not os.path.exists(index):
        return os.path.join(d, "model.safetensors"), None
    with open(index) as f:
        return os.path.join(d, json.load(f)["weight_map"][name]), index


def double_scalar(d, name):
    path, _ = shard_of(d, name)
    header, data_start, _ = read_shard(path)
    t = header[name]
    if t["dtype"] != "F32" or t["data_offsets"][1] - t["data_offsets"][0] != 4:
        sys.exit("plant_defect: %s is not one F32 value" % name)
    with open(path, "r+b") as f:
        f.seek(data_start + t["data_offsets"][0])
        value = struct.unpack("<f", f.read(4))[0]
        f.seek(data_start + t["data_offsets"][0])
        f.write(struct.pack("<f", value * 2))


def drop_tensor(d, name):
    path, index = shard_of(d, name)
    header, data_start, buf = read_shard(path)
    gone = header.pop(name)
    names = sorted((k for k in header if k != "__metadata__"),
                   key=lambda k: header[k]["data_offsets"][0])
    data, offset = [], 0
    for k in names:
        b, e = header[k]["data_offsets"]
        data.append(buf[data_start + b:data_start + e])
        header[k]["data_offsets"] = [offset, offset + e - b]
        offset += e - b
    hdr = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hdr += b" " * ((8 - len(hdr) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hdr)) + hdr + b"".join(data))
    if index:
        with open(index) as f:
            doc = json.load(f)
        del doc["weight_map"][name]
        doc["metadata"]["total_size"] -= gone["data_offsets"][1] - gone["data_offsets"][0]
        with open(index, "w") as f:
            json.dump(doc, f, indent=2, sort_keys=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--double", metavar="NAME")
    g.add_argument("--drop", metavar="NAME")
    args = ap.parse_args(argv)
    if args.double:
        double_scalar(args.dir, args.double)
    else:
        drop_tensor(args.dir, args.drop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
