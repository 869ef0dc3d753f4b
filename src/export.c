/* Orchestrates the phases; each ends with every rank agreeing on success. */
#include "nvfp4x/export.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "nvfp4x/assemble.h"
#include "nvfp4x/catalog.h"
#include "nvfp4x/comm.h"
#include "nvfp4x/family_dsv4.h"
#include "nvfp4x/journal.h"
#include "nvfp4x/plan.h"
#include "nvfp4x/staging.h"
#include "nvfp4x/stats.h"
#include "nvfp4x/sync.h"
#include "nvfp4x/util.h"
#include "nvfp4x/writer.h"

typedef struct pipeline {
    const nx_export_opts *o;
    MPI_Comm comm;
    int rank, size;
    nx_catalog cat;
    nx_classes cls;
    nx_stats stats;
    nx_plan plan;
    nx_amax amax;
    nx_mse mse;      /* --weight-calib mse */
    nx_source src;
    nx_calib *calib; /* collective: every rank, until the end; serial: rank 0 in phase 3 */
    nx_numerics numerics; /* --numerics, or the source family's default */
    int kv_fp8;
    char *staging;   /* rank 0, once the staging directory is ours */
    int resumed;
    int check_failed; /* rank 0: the pre-commit check failed; staging stays for inspection */
    double t0;       /* start, for the elapsed time in messages */
} pipeline;

static void say(const pipeline *pl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(const pipeline *pl, const char *fmt, ...)
{
    if (pl->o->quiet || pl->rank != 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "nvfp4x: [%6.2fs] ", MPI_Wtime() - pl->t0);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* --weight-calib mse sweeps 2-D linears; fused BMM experts (fused.h: Llama-4, gpt-oss) are
 * quantized transposed in pieces, which the sweep does not read, and --cast-mxfp4 sets their
 * block scales in closed form. Both are refused rather than guessed at. */
static int check_sweepable(const pipeline *pl, nx_err *e)
{
    if (pl->o->weight_calib != NX_WEIGHT_CALIB_MSE)
        return NX_OK;
    NX_ERROR_IF(pl->o->cast_mxfp4, e, NX_EINPUT, "--cast-mxfp4 and --weight-calib mse both set "
                "the static block scales; choose one");
    for (int64_t i = 0; i < pl->cls.n_q; i++) {
        const nx_fused *f = nx_catalog_fused(&pl->cat, pl->cls.q[i].tensor);
        NX_ERROR_IF(f != NULL, e, NX_EINPUT, "--weight-calib mse: %s is a fused-expert "
                    "projection, which the MSE sweep does not support; leave it unquantized "
                    "(--exclude '%s') or use --weight-calib max", f->name, f->module);
    }
    return NX_OK;
}

/* --cast-mxfp4 needs MXFP4 weights to cast among the quantized modules: gpt-oss's fused
 * experts or DeepSeek-V4's routed experts. */
static int check_cast(const pipeline *pl, nx_err *e)
{
    for (int64_t i = 0; pl->o->cast_mxfp4 && i < pl->cls.n_q; i++)
        if (pl->cat.t[pl->cls.q[i].tensor].codec == NX_CODEC_MXFP4)
            return NX_OK;
    NX_ERROR_IF(pl->o->cast_mxfp4, e, NX_EINPUT, "--cast-mxfp4: %s has no quantized MXFP4 "
                "weights to cast (it reads gpt-oss's fused experts and DeepSeek-V4's routed "
                "experts)", pl->cat.dir);
    return NX_OK;
}

/* What becomes of the encoded weights, after their count in messages. */
static const char *encoding_note(const nx_catalog *c)
{
    if (c->n_encoded == 0)
        return "";
    return c->dsv4 ? " (decoded on read where quantized, else copied as stored)"
                   : " decoded to BF16 on read";
}

/* Phases 1-2: catalog on rank 0, broadcast; classification on every rank. */
static int phase_catalog(pipeline *pl, nx_err *e)
{
    NX_TRY(nx_catalog_load_bcast(pl->o->model, &pl->cat, pl->comm, e));
    char total[32];
    nx_format_bytes(pl->cat.total_bytes, total, sizeof total);
    say(pl, "catalog: %lld tensors in %d files, %s (%s, %lld layers, %lld experts per MoE "
        "layer)", (long long)pl->cat.n, pl->cat.n_files, total,
        pl->cat.model_type[0] ? pl->cat.model_type : "unknown model type",
        (long long)pl->cat.num_hidden_layers, (long long)pl->cat.num_experts);
    say(pl, "source encoding: %s; %lld encoded weights%s", pl->cat.encoding,
        (long long)pl->cat.n_encoded, encoding_note(&pl->cat));
    const nx_export_opts *o = pl->o;
    /* DeepSeek-V4: ModelOpt's script runs on the CPU unless told otherwise. */
    pl->numerics = o->numerics_given || !pl->cat.dsv4 ? o->numerics : NX_NUMERICS_CPU;
    nx_dsv4_opts dopts = { .weight_only = o->weight_only,
                           .ct_format = o->format == NX_FORMAT_COMPRESSED_TENSORS,
                           .kv_fp8 = o->kv == NX_KV_FP8,
                           .mse = o->weight_calib == NX_WEIGHT_CALIB_MSE };
    NX_TRY(nx_dsv4_check_options(pl->cat.dsv4, &dopts, e));
    if (pl->cat.n_fused > 0)
        say(pl, "fused experts: %lld projections exported fused [E, in/2, out]",
            (long long)pl->cat.n_fused);
    FILE *warn = pl->rank == 0 && !pl->o->quiet ? stderr : NULL;
    int rc = nx_classify(&pl->cat, &pl->o->classify, &pl->cls, warn, e);
    NX_TRY(nx_agree(rc, e, pl->comm));
    NX_TRY(check_sweepable(pl, e)); /* the same decisions on every rank */
    NX_TRY(check_cast(pl, e));
    say(pl, "classify: %lld quantized linears in %lld fused groups, %lld MoE expert slots, "
        "%lld modules excluded (%lld exclude patterns)", (long long)pl->cls.n_q,
        (long long)pl->cls.n_groups, (long long)pl->cls.n_slots,
        (long long)pl->cls.n_excluded, (long long)pl->cls.n_patterns);
    return NX_OK;
}

/* Parallel HDF5: all ranks open the file together and keep it for phase 6. Serial HDF5:
 * rank 0 reads and broadcasts; owners of static modules open it themselves later. */
static int open_calib(pipeline *pl, nx_err *e)
{
    if (pl->o->calib == NULL)
        return NX_OK;
    int rc = nx_calib_open_collective(pl->o->calib, pl->comm, &pl->calib, e);
    if (rc == NX_OK && pl->calib == NULL && pl->rank == 0)
        rc = nx_calib_open(pl->o->calib, &pl->calib, e);
    return nx_agree(rc, e, pl->comm);
}

static void close_calib(pipeline *pl, int collective)
{
    if (nx_calib_is_collective(pl->calib) == collective) {
        nx_calib_close(pl->calib);
        pl->calib = NULL;
    }
}

/* Phase 3: statistics, and whether KV-cache scales are written. */
static int phase_calib(pipeline *pl, nx_err *e)
{
    const nx_export_opts *o = pl->o;
    NX_ERROR_IF(o->calib == NULL && !o->weight_only, e, NX_EINPUT,
                "--calib is required (activation scales come from calibration) unless "
                "--weight-only");
    NX_TRY(open_calib(pl, e));
    int rc = nx_stats_gather(pl->calib, &pl->cat, &pl->cls, &pl->stats, pl->comm, e);
    close_calib(pl, 0);
    NX_TRY(rc);
    int64_t ignored = o->weight_calib == NX_WEIGHT_CALIB_MSE ? nx_stats_drop_weight(&pl->stats)
                                                              : 0;
    if (ignored)
        say(pl, "--weight-calib mse: the weight amax of %lld modules in %s is ignored; the "
            "sweep computes every global amax from the weights", (long long)ignored, o->calib);
    NX_ERROR_IF(o->kv == NX_KV_FP8 && !pl->stats.has_kv, e, NX_EINPUT,
                "--kv-cache fp8: %s lacks k_bmm_quantizer/_amax or v_bmm_quantizer/_amax for "
                "some attention layer", o->calib ? o->calib : "(no calibration file)");
    pl->kv_fp8 = o->kv == NX_KV_FP8 || (o->kv == NX_KV_AUTO && pl->stats.has_kv);
    say(pl, "calibration: %s; KV cache %s", o->calib ? o->calib : "none (weight-only)",
        pl->kv_fp8 ? "FP8" : "not quantized");
    return NX_OK;
}

/* Phase 4: layout and ownership. */
static int phase_plan(pipeline *pl, int nranks, nx_err *e)
{
    nx_plan_opts po = { .max_shard_bytes = pl->o->max_shard_bytes,
                        .weight_only = pl->o->weight_only, .kv_fp8 = pl->kv_fp8,
                        .nranks = nranks, .format = pl->o->format,
                        .source_shards = pl->cat.dsv4, .keep_encoded = pl->cat.dsv4 };
    int rc = nx_plan_build(&pl->cat, &pl->cls, &po, &pl->plan, e);
    NX_TRY(nx_agree(rc, e, pl->comm));
    char total[32];
    nx_format_bytes(pl->plan.total_tensor_bytes, total, sizeof total);
    say(pl, "plan: %lld output tensors, %s in %d shard%s, %d rank%s", (long long)pl->plan.n_out,
        total, pl->plan.n_shards, pl->plan.n_shards == 1 ? "" : "s", nranks,
        nranks == 1 ? "" : "s");
    return NX_OK;
}

/* The options that change output bytes, for the staging directory's fingerprint. */
static char *options_text(const pipeline *pl)
{
    const nx_export_opts *o = pl->o;
    char excl[2048] = "";
    for (int i = 0; i < o->classify.n_exclude; i++) {
        size_t len = strlen(excl);
        snprintf(excl + len, sizeof excl - len, "%s%s", i ? "," : "", o->classify.exclude[i]);
    }
    return nx_asprintf("numerics=%s quantize=%d weight_only=%d kv=%d format=%d exclude=%s%s%s",
                       pl->numerics == NX_NUMERICS_GPU ? "gpu" : "cpu", (int)o->classify.policy,
                       o->weight_only, pl->kv_fp8, (int)o->format, excl,
                       o->cast_mxfp4 ? " cast-mxfp4" : "",
                       o->weight_calib == NX_WEIGHT_CALIB_MSE ? " weight_calib=mse" : "");
}

/* Rank 0 creates (or, with --resume, reuses) the staging directory and its shards. */
static int open_staging(pipeline *pl, nx_err *e)
{
    const nx_export_opts *o = pl->o;
    int rc = NX_OK;
    if (pl->rank == 0) {
        char *opts = options_text(pl);
        char *fp = opts ? nx_plan_fingerprint(&pl->cat, &pl->plan, opts, o->calib) : NULL;
        nx_staging_opts so = { .force = o->force, .resume = o->resume, .fingerprint = fp };
        rc = fp ? nx_staging_open(o->output, &so, &pl->staging, &pl->resumed, e)
                : nx_err_set(e, NX_EIO, "out of memory");
        if (rc == NX_OK)
            rc = nx_shards_create(&pl->plan, pl->staging, pl->resumed, e);
        free(opts);
        free(fp);
    }
    NX_TRY(nx_agree(rc, e, pl->comm));
    MPI_Bcast(&pl->resumed, 1, MPI_INT, 0, pl->comm);
    if (pl->resumed)
        say(pl, "resuming %s.nvfp4x-staging: finished pieces are checked and kept", o->output);
    return NX_OK;
}

/* Rank 0, the end of phase 7: the structural rules of verify on the staging directory, then
 * the rename that publishes it. */
static int check_and_commit(pipeline *pl, nx_err *e)
{
    nx_staging_check chk;
    int rc = nx_staging_check_commit(pl->staging, pl->o->output, pl->o->force, &chk, e);
    pl->check_failed = chk.failed;
    if (!chk.failed)
        say(pl, "pre-commit check: %lld tensors, %lld quantized modules, no violation (%.2f s)",
            (long long)chk.n_tensors, (long long)chk.n_quantized, chk.seconds);
    return rc;
}

/* Phase 5b, --weight-calib mse: every rank sweeps its share of all blocks. */
static int phase_sweep(pipeline *pl, const char *dir, nx_err *e)
{
    nx_mse_opts mo = { .numerics = pl->numerics, .threads = pl->o->threads,
                       .quiet = pl->o->quiet, .resumed = pl->resumed };
    NX_TRY(nx_mse_run(&pl->src, &pl->cls, &pl->amax, dir, &mo, &pl->mse, pl->comm, e));
    const nx_mse *s = &pl->mse;
    if (s->reused)
        say(pl, "sweep: reusing the finished sweep of %lld blocks", (long long)s->total_blocks);
    else
        say(pl, "sweep: %lld blocks in %.2fs, %.0f blocks/s, %.1f of 126 candidates evaluated "
            "per block", (long long)s->total_blocks, s->seconds,
            s->seconds > 0 ? (double)s->total_blocks / s->seconds : 0.0,
            s->counts.blocks ? (double)s->counts.evaluated / (double)s->counts.blocks : 0.0);
    return NX_OK;
}

/* --cast-mxfp4's count of the blocks cast in this run; for DeepSeek-V4 also the summary line
 * of ModelOpt's script. */
static void say_cast(const pipeline *pl, const int64_t cast[2])
{
    say(pl, "cast-mxfp4: %lld of %lld MXFP4 blocks lossless (NVFP4 codes = the MXFP4 nibbles), "
        "%lld by ModelOpt's fallback", (long long)cast[1], (long long)cast[0],
        (long long)(cast[0] - cast[1]));
    if (pl->cat.dsv4)
        say(pl, "[cast] lossless MXFP4->NVFP4 blocks: %lld/%lld (%.4f%%)", (long long)cast[1],
            (long long)cast[0], cast[0] ? 100.0 * (double)cast[1] / (double)cast[0] : 100.0);
}

/* Phases 5-7. */
static int phase_write(pipeline *pl, nx_err *e)
{
    const nx_export_opts *o = pl->o;
    int rc = nx_source_open(&pl->src, &pl->cat, pl->o->mem_budget, e);
    if (rc == NX_OK)
        rc = nx_amax_sync(&pl->src, &pl->cls, &pl->stats, &pl->plan, o->weight_only,
                          o->cast_mxfp4, &pl->amax, pl->comm, e);
    NX_TRY(nx_agree(rc, e, pl->comm));
    say(pl, "amax: %s and input amax resolved for %lld modules", o->cast_mxfp4 ?
        "MXFP4 k_max (weight_scale_2)" : "weight", (long long)pl->cls.n_q);
    NX_TRY(open_staging(pl, e));
    char *dir = pl->rank == 0 ? pl->staging : nx_asprintf("%s.nvfp4x-staging", o->output);
    int64_t cast[2] = { 0, 0 };
    nx_write_opts wo = { .numerics = pl->numerics, .threads = o->threads, .quiet = o->quiet,
                         .calib_path = o->calib, .calib = pl->calib,
                         .resumed = pl->resumed, .format = o->format,
                         .report = o->report, .no_fsync = o->no_fsync,
                         /* DeepSeek-V4: the script divides input amax on the CPU always */
                         .input_numerics = pl->cat.dsv4 ? NX_NUMERICS_CPU : pl->numerics,
                         .cast_mxfp4 = o->cast_mxfp4, .cast_blocks = cast };
    rc = dir ? NX_OK : nx_err_set(e, NX_EIO, "out of memory");
    rc = nx_agree(rc, e, pl->comm);
    if (rc == NX_OK && o->weight_calib == NX_WEIGHT_CALIB_MSE) {
        rc = phase_sweep(pl, dir, e);
        wo.mse = &pl->mse;
    }
    if (rc == NX_OK)
        rc = nx_write_run(&pl->src, &pl->cls, &pl->stats, &pl->amax, &pl->plan, dir, &wo,
                          pl->comm, e);
    if (pl->rank != 0)
        free(dir);
    NX_TRY(rc);
    say(pl, "shards written and synced");
    if (o->cast_mxfp4)
        say_cast(pl, cast);
    nx_assemble_opts ao = { .weight_only = o->weight_only, .kv_fp8 = pl->kv_fp8,
                            .format = o->format };
    rc = pl->rank == 0 ? nx_assemble_write(&pl->cat, &pl->cls, &pl->plan, &ao, pl->staging, e)
                       : NX_OK;
    if (rc == NX_OK && pl->rank == 0)
        rc = check_and_commit(pl, e);
    NX_TRY(nx_agree(rc, e, pl->comm));
    say(pl, "wrote %s", o->output);
    return NX_OK;
}

static void pipeline_free(pipeline *pl)
{
    nx_calib_close(pl->calib); /* collective when opened collectively: every rank is here */
    if (pl->src.c)
        nx_source_close(&pl->src);
    nx_amax_free(&pl->amax);
    nx_mse_free(&pl->mse);
    nx_plan_free(&pl->plan);
    nx_stats_free(&pl->stats);
    nx_classes_free(&pl->cls);
    nx_catalog_free(&pl->cat);
    free(pl->staging);
}

/* After an I/O failure the staging directory stays for --resume; bad input removes it; a
 * failed pre-commit check keeps it for inspection (its message says so: a resume would write
 * the same bytes). Either way nothing named like the output exists. */
static void keep_or_remove_staging(const pipeline *pl, nx_err *e)
{
    if (pl->check_failed)
        return;
    if (e->code != NX_EIO) {
        nx_remove_tree(pl->staging);
        return;
    }
    size_t len = strlen(e->msg);
    snprintf(e->msg + len, sizeof e->msg - len, " (finished pieces are kept in %s: rerun with "
             "--resume to continue)", pl->staging);
}

int nx_export_run(const nx_export_opts *o, MPI_Comm comm, nx_err *e)
{
    pipeline pl = { .o = o, .comm = comm, .t0 = MPI_Wtime() };
    MPI_Comm_rank(comm, &pl.rank);
    MPI_Comm_size(comm, &pl.size);
    int rc = phase_catalog(&pl, e);
    if (rc == NX_OK)
        rc = phase_calib(&pl, e);
    if (rc == NX_OK)
        rc = nx_agree(rc, e, comm);
    if (rc == NX_OK)
        rc = phase_plan(&pl, pl.size, e);
    if (rc == NX_OK)
        rc = phase_write(&pl, e);
    if (rc != NX_OK && pl.rank == 0 && pl.staging)
        keep_or_remove_staging(&pl, e);
    pipeline_free(&pl);
    return rc;
}

/* Fused experts (fused.h): what is exported fused, and how each tensor is cut into pieces. */
static void print_fused(const pipeline *pl, FILE *out)
{
    const nx_catalog *c = &pl->cat;
    int64_t views = 0;
    for (int64_t i = 0; i < c->n; i++)
        views += c->t[i].view == NX_VIEW_OF_FUSED;
    if (views > 0)
        fprintf(out, "fused experts exported per expert: %lld views of [E, out, in] tensors\n",
                (long long)views);
    if (c->n_fused == 0)
        return;
    fprintf(out, "fused experts exported fused: %lld projections\n", (long long)c->n_fused);
    for (int64_t i = 0; i < c->n_fused; i++) {
        const nx_fused *f = &c->fused[i];
        char slice[32];
        nx_format_bytes(nx_fused_piece_bf16_bytes(f, 0), slice, sizeof slice);
        int q = pl->cls.qmod_of[f->tensor] >= 0;
        fprintf(out, "  %s %s [E=%lld, in=%lld, out=%lld]%s -> %s; %lld pieces (%s, %lld input "
                "rows, %s BF16 each)\n", f->name, f->mxfp4 ? "MXFP4" : nx_dtype_name(c->t[
                f->tensor].dtype), (long long)f->experts, (long long)f->in, (long long)f->out,
                f->interleaved ? " gate/up interleaved" : "", q ? "NVFP4 [E, in/2, out]"
                : f->mxfp4 ? "BF16 [E, in, out]" : "copied", (long long)f->n_pieces,
                f->pieces_per_expert > 1 ? "row blocks" : "experts", (long long)f->piece_in,
                slice);
    }
}

static void print_plan(const pipeline *pl, FILE *out)
{
    const nx_plan *p = &pl->plan;
    char b[32];
    fprintf(out, "model: %s (%s), %lld tensors, %d files\n", pl->cat.dir, pl->cat.model_type,
            (long long)pl->cat.n, pl->cat.n_files);
    fprintf(out, "source encoding: %s; %lld encoded weights%s\n", pl->cat.encoding,
            (long long)pl->cat.n_encoded, encoding_note(&pl->cat));
    print_fused(pl, out);
    fprintf(out, "quantized linears: %lld in %lld fused groups; MoE expert slots: %lld\n",
            (long long)pl->cls.n_q, (long long)pl->cls.n_groups, (long long)pl->cls.n_slots);
    if (pl->cat.dsv4) {
        char line[512];
        nx_dsv4_describe(&pl->cat, &pl->cls, line, sizeof line);
        fprintf(out, "%s\n", line);
    }
    fprintf(out, "excluded modules: %lld, exclude_modules:\n", (long long)pl->cls.n_excluded);
    for (int64_t i = 0; i < pl->cls.n_patterns; i++)
        fprintf(out, "  %s\n", pl->cls.patterns[i]);
    fprintf(out, "KV cache scales: %s\n", pl->kv_fp8 ? "FP8" : "none");
    fprintf(out, "output: %lld tensors in %d shards\n", (long long)p->n_out, p->n_shards);
    for (int32_t s = 0; s < p->n_shards; s++) {
        if (s >= 8 && s < p->n_shards - 1) /* first eight and the last */
            continue;
        if (s == p->n_shards - 1 && s > 8)
            fprintf(out, "  ...\n");
        nx_format_bytes(p->shard_bytes[s], b, sizeof b);
        fprintf(out, "  %s  %s\n", p->shard_names[s], b);
    }
    uint64_t peak = 0, most = 0, least = UINT64_MAX;
    for (int r = 0; r < p->nranks; r++) {
        peak = p->rank_peak[r] > peak ? p->rank_peak[r] : peak;
        most = p->rank_cost[r] > most ? p->rank_cost[r] : most;
        least = p->rank_cost[r] < least ? p->rank_cost[r] : least;
    }
    fprintf(out, "ranks: %d\n", p->nranks);
    for (int r = 0; r < p->nranks; r++) {
        if (r >= 16 && r < p->nranks - 1) /* first sixteen and the last */
            continue;
        if (r == p->nranks - 1 && r > 16)
            fprintf(out, "  ...\n");
        nx_format_bytes(p->rank_cost[r], b, sizeof b);
        fprintf(out, "  rank %d: %s read+written\n", r, b);
    }
    char lo[32], hi[32], pk[32];
    nx_format_bytes(least, lo, sizeof lo);
    nx_format_bytes(most, hi, sizeof hi);
    /* Row buffers (float + source + codes + scales), a copy chunk, and the catalog; a fused
     * piece with its transposes, codes and scales (fused.h) about three times its BF16. */
    uint64_t predicted = (4u << 20) * 10u + (16u << 20) + (uint64_t)pl->cat.n * 160u, piece = 0;
    for (int64_t i = 0; i < pl->cat.n_fused; i++)
        if (nx_fused_piece_bf16_bytes(&pl->cat.fused[i], 0) > piece)
            piece = nx_fused_piece_bf16_bytes(&pl->cat.fused[i], 0);
    predicted += 3 * piece;
    nx_format_bytes(predicted, pk, sizeof pk);
    nx_format_bytes(peak, b, sizeof b);
    fprintf(out, "balance: %s to %s per rank; largest tensor on a rank: %s\n", lo, hi, b);
    fprintf(out, "predicted peak memory per rank: %s (row buffers, %scatalog; bounded by the "
            "largest tensor's row block, not the model size)\n", pk,
            piece ? "a fused-expert piece, " : "");
}

static void print_owners(const pipeline *pl, FILE *out)
{
    const nx_plan *p = &pl->plan;
    fprintf(out, "owners (rank, source tensor or KV scales, quantized|copied|kv, first output "
            "shard):\n");
    for (int64_t i = 0; i < p->n_work; i++) {
        const nx_work *w = &p->work[i];
        const nx_out *first = &p->out[w->first];
        const char *kind = w->tensor < 0 ? "kv"
                           : pl->cls.qmod_of[w->tensor] >= 0 ? "quantized" : "copied";
        char piece[96] = "";
        if (w->piece >= 0) { /* fused.h: which expert and input rows */
            int64_t x, i0, i1;
            nx_fused_piece(nx_catalog_fused(&pl->cat, w->tensor), w->piece, &x, &i0, &i1);
            snprintf(piece, sizeof piece, " piece %lld (expert %lld, input rows %lld-%lld)",
                     (long long)w->piece, (long long)x, (long long)i0, (long long)(i1 - 1));
        }
        fprintf(out, "  %d %s %s%s %s\n", w->rank,
                w->tensor >= 0 ? pl->cat.t[w->tensor].name : first->name, kind, piece,
                p->shard_names[first->shard]);
    }
}

/* --weight-calib mse: the sweep's share of the busiest rank and its time at the rate this CPU
 * sweeps synthetic Gaussian blocks (real weights prune differently: docs/performance.md). */
static void print_sweep(const pipeline *pl, FILE *out)
{
    int64_t total = 0, lo, hi, most = 0;
    for (int64_t i = 0; i < pl->cls.n_q; i++)
        total += pl->cls.q[i].rows * (pl->cls.q[i].cols / NX_BLOCK);
    for (int r = 0; r < pl->plan.nranks; r++) {
        nx_mse_share(total, r, pl->plan.nranks, &lo, &hi);
        most = hi - lo > most ? hi - lo : most;
    }
    const char *kernel = "ref";
    double rate = nx_mse_measure_rate(pl->numerics, &kernel);
    int threads = pl->o->threads > 0 ? pl->o->threads : 1;
    fprintf(out, "weight calibration: MSE sweep (%s numerics) of %lld blocks, at most %lld per "
            "rank\n", pl->numerics == NX_NUMERICS_GPU ? "gpu" : "cpu", (long long)total,
            (long long)most);
    fprintf(out, "sweep rate here: %.0f blocks/s per thread (%s, synthetic Gaussian blocks); "
            "predicted sweep time per rank: %.1fs with %d thread%s\n", rate, kernel,
            rate > 0 ? (double)most / (rate * threads) : 0.0, threads, threads == 1 ? "" : "s");
}

int nx_plan_run(const nx_export_opts *o, MPI_Comm comm, FILE *out, nx_err *e)
{
    pipeline pl = { .o = o, .comm = comm, .t0 = MPI_Wtime() };
    MPI_Comm_rank(comm, &pl.rank);
    MPI_Comm_size(comm, &pl.size);
    int rc = phase_catalog(&pl, e);
    if (rc == NX_OK && o->calib)
        rc = phase_calib(&pl, e);
    else if (rc == NX_OK)
        rc = nx_stats_gather(NULL, &pl.cat, &pl.cls, &pl.stats, comm, e);
    if (rc == NX_OK)
        rc = phase_plan(&pl, o->plan_ranks > 0 ? o->plan_ranks : pl.size, e);
    if (rc == NX_OK && pl.rank == 0)
        print_plan(&pl, out);
    if (rc == NX_OK && pl.rank == 0 && o->weight_calib == NX_WEIGHT_CALIB_MSE)
        print_sweep(&pl, out);
    if (rc == NX_OK && pl.rank == 0 && o->plan_owners)
        print_owners(&pl, out);
    pipeline_free(&pl);
    return rc;
}
