/* Phase 6: read, quantize, pwrite. */
#include "nvfp4x/writer.h"

#include <fcntl.h>
#include <math.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nvfp4x/calib.h"
#include "nvfp4x/comm.h"
#include "nvfp4x/fused.h"
#include "nvfp4x/journal.h"
#include "nvfp4x/mxfp4.h"
#include "nvfp4x/progress.h"
#include "nvfp4x/report.h"
#include "nvfp4x/util.h"

#define ROW_BLOCK_ELEMS (4 << 20) /* elements quantized per step */
#define COPY_CHUNK (16 << 20)

static int shard_exists(const char *path, uint64_t bytes)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size == bytes;
}

int nx_shards_create(const nx_plan *p, const char *dir, int keep_existing, nx_err *e)
{
    for (int32_t s = 0; s < p->n_shards; s++) {
        char *path = nx_path_join(dir, p->shard_names[s]);
        NX_ALLOC_CHECK(path, e, "a path");
        if (keep_existing && shard_exists(path, p->shard_bytes[s])) {
            free(path);
            continue;
        }
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        int rc = fd >= 0 ? NX_OK : nx_err_errno(e, NX_EIO, "%s: cannot create", path);
        if (rc == NX_OK)
            rc = nx_pwrite_full(fd, p->shard_headers[s], p->header_bytes[s], 0, path, e);
        if (rc == NX_OK && ftruncate(fd, (off_t)p->shard_bytes[s]) != 0)
            rc = nx_err_errno(e, NX_EIO, "%s: cannot extend to %llu bytes", path,
                              (unsigned long long)p->shard_bytes[s]);
        if (fd >= 0 && close(fd) != 0 && rc == NX_OK)
            rc = nx_err_errno(e, NX_EIO, "%s: close failed", path);
        free(path);
        NX_TRY(rc);
    }
    return NX_OK;
}

/* Per-rank state of phase 6. */
typedef struct writer {
    const nx_catalog *c;
    const nx_classes *k;
    const nx_stats *s;
    const nx_amax *a;
    const nx_plan *p;
    const nx_write_opts *o;
    const char *dir;
    nx_source *src;
    int *fds;          /* output shards, opened on first write */
    nx_calib *calib;   /* opened on the first static module */
    float *w;          /* row block, float32 */
    void *raw;         /* row block, source bytes */
    uint8_t *codes, *scales;
    nx_progress pg;
    uint64_t done;
    nx_journal jr;
    int64_t journaled;                   /* items this rank journaled */
    int64_t stall_after;                 /* test hook, see stall_if_asked */
    const nx_work *item;                 /* the work item being produced */
    nx_quantize_fn kernel;               /* the fastest variant this CPU runs */
    nx_report_entry *rep;                /* --report: one entry per module quantized here */
    int64_t n_rep, cap_rep;
    nx_fused_scratch *fs;                /* fused-expert pieces (fused.h): buffers */
    nx_qstats *fused_stats;              /* --report: per fused projection, summed over ranks */
    int64_t cast_blocks[2];              /* --cast-mxfp4: blocks cast here, lossless ones */
    uint32_t crc[NX_JOURNAL_MAX_OUTS];   /* CRC-32C of each of its outputs so far */
} writer;

static const char *shard_path(writer *wr, int32_t s, char *buf, size_t len)
{
    snprintf(buf, len, "%s/%s", wr->dir, wr->p->shard_names[s]);
    return buf;
}

static int shard_fd(writer *wr, int32_t s, int *fd, char *path, size_t len, nx_err *e)
{
    shard_path(wr, s, path, len);
    if (wr->fds[s] < 0) {
        wr->fds[s] = open(path, O_RDWR | O_CLOEXEC);
        if (wr->fds[s] < 0)
            return nx_err_errno(e, NX_EIO, "%s: cannot open for writing", path);
    }
    *fd = wr->fds[s];
    return NX_OK;
}

/* Outputs are written front to back, so each one's checksum streams along. */
static int out_write(writer *wr, const nx_out *out, uint64_t off, const void *buf, size_t len,
                     nx_err *e)
{
    char path[4096];
    int fd = -1;
    NX_TRY(shard_fd(wr, out->shard, &fd, path, sizeof path, e));
    NX_ERROR_IF(off + len > out->nbytes, e, NX_EIO, "internal: write past %s", out->name);
    int64_t j = out - &wr->p->out[wr->item->first];
    wr->crc[j] = nx_crc32c(wr->crc[j], buf, len);
    NX_TRY(nx_pwrite_full(fd, buf, len, out->offset + off, path, e));
#ifdef SYNC_FILE_RANGE_WRITE
    /* Start writeback now, so that the final fsync finds little left to do. */
    if (len >= (1u << 20) && !wr->o->no_fsync)
        sync_file_range(fd, (off_t)(out->offset + off), (off_t)len, SYNC_FILE_RANGE_WRITE);
#endif
    return NX_OK;
}

/* --resume: an item is reused only if its outputs still have the journaled checksums. */
static int outputs_match(writer *wr, const nx_work *w, const uint32_t *crc, int *match,
                         nx_err *e)
{
    char path[4096];
    *match = 1;
    for (int32_t j = 0; j < w->n_out && *match; j++) {
        const nx_out *out = &wr->p->out[w->first + j];
        int fd = -1;
        uint32_t got = 0;
        uint64_t first, bytes; /* a fused piece's part of the output (plan.h) */
        nx_work_range(wr->c, wr->p, w, j, &first, &bytes);
        NX_TRY(shard_fd(wr, out->shard, &fd, path, sizeof path, e));
        for (uint64_t off = 0; off < bytes; off += COPY_CHUNK) {
            size_t len = bytes - off < COPY_CHUNK ? (size_t)(bytes - off) : COPY_CHUNK;
            NX_TRY(nx_pread_full(fd, wr->raw, len, out->offset + first + off, path, e));
            got = nx_crc32c(got, wr->raw, len);
        }
        *match = got == crc[j];
    }
    return NX_OK;
}

static int write_f32(writer *wr, const nx_out *out, float v, nx_err *e)
{
    uint32_t u = nx_f32_bits(v);
    uint8_t le[4] = { (uint8_t)u, (uint8_t)(u >> 8), (uint8_t)(u >> 16), (uint8_t)(u >> 24) };
    return out_write(wr, out, 0, le, 4, e);
}

static int copy_tensor(writer *wr, const nx_work *w, nx_err *e)
{
    const nx_out *out = &wr->p->out[w->first];
    uint64_t n = wr->c->t[w->tensor].nbytes;
    for (uint64_t off = 0; off < n && !wr->pg.stop; off += COPY_CHUNK) {
        size_t len = n - off < COPY_CHUNK ? (size_t)(n - off) : COPY_CHUNK;
        NX_TRY(nx_source_read(wr->src, w->tensor, off, wr->raw, len, e));
        NX_TRY(out_write(wr, out, off, wr->raw, len, e));
        wr->done += len;
        nx_progress_poll(&wr->pg, wr->done);
    }
    return NX_OK;
}

/* An encoded (FP8, INT4, MXFP4) weight left unquantized is written as its BF16 decoding. */
static int dequant_tensor(writer *wr, const nx_work *w, nx_err *e)
{
    const nx_tensor *t = &wr->c->t[w->tensor];
    const nx_out *out = &wr->p->out[w->first];
    int64_t cols = nx_tensor_cols(t);
    int64_t per = ROW_BLOCK_ELEMS / cols > 0 ? ROW_BLOCK_ELEMS / cols : 1;
    for (int64_t r = 0; r < t->shape[0] && !wr->pg.stop; r += per) {
        int64_t n = t->shape[0] - r < per ? t->shape[0] - r : per;
        NX_TRY(nx_source_read_rows_f32(wr->src, w->tensor, r, n, wr->w, wr->raw, e));
        uint16_t *bf = wr->raw; /* the stored bytes are consumed: reuse raw for BF16 */
        for (int64_t i = 0; i < n * cols; i++)
            bf[i] = nx_f32_to_bf16(wr->w[i]);
        NX_TRY(out_write(wr, out, (uint64_t)(r * cols) * 2, bf, (size_t)(n * cols) * 2, e));
        wr->done += (uint64_t)n * (t->nbytes / (uint64_t)t->shape[0]);
        nx_progress_poll(&wr->pg, wr->done);
    }
    return NX_OK;
}

/* --weight-calib mse: the whole tensor's per-block amax from the sweep. */
static int swept_blocks(writer *wr, int64_t q, float **blocks, nx_err *e)
{
    const nx_qmod *m = &wr->k->q[q];
    int64_t n = m->rows * (m->cols / NX_BLOCK);
    *blocks = malloc(((size_t)n + 1) * sizeof **blocks);
    NX_ALLOC_CHECK(*blocks, e, "the swept block amax");
    return nx_mse_block_amax(wr->o->mse, q, 0, n, *blocks, e);
}

/* The calibration file for static per-block amax: the collectively opened one, or opened here. */
static int calib_handle(writer *wr, nx_err *e)
{
    if (wr->calib == NULL && wr->o->calib)
        wr->calib = wr->o->calib;
    if (wr->calib == NULL)
        NX_TRY(nx_calib_open(wr->o->calib_path, &wr->calib, e));
    return NX_OK;
}

static int static_blocks(writer *wr, int64_t q, float **blocks, nx_err *e)
{
    const nx_qmod *m = &wr->k->q[q];
    NX_TRY(calib_handle(wr, e));
    int64_t n = m->rows * (m->cols / NX_BLOCK);
    *blocks = malloc(((size_t)n + 1) * sizeof **blocks);
    NX_ALLOC_CHECK(*blocks, e, "static block amax");
    char *mod = nx_qmod_name(wr->c, m);
    NX_ALLOC_CHECK(mod, e, "a module name");
    int rc = nx_calib_read(wr->calib, mod, "weight_quantizer", "_amax", *blocks, n, e);
    free(mod);
    return rc;
}

/* Threads split the rows of one block; each row is independent. Returns -1 when the rows
 * hold NaN or Inf. */
static int quantize_block(writer *wr, const void *src, nx_dtype dt, int64_t nrows, int64_t cols,
                          float amax, const float *blocks)
{
    int nt = wr->o->threads, bad = 0;
    size_t esz = nx_dtype_size(dt);
    #pragma omp parallel for num_threads(nt) schedule(static) reduction(| : bad)
    for (int t = 0; t < nt; t++) {
        int64_t r0 = nrows * t / nt, r1 = nrows * (t + 1) / nt;
        if (r1 > r0)
            bad |= wr->kernel((const uint8_t *)src + (size_t)(r0 * cols) * esz, dt, r1 - r0,
                              cols, amax, blocks ? blocks + r0 * (cols / NX_BLOCK) : NULL,
                              wr->o->numerics, wr->codes + r0 * (cols / 2),
                              wr->scales + r0 * (cols / NX_BLOCK)) != 0;
    }
    return bad ? -1 : 0;
}

/* The kernels read BF16/F16/F32 as stored; encoded (FP8, INT4, MXFP4) sources are decoded
 * first. */
static int read_block(writer *wr, const nx_tensor *t, int64_t tensor, int64_t r, int64_t n,
                      const void **src, nx_dtype *dt, nx_err *e)
{
    if (t->scale >= 0) {
        NX_TRY(nx_source_read_rows_f32(wr->src, tensor, r, n, wr->w, wr->raw, e));
        *src = wr->w;
        *dt = NX_DT_F32;
        return NX_OK;
    }
    size_t row_bytes = (size_t)t->shape[1] * nx_dtype_size(t->dtype);
    NX_TRY(nx_source_read(wr->src, tensor, (uint64_t)r * row_bytes, wr->raw,
                          (size_t)n * row_bytes, e));
    *src = wr->raw;
    *dt = t->dtype;
    return NX_OK;
}

/* --report: statistics of the rows just quantized, against their float32 values. */
static void report_rows(writer *wr, const void *src, nx_dtype dt, int64_t n, int64_t cols,
                        float ws2)
{
    if (src != wr->w)
        nx_widen_f32(src, dt, n * cols, wr->w);
    nx_qstats_add(&wr->rep[wr->n_rep - 1].st, wr->w, n, cols, wr->codes, wr->scales, ws2);
}

/* --report of a swept module, once the rows' codes are written (the buffers are reused): the
 * error the dynamic (max) scales would have had, and the chosen amax over each block's max. */
static void report_sweep(writer *wr, const void *src, nx_dtype dt, int64_t n, int64_t cols,
                         int64_t q, const float *blocks)
{
    nx_report_entry *r = &wr->rep[wr->n_rep - 1];
    for (int64_t b = 0; b < n * cols / NX_BLOCK; b++) {
        float m = nx_absmax_f32(wr->w + b * NX_BLOCK, NX_BLOCK);
        if (m > 0.0f) {
            r->sw.scale_ratio_sum += (double)blocks[b] / (double)m;
            r->sw.scale_ratio_blocks++;
        }
    }
    quantize_block(wr, src, dt, n, cols, wr->a->w[q], NULL); /* finite: checked before */
    nx_qstats max = { 0 };
    nx_qstats_add(&max, wr->w, n, cols, wr->codes, wr->scales,
                  nx_weight_scale_2(wr->a->w[q], wr->o->numerics));
    r->sw.sum_sq_err_max += max.sum_sq_err;
}

static int report_begin(writer *wr, int64_t q, nx_err *e)
{
    if (wr->n_rep == wr->cap_rep) {
        int64_t cap = wr->cap_rep ? 2 * wr->cap_rep : 256;
        nx_report_entry *grown = realloc(wr->rep, (size_t)cap * sizeof *grown);
        NX_ALLOC_CHECK(grown, e, "the report");
        wr->rep = grown;
        wr->cap_rep = cap;
    }
    nx_report_entry *r = &wr->rep[wr->n_rep];
    memset(r, 0, sizeof *r);
    r->module = nx_qmod_name(wr->c, &wr->k->q[q]);
    NX_ALLOC_CHECK(r->module, e, "a module name");
    r->w_from_weight = wr->a->w_from_weight[q];
    r->in_from_layer = wr->a->in_from_layer[q];
    r->w_static = wr->s->w_static[q];
    r->w_swept = wr->o->mse != NULL;
    wr->n_rep++;
    return NX_OK;
}

static int quantize_rows(writer *wr, const nx_work *w, int64_t q, const float *blocks,
                         nx_err *e)
{
    const nx_qmod *m = &wr->k->q[q];
    const nx_tensor *t = &wr->c->t[m->tensor];
    const nx_out *codes = &wr->p->out[w->first], *scales = codes + 1;
    int64_t per = ROW_BLOCK_ELEMS / m->cols > 0 ? ROW_BLOCK_ELEMS / m->cols : 1;
    uint64_t row_bytes = t->nbytes / (uint64_t)m->rows; /* as stored: progress counts these */
    for (int64_t r = 0; r < m->rows && !wr->pg.stop; r += per) {
        int64_t n = m->rows - r < per ? m->rows - r : per;
        const void *src;
        nx_dtype dt;
        NX_TRY(read_block(wr, t, m->tensor, r, n, &src, &dt, e));
        NX_ERROR_IF(dt != NX_DT_BF16 && dt != NX_DT_F16 && dt != NX_DT_F32, e, NX_EINPUT,
                    "%s: tensor %s has dtype %s; quantized weights must be BF16, F16, F32 or "
                    "encoded with scales", nx_source_path(wr->src, m->tensor), t->name,
                    nx_dtype_name(t->dtype));
        NX_ERROR_IF(quantize_block(wr, src, dt, n, m->cols, wr->a->w[q],
                                   blocks ? blocks + r * (m->cols / NX_BLOCK) : NULL) != 0,
                    e, NX_EINPUT, "%s: tensor %s contains NaN or Inf (rows %lld-%lld)",
                    nx_source_path(wr->src, m->tensor), t->name, (long long)r,
                    (long long)(r + n - 1));
        if (wr->o->report)
            report_rows(wr, src, dt, n, m->cols, nx_weight_scale_2(wr->a->w[q],
                                                                     wr->o->numerics));
        NX_TRY(out_write(wr, codes, (uint64_t)(r * (m->cols / 2)), wr->codes,
                         (size_t)(n * (m->cols / 2)), e));
        NX_TRY(out_write(wr, scales, (uint64_t)(r * (m->cols / NX_BLOCK)), wr->scales,
                         (size_t)(n * (m->cols / NX_BLOCK)), e));
        if (wr->o->report && wr->o->mse)
            report_sweep(wr, src, dt, n, m->cols, q, blocks + r * (m->cols / NX_BLOCK));
        wr->done += (uint64_t)n * row_bytes;
        nx_progress_poll(&wr->pg, wr->done);
    }
    return NX_OK;
}

/* --cast-mxfp4: rows [r0, r0+n) of an MXFP4 weight cast in closed form, threads splitting the
 * rows. Returns the lossless blocks, or -1 when a value is not finite. */
static int64_t cast_block_rows(writer *wr, const nx_mxfp4_cast *mc, const uint8_t *packed,
                               const uint8_t *e8m0, int64_t n, int64_t cols)
{
    int nt = wr->o->threads;
    int64_t lossless = 0, bad = 0;
    #pragma omp parallel for num_threads(nt) schedule(static) reduction(+ : lossless, bad)
    for (int t = 0; t < nt; t++) {
        int64_t r0 = n * t / nt, r1 = n * (t + 1) / nt;
        int64_t got = r1 > r0 ? nx_mxfp4_cast_rows(mc, packed + r0 * (cols / 2),
                                                   e8m0 + r0 * (cols / NX_MXFP4_BLOCK), r1 - r0,
                                                   cols, wr->codes + r0 * (cols / 2),
                                                   wr->scales + r0 * (cols / NX_BLOCK)) : 0;
        lossless += got > 0 ? got : 0;
        bad += got < 0;
    }
    return bad ? -1 : lossless;
}

static int cast_rows(writer *wr, const nx_work *w, int64_t q, nx_err *e)
{
    const nx_qmod *m = &wr->k->q[q];
    const nx_tensor *t = &wr->c->t[m->tensor];
    const nx_out *codes = &wr->p->out[w->first], *scales = codes + 1;
    int64_t per = ROW_BLOCK_ELEMS / m->cols > 0 ? ROW_BLOCK_ELEMS / m->cols : 1;
    uint64_t row_bytes = t->nbytes / (uint64_t)m->rows; /* as stored: progress counts these */
    uint8_t *packed = wr->raw, *e8m0 = packed + (size_t)(per * m->cols / 2);
    nx_mxfp4_cast mc; /* the script's closed form: an all-zero block scaled 2^-9 */
    nx_mxfp4_cast_init(&mc, wr->a->k_shared[q], wr->a->k_window[q], 0);
    for (int64_t r = 0; r < m->rows && !wr->pg.stop; r += per) {
        int64_t n = m->rows - r < per ? m->rows - r : per;
        NX_TRY(nx_source_stored_rows(wr->src, m->tensor, r, n, packed, e8m0, e));
        int64_t lossless = cast_block_rows(wr, &mc, packed, e8m0, n, m->cols);
        NX_ERROR_IF(lossless < 0, e, NX_EINPUT, "%s: tensor %s has a NaN scale (E8M0 0xFF) or "
                    "values beyond float32 (rows %lld-%lld)", nx_source_path(wr->src,
                    m->tensor), t->name, (long long)r, (long long)(r + n - 1));
        wr->cast_blocks[0] += n * (m->cols / NX_MXFP4_BLOCK);
        wr->cast_blocks[1] += lossless;
        if (wr->o->report) {
            nx_mxfp4_decode_rows(packed, e8m0, n, m->cols, wr->w);
            report_rows(wr, wr->w, NX_DT_F32, n, m->cols, mc.ws2);
        }
        NX_TRY(out_write(wr, codes, (uint64_t)(r * (m->cols / 2)), wr->codes,
                         (size_t)(n * (m->cols / 2)), e));
        NX_TRY(out_write(wr, scales, (uint64_t)(r * (m->cols / NX_BLOCK)), wr->scales,
                         (size_t)(n * (m->cols / NX_BLOCK)), e));
        wr->done += (uint64_t)n * row_bytes;
        nx_progress_poll(&wr->pg, wr->done);
    }
    return NX_OK;
}

/* compressed-tensors stores the reciprocals: weight_global_scale = fl32(1 / weight_scale_2),
 * input_global_scale = fl32(1 / input_scale). */
static float global_scale(const writer *wr, float scale)
{
    return wr->o->format == NX_FORMAT_COMPRESSED_TENSORS ? 1.0f / scale : scale;
}

/* weight_scale_2 and input_scale of module q: a cast module's ws2 is 2^(k_shared - 8). */
static int write_scalars(writer *wr, const nx_work *w, int64_t q, nx_err *e)
{
    const nx_out *out = &wr->p->out[w->first];
    int32_t k = wr->a->k_shared[q];
    float ws2 = k != NX_NOT_CAST ? ldexpf(1.0f, k - 8) : nx_weight_scale_2(wr->a->w[q],
                                                                          wr->o->numerics);
    NX_TRY(write_f32(wr, &out[2], global_scale(wr, ws2), e));
    if (w->n_out > 3)
        NX_TRY(write_f32(wr, &out[3], global_scale(wr, nx_input_scale(wr->a->in[q],
                                                                      wr->o->input_numerics)),
                         e));
    return NX_OK;
}

static int quantize_tensor(writer *wr, const nx_work *w, nx_err *e)
{
    int64_t q = wr->k->qmod_of[w->tensor];
    float *blocks = NULL;
    int rc = wr->o->mse ? swept_blocks(wr, q, &blocks, e)
             : wr->s->w_static[q] ? static_blocks(wr, q, &blocks, e) : NX_OK;
    if (rc == NX_OK && wr->o->report)
        rc = report_begin(wr, q, e);
    if (rc == NX_OK && wr->a->k_shared[q] != NX_NOT_CAST)
        rc = cast_rows(wr, w, q, e);
    else if (rc == NX_OK)
        rc = quantize_rows(wr, w, q, blocks, e);
    free(blocks);
    NX_TRY(rc);
    return write_scalars(wr, w, q, e);
}

/* ---- Fused-expert pieces (fused.h) --------------------------------------------------------- */

static int fused_write(void *ctx, int part, uint64_t off, const void *buf, size_t len, nx_err *e)
{
    writer *wr = ctx;
    return out_write(wr, &wr->p->out[wr->item->first + part], off, buf, len, e);
}

/* One piece of a fused tensor: its part of the codes and scales (or of the BF16 decode of an
 * MXFP4 source left unquantized); piece 0 also writes the two scalars. */
static int fused_piece(writer *wr, const nx_work *w, nx_err *e)
{
    const nx_fused *f = nx_catalog_fused(wr->c, w->tensor);
    int64_t q = wr->k->qmod_of[w->tensor];
    nx_fused_job j = { .src = wr->src, .f = f, .piece = w->piece, .quantize = q >= 0,
                       .numerics = wr->o->numerics, .kernel = wr->kernel,
                       .threads = wr->o->threads, .write = fused_write, .ctx = wr };
    nx_mxfp4_cast mc; /* ModelOpt's static export path: an all-zero block's amax taken as 1 */
    if (q >= 0) {
        j.amax = wr->a->w[q];
        if (wr->a->k_shared[q] != NX_NOT_CAST) {
            nx_mxfp4_cast_init(&mc, wr->a->k_shared[q], wr->a->k_window[q], 1);
            j.cast = &mc;
            j.cast_counts = wr->cast_blocks;
        } else if (wr->s->w_static[q]) {
            NX_TRY(calib_handle(wr, e));
            j.calib = wr->calib;
        }
        if (wr->fused_stats)
            j.stats = &wr->fused_stats[wr->c->t[w->tensor].fused - 1];
    }
    NX_TRY(nx_fused_produce(&j, &wr->fs, e));
    wr->done += nx_fused_piece_read_bytes(f, w->piece, (int)nx_dtype_size(wr->c->t[w->tensor].dtype));
    nx_progress_poll(&wr->pg, wr->done);
    return q < 0 || w->piece != 0 ? NX_OK : write_scalars(wr, w, q, e);
}

/* --report: a fused projection's pieces were quantized on any ranks; rank 0 reports the sum. */
static int fused_report(writer *wr, nx_err *e)
{
    int rank;
    MPI_Comm_rank(wr->pg.comm, &rank);
    nx_fused_qstats_reduce(wr->fused_stats, wr->c->n_fused, wr->pg.comm);
    for (int64_t i = 0; rank == 0 && i < wr->c->n_fused; i++) {
        int64_t q = wr->k->qmod_of[wr->c->fused[i].tensor];
        if (q < 0)
            continue;
        NX_TRY(report_begin(wr, q, e));
        wr->rep[wr->n_rep - 1].st = wr->fused_stats[i];
    }
    return NX_OK;
}

static int kv_scales(writer *wr, const nx_work *w, nx_err *e)
{
    const nx_out *k = &wr->p->out[w->first], *v = k + 1;
    NX_TRY(write_f32(wr, k, nx_kv_scale(wr->s->k_amax[k->src], wr->o->numerics), e));
    return write_f32(wr, v, nx_kv_scale(wr->s->v_amax[v->src], wr->o->numerics), e);
}

static int produce(writer *wr, const nx_work *w, nx_err *e)
{
    wr->item = w;
    memset(wr->crc, 0, sizeof wr->crc);
    if (w->tensor < 0)
        return kv_scales(wr, w, e);
    int rc;
    const nx_tensor *t = &wr->c->t[w->tensor];
    if (t->scale >= 0 && wr->p->work_of[t->scale] < 0 && w->piece < 0) /* read with it */
        wr->done += wr->c->t[t->scale].nbytes;
    if (w->piece >= 0)
        rc = fused_piece(wr, w, e);
    else if (wr->k->qmod_of[w->tensor] >= 0)
        rc = quantize_tensor(wr, w, e);
    else if (wr->p->out[w->first].kind == NX_OUT_DEQUANT)
        rc = dequant_tensor(wr, w, e);
    else
        rc = copy_tensor(wr, w, e);
    nx_source_drop(wr->src, w->tensor);
    return rc;
}

/* Fault-injection hook for the crash tests (docs/testing.md): NVFP4X_TEST_STALL_AFTER=N makes
 * rank NVFP4X_TEST_STALL_RANK (default 1) stop after journaling N items, so that a test can
 * kill it at a known point. */
static void stall_if_asked(writer *wr)
{
    if (wr->stall_after > 0 && wr->journaled == wr->stall_after)
        for (;;)
            pause();
}

static int64_t stall_setting(int rank)
{
    const char *n = getenv("NVFP4X_TEST_STALL_AFTER"), *r = getenv("NVFP4X_TEST_STALL_RANK");
    if (n == NULL || (r ? atoi(r) : 1) != rank)
        return 0;
    return atoll(n);
}

/* Reuses a journaled item when resuming, else produces it and journals it. */
static int process(writer *wr, const nx_work *w, nx_err *e)
{
    char key[1200]; /* a fused piece: "<first output>#<piece>" */
    snprintf(key, sizeof key, w->piece >= 0 ? "%s#%lld" : "%s", wr->p->out[w->first].name,
             (long long)w->piece);
    const uint32_t *crc = wr->o->resumed ? nx_journal_lookup(&wr->jr, key) : NULL;
    int reuse = 0;
    if (crc)
        NX_TRY(outputs_match(wr, w, crc, &reuse, e));
    if (reuse) {
        const nx_fused *f = w->piece >= 0 ? nx_catalog_fused(wr->c, w->tensor) : NULL;
        wr->done += f ? nx_fused_piece_read_bytes(f, w->piece, (int)nx_dtype_size(
                            wr->c->t[w->tensor].dtype))
                      : w->tensor >= 0 ? wr->c->t[w->tensor].nbytes : 0;
        nx_progress_poll(&wr->pg, wr->done);
        return NX_OK;
    }
    NX_TRY(produce(wr, w, e));
    if (wr->pg.stop)
        return NX_OK;
    NX_TRY(nx_journal_append(&wr->jr, key, wr->crc, w->n_out, e));
    wr->journaled++;
    stall_if_asked(wr);
    return NX_OK;
}

static int writer_init(writer *wr, nx_err *e)
{
    size_t raw = COPY_CHUNK > ROW_BLOCK_ELEMS * 4 ? COPY_CHUNK : ROW_BLOCK_ELEMS * 4;
    int64_t max_cols = 16;
    for (int64_t i = 0; i < wr->k->n_q; i++)
        max_cols = wr->k->q[i].cols > max_cols ? wr->k->q[i].cols : max_cols;
    /* one row must fit even when a row is longer than a block */
    size_t elems = (size_t)(max_cols > ROW_BLOCK_ELEMS ? max_cols : ROW_BLOCK_ELEMS);
    raw = raw > elems * 4 ? raw : elems * 4;
    wr->raw = malloc(raw);
    wr->w = malloc(elems * sizeof(float));
    wr->codes = malloc(elems / 2);
    wr->scales = malloc(elems / NX_BLOCK);
    wr->fds = malloc(((size_t)wr->p->n_shards + 1) * sizeof *wr->fds);
    NX_ERROR_IF(!wr->raw || !wr->w || !wr->codes || !wr->scales || !wr->fds, e, NX_EIO,
                "out of memory for the row buffers");
    if (wr->o->report && wr->c->n_fused > 0) {
        wr->fused_stats = calloc((size_t)wr->c->n_fused, sizeof *wr->fused_stats);
        NX_ALLOC_CHECK(wr->fused_stats, e, "fused-expert statistics");
    }
    for (int32_t s = 0; s < wr->p->n_shards; s++)
        wr->fds[s] = -1;
    int rank;
    MPI_Comm_rank(wr->pg.comm, &rank);
    wr->stall_after = stall_setting(rank);
    nx_kernel k;
    NX_TRY(nx_kernel_select(&k, e));
    wr->kernel = nx_kernel_fn(k);
    return nx_journal_open(&wr->jr, wr->dir, rank, wr->o->resumed, e);
}

/* fsync what this rank wrote: on a cluster filesystem each client flushes its own pages. */
static int writer_close(writer *wr, int rc, nx_err *e)
{
    char path[4096];
    for (int32_t s = 0; wr->fds && s < wr->p->n_shards; s++) {
        if (wr->fds[s] < 0)
            continue;
        if (rc == NX_OK && !wr->o->no_fsync && fsync(wr->fds[s]) != 0)
            rc = nx_err_errno(e, NX_EIO, "%s: fsync failed", shard_path(wr, s, path, sizeof path));
        if (close(wr->fds[s]) != 0 && rc == NX_OK)
            rc = nx_err_errno(e, NX_EIO, "%s: close failed", shard_path(wr, s, path, sizeof path));
    }
    if (wr->calib != wr->o->calib)
        nx_calib_close(wr->calib);
    rc = nx_journal_close(&wr->jr, rc, e);
    free(wr->fds);
    nx_fused_scratch_free(wr->fs);
    free(wr->raw);
    free(wr->w);
    free(wr->codes);
    free(wr->scales);
    return rc;
}

/* The first work item at or after i that rank owns (p->n_work when none). */
static int64_t first_owned(const nx_plan *p, int64_t i, int rank)
{
    while (i < p->n_work && p->work[i].rank != rank)
        i++;
    return i;
}

int nx_write_run(nx_source *src, const nx_classes *k, const nx_stats *s, const nx_amax *a,
                 const nx_plan *p, const char *dir, const nx_write_opts *o, MPI_Comm comm,
                 nx_err *e)
{
    int rank;
    MPI_Comm_rank(comm, &rank);
    writer wr = { .c = src->c, .k = k, .s = s, .a = a, .p = p, .o = o, .dir = dir,
                  .src = src, .jr = { .fd = -1 } };
    nx_progress_init(&wr.pg, comm, src->c->total_bytes, "quantized", o->quiet);
    int rc = writer_init(&wr, e);
    int64_t next = first_owned(p, 0, rank);
    while (next < p->n_work && rc == NX_OK && !wr.pg.stop) {
        int64_t i = next;
        next = first_owned(p, i + 1, rank);
        if (next < p->n_work && p->work[next].tensor >= 0 && p->work[next].piece < 0)
            nx_source_prefetch(src, p->work[next].tensor); /* read ahead while we work */
        rc = process(&wr, &p->work[i], e);
    }
    nx_progress_finish(&wr.pg, rc != NX_OK);
    rc = writer_close(&wr, rc, e);
    rc = nx_agree(rc, e, comm);
    if (rc == NX_OK && wr.fused_stats)
        rc = nx_agree(fused_report(&wr, e), e, comm);
    free(wr.fused_stats);
    if (rc == NX_OK && o->cast_mxfp4 && o->cast_blocks)
        MPI_Allreduce(wr.cast_blocks, o->cast_blocks, 2, MPI_INT64_T, MPI_SUM, comm);
    if (rc == NX_OK && o->report)
        rc = nx_report_write(o->report, wr.rep, wr.n_rep, comm, e);
    for (int64_t i = 0; i < wr.n_rep; i++)
        free((char *)wr.rep[i].module);
    free(wr.rep);
    NX_ERROR_IF(rc == NX_OK && wr.pg.stop, e, NX_EIO, "internal: stopped without an error");
    return rc;
}
