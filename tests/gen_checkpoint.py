#!/usr/bin/python3
"""Generate a small Hugging Face MoE checkpoint and its ModelOpt calibration statistics.

  gen_checkpoint.py --family qwen3moe|deepseek|mixtral --out DIR --calib CALIB.h5
                    [--seed N] [--shards K]

DIR gets config.json, model.safetensors.index.json and K shards model-0000i-of-0000K.safetensors
(written the way the Rust safetensors library writes them), tokenizer files,
generation_config.json and, for deepseek, configuration_deepseek.py. CALIB.h5 follows the
schema of DESIGN.md ("Calibration file"). Output is deterministic for a given seed.
"""

import argparse
import json
import os
import struct
import sys

import numpy as np

# safetensors' Dtype enum order; the Rust writer sorts tensors by descending dtype, then name.
DTYPE_ORDER = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "I16", "U16", "F16",
               "BF16", "I32", "U32", "F32", "F64", "I64", "U64"]
DTYPE_RANK = {d: i for i, d in enumerate(DTYPE_ORDER)}


def safetensors_bytes(tensors, metadata=None):
    """tensors: {name: (dtype, shape, bytes)} -> file contents, as safetensors' Rust does it."""
    items = sorted(tensors.items(), key=lambda kv: (-DTYPE_RANK[kv[1][0]], kv[0]))
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    for name, (dtype, shape, data) in items:
        header[name] = {"dtype": dtype, "shape": [int(s) for s in shape],
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    hdr = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    hdr += b" " * ((8 - len(hdr) % 8) % 8)
    return b"".join([struct.pack("<Q", len(hdr)), hdr] + [bytes(d) for _, (_, _, d) in items])


def write_safetensors(path, tensors, metadata=None):
    with open(path, "wb") as f:
        f.write(safetensors_bytes(tensors, {"format": "pt"} if metadata is None else metadata))


def rewrite_tensor(d, name, new):
    """Replaces tensor `name` of the indexed checkpoint in directory d by new, a (dtype, shape,
    bytes) triple, or deletes it (from its shard and the index) when new is None: one defect
    planted for a refusal test. The shard keeps its metadata."""
    from nvfp4_ref import read_safetensors  # the strict reader (nvfp4_ref imports nothing here)
    index_path = os.path.join(d, "model.safetensors.index.json")
    with open(index_path) as f:
        index = json.load(f)
    shard = os.path.join(d, index["weight_map"][name])
    tensors, meta = read_safetensors(shard)
    tensors = {n: (t.dtype, t.shape, t.data) for n, t in tensors.items()}
    if new is None:
        del tensors[name], index["weight_map"][name]
    else:
        tensors[name] = new
    write_safetensors(shard, tensors, meta)
    with open(index_path, "w") as f:
        json.dump(index, f, indent=2)


def f32_to_bf16_bits(x):
    """float32 -> bf16 bits, round to nearest even (finite input)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")


class Model:
    """Collects tensors in state-dict order and remembers what the calibration needs."""

    def __init__(self, rng, dtype):
        self.rng, self.dtype = rng, dtype
        self.tensors = []      # (name, dtype, shape, bytes) in state-dict order
        self.values = {}       # name -> float32 array, exactly as stored
        self.linears = []      # (module, rows, cols) of every 2-D weight

    def _store(self, name, x, dtype=None):
        dtype = dtype or self.dtype
        x = np.asarray(x, dtype=np.float32)
        if dtype == "BF16":
            bits = f32_to_bf16_bits(x)
            data = bits.tobytes()
            stored = (bits.astype(np.uint32) << 16).view(np.float32)
        elif dtype == "F16":
            h = x.astype("<f2")
            data, stored = h.tobytes(), h.astype(np.float32)
        elif dtype == "F32":
            data, stored = x.astype("<f4").tobytes(), x
        else:
            raise ValueError(dtype)
        self.tensors.append((name, dtype, list(x.shape), data))
        self.values[name] = stored.reshape(x.shape)

    def linear(self, module, rows, cols):
        self._store(module + ".weight", random_matrix(self.rng, rows, cols))
        self.linears.append((module, rows, cols))

    def embedding(self, module, vocab, hidden):
        self._store(module + ".weight", self.rng.standard_normal((vocab, hidden)) * 0.02)
        self.linears.append((module, vocab, hidden))

    def norm(self, name, n):
        self._store(name, 1.0 + 0.05 * self.rng.standard_normal(n))

    def vector_f32(self, name, n):
        self._store(name, 0.01 * self.rng.standard_normal(n), "F32")


def random_matrix(rng, rows, cols):
    """Normal with a random per-tensor scale, outliers, tiny rows (block scales in the E4M3
    subnormal range and at the 2^-9 clamp), exact zeros and an occasional all-zero block."""
    w = rng.standard_normal((rows, cols)) * 10.0 ** rng.uniform(-2.5, 0.3)
    k = max(1, rows * cols // 200)
    w.flat[rng.integers(0, rows * cols, size=k)] *= rng.uniform(3.0, 12.0, size=k)
    tiny = rng.random(rows) < 0.08
    w[tiny] *= (10.0 ** rng.uniform(-6.0, -2.0, size=int(tiny.sum())))[:, None]
    w[rng.random((rows, cols)) < 0.03] = 0.0
    if cols >= 16 and rng.random() < 0.6:
        r, b = rng.integers(rows), rng.integers(cols // 16)
        w[r, 16 * b:16 * b + 16] = 0.0
    return w


# --------------------------------------------------------------------------------------
# Families
# --------------------------------------------------------------------------------------

VOCAB = 160
HIDDEN = 80


def build_qwen3moe(rng):
    L, E, heads, kv_heads, head_dim, moe_inter, inter = 3, 4, 4, 2, 16, 48, 96
    cfg = {
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
        "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 1,
        "decoder_sparse_step": 1, "eos_token_id": 2, "head_dim": head_dim, "hidden_act": "silu",
        "hidden_size": HIDDEN, "initializer_range": 0.02, "intermediate_size": inter,
        "max_position_embeddings": 4096, "max_window_layers": L, "mlp_only_layers": [],
        "moe_intermediate_size": moe_inter, "norm_topk_prob": True,
        "num_attention_heads": heads, "num_experts": E, "num_experts_per_tok": 2,
        "num_hidden_layers": L, "num_key_value_heads": kv_heads, "output_router_logits": False,
        "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000.0,
        "router_aux_loss_coef": 0.001, "sliding_window": None, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "transformers_version": "4.51.0", "use_cache": True,
        "use_sliding_window": False, "vocab_size": VOCAB,
    }
    m = Model(rng, "BF16")
    m.embedding("model.embed_tokens", VOCAB, HIDDEN)
    for i in range(L):
        p = "model.layers.%d." % i
        m.norm(p + "input_layernorm.weight", HIDDEN)
        m.linear(p + "self_attn.q_proj", heads * head_dim, HIDDEN)
        m.linear(p + "self_attn.k_proj", kv_heads * head_dim, HIDDEN)
        m.linear(p + "self_attn.v_proj", kv_heads * head_dim, HIDDEN)
        m.linear(p + "self_attn.o_proj", HIDDEN, heads * head_dim)
        m.norm(p + "self_attn.q_norm.weight", head_dim)
        m.norm(p + "self_attn.k_norm.weight", head_dim)
        m.norm(p + "post_attention_layernorm.weight", HIDDEN)
        m.linear(p + "mlp.gate", E, HIDDEN)
        for e in range(E):
            q = p + "mlp.experts.%d." % e
            m.linear(q + "gate_proj", moe_inter, HIDDEN)
            m.linear(q + "up_proj", moe_inter, HIDDEN)
            m.linear(q + "down_proj", HIDDEN, moe_inter)
    m.norm("model.norm.weight", HIDDEN)
    m.linear("lm_head", VOCAB, HIDDEN)
    return cfg, m, "model.layers.0.self_attn.k_proj", L


def _deepseek_attention(m, p, heads, q_lora, kv_lora, nope, rope, v_dim):
    m.linear(p + "self_attn.q_a_proj", q_lora, HIDDEN)
    m.norm(p + "self_attn.q_a_layernorm.weight", q_lora)
    m.linear(p + "self_attn.q_b_proj", heads * (nope + rope), q_lora)
    m.linear(p + "self_attn.kv_a_proj_with_mqa", kv_lora + rope, HIDDEN)
    m.norm(p + "self_attn.kv_a_layernorm.weight", kv_lora)
    m.linear(p + "self_attn.kv_b_proj", heads * (nope + v_dim), kv_lora)
    m.linear(p + "self_attn.o_proj", HIDDEN, heads * v_dim)


def _deepseek_moe(m, p, E, moe_inter, n_shared):
    m.linear(p + "mlp.gate", E, HIDDEN)
    m.vector_f32(p + "mlp.gate.e_score_correction_bias", E)
    for e in range(E):
        q = p + "mlp.experts.%d." % e
        m.linear(q + "gate_proj", moe_inter, HIDDEN)
        m.linear(q + "up_proj", moe_inter, HIDDEN)
        m.linear(q + "down_proj", HIDDEN, moe_inter)
    m.linear(p + "mlp.shared_experts.gate_proj", n_shared * moe_inter, HIDDEN)
    m.linear(p + "mlp.shared_experts.up_proj", n_shared * moe_inter, HIDDEN)
    m.linear(p + "mlp.shared_experts.down_proj", HIDDEN, n_shared * moe_inter)


def build_deepseek(rng):
    L, E, n_shared, heads = 3, 4, 1, 3
    q_lora, kv_lora, nope, rope, v_dim = 64, 48, 32, 16, 32
    moe_inter, inter = 48, 112
    cfg = {
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
        "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV3Config",
                     "AutoModel": "modeling_deepseek.DeepseekV3Model",
                     "AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM"},
        "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 0,
        "eos_token_id": 1, "ep_size": 1, "first_k_dense_replace": 1, "head_dim": rope,
        "hidden_act": "silu", "hidden_size": HIDDEN, "initializer_range": 0.02,
        "intermediate_size": inter, "kv_lora_rank": kv_lora, "max_position_embeddings": 4096,
        "moe_intermediate_size": moe_inter, "moe_layer_freq": 1, "n_group": 2,
        "n_routed_experts": E, "n_shared_experts": n_shared, "norm_topk_prob": True,
        "num_attention_heads": heads, "num_experts_per_tok": 2, "num_hidden_layers": L,
        "num_key_value_heads": heads, "num_nextn_predict_layers": 1,
        "q_lora_rank": q_lora, "qk_nope_head_dim": nope, "qk_rope_head_dim": rope,
        "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 10000,
        "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "tie_word_embeddings": False,
        "topk_group": 1, "topk_method": "noaux_tc", "torch_dtype": "bfloat16",
        "transformers_version": "4.46.3", "use_cache": True, "v_head_dim": v_dim,
        "vocab_size": VOCAB,
    }
    m = Model(rng, "BF16")
    m.embedding("model.embed_tokens", VOCAB, HIDDEN)
    for i in range(L + 1):  # layer L is the MTP layer
        p = "model.layers.%d." % i
        if i == L:
            m.embedding(p + "embed_tokens", VOCAB, HIDDEN)
            m.norm(p + "enorm.weight", HIDDEN)
            m.norm(p + "hnorm.weight", HIDDEN)
            m.linear(p + "eh_proj", HIDDEN, 2 * HIDDEN)
        m.norm(p + "input_layernorm.weight", HIDDEN)
        _deepseek_attention(m, p, heads, q_lora, kv_lora, nope, rope, v_dim)
        m.norm(p + "post_attention_layernorm.weight", HIDDEN)
        if i < 1:
            m.linear(p + "mlp.gate_proj", inter, HIDDEN)
            m.linear(p + "mlp.up_proj", inter, HIDDEN)
            m.linear(p + "mlp.down_proj", HIDDEN, inter)
        else:
            _deepseek_moe(m, p, E, moe_inter, n_shared)
        if i == L:
            m.norm(p + "shared_head.norm.weight", HIDDEN)
            m.linear(p + "shared_head.head", VOCAB, HIDDEN)
    m.norm("model.norm.weight", HIDDEN)
    m.linear("lm_head", VOCAB, HIDDEN)
    return cfg, m, "model.layers.1.self_attn.kv_a_proj_with_mqa", L


def build_mixtral(rng):
    L, E, heads, kv_heads, head_dim, inter = 2, 4, 4, 2, 16, 112
    cfg = {
        "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
        "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2, "head_dim": head_dim,
        "hidden_act": "silu", "hidden_size": HIDDEN, "initializer_range": 0.02,
        "intermediate_size": inter, "max_position_embeddings": 4096,
        "num_attention_heads": heads, "num_experts_per_tok": 2, "num_hidden_layers": L,
        "num_key_value_heads": kv_heads, "num_local_experts": E, "output_router_logits": False,
        "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.02,
        "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "float16",
        "transformers_version": "4.46.3", "use_cache": True, "vocab_size": VOCAB,
    }
    m = Model(rng, "F16")
    m.embedding("model.embed_tokens", VOCAB, HIDDEN)
    for i in range(L):
        p = "model.layers.%d." % i
        m.norm(p + "input_layernorm.weight", HIDDEN)
        m.linear(p + "self_attn.q_proj", heads * head_dim, HIDDEN)
        m.linear(p + "self_attn.k_proj", kv_heads * head_dim, HIDDEN)
        m.linear(p + "self_attn.v_proj", kv_heads * head_dim, HIDDEN)
        m.linear(p + "self_attn.o_proj", HIDDEN, heads * head_dim)
        m.norm(p + "post_attention_layernorm.weight", HIDDEN)
        m.linear(p + "block_sparse_moe.gate", E, HIDDEN)
        for e in range(E):
            q = p + "block_sparse_moe.experts.%d." % e
            m.linear(q + "w1", inter, HIDDEN)
            m.linear(q + "w2", HIDDEN, inter)
            m.linear(q + "w3", inter, HIDDEN)
    m.norm("model.norm.weight", HIDDEN)
    m.linear("lm_head", VOCAB, HIDDEN)
    return cfg, m, "model.layers.0.self_attn.k_proj", L


FAMILIES = {"qwen3moe": build_qwen3moe, "deepseek": build_deepseek, "mixtral": build_mixtral}


# --------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------

def _layer(module):
    parts = module.split(".")
    return int(parts[2]) if len(parts) > 2 and parts[:2] == ["model", "layers"] else None


def _routed_expert(module):
    parts = module.split(".")
    if "experts" in parts:
        i = parts.index("experts")
        if i + 1 < len(parts) and parts[i + 1].isdigit():
            return ".".join(parts[:i]), int(parts[i + 1])
    return None


def default_quantized(module, cols, nlayers):
    """Linears the default policy quantizes (written here independently of nvfp4_ref)."""
    parts = module.split(".")
    if not {"self_attn", "mlp", "block_sparse_moe"}.intersection(parts):
        return False
    if module.endswith(("mlp.gate", ".router", "block_sparse_moe.gate", "shared_expert_gate")):
        return False
    layer = _layer(module)
    return not (layer is not None and layer >= nlayers) and cols % 16 == 0


def _scalar(rng, value, allow_f64=True):
    """A scalar amax stored with a varied shape/dtype: (), [1], float32 or float64."""
    shape = () if rng.random() < 0.6 else (1,)
    dtype = np.float64 if allow_f64 and rng.random() < 0.35 else np.float32
    return np.full(shape, value, dtype=dtype)


def calibration(rng, m, static_attention, nlayers, quantized_pred=None):
    """{dataset path: array}. See DESIGN.md for the schema. quantized_pred(module, cols,
    nlayers) says which modules a calibration run would have statistics for (default:
    default_quantized)."""
    data = {}
    pred = quantized_pred or default_quantized

    def put(module, quantizer, buf, arr):
        data["%s/%s/%s" % (module.replace(".", "/"), quantizer, buf)] = arr

    quantized = [(mod, r, c) for mod, r, c in m.linears if pred(mod, c, nlayers)]
    moe_layers = sorted({_routed_expert(mod)[0] for mod, _, _ in quantized if _routed_expert(mod)})
    silent = {layer: int(rng.integers(4)) for layer in moe_layers}  # experts that saw no tokens
    static_layer = moe_layers[-1]
    for mod, rows, cols in quantized:
        ex = _routed_expert(mod)
        if ex and silent[ex[0]] == ex[1]:
            continue
        put(mod, "input_quantizer", "_amax", _scalar(rng, 10.0 ** rng.uniform(-0.5, 1.5)))
        w = np.abs(m.values[mod + ".weight"])
        if mod == static_attention or (ex and ex[0] == static_layer):
            blocks = w.reshape(rows, cols // 16, 16).max(axis=2)
            p = (blocks * rng.uniform(0.85, 1.0, size=blocks.shape)).astype(np.float32)
            p[rng.random(p.shape) < 0.06] = 0.0
            g = np.float32(w.max() * rng.uniform(0.9, 0.98))
            p.flat[rng.integers(0, p.size, size=2)] = g * np.float32(1.25)
            put(mod, "weight_quantizer", "_amax",
                p.astype(np.float64 if rng.random() < 0.2 else np.float32))
            put(mod, "weight_quantizer", "_global_amax", np.array(g, dtype=np.float32))
        elif rng.random() < 0.5:
            exact = np.float32(w.max())
            value = exact if rng.random() < 0.5 else exact * rng.uniform(0.7, 1.3)
            put(mod, "weight_quantizer", "_amax", _scalar(rng, value))
    attentions = sorted({mod.rsplit(".", 1)[0] for mod, _, _ in quantized
                         if mod.split(".")[-2] == "self_attn"})
    for attn in attentions:
        put(attn, "k_bmm_quantizer", "_amax", _scalar(rng, 10.0 ** rng.uniform(0.0, 1.5)))
        put(attn, "v_bmm_quantizer", "_amax", _scalar(rng, 10.0 ** rng.uniform(0.0, 1.5)))
    return data


def write_calibration(path, data):
    import h5py
    with h5py.File(path, "w") as f:
        for name in sorted(data):
            f.create_dataset(name, data=data[name], track_times=False)


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------

def _json(path, obj):
    with open(path, "w") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_model(out, family, cfg, m, shards):
    os.makedirs(out, exist_ok=True)
    total = sum(len(t[3]) for t in m.tensors)
    if shards < 1 or shards > len(m.tensors):
        raise SystemExit("gen_checkpoint: --shards must be 1..%d" % len(m.tensors))
    # Contiguous runs of the state dict, balanced by bytes, none empty.
    assign, done = [], 0
    for i, t in enumerate(m.tensors):
        k = min(shards - 1, done * shards // total)
        k = max(k, shards - (len(m.tensors) - i))  # leave one tensor for every later shard
        if assign:
            k = max(k, assign[-1])
            k = min(k, assign[-1] + 1)
        assign.append(k)
        done += len(t[3])
    weight_map = {}
    if shards == 1:
        write_safetensors(os.path.join(out, "model.safetensors"),
                          {n: (d, s, b) for n, d, s, b in m.tensors})
    else:
        for k in range(shards):
            fname = "model-%05d-of-%05d.safetensors" % (k + 1, shards)
            part = {n: (d, s, b) for (n, d, s, b), a in zip(m.tensors, assign) if a == k}
            write_safetensors(os.path.join(out, fname), part)
            weight_map.update({n: fname for n in part})
        _json(os.path.join(out, "model.safetensors.index.json"),
              {"metadata": {"total_size": total}, "weight_map": weight_map})
    _json(os.path.join(out, "config.json"), cfg)
    _json(os.path.join(out, "generation_config.json"),
          {"_from_model_config": True, "bos_token_id": cfg["bos_token_id"],
           "eos_token_id": cfg["eos_token_id"], "transformers_version": cfg["transformers_version"]})
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({"tok%d" % i: i for i in range(3, VOCAB)})
    _json(os.path.join(out, "tokenizer.json"),
          {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
           "normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None,
           "decoder": None, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}})
    _json(os.path.join(out, "tokenizer_config.json"),
          {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
           "model_max_length": 4096, "tokenizer_class": "PreTrainedTokenizerFast"})
    if family == "deepseek":
        with open(os.path.join(out, "configuration_deepseek.py"), "w") as f:
            f.write('"""Stand-in for DeepSeek-V3\'s remote-code configuration (test fixture)."""\n'
                    "from transformers.configuration_utils import PretrainedConfig\n\n\n"
                    "class DeepseekV3Config(PretrainedConfig):\n"
                    '    model_type = "deepseek_v3"\n\n'
                    "    def __init__(self, **kwargs):\n"
                    "        super().__init__(**kwargs)\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", required=True, choices=sorted(FAMILIES))
    ap.add_argument("--out", required=True, help="model directory to write")
    ap.add_argument("--calib", required=True, help="calibration HDF5 file to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shards", type=int, default=3)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    cfg, m, static_attention, nlayers = FAMILIES[args.family](rng)
    data = calibration(rng, m, static_attention, nlayers)
    write_model(args.out, args.family, cfg, m, args.shards)
    write_calibration(args.calib, data)
    total = sum(len(t[3]) for t in m.tensors)
    print("gen_checkpoint: %s: %d tensors, %d bytes, %d shards; %s: %d datasets"
          % (args.out, len(m.tensors), total, args.shards, args.calib, len(data)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
