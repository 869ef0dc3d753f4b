#!/usr/bin/python3
"""Tests of launch/modelopt_amax_to_h5.py with numpy arrays standing in for torch tensors, and
of its torch-free reader of torch.save files on DeepSeek-V4 calibration dumps (ptq.py's
amax_dict_rank{r}-mp{MP}.pt) written without torch by tests/gen_dsv4.py, and with torch when it
is installed (else that part is skipped with a message)."""

import os
import pickle
import subprocess
import sys
import tempfile
import zipfile

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
BRIDGE_DIR = os.path.join(os.path.dirname(HERE), "launch")
sys.path.insert(0, BRIDGE_DIR)
sys.path.insert(0, HERE)
import modelopt_amax_to_h5 as bridge  # noqa: E402

RESULTS = {"passed": 0, "failed": 0}


def check(name, cond, detail=""):
    if cond:
        RESULTS["passed"] += 1
    else:
        RESULTS["failed"] += 1
        print("FAIL %s %s" % (name, detail))


class FakeTensor:
    """Looks like a torch tensor: .float() then .numpy(), nothing else."""

    def __init__(self, arr, half=False):
        self.arr = np.asarray(arr, dtype=np.float16 if half else np.float32)

    def float(self):
        return FakeTensor(self.arr.astype(np.float32))

    def numpy(self):
        return self.arr


def datasets(path):
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = (obj.dtype, obj.shape, obj[()])
        f.visititems(visit)
    return out


def run(sd, tmp, name):
    path = os.path.join(tmp, name + ".h5")
    n = bridge.write_amax_h5(sd, path)
    return n, datasets(path)


def test_plain_names(tmp):
    sd = {
        "model.layers.0.self_attn.q_proj.input_quantizer._amax": np.array(3.5, np.float64),
        "model.layers.0.self_attn.q_proj.weight_quantizer._amax": FakeTensor(0.25),
        "model.layers.0.self_attn.k_bmm_quantizer._amax": np.array([7.0], np.float32),
        "model.layers.0.self_attn.q_proj.weight": np.ones((4, 16), np.float32),
        "model.layers.0.self_attn.q_proj.input_quantizer._pre_quant_scale": np.ones(16),
        "model.layers.0.mlp.gate_proj.weight_quantizer._amax": FakeTensor(1.5, half=True),
    }
    n, ds = run(sd, tmp, "plain")
    check("plain: count", n == 4 and len(ds) == 4, str(sorted(ds)))
    key = "model/layers/0/self_attn/q_proj/input_quantizer/_amax"
    check("plain: input amax", key in ds and ds[key][0] == np.float32 and ds[key][1] == ()
          and ds[key][2] == np.float32(3.5), str(ds.get(key)))
    key = "model/layers/0/self_attn/k_bmm_quantizer/_amax"
    check("plain: shape [1] kept", key in ds and ds[key][1] == (1,) and ds[key][2][0] == 7.0)
    key = "model/layers/0/mlp/gate_proj/weight_quantizer/_amax"
    check("plain: half tensor via .float()", key in ds and ds[key][0] == np.float32
          and ds[key][2] == np.float32(1.5))
    check("plain: non-amax keys skipped",
          not any(k.endswith(("weight", "_pre_quant_scale")) for k in ds))


def test_fused_names(tmp):
    e = "model.layers.1.mlp.experts"
    sd = {}
    for i in range(3):
        sd["%s.gate_up_proj_weight_quantizers.%d._amax" % (e, i)] = np.array(1.0 + i, np.float32)
        sd["%s.down_proj_weight_quantizers.%d._amax" % (e, i)] = FakeTensor(10.0 + i)
    sd[e + ".gate_up_proj_input_quantizer._amax"] = np.array(5.0, np.float32)
    sd[e + ".down_proj_input_quantizer._amax"] = np.array([6.0], np.float32)
    sd["model.layers.1.mlp.gate.weight"] = np.ones((3, 16), np.float32)
    n, ds = run(sd, tmp, "fused")
    check("fused: count", n == 3 * 3 * 2 and len(ds) == 18, str(sorted(ds)))
    p = "model/layers/1/mlp/experts/%d/%s/%s/_amax"
    for i in range(3):
        for proj in ("gate_proj", "up_proj"):
            w = ds.get(p % (i, proj, "weight_quantizer"))
            check("fused: %d %s weight" % (i, proj), w is not None and w[2] == 1.0 + i, str(w))
            x = ds.get(p % (i, proj, "input_quantizer"))
            check("fused: %d %s input" % (i, proj), x is not None and x[2] == 5.0, str(x))
        w = ds.get(p % (i, "down_proj", "weight_quantizer"))
        check("fused: %d down weight" % i, w is not None and w[2] == 10.0 + i, str(w))
        x = ds.get(p % (i, "down_proj", "input_quantizer"))
        check("fused: %d down input" % i, x is not None and x[1] == (1,) and x[2][0] == 6.0,
              str(x))
    check("fused: no fused names left", not any("_quantizers" in k or "gate_up_proj" in k
                                                for k in ds))


def test_global_amax(tmp):
    e = "model.layers.2.mlp.experts"
    blocks = np.arange(12, dtype=np.float32).reshape(3, 4) / 8
    sd = {
        "%s.gate_up_proj_weight_quantizers.0._amax" % e: blocks,
        "%s.gate_up_proj_weight_quantizers.0._global_amax" % e: np.array(1.25, np.float32),
        "%s.down_proj_weight_quantizers.1._amax" % e: np.array(2.0, np.float32),
        "%s.down_proj_input_quantizer._amax" % e: np.array(4.0, np.float32),
        "model.layers.0.self_attn.o_proj.weight_quantizer._amax": blocks.astype(np.float64),
        "model.layers.0.self_attn.o_proj.weight_quantizer._global_amax": np.array(1.5),
    }
    n, ds = run(sd, tmp, "global")
    for half, proj in enumerate(("gate_proj", "up_proj")):
        base = "model/layers/2/mlp/experts/0/%s/weight_quantizer/" % proj
        g = ds.get(base + "_global_amax")
        check("global: fused %s" % proj, g is not None and g[2] == np.float32(1.25), str(g))
        b = ds.get(base + "_amax")  # gate: the first half of the rows, up: the second
        check("global: fused %s blocks" % proj, b is not None and b[1] == (6,)
              and np.array_equal(b[2], blocks.reshape(-1)[6 * half:6 * half + 6]), str(b))
    # two experts counted from the down_proj weight quantizers (indices 0..1)
    for i in range(2):
        x = ds.get("model/layers/2/mlp/experts/%d/down_proj/input_quantizer/_amax" % i)
        check("global: down input expert %d" % i, x is not None and x[2] == 4.0, str(x))
    g = ds.get("model/layers/0/self_attn/o_proj/weight_quantizer/_global_amax")
    check("global: plain", g is not None and g[0] == np.float32 and g[2] == 1.5, str(g))
    b = ds.get("model/layers/0/self_attn/o_proj/weight_quantizer/_amax")
    check("global: plain blocks float32", b is not None and b[0] == np.float32, str(b))


def test_bmm_names(tmp):
    """Llama-4 / gpt-oss: one quantizer per projection for all experts, written unchanged."""
    e = "model.layers.0.mlp.experts"
    blocks = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    sd = {
        e + ".gate_up_proj_weight_quantizer._amax": np.array(2.5, np.float32),
        e + ".gate_up_proj_input_quantizer._amax": np.array(7.0, np.float32),
        e + ".down_proj_weight_quantizer._amax": blocks,
        e + ".down_proj_weight_quantizer._global_amax": np.array(23.0, np.float32),
        e + ".down_proj_input_quantizer._amax": FakeTensor(3.0),
    }
    n, ds = run(sd, tmp, "bmm")
    p = "model/layers/0/mlp/experts/"
    check("bmm: count", n == 5 and len(ds) == 5, str(sorted(ds)))
    check("bmm: weight amax", ds.get(p + "gate_up_proj_weight_quantizer/_amax", [0, 0, 0])[2]
          == 2.5, str(sorted(ds)))
    check("bmm: input amax", ds.get(p + "gate_up_proj_input_quantizer/_amax", [0, 0, 0])[2]
          == 7.0)
    check("bmm: static blocks kept whole", p + "down_proj_weight_quantizer/_amax" in ds and
          ds[p + "down_proj_weight_quantizer/_amax"][1] == (2, 3, 4))
    check("bmm: no per-expert names", not any("/0/" in k.replace(p, "") for k in ds))


def test_errors(tmp):
    e = "model.layers.1.mlp.experts"
    try:
        bridge.write_amax_h5({e + ".down_proj_input_quantizer._amax": np.array(1.0)},
                             os.path.join(tmp, "e1.h5"))
        check("errors: input without weight quantizers refused", False)
    except ValueError as exc:
        check("errors: input without weight quantizers refused", e in str(exc), str(exc))
    sd = {e + ".gate_up_proj_weight_quantizers.0._amax": np.array(1.0),
          e + ".0.gate_proj.weight_quantizer._amax": np.array(2.0)}
    try:
        bridge.write_amax_h5(sd, os.path.join(tmp, "e2.h5"))
        check("errors: conflicting duplicate refused", False)
    except ValueError as exc:
        check("errors: conflicting duplicate refused", "gate_proj" in str(exc), str(exc))


def test_cli(tmp):
    """CLI on a directory of safetensors (written by the fixture writer)."""
    import gen_checkpoint
    d = os.path.join(tmp, "sd")
    os.makedirs(d)
    bf16 = gen_checkpoint.f32_to_bf16_bits(np.array([3.0], np.float32)).tobytes()
    gen_checkpoint.write_safetensors(os.path.join(d, "a.safetensors"), {
        "model.layers.0.self_attn.v_proj.input_quantizer._amax": ("F32", [], np.float32(2.5).tobytes()),
        "model.layers.0.self_attn.v_proj.weight": ("F32", [1, 2], np.zeros(2, np.float32).tobytes()),
        "model.layers.0.mlp.experts.gate_up_proj_weight_quantizers.0._amax": ("BF16", [1], bf16),
    })
    out = os.path.join(tmp, "cli.h5")
    r = subprocess.run([sys.executable, os.path.join(BRIDGE_DIR, "modelopt_amax_to_h5.py"), d, out],
                       capture_output=True, text=True)
    check("cli: exit 0", r.returncode == 0, r.stderr)
    ds = datasets(out) if r.returncode == 0 else {}
    check("cli: datasets", sorted(ds) == [
        "model/layers/0/mlp/experts/0/gate_proj/weight_quantizer/_amax",
        "model/layers/0/mlp/experts/0/up_proj/weight_quantizer/_amax",
        "model/layers/0/self_attn/v_proj/input_quantizer/_amax"], str(sorted(ds)))
    check("cli: bf16 value", ds and ds["model/layers/0/mlp/experts/0/up_proj/weight_quantizer/_amax"][2][0] == 3.0)
    r = subprocess.run([sys.executable, os.path.join(BRIDGE_DIR, "modelopt_amax_to_h5.py"), "--help"],
                       capture_output=True, text=True)
    check("cli: --help", r.returncode == 0 and "STATE_DICT" in r.stdout, r.stderr)


def dsv4_values(offset=0.0):
    """A small V4 calibration: two experts of two main layers, every key ptq.py writes."""
    out = {}
    for layer in range(2):
        for e in range(2):
            for proj in ("w1", "w2", "w3"):
                for which in ("weight", "input"):
                    key = "layers.%d.ffn.experts.%d.%s_%s_quantizer._amax" % (layer, e, proj, which)
                    out[key] = np.float32(0.5 + layer + e / 4 + int(proj[1]) / 16 + offset +
                                          (which == "input"))
    return out


def write_dumps(d, ranks, writer):
    """ranks: [values dict per rank] -> amax_dict_rank<r>-mp<N>.pt files in d."""
    os.makedirs(d)
    for r, values in enumerate(ranks):
        writer(os.path.join(d, "amax_dict_rank%d-mp%d.pt" % (r, len(ranks))), values)


def split_by_expert(values, mp):
    ranks = [dict() for _ in range(mp)]
    for k, v in values.items():
        ranks[int(k.split(".")[4]) % mp][k] = v
    return ranks


def check_dump_conversion(tmp, tag, writer):
    values = dsv4_values()
    d = os.path.join(tmp, tag + "-dumps")
    write_dumps(d, split_by_expert(values, 2), writer)
    out = os.path.join(tmp, tag + ".h5")
    n = bridge.write_amax_h5(bridge.load_state_dict(d), out)
    ds = datasets(out)
    check("%s: dumps converted, one dataset per key" % tag, n == len(values) == len(ds), str(n))
    ok = True
    for key, v in values.items():
        expert, leaf = key[:-len("._amax")].rsplit(".", 1)
        proj, quantizer = leaf.split("_", 1)
        path = "%s/%s/%s/_amax" % (expert.replace(".", "/"), proj, quantizer)
        got = ds.get(path)
        ok &= got is not None and got[0] == np.float32 and float(got[2]) == float(v)
    check("%s: <expert>/wX/<which>_quantizer/_amax with the dumped values" % tag, ok)
    bad = os.path.join(tmp, tag + "-collide")
    ranks = split_by_expert(values, 2)
    key = sorted(ranks[0])[0]
    ranks[1][key] = np.float32(99.0)
    write_dumps(bad, ranks, writer)
    try:
        bridge.load_state_dict(bad)
        check("%s: colliding pair refused" % tag, False)
    except ValueError as exc:
        check("%s: colliding pair refused" % tag, "collision" in str(exc) and key in str(exc),
              str(exc))


def test_dsv4_dumps_torch_free(tmp):
    """Dumps written without torch (the fixture writer), read without torch."""
    import gen_dsv4
    if "torch" in sys.modules:
        print("skipped: the torch-free fixture writer (torch is loaded in this process)")
        return
    check_dump_conversion(tmp, "torch-free", gen_dsv4.write_torch_dump)
    one = os.path.join(tmp, "one.pt")
    gen_dsv4.write_torch_dump(one, {"a": 1.5, "b": 2.25})
    sd = bridge.read_torch_file(one)
    check("reader: values and 0-d shapes", sorted(sd) == ["a", "b"] and sd["a"].shape == ()
          and sd["a"].dtype == np.float32 and float(sd["b"]) == 2.25, repr(sd))


def test_dsv4_dumps_torch(tmp):
    """Dumps written by torch.save itself, when torch is installed."""
    try:
        import torch
    except ImportError:
        print("skipped: torch is not installed (dumps written by torch.save are not tested; "
              "the torch-free fixture is)")
        return

    def writer(path, values):
        torch.save({k: torch.tensor(float(v), dtype=torch.float32) for k, v in values.items()},
                   path)
    check_dump_conversion(tmp, "torch", writer)
    bf = os.path.join(tmp, "bf16.pt")
    torch.save({"x": torch.tensor([1.5, -2.0], dtype=torch.bfloat16)[1:]}, bf)
    sd = bridge.read_torch_file(bf)
    check("reader: a bf16 view of a storage", sd["x"].shape == (1,) and float(sd["x"][0]) == -2.0,
          repr(sd))


def test_dsv4_refusals(tmp):
    import gen_dsv4
    if "torch" in sys.modules:
        return
    values = dsv4_values()
    cases = {
        "missing-rank": ([split_by_expert(values, 3)[0], split_by_expert(values, 3)[2]], 3,
                         "missing rank 1"),
        "two-runs": (None, 0, "several runs"),
        "bad-key": ([{"layers.0.ffn.shared_experts.w1_input_quantizer._amax": 1.0}], 1,
                    "unexpected key"),
    }
    for name, (ranks, mp, want) in cases.items():
        d = os.path.join(tmp, "refuse-" + name)
        os.makedirs(d)
        if name == "missing-rank":
            for r, v in zip((0, 2), ranks):
                gen_dsv4.write_torch_dump(os.path.join(d, "amax_dict_rank%d-mp%d.pt" % (r, mp)), v)
        elif name == "two-runs":
            gen_dsv4.write_torch_dump(os.path.join(d, "amax_dict_rank0-mp1.pt"), values)
            gen_dsv4.write_torch_dump(os.path.join(d, "amax_dict_rank0-mp2.pt"), values)
        else:
            gen_dsv4.write_torch_dump(os.path.join(d, "amax_dict_rank0-mp1.pt"), ranks[0])
        try:
            bridge.load_state_dict(d)
            check("refused: %s" % name, False)
        except ValueError as exc:
            check("refused: %s" % name, want in str(exc), str(exc))
    evil = os.path.join(tmp, "evil.pt")
    gen_dsv4.write_torch_dump(evil, {"a": 1.0})
    with zipfile.ZipFile(evil) as z:
        records = {n: z.read(n) for n in z.namelist()}
    records["evil/data.pkl"] = pickle.dumps({"a": os.system}, protocol=2)
    with zipfile.ZipFile(evil, "w") as z:
        for n, data in records.items():
            z.writestr(n, data)
    try:
        bridge.read_torch_file(evil)
        check("refused: a pickle naming anything but tensors", False)
    except bridge.UnsupportedPickle as exc:
        check("refused: a pickle naming anything but tensors", "only torch can load" in str(exc),
              str(exc))


def test_dsv4_cli(tmp):
    import gen_dsv4
    if "torch" in sys.modules:
        return
    d = os.path.join(tmp, "cli-dumps")
    write_dumps(d, split_by_expert(dsv4_values(), 3), gen_dsv4.write_torch_dump)
    out = os.path.join(tmp, "cli-dsv4.h5")
    r = subprocess.run([sys.executable, os.path.join(BRIDGE_DIR, "modelopt_amax_to_h5.py"), d, out],
                       capture_output=True, text=True)
    check("dsv4 cli: exit 0, 24 datasets", r.returncode == 0 and "24 datasets" in r.stdout,
          r.stdout + r.stderr)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        for test in (test_plain_names, test_fused_names, test_global_amax, test_bmm_names,
                     test_errors, test_cli, test_dsv4_dumps_torch_free, test_dsv4_dumps_torch,
                     test_dsv4_refusals, test_dsv4_cli):
            try:
                test(tmp)
            except Exception as exc:  # a crash counts as one failure, the rest still run
                check(test.__name__, False, "raised %r" % exc)
    print("%d passed, %d failed" % (RESULTS["passed"], RESULTS["failed"]))
    return 1 if RESULTS["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
