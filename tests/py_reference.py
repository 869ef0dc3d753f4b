#!/usr/bin/python3
"""Tests of the numpy reference (tests/nvfp4_ref.py): the ModelOpt vectors and hand cases."""

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import nvfp4_ref as ref  # noqa: E402

F32 = np.float32
RESULTS = {"passed": 0, "failed": 0}


def check(name, cond, detail=""):
    if cond:
        RESULTS["passed"] += 1
    else:
        RESULTS["failed"] += 1
        print("FAIL %s %s" % (name, detail))


def e2m1(x):
    return int(ref.e2m1_encode(F32(x)))


def e4m3(x):
    return int(ref.e4m3_encode(F32(x)))


def test_vectors():
    n, failures = ref.check_vectors(os.path.join(HERE, "data", "nvfp4_vectors.json"))
    check("vectors: 16 cases", n == 16, str(n))
    check("vectors: bit exact", not failures, "; ".join(failures[:5]))


def test_e2m1_hand():
    cases = [  # (input, code) -- ties go to the even code
        (0.0, 0x0), (-0.0, 0x0), (0.25, 0x0), (0.2500001, 0x1), (0.5, 0x1), (0.75, 0x2),
        (0.7499999, 0x1), (1.0, 0x2), (1.25, 0x2), (1.2500001, 0x3), (1.75, 0x4), (2.5, 0x4),
        (2.5000002, 0x5), (3.0, 0x5), (3.5, 0x6), (5.0, 0x6), (5.0000005, 0x7), (6.0, 0x7),
        (1e30, 0x7), (float("inf"), 0x7), (float("nan"), 0x7), (-0.1, 0x8), (-0.25, 0x8),
        (-0.75, 0xA), (-3.5, 0xE), (-7.0, 0xF), (float("-inf"), 0xF),
    ]
    for x, code in cases:
        got = e2m1(x)
        check("e2m1(%r)" % x, got == code, "got %#x want %#x" % (got, code))


def test_e4m3_hand():
    sub = 2.0 ** -9
    cases = [
        (0.0, 0x00), (sub, 0x01), (0.5 * sub, 0x00), (0.5000001 * sub, 0x01),
        (1.5 * sub, 0x02),  # NUMERICS.md: 1.5*2^-9 rounds to 2^-8
        (2.5 * sub, 0x02), (3.5 * sub, 0x04), (7 * sub, 0x07), (7.5 * sub, 0x08),
        (2.0 ** -6, 0x08), (1.0, 0x38), (1.0625, 0x38), (1.1875, 0x3A), (1.125, 0x39),
        (448.0, 0x7E), (440.0, 0x7E), (432.0, 0x7E), (431.9, 0x7D), (416.0, 0x7D),
        (464.0, 0x7E), (-1.0, 0xB8), (-448.0, 0xFE), (float("nan"), 0x7F), (-sub, 0x81),
    ]
    for x, code in cases:
        got = e4m3(x)
        check("e4m3(%r)" % x, got == code, "got %#x want %#x" % (got, code))
    codes = np.array([c for c in range(256) if c & 0x7F != 0x7F], dtype=np.uint8)
    back = ref.e4m3_encode(ref.E4M3_DECODE[codes])
    check("e4m3: decode/encode round trip", np.array_equal(back, codes))


def _nearest_even(x, table):
    """Brute force: nearest entry of an ascending table, ties to the even index."""
    d = np.abs(table[None, :] - x[:, None])
    best = d.min(axis=1, keepdims=True)
    hits = d == best
    first = hits.argmax(axis=1)
    tie = hits.sum(axis=1) > 1
    return np.where(tie & (first % 2 == 1), first + 1, first)


def test_encoders_brute_force():
    rng = np.random.default_rng(7)
    x = (2.0 ** rng.uniform(-12, 8.8, 20000)).astype(F32)
    mids = ((ref._E4M3_MAG[:-1] + ref._E4M3_MAG[1:]) / 2).astype(F32)
    x = np.concatenate([x, mids, np.nextafter(mids, F32(0)), np.nextafter(mids, F32(1e9))])
    x = x[x <= 448]
    want = _nearest_even(x.astype(np.float64), ref._E4M3_MAG[:127])
    got = ref.e4m3_encode(x).astype(np.int64)
    check("e4m3: brute force on %d values" % x.size, np.array_equal(got, want),
          str(x[got != want][:5]))
    mags = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=np.float64)
    q = rng.uniform(-8, 8, 20000).astype(F32)
    q = np.concatenate([q, F32([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -5.0])])
    want = _nearest_even(np.abs(q).astype(np.float64), mags) | np.where(q < 0, 8, 0)
    got = ref.e2m1_encode(q).astype(np.int64)
    check("e2m1: brute force on %d values" % q.size, np.array_equal(got, want),
          str(q[got != want][:5]))


def test_scale_rules():
    # gpu multiplies by the float32 reciprocal, cpu divides: they differ here by one ulp.
    g = ref.f32_from_bits(0x3FA71C80)
    gpu, cpu = ref.const_div(g, 2688, "gpu"), ref.const_div(g, 2688, "cpu")
    check("const_div: gpu", ref.f32_bits(gpu) == 0x39FEA556, hex(ref.f32_bits(gpu)))
    check("const_div: cpu", ref.f32_bits(cpu) == 0x39FEA555, hex(ref.f32_bits(cpu)))
    w = np.zeros((1, 48), F32)
    w[0, 16:32] = 1e-12        # block scale below 2^-9 -> clamped to 2^-9 (code 1)
    w[0, 32] = 2.0             # the block holding the amax -> scale 448
    ws2, codes, packed = ref.quantize_dynamic(w, F32(2.0), "gpu")
    check("dynamic: zero block scale is e4m3(1.0)", codes[0, 0] == 0x38, hex(codes[0, 0]))
    check("dynamic: tiny block clamps to 2^-9", codes[0, 1] == 0x01, hex(codes[0, 1]))
    check("dynamic: amax block scale 448", codes[0, 2] == 0x7E, hex(codes[0, 2]))
    check("dynamic: amax element is code 6.0", packed[0, 16] & 0xF == 0x7, hex(packed[0, 16]))
    s = ref._clamp_scale(np.array([np.nan, 0.0, 1000.0], F32))
    check("clamp: NaN stays NaN", np.isnan(s[0]) and s[1] == F32(2.0 ** -9) and s[2] == 448)
    check("e4m3 of clamped NaN is 0x7F", int(ref.e4m3_encode(s[:1])[0]) & 0x7F == 0x7F)
    w = np.zeros((1, 32), F32)
    w[0, 16] = 1.0
    g = F32(0.5)
    p = np.array([[0.0, 2.0]], F32)   # all-zero block; block above the global amax
    ws2, codes, _ = ref.quantize_static(w, p, g, "gpu")
    m = ref.const_div(g, 6, "gpu")
    zero_scale = ref.e4m3_encode(min(F32(448), F32(448) / m))
    check("static: all-zero block is e4m3(min(448, 448/M))", codes[0, 0] == zero_scale,
          "%#x vs %#x" % (codes[0, 0], zero_scale))
    check("static: p above g saturates at 448", codes[0, 1] == 0x7E, hex(codes[0, 1]))


def test_rules():
    q = {"model.layers.10.mlp.experts.0.gate_proj", "model.layers.2.self_attn.q_proj"}
    got = ref.summarize_excludes({"model.layers.1.mlp.gate", "lm_head",
                                  "model.layers.2.self_attn.o_proj"}, q)
    check("exclude summary: never a prefix that also matches layer 10",
          got == ["lm_head", "model.layers.1.*", "model.layers.2.self_attn.o_proj"], str(got))
    mods = ["a.self_attn.q_proj", "a.self_attn.kv_a_proj_with_mqa", "a.self_attn.kv_b_proj",
            "b.self_attn.q_a_proj", "b.self_attn.q_b_proj", "b.self_attn.kv_a_proj_with_mqa",
            "c.mlp.experts.0.w1", "c.mlp.experts.0.w3", "c.mlp.experts.0.w2",
            "d.self_attn.q_proj", "d.self_attn.k_proj", "d.self_attn.v_proj"]
    g = ref.fused_groups(mods)
    check("groups: MLA without q-LoRA", g["a.self_attn.q_proj"] ==
          {"a.self_attn.q_proj", "a.self_attn.kv_a_proj_with_mqa"})
    check("groups: MLA with q-LoRA", g["b.self_attn.kv_a_proj_with_mqa"] ==
          {"b.self_attn.q_a_proj", "b.self_attn.kv_a_proj_with_mqa"})
    check("groups: q_b_proj alone", g["b.self_attn.q_b_proj"] == {"b.self_attn.q_b_proj"})
    check("groups: w1/w3", g["c.mlp.experts.0.w3"] == {"c.mlp.experts.0.w1", "c.mlp.experts.0.w3"})
    check("groups: q/k/v", len(g["d.self_attn.v_proj"]) == 3)
    check("routers never selected", not any(ref.selected(m, "all") for m in (
        "model.layers.0.mlp.gate", "x.block_sparse_moe.gate", "x.mlp.shared_expert_gate",
        "x.mlp.router")) and ref.selected("model.layers.0.mlp.gate_proj", "all"))


def test_selection():
    """FAMILIES.md 5.1 as the reference applies it, one case per rule."""
    cases = [  # (module, policy, selected)
        ("model.layers.0.linear_attn.in_proj_qkvz", "all", True),
        ("model.layers.0.linear_attn.in_proj_ba", "all", False),  # *linear_attn.in_proj_b*
        ("model.layers.0.linear_attn.out_proj", "all", True),
        ("model.layers.0.linear_attn.conv1d", "all", False),
        ("model.layers.0.attention.query_key_value", "all", True),  # Ling: no scope needed
        ("model.layers.0.attention.dense", "all", True),
        ("model.layers.0.attention.query_key_value", "mlp", False),
        ("model.word_embeddings", "all", False),
        ("model.layers.1.self_attn.indexer.wk", "all", False),
        ("model.layers.1.block_sparse_moe.gate", "all", False),
        ("model.layers.0.block_sparse_moe.gate_proj", "all", True),  # router only
        ("model.layers.1.block_sparse_moe.experts.0.w1", "experts", True),
        ("model.layers.1.mlp.shared_experts.up_proj", "experts", False),
        ("model.layers.1.mlp.shared_experts.up_proj", "mlp", True),
        ("mtp.layers.0.self_attn.q_proj", "all", False),
        ("model.visual.blocks.0.attn.qkv", "all", False),
        ("mm_projector.proj.0", "all", False),
        ("model.layers.0.self_attn.rotary_table", "all", False),  # no linear we know
    ]
    for module, policy, want in cases:
        got = ref.selected(module, policy)
        check("selected(%s, %s)" % (module, policy), got == want, "got %r" % got)


def test_int4_decode():
    """Packing rule by hand: element 8j+t in bits 4t..4t+3 of word j, stored as q + 8."""
    q = np.array([[-8, -1, 0, 1, 7, 3, -5, 2] * 4], dtype=np.int64)  # one row of 32
    word = sum((int(v) + 8) << (4 * t) for t, v in enumerate(q[0, :8]))
    words = np.full((1, 4), word, dtype="<u4")
    scale = np.array([[0x3F81]], dtype="<u2")                        # bf16 1.0078125
    got = ref.decode_int4(ref.Tensor("I32", [1, 4], words.tobytes()),
                          ref.Tensor("BF16", [1, 1], scale.tobytes()),
                          ref.Tensor("I64", [2], np.array([1, 32], "<i8").tobytes()), "x")
    vals = ref.bf16_bits_to_f32(np.frombuffer(got.data, "<u2"))
    # 7 * 1.0078125 = 7.0546875 rounds to 7.0625, 3.0234375 (a tie) to 3.03125 (even)
    want = [-8.0625, -1.0078125, 0.0, 1.0078125, 7.0625, 3.03125, -5.03125, 2.015625]
    check("int4: word %08x decodes" % word, list(vals[:8]) == want, str(list(vals[:8])))
    check("int4: shape [1, 32] BF16", got.shape == [1, 32] and got.dtype == "BF16")


def main():
    for test in (test_vectors, test_e2m1_hand, test_e4m3_hand, test_encoders_brute_force,
                 test_scale_rules, test_rules, test_selection, test_int4_decode):
        try:
            test()
        except Exception as exc:
            check(test.__name__, False, "raised %r" % exc)
    print("%d passed, %d failed" % (RESULTS["passed"], RESULTS["failed"]))
    return 1 if RESULTS["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
