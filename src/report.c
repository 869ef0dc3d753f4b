/* Quantization report: reconstruction statistics of NVFP4 tensors (NUMERICS.md
 * "Dequantization") and the HDF5 file that holds them (docs/report.md). Rows are in natural
 * order of the module names: rank 0 gathers the names, sorts them and tells every rank the
 * rows of its entries; the entries then move to the rank that writes their block of rows, and
 * every rank writes its block collectively (parallel HDF5). With serial HDF5, rank 0 gathers
 * every entry and writes alone. */
#include "nvfp4x/report.h"

#include <hdf5.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nvfp4x/comm.h"
#include "nvfp4x/quantize.h"
#include "nvfp4x/util.h"
#include "nvfp4x/version.h"

#define FORMAT_VERSION 1
#define E4M3_MAX_BYTE 0x7E /* 448 */
#define N_CODES 16

/* ---- Statistics --------------------------------------------------------------------------- */

static void block_add(nx_qstats *s, const float *w, const uint8_t *packed, float scale,
                      float ws2, const float *e2m1)
{
    int all_zero = 1;
    for (int k = 0; k < NX_BLOCK; k++) {
        uint8_t code = (uint8_t)(packed[k / 2] >> (4 * (k & 1)) & 0xF);
        /* e2m1 * S is exact in float32, so w_hat is the float nearest the exact product */
        float hat = e2m1[code] * scale * ws2;
        double err = (double)w[k] - (double)hat, a = fabs(err);
        s->sum_sq_err += err * err;
        s->sum_sq_ref += (double)w[k] * (double)w[k];
        if (a > s->max_abs_err || isnan(a))
            s->max_abs_err = a;
        s->hist[code]++;
        all_zero &= w[k] == 0.0f;
    }
    s->zero_blocks += all_zero;
}

void nx_qstats_add(nx_qstats *s, const float *w, int64_t rows, int64_t cols,
                   const uint8_t *codes, const uint8_t *scales, float ws2)
{
    float e2m1[N_CODES];
    for (int c = 0; c < N_CODES; c++)
        e2m1[c] = nx_e2m1_decode((uint8_t)c);
    int64_t n_blocks = rows * cols / NX_BLOCK;
    for (int64_t b = 0; b < n_blocks; b++) {
        block_add(s, w + b * NX_BLOCK, codes + b * (NX_BLOCK / 2), nx_e4m3_decode(scales[b]),
                  ws2, e2m1);
        s->saturated_blocks += scales[b] == E4M3_MAX_BYTE;
    }
    s->elems += rows * cols;
    s->blocks += n_blocks;
}

void nx_qstats_merge(nx_qstats *a, const nx_qstats *b)
{
    a->elems += b->elems;
    a->sum_sq_err += b->sum_sq_err;
    a->sum_sq_ref += b->sum_sq_ref;
    if (b->max_abs_err > a->max_abs_err || isnan(b->max_abs_err))
        a->max_abs_err = b->max_abs_err;
    a->blocks += b->blocks;
    a->saturated_blocks += b->saturated_blocks;
    a->zero_blocks += b->zero_blocks;
    for (int c = 0; c < N_CODES; c++)
        a->hist[c] += b->hist[c];
}

double nx_qstats_rel_rms(const nx_qstats *s)
{
    if (s->sum_sq_ref == 0.0)
        return s->sum_sq_err == 0.0 ? 0.0 : INFINITY;
    return sqrt(s->sum_sq_err / s->sum_sq_ref);
}

double nx_qstats_snr_db(const nx_qstats *s)
{
    if (s->sum_sq_err == 0.0)
        return INFINITY;
    return 10.0 * log10(s->sum_sq_ref / s->sum_sq_err);
}

/* ---- Columns of /tensors (docs/report.md) ------------------------------------------------- */

enum { COL_ELEMENTS, COL_REL_RMS, COL_MAX_ABS_ERR, COL_SNR_DB, COL_SUM_SQ_ERR, COL_SUM_SQ_REF,
       COL_BLOCKS, COL_SATURATED, COL_ZERO, COL_HISTOGRAM, COL_W_FROM_WEIGHT,
       COL_IN_FROM_LAYER, COL_W_STATIC, COL_W_SWEPT, COL_SUM_SQ_ERR_MAX, COL_REL_RMS_MAX,
       COL_SCALE_RATIO, N_COLUMNS };
enum { TYPE_I64, TYPE_F64, TYPE_U8 };

static const struct {
    const char *name;
    int type;
    int width; /* values per row */
} columns[N_COLUMNS] = {
    [COL_ELEMENTS] = { "elements", TYPE_I64, 1 },
    [COL_REL_RMS] = { "rel_rms", TYPE_F64, 1 },
    [COL_MAX_ABS_ERR] = { "max_abs_err", TYPE_F64, 1 },
    [COL_SNR_DB] = { "snr_db", TYPE_F64, 1 },
    [COL_SUM_SQ_ERR] = { "sum_sq_err", TYPE_F64, 1 },
    [COL_SUM_SQ_REF] = { "sum_sq_ref", TYPE_F64, 1 },
    [COL_BLOCKS] = { "blocks", TYPE_I64, 1 },
    [COL_SATURATED] = { "saturated_blocks", TYPE_I64, 1 },
    [COL_ZERO] = { "zero_blocks", TYPE_I64, 1 },
    [COL_HISTOGRAM] = { "code_histogram", TYPE_I64, N_CODES },
    [COL_W_FROM_WEIGHT] = { "weight_amax_from_weight", TYPE_U8, 1 },
    [COL_IN_FROM_LAYER] = { "input_amax_from_layer", TYPE_U8, 1 },
    [COL_W_STATIC] = { "static_weight_amax", TYPE_U8, 1 },
    [COL_W_SWEPT] = { "swept_weight_amax", TYPE_U8, 1 },
    [COL_SUM_SQ_ERR_MAX] = { "sum_sq_err_max", TYPE_F64, 1 },
    [COL_REL_RMS_MAX] = { "rel_rms_max", TYPE_F64, 1 },
    [COL_SCALE_RATIO] = { "mean_scale_ratio", TYPE_F64, 1 },
};

static size_t type_bytes(int type)
{
    return type == TYPE_U8 ? 1 : 8;
}

static hid_t type_memory(int type)
{
    return type == TYPE_I64 ? H5T_NATIVE_INT64 : type == TYPE_F64 ? H5T_NATIVE_DOUBLE
                                                                   : H5T_NATIVE_UINT8;
}

static hid_t type_file(int type)
{
    return type == TYPE_I64 ? H5T_STD_I64LE : type == TYPE_F64 ? H5T_IEEE_F64LE : H5T_STD_U8LE;
}

/* The sweep's columns; NaN for a module that was not swept. */
static double sweep_column(int c, const nx_report_entry *x)
{
    nx_qstats max = x->st;
    max.sum_sq_err = x->sw.sum_sq_err_max;
    if (!x->w_swept)
        return NAN;
    if (c == COL_SUM_SQ_ERR_MAX)
        return x->sw.sum_sq_err_max;
    if (c == COL_REL_RMS_MAX)
        return nx_qstats_rel_rms(&max);
    return x->sw.scale_ratio_blocks ? x->sw.scale_ratio_sum / (double)x->sw.scale_ratio_blocks
                                    : NAN;
}

/* Column c of entry x: the column's width values of its type at out. */
static void column_fill(int c, const nx_report_entry *x, void *out)
{
    int64_t *i64 = out;
    double *f64 = out;
    uint8_t *u8 = out;
    switch (c) {
    case COL_ELEMENTS: *i64 = x->st.elems; return;
    case COL_REL_RMS: *f64 = nx_qstats_rel_rms(&x->st); return;
    case COL_MAX_ABS_ERR: *f64 = x->st.max_abs_err; return;
    case COL_SNR_DB: *f64 = nx_qstats_snr_db(&x->st); return;
    case COL_SUM_SQ_ERR: *f64 = x->st.sum_sq_err; return;
    case COL_SUM_SQ_REF: *f64 = x->st.sum_sq_ref; return;
    case COL_BLOCKS: *i64 = x->st.blocks; return;
    case COL_SATURATED: *i64 = x->st.saturated_blocks; return;
    case COL_ZERO: *i64 = x->st.zero_blocks; return;
    case COL_HISTOGRAM: memcpy(i64, x->st.hist, sizeof x->st.hist); return;
    case COL_W_FROM_WEIGHT: *u8 = x->w_from_weight; return;
    case COL_IN_FROM_LAYER: *u8 = x->in_from_layer; return;
    case COL_W_STATIC: *u8 = x->w_static; return;
    case COL_W_SWEPT: *u8 = x->w_swept; return;
    default: *f64 = sweep_column(c, x); return;
    }
}

/* ---- Gathering to rank 0 ------------------------------------------------------------------ */

typedef struct gathered {
    int *count, *first; /* per rank: entries, and index of its first one */
    int *bytes, *displ; /* per rank: bytes, and offset of its first one */
    int64_t n;          /* entries of every rank */
    size_t longest;     /* longest module name of every rank */
    nx_buf all;         /* rank 0: every rank's bytes, in rank order */
} gathered;

static void gathered_free(gathered *g)
{
    free(g->count);
    free(g->first);
    free(g->bytes);
    free(g->displ);
    nx_buf_free(&g->all);
}

/* Every rank's (entries, bytes, longest name) to all ranks; the totals must fit MPI counts. */
static int gather_sizes(const nx_buf *mine, int64_t n, size_t longest, gathered *g,
                        MPI_Comm comm, const char *path, nx_err *e)
{
    int size;
    MPI_Comm_size(comm, &size);
    int64_t sent[3] = { n, (int64_t)mine->len, (int64_t)longest }, *got = NULL;
    g->count = malloc((size_t)size * sizeof *g->count);
    g->first = malloc((size_t)size * sizeof *g->first);
    g->bytes = malloc((size_t)size * sizeof *g->bytes);
    g->displ = malloc((size_t)size * sizeof *g->displ);
    got = malloc((size_t)size * sizeof sent);
    int rc = mine->failed || !g->count || !g->first || !g->bytes || !g->displ || !got
             ? nx_err_set(e, NX_EIO, "out of memory gathering %s", path) : NX_OK;
    rc = nx_agree(rc, e, comm);
    if (rc == NX_OK)
        MPI_Allgather(sent, 3, MPI_INT64_T, got, 3, MPI_INT64_T, comm);
    int64_t bytes = 0;
    for (int r = 0; rc == NX_OK && r < size; r++) {
        g->count[r] = (int)got[3 * r];
        g->first[r] = (int)g->n;
        g->bytes[r] = (int)got[3 * r + 1];
        g->displ[r] = (int)bytes;
        g->n += got[3 * r];
        bytes += got[3 * r + 1];
        g->longest = (size_t)got[3 * r + 2] > g->longest ? (size_t)got[3 * r + 2] : g->longest;
        if (g->n > INT_MAX || bytes > INT_MAX)
            rc = nx_err_set(e, NX_EIO, "%s: more than 2^31 entries or bytes of report data",
                            path);
    }
    free(got);
    return rc; /* the same on every rank: computed from the same numbers */
}

/* mine (n entries) from every rank into g->all on rank 0, in rank order. */
static int gather_bytes(const nx_buf *mine, int64_t n, size_t longest, gathered *g,
                        MPI_Comm comm, const char *path, nx_err *e)
{
    int rank, size;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    NX_TRY(gather_sizes(mine, n, longest, g, comm, path, e));
    uint64_t total = (uint64_t)g->displ[size - 1] + (uint64_t)g->bytes[size - 1];
    int rc = NX_OK;
    if (rank == 0) {
        g->all.data = malloc(total ? total : 1);
        g->all.len = g->all.cap = total;
        rc = g->all.data ? NX_OK : nx_err_set(e, NX_EIO, "out of memory gathering %s", path);
    }
    NX_TRY(nx_agree(rc, e, comm));
    MPI_Gatherv(mine->data, (int)mine->len, MPI_BYTE, g->all.data, g->bytes, g->displ,
                MPI_BYTE, 0, comm);
    return NX_OK;
}

/* ---- Rows: natural order of the names ----------------------------------------------------- */

typedef struct named {
    const char *name;
    int64_t idx;
} named;

static int cmp_named(const void *pa, const void *pb)
{
    const named *a = pa, *b = pb;
    int c = nx_natural_cmp(a->name, b->name);
    return c ? c : strcmp(a->name, b->name);
}

/* Rank 0: the row of each gathered name (NUL-terminated, in gather order). */
static int names_sort(const char *names, int64_t n, int64_t *rows, const char *path,
                      nx_err *e)
{
    named *s = malloc((size_t)(n ? n : 1) * sizeof *s);
    NX_ALLOC_CHECK(s, e, "report rows");
    for (int64_t i = 0; i < n; i++, names += strlen(names) + 1)
        s[i] = (named){ names, i };
    qsort(s, (size_t)n, sizeof *s, cmp_named);
    int rc = NX_OK;
    for (int64_t i = 0; i < n; i++) {
        rows[s[i].idx] = i;
        if (i > 0 && strcmp(s[i].name, s[i - 1].name) == 0 && rc == NX_OK)
            rc = nx_err_set(e, NX_EINPUT, "%s: module %s is reported twice", path, s[i].name);
    }
    free(s);
    return rc;
}

static void names_pack(const nx_report_entry *x, int64_t n, nx_buf *b, size_t *longest)
{
    *longest = 0;
    for (int64_t i = 0; i < n; i++) {
        size_t len = strlen(x[i].module);
        nx_buf_put(b, x[i].module, len + 1);
        *longest = len > *longest ? len : *longest;
    }
}

/* The file: every rank's entries, and the rows this rank writes. */
typedef struct layout {
    int64_t n_rows;        /* entries of every rank */
    size_t name_bytes;     /* fixed length of the module names */
    int64_t first, n;      /* this rank writes rows [first, first + n) */
    nx_report_entry *rows; /* those n entries, in row order */
    uint8_t *buf;          /* the records they point into */
} layout;

/* The row of each of this rank's n entries: rank 0 gathers the names, sorts them, scatters. */
static int rows_assign(const nx_report_entry *x, int64_t n, int64_t *rows, layout *l,
                       MPI_Comm comm, const char *path, nx_err *e)
{
    int rank;
    MPI_Comm_rank(comm, &rank);
    nx_buf names = { 0 };
    gathered g = { 0 };
    size_t longest;
    int64_t *all = NULL;
    names_pack(x, n, &names, &longest);
    int rc = gather_bytes(&names, n, longest, &g, comm, path, e);
    if (rc == NX_OK) {
        int rc0 = NX_OK;
        if (rank == 0 && (all = malloc((size_t)(g.n ? g.n : 1) * sizeof *all)) == NULL)
            rc0 = nx_err_set(e, NX_EIO, "out of memory sorting %s", path);
        if (rank == 0 && rc0 == NX_OK)
            rc0 = names_sort((const char *)g.all.data, g.n, all, path, e);
        rc = nx_agree(rc0, e, comm);
    }
    if (rc == NX_OK) {
        MPI_Scatterv(all, g.count, g.first, MPI_INT64_T, rows, (int)n, MPI_INT64_T, 0, comm);
        l->n_rows = g.n;
        l->name_bytes = g.longest ? g.longest : 1;
    }
    free(all);
    nx_buf_free(&names);
    gathered_free(&g);
    return rc;
}

/* ---- Rows to their writers ---------------------------------------------------------------- */

/* Each rank writes one contiguous block of rows, [N r / size, N (r + 1) / size): HDF5 writes
 * a block at once, while scattered rows are slow to select (HDF5 1.10: 23 s as points, over
 * 10 min as a union of hyperslabs, for 280k rows alternating between two ranks). */
static int64_t block_first(int64_t n_rows, int r, int size)
{
    return n_rows * r / size;
}

static int block_rank(int64_t row, int64_t n_rows, int size)
{
    return (int)(((row + 1) * size + n_rows - 1) / n_rows - 1);
}

/* An entry in transit, followed by its NUL-terminated name; records are padded to 8 bytes. */
typedef struct record {
    int64_t row;
    nx_qstats st;
    nx_sweep_stats sw;
    uint8_t flags[4];
} record;

static size_t record_bytes(const layout *l)
{
    return (sizeof(record) + l->name_bytes + 1 + 7) / 8 * 8;
}

typedef struct row_of {
    int64_t row, idx;
} row_of;

static int cmp_row_of(const void *pa, const void *pb)
{
    const row_of *a = pa, *b = pb;
    return (a->row > b->row) - (a->row < b->row);
}

/* This rank's entries as records in row order (so grouped by destination), with the byte
 * count for each destination. */
static void records_pack(const nx_report_entry *x, row_of *order, int64_t n, const layout *l,
                         int size, uint8_t *out, int *bytes)
{
    size_t rb = record_bytes(l);
    qsort(order, (size_t)n, sizeof *order, cmp_row_of);
    memset(bytes, 0, (size_t)size * sizeof *bytes);
    for (int64_t i = 0; i < n; i++) {
        const nx_report_entry *xi = &x[order[i].idx];
        record r;
        memset(&r, 0, sizeof r); /* no uninitialized padding on the wire */
        r.row = order[i].row;
        r.st = xi->st;
        r.sw = xi->sw;
        r.flags[0] = xi->w_from_weight;
        r.flags[1] = xi->in_from_layer;
        r.flags[2] = xi->w_static;
        r.flags[3] = xi->w_swept;
        uint8_t *p = out + (size_t)i * rb;
        memset(p, 0, rb);
        memcpy(p, &r, sizeof r);
        memcpy(p + sizeof r, xi->module, strlen(xi->module));
        bytes[block_rank(r.row, l->n_rows, size)] += (int)rb;
    }
}

/* Received records into l->rows, each at its row. */
static void records_unpack(layout *l)
{
    size_t rb = record_bytes(l);
    for (int64_t i = 0; i < l->n; i++) {
        record r;
        memcpy(&r, l->buf + (size_t)i * rb, sizeof r);
        l->rows[r.row - l->first] = (nx_report_entry){
            .module = (const char *)l->buf + (size_t)i * rb + sizeof r, .st = r.st,
            .w_from_weight = r.flags[0], .in_from_layer = r.flags[1], .w_static = r.flags[2],
            .w_swept = r.flags[3], .sw = r.sw
        };
    }
}

static void displacements(const int *bytes, int size, int *displ)
{
    for (int r = 0, off = 0; r < size; off += bytes[r++])
        displ[r] = off;
}

/* Every entry to the rank that writes its row (MPI_Alltoallv of fixed-size records). */
static int rows_exchange(const nx_report_entry *x, row_of *order, int64_t n, layout *l,
                         MPI_Comm comm, const char *path, nx_err *e)
{
    int rank, size;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    size_t rb = record_bytes(l);
    l->first = block_first(l->n_rows, rank, size);
    l->n = block_first(l->n_rows, rank + 1, size) - l->first;
    int *counts = malloc(4 * (size_t)size * sizeof *counts);
    uint8_t *out = malloc((size_t)(n ? n : 1) * rb);
    l->buf = malloc((size_t)(l->n ? l->n : 1) * rb);
    l->rows = malloc((size_t)(l->n ? l->n : 1) * sizeof *l->rows);
    int too_big = (double)(n > l->n ? n : l->n) * (double)rb > INT_MAX;
    int rc = nx_agree(!counts || !out || !l->buf || !l->rows || too_big
                      ? nx_err_set(e, NX_EIO, "%s: out of memory or over 2 GiB of rows on one "
                                   "rank", path) : NX_OK, e, comm);
    if (rc == NX_OK) {
        int *sb = counts, *sd = counts + size, *rcv = counts + 2 * size, *rd = counts + 3 * size;
        records_pack(x, order, n, l, size, out, sb);
        MPI_Alltoall(sb, 1, MPI_INT, rcv, 1, MPI_INT, comm);
        displacements(sb, size, sd);
        displacements(rcv, size, rd);
        MPI_Alltoallv(out, sb, sd, MPI_BYTE, l->buf, rcv, rd, MPI_BYTE, comm);
        records_unpack(l);
    }
    free(counts);
    free(out);
    return rc;
}

/* Rows for this rank's entries, then the entries of this rank's rows. */
static int layout_build(const nx_report_entry *x, int64_t n, layout *l, MPI_Comm comm,
                        const char *path, nx_err *e)
{
    int64_t *rows = malloc((size_t)(n ? n : 1) * sizeof *rows);
    row_of *order = malloc((size_t)(n ? n : 1) * sizeof *order);
    int rc = nx_agree(rows && order ? NX_OK : nx_err_set(e, NX_EIO, "out of memory laying "
                                                          "out %s", path), e, comm);
    if (rc == NX_OK)
        rc = rows_assign(x, n, rows, l, comm, path, e);
    for (int64_t i = 0; rc == NX_OK && i < n; i++)
        order[i] = (row_of){ rows[i], i };
    if (rc == NX_OK)
        rc = rows_exchange(x, order, n, l, comm, path, e);
    free(rows);
    free(order);
    return rc;
}

static void layout_free(layout *l)
{
    free(l->rows);
    free(l->buf);
}

/* ---- HDF5 --------------------------------------------------------------------------------- */

static hid_t file_create(const char *tmp, MPI_Comm comm)
{
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS), f = H5I_INVALID_HID;
#ifdef NX_HDF5_PARALLEL
    if (fapl >= 0 && H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL) >= 0)
        f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
#else
    (void)comm;
    if (fapl >= 0)
        f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
#endif
    if (fapl >= 0)
        H5Pclose(fapl);
    return f;
}

/* Collective transfers with parallel HDF5: every rank writes its rows in one operation. */
static hid_t xfer_create(void)
{
#ifdef NX_HDF5_PARALLEL
    hid_t x = H5Pcreate(H5P_DATASET_XFER);
    if (x >= 0 && H5Pset_dxpl_mpio(x, H5FD_MPIO_COLLECTIVE) < 0) {
        H5Pclose(x);
        return H5I_INVALID_HID;
    }
    return x;
#else
    return H5P_DEFAULT;
#endif
}

static void close_id(hid_t id, herr_t (*close_fn)(hid_t))
{
    if (id >= 0 && id != H5P_DEFAULT)
        close_fn(id);
}

static int attr_write(hid_t obj, const char *name, hid_t type, const void *value)
{
    hid_t s = H5Screate(H5S_SCALAR);
    hid_t a = s < 0 ? H5I_INVALID_HID : H5Acreate2(obj, name, type, s, H5P_DEFAULT,
                                                    H5P_DEFAULT);
    int ok = a >= 0 && H5Awrite(a, type, value) >= 0;
    close_id(a, H5Aclose);
    close_id(s, H5Sclose);
    return ok ? 0 : -1;
}

/* A variable-length UTF-8 string: h5py reads it as str (attributes are metadata, which
 * parallel HDF5 writes from one process, so variable length is allowed here). */
static int attr_string(hid_t obj, const char *name, const char *value)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    int ok = t >= 0 && H5Tset_size(t, H5T_VARIABLE) >= 0 &&
             H5Tset_cset(t, H5T_CSET_UTF8) >= 0 && attr_write(obj, name, t, &value) == 0;
    close_id(t, H5Tclose);
    return ok ? 0 : -1;
}

static int root_attrs(hid_t f)
{
    int64_t version = FORMAT_VERSION;
    return attr_string(f, "producer", "nvfp4x") | attr_string(f, "version", NX_VERSION) |
           attr_write(f, "format_version", H5T_STD_I64LE, &version);
}

/* This rank's rows of a [n_rows] or [n_rows, width] dataspace. */
static herr_t rows_select(hid_t space, const layout *l, hsize_t width)
{
    hsize_t start[2] = { (hsize_t)l->first, 0 }, count[2] = { (hsize_t)l->n, width };
    if (l->n == 0)
        return H5Sselect_none(space);
    return H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, count, NULL);
}

/* Creates dataset name [n_rows] (or [n_rows, width]) in g and writes this rank's rows from
 * buf: l->n rows of width values of mtype, in row order. */
static int dataset_write(hid_t g, const char *name, hid_t ftype, hid_t mtype, hsize_t width,
                         const layout *l, const void *buf, hid_t xfer)
{
    int nd = width > 1 ? 2 : 1;
    hsize_t fdims[2] = { (hsize_t)l->n_rows, width };
    hsize_t mdims[2] = { (hsize_t)(l->n ? l->n : 1), width };
    hid_t fs = H5Screate_simple(nd, fdims, NULL), ms = H5Screate_simple(nd, mdims, NULL);
    hid_t d = fs < 0 ? H5I_INVALID_HID : H5Dcreate2(g, name, ftype, fs, H5P_DEFAULT,
                                                     H5P_DEFAULT, H5P_DEFAULT);
    int ok = fs >= 0 && ms >= 0 && d >= 0;
    if (ok && l->n_rows > 0)
        ok = rows_select(fs, l, width) >= 0 && (l->n > 0 || H5Sselect_none(ms) >= 0) &&
             H5Dwrite(d, mtype, ms, fs, xfer, buf) >= 0;
    close_id(d, H5Dclose);
    close_id(ms, H5Sclose);
    close_id(fs, H5Sclose);
    return ok ? 0 : -1;
}

static int column_write(hid_t g, int c, const layout *l, hid_t xfer, const char *path,
                        nx_err *e)
{
    size_t row_bytes = type_bytes(columns[c].type) * (size_t)columns[c].width;
    uint8_t *buf = malloc(row_bytes * (size_t)(l->n ? l->n : 1));
    NX_ALLOC_CHECK(buf, e, "a report column");
    for (int64_t i = 0; i < l->n; i++)
        column_fill(c, &l->rows[i], buf + (size_t)i * row_bytes);
    int st = dataset_write(g, columns[c].name, type_file(columns[c].type),
                           type_memory(columns[c].type), (hsize_t)columns[c].width, l, buf,
                           xfer);
    free(buf);
    NX_ERROR_IF(st < 0, e, NX_EIO, "%s: cannot write /tensors/%s", path, columns[c].name);
    return NX_OK;
}

/* Module names as fixed-length strings: parallel HDF5 cannot write variable-length data. */
static int names_write(hid_t g, const layout *l, hid_t xfer, const char *path, nx_err *e)
{
    size_t w = l->name_bytes;
    char *buf = calloc((size_t)(l->n ? l->n : 1), w);
    NX_ALLOC_CHECK(buf, e, "report module names");
    for (int64_t i = 0; i < l->n; i++) {
        const char *name = l->rows[i].module;
        memcpy(buf + (size_t)i * w, name, strlen(name));
    }
    hid_t t = H5Tcopy(H5T_C_S1);
    int st = t >= 0 && H5Tset_size(t, w) >= 0 && H5Tset_strpad(t, H5T_STR_NULLPAD) >= 0
             ? dataset_write(g, "module", t, t, 1, l, buf, xfer) : -1;
    close_id(t, H5Tclose);
    free(buf);
    NX_ERROR_IF(st < 0, e, NX_EIO, "%s: cannot write /tensors/module", path);
    return NX_OK;
}

/* Every dataset, each followed by an agreement so that all ranks stay in step. */
static int tensors_write(hid_t f, const layout *l, MPI_Comm comm, const char *path,
                         nx_err *e)
{
    hid_t g = H5Gcreate2(f, "tensors", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    hid_t xfer = xfer_create();
    int rc = g < 0 || xfer < 0 || root_attrs(f) != 0
             ? nx_err_set(e, NX_EIO, "%s: cannot write the file's header", path) : NX_OK;
    rc = nx_agree(rc, e, comm);
    if (rc == NX_OK)
        rc = nx_agree(names_write(g, l, xfer, path, e), e, comm);
    for (int c = 0; rc == NX_OK && c < N_COLUMNS; c++)
        rc = nx_agree(column_write(g, c, l, xfer, path, e), e, comm);
    close_id(xfer, H5Pclose);
    close_id(g, H5Gclose);
    return rc;
}

static int file_write(const char *tmp, const layout *l, MPI_Comm comm, const char *path,
                      nx_err *e)
{
    /* Our messages name the file; HDF5's own stack dump would only add noise. */
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = file_create(tmp, comm);
    int rc = f < 0 ? nx_err_set(e, NX_EIO, "%s: cannot create %s", path, tmp) : NX_OK;
    NX_TRY(nx_agree(rc, e, comm));
    rc = tensors_write(f, l, comm, path, e);
    int closed = H5Fclose(f) >= 0 ? NX_OK
                 : nx_err_set(e, NX_EIO, "%s: cannot finish writing %s", path, tmp);
    return rc == NX_OK ? nx_agree(closed, e, comm) : rc;
}

/* ---- Writing ------------------------------------------------------------------------------ */

/* Collective over comm: the rows go to their writers, who write them at once. */
static int report_write_on(const char *path, const nx_report_entry *x, int64_t n,
                           MPI_Comm comm, nx_err *e)
{
    int rank;
    MPI_Comm_rank(comm, &rank);
    layout l = { 0 };
    char *tmp = nx_asprintf("%s.tmp", path);
    int rc = nx_agree(tmp ? NX_OK : nx_err_set(e, NX_EIO, "out of memory"), e, comm);
    if (rc == NX_OK)
        rc = layout_build(x, n, &l, comm, path, e);
    if (rc == NX_OK)
        rc = file_write(tmp, &l, comm, path, e);
    if (rc == NX_OK) {
        int moved = rank != 0 || rename(tmp, path) == 0 ? NX_OK
                    : nx_err_errno(e, NX_EIO, "%s: cannot rename %s into place", path, tmp);
        rc = nx_agree(moved, e, comm);
    }
    if (rc != NX_OK && rank == 0 && tmp)
        unlink(tmp);
    free(tmp);
    layout_free(&l);
    return rc;
}

#ifdef NX_HDF5_PARALLEL

int nx_report_write(const char *path, const nx_report_entry *entries, int64_t n,
                    MPI_Comm comm, nx_err *e)
{
    return report_write_on(path, entries, n, comm, e);
}

#else

/* Serial HDF5: rank 0 gathers every entry (name, statistics, flags) and writes alone. */
static void entries_pack(const nx_report_entry *x, int64_t n, nx_buf *b, size_t *longest)
{
    *longest = 0;
    for (int64_t i = 0; i < n; i++) {
        size_t len = strlen(x[i].module);
        *longest = len > *longest ? len : *longest;
        nx_buf_put_str(b, x[i].module);
        nx_buf_put(b, &x[i].st, sizeof x[i].st);
        nx_buf_put(b, &x[i].sw, sizeof x[i].sw);
        uint8_t flags[4] = { x[i].w_from_weight, x[i].in_from_layer, x[i].w_static,
                             x[i].w_swept };
        nx_buf_put(b, flags, sizeof flags);
    }
}

static int entries_unpack(nx_buf *b, int64_t n, nx_report_entry *x, const char *path,
                          nx_err *e)
{
    for (int64_t i = 0; i < n; i++) {
        uint8_t flags[4];
        x[i].module = nx_buf_get_str(b);
        nx_buf_get(b, &x[i].st, sizeof x[i].st);
        nx_buf_get(b, &x[i].sw, sizeof x[i].sw);
        nx_buf_get(b, flags, sizeof flags);
        x[i].w_from_weight = flags[0];
        x[i].in_from_layer = flags[1];
        x[i].w_static = flags[2];
        x[i].w_swept = flags[3];
        NX_ERROR_IF(b->failed || x[i].module == NULL, e, NX_EIO,
                    "out of memory unpacking %s", path);
    }
    return NX_OK;
}

static int root_write(const char *path, gathered *g, nx_err *e)
{
    nx_report_entry *all = calloc((size_t)(g->n ? g->n : 1), sizeof *all);
    NX_ALLOC_CHECK(all, e, "report entries");
    int rc = entries_unpack(&g->all, g->n, all, path, e);
    if (rc == NX_OK)
        rc = report_write_on(path, all, g->n, MPI_COMM_SELF, e);
    for (int64_t i = 0; i < g->n; i++)
        free((char *)all[i].module);
    free(all);
    return rc;
}

int nx_report_write(const char *path, const nx_report_entry *entries, int64_t n,
                    MPI_Comm comm, nx_err *e)
{
    int rank;
    MPI_Comm_rank(comm, &rank);
    nx_buf packed = { 0 };
    gathered g = { 0 };
    size_t longest;
    entries_pack(entries, n, &packed, &longest);
    int rc = gather_bytes(&packed, n, longest, &g, comm, path, e);
    nx_buf_free(&packed);
    if (rc == NX_OK)
        rc = nx_agree(rank == 0 ? root_write(path, &g, e) : NX_OK, e, comm);
    gathered_free(&g);
    return rc;
}

#endif
