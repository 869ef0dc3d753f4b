#!/usr/bin/env python3
"""Static checks of the packaging recipes that this machine cannot run (no Spack, no docker).

  check_recipes.py spack launch/spack/package.py CMakeLists.txt
      compiles the recipe, loads it against a stand-in for spack.package that records the
      directives, and checks its variants, dependencies and the CMake options cmake_args()
      gives for each variant combination (options that CMakeLists.txt must define).
  check_recipes.py docker launch/Dockerfile REPO_ROOT
      parses the Dockerfile: known instructions, ARG before use in FROM, stages named before
      COPY --from uses them, build-context sources that exist, every RUN accepted by `sh -n`,
      JSON-form CMD/ENTRYPOINT, and a final stage that installs the nvfp4x .deb.

Prints one line per problem; exit status 1 if there was one.
"""
import json
import re
import subprocess
import sys
import types

PROBLEMS = []


def problem(msg):
    PROBLEMS.append(msg)
    print("problem: " + msg)


# --- Spack ------------------------------------------------------------------------------------

class StandInPackage:
    """What the recipe uses of Spack's CMakePackage, as Spack defines it."""
    run_tests = False

    def __init__(self, variants):
        self.variants = variants

    @staticmethod
    def define(name, value):
        if isinstance(value, bool):
            return "-D%s:BOOL=%s" % (name, "ON" if value else "OFF")
        return "-D%s:STRING=%s" % (name, value)

    def define_from_variant(self, name, variant):
        if variant not in self.variants:
            raise KeyError("define_from_variant: no variant %r" % variant)
        return self.define(name, self.variants[variant])


def spack_module(directives):
    """A spack.package stand-in whose directives append (name, args, kwargs) to directives."""
    mod = types.ModuleType("spack.package")

    def directive(name):
        return lambda *args, **kwargs: directives.append((name, args, kwargs))

    for name in ("version", "variant", "depends_on", "conflicts", "requires", "maintainers",
                 "license", "provides", "patch", "resource"):
        setattr(mod, name, directive(name))
    mod.CMakePackage = StandInPackage
    return mod


def check_spack(recipe, cmakelists):
    source = open(recipe).read()
    try:
        code = compile(source, recipe, "exec")
    except SyntaxError as e:
        problem("%s: %s" % (recipe, e))
        return
    directives = []
    spack = types.ModuleType("spack")
    spack.package = spack_module(directives)
    sys.modules["spack"], sys.modules["spack.package"] = spack, spack.package
    namespace = {"__name__": "nvfp4x_recipe"}
    exec(code, namespace)
    cls = namespace.get("Nvfp4x")
    if cls is None or not issubclass(cls, StandInPackage):
        problem("%s: no class Nvfp4x(CMakePackage)" % recipe)
        return
    variants = {a[0]: k.get("default") for n, a, k in directives if n == "variant"}
    if variants != {"parallel_hdf5": True, "simd": True}:
        problem("variants (name: default) are %r" % variants)
    deps = {(a[0], k.get("when")) for n, a, k in directives if n == "depends_on"}
    for want in (("mpi", None), ("hdf5+mpi", "+parallel_hdf5"), ("hdf5~mpi", "~parallel_hdf5"),
                 ("cjson", None)):
        if want not in deps:
            problem("no depends_on(%r, when=%r)" % want)
    options = set(re.findall(r"option\((\w+)", open(cmakelists).read()))
    options.add("HDF5_PREFER_PARALLEL")  # a plain variable read by CMakeLists.txt
    if "HDF5_PREFER_PARALLEL" not in open(cmakelists).read():
        problem("CMakeLists.txt does not read HDF5_PREFER_PARALLEL")
    for parallel in (True, False):
        for simd in (True, False):
            args = cls({"parallel_hdf5": parallel, "simd": simd}).cmake_args()
            onoff = lambda b: "ON" if b else "OFF"
            for want in ("-DHDF5_PREFER_PARALLEL:BOOL=" + onoff(parallel),
                         "-DNX_SIMD:BOOL=" + onoff(simd)):
                if want not in args:
                    problem("cmake_args() for parallel=%s simd=%s lacks %s: %r"
                            % (parallel, simd, want, args))
            for arg in args:
                name = re.match(r"-D(\w+)", arg).group(1)
                if name not in options and name != "BUILD_TESTING":
                    problem("cmake_args() sets %s, which CMakeLists.txt does not define" % name)


# --- Dockerfile -------------------------------------------------------------------------------

INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
                "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK",
                "SHELL", "MAINTAINER"}


def logical_lines(path):
    """(line number, instruction, arguments): continuations joined, comments dropped."""
    out, buf, start = [], "", 0
    for n, raw in enumerate(open(path), 1):
        line = raw.rstrip("\n")
        if line.lstrip().startswith("#") or (not buf and not line.strip()):
            continue
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((start, word, rest.strip()))
        buf = ""
    if buf:
        problem("%s: ends inside a continued line" % path)
    return out


def check_copy(path, n, args, stages, root):
    flags = re.findall(r"--(\w+)=(\S+)", args)
    words = [w for w in args.split() if not w.startswith("--")]
    if len(words) < 2:
        problem("%s:%d: COPY needs a source and a destination" % (path, n))
        return
    source_stage = dict(flags).get("from")
    if source_stage is not None:
        if source_stage not in stages:
            problem("%s:%d: COPY --from=%s names no earlier stage" % (path, n, source_stage))
        return
    for src in words[:-1]:
        if subprocess.run(["sh", "-c", 'ls -d "$0"/$1 >/dev/null 2>&1', root, src]).returncode:
            problem("%s:%d: COPY source %s is not in the build context" % (path, n, src))


def check_docker(path, root):
    lines = logical_lines(path)
    args_declared, stages, last_stage_lines = set(), set(), []
    seen_from = False
    for n, word, args in lines:
        if word.upper() != word or word not in INSTRUCTIONS:
            problem("%s:%d: unknown instruction %s" % (path, n, word))
            continue
        if not seen_from and word not in ("ARG", "FROM"):
            problem("%s:%d: %s before the first FROM" % (path, n, word))
        if word == "ARG":
            args_declared.add(args.split("=")[0])
        elif word == "FROM":
            seen_from = True
            for var in re.findall(r"\$\{?(\w+)", args):
                if var not in args_declared:
                    problem("%s:%d: FROM uses undeclared ARG %s" % (path, n, var))
            m = re.match(r"\S+\s+AS\s+(\S+)$", args, re.IGNORECASE)
            if m:
                stages.add(m.group(1))
            last_stage_lines = []
        elif word == "COPY":
            check_copy(path, n, args, stages, root)
        elif word == "RUN" and not args.startswith("["):
            r = subprocess.run(["sh", "-n", "-c", args], capture_output=True, text=True)
            if r.returncode:
                problem("%s:%d: RUN is not valid sh: %s" % (path, n, r.stderr.strip()))
        elif word in ("CMD", "ENTRYPOINT") and args.startswith("["):
            try:
                value = json.loads(args)
                assert all(isinstance(v, str) for v in value)
            except (ValueError, AssertionError):
                problem("%s:%d: %s is not a JSON list of strings" % (path, n, word))
        last_stage_lines.append((word, args))
    if not seen_from:
        problem("%s: no FROM" % path)
    final = " ".join(a for w, a in last_stage_lines if w == "RUN")
    if not re.search(r"apt-get install .*nvfp4x_\*\.deb", final):
        problem("%s: the final stage does not apt-get install the nvfp4x .deb" % path)


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in ("spack", "docker"):
        sys.exit(__doc__)
    if sys.argv[1] == "spack":
        check_spack(sys.argv[2], sys.argv[3])
    else:
        check_docker(sys.argv[2], sys.argv[3])
    print("%s: %d problems" % (sys.argv[2], len(PROBLEMS)))
    sys.exit(1 if PROBLEMS else 0)


if __name__ == "__main__":
    main()
