/* Command line: parses arguments and runs one subcommand. Only this file prints errors. */
#include <getopt.h>
#include <mpi.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nvfp4x/export.h"
#include "nvfp4x/util.h"
#include "nvfp4x/verify.h"
#include "nvfp4x/version.h"

#define MAX_EXCLUDES 256

static const char usage_text[] =
    "usage:\n"
    "  mpirun -np N nvfp4x export --model SRC --output DST [--calib CALIB.h5] [options]\n"
    "  [mpirun -np N] nvfp4x verify DST [--model SRC [--report FILE.h5]] [--json]\n"
    "  nvfp4x plan --model SRC [--calib CALIB.h5] [--ranks N] [options]\n"
    "  nvfp4x --help | --version\n"
    "\n"
    "Exports a Hugging Face checkpoint plus ModelOpt calibration statistics to an NVFP4\n"
    "checkpoint in ModelOpt's unified layout (vLLM, SGLang, TensorRT-LLM). Runs on one\n"
    "process or under mpirun/srun; the output is the same for any number of ranks.\n"
    "\n"
    "export and plan options:\n"
    "  --model DIR            source model directory (config.json + safetensors): BF16,\n"
    "                         F16, F32, FP8, compressed-tensors INT4 pack-quantized,\n"
    "                         gpt-oss's MXFP4 experts, or DeepSeek-V4's release (FP8 +\n"
    "                         MXFP4 experts)\n"
    "  --output DIR           output directory; must not exist (see --force)\n"
    "  --calib FILE           calibration statistics (HDF5); required unless --weight-only\n"
    "  --numerics gpu|cpu     reproduce ModelOpt exports made on GPU (default) or CPU\n"
    "                         (DeepSeek-V4: default cpu, as ModelOpt's script runs)\n"
    "  --cast-mxfp4           MXFP4 experts (gpt-oss's fused experts, DeepSeek-V4's routed\n"
    "                         experts): cast to NVFP4 in closed form (ModelOpt's\n"
    "                         --cast_mxfp4_to_nvfp4: weight_scale_2 = 2^(k_max-8), the\n"
    "                         source nibbles kept) instead of quantizing their decode\n"
    "  --weight-calib max|mse weight block scales from the weight amax (max, default) or\n"
    "                         from ModelOpt's MSE FP8-scale sweep computed here (mse: static\n"
    "                         NVFP4, nvfp4_w4a4_weight_mse_fp8_sweep; weight amax in the\n"
    "                         calibration file are then ignored)\n"
    "  --quantize all|mlp|experts  which linears, as ModelOpt selects them: every linear\n"
    "                         (default, nvfp4), *mlp*|*block_sparse_moe*|*.experts.*\n"
    "                         (nvfp4_mlp_only), *mlp.experts*|*block_sparse_moe*|*.experts.*\n"
    "                         (nvfp4_experts_only); routers, lm_head, embeddings, MTP and\n"
    "                         the other never-quantized patterns stay BF16 (README)\n"
    "  --exclude GLOB         leave matching modules unquantized (repeatable; '*' spans dots)\n"
    "  --weight-only          W4A16_NVFP4: no input scales, calibration optional\n"
    "  --kv-cache auto|fp8|none  FP8 KV-cache scales (auto: fp8 when the calibration has\n"
    "                         k/v amax for every attention layer)\n"
    "  --format modelopt|compressed-tensors  ModelOpt's unified layout (default) or\n"
    "                         llm-compressor's nvfp4-pack-quantized\n"
    "  --max-shard-size SIZE  largest output shard, e.g. 10GB (default), 500MB, 4GiB\n"
    "  --threads N            quantization threads per rank (default: the rank's cores)\n"
    "  --mem-budget SIZE      memory per rank for keeping tensors the amax pass read until\n"
    "                         they are quantized (default 0: read them again, from the page\n"
    "                         cache; set it when a second read would go to slow storage)\n"
    "  --report FILE.h5       export: per quantized tensor error statistics, saturated and\n"
    "                         zero blocks, code histogram and fallbacks (docs/report.md)\n"
    "  --resume               continue an interrupted export from OUTPUT.nvfp4x-staging,\n"
    "                         reusing pieces whose checksums match its journal\n"
    "  --force                replace an existing output or discard a staging directory\n"
    "  --no-fsync             do not fsync the shards before the final rename (faster on\n"
    "                         slow disks; a process crash stays safe, an OS crash may not)\n"
    "  --quiet                no progress output\n"
    "  --ranks N              plan: ranks to plan for (default: the MPI size)\n"
    "  --owners               plan: list every source tensor with its rank and shard\n"
    "verify options:\n"
    "  --model DIR            also check shapes and exact re-encoding against the source\n"
    "  --report FILE.h5       with --model: reconstruction error, saturated and zero blocks\n"
    "                         and code histogram of every quantized tensor (docs/report.md)\n"
    "  --weight-calib mse     with --model: also check that the block scales are the MSE\n"
    "                         sweep's choice (--numerics gpu|cpu as exported), on a sample\n"
    "                         of blocks of every module\n"
    "  --full                 with --weight-calib mse: every block, not a sample\n"
    "  --json                 violations as JSON lines\n"
    "\n"
    "--version prints the version, the MPI, HDF5 and cJSON libraries and the NVFP4 kernels\n"
    "of this build. Manual: man nvfp4x.\n"
    "\n"
    "Exit status: 0 success, 1 I/O or MPI failure (export: also an output that failed the\n"
    "check before publishing; verify: rule violations), 2 bad input or usage.\n";

enum { OPT_MODEL = 256, OPT_OUTPUT, OPT_CALIB, OPT_NUMERICS, OPT_QUANTIZE, OPT_EXCLUDE,
       OPT_WEIGHT_ONLY, OPT_KV, OPT_SHARD, OPT_THREADS, OPT_FORCE, OPT_QUIET, OPT_RANKS,
       OPT_JSON, OPT_HELP, OPT_VERSION, OPT_MEM, OPT_OWNERS, OPT_RESUME, OPT_FORMAT,
       OPT_NO_FSYNC, OPT_CAST_MXFP4,
       OPT_REPORT, OPT_WEIGHT_CALIB, OPT_FULL };

static const struct option long_opts[] = {
    { "model", required_argument, 0, OPT_MODEL },
    { "output", required_argument, 0, OPT_OUTPUT },
    { "calib", required_argument, 0, OPT_CALIB },
    { "numerics", required_argument, 0, OPT_NUMERICS },
    { "quantize", required_argument, 0, OPT_QUANTIZE },
    { "exclude", required_argument, 0, OPT_EXCLUDE },
    { "weight-only", no_argument, 0, OPT_WEIGHT_ONLY },
    { "cast-mxfp4", no_argument, 0, OPT_CAST_MXFP4 },
    { "kv-cache", required_argument, 0, OPT_KV },
    { "max-shard-size", required_argument, 0, OPT_SHARD },
    { "threads", required_argument, 0, OPT_THREADS },
    { "force", no_argument, 0, OPT_FORCE },
    { "quiet", no_argument, 0, OPT_QUIET },
    { "ranks", required_argument, 0, OPT_RANKS },
    { "json", no_argument, 0, OPT_JSON },
    { "report", required_argument, 0, OPT_REPORT },
    { "mem-budget", required_argument, 0, OPT_MEM },
    { "owners", no_argument, 0, OPT_OWNERS },
    { "resume", no_argument, 0, OPT_RESUME },
    { "no-fsync", no_argument, 0, OPT_NO_FSYNC },
    { "format", required_argument, 0, OPT_FORMAT },
    { "weight-calib", required_argument, 0, OPT_WEIGHT_CALIB },
    { "full", no_argument, 0, OPT_FULL },
    { "help", no_argument, 0, OPT_HELP },
    { "version", no_argument, 0, OPT_VERSION },
    { 0, 0, 0, 0 },
};

typedef struct cli {
    const char *cmd;
    nx_export_opts x;
    const char *excludes[MAX_EXCLUDES];
    const char *positional;
    int json;
    const char *report; /* verify --report FILE.h5 */
    int full;           /* verify --full */
} cli;

static int pick(const char *arg, const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (strcmp(arg, names[i]) == 0)
            return i;
    return -1;
}

static int parse_int(const char *s, int lo, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < lo || v > 1 << 20)
        return -1;
    *out = (int)v;
    return 0;
}

static int parse_choice(int opt, const char *arg, cli *c, nx_err *e)
{
    static const char *const numerics[] = { "gpu", "cpu" };
    static const char *const policies[] = { "all", "mlp", "experts" };
    static const char *const kv[] = { "auto", "fp8", "none" };
    static const char *const formats[] = { "modelopt", "compressed-tensors" };
    static const char *const calibs[] = { "max", "mse" };
    int v;
    switch (opt) {
    case OPT_WEIGHT_CALIB:
        NX_ERROR_IF((v = pick(arg, calibs, 2)) < 0, e, NX_EINPUT,
                    "--weight-calib: expected max or mse, got '%s'", arg);
        c->x.weight_calib = (nx_weight_calib)v;
        return NX_OK;
    case OPT_FORMAT:
        NX_ERROR_IF((v = pick(arg, formats, 2)) < 0, e, NX_EINPUT,
                    "--format: expected modelopt or compressed-tensors, got '%s'", arg);
        c->x.format = (nx_format)v;
        return NX_OK;
    case OPT_NUMERICS:
        NX_ERROR_IF((v = pick(arg, numerics, 2)) < 0, e, NX_EINPUT,
                    "--numerics: expected gpu or cpu, got '%s'", arg);
        c->x.numerics = v == 0 ? NX_NUMERICS_GPU : NX_NUMERICS_CPU;
        c->x.numerics_given = 1;
        return NX_OK;
    case OPT_QUANTIZE:
        NX_ERROR_IF((v = pick(arg, policies, 3)) < 0, e, NX_EINPUT,
                    "--quantize: expected all, mlp or experts, got '%s'", arg);
        c->x.classify.policy = (nx_policy)v;
        return NX_OK;
    default:
        NX_ERROR_IF((v = pick(arg, kv, 3)) < 0, e, NX_EINPUT,
                    "--kv-cache: expected auto, fp8 or none, got '%s'", arg);
        c->x.kv = (nx_kv_mode)v;
        return NX_OK;
    }
}

static int parse_opt(int opt, const char *arg, cli *c, nx_err *e)
{
    switch (opt) {
    case OPT_MODEL: c->x.model = arg; return NX_OK;
    case OPT_OUTPUT: c->x.output = arg; return NX_OK;
    case OPT_CALIB: c->x.calib = arg; return NX_OK;
    case OPT_WEIGHT_ONLY: c->x.weight_only = 1; return NX_OK;
    case OPT_CAST_MXFP4: c->x.cast_mxfp4 = 1; return NX_OK;
    case OPT_FORCE: c->x.force = 1; return NX_OK;
    case OPT_RESUME: c->x.resume = 1; return NX_OK;
    case OPT_NO_FSYNC: c->x.no_fsync = 1; return NX_OK;
    case OPT_QUIET: c->x.quiet = 1; return NX_OK;
    case OPT_JSON: c->json = 1; return NX_OK;
    case OPT_REPORT: c->report = arg; return NX_OK;
    case OPT_FULL: c->full = 1; return NX_OK;
    case OPT_NUMERICS: case OPT_QUANTIZE: case OPT_KV: case OPT_FORMAT: case OPT_WEIGHT_CALIB:
        return parse_choice(opt, arg, c, e);
    case OPT_EXCLUDE:
        NX_ERROR_IF(c->x.classify.n_exclude >= MAX_EXCLUDES, e, NX_EINPUT,
                    "--exclude: at most %d patterns", MAX_EXCLUDES);
        c->excludes[c->x.classify.n_exclude++] = arg;
        return NX_OK;
    case OPT_SHARD:
        NX_ERROR_IF(nx_parse_size(arg, &c->x.max_shard_bytes) != 0 || c->x.max_shard_bytes == 0,
                    e, NX_EINPUT, "--max-shard-size: expected a size like 10GB or 500MiB, "
                    "got '%s'", arg);
        return NX_OK;
    case OPT_MEM:
        NX_ERROR_IF(nx_parse_size(arg, &c->x.mem_budget) != 0, e, NX_EINPUT,
                    "--mem-budget: expected a size like 2GB, got '%s'", arg);
        return NX_OK;
    case OPT_OWNERS: c->x.plan_owners = 1; return NX_OK;
    case OPT_THREADS:
        NX_ERROR_IF(parse_int(arg, 1, &c->x.threads) != 0, e, NX_EINPUT,
                    "--threads: expected a positive number, got '%s'", arg);
        return NX_OK;
    case OPT_RANKS:
        NX_ERROR_IF(parse_int(arg, 1, &c->x.plan_ranks) != 0, e, NX_EINPUT,
                    "--ranks: expected a positive number, got '%s'", arg);
        return NX_OK;
    default:
        return nx_err_set(e, NX_EINPUT, "unknown option (see nvfp4x --help)");
    }
}

static int parse_args(int argc, char **argv, cli *c, nx_err *e)
{
    c->x.max_shard_bytes = 10000000000ULL;
    c->x.classify.exclude = c->excludes;
    NX_ERROR_IF(argc < 2, e, NX_EINPUT, "no command given (see nvfp4x --help)");
    c->cmd = argv[1];
    if (strcmp(c->cmd, "--help") == 0 || strcmp(c->cmd, "-h") == 0 ||
        strcmp(c->cmd, "--version") == 0)
        return NX_OK;
    NX_ERROR_IF(strcmp(c->cmd, "export") && strcmp(c->cmd, "verify") && strcmp(c->cmd, "plan"),
                e, NX_EINPUT, "unknown command '%s' (expected export, verify or plan)", c->cmd);
    optind = 2;
    opterr = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, "h", long_opts, NULL)) != -1) {
        if (opt == 'h' || opt == OPT_HELP || opt == OPT_VERSION) {
            c->cmd = opt == OPT_VERSION ? "--version" : "--help";
            return NX_OK;
        }
        NX_ERROR_IF(opt == '?', e, NX_EINPUT, "%s: unknown option or missing value: %s",
                    c->cmd, argv[optind - 1]);
        NX_TRY(parse_opt(opt, optarg, c, e));
    }
    if (optind < argc)
        c->positional = argv[optind++];
    NX_ERROR_IF(optind < argc, e, NX_EINPUT, "%s: unexpected argument '%s'", c->cmd,
                argv[optind]);
    return NX_OK;
}

static int check_args(const cli *c, nx_err *e)
{
    if (strcmp(c->cmd, "verify") == 0) {
        NX_ERROR_IF(c->positional == NULL, e, NX_EINPUT, "verify: give the checkpoint "
                    "directory (nvfp4x verify DST)");
        NX_ERROR_IF(c->report && c->x.model == NULL, e, NX_EINPUT, "verify: --report needs "
                    "--model SRC (the statistics compare with the source weights)");
        NX_ERROR_IF(c->x.weight_calib == NX_WEIGHT_CALIB_MSE && c->x.model == NULL, e,
                    NX_EINPUT, "verify: --weight-calib mse needs --model SRC (the sweep is "
                    "re-derived from the source weights)");
        NX_ERROR_IF(c->full && c->x.weight_calib != NX_WEIGHT_CALIB_MSE, e, NX_EINPUT,
                    "verify: --full goes with --weight-calib mse");
        return NX_OK;
    }
    NX_ERROR_IF(c->full, e, NX_EINPUT, "%s: --full is a verify option", c->cmd);
    NX_ERROR_IF(c->report != NULL && strcmp(c->cmd, "export") != 0, e, NX_EINPUT,
                "%s: --report is an export or verify option", c->cmd);
    NX_ERROR_IF(c->positional != NULL, e, NX_EINPUT, "%s: unexpected argument '%s'", c->cmd,
                c->positional);
    NX_ERROR_IF(c->x.model == NULL, e, NX_EINPUT, "%s: --model is required", c->cmd);
    NX_ERROR_IF(strcmp(c->cmd, "export") == 0 && c->x.output == NULL, e, NX_EINPUT,
                "export: --output is required");
    return NX_OK;
}

/* Default threads: the cores this rank may run on, shared with the ranks of its node when
 * the launcher bound none. */
static int default_threads(MPI_Comm comm)
{
    cpu_set_t set;
    int cores = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    MPI_Comm node;
    int local = 1;
    MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    MPI_Comm_size(node, &local);
    MPI_Comm_free(&node);
    if (cores >= online && local > 1)
        cores /= local;
    return cores > 0 ? cores : 1;
}

/* Collective: every rank checks its share; rank 0 prints. */
static int run_verify(const cli *c, int rank, nx_err *e)
{
    nx_verify_opts vo = { .dir = c->positional, .model = c->x.model, .json = c->json,
                          .sweep = c->x.weight_calib == NX_WEIGHT_CALIB_MSE,
                          .numerics = c->x.numerics, .full = c->full };
    nx_verify_result r = { 0 };
    NX_TRY(nx_verify_run_collective(&vo, c->report, MPI_COMM_WORLD, &r, stdout, e));
    if (rank == 0) {
        fprintf(stderr, "nvfp4x verify: %s: %lld tensors, %lld quantized modules, %lld "
                "violation%s", c->positional, (long long)r.n_tensors,
                (long long)r.n_quantized, (long long)r.n_violations,
                r.n_violations == 1 ? "" : "s");
        if (c->x.model)
            fprintf(stderr, ", worst relative RMS error %.4f", r.worst_rel_rms);
        if (c->report)
            fprintf(stderr, ", report %s", c->report);
        fputc('\n', stderr);
    }
    return r.n_violations ? -1 : NX_OK;
}

static int run(cli *c, int rank, nx_err *e)
{
    if (strcmp(c->cmd, "verify") == 0)
        return run_verify(c, rank, e);
    if (c->x.threads == 0)
        c->x.threads = default_threads(MPI_COMM_WORLD);
    if (strcmp(c->cmd, "plan") == 0)
        return nx_plan_run(&c->x, MPI_COMM_WORLD, stdout, e);
    c->x.report = c->report;
    return nx_export_run(&c->x, MPI_COMM_WORLD, e);
}

int main(int argc, char **argv)
{
    /* Past a file size limit, write() should fail with EFBIG (reported), not kill us. */
    signal(SIGXFSZ, SIG_IGN);
    int provided, rank = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    cli c = { 0 };
    nx_err e = { 0 };
    int rc = parse_args(argc, argv, &c, &e);
    if (rc == NX_OK && (strcmp(c.cmd, "--help") == 0 || strcmp(c.cmd, "-h") == 0)) {
        if (rank == 0)
            fputs(usage_text, stdout);
    } else if (rc == NX_OK && strcmp(c.cmd, "--version") == 0) {
        if (rank == 0)
            nx_version_print(stdout);
    } else {
        if (rc == NX_OK)
            rc = check_args(&c, &e);
        if (rc == NX_OK)
            rc = run(&c, rank, &e);
    }
    int status = rc == -1 ? 1 : rc; /* -1: verify found violations */
    if (rc > 0 && rank == 0)
        fprintf(stderr, "nvfp4x: error: %s\n", e.msg);
    MPI_Finalize();
    return status;
}
