#!/usr/bin/python3
"""Generate small checkpoints of the MoE families of 2025-26 with their released names, shapes,
dtypes and encodings, plus ModelOpt calibration statistics.

  gen_families.py --family F --out DIR --calib CALIB.h5 [--bf16-out TWIN] [--seed N]
                  [--shards K]

Families (FAMILIES.md section 4, FRONTIER.md):
  glm45         Glm4MoeForCausalLM: q/k/v with biases, a dense first layer, router mlp.gate
                (+ e_score_correction_bias F32, not a linear), shared experts, MTP layer
                model.layers.{num_hidden_layers}; BF16.
  minimax_m2    MiniMaxM2ForCausalLM: block_sparse_moe.experts.E.w1/w2/w3, router
                block_sparse_moe.gate (F32), block_sparse_moe.e_score_correction_bias,
                full-width q_norm/k_norm; FP8 block-scaled 128x128 as released (attention and
                experts F8_E4M3 + weight_scale_inv, fmt "float8_e4m3fn").
  deepseek_v32  DeepseekV32ForCausalLM: DeepSeek-V3 (MLA, dense layer 0, shared experts, MTP
                layer) plus self_attn.indexer.{wq_b, wk, k_norm, weights_proj}; FP8
                block-scaled as released (indexer wq_b/wk FP8, weights_proj BF16).
  qwen3_next    Qwen3NextForCausalLM: linear-attention layers (in_proj_qkvz, in_proj_ba,
                conv1d [conv_dim, 1, k], A_log, dt_bias, norm, out_proj), every fourth layer
                gated full attention (q_proj twice as wide, q_norm/k_norm), MoE with
                shared_expert + shared_expert_gate, router mlp.gate, MTP under mtp.*; BF16.
  kimi_k2_thinking  Kimi-K2-Thinking: Kimi-K2's DeepSeek-V3 layout (no MTP) whose routed
                experts are compressed-tensors pack-quantized INT4 (weight_packed I32
                [out, in/8], weight_scale BF16 [out, in/32], weight_shape I64 [2]; symmetric,
                group 32), everything else BF16; shards spelled model-000NN-of-0000NN with a
                six-digit total, as released.
  ling          BailingMoeV2ForCausalLM (Ling-1T, Ling-flash-2.0): model.word_embeddings,
                attention.query_key_value (one fused linear), attention.dense,
                query/key_layernorm, a dense first layer, router mlp.gate + expert_bias (F32),
                shared experts; BF16.

--bf16-out (the FP8 and INT4 families) also writes the source's exact BF16 decoding: the same
tensors in the same shards with every encoded weight replaced by RNE_bf16(fl32(code * scale))
and no scale tensors, config.json without quantization_config, every other file the same. The
calibration is computed from those decoded values. Dimensions are small; every linear's input
size is a multiple of 16 (of 32 for the INT4 experts). Deterministic for a given seed.
"""

import argparse
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_checkpoint as gc  # noqa: E402
import gen_fp8  # noqa: E402

F32 = np.float32
VOCAB = 160


class Fam:
    """A built family: config, tensors (gc.Model), the encoded weights and what calibration
    needs."""

    def __init__(self, cfg, m, static_attention, nlayers):
        self.cfg, self.m = cfg, m
        self.static_attention, self.nlayers = static_attention, nlayers
        self.encoded = {}        # weight name -> [(name, dtype, shape, bytes)] stored instead
        self.qc = None           # quantization_config of the encoded release
        self.shard_total_digits = 5


def bias(m, name, n):
    m._store(name, 0.02 * m.rng.standard_normal(n))


def common_config(arch, model_type, L, H, **kw):
    cfg = {"architectures": [arch], "model_type": model_type, "hidden_size": H,
           "num_hidden_layers": L, "vocab_size": VOCAB, "bos_token_id": 1, "eos_token_id": 2,
           "hidden_act": "silu", "rms_norm_eps": 1e-06, "max_position_embeddings": 4096,
           "tie_word_embeddings": False, "torch_dtype": "bfloat16",
           "transformers_version": "4.57.1", "use_cache": True}
    cfg.update(kw)
    return cfg


def moe_experts(m, p, E, inter, H, names=("gate_proj", "up_proj", "down_proj")):
    g, u, d = names
    for e in range(E):
        q = p + "experts.%d." % e
        m.linear(q + g, inter, H)
        m.linear(q + u, inter, H)
        m.linear(q + d, H, inter)


def dense_mlp(m, p, inter, H):
    m.linear(p + "gate_proj", inter, H)
    m.linear(p + "up_proj", inter, H)
    m.linear(p + "down_proj", H, inter)


# --------------------------------------------------------------------------------------
# BF16 families
# --------------------------------------------------------------------------------------

def build_glm45(rng):
    L, H, E, heads, kv, hd, moe_inter, inter = 3, 80, 4, 4, 2, 16, 48, 96
    cfg = common_config("Glm4MoeForCausalLM", "glm4_moe", L, H, attention_bias=True,
                        attention_dropout=0.0, first_k_dense_replace=1, head_dim=hd,
                        intermediate_size=inter, moe_intermediate_size=moe_inter,
                        n_group=1, n_routed_experts=E, n_shared_experts=1, norm_topk_prob=True,
                        num_attention_heads=heads, num_experts_per_tok=2,
                        num_key_value_heads=kv, num_nextn_predict_layers=1,
                        partial_rotary_factor=0.5, rope_scaling=None, rope_theta=1000000,
                        routed_scaling_factor=2.5, topk_group=1, use_qk_norm=False)
    m = gc.Model(rng, "BF16")
    m.embedding("model.embed_tokens", VOCAB, H)
    for i in range(L + 1):  # layer L: the MTP layer
        p = "model.layers.%d." % i
        if i == L:
            m.norm(p + "enorm.weight", H)
            m.norm(p + "hnorm.weight", H)
            m.linear(p + "eh_proj", H, 2 * H)
            m.norm(p + "shared_head.norm.weight", H)
        m.norm(p + "input_layernorm.weight", H)
        for proj, rows in (("q_proj", heads * hd), ("k_proj", kv * hd), ("v_proj", kv * hd)):
            m.linear(p + "self_attn." + proj, rows, H)
            bias(m, p + "self_attn.%s.bias" % proj, rows)
        m.linear(p + "self_attn.o_proj", H, heads * hd)
        m.norm(p + "post_attention_layernorm.weight", H)
        if i < 1:
            dense_mlp(m, p + "mlp.", inter, H)
            continue
        m.linear(p + "mlp.gate", E, H)
        m.vector_f32(p + "mlp.gate.e_score_correction_bias", E)
        moe_experts(m, p + "mlp.", E, moe_inter, H)
        dense_mlp(m, p + "mlp.shared_experts.", moe_inter, H)
    m.norm("model.norm.weight", H)
    m.linear("lm_head", VOCAB, H)
    return Fam(cfg, m, "model.layers.0.self_attn.k_proj", L)


def _linear_attention(m, p, H, nk, dk, nv, dv, conv_k):
    conv_dim = 2 * nk * dk + nv * dv
    m.linear(p + "linear_attn.in_proj_qkvz", 2 * nk * dk + 2 * nv * dv, H)
    m.linear(p + "linear_attn.in_proj_ba", 2 * nv, H)
    m._store(p + "linear_attn.conv1d.weight", 0.2 * m.rng.standard_normal((conv_dim, 1, conv_k)))
    m.vector_f32(p + "linear_attn.A_log", nv)
    bias(m, p + "linear_attn.dt_bias", nv)
    m.norm(p + "linear_attn.norm.weight", dv)
    m.linear(p + "linear_attn.out_proj", H, nv * dv)


def _gated_attention(m, p, H, heads, kv, hd):
    m.linear(p + "self_attn.q_proj", 2 * heads * hd, H)  # query and its output gate
    m.linear(p + "self_attn.k_proj", kv * hd, H)
    m.linear(p + "self_attn.v_proj", kv * hd, H)
    m.linear(p + "self_attn.o_proj", H, heads * hd)
    m.norm(p + "self_attn.q_norm.weight", hd)
    m.norm(p + "self_attn.k_norm.weight", hd)


def _qwen3_next_moe(m, p, H, E, moe_inter, shared_inter):
    m.linear(p + "mlp.gate", E, H)
    moe_experts(m, p + "mlp.", E, moe_inter, H)
    dense_mlp(m, p + "mlp.shared_expert.", shared_inter, H)
    m.linear(p + "mlp.shared_expert_gate", 1, H)


def build_qwen3_next(rng):
    L, H, E, heads, kv, hd = 4, 80, 4, 4, 2, 16
    nk, dk, nv, dv, conv_k, moe_inter, shared_inter = 2, 16, 4, 16, 4, 48, 64
    cfg = common_config("Qwen3NextForCausalLM", "qwen3_next", L, H, attention_bias=False,
                        attention_dropout=0.0, decoder_sparse_step=1, full_attention_interval=4,
                        head_dim=hd, intermediate_size=96, linear_conv_kernel_dim=conv_k,
                        linear_key_head_dim=dk, linear_num_key_heads=nk,
                        linear_num_value_heads=nv, linear_value_head_dim=dv, mlp_only_layers=[],
                        moe_intermediate_size=moe_inter, mtp_num_hidden_layers=1,
                        norm_topk_prob=True, num_attention_heads=heads, num_experts=E,
                        num_experts_per_tok=2, num_key_value_heads=kv,
                        partial_rotary_factor=0.25, rope_theta=10000000,
                        shared_expert_intermediate_size=shared_inter)
    m = gc.Model(rng, "BF16")
    m.embedding("model.embed_tokens", VOCAB, H)
    for i in range(L):
        p = "model.layers.%d." % i
        m.norm(p + "input_layernorm.weight", H)
        if (i + 1) % 4:
            _linear_attention(m, p, H, nk, dk, nv, dv, conv_k)
        else:
            _gated_attention(m, p, H, heads, kv, hd)
        m.norm(p + "post_attention_layernorm.weight", H)
        _qwen3_next_moe(m, p, H, E, moe_inter, shared_inter)
    m.norm("model.norm.weight", H)
    m.linear("lm_head", VOCAB, H)
    m.linear("mtp.fc", H, 2 * H)
    m.norm("mtp.pre_fc_norm_embedding.weight", H)
    m.norm("mtp.pre_fc_norm_hidden.weight", H)
    m.norm("mtp.layers.0.input_layernorm.weight", H)
    _gated_attention(m, "mtp.layers.0.", H, heads, kv, hd)
    m.norm("mtp.layers.0.post_attention_layernorm.weight", H)
    _qwen3_next_moe(m, "mtp.layers.0.", H, E, moe_inter, shared_inter)
    m.norm("mtp.norm.weight", H)
    return Fam(cfg, m, "model.layers.3.self_attn.k_proj", L)


def build_ling(rng):
    L, H, E, heads, kv, hd, moe_inter, inter = 3, 80, 4, 4, 2, 16, 48, 96
    cfg = common_config("BailingMoeV2ForCausalLM", "bailing_moe_v2", L, H,
                        first_k_dense_replace=1, head_dim=hd, intermediate_size=inter,
                        moe_intermediate_size=moe_inter, n_group=1, num_attention_heads=heads,
                        num_experts=E, num_experts_per_tok=2, num_key_value_heads=kv,
                        num_nextn_predict_layers=0, num_shared_experts=1,
                        partial_rotary_factor=0.5, rope_theta=600000, routed_scaling_factor=2.5,
                        score_function="sigmoid", topk_group=1, use_bias=False,
                        use_qk_norm=True, use_qkv_bias=False)
    m = gc.Model(rng, "BF16")
    m.embedding("model.word_embeddings", VOCAB, H)
    for i in range(L):
        p = "model.layers.%d." % i
        m.norm(p + "input_layernorm.weight", H)
        m.linear(p + "attention.query_key_value", (heads + 2 * kv) * hd, H)
        m.norm(p + "attention.query_layernorm.weight", hd)
        m.norm(p + "attention.key_layernorm.weight", hd)
        m.linear(p + "attention.dense", H, heads * hd)
        m.norm(p + "post_attention_layernorm.weight", H)
        if i < 1:
            dense_mlp(m, p + "mlp.", inter, H)
            continue
        m.linear(p + "mlp.gate", E, H)
        m.vector_f32(p + "mlp.gate.expert_bias", E)
        moe_experts(m, p + "mlp.", E, moe_inter, H)
        dense_mlp(m, p + "mlp.shared_experts.", moe_inter, H)
    m.norm("model.norm.weight", H)
    m.linear("lm_head", VOCAB, H)
    return Fam(cfg, m, "model.layers.0.attention.query_key_value", L)


# --------------------------------------------------------------------------------------
# FP8 block-scaled releases
# --------------------------------------------------------------------------------------

def encode_fp8_block(fam, targets):
    """Every weight in targets becomes F8_E4M3 + F32 weight_scale_inv per 128x128 tile; the
    model keeps the BF16 decoding (gen_fp8's conversion, with its double-rounding tiles)."""
    m = fam.m
    for k, (name, dtype, shape, _) in enumerate(m.tensors):
        if name not in targets:
            continue
        craft = len(fam.encoded) % 3 == 0
        codes, scale = gen_fp8.to_fp8(m.values[name], (128, 128), craft_last_tile=craft)
        bits, values, _ = gen_fp8.dequantize(codes, scale, (128, 128))
        m.tensors[k] = (name, "BF16", shape, bits.tobytes())
        m.values[name] = values
        fam.encoded[name] = [(name, "F8_E4M3", shape, codes.tobytes()),
                             (name + "_scale_inv", "F32", list(scale.shape),
                              scale.astype("<f4").tobytes())]


def build_minimax_m2(rng):
    L, H, E, heads, kv, hd, inter = 2, 144, 4, 4, 2, 32, 96
    cfg = common_config("MiniMaxM2ForCausalLM", "minimax_m2", L, H,
                        attn_type_list=[1] * L, head_dim=hd, intermediate_size=inter,
                        mtp_transformer_layers=1, num_attention_heads=heads,
                        num_experts_per_tok=2, num_key_value_heads=kv, num_local_experts=E,
                        num_mtp_modules=3, qk_norm_type="per_layer", rope_theta=5000000,
                        rotary_dim=16, scoring_func="sigmoid", shared_intermediate_size=0,
                        use_mtp=True, use_qk_norm=True, use_routing_bias=True)
    cfg["auto_map"] = {"AutoConfig": "configuration_minimax_m2.MiniMaxM2Config",
                       "AutoModelForCausalLM": "modeling_minimax_m2.MiniMaxM2ForCausalLM"}
    m = gc.Model(rng, "BF16")
    m.embedding("model.embed_tokens", VOCAB, H)
    targets = set()
    for i in range(L):
        p = "model.layers.%d." % i
        m.norm(p + "input_layernorm.weight", H)
        for proj, rows, cols in (("q_proj", heads * hd, H), ("k_proj", kv * hd, H),
                                 ("v_proj", kv * hd, H), ("o_proj", H, heads * hd)):
            m.linear(p + "self_attn." + proj, rows, cols)
            targets.add(p + "self_attn.%s.weight" % proj)
        m.norm(p + "self_attn.q_norm.weight", heads * hd)
        m.norm(p + "self_attn.k_norm.weight", kv * hd)
        m.norm(p + "post_attention_layernorm.weight", H)
        m._store(p + "block_sparse_moe.gate.weight",
                 0.02 * rng.standard_normal((E, H)), "F32")
        m.linears.append((p + "block_sparse_moe.gate", E, H))
        m.vector_f32(p + "block_sparse_moe.e_score_correction_bias", E)
        moe_experts(m, p + "block_sparse_moe.", E, inter, H, ("w1", "w3", "w2"))
        targets.update(p + "block_sparse_moe.experts.%d.%s.weight" % (e, w)
                       for e in range(E) for w in ("w1", "w2", "w3"))
    m.norm("model.norm.weight", H)
    m.linear("lm_head", VOCAB, H)
    fam = Fam(cfg, m, "model.layers.0.self_attn.k_proj", L)
    encode_fp8_block(fam, targets)
    fam.qc = {"activation_scheme": "dynamic", "fmt": "float8_e4m3fn", "quant_method": "fp8",
              "weight_block_size": [128, 128],
              "modules_to_not_convert": ["gate", "e_score_correction_bias", "lm_head"]}
    return fam


def _indexer(m, p, H, q_lora, idx_heads, idx_dim):
    m.linear(p + "self_attn.indexer.wq_b", idx_heads * idx_dim, q_lora)
    m.linear(p + "self_attn.indexer.wk", idx_dim, H)
    m.norm(p + "self_attn.indexer.k_norm.weight", idx_dim)
    bias(m, p + "self_attn.indexer.k_norm.bias", idx_dim)
    m.linear(p + "self_attn.indexer.weights_proj", idx_heads, H)


def build_deepseek_v32(rng):
    gc.HIDDEN = H = 144
    L, E, heads, q_lora, kv_lora, nope, rope, v_dim = 3, 4, 3, 64, 48, 32, 16, 32
    moe_inter, inter, idx_heads, idx_dim = 48, 112, 4, 32
    cfg = common_config("DeepseekV32ForCausalLM", "deepseek_v32", L, H, attention_bias=False,
                        attention_dropout=0.0, ep_size=1, first_k_dense_replace=1,
                        head_dim=rope, index_head_dim=idx_dim, index_n_heads=idx_heads,
                        index_topk=2048, intermediate_size=inter, kv_lora_rank=kv_lora,
                        moe_intermediate_size=moe_inter, moe_layer_freq=1, n_group=2,
                        n_routed_experts=E, n_shared_experts=1, norm_topk_prob=True,
                        num_attention_heads=heads, num_experts_per_tok=2,
                        num_key_value_heads=heads, num_nextn_predict_layers=1,
                        q_lora_rank=q_lora, qk_nope_head_dim=nope, qk_rope_head_dim=rope,
                        rope_scaling=None, rope_theta=10000, routed_scaling_factor=2.5,
                        scoring_func="sigmoid", topk_group=1, topk_method="noaux_tc",
                        v_head_dim=v_dim)
    m = gc.Model(rng, "BF16")
    m.embedding("model.embed_tokens", VOCAB, H)
    for i in range(L + 1):  # layer L: the MTP layer
        p = "model.layers.%d." % i
        if i == L:
            m.embedding(p + "embed_tokens", VOCAB, H)
            m.norm(p + "enorm.weight", H)
            m.norm(p + "hnorm.weight", H)
            m.linear(p + "eh_proj", H, 2 * H)
        m.norm(p + "input_layernorm.weight", H)
        gc._deepseek_attention(m, p, heads, q_lora, kv_lora, nope, rope, v_dim)
        _indexer(m, p, H, q_lora, idx_heads, idx_dim)
        m.norm(p + "post_attention_layernorm.weight", H)
        if i < 1:
            dense_mlp(m, p + "mlp.", inter, H)
        else:
            gc._deepseek_moe(m, p, E, moe_inter, 1)
        if i == L:
            m.norm(p + "shared_head.norm.weight", H)
            m.linear(p + "shared_head.head", VOCAB, H)
    m.norm("model.norm.weight", H)
    m.linear("lm_head", VOCAB, H)
    fam = Fam(cfg, m, "model.layers.1.self_attn.kv_a_proj_with_mqa", L)
    targets = {n for n, _, s, _ in m.tensors if gen_fp8.fp8_target(n, s) and
               not n.endswith("weights_proj.weight")}
    encode_fp8_block(fam, targets)
    fam.qc = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
              "weight_block_size": [128, 128]}
    return fam


# --------------------------------------------------------------------------------------
# Kimi-K2-Thinking: INT4 pack-quantized routed experts
# --------------------------------------------------------------------------------------

INT4_GROUP = 32


def int4_quantize(w, rng):
    """w [out, in] -> (q int [-8, 7], scale bf16 bits [out, in/32]) as a QAT release stores
    it: per group of 32 a BF16 scale near amax/7; some groups use -8, some scales put q *
    scale between two BF16 values."""
    rows, cols = w.shape
    g = w.reshape(rows, cols // INT4_GROUP, INT4_GROUP)
    amax = np.abs(g).max(axis=2)
    s = np.where(amax > 0, amax / 7.0, 1.0) * rng.uniform(0.9, 1.1, size=amax.shape)
    sbits = gc.f32_to_bf16_bits(s.astype(F32)).reshape(amax.shape)
    sval = (sbits.astype(np.uint32) << 16).view(F32)
    q = np.clip(np.rint(g / sval[:, :, None]), -8, 7).astype(np.int64)
    q[rng.random(q.shape) < 0.01] = -8
    return q.reshape(rows, cols), sbits


def int4_pack(q):
    """q [out, in] -> I32 words [out, in/8]: element 8j+t in bits 4t..4t+3 of word j, as
    q + 8."""
    u = (q + 8).astype(np.uint64)
    rows, cols = q.shape
    words = np.zeros((rows, cols // 8), dtype=np.uint64)
    for t in range(8):
        words |= u[:, t::8] << np.uint64(4 * t)
    return words.astype("<u4")


def int4_decode(q, sbits):
    """RNE_bf16(fl32(q * scale)) -> (bf16 bits, float32 values)."""
    scale = np.repeat((sbits.astype(np.uint32) << 16).view(F32), INT4_GROUP, axis=1)
    prod = (q.astype(F32) * scale).astype(F32)
    bits = gc.f32_to_bf16_bits(prod).reshape(q.shape)
    return bits, (bits.astype(np.uint32) << 16).view(F32).reshape(q.shape)


def encode_int4(fam, rng):
    m = fam.m
    for k, (name, dtype, shape, _) in enumerate(m.tensors):
        if ".mlp.experts." not in name or not name.endswith(".weight"):
            continue
        q, sbits = int4_quantize(m.values[name], rng)
        bits, values = int4_decode(q, sbits)
        m.tensors[k] = (name, "BF16", shape, bits.tobytes())
        m.values[name] = values
        base = name[:-len(".weight")]
        fam.encoded[name] = [
            (base + ".weight_packed", "I32", [shape[0], shape[1] // 8], int4_pack(q).tobytes()),
            (base + ".weight_scale", "BF16", list(sbits.shape), sbits.tobytes()),
            (base + ".weight_shape", "I64", [2], np.array(shape, dtype="<i8").tobytes())]


KIMI_IGNORE = ["lm_head", "re:.*self_attn.*", "re:.*shared_experts.*",
               "re:.*mlp\\.(gate|up|gate_up|down)_proj.*"]


def kimi_quantization_config():
    weights = {"actorder": None, "block_structure": None, "dynamic": False,
               "group_size": INT4_GROUP, "num_bits": 4, "observer": "minmax",
               "observer_kwargs": {}, "strategy": "group", "symmetric": True, "type": "int"}
    return {"config_groups": {"group_0": {"input_activations": None, "output_activations": None,
                                          "targets": ["Linear"], "weights": weights}},
            "format": "pack-quantized", "ignore": list(KIMI_IGNORE), "kv_cache_scheme": None,
            "quant_method": "compressed-tensors", "quantization_status": "compressed"}


KIMI_SIZE = {"hidden": 96, "moe_intermediate": 64, "experts": 4}  # --hidden etc. for benches


def build_kimi_k2_thinking(rng):
    gc.HIDDEN = H = KIMI_SIZE["hidden"]
    L, E, heads, q_lora, kv_lora, nope, rope, v_dim = 3, KIMI_SIZE["experts"], 2, 64, 32, 16, 16, 16
    moe_inter, inter = KIMI_SIZE["moe_intermediate"], 128
    cfg = common_config("DeepseekV3ForCausalLM", "kimi_k2", L, H, attention_bias=False,
                        attention_dropout=0.0, aux_loss_alpha=0.001, ep_size=1,
                        first_k_dense_replace=1, intermediate_size=inter,
                        kv_lora_rank=kv_lora, moe_intermediate_size=moe_inter, moe_layer_freq=1,
                        n_group=1, n_routed_experts=E, n_shared_experts=1, norm_topk_prob=True,
                        num_attention_heads=heads, num_experts_per_tok=2,
                        num_key_value_heads=heads, num_nextn_predict_layers=0,
                        q_lora_rank=q_lora, qk_nope_head_dim=nope, qk_rope_head_dim=rope,
                        rope_theta=50000.0, routed_scaling_factor=2.827, scoring_func="sigmoid",
                        seq_aux=True, topk_group=1, topk_method="noaux_tc", v_head_dim=v_dim)
    cfg["auto_map"] = {"AutoConfig": "configuration_deepseek.DeepseekV3Config",
                       "AutoModel": "modeling_deepseek.DeepseekV3Model",
                       "AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM"}
    m = gc.Model(rng, "BF16")
    m.embedding("model.embed_tokens", VOCAB, H)
    for i in range(L):
        p = "model.layers.%d." % i
        m.norm(p + "input_layernorm.weight", H)
        gc._deepseek_attention(m, p, heads, q_lora, kv_lora, nope, rope, v_dim)
        m.norm(p + "post_attention_layernorm.weight", H)
        if i < 1:
            dense_mlp(m, p + "mlp.", inter, H)
        else:
            gc._deepseek_moe(m, p, E, moe_inter, 1)
    m.norm("model.norm.weight", H)
    m.linear("lm_head", VOCAB, H)
    fam = Fam(cfg, m, "model.layers.1.self_attn.kv_a_proj_with_mqa", L)
    encode_int4(fam, rng)
    fam.qc = kimi_quantization_config()
    fam.shard_total_digits = 6
    return fam


FAMILIES = {"glm45": build_glm45, "minimax_m2": build_minimax_m2,
            "deepseek_v32": build_deepseek_v32, "qwen3_next": build_qwen3_next,
            "kimi_k2_thinking": build_kimi_k2_thinking, "ling": build_ling}

NOT_CALIBRATED = ("embed_tokens", "word_embeddings", "lm_head", "gate", "shared_expert_gate",
                  "in_proj_ba", "weights_proj", "eh_proj", "fc", "head")


def calibrated(module, cols, nlayers):
    """The linears a calibration run has statistics for (a superset of what any policy
    quantizes is harmless: the exporter reads only the modules it quantizes)."""
    leaf = module.rsplit(".", 1)[-1]
    layer = gc._layer(module)
    return not (cols % 16 or leaf in NOT_CALIBRATED or module.startswith("mtp.") or
                "indexer" in module or (layer is not None and layer >= nlayers))


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------

def write_encoded(fam, twin_dir, out_dir):
    """The encoded release: the twin's files and tensor-to-shard assignment, each encoded
    weight replaced by its stored tensors, the shard total spelled with
    fam.shard_total_digits digits, config.json with the release's quantization_config."""
    wmap = gen_fp8.shard_map(twin_dir)
    files = sorted(set(wmap.values()))
    rename = {f: "model-%05d-of-%0*d.safetensors" % (k + 1, fam.shard_total_digits, len(files))
              for k, f in enumerate(files)}
    os.makedirs(out_dir, exist_ok=True)
    for entry in sorted(os.listdir(twin_dir)):
        if not entry.endswith(".safetensors") and entry not in ("config.json",
                                                               "model.safetensors.index.json"):
            shutil.copyfile(os.path.join(twin_dir, entry), os.path.join(out_dir, entry))
    parts, new_map, total = {f: {} for f in files}, {}, 0
    for name, dtype, shape, data in fam.m.tensors:
        f = wmap[name]
        for n, d, s, b in fam.encoded.get(name, [(name, dtype, shape, data)]):
            parts[f][n] = (d, s, b)
            new_map[n] = rename[f]
            total += len(b)
    for f in files:
        gc.write_safetensors(os.path.join(out_dir, rename[f]), parts[f])
    gc._json(os.path.join(out_dir, "model.safetensors.index.json"),
             {"metadata": {"total_size": total}, "weight_map": new_map})
    gc._json(os.path.join(out_dir, "config.json"), dict(fam.cfg, quantization_config=fam.qc))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", required=True, choices=sorted(FAMILIES))
    ap.add_argument("--out", required=True, help="model directory to write")
    ap.add_argument("--calib", required=True, help="calibration HDF5 file to write")
    ap.add_argument("--bf16-out", help="encoded families: also write the BF16 decoding here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shards", type=int, default=3)
    for key, default in KIMI_SIZE.items():
        ap.add_argument("--" + key.replace("_", "-"), type=int, default=default,
                        help="kimi_k2_thinking only: %s (default %d; multiples of 32) for "
                             "memory measurements" % (key.replace("_", " "), default))
    args = ap.parse_args(argv)
    KIMI_SIZE.update(hidden=args.hidden, moe_intermediate=args.moe_intermediate,
                     experts=args.experts)
    rng = np.random.default_rng(args.seed)
    hidden = gc.HIDDEN
    try:
        fam = FAMILIES[args.family](rng)
    finally:
        gc.HIDDEN = hidden
    data = gc.calibration(rng, fam.m, fam.static_attention, fam.nlayers, calibrated)
    gc.write_calibration(args.calib, data)
    if not fam.encoded:
        gc.write_model(args.out, args.family, fam.cfg, fam.m, args.shards)
    else:
        twin = args.bf16_out or args.out + ".bf16-twin"
        gc.write_model(twin, args.family, fam.cfg, fam.m, args.shards)
        write_encoded(fam, twin, args.out)
        if not args.bf16_out:
            shutil.rmtree(twin)
    print("gen_families: %s (%s): %d tensors, %d encoded weights%s; %s: %d datasets"
          % (args.out, args.family, len(fam.m.tensors), len(fam.encoded),
             ", BF16 twin in %s" % args.bf16_out if args.bf16_out and fam.encoded else "",
             args.calib,
             len(data)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
