#!/usr/bin/python3
"""Generate DeepSeek-V4 checkpoints in the release format (FRONTIER.md 1.2) and ModelOpt's
calibration dumps of them.

  gen_dsv4.py small --out DIR --calib CALIB.h5 [--dumps DUMPDIR --mp N] [--seed N]
  gen_dsv4.py sized --out DIR --calib CALIB.h5 [--dumps DUMPDIR] [--layers L] [--experts E]
                    [--hidden H] [--inter I] [--vocab V]
  gen_dsv4.py sparse --out DIR [--layers L] [--experts E] [--shards K]

small: a tiny V4 with every tensor kind of the release, DS-native names: FP8 linears (F8_E4M3
with an F8_E8M0 .scale per 128x128 tile, edge tiles partial), MXFP4 routed experts (I8
[out, in/2], element 2j in the low nibble, F8_E8M0 .scale [out, in/32]), BF16 norms, router,
compressor, embed and head, F32 hyper-connection, attn_sink, ape and gate.bias tensors, I64
tid2eid on the hash layers 0..2 (num_hash_layers 3), scored layers 3..4 with gate.bias, CSA
layers with an indexer, and an MTP block mtp.0 (MXFP4 experts, FP8 e_proj/h_proj). Five main
layers, four routed experts, hidden 160, in three shards model-0000k-of-00003 with an index whose
weight_map is in state-dict order (not sorted) and one FP8 .scale kept in another shard than its
weight. The experts' MXFP4 data covers what the cast must get right: -0 nibbles (0x8), an expert
whose w1 scales lie below its w3's (one k_max for both), blocks 25 exponents below the tensor's
k_max (outside E4M3's window), zero scale bytes over zero and non-zero nibbles, and a w1 whose
scale bytes are all zero (its k_max counts as 0). Ancillary files: tokenizer, generation config,
LICENSE, .gitattributes, encoding/ and inference/ (with a __pycache__ and a .cache that the export
leaves out).

CALIB.h5 is nvfp4x's calibration schema for what ModelOpt's ptq.py records: per routed expert of
the main layers w{1,2,3} input_quantizer/_amax and weight_quantizer/_amax (weight amax = max |W|
of the decoded weight, for most of them times a random factor in [1, 1.1)), except experts that saw no tokens (some in the
hash layers, one in a scored layer: they get no entry at all). --dumps writes the same
statistics as ptq.py's torch.save files amax_dict_rank{r}-mp{N}.pt (experts spread over the N
ranks, keys layers.L.ffn.experts.E.wX_{input|weight}_quantizer._amax, 0-d float32 tensors),
without needing torch (write_torch_dump).

sized: the same layout with real data of a chosen size (default 4 layers + MTP, 96 experts of
2048 x 1024, about 1.7 GB; one shard per layer), for benchmarks (tests/bench/device_v4.sh).

sparse: the shape of V4-Pro (61 layers, 384 routed experts, MTP block: 145116 tensors, ~860 GB)
in 64 shards whose data sections are holes: only header readers (catalog, classify, plan) can use
it. --layers and --experts give smaller variants of the same layout.
"""

import argparse
import collections
import contextlib
import io
import json
import os
import pickle
import struct
import sys
import types
import zipfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_checkpoint as gc  # noqa: E402

E2M1 = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0.0, -.5, -1, -1.5, -2, -3, -4, -6], np.float32)

# The small model's shape.
H, L, E, INTER, VOCAB, HASH = 160, 5, 4, 96, 64, 3
Q_LORA, HEADS, HEAD_DIM, O_GROUPS, O_LORA, HC = 64, 2, 32, 2, 32, 2
IDX_HEADS, IDX_DIM = 2, 16
RATIOS = [0, 128, 4, 128, 4, 0]  # per main layer, then MTP


# --------------------------------------------------------------------------------------
# Tensors
# --------------------------------------------------------------------------------------

class Tensors:
    """(name, dtype, shape, bytes) in state-dict order, and max |W| of each MXFP4 expert."""

    def __init__(self, rng):
        self.rng, self.items, self.amax = rng, [], {}

    def add(self, name, dtype, shape, data):
        self.items.append((name, dtype, list(shape), bytes(data)))

    def bf16(self, name, shape, scale=0.02):
        """Magnitudes in [2^(e-1), 2^e) about scale, random signs and mantissas (cheap bits:
        the export copies these tensors)."""
        raw = self.rng.integers(0, 1 << 16, size=shape, dtype=np.uint16)
        exp = np.uint16((int(np.floor(np.log2(scale))) + 127) << 7)
        self.add(name, "BF16", shape, ((raw & np.uint16(0x807F)) | exp).astype("<u2").tobytes())

    def f32(self, name, shape, scale=0.1):
        self.add(name, "F32", shape, (self.rng.standard_normal(shape) * scale).astype("<f4"))

    def fp8(self, module, rows, cols):
        """An FP8 linear: E4M3 bytes (no NaN codes) and one E8M0 byte per 128x128 tile."""
        codes = self.rng.integers(0, 256, size=(rows, cols), dtype=np.uint8)
        codes[(codes & 0x7F) == 0x7F] ^= 0x01
        tiles = (-(-rows // 128), -(-cols // 128))
        self.add(module + ".weight", "F8_E4M3", (rows, cols), codes.tobytes())
        scale = self.rng.integers(115, 131, size=tiles, dtype=np.uint8)
        self.add(module + ".scale", "F8_E8M0", tiles, scale.tobytes())

    def mxfp4(self, module, rows, cols, kind="plain"):
        """An MXFP4 expert projection [rows, cols] stored as I8 [rows, cols/2] + E8M0
        [rows, cols/32]; kind picks the special cases of the module docstring."""
        rng = self.rng
        nib = rng.integers(0, 16, size=(rows, cols), dtype=np.uint8)
        nib[rng.integers(0, 25, size=(rows, cols), dtype=np.uint8) == 0] = 0x8  # -0
        base = int(rng.integers(118, 126))
        e8m0 = (base + rng.integers(-3, 3, size=(rows, cols // 32))).astype(np.uint8)
        if kind == "low":        # w1 below its w3: the pair's k_max is w3's
            e8m0 -= 6
        if kind == "high":
            e8m0 += 2
        if kind == "window":     # blocks far below k_max, zero scales, zero blocks
            e8m0[0, 0] = e8m0.max() - 25
            e8m0[1, 1] = 0
            e8m0[2, 2] = 0
            nib[2, 64:96] = 0
            nib[3, 0:32] = 0
        if kind == "zero":       # every scale byte zero: k_max counts as 0
            e8m0[:] = 0
        packed = (nib[:, 0::2] | (nib[:, 1::2] << 4)).astype(np.uint8)
        self.add(module + ".weight", "I8", (rows, cols // 2), packed.tobytes())
        self.add(module + ".scale", "F8_E8M0", e8m0.shape, e8m0.tobytes())
        top = (nib & 7).reshape(rows, cols // 32, 32).max(axis=2)
        self.amax[module] = np.float32((np.abs(E2M1[top]).astype(np.float64) *
                                        np.exp2(e8m0.astype(np.float64) - 127)).max())


def attention(t, p, ratio):
    t.fp8(p + "attn.wq_a", Q_LORA, H)
    t.bf16(p + "attn.q_norm.weight", (Q_LORA,), 1.0)
    t.fp8(p + "attn.wq_b", HEADS * HEAD_DIM, Q_LORA)
    t.fp8(p + "attn.wkv", HEAD_DIM, H)
    t.bf16(p + "attn.kv_norm.weight", (HEAD_DIM,), 1.0)
    t.fp8(p + "attn.wo_a", O_GROUPS * O_LORA, HEADS * HEAD_DIM // O_GROUPS)
    t.fp8(p + "attn.wo_b", H, O_GROUPS * O_LORA)
    t.f32(p + "attn.attn_sink", (HEADS,))
    if ratio:
        width = HEAD_DIM * (2 if ratio == 4 else 1)
        t.bf16(p + "attn.compressor.wkv.weight", (width, H))
        t.bf16(p + "attn.compressor.wgate.weight", (width, H))
        t.f32(p + "attn.compressor.ape", (4, width))
        t.bf16(p + "attn.compressor.norm.weight", (HEAD_DIM,), 1.0)
    if ratio == 4:
        t.fp8(p + "attn.indexer.wq_b", IDX_HEADS * IDX_DIM, Q_LORA)
        t.bf16(p + "attn.indexer.weights_proj.weight", (IDX_HEADS, H))
        t.bf16(p + "attn.indexer.compressor.wkv.weight", (IDX_DIM, H))
        t.bf16(p + "attn.indexer.compressor.wgate.weight", (IDX_DIM, H))
        t.f32(p + "attn.indexer.compressor.ape", (4, IDX_DIM))
        t.bf16(p + "attn.indexer.compressor.norm.weight", (IDX_DIM // 2,), 1.0)


def block(t, p, layer, ratio, kinds):
    attention(t, p, ratio)
    t.bf16(p + "attn_norm.weight", (H,), 1.0)
    t.bf16(p + "ffn_norm.weight", (H,), 1.0)
    for hc in ("hc_attn", "hc_ffn"):
        t.f32(p + hc + "_fn", ((2 + HC) * HC, HC * H))
        t.f32(p + hc + "_base", ((2 + HC) * HC,))
        t.f32(p + hc + "_scale", (3,))
    t.bf16(p + "ffn.gate.weight", (E, H))
    if layer is not None and layer < HASH:
        tid = t.rng.integers(0, E, size=(VOCAB, 2)).astype("<i8")
        t.add(p + "ffn.gate.tid2eid", "I64", (VOCAB, 2), tid.tobytes())
    else:
        t.f32(p + "ffn.gate.bias", (E,))
    for e in range(E):
        q = p + "ffn.experts.%d." % e
        t.mxfp4(q + "w1", INTER, H, kinds.get((e, "w1"), "plain"))
        t.mxfp4(q + "w2", H, INTER, kinds.get((e, "w2"), "plain"))
        t.mxfp4(q + "w3", INTER, H, kinds.get((e, "w3"), "plain"))
    for w, rows, cols in (("w1", INTER, H), ("w2", H, INTER), ("w3", INTER, H)):
        t.fp8(p + "ffn.shared_experts." + w, rows, cols)


def build_small(rng, special=None):
    t = Tensors(rng)
    t.bf16("embed.weight", (VOCAB, H))
    if special is None:
        special = {1: {(0, "w1"): "zero"}, 3: {(1, "w1"): "low", (1, "w3"): "high"},
                   4: {(2, "w2"): "window", (3, "w1"): "window"}}
    for layer in range(L):
        block(t, "layers.%d." % layer, layer, RATIOS[layer], special.get(layer, {}))
    t.bf16("norm.weight", (H,), 1.0)
    t.f32("hc_head_fn", (HC, HC * H))
    t.f32("hc_head_base", (HC,))
    t.f32("hc_head_scale", (1,))
    t.bf16("head.weight", (VOCAB, H))
    p = "mtp.0."
    t.fp8(p + "e_proj", H, H)
    t.fp8(p + "h_proj", H, H)
    for n in ("enorm", "hnorm", "norm"):
        t.bf16(p + n + ".weight", (H,), 1.0)
    block(t, p, None, RATIOS[L], {})
    t.f32(p + "hc_head_fn", (HC, HC * H))
    t.f32(p + "hc_head_base", (HC,))
    t.f32(p + "hc_head_scale", (1,))
    return t


def config():
    return {
        "architectures": ["DeepseekV4ForCausalLM"],
        "model_type": "deepseek_v4",
        "_name_or_path": "deepseek-ai/DeepSeek-V4-Flash (test fixture \u00e9\u2713)",
        "vocab_size": VOCAB, "hidden_size": H, "num_hidden_layers": L,
        "num_nextn_predict_layers": 1, "n_routed_experts": E, "n_shared_experts": 1,
        "num_experts_per_tok": 2, "moe_intermediate_size": INTER, "num_hash_layers": HASH,
        "num_attention_heads": HEADS, "head_dim": HEAD_DIM, "q_lora_rank": Q_LORA,
        "o_groups": O_GROUPS, "o_lora_rank": O_LORA, "hc_mult": HC,
        "compress_ratios": RATIOS, "expert_dtype": "fp4", "scoring_func": "sqrtsoftplus",
        "rms_norm_eps": 1e-06, "route_scale": 2.5, "rope_theta": 10000.0,
        "compress_rope_theta": 160000, "swiglu_limit": 10.0, "initializer_range": 0.006,
        "rope_scaling": {"type": "yarn", "factor": 16, "beta_fast": 32, "beta_slow": 1,
                         "mscale": 1.0, "original_max_position_embeddings": 65536},
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.57.1",
        "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3",
                                "quant_method": "fp8", "scale_fmt": "ue8m0",
                                "weight_block_size": [128, 128]},
    }


# --------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------

SILENT = {(0, 3), (1, 3), (2, 3), (0, 2), (4, 3)}  # (layer, expert) that saw no tokens


def calibration(rng, t):
    """{ModelOpt key: float32}: what ptq.py records for the routed experts of the main layers."""
    amax = {}
    for layer in range(L):
        for e in range(E):
            if (layer, e) in SILENT:
                continue
            for proj in ("w1", "w2", "w3"):
                mod = "layers.%d.ffn.experts.%d.%s" % (layer, e, proj)
                w = t.amax[mod]
                if rng.random() < 0.6:  # a calibrated value that is not max |W| itself
                    w = np.float32(w * np.float32(rng.uniform(1.0, 1.1)))
                amax[mod + "_weight_quantizer._amax"] = w
                amax[mod + "_input_quantizer._amax"] = np.float32(10.0 ** rng.uniform(-0.5, 1.3))
    return amax


def h5_datasets(amax):
    """ModelOpt's V4 keys in nvfp4x's schema: <expert>.wX_<which>_quantizer._amax ->
    <expert>/wX/<which>_quantizer/_amax."""
    out = {}
    for key, v in amax.items():
        expert, leaf = key[:-len("._amax")].rsplit(".", 1)   # leaf: w1_input_quantizer
        proj, quantizer = leaf.split("_", 1)
        path = "%s/%s/%s/_amax" % (expert.replace(".", "/"), proj, quantizer)
        out[path] = np.array(v, np.float32)
    return out


# --------------------------------------------------------------------------------------
# torch.save without torch
# --------------------------------------------------------------------------------------

@contextlib.contextmanager
def _torch_names():
    """Stand-ins registered as torch, torch._utils for the pickler to name, then removed."""
    if "torch" in sys.modules:
        raise RuntimeError("write_torch_dump: real torch is loaded; use torch.save")
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    def _rebuild_tensor_v2(*args):
        raise RuntimeError("stand-in")

    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"
    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    torch.FloatStorage, torch._utils = FloatStorage, utils
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    sys.modules["torch"], sys.modules["torch._utils"] = torch, utils
    try:
        yield torch
    finally:
        del sys.modules["torch"], sys.modules["torch._utils"]


def write_torch_dump(path, values):
    """values {key: float32 scalar}: the file torch.save writes for that dict of 0-d CPU float32
    tensors (zip archive <stem>/data.pkl, pickle protocol 2 with _rebuild_tensor_v2 and
    persistent ids ('storage', torch.FloatStorage, key, 'cpu', 1), storages <stem>/data/<key>,
    byteorder, version)."""
    stem = os.path.basename(path).split(".")[0]
    with _torch_names() as torch:
        class Storage:
            def __init__(self, key):
                self.key = key

        class Tensor:
            def __init__(self, key):
                self.storage = Storage(key)

            def __reduce_ex__(self, proto):
                return (torch._utils._rebuild_tensor_v2,
                        (self.storage, 0, (), (), False, collections.OrderedDict()))

        class Pickler(pickle.Pickler):
            def persistent_id(self, obj):
                if isinstance(obj, Storage):
                    return ("storage", torch.FloatStorage, obj.key, "cpu", 1)
                return None

        keys = {k: str(i) for i, k in enumerate(values)}
        buf = io.BytesIO()
        Pickler(buf, protocol=2).dump({k: Tensor(keys[k]) for k in values})
    records = [("data.pkl", buf.getvalue()), (".format_version", b"1"),
               (".storage_alignment", b"64"), ("byteorder", b"little")]
    records += [("data/" + keys[k], np.float32(v).astype("<f4").tobytes())
                for k, v in values.items()]
    records += [("version", b"3\n"), (".data/serialization_id", b"0" * 40)]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in records:  # fixed dates: the same bytes every time
            z.writestr(zipfile.ZipInfo(stem + "/" + name, (1980, 1, 1, 0, 0, 0)), data)


def write_dumps(dump_dir, amax, mp):
    """ptq.py's files: experts are rank-sharded (expert e on rank e % mp)."""
    os.makedirs(dump_dir, exist_ok=True)
    ranks = [dict() for _ in range(mp)]
    for key, v in amax.items():
        ranks[int(key.split(".")[4]) % mp][key] = v
    try:
        import torch  # the real thing when it is there
    except ImportError:
        torch = None
    for r in range(mp):
        path = os.path.join(dump_dir, "amax_dict_rank%d-mp%d.pt" % (r, mp))
        if torch is None:
            write_torch_dump(path, ranks[r])
        else:
            torch.save({k: torch.tensor(float(v), dtype=torch.float32)
                        for k, v in ranks[r].items()}, path)


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------

def shard_of(name):
    """Three shards by layer; one FP8 scale displaced to another shard than its weight."""
    if name == "layers.2.ffn.shared_experts.w2.scale":
        return 2
    if name.startswith("layers."):
        return {0: 0, 1: 0, 2: 1, 3: 1}.get(int(name.split(".")[1]), 2)
    return 0 if name.startswith("embed") else 2


def shard_by_layer(name):
    """One shard per main layer (embed with the first), the rest in a last one: an expert's
    tensors always share a shard, as the script needs to pair w1 with w3."""
    if name.startswith("layers."):
        return int(name.split(".")[1])
    return 0 if name.startswith("embed") else L


def write_small(out, t, n_shards=3, shard=shard_of):
    os.makedirs(out)
    files = ["model-%05d-of-%05d.safetensors" % (k + 1, n_shards) for k in range(n_shards)]
    parts = [dict() for _ in files]
    weight_map = {}
    for k in range(n_shards):  # state-dict order, shard by shard: not sorted
        for name, dtype, shape, data in t.items:
            if shard(name) == k:
                parts[k][name] = (dtype, shape, data)
                weight_map[name] = files[k]
    for f, part in zip(files, parts):
        gc.write_safetensors(os.path.join(out, f), part)
    total = sum(len(d) for _, _, _, d in t.items)
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config(), f, indent=2)  # not sorted: the export re-sorts it
    aux = {
        "generation_config.json": '{"bos_token_id": 0, "eos_token_id": 1}\n',
        "tokenizer.json": '{"version": "1.0", "model": {"type": "BPE"}}\n',
        "tokenizer_config.json": '{"model_max_length": 1048576}\n',
        "LICENSE": "MIT License (test fixture)\n",
        ".gitattributes": "*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
        "encoding/encoding_dsv4.py": "def encode(messages):\n    return messages\n",
        "encoding/README.md": "chat encoding\n",
        "inference/model.py": "# reference inference (fixture)\n",
        "inference/__pycache__/model.cpython-311.pyc": "stale",
        "inference/empty/.keep": "",
        ".cache/huggingface/download/model-00001-of-%05d.safetensors.metadata" % n_shards: "x",
    }
    for rel, text in aux.items():
        os.makedirs(os.path.dirname(os.path.join(out, rel)) or out, exist_ok=True)
        with open(os.path.join(out, rel), "w") as f:
            f.write(text)


def sized(args):
    """A V4-shaped checkpoint of real data, for timing: V4-Flash's attention shape scaled down,
    --experts routed experts of --hidden x --inter in --layers main layers and the MTP block."""
    global H, L, E, INTER, VOCAB, Q_LORA, HEADS, HEAD_DIM, O_GROUPS, O_LORA, RATIOS
    H, L, E, INTER, VOCAB = args.hidden, args.layers, args.experts, args.inter, args.vocab
    Q_LORA, HEADS, HEAD_DIM, O_GROUPS, O_LORA = 512, 16, 128, 4, 512
    RATIOS = [0] + [128 if i % 2 else 4 for i in range(1, L)] + [0]
    rng = np.random.default_rng(args.seed)
    t = build_small(rng, special={})
    amax = calibration(rng, t)
    write_small(args.out, t, L + 1, shard_by_layer)
    gc.write_calibration(args.calib, h5_datasets(amax))
    if args.dumps:
        write_dumps(args.dumps, amax, args.mp)
    total = sum(len(d) for _, _, _, d in t.items)
    print("gen_dsv4: %s: %d tensors, %.2f GB in %d shards (%d x %d experts); %s: %d datasets"
          % (args.out, len(t.items), total / 1e9, L + 1, L + 1, E, args.calib, len(amax)))
    return 0


def small(args):
    rng = np.random.default_rng(args.seed)
    t = build_small(rng)
    amax = calibration(rng, t)
    write_small(args.out, t)
    gc.write_calibration(args.calib, h5_datasets(amax))
    if args.dumps:
        write_dumps(args.dumps, amax, args.mp)
    n_mx = sum(1 for n, d, _, _ in t.items if d == "I8")
    print("gen_dsv4: %s: %d tensors (%d MXFP4 expert weights) in 3 shards; %s: %d datasets%s"
          % (args.out, len(t.items), n_mx, args.calib, len(amax),
             "; %s: %d rank dumps" % (args.dumps, args.mp) if args.dumps else ""))
    return 0


# --------------------------------------------------------------------------------------
# Sparse V4-Pro shape
# --------------------------------------------------------------------------------------

PRO = dict(hidden=7168, q_lora=1536, heads=128, head_dim=512, o_groups=16, o_lora=1024,
           inter=3072, vocab=129280, hc=4, idx_heads=64, idx_dim=128, topk=6)
DTYPE_SIZE = {"BF16": 2, "F32": 4, "F8_E4M3": 1, "F8_E8M0": 1, "I8": 1, "I64": 8}


def pro_tensors(layers, experts):
    """(name, dtype, shape) of V4-Pro in state-dict order."""
    p = PRO
    hid, hc = p["hidden"], p["hc"]
    out = [("embed.weight", "BF16", [p["vocab"], hid])]

    def fp8(name, rows, cols):
        out.append((name + ".weight", "F8_E4M3", [rows, cols]))
        out.append((name + ".scale", "F8_E8M0", [-(-rows // 128), -(-cols // 128)]))

    def blk(pre, layer, ratio):
        fp8(pre + "attn.wq_a", p["q_lora"], hid)
        out.append((pre + "attn.q_norm.weight", "BF16", [p["q_lora"]]))
        fp8(pre + "attn.wq_b", p["heads"] * p["head_dim"], p["q_lora"])
        fp8(pre + "attn.wkv", p["head_dim"], hid)
        out.append((pre + "attn.kv_norm.weight", "BF16", [p["head_dim"]]))
        fp8(pre + "attn.wo_a", p["o_groups"] * p["o_lora"],
            p["heads"] * p["head_dim"] // p["o_groups"])
        fp8(pre + "attn.wo_b", hid, p["o_groups"] * p["o_lora"])
        out.append((pre + "attn.attn_sink", "F32", [p["heads"]]))
        if ratio:
            w = p["head_dim"] * (2 if ratio == 4 else 1)
            out.append((pre + "attn.compressor.wkv.weight", "BF16", [w, hid]))
            out.append((pre + "attn.compressor.wgate.weight", "BF16", [w, hid]))
            out.append((pre + "attn.compressor.ape", "F32", [ratio if ratio == 4 else 128, w]))
            out.append((pre + "attn.compressor.norm.weight", "BF16", [p["head_dim"]]))
        if ratio == 4:
            fp8(pre + "attn.indexer.wq_b", p["idx_heads"] * p["idx_dim"], p["q_lora"])
            out.append((pre + "attn.indexer.weights_proj.weight", "BF16", [p["idx_heads"], hid]))
            for n in ("wkv", "wgate"):
                out.append((pre + "attn.indexer.compressor.%s.weight" % n, "BF16",
                            [2 * p["idx_dim"], hid]))
            out.append((pre + "attn.indexer.compressor.ape", "F32", [4, 2 * p["idx_dim"]]))
            out.append((pre + "attn.indexer.compressor.norm.weight", "BF16", [p["idx_dim"]]))
        out.append((pre + "attn_norm.weight", "BF16", [hid]))
        out.append((pre + "ffn_norm.weight", "BF16", [hid]))
        for h in ("hc_attn", "hc_ffn"):
            out.append((pre + h + "_fn", "F32", [(2 + hc) * hc, hc * hid]))
            out.append((pre + h + "_base", "F32", [(2 + hc) * hc]))
            out.append((pre + h + "_scale", "F32", [3]))
        out.append((pre + "ffn.gate.weight", "BF16", [experts, hid]))
        if layer is not None and layer < 3:
            out.append((pre + "ffn.gate.tid2eid", "I64", [p["vocab"], p["topk"]]))
        else:
            out.append((pre + "ffn.gate.bias", "F32", [experts]))
        for e in range(experts):
            for w, rows, cols in (("w1", p["inter"], hid), ("w2", hid, p["inter"]),
                                  ("w3", p["inter"], hid)):
                name = pre + "ffn.experts.%d.%s" % (e, w)
                out.append((name + ".weight", "I8", [rows, cols // 2]))
                out.append((name + ".scale", "F8_E8M0", [rows, cols // 32]))
        for w, rows, cols in (("w1", p["inter"], hid), ("w2", hid, p["inter"]),
                              ("w3", p["inter"], hid)):
            fp8(pre + "ffn.shared_experts." + w, rows, cols)

    for layer in range(layers):
        ratio = 128 if layer < 2 or layer % 2 else 4
        blk("layers.%d." % layer, layer, ratio)
    out.append(("norm.weight", "BF16", [hid]))
    out.append(("hc_head_fn", "F32", [hc, hc * hid]))
    out.append(("hc_head_base", "F32", [hc]))
    out.append(("hc_head_scale", "F32", [1]))
    out.append(("head.weight", "BF16", [p["vocab"], hid]))
    fp8("mtp.0.e_proj", hid, hid)
    fp8("mtp.0.h_proj", hid, hid)
    for n in ("enorm", "hnorm", "norm"):
        out.append(("mtp.0.%s.weight" % n, "BF16", [hid]))
    blk("mtp.0.", None, 0)
    out.append(("mtp.0.hc_head_fn", "F32", [hc, hc * hid]))
    out.append(("mtp.0.hc_head_base", "F32", [hc]))
    out.append(("mtp.0.hc_head_scale", "F32", [1]))
    return out


def sparse_header(tensors):
    """safetensors header bytes (no __metadata__) and the data length."""
    items = sorted(tensors, key=lambda t: (-gc.DTYPE_RANK[t[1]], t[0]))
    hdr, off = {}, 0
    for name, dtype, shape in items:
        n = DTYPE_SIZE[dtype] * int(np.prod(shape, dtype=np.int64))
        hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    text = json.dumps(hdr, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text, off


def sparse(args):
    tensors = pro_tensors(args.layers, args.experts)
    total = sum(DTYPE_SIZE[d] * int(np.prod(s, dtype=np.int64)) for _, d, s in tensors)
    os.makedirs(args.out)
    per, files, weight_map, i = -(-len(tensors) // args.shards), [], {}, 0
    for k in range(args.shards):
        part = tensors[i:i + per]
        i += per
        while part and i < len(tensors) and part[-1][0].endswith(".weight") and \
                tensors[i][0].endswith(".scale"):  # a weight's scale stays beside it
            part.append(tensors[i])
            i += 1
        fname = "model-%05d-of-%05d.safetensors" % (k + 1, args.shards)
        header, data = sparse_header(part)
        with open(os.path.join(args.out, fname), "wb") as f:
            f.write(header)
            f.truncate(len(header) + data)
        weight_map.update({n: fname for n, _, _ in part})
        files.append(fname)
    with open(os.path.join(args.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    cfg = config()
    cfg.update(hidden_size=PRO["hidden"], num_hidden_layers=args.layers,
               n_routed_experts=args.experts, vocab_size=PRO["vocab"],
               moe_intermediate_size=PRO["inter"], num_experts_per_tok=PRO["topk"],
               compress_ratios=[128 if j < 2 or j % 2 else 4 for j in range(args.layers)] + [0])
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    print("gen_dsv4: %s: %d tensors, %.1f GB in %d shards (sparse)"
          % (args.out, len(tensors), total / 1e9, args.shards))
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("small", help="the tiny release-format checkpoint and its calibration")
    s.add_argument("--out", required=True)
    s.add_argument("--calib", required=True)
    s.add_argument("--dumps", help="also write ptq.py's amax_dict_rank{r}-mp{N}.pt here")
    s.add_argument("--mp", type=int, default=2)
    s.add_argument("--seed", type=int, default=0)
    z = sub.add_parser("sized", help="real data of a chosen size, for benchmarks")
    z.add_argument("--out", required=True)
    z.add_argument("--calib", required=True)
    z.add_argument("--dumps")
    z.add_argument("--mp", type=int, default=2)
    z.add_argument("--seed", type=int, default=0)
    z.add_argument("--layers", type=int, default=4)
    z.add_argument("--experts", type=int, default=96)
    z.add_argument("--hidden", type=int, default=2048)
    z.add_argument("--inter", type=int, default=1024)
    z.add_argument("--vocab", type=int, default=32768)
    p = sub.add_parser("sparse", help="V4-Pro's shape with holes for data")
    p.add_argument("--out", required=True)
    p.add_argument("--layers", type=int, default=61)
    p.add_argument("--experts", type=int, default=384)
    p.add_argument("--shards", type=int, default=64)
    args = ap.parse_args(argv)
    return {"small": small, "sized": sized, "sparse": sparse}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
