/* safetensors: header reader that validates like the reference implementation, and the
 * layout/header writer used for every output shard. */
#ifndef NVFP4X_SAFETENSORS_H
#define NVFP4X_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "nvfp4x/error.h"

/* In safetensors' own dtype order (its Rust Dtype enum): writers sort tensors by this order,
 * descending, so only the relative order matters and a new dtype goes where the reference has
 * it. Not carried: F4, F6_*, F8_E4M3FNUZ, F8_E5M2FNUZ, C64 (refused as unknown). */
typedef enum nx_dtype {
    NX_DT_BOOL,
    NX_DT_U8,
    NX_DT_I8,
    NX_DT_F8_E5M2,
    NX_DT_F8_E4M3,
    NX_DT_F8_E8M0, /* power-of-two scale byte, 2^(b-127) (MX formats, DeepSeek-V4) */
    NX_DT_I16,
    NX_DT_U16,
    NX_DT_F16,
    NX_DT_BF16,
    NX_DT_I32,
    NX_DT_U32,
    NX_DT_F32,
    NX_DT_F64,
    NX_DT_I64,
    NX_DT_U64,
    NX_DT_COUNT
} nx_dtype;

#define NX_MAX_DIMS 8
/* The reference implementation refuses headers above 100 MB. */
#define NX_ST_MAX_HEADER_BYTES 100000000ULL

const char *nx_dtype_name(nx_dtype dt);
/* Returns 0 and sets *dt, or -1 for an unknown name. */
int nx_dtype_parse(const char *name, nx_dtype *dt);
size_t nx_dtype_size(nx_dtype dt);
/* "BF16 [80, 3]" (dtype and shape) into buf, for messages; truncated to len. */
void nx_shape_text(nx_dtype dt, int ndim, const int64_t *shape, char *buf, size_t len);

typedef struct nx_st_tensor {
    char *name;
    nx_dtype dtype;
    int ndim;
    int64_t shape[NX_MAX_DIMS];
    uint64_t begin, end; /* data_offsets, relative to the data section */
} nx_st_tensor;

typedef struct nx_st_header {
    uint64_t json_bytes;  /* N, the length prefix */
    uint64_t data_start;  /* 8 + N: file offset of the data section */
    uint64_t file_bytes;
    int64_t n;
    nx_st_tensor *tensors; /* in the order the header lists them */
    char *metadata_json;   /* the __metadata__ object as compact JSON, or NULL */
} nx_st_header;

/* Reads and validates the header of the file at path. Errors (NX_EINPUT) name the path and
 * the rule: length prefix past end of file or above the limit, invalid JSON, unknown dtype,
 * shape x dtype size != byte length, offsets that do not tile the data section (hole, overlap,
 * or a data section longer or shorter than the file), duplicate names. */
int nx_st_header_read(const char *path, nx_st_header *h, nx_err *e);
/* Same validation on an in-memory header; data_bytes is the length of the data section.
 * what names the source in messages. Entry point for the fuzzer. */
int nx_st_header_parse(const char *json, size_t json_len, uint64_t data_bytes,
                       const char *what, nx_st_header *h, nx_err *e);
void nx_st_header_free(nx_st_header *h);

/* One tensor of a shard to be written. id is the caller's; begin/end are filled in. */
typedef struct nx_st_entry {
    const char *name;
    nx_dtype dtype;
    int ndim;
    int64_t shape[NX_MAX_DIMS];
    int64_t id;
    uint64_t begin, end;
} nx_st_entry;

/* Sorts entries into safetensors order (dtype descending in enum order, then name bytewise),
 * assigns data offsets, and renders the header: 8-byte little-endian length, compact JSON with
 * "__metadata__":{"format":"pt"} first, padded with spaces to a multiple of 8. *header is
 * malloc'd; *header_bytes is its size, which is also the file offset of the data section. */
int nx_st_layout(nx_st_entry *entries, int64_t n, char **header, uint64_t *header_bytes,
                 nx_err *e);
/* The same with no "__metadata__" at all, as safetensors.torch.save_file(tensors) without a
 * metadata argument writes it (ModelOpt's DeepSeek-V4 script). */
int nx_st_layout_bare(nx_st_entry *entries, int64_t n, char **header, uint64_t *header_bytes,
                      nx_err *e);

#endif
