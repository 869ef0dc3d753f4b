#!/usr/bin/env bash
# --format compressed-tensors (llm-compressor's nvfp4-pack-quantized) for Qwen3-MoE, DeepSeek-V3
# and Mixtral: equals the numpy reference in that format (names, values, quantization_config,
# no hf_quant_config.json), matches the ModelOpt-format export of the same inputs tensor for
# tensor, is byte-identical for -np 1, 2 and 3, and passes verify, with and without the source.
source "$(dirname "$0")/lib.sh"
W=$(work_dir compressed)

ref_equal() { # ref_equal FAMILY OUT FORMAT [ARGS...]
    local fam=$1 out=$2 format=$3
    shift 3
    "$NX_PYTHON" "$NX_TESTS/nvfp4_ref.py" compare --model "$W/$fam" --calib "$W/$fam.h5" \
        --output "$out" --format "$format" "$@"
}

ref_differs() { # the reference in the other format must refuse the output
    ! ref_equal "$@" >/dev/null
}

same_tree() { diff <(tree_sums "$1") <(tree_sums "$2"); }

# Tensor for tensor against the ModelOpt-format export of the same inputs: weight_packed bytes
# == weight bytes, weight_scale equal, weight_global_scale == fl32(1 / weight_scale_2),
# input_global_scale == fl32(1 / input_scale), <attn>.k_scale/v_scale == k_proj.k_scale /
# v_proj.v_scale; every other tensor identical; ignore == the unquantized 2-D modules;
# other files identical but config.json, and no hf_quant_config.json.
same_as_modelopt() { # same_as_modelopt MODELOPT_OUT CT_OUT
    "$NX_PYTHON" - "$1" "$2" <<'EOF'
import fnmatch, json, os, sys
import numpy as np
sys.path.insert(0, os.environ["NX_TESTS"])
from nvfp4_ref import load_checkpoint
mo_dir, ct_dir = sys.argv[1:]
mo, ct = load_checkpoint(mo_dir), load_checkpoint(ct_dir)
bad, seen = [], set()

def f32(t):
    return np.frombuffer(t.data, "<f4")

def expect(ct_name, dtype, shape, data=None, value=None):
    seen.add(ct_name)
    t = ct.get(ct_name)
    if t is None:
        bad.append("%s: missing" % ct_name)
    elif (t.dtype, t.shape) != (dtype, shape):
        bad.append("%s: %s %s, expected %s %s" % (ct_name, t.dtype, t.shape, dtype, shape))
    elif data is not None and t.data != data:
        bad.append("%s: bytes differ from the ModelOpt export" % ct_name)
    elif value is not None and t.data != np.asarray([value], "<f4").tobytes():
        bad.append("%s: %r (%08x), expected %r (%08x)" % (
            ct_name, float(f32(t)[0]), int(f32(t).view("<u4")[0]), float(value),
            int(np.asarray(value, "<f4").view("<u4"))))

quantized = sorted(n[:-len(".weight_scale_2")] for n in mo if n.endswith(".weight_scale_2"))
qset = set(quantized)
with np.errstate(divide="ignore"):
    for m in quantized:
        w = mo[m + ".weight"]
        expect(m + ".weight_packed", "U8", w.shape, data=w.data)
        s = mo[m + ".weight_scale"]
        expect(m + ".weight_scale", "F8_E4M3", s.shape, data=s.data)
        expect(m + ".weight_global_scale", "F32", [1],
               value=np.float32(1) / f32(mo[m + ".weight_scale_2"])[0])
        if m + ".input_scale" in mo:
            expect(m + ".input_global_scale", "F32", [1],
                   value=np.float32(1) / f32(mo[m + ".input_scale"])[0])
        seen.update(m + s for s in (".weight", ".weight_scale_2", ".input_scale"))
kv = 0
for name, t in mo.items():
    for proj, scale in (("k_proj", "k_scale"), ("v_proj", "v_scale")):
        if name.endswith(".%s.%s" % (proj, scale)):
            kv += 1
            attn = name[:-len(".%s.%s" % (proj, scale))]
            expect("%s.%s" % (attn, scale), "F32", [1], value=f32(t)[0])
            seen.add(name)
for name, t in mo.items():
    if name not in seen:
        expect(name, t.dtype, t.shape, data=t.data)
bad += ["%s: not in the ModelOpt export's counterpart" % n for n in sorted(set(ct) - seen)]

cfg = json.load(open(os.path.join(ct_dir, "config.json")))
qc = cfg.get("quantization_config", {})
mo_excl = json.load(open(os.path.join(mo_dir, "hf_quant_config.json")))["quantization"]
modules = sorted({n[:-len(".weight")] for n, t in ct.items()
                  if n.endswith(".weight") and len(t.shape) == 2} | qset)
unquantized = [m for m in modules if m not in qset]
if qc.get("ignore") != unquantized:
    bad.append("config.json: ignore %s, expected the %d unquantized 2-D modules %s"
               % (json.dumps(qc.get("ignore"))[:200], len(unquantized),
                  json.dumps(unquantized)[:200]))
for m in unquantized:
    if not any(fnmatch.fnmatchcase(m, p) for p in mo_excl["exclude_modules"]):
        bad.append("%s: ignored but matches no ModelOpt exclude_modules pattern" % m)
if (qc.get("kv_cache_scheme") is not None) != (mo_excl["kv_cache_quant_algo"] == "FP8"):
    bad.append("config.json: kv_cache_scheme %s but ModelOpt kv_cache_quant_algo %s"
               % (json.dumps(qc.get("kv_cache_scheme")), mo_excl["kv_cache_quant_algo"]))
mo_cfg = json.load(open(os.path.join(mo_dir, "config.json")))
mo_cfg.pop("quantization_config"), cfg.pop("quantization_config", None)
if mo_cfg != cfg:
    bad.append("config.json: differs from the ModelOpt export's beyond quantization_config")
if os.path.exists(os.path.join(ct_dir, "hf_quant_config.json")):
    bad.append("hf_quant_config.json: present")
skip = {"config.json", "hf_quant_config.json", "model.safetensors.index.json"}
for entry in sorted(os.listdir(mo_dir)):
    if entry in skip or entry.endswith(".safetensors"):
        continue
    p = os.path.join(ct_dir, entry)
    if not os.path.isfile(p) or open(p, "rb").read() != open(os.path.join(mo_dir, entry), "rb").read():
        bad.append("%s: differs from the ModelOpt export's" % entry)
for b in bad[:20]:
    print("same_as_modelopt: %s" % b)
if len(bad) > 20:
    print("same_as_modelopt: ... %d more" % (len(bad) - 20))
print("same_as_modelopt: %d quantized modules, %d KV scales, %d tensors, %d problems"
      % (len(quantized), kv, len(ct), len(bad)))
sys.exit(1 if bad else 0)
EOF
}

verify_clean() { # verify_clean OUT [--model SRC]: no violation, exit 0
    "$NX_BIN" verify "$@"
}

verify_ct() { # verify_ct NAME OUT SRC: the consumer rules, then exactness against the source
    check "$1" verify_clean "$2"
    check "$1 --model" verify_clean "$2" --model "$3"
}

for fam in qwen3moe deepseek mixtral; do
    gen "$fam" "$W"
    before=$(tree_sums "$W/$fam"; sha256sum "$W/$fam.h5")
    for mode in gpu cpu; do
        ct="$W/$fam-ct-$mode"
        mo="$W/$fam-mo-$mode"
        check "$fam/$mode export compressed-tensors np=2" nx 2 export --quiet --model "$W/$fam" \
            --calib "$W/$fam.h5" --output "$ct" --numerics "$mode" --format compressed-tensors
        check "$fam/$mode export modelopt np=2" nx 2 export --quiet --model "$W/$fam" \
            --calib "$W/$fam.h5" --output "$mo" --numerics "$mode"
        check "$fam/$mode equals numpy reference (compressed-tensors)" \
            ref_equal "$fam" "$ct" compressed-tensors --numerics "$mode"
        check "$fam/$mode tensor for tensor as the ModelOpt export" same_as_modelopt "$mo" "$ct"
        verify_ct "$fam/$mode verify" "$ct" "$W/$fam"
    done
    check "$fam modelopt reference refuses the compressed-tensors output" \
        ref_differs "$fam" "$W/$fam-ct-gpu" modelopt
    check "$fam compressed-tensors reference refuses the modelopt output" \
        ref_differs "$fam" "$W/$fam-mo-gpu" compressed-tensors
    # Several output shards shared by ranks: the tree must not depend on -np.
    for np in 1 3; do
        check "$fam np=$np export compressed-tensors, small shards" nx "$np" export --quiet \
            --model "$W/$fam" --calib "$W/$fam.h5" --output "$W/$fam-ct-np$np" \
            --format compressed-tensors --max-shard-size 150KB --threads 1
        check "$fam np=$np sharded: verify --model" verify_clean "$W/$fam-ct-np$np" \
            --model "$W/$fam"
    done
    check "$fam np=3 identical to np=1" same_tree "$W/$fam-ct-np1" "$W/$fam-ct-np3"
    check "$fam np=3 sharded: verify --model under mpirun -np 2" \
        nx 2 verify "$W/$fam-ct-np3" --model "$W/$fam"
    check "$fam sharded equals numpy reference" \
        ref_equal "$fam" "$W/$fam-ct-np3" compressed-tensors
    check "$fam inputs unmodified" test "$before" = "$(tree_sums "$W/$fam"; sha256sum "$W/$fam.h5")"
done

# Policies change the config: weight-only (input_activations null, no input_global_scale),
# no KV cache (kv_cache_scheme null, no k_scale/v_scale), exclusions (exact ignore names).
policy() { # policy NAME FAMILY ARGS...
    local name=$1 fam=$2
    shift 2
    check "$name: export compressed-tensors" nx 2 export --quiet --model "$W/$fam" \
        --calib "$W/$fam.h5" --output "$W/$name-ct" --format compressed-tensors "$@"
    check "$name: export modelopt" nx 2 export --quiet --model "$W/$fam" --calib "$W/$fam.h5" \
        --output "$W/$name-mo" "$@"
    check "$name: equals numpy reference" ref_equal "$fam" "$W/$name-ct" compressed-tensors "$@"
    check "$name: tensor for tensor as the ModelOpt export" \
        same_as_modelopt "$W/$name-mo" "$W/$name-ct"
    verify_ct "$name: verify" "$W/$name-ct" "$W/$fam"
}
policy weight-only qwen3moe --weight-only --kv-cache none
policy exclude deepseek --exclude model.layers.1.self_attn.o_proj --exclude 'model.layers.2.mlp.experts.1.*'
policy experts mixtral --quantize experts

finish
