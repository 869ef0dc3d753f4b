#!/usr/bin/python3
"""Generate small fused-expert MoE checkpoints and their ModelOpt calibration statistics.

  gen_fused.py --family llama4|llama4text|gptoss|qwen35 --out DIR --calib CALIB.h5
               [--seed N] [--shards K] [--mxfp4-range in|out]

Each family is written with its real names, shapes, dtypes and shard naming (FAMILIES.md 1, 2,
4), scaled down:

* llama4: Llama4ForConditionalGeneration (Maverick-like: MoE on every second layer, dense
  feed_forward MLPs between), text weights under language_model.model.layers.N, fused experts
  feed_forward.experts.gate_up_proj BF16 [E, H, 2I] (gate = first half of the last dim) and
  down_proj [E, I, H], shared_expert, router, a small vision_model and multi_modal_projector.
* llama4text: Llama4ForCausalLM (Scout-like, MoE on every layer) under model.layers.N.
* gptoss: GptOssForCausalLM in OpenAI's MXFP4 release layout: mlp.experts.gate_up_proj_blocks
  U8 [E, 2I, H/32, 16] (gate/up rows interleaved), _scales U8 [E, 2I, H/32], _bias BF16 [E, 2I],
  the same for down_proj; mlp.router.weight/.bias, self_attn.sinks, q/k/v/o with biases;
  quantization_config {quant_method mxfp4, modules_to_not_convert}; zero-based shard names
  (model-00000-of-0000{K-1}.safetensors). Scale bytes: --mxfp4-range in keeps every block within
  17 exponents of its tensor's largest (the closed-form cast is lossless everywhere); out (the
  default) gives layer 1's experts blocks far below the rest, all-zero blocks (scale byte 0) and
  tiny non-zero blocks with scale byte 0, so the cast's fallback is exercised. Nibbles include
  -0 (0x8).
* qwen35: Qwen3_5MoeForConditionalGeneration under model.language_model.layers.N: gated
  DeltaNet linear_attn (in_proj_qkv, in_proj_z, in_proj_a, in_proj_b, conv1d [C, 1, 4], A_log,
  dt_bias, norm, out_proj) on layer 0, full attention on layer 1, fused experts
  mlp.experts.gate_up_proj [E, 2I, H] (gate rows first) and down_proj [E, H, I], shared_expert,
  shared_expert_gate, router mlp.gate, an MTP layer mtp.layers.0 with per-expert experts, a
  model.visual tower.

CALIB.h5 uses ModelOpt's quantizer names as modelopt_amax_to_h5.py writes them: per linear
<module>/input_quantizer/_amax and weight_quantizer/_amax (or static _amax + _global_amax); for
BMM experts (Llama-4, gpt-oss) <experts>/<proj>_input_quantizer/_amax and
<experts>/<proj>_weight_quantizer/_amax (one quantizer for all experts; one projection static
with per-block amax in (E, out, in/16) order, stored [E, out, in/16], another flat); for
Qwen3.5's experts the per-expert names <experts>/<E>/gate_proj/... with one expert per layer
that saw no tokens. gpt-oss amax come from the MXFP4 decode. Deterministic for a given seed.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_checkpoint as gc  # noqa: E402

VOCAB = gc.VOCAB
E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6],
                dtype=np.float32)


class Fused(gc.Model):
    """gen_checkpoint's Model plus fused experts: (module, attr, [E, in, out] float32)."""

    def __init__(self, rng, dtype):
        super().__init__(rng, dtype)
        self.fused = []
        self.split = []  # Qwen3.5: per-expert views of the fused tensors, as linears

    def raw(self, name, dtype, shape, data):
        self.tensors.append((name, dtype, list(shape), bytes(data)))

    def bias(self, name, n):
        self._store(name, 0.02 * self.rng.standard_normal(n))

    def experts_bmm(self, module, n_experts, hidden, inter):
        """[E, in, out]: rows of random_matrix(out, in) are output features."""
        for attr, fin, fout in (("gate_up_proj", hidden, 2 * inter), ("down_proj", inter, hidden)):
            w = np.stack([gc.random_matrix(self.rng, fout, fin).T for _ in range(n_experts)])
            self._store("%s.%s" % (module, attr), w)
            self.fused.append((module, attr, self.values["%s.%s" % (module, attr)]))

    def experts_split(self, module, n_experts, hidden, inter):
        """[E, out, in]; the per-expert gate/up/down views are calibrated as linears."""
        for attr, fout, fin in (("gate_up_proj", 2 * inter, hidden), ("down_proj", hidden, inter)):
            w = np.stack([gc.random_matrix(self.rng, fout, fin) for _ in range(n_experts)])
            self._store("%s.%s" % (module, attr), w)
        gu = self.values[module + ".gate_up_proj"]
        dn = self.values[module + ".down_proj"]
        for e in range(n_experts):
            for proj, w in (("gate_proj", gu[e, :inter]), ("up_proj", gu[e, inter:]),
                            ("down_proj", dn[e])):
                name = "%s.%d.%s" % (module, e, proj)
                self.values[name + ".weight"] = w
                self.linears.append((name, w.shape[0], w.shape[1]))

    def experts_mxfp4(self, module, n_experts, hidden, inter, spread):
        """OpenAI's MXFP4 layout; the decode [E, in, out] is kept for calibration."""
        for attr, rows, cols in (("gate_up_proj", 2 * inter, hidden), ("down_proj", hidden, inter)):
            nb = cols // 32
            codes = self.rng.integers(0, 16, size=(n_experts, rows, nb, 32)).astype(np.uint8)
            codes[self.rng.random(codes.shape) < 0.05] = 0x8  # -0
            scales = mxfp4_scales(self.rng, (n_experts, rows, nb), spread)
            zero = scales == 0
            codes[zero & (self.rng.random(zero.shape) < 0.5)] = 0  # all-zero blocks
            packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
            name = "%s.%s" % (module, attr)
            self.raw(name + "_blocks", "U8", packed.shape, packed.tobytes())
            self.raw(name + "_scales", "U8", scales.shape, scales.tobytes())
            self.bias(name + "_bias", (n_experts, rows))
            vals = E2M1[codes] * np.exp2(scales.astype(np.float64) - 127)[..., None]
            w = vals.astype(np.float32).reshape(n_experts, rows, cols)
            self.fused.append((module, attr, np.ascontiguousarray(w.transpose(0, 2, 1))))


def mxfp4_scales(rng, shape, spread):
    """E8M0 bytes around 122 (k = -5); with spread "out", blocks 20-40 exponents lower, all-zero
    blocks (byte 0) and a few byte-0 blocks with non-zero nibbles."""
    s = rng.integers(110, 128, size=shape).astype(np.int64)
    if spread == "out":
        low = rng.random(shape) < 0.08
        s[low] = rng.integers(70, 100, size=int(low.sum()))
        s[rng.random(shape) < 0.04] = 0
    return s.astype(np.uint8)


# --------------------------------------------------------------------------------------
# Families
# --------------------------------------------------------------------------------------

def _attention(m, p, heads, kv_heads, head_dim, hidden, bias=False, gated=False):
    m.linear(p + "self_attn.q_proj", (2 if gated else 1) * heads * head_dim, hidden)
    m.linear(p + "self_attn.k_proj", kv_heads * head_dim, hidden)
    m.linear(p + "self_attn.v_proj", kv_heads * head_dim, hidden)
    m.linear(p + "self_attn.o_proj", hidden, heads * head_dim)
    if bias:
        for proj, n in (("q_proj", heads * head_dim), ("k_proj", kv_heads * head_dim),
                        ("v_proj", kv_heads * head_dim), ("o_proj", hidden)):
            m.bias(p + "self_attn.%s.bias" % proj, n)


def _mlp(m, p, inter, hidden):
    m.linear(p + "gate_proj", inter, hidden)
    m.linear(p + "up_proj", inter, hidden)
    m.linear(p + "down_proj", hidden, inter)


def build_llama4(rng, text_only=False, spread=None):
    L, E, H, I, I_MLP, heads, kv, hd = 4, 4, 80, 48, 112, 4, 2, 16
    step = 1 if text_only else 2
    text = {
        "model_type": "llama4_text", "attention_bias": False, "attn_temperature_tuning": True,
        "bos_token_id": 1, "eos_token_id": 2, "head_dim": hd, "hidden_act": "silu",
        "hidden_size": H, "intermediate_size": I, "intermediate_size_mlp": I_MLP,
        "interleave_moe_layer_step": step, "max_position_embeddings": 4096,
        "num_attention_heads": heads, "num_experts_per_tok": 1, "num_hidden_layers": L,
        "num_key_value_heads": kv, "num_local_experts": E, "rms_norm_eps": 1e-05,
        "rope_theta": 500000.0, "torch_dtype": "bfloat16", "use_qk_norm": True,
        "vocab_size": VOCAB,
    }
    m = Fused(rng, "BF16")
    base = "model." if text_only else "language_model.model."
    m.embedding(base + "embed_tokens", VOCAB, H)
    for i in range(L):
        p = "%slayers.%d." % (base, i)
        m.norm(p + "input_layernorm.weight", H)
        _attention(m, p, heads, kv, hd, H)
        m.norm(p + "post_attention_layernorm.weight", H)
        if (i + 1) % step == 0:
            m.linear(p + "feed_forward.router", E, H)
            m.experts_bmm(p + "feed_forward.experts", E, H, I)
            _mlp(m, p + "feed_forward.shared_expert.", I, H)
        else:
            _mlp(m, p + "feed_forward.", I_MLP, H)
    m.norm(base + "norm.weight", H)
    m.linear("lm_head" if text_only else "language_model.lm_head", VOCAB, H)
    if text_only:
        cfg = dict(text, architectures=["Llama4ForCausalLM"], transformers_version="4.51.0")
        return cfg, m
    for i in range(2):
        p = "vision_model.model.layers.%d." % i
        _attention(m, p, 2, 2, 16, 32, bias=True)
        m.linear(p + "mlp.fc1", 64, 32)
        m.linear(p + "mlp.fc2", 32, 64)
    m.linear("vision_model.patch_embedding.linear", 32, 48)
    m.linear("multi_modal_projector.linear_1", H, 32)
    cfg = {"architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4",
           "boi_token_index": 3, "image_token_index": 4, "text_config": text,
           "vision_config": {"model_type": "llama4_vision_model", "hidden_size": 32,
                             "num_hidden_layers": 2, "intermediate_size": 64},
           "tie_word_embeddings": False, "torch_dtype": "bfloat16",
           "transformers_version": "4.51.0", "bos_token_id": 1, "eos_token_id": 2}
    return cfg, m


def build_gptoss(rng, spread="out"):
    L, E, H, I, heads, kv, hd = 3, 4, 64, 64, 4, 2, 16
    cfg = {
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss",
        "attention_bias": True, "bos_token_id": 1, "eos_token_id": 2, "experts_per_token": 2,
        "head_dim": hd, "hidden_act": "silu", "hidden_size": H, "intermediate_size": I,
        "layer_types": ["sliding_attention", "full_attention"] * 2, "max_position_embeddings": 4096,
        "num_attention_heads": heads, "num_experts_per_tok": 2, "num_hidden_layers": L,
        "num_key_value_heads": kv, "num_local_experts": E, "rms_norm_eps": 1e-05,
        "rope_theta": 150000, "sliding_window": 128, "swiglu_limit": 7.0,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.55.0", "vocab_size": VOCAB,
        "quantization_config": {"modules_to_not_convert": [
            "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens",
            "lm_head"], "quant_method": "mxfp4"},
    }
    m = Fused(rng, "BF16")
    m.embedding("model.embed_tokens", VOCAB, H)
    for i in range(L):
        p = "model.layers.%d." % i
        m.norm(p + "input_layernorm.weight", H)
        _attention(m, p, heads, kv, hd, H, bias=True)
        m._store(p + "self_attn.sinks", rng.standard_normal(heads))
        m.norm(p + "post_attention_layernorm.weight", H)
        m.linear(p + "mlp.router", E, H)
        m.bias(p + "mlp.router.bias", E)
        m.experts_mxfp4(p + "mlp.experts", E, H, I, spread if i == 1 else "in")
    m.norm("model.norm.weight", H)
    m.linear("lm_head", VOCAB, H)
    return cfg, m


def _linear_attn(m, p, hidden, nk, nv, dk, dv):
    conv = 2 * nk * dk + nv * dv
    m.linear(p + "linear_attn.in_proj_qkv", conv, hidden)
    m.linear(p + "linear_attn.in_proj_z", nv * dv, hidden)
    m.linear(p + "linear_attn.in_proj_b", nv, hidden)
    m.linear(p + "linear_attn.in_proj_a", nv, hidden)
    m._store(p + "linear_attn.conv1d.weight", 0.1 * m.rng.standard_normal((conv, 1, 4)))
    m.vector_f32(p + "linear_attn.A_log", nv)
    m.vector_f32(p + "linear_attn.dt_bias", nv)
    m.norm(p + "linear_attn.norm.weight", dv)
    m.linear(p + "linear_attn.out_proj", hidden, nv * dv)


def _qwen35_moe(m, p, E, H, I, I_SH, fused=True):
    m.linear(p + "mlp.gate", E, H)
    if fused:
        m.experts_split(p + "mlp.experts", E, H, I)
    else:
        for e in range(E):
            _mlp(m, p + "mlp.experts.%d." % e, I, H)
    _mlp(m, p + "mlp.shared_expert.", I_SH, H)
    m.linear(p + "mlp.shared_expert_gate", 1, H)


def build_qwen35(rng, spread=None):
    L, E, H, I, I_SH, heads, kv, hd = 2, 4, 80, 32, 48, 4, 2, 16
    text = {
        "model_type": "qwen3_5_moe_text", "attention_bias": False, "bos_token_id": 1,
        "eos_token_id": 2, "full_attention_interval": 2, "head_dim": hd, "hidden_act": "silu",
        "hidden_size": H, "layer_types": ["linear_attention", "full_attention"],
        "linear_conv_kernel_dim": 4, "linear_key_head_dim": 16, "linear_num_key_heads": 2,
        "linear_num_value_heads": 4, "linear_value_head_dim": 16,
        "max_position_embeddings": 4096, "moe_intermediate_size": I,
        "mtp_num_hidden_layers": 1, "num_attention_heads": heads, "num_experts": E,
        "num_experts_per_tok": 2, "num_hidden_layers": L, "num_key_value_heads": kv,
        "rms_norm_eps": 1e-06, "shared_expert_intermediate_size": I_SH,
        "torch_dtype": "bfloat16", "vocab_size": VOCAB,
    }
    m = Fused(rng, "BF16")
    base = "model.language_model."
    m.embedding(base + "embed_tokens", VOCAB, H)
    for i in range(L):
        p = "%slayers.%d." % (base, i)
        m.norm(p + "input_layernorm.weight", H)
        if text["layer_types"][i] == "linear_attention":
            _linear_attn(m, p, H, 2, 4, 16, 16)
        else:
            _attention(m, p, heads, kv, hd, H, gated=True)
            m.norm(p + "self_attn.q_norm.weight", hd)
            m.norm(p + "self_attn.k_norm.weight", hd)
        m.norm(p + "post_attention_layernorm.weight", H)
        _qwen35_moe(m, p, E, H, I, I_SH)
    m.norm(base + "norm.weight", H)
    m.linear("lm_head", VOCAB, H)
    m.linear("mtp.fc", H, 2 * H)
    m.norm("mtp.pre_fc_norm_embedding.weight", H)
    p = "mtp.layers.0."
    _attention(m, p, heads, kv, hd, H, gated=True)
    _qwen35_moe(m, p, E, H, I, I_SH, fused=False)
    m.linear("model.visual.blocks.0.attn.qkv", 96, 32)
    m.linear("model.visual.blocks.0.attn.proj", 32, 32)
    m.linear("model.visual.merger.linear_fc1", 64, 128)
    cfg = {"architectures": ["Qwen3_5MoeForConditionalGeneration"], "model_type": "qwen3_5_moe",
           "text_config": text, "vision_config": {"model_type": "qwen3_5_moe", "depth": 1},
           "tie_word_embeddings": False, "transformers_version": "4.57.0",
           "bos_token_id": 1, "eos_token_id": 2}
    return cfg, m


FAMILIES = {
    "llama4": lambda rng, spread: build_llama4(rng),
    "llama4text": lambda rng, spread: build_llama4(rng, text_only=True),
    "gptoss": build_gptoss,
    "qwen35": lambda rng, spread: build_qwen35(rng),
}


# --------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------

def _transposed_blocks(w):
    """|W| block max of [E, in, out] transposed: (E, out, in/16), blocks along in."""
    e, fin, fout = w.shape
    t = np.abs(w).transpose(0, 2, 1).reshape(e, fout, fin // 16, 16)
    return t.max(axis=3)


def calibration(rng, m):
    data = {}

    def put(module, quantizer, buf, arr):
        data["%s/%s/%s" % (module.replace(".", "/"), quantizer, buf)] = arr

    layers = sorted({mod.rsplit(".experts.", 1)[0] for mod, _, _ in m.linears
                     if gc._routed_expert(mod)})
    silent = {layer: int(rng.integers(4)) for layer in layers}
    static_layer = layers[0] if layers else None
    static_done = False
    for mod, rows, cols in m.linears:
        ex = gc._routed_expert(mod)
        if ex and silent[ex[0].rsplit(".experts", 1)[0]] == ex[1]:
            continue
        put(mod, "input_quantizer", "_amax", gc._scalar(rng, 10.0 ** rng.uniform(-0.5, 1.5)))
        w = np.abs(m.values[mod + ".weight"])
        if cols % 16 == 0 and ((ex and ex[0].startswith(static_layer or "-")) or
                               (not ex and not static_done and "self_attn.o_proj" in mod)):
            static_done = static_done or not ex
            blocks = w.reshape(rows, cols // 16, 16).max(axis=2)
            p = (blocks * rng.uniform(0.85, 1.0, size=blocks.shape)).astype(np.float32)
            p[rng.random(p.shape) < 0.06] = 0.0
            g = np.float32(w.max() * rng.uniform(0.9, 0.98))
            put(mod, "weight_quantizer", "_amax", p)
            put(mod, "weight_quantizer", "_global_amax", np.array(g, dtype=np.float32))
        elif rng.random() < 0.5:
            put(mod, "weight_quantizer", "_amax", gc._scalar(rng, np.float32(w.max())))
    for i, (module, attr, w) in enumerate(m.fused):
        put(module, attr + "_input_quantizer", "_amax",
            gc._scalar(rng, 10.0 ** rng.uniform(-0.5, 1.5)))
        if i in (1, 2):  # static: blocks of the transposed weight, [E, out, in/16] and flat
            p = (_transposed_blocks(w) * rng.uniform(0.85, 1.0)).astype(np.float32)
            p[rng.random(p.shape) < 0.06] = 0.0
            put(module, attr + "_weight_quantizer", "_amax", p if i == 1 else p.reshape(-1))
            put(module, attr + "_weight_quantizer", "_global_amax",
                np.array(np.abs(w).max() * 0.95, dtype=np.float32))
        elif i % 2 == 0:
            put(module, attr + "_weight_quantizer", "_amax", gc._scalar(rng, np.abs(w).max()))
    attns = sorted({mod.rsplit(".", 1)[0] for mod, _, _ in m.linears
                    if mod.endswith("self_attn.k_proj") and not mod.startswith(("vision", "mtp"))
                    and ".visual." not in mod})
    for a in attns:
        put(a, "k_bmm_quantizer", "_amax", gc._scalar(rng, 10.0 ** rng.uniform(0.0, 1.5)))
        put(a, "v_bmm_quantizer", "_amax", gc._scalar(rng, 10.0 ** rng.uniform(0.0, 1.5)))
    return data


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------

def shard_names(family, shards):
    if shards == 1:
        return ["model.safetensors"]
    if family == "gptoss":  # OpenAI's release counts from zero: -00000-of-00002 .. -00002
        return ["model-%05d-of-%05d.safetensors" % (k, shards - 1) for k in range(shards)]
    return ["model-%05d-of-%05d.safetensors" % (k + 1, shards) for k in range(shards)]


def write_model(out, family, cfg, m, shards):
    os.makedirs(out, exist_ok=True)
    total = sum(len(t[3]) for t in m.tensors)
    names = shard_names(family, shards)
    assign, done = [], 0
    for i, t in enumerate(m.tensors):
        k = min(shards - 1, done * shards // total)
        k = max(k, shards - (len(m.tensors) - i))
        if assign:
            k = min(max(k, assign[-1]), assign[-1] + 1)
        assign.append(k)
        done += len(t[3])
    weight_map = {}
    for k, fname in enumerate(names):
        part = {n: (d, s, b) for (n, d, s, b), a in zip(m.tensors, assign) if a == k}
        gc.write_safetensors(os.path.join(out, fname), part)
        weight_map.update({n: fname for n in part})
    if shards > 1:
        gc._json(os.path.join(out, "model.safetensors.index.json"),
                 {"metadata": {"total_size": total}, "weight_map": weight_map})
    gc._json(os.path.join(out, "config.json"), cfg)
    gc._json(os.path.join(out, "generation_config.json"),
             {"bos_token_id": 1, "eos_token_id": 2, "transformers_version": "4.55.0"})
    gc._json(os.path.join(out, "tokenizer_config.json"),
             {"bos_token": "<s>", "eos_token": "</s>", "model_max_length": 4096})
    with open(os.path.join(out, "chat_template.jinja"), "w") as f:
        f.write("{% for m in messages %}{{ m['content'] }}{% endfor %}\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", required=True, choices=sorted(FAMILIES))
    ap.add_argument("--out", required=True)
    ap.add_argument("--calib", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--mxfp4-range", choices=("in", "out"), default="out",
                    help="gptoss: whether layer 1 has blocks the closed-form cast cannot keep")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    cfg, m = FAMILIES[args.family](rng, args.mxfp4_range)
    data = calibration(rng, m)
    write_model(args.out, args.family, cfg, m, args.shards)
    gc.write_calibration(args.calib, data)
    total = sum(len(t[3]) for t in m.tensors)
    print("gen_fused: %s: %d tensors, %d bytes, %d shards; %s: %d datasets"
          % (args.out, len(m.tensors), total, args.shards, args.calib, len(data)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
