/* Calibration statistics from HDF5 (DESIGN.md "Calibration file"): an index of every dataset
 * built at open, reads converted to float32 and checked. */
#include "nvfp4x/calib.h"

#include <hdf5.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nvfp4x/util.h"

typedef struct calib_entry {
    char *h5path; /* "/model/layers/0/.../_amax" */
    int64_t elems;
    int cached;   /* a one-value float dataset, read while indexing */
    float value;
} calib_entry;

struct nx_calib {
    char *path;
    hid_t file;
    int collective;
    nx_strmap index; /* dot-form key -> position in entries */
    calib_entry *entries;
    size_t len, cap;
};

typedef struct calib_visit {
    nx_calib *c;
    nx_err *e;
    int rc;
} calib_visit;

/* "<module>.<quantizer>.<buffer>", the form the index is keyed by. */
static char *calib_key(const char *module, const char *quantizer, const char *buffer)
{
    return nx_asprintf("%s.%s.%s", module, quantizer, buffer);
}

/* s (after a "/" when leading_slash) with every `from` turned into `to`; malloc'd. */
static char *path_translate(const char *s, char from, char to, int leading_slash)
{
    char *d = nx_asprintf("%s%s", leading_slash ? "/" : "", s);
    for (char *p = d; p && *p; p++)
        if (*p == from)
            *p = to;
    return d;
}

static int entries_reserve(nx_calib *c, nx_err *e)
{
    if (c->len < c->cap)
        return NX_OK;
    size_t cap = c->cap ? c->cap * 2 : 64;
    calib_entry *grown = realloc(c->entries, cap * sizeof *grown);
    NX_ALLOC_CHECK(grown, e, "calibration index");
    c->entries = grown;
    c->cap = cap;
    return NX_OK;
}

static int index_put(nx_calib *c, const char *key, const char *name, int64_t elems, nx_err *e)
{
    int64_t other = nx_strmap_get(&c->index, key);
    NX_ERROR_IF(other >= 0, e, NX_EINPUT, "%s: datasets %s and /%s both have key %s", c->path,
                c->entries[other].h5path, name, key);
    char *h5path = nx_asprintf("/%s", name);
    NX_ALLOC_CHECK(h5path, e, "calibration index");
    if (nx_strmap_put(&c->index, key, (int64_t)c->len) != 0) {
        free(h5path);
        return nx_err_set(e, NX_EIO, "out of memory allocating calibration index");
    }
    c->entries[c->len++] = (calib_entry){ h5path, elems, 0, 0.0f };
    return NX_OK;
}

static int calib_add(nx_calib *c, const char *name, int64_t elems, nx_err *e)
{
    NX_TRY(entries_reserve(c, e));
    char *key = path_translate(name, '/', '.', 0);
    NX_ALLOC_CHECK(key, e, "calibration key");
    int rc = index_put(c, key, name, elems, e);
    free(key);
    return rc;
}

/* Element count of an open dataset: product of dims, 1 for a scalar dataspace. */
static int dataset_elems(hid_t d, int64_t *elems)
{
    hid_t space = H5Dget_space(d);
    if (space < 0)
        return -1;
    hssize_t n = H5Sget_simple_extent_npoints(space);
    H5Sclose(space);
    *elems = n;
    return n < 0 ? -1 : 0;
}

/* A one-value float dataset is read while it is open for indexing: most of the file is
 * scalars, and opening each dataset once halves the time to gather them. Anything else is
 * read (and its errors reported) when asked for. */
static void cache_scalar(nx_calib *c, hid_t d, int64_t elems)
{
    if (elems != 1)
        return;
    hid_t type = H5Dget_type(d);
    int is_float = type >= 0 && H5Tget_class(type) == H5T_FLOAT;
    if (type >= 0)
        H5Tclose(type);
    calib_entry *entry = &c->entries[c->len - 1];
    if (is_float && H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, &entry->value) >= 0)
        entry->cached = 1;
}

static int index_object(nx_calib *c, const char *name, nx_err *e)
{
    hid_t obj = H5Oopen(c->file, name, H5P_DEFAULT);
    NX_ERROR_IF(obj < 0, e, NX_EINPUT, "%s: cannot open object /%s", c->path, name);
    int rc = NX_OK;
    if (H5Iget_type(obj) == H5I_DATASET) {
        int64_t elems = 0;
        if (dataset_elems(obj, &elems) != 0)
            rc = nx_err_set(e, NX_EINPUT, "%s: dataset /%s has an unreadable shape", c->path,
                            name);
        else
            rc = calib_add(c, name, elems, e);
        if (rc == NX_OK)
            cache_scalar(c, obj, elems);
    }
    H5Oclose(obj);
    return rc;
}

/* Soft and external links are skipped: the schema is one plain dataset per buffer. */
static herr_t visit_link(hid_t group, const char *name, const H5L_info_t *info, void *data)
{
    (void)group;
    calib_visit *v = data;
    if (info->type != H5L_TYPE_HARD)
        return 0;
    v->rc = index_object(v->c, name, v->e);
    return v->rc ? -1 : 0;
}

static int calib_load(nx_calib *c, const char *path, hid_t fapl, nx_err *e)
{
    c->path = nx_strdup(path);
    NX_ALLOC_CHECK(c->path, e, "calibration path");
    NX_ERROR_IF(nx_strmap_init(&c->index, 64) != 0, e, NX_EIO, "out of memory indexing %s",
                path);
    /* Our messages name the file and dataset; HDF5's own stack dump would only add noise. */
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    c->file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    NX_ERROR_IF(c->file < 0, e, NX_EINPUT, "%s: not a readable HDF5 file", path);
    calib_visit v = { c, e, NX_OK };
    herr_t status = H5Lvisit(c->file, H5_INDEX_NAME, H5_ITER_INC, visit_link, &v);
    NX_TRY(v.rc);
    NX_ERROR_IF(status < 0, e, NX_EINPUT, "%s: cannot list the datasets", path);
    return NX_OK;
}

static int calib_open(const char *path, hid_t fapl, nx_calib **out, nx_err *e)
{
    *out = NULL;
    nx_calib *c = calloc(1, sizeof *c);
    NX_ALLOC_CHECK(c, e, "calibration index");
    c->file = H5I_INVALID_HID;
    c->collective = fapl != H5P_DEFAULT;
    int rc = calib_load(c, path, fapl, e);
    if (rc != NX_OK) {
        nx_calib_close(c);
        return rc;
    }
    *out = c;
    return NX_OK;
}

int nx_calib_open(const char *path, nx_calib **out, nx_err *e)
{
    return calib_open(path, H5P_DEFAULT, out, e);
}

int nx_calib_open_collective(const char *path, MPI_Comm comm, nx_calib **out, nx_err *e)
{
    *out = NULL;
#ifdef NX_HDF5_PARALLEL
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    NX_ERROR_IF(fapl < 0 || H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL) < 0, e, NX_EIO,
                "%s: cannot set up MPI-IO access", path);
    int rc = calib_open(path, fapl, out, e);
    H5Pclose(fapl);
    return rc;
#else
    (void)path;
    (void)comm;
    (void)e;
    return NX_OK;
#endif
}

int nx_calib_is_collective(const nx_calib *c)
{
    return c != NULL && c->collective;
}

void nx_calib_close(nx_calib *c)
{
    if (c == NULL)
        return;
    if (c->file >= 0)
        H5Fclose(c->file);
    for (size_t i = 0; i < c->len; i++)
        free(c->entries[i].h5path);
    free(c->entries);
    nx_strmap_free(&c->index);
    free(c->path);
    free(c);
}

const char *nx_calib_path(const nx_calib *c)
{
    return c->path;
}

int64_t nx_calib_size(const nx_calib *c)
{
    return (int64_t)c->len;
}

static const calib_entry *calib_find(const nx_calib *c, const char *key)
{
    int64_t i = nx_strmap_get(&c->index, key);
    return i < 0 ? NULL : &c->entries[i];
}

int64_t nx_calib_count(const nx_calib *c, const char *module, const char *quantizer,
                       const char *buffer)
{
    char *key = calib_key(module, quantizer, buffer);
    const calib_entry *entry = key ? calib_find(c, key) : NULL;
    free(key);
    return entry ? entry->elems : -1;
}

static const char *type_class_name(H5T_class_t cls)
{
    switch (cls) {
    case H5T_INTEGER: return "integer";
    case H5T_STRING: return "string";
    case H5T_COMPOUND: return "compound";
    case H5T_ENUM: return "enum";
    case H5T_ARRAY: return "array";
    default: return "non-numeric";
    }
}

/* The whole dataset as float32; HDF5 converts from any float width (f16, f32, f64). */
static int dataset_read_float(hid_t d, const char *file, const char *h5path, float *out,
                              nx_err *e)
{
    hid_t type = H5Dget_type(d);
    NX_ERROR_IF(type < 0, e, NX_EIO, "%s: dataset %s: cannot read its type", file, h5path);
    H5T_class_t cls = H5Tget_class(type);
    H5Tclose(type);
    NX_ERROR_IF(cls != H5T_FLOAT, e, NX_EINPUT, "%s: dataset %s has %s type, expected float",
                file, h5path, type_class_name(cls));
    NX_ERROR_IF(H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) < 0, e, NX_EIO,
                "%s: dataset %s: read failed", file, h5path);
    return NX_OK;
}

static int values_check(const float *v, int64_t n, const char *file, const char *h5path,
                        nx_err *e)
{
    for (int64_t i = 0; i < n; i++) {
        NX_ERROR_IF(isnan(v[i]), e, NX_EINPUT, "%s: dataset %s: value %lld is NaN", file, h5path,
                    (long long)i);
        NX_ERROR_IF(isinf(v[i]), e, NX_EINPUT, "%s: dataset %s: value %lld is infinite", file,
                    h5path, (long long)i);
        NX_ERROR_IF(v[i] < 0, e, NX_EINPUT, "%s: dataset %s: value %lld is negative (%g)", file,
                    h5path, (long long)i, (double)v[i]);
    }
    return NX_OK;
}

static int entry_read(const nx_calib *c, const calib_entry *entry, float *out, int64_t n,
                      nx_err *e)
{
    NX_ERROR_IF(entry->elems != n, e, NX_EINPUT, "%s: dataset %s has %lld value%s, expected %lld",
                c->path, entry->h5path, (long long)entry->elems, entry->elems == 1 ? "" : "s",
                (long long)n);
    if (entry->cached) {
        out[0] = entry->value;
        return values_check(out, 1, c->path, entry->h5path, e);
    }
    hid_t d = H5Dopen2(c->file, entry->h5path, H5P_DEFAULT);
    NX_ERROR_IF(d < 0, e, NX_EIO, "%s: dataset %s: cannot open", c->path, entry->h5path);
    int rc = dataset_read_float(d, c->path, entry->h5path, out, e);
    H5Dclose(d);
    NX_TRY(rc);
    return values_check(out, n, c->path, entry->h5path, e);
}

static int report_missing(const nx_calib *c, const char *key, nx_err *e)
{
    char *h5path = path_translate(key, '.', '/', 1);
    int rc = nx_err_set(e, NX_EINPUT, "%s: dataset %s missing", c->path, h5path ? h5path : key);
    free(h5path);
    return rc;
}

int nx_calib_read(const nx_calib *c, const char *module, const char *quantizer,
                  const char *buffer, float *out, int64_t n, nx_err *e)
{
    char *key = calib_key(module, quantizer, buffer);
    NX_ALLOC_CHECK(key, e, "calibration key");
    const calib_entry *entry = calib_find(c, key);
    int rc = entry ? entry_read(c, entry, out, n, e) : report_missing(c, key, e);
    free(key);
    return rc;
}

/* ---- A range of a dataset (fused experts: one expert's static block amax) ----------------- */

/* The hyperslab of the row-major range [first, first + count) when it is whole slices of one
 * dimension d (the dimensions before d of size 1); -1 when it is not. */
static int range_dim(const hsize_t *dims, int nd, int64_t first, int64_t count, hsize_t *start,
                     hsize_t *len)
{
    for (int d = 0; d < nd; d++) {
        uint64_t stride = 1;
        for (int k = d + 1; k < nd; k++)
            stride *= dims[k];
        if ((uint64_t)first % stride == 0 && (uint64_t)count % stride == 0 &&
            (uint64_t)(first + count) / stride <= dims[d]) {
            for (int k = 0; k < nd; k++) {
                start[k] = 0;
                len[k] = dims[k];
            }
            start[d] = (hsize_t)((uint64_t)first / stride);
            len[d] = (hsize_t)((uint64_t)count / stride);
            return 0;
        }
        if (dims[d] != 1)
            return -1;
    }
    return -1;
}

static int range_read(hid_t d, const nx_calib *c, const char *h5path, int64_t first,
                      int64_t count, float *out, nx_err *e)
{
    hsize_t dims[H5S_MAX_RANK], start[H5S_MAX_RANK], len[H5S_MAX_RANK], n = (hsize_t)count;
    hid_t file_space = H5Dget_space(d), type = H5Dget_type(d);
    int nd = file_space >= 0 ? H5Sget_simple_extent_dims(file_space, dims, NULL) : -1;
    int is_float = type >= 0 && H5Tget_class(type) == H5T_FLOAT, rc = NX_OK;
    if (type >= 0)
        H5Tclose(type);
    if (nd < 0 || !is_float)
        rc = nx_err_set(e, NX_EINPUT, "%s: dataset %s: %s", c->path, h5path,
                        is_float ? "unreadable shape" : "not a float type");
    else if (range_dim(dims, nd, first, count, start, len) != 0)
        rc = nx_err_set(e, NX_EINPUT, "%s: dataset %s: values %lld..%lld are not whole slices of "
                        "one dimension (store the static block amax as [E, out, in/16], "
                        "[E*out, in/16] or flat)", c->path, h5path, (long long)first,
                        (long long)(first + count - 1));
    hid_t mem = rc == NX_OK ? H5Screate_simple(1, &n, NULL) : -1;
    if (rc == NX_OK && (mem < 0 || (nd > 0 && H5Sselect_hyperslab(file_space, H5S_SELECT_SET,
                                                                  start, NULL, len, NULL) < 0) ||
                        H5Dread(d, H5T_NATIVE_FLOAT, mem, file_space, H5P_DEFAULT, out) < 0))
        rc = nx_err_set(e, NX_EIO, "%s: dataset %s: read of values %lld..%lld failed", c->path,
                        h5path, (long long)first, (long long)(first + count - 1));
    if (mem >= 0)
        H5Sclose(mem);
    if (file_space >= 0)
        H5Sclose(file_space);
    return rc;
}

int nx_calib_read_range(const nx_calib *c, const char *module, const char *quantizer,
                        const char *buffer, int64_t total, int64_t first, int64_t count,
                        float *out, nx_err *e)
{
    char *key = calib_key(module, quantizer, buffer);
    NX_ALLOC_CHECK(key, e, "calibration key");
    const calib_entry *entry = calib_find(c, key);
    int rc = entry ? NX_OK : report_missing(c, key, e);
    free(key);
    NX_TRY(rc);
    NX_ERROR_IF(entry->elems != total, e, NX_EINPUT, "%s: dataset %s has %lld value%s, expected "
                "%lld", c->path, entry->h5path, (long long)entry->elems,
                entry->elems == 1 ? "" : "s", (long long)total);
    if (entry->cached) {
        out[0] = entry->value;
        return values_check(out, 1, c->path, entry->h5path, e);
    }
    hid_t d = H5Dopen2(c->file, entry->h5path, H5P_DEFAULT);
    NX_ERROR_IF(d < 0, e, NX_EIO, "%s: dataset %s: cannot open", c->path, entry->h5path);
    rc = range_read(d, c, entry->h5path, first, count, out, e);
    H5Dclose(d);
    NX_TRY(rc);
    return values_check(out, count, c->path, entry->h5path, e);
}
