/* Phase 5: resolve weight and input amax across fused groups and MoE layers. */
#include "nvfp4x/sync.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nvfp4x/comm.h"
#include "nvfp4x/fused.h"
#include "nvfp4x/mxfp4.h"
#include "nvfp4x/quantize.h"
#include "nvfp4x/util.h"

#define ROW_BLOCK_ELEMS (4 << 20)

/* max |x| on the bit patterns: with the sign cleared, the integer order of IEEE values is
 * their order, and NaN and Inf sort above every finite value. Vectorizes without fast-math. */
static uint32_t absmax_bits16(const uint16_t *h, int64_t n)
{
    uint16_t m = 0;
    for (int64_t i = 0; i < n; i++) {
        uint16_t a = h[i] & 0x7FFF;
        m = a > m ? a : m;
    }
    return m;
}

static uint32_t absmax_bits32(const uint32_t *u, int64_t n)
{
    uint32_t m = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t a = u[i] & 0x7FFFFFFFu;
        m = a > m ? a : m;
    }
    return m;
}

/* max |w| of n source values (BF16/F16/F32); NaN when any value is NaN or Inf. */
static float absmax_src(const void *raw, nx_dtype dt, int64_t n)
{
    uint32_t bits;
    float v;
    if (dt == NX_DT_F32) {
        bits = absmax_bits32(raw, n);
        return bits >= 0x7F800000u ? NAN : nx_f32_from_bits(bits);
    }
    bits = absmax_bits16(raw, n);
    uint16_t h = (uint16_t)bits;
    nx_widen_f32(&h, dt, 1, &v);
    return isfinite(v) ? v : NAN;
}

/* Rows [r, r+n) of the weight: their max |w|. Encoded sources are decoded first (decode.h),
 * except MXFP4, whose max needs only each block's largest code and its scale. */
static int rows_absmax(nx_source *src, int64_t tensor, int64_t r, int64_t n, float *w,
                       void *raw, float *m, nx_err *e)
{
    const nx_tensor *t = &src->c->t[tensor];
    int64_t cols = nx_tensor_cols(t), elems = n * cols;
    if (t->codec == NX_CODEC_MXFP4) {
        uint8_t *packed = raw, *e8m0 = packed + elems / 2;
        NX_TRY(nx_source_stored_rows(src, tensor, r, n, packed, e8m0, e));
        *m = nx_mxfp4_absmax(packed, e8m0, n, cols);
        return NX_OK;
    }
    if (t->scale >= 0) {
        NX_TRY(nx_source_read_rows_f32(src, tensor, r, n, w, raw, e));
        *m = absmax_src(w, NX_DT_F32, elems);
        return NX_OK;
    }
    size_t row_bytes = (size_t)t->shape[1] * nx_dtype_size(t->dtype);
    NX_TRY(nx_source_read(src, tensor, (uint64_t)r * row_bytes, raw, (size_t)n * row_bytes, e));
    NX_ERROR_IF(t->dtype != NX_DT_BF16 && t->dtype != NX_DT_F16 && t->dtype != NX_DT_F32, e,
                NX_EINPUT, "%s: tensor %s has dtype %s; quantized weights must be BF16, F16, "
                "F32 or FP8 with scales", nx_source_path(src, tensor), t->name,
                nx_dtype_name(t->dtype));
    *m = absmax_src(raw, t->dtype, elems);
    return NX_OK;
}

/* Row-block scratch for the amax pass, allocated once: fresh large allocations cost a page
 * fault per page. */
typedef struct scratch {
    float *w;
    void *raw;
} scratch;

/* max |W| of a 2-D source weight, streamed in row blocks (kept in memory for phase 6 when it
 * fits the budget); NaN or Inf is an error naming it. */
static int weight_absmax(nx_source *src, int64_t tensor, scratch *sc, float *amax, nx_err *e)
{
    const nx_tensor *t = &src->c->t[tensor];
    int64_t cols = nx_tensor_cols(t);
    int64_t rows_per = ROW_BLOCK_ELEMS / cols > 0 ? ROW_BLOCK_ELEMS / cols : 1;
    float m = 0.0f;
    int kept;
    int rc = nx_source_keep(src, tensor, &kept, e);
    for (int64_t r = 0; r < t->shape[0] && rc == NX_OK; r += rows_per) {
        int64_t n = t->shape[0] - r < rows_per ? t->shape[0] - r : rows_per;
        float bm = 0.0f;
        rc = rows_absmax(src, tensor, r, n, sc->w, sc->raw, &bm, e);
        if (rc == NX_OK && !isfinite(bm))
            rc = nx_err_set(e, NX_EINPUT, "%s: tensor %s contains NaN or Inf (rows %lld-%lld)",
                            nx_source_path(src, tensor), t->name, (long long)r,
                            (long long)(r + n - 1));
        m = bm > m ? bm : m;
    }
    *amax = m;
    return rc;
}

/* ---- Fused experts (fused.h): the pieces a rank owns ---------------------------------------- */

/* max |W| over this rank's pieces of fused tensor t (NX_ABSENT when it owns none). */
static int fused_absmax(nx_source *src, const nx_plan *p, int64_t t, int rank,
                        nx_fused_scratch **fs, float *amax, nx_err *e)
{
    const nx_fused *f = nx_catalog_fused(src->c, t);
    for (int64_t w = p->work_of[t]; w < p->work_of[t] + f->n_pieces; w++) {
        float m;
        if (p->work[w].rank != rank)
            continue;
        NX_TRY(nx_fused_piece_absmax(src, f, p->work[w].piece, fs, &m, e));
        NX_ERROR_IF(!isfinite(m), e, NX_EINPUT, "%s: tensor %s contains NaN or Inf (piece %lld: "
                    "expert %lld)", nx_source_path(src, t), src->c->t[t].name,
                    (long long)p->work[w].piece, (long long)(p->work[w].piece /
                                                             f->pieces_per_expert));
        *amax = m > *amax ? m : *amax;
    }
    return NX_OK;
}

/* Owners compute max |W| for their modules that calibration gave no weight amax. */
static int local_weight_amax(nx_source *src, const nx_classes *k, const nx_stats *s,
                             const nx_plan *p, int rank, float *group, nx_amax *a, nx_err *e)
{
    int64_t max_cols = 16;
    for (int64_t i = 0; i < k->n_q; i++)
        max_cols = k->q[i].cols > max_cols ? k->q[i].cols : max_cols;
    size_t elems = (size_t)(max_cols > ROW_BLOCK_ELEMS ? max_cols : ROW_BLOCK_ELEMS);
    scratch sc = { NULL, NULL };
    nx_fused_scratch *fs = NULL;
    int rc = NX_OK;
    for (int64_t i = 0; i < k->n_q && rc == NX_OK; i++) {
        const nx_qmod *q = &k->q[i];
        float v = s->w_amax[i];
        if (a->k_shared[i] != NX_NOT_CAST)
            continue; /* closed form, cast_sync */
        if (v == NX_ABSENT && nx_catalog_fused(src->c, q->tensor)) {
            a->w_from_weight[i] = 1;
            rc = fused_absmax(src, p, q->tensor, rank, &fs, &v, e);
        } else if (v == NX_ABSENT) {
            a->w_from_weight[i] = 1;
            if (nx_plan_owner(p, q->tensor) != rank)
                continue;
            if (sc.raw == NULL) {
                sc.w = malloc(elems * sizeof *sc.w);
                sc.raw = malloc(elems * sizeof(float));
            }
            rc = sc.w && sc.raw ? weight_absmax(src, q->tensor, &sc, &v, e)
                                : nx_err_set(e, NX_EIO, "out of memory for the amax pass");
        }
        a->w_own[i] = v;
        if (v > group[q->group])
            group[q->group] = v;
    }
    nx_fused_scratch_free(fs);
    free(sc.w);
    free(sc.raw);
    return rc;
}

/* Collects the names of modules that need an input amax and have none. */
static int missing_inputs(const nx_catalog *c, const nx_classes *k, const nx_stats *s,
                          nx_err *e)
{
    char list[700] = "";
    int64_t n = 0;
    for (int64_t i = 0; i < k->n_q; i++) {
        if (k->q[i].slot >= 0 || s->in_amax[i] != NX_ABSENT)
            continue; /* experts: resolve_inputs or resolve_fallback covers them */
        char *name = nx_qmod_name(c, &k->q[i]);
        size_t len = strlen(list);
        if (name && len + strlen(name) + 8 < sizeof list)
            snprintf(list + len, sizeof list - len, "%s%s", n ? ", " : "", name);
        else if (len + 5 < sizeof list && !strstr(list, "..."))
            snprintf(list + len, sizeof list - len, ", ...");
        free(name);
        n++;
    }
    NX_ERROR_IF(n > 0, e, NX_EINPUT, "calibration has no input_quantizer/_amax for %lld "
                "quantized module%s (required unless --weight-only): %s", (long long)n,
                n == 1 ? "" : "s", list);
    return NX_OK;
}

/* Expert input amax: every expert of a layer gets the layer max per projection kind. */
static int resolve_inputs(const nx_catalog *c, const nx_classes *k, const nx_stats *s,
                          nx_amax *a, nx_err *e)
{
    NX_TRY(missing_inputs(c, k, s, e));
    float *slot = malloc(((size_t)k->n_slots + 1) * sizeof *slot);
    float *group = malloc(((size_t)k->n_groups + 1) * sizeof *group);
    int rc = slot && group ? NX_OK : nx_err_set(e, NX_EIO, "out of memory");
    for (int64_t i = 0; rc == NX_OK && i < k->n_slots; i++)
        slot[i] = NX_ABSENT;
    for (int64_t i = 0; rc == NX_OK && i < k->n_groups; i++)
        group[i] = NX_ABSENT;
    for (int64_t i = 0; rc == NX_OK && i < k->n_q; i++)
        if (k->q[i].slot >= 0 && s->in_amax[i] > slot[k->q[i].slot])
            slot[k->q[i].slot] = s->in_amax[i];
    for (int64_t i = 0; rc == NX_OK && i < k->n_slots; i++)
        if (slot[i] == NX_ABSENT)
            rc = nx_err_set(e, NX_EINPUT, "calibration has no input amax for any expert of %s",
                            k->slot_names[i]);
    for (int64_t i = 0; rc == NX_OK && i < k->n_q; i++) {
        const nx_qmod *q = &k->q[i];
        float v = q->slot >= 0 ? slot[q->slot] : s->in_amax[i];
        a->in_from_layer[i] = q->slot >= 0 && s->in_amax[i] == NX_ABSENT;
        if (v > group[q->group])
            group[q->group] = v;
    }
    for (int64_t i = 0; rc == NX_OK && i < k->n_q; i++)
        a->in[i] = group[k->q[i].group];
    free(slot);
    free(group);
    return rc;
}

/* A fused group whose members disagree on having an input amax: ModelOpt's calibration records
 * w1 and w3 together (they read the same input), so one alone is a broken file. */
static int one_sided_group(const nx_catalog *c, const nx_classes *k, const nx_stats *s,
                           const uint8_t *has, nx_err *e)
{
    for (int64_t i = 0; i < k->n_q; i++)
        NX_ERROR_IF(has[k->q[i].group] == 3 && s->in_amax[i] == NX_ABSENT, e, NX_EINPUT,
                    "calibration has an input amax for a fused sibling of %s but not for it "
                    "(w1 and w3 of an expert are calibrated together)",
                    c->t[k->q[i].tensor].name);
    return NX_OK;
}

/* DeepSeek-V4 (ModelOpt's quantize_to_nvfp4.py): an expert keeps its own input amax (w1 and w3
 * their max); one without takes the largest input amax of the same projection over all
 * calibrated experts of the main layers; none calibrated for it is an error naming it. */
static int resolve_fallback(const nx_catalog *c, const nx_classes *k, const nx_stats *s,
                            nx_amax *a, nx_err *e)
{
    float *pool = malloc(((size_t)k->n_slots + 1) * sizeof *pool);
    float *group = malloc(((size_t)k->n_groups + 1) * sizeof *group);
    uint8_t *has = calloc((size_t)k->n_groups + 1, 1); /* bit 0: a member has one, 1: lacks */
    int rc = pool && group && has ? NX_OK : nx_err_set(e, NX_EIO, "out of memory");
    for (int64_t i = 0; rc == NX_OK && i < k->n_slots; i++)
        pool[i] = NX_ABSENT;
    for (int64_t i = 0; rc == NX_OK && i < k->n_groups; i++)
        group[i] = NX_ABSENT;
    for (int64_t i = 0; rc == NX_OK && i < k->n_q; i++) {
        const nx_qmod *q = &k->q[i];
        has[q->group] |= s->in_amax[i] != NX_ABSENT ? 1 : 2;
        group[q->group] = s->in_amax[i] > group[q->group] ? s->in_amax[i] : group[q->group];
    }
    if (rc == NX_OK)
        rc = one_sided_group(c, k, s, has, e);
    for (int64_t i = 0; rc == NX_OK && i < k->n_q; i++)
        if (group[k->q[i].group] > pool[k->q[i].slot])
            pool[k->q[i].slot] = group[k->q[i].group];
    for (int64_t i = 0; rc == NX_OK && i < k->n_q; i++) {
        const nx_qmod *q = &k->q[i];
        a->in_from_layer[i] = group[q->group] == NX_ABSENT;
        a->in[i] = a->in_from_layer[i] ? pool[q->slot] : group[q->group];
        if (a->in[i] == NX_ABSENT)
            rc = nx_err_set(e, NX_EINPUT, "calibration has no input amax for any %s, so %s "
                            "(uncalibrated) has none to fall back to", k->slot_names[q->slot],
                            c->t[q->tensor].name);
    }
    free(pool);
    free(group);
    free(has);
    return rc;
}

static int check_resolved(const nx_catalog *c, const nx_classes *k, const float *v,
                          const char *what, nx_err *e)
{
    for (int64_t i = 0; i < k->n_q; i++)
        NX_ERROR_IF(!(v[i] > 0.0f) || !isfinite(v[i]), e, NX_EINPUT,
                    "tensor %s: resolved %s amax is %g (must be finite and > 0)",
                    c->t[k->q[i].tensor].name, what, (double)v[i]);
    return NX_OK;
}

/* ---- --cast-mxfp4: the k_max of MXFP4 scales (mxfp4.h) ---------------------------------- */

/* A module the cast covers: its source is MXFP4, a 2-D weight (DeepSeek-V4) or a fused
 * projection (gpt-oss's <experts>.<proj>_blocks). */
static int is_cast(const nx_catalog *c, const nx_qmod *q, int cast)
{
    return cast && c->t[q->tensor].codec == NX_CODEC_MXFP4;
}

/* n bytes of scale tensor t into *buf (grown as needed). */
static int read_scale_bytes(nx_source *src, int64_t t, size_t n, uint8_t **buf, size_t *cap,
                            nx_err *e)
{
    if (n > *cap) {
        uint8_t *grown = realloc(*buf, n);
        NX_ALLOC_CHECK(grown, e, "MXFP4 scales");
        *buf = grown;
        *cap = n;
    }
    return nx_source_read(src, t, 0, *buf, n, e);
}

/* This rank's k_max of module q's scale bytes (INT32_MIN when it reads none of them): the
 * pieces it owns of a fused projection, or the whole scale tensor of a weight it owns. */
static int local_kmax(nx_source *src, const nx_plan *p, const nx_qmod *q, int rank,
                      nx_fused_scratch **fs, uint8_t **buf, size_t *cap, int32_t *k, nx_err *e)
{
    const nx_fused *f = nx_catalog_fused(src->c, q->tensor);
    const uint8_t *sc = NULL;
    int64_t n = 0;
    *k = INT32_MIN;
    for (int64_t w = f ? p->work_of[q->tensor] : 0; f && w < p->work_of[q->tensor] +
                                                           f->n_pieces; w++) {
        if (p->work[w].rank != rank)
            continue;
        NX_TRY(nx_fused_piece_scales(src, f, p->work[w].piece, &sc, &n, fs, e));
        int32_t v = nx_mxfp4_kmax(sc, n);
        *k = v > *k ? v : *k;
    }
    if (f || nx_plan_owner(p, q->tensor) != rank)
        return NX_OK;
    int64_t st = src->c->t[q->tensor].scale;
    NX_TRY(read_scale_bytes(src, st, (size_t)src->c->t[st].nbytes, buf, cap, e));
    *k = nx_mxfp4_kmax(*buf, (int64_t)src->c->t[st].nbytes);
    return NX_OK;
}

/* --cast-mxfp4: every rank reads the scales of what it owns; each module's own k_max
 * (k_window, the window of its closed-form block amax) is their max over the ranks, and a
 * fused group (V4's w1 with w3; a gpt-oss projection is its own group) shares the largest, an
 * all-zero tensor counting as 0, for one weight_scale_2 = 2^(k_shared - 8) (FRONTIER.md 1.4).
 * The global amax is then 6 * 448 * 2^(k_shared - 8), whatever the calibration holds. */
static int cast_sync(nx_source *src, const nx_classes *k, const nx_plan *p, int rank,
                     nx_amax *a, MPI_Comm comm, nx_err *e)
{
    int32_t *group = malloc(((size_t)k->n_groups + 1) * sizeof *group);
    nx_fused_scratch *fs = NULL;
    uint8_t *buf = NULL;
    size_t cap = 0;
    int rc = group ? NX_OK : nx_err_set(e, NX_EIO, "out of memory");
    for (int64_t i = 0; rc == NX_OK && i < k->n_q; i++)
        if (is_cast(src->c, &k->q[i], 1))
            rc = local_kmax(src, p, &k->q[i], rank, &fs, &buf, &cap, &a->k_window[i], e);
    nx_fused_scratch_free(fs);
    free(buf);
    rc = nx_agree(rc, e, comm);
    if (rc == NX_OK)
        MPI_Allreduce(MPI_IN_PLACE, a->k_window, (int)k->n_q, MPI_INT32_T, MPI_MAX, comm);
    for (int64_t g = 0; rc == NX_OK && g < k->n_groups; g++)
        group[g] = INT32_MIN;
    for (int64_t i = 0; rc == NX_OK && i < k->n_q; i++) {
        int32_t v = a->k_window[i] == NX_E8M0_NONE ? 0 : a->k_window[i];
        if (is_cast(src->c, &k->q[i], 1) && v > group[k->q[i].group])
            group[k->q[i].group] = v;
    }
    for (int64_t i = 0; rc == NX_OK && i < k->n_q; i++) {
        if (!is_cast(src->c, &k->q[i], 1))
            continue;
        a->k_shared[i] = group[k->q[i].group];
        a->w[i] = ldexpf(2688.0f, a->k_shared[i] - 8);
        a->w_from_weight[i] = 0;
    }
    free(group);
    return rc;
}

int nx_amax_sync(nx_source *src, const nx_classes *k, const nx_stats *s, const nx_plan *p,
                 int weight_only, int cast, nx_amax *a, MPI_Comm comm, nx_err *e)
{
    const nx_catalog *c = src->c;
    int rank;
    MPI_Comm_rank(comm, &rank);
    memset(a, 0, sizeof *a);
    size_t n = (size_t)k->n_q + 1;
    a->w = malloc(n * sizeof *a->w);
    a->w_own = calloc(n, sizeof *a->w_own);
    a->in = calloc(n, sizeof *a->in);
    a->w_from_weight = calloc(n, 1);
    a->in_from_layer = calloc(n, 1);
    a->k_shared = malloc(n * sizeof *a->k_shared);
    a->k_window = malloc(n * sizeof *a->k_window);
    float *group = malloc(((size_t)k->n_groups + 1) * sizeof *group);
    int rc = a->w && a->w_own && a->in && a->w_from_weight && a->in_from_layer &&
             a->k_shared && a->k_window && group ? NX_OK : nx_err_set(e, NX_EIO, "out of memory");
    for (int64_t g = 0; rc == NX_OK && g < k->n_groups; g++)
        group[g] = NX_ABSENT;
    for (int64_t i = 0; rc == NX_OK && i < k->n_q; i++)
        a->k_shared[i] = a->k_window[i] = is_cast(c, &k->q[i], cast) ? 0 : NX_NOT_CAST;
    if (rc == NX_OK)
        rc = local_weight_amax(src, k, s, p, rank, group, a, e);
    rc = nx_agree(rc, e, comm);
    if (rc == NX_OK) {
        MPI_Allreduce(MPI_IN_PLACE, group, (int)k->n_groups, MPI_FLOAT, MPI_MAX, comm);
        /* computed ones are known to their owner only (0 elsewhere, below any amax) */
        MPI_Allreduce(MPI_IN_PLACE, a->w_own, (int)k->n_q, MPI_FLOAT, MPI_MAX, comm);
        for (int64_t i = 0; i < k->n_q; i++)
            a->w[i] = group[k->q[i].group];
    }
    if (rc == NX_OK && cast)
        rc = cast_sync(src, k, p, rank, a, comm, e);
    if (rc == NX_OK)
        rc = check_resolved(c, k, a->w, "weight", e);
    if (rc == NX_OK && !weight_only)
        rc = k->slot_fallback ? resolve_fallback(c, k, s, a, e) : resolve_inputs(c, k, s, a, e);
    if (rc == NX_OK && !weight_only)
        rc = check_resolved(c, k, a->in, "input", e);
    free(group);
    return rc;
}

void nx_amax_free(nx_amax *a)
{
    free(a->k_shared);
    free(a->w);
    free(a->w_own);
    free(a->in);
    free(a->w_from_weight);
    free(a->in_from_layer);
    free(a->k_window);
    memset(a, 0, sizeof *a);
}
