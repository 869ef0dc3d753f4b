#!/usr/bin/env bash
# Ownership is per tensor: a fused group and a MoE layer get split across ranks, and the result
# still equals the single-rank export byte for byte (the amax sync unifies them).
source "$(dirname "$0")/lib.sh"
W=$(work_dir split)
gen deepseek "$W"

# owners NP: "rank tensor" lines of the plan for NP ranks
owners() {
    "$NX_BIN" plan --quiet --model "$W/deepseek" --calib "$W/deepseek.h5" --ranks "$1" --owners |
        awk '/^owners/ { on = 1; next } on && $3 == "quantized" { print $1, $2 }'
}

# splits NP KIND: does the plan for NP ranks put a fused pair (KIND=fused: gate_proj/up_proj of
# one expert or MLP, or MLA q_a_proj and kv_a_proj_with_mqa) or one MoE layer's experts
# (KIND=layer) on two ranks?
splits() {
    owners "$1" >"$W/owners-$1"
    "$NX_PYTHON" - "$W/owners-$1" "$2" >&2 <<'PY'
import re, sys
rank = dict((name, int(r)) for r, name in (line.split() for line in open(sys.argv[1])))
def fused_split():
    for name, r in rank.items():
        for a, b in (("gate_proj", "up_proj"), ("q_a_proj", "kv_a_proj_with_mqa")):
            if name.endswith(a + ".weight"):
                other = name[: -len(a + ".weight")] + b + ".weight"
                if other in rank and rank[other] != r:
                    print("fused group split:", name, "on rank", r, other, "on rank", rank[other])
                    return True
    return False
def layer_split():
    layers = {}
    for name, r in rank.items():
        m = re.match(r"(.*\.mlp)\.experts\.\d+\.", name)
        if m:
            layers.setdefault(m.group(1), set()).add(r)
    for layer, ranks in layers.items():
        if len(ranks) > 1:
            print("MoE layer split:", layer, "on ranks", sorted(ranks))
            return True
    return False
sys.exit(0 if (fused_split() if sys.argv[2] == "fused" else layer_split()) else 1)
PY
}

first_np() { # first_np KIND: the smallest rank count whose plan splits KIND
    for n in 2 3 4 5 6 7 8; do
        if splits "$n" "$1"; then echo "$n"; return 0; fi
    done
    return 1
}

np_fused=$(first_np fused) || np_fused=""
np_layer=$(first_np layer) || np_layer=""
check "a plan splits a fused group across ranks (np=$np_fused)" test -n "$np_fused"
check "a plan splits a MoE layer across ranks (np=$np_layer)" test -n "$np_layer"
check "export on 1 rank" nx 1 export --quiet --model "$W/deepseek" --calib "$W/deepseek.h5" \
    --output "$W/np1"
for np in $np_fused $np_layer; do
    [ -e "$W/np$np" ] && continue
    check "export on $np ranks" nx "$np" export --quiet --model "$W/deepseek" \
        --calib "$W/deepseek.h5" --output "$W/np$np"
    check "split export on $np ranks identical to one rank" \
        diff <(tree_sums "$W/np1") <(tree_sums "$W/np$np")
done
# Weights the amax pass read are kept in memory for quantization with a budget, read again
# without one (the default): same bytes either way.
check "export keeping amax-pass tensors (--mem-budget 64MB)" nx 2 export --quiet \
    --model "$W/deepseek" --calib "$W/deepseek.h5" --output "$W/kept" --mem-budget 64MB
check "kept export identical to the default" diff <(tree_sums "$W/np1") <(tree_sums "$W/kept")
finish
