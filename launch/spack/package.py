# Spack recipe for nvfp4x (docs/cluster.md, "Installing on a cluster"), for Spack 0.22 or later
# (1.x included). Put it into a package repository of the site's own and build from a checkout
# of this source tree with `spack develop`:
#
#   spack repo create ~/spack-site site    # prints "spack repo add REPO": REPO is its directory
#   mkdir -p REPO/packages/nvfp4x && cp launch/spack/package.py REPO/packages/nvfp4x/
#   spack repo add REPO
#   spack env create -d ~/nvfp4x-env && spack -e ~/nvfp4x-env add nvfp4x@0.1.0 +parallel_hdf5
#   spack -e ~/nvfp4x-env develop -p $PWD nvfp4x@0.1.0 && spack -e ~/nvfp4x-env install
#
# Variants: +parallel_hdf5 (default) reads the calibration file collectively through MPI-IO
# with hdf5+mpi; ~parallel_hdf5 builds against hdf5~mpi, where rank 0 reads the statistics.
# ~simd leaves out the AVX2/AVX-512 kernels (same output, slower; for compilers without x86
# intrinsics, or to rule them out when debugging).
from spack.package import *

try:  # Spack 1.x: the build systems moved to the builtin package repository
    from spack_repo.builtin.build_systems.cmake import CMakePackage
except ImportError:  # Spack 0.2x: spack.package exports CMakePackage
    pass


class Nvfp4x(CMakePackage):
    """Exports Hugging Face Mixture-of-Experts checkpoints plus ModelOpt calibration statistics
    to NVFP4 checkpoints in ModelOpt's unified layout (vLLM, SGLang, TensorRT-LLM), as one MPI
    program on CPU nodes."""

    # No public release archive: `spack develop` points Spack at a source checkout.
    version("0.1.0")

    variant("parallel_hdf5", default=True,
            description="Read the calibration file with parallel HDF5 (hdf5+mpi)")
    variant("simd", default=True,
            description="Compile the AVX2 and AVX-512 kernels (chosen at run time)")

    depends_on("c", type="build")
    depends_on("cmake@3.18:", type="build")
    depends_on("pkgconfig", type="build")
    depends_on("mpi")
    depends_on("hdf5+mpi", when="+parallel_hdf5")
    depends_on("hdf5~mpi", when="~parallel_hdf5")
    depends_on("cjson")
    depends_on("zlib-api")

    def cmake_args(self):
        return [
            self.define_from_variant("HDF5_PREFER_PARALLEL", "parallel_hdf5"),
            self.define_from_variant("NX_SIMD", "simd"),
            # Other compilers warn about other things; the project's CI builds with -Werror.
            self.define("NX_WERROR", False),
            self.define("BUILD_TESTING", self.run_tests),
        ]
