/* safetensors headers: a reader that refuses what the reference implementation (huggingface/
 * safetensors, tensor.rs) refuses, and a writer that renders headers byte for byte as it does. */
#include "nvfp4x/safetensors.h"

#include <cjson/cJSON.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nvfp4x/util.h"

static const struct {
    const char *name;
    size_t bytes;
} dtypes[NX_DT_COUNT] = {
    [NX_DT_BOOL] = { "BOOL", 1 },       [NX_DT_U8] = { "U8", 1 },
    [NX_DT_I8] = { "I8", 1 },           [NX_DT_F8_E5M2] = { "F8_E5M2", 1 },
    [NX_DT_F8_E4M3] = { "F8_E4M3", 1 }, [NX_DT_F8_E8M0] = { "F8_E8M0", 1 },
    [NX_DT_I16] = { "I16", 2 },
    [NX_DT_U16] = { "U16", 2 },         [NX_DT_F16] = { "F16", 2 },
    [NX_DT_BF16] = { "BF16", 2 },       [NX_DT_I32] = { "I32", 4 },
    [NX_DT_U32] = { "U32", 4 },         [NX_DT_F32] = { "F32", 4 },
    [NX_DT_F64] = { "F64", 8 },         [NX_DT_I64] = { "I64", 8 },
    [NX_DT_U64] = { "U64", 8 },
};

static int dtype_valid(nx_dtype dt)
{
    return (int)dt >= 0 && dt < NX_DT_COUNT;
}

const char *nx_dtype_name(nx_dtype dt)
{
    return dtype_valid(dt) ? dtypes[dt].name : "?";
}

void nx_shape_text(nx_dtype dt, int ndim, const int64_t *shape, char *buf, size_t len)
{
    size_t used = (size_t)snprintf(buf, len, "%s [", nx_dtype_name(dt));
    for (int i = 0; i < ndim && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%lld", i ? ", " : "",
                                 (long long)shape[i]);
    if (used < len)
        snprintf(buf + used, len - used, "]");
}

int nx_dtype_parse(const char *name, nx_dtype *dt)
{
    for (int i = 0; i < NX_DT_COUNT; i++) {
        if (strcmp(name, dtypes[i].name) == 0) {
            *dt = (nx_dtype)i;
            return 0;
        }
    }
    return -1;
}

size_t nx_dtype_size(nx_dtype dt)
{
    return dtype_valid(dt) ? dtypes[dt].bytes : 0;
}

/* product(shape) * dtype size, or -1 on overflow. */
static int tensor_bytes(nx_dtype dt, int ndim, const int64_t *shape, uint64_t *bytes)
{
    uint64_t total = nx_dtype_size(dt);
    for (int i = 0; i < ndim; i++)
        if (__builtin_mul_overflow(total, (uint64_t)shape[i], &total))
            return -1;
    *bytes = total;
    return 0;
}

static void shape_format(int ndim, const int64_t *shape, char *buf, size_t len)
{
    size_t used = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < ndim && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%lld", i ? ", " : "",
                                 (long long)shape[i]);
    if (used < len)
        snprintf(buf + used, len - used, "]");
}

static int cmp_cstr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Sorts names in place; returns a name that occurs twice, or NULL. */
static const char *names_duplicate(const char **names, int64_t n)
{
    if (n < 2)
        return NULL;
    qsort(names, (size_t)n, sizeof *names, cmp_cstr);
    for (int64_t i = 1; i < n; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            return names[i];
    return NULL;
}

/* ---- Reader ---------------------------------------------------------------------------- */

void nx_st_header_free(nx_st_header *h)
{
    for (int64_t i = 0; i < h->n; i++)
        free(h->tensors[i].name);
    free(h->tensors);
    free(h->metadata_json);
    memset(h, 0, sizeof *h);
}

/* Length of the valid UTF-8 sequence at s (n bytes available), or 0 (RFC 3629: no overlongs,
 * no surrogates, nothing above U+10FFFF). */
static size_t utf8_seq_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0], lo = 0x80, hi = 0xBF;
    size_t len;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF)
        len = 3;
    else if (c >= 0xF0 && c <= 0xF4)
        len = 4;
    else
        return 0;
    if (c == 0xE0)
        lo = 0xA0;
    else if (c == 0xED)
        hi = 0x9F;
    else if (c == 0xF0)
        lo = 0x90;
    else if (c == 0xF4)
        hi = 0x8F;
    if (len > n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return len;
}

/* The reference takes the header as a Rust &str (valid UTF-8), and JSON allows no raw control
 * character but whitespace; checking both first keeps cJSON's laxer scanner out of it.
 * Returns the offset of the first bad byte, or n. */
static size_t text_check(const char *text, size_t n)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x20 && s[i] != '\t' && s[i] != '\n' && s[i] != '\r')
            return i;
        size_t len = utf8_seq_len(s + i, n - i);
        if (len == 0)
            return i;
        i += len;
    }
    return n;
}

static int json_is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Parses the whole text as one JSON object. Whitespace around it is allowed: serde_json skips
 * it, and the reference tolerates leading padding on purpose (safetensors#686). */
static int json_parse_object(const char *json, size_t len, const char *what, cJSON **root,
                             nx_err *e)
{
    size_t bad = text_check(json, len);
    NX_ERROR_IF(bad < len, e, NX_EINPUT,
                "%s: header has an invalid UTF-8 byte or control character at byte %zu", what,
                bad);
    /* cJSON skips a byte order mark, serde_json refuses it. */
    NX_ERROR_IF(len >= 3 && memcmp(json, "\xEF\xBB\xBF", 3) == 0, e, NX_EINPUT,
                "%s: header starts with a UTF-8 byte order mark", what);
    const char *end = NULL;
    *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    size_t pos = end ? (size_t)(end - json) : 0;
    NX_ERROR_IF(*root == NULL, e, NX_EINPUT, "%s: header is not valid JSON (error near byte %zu)",
                what, pos);
    while (pos < len && json_is_space(json[pos]))
        pos++;
    int rc = NX_OK;
    if (!cJSON_IsObject(*root))
        rc = nx_err_set(e, NX_EINPUT, "%s: header is not a JSON object", what);
    else if (pos < len)
        rc = nx_err_set(e, NX_EINPUT, "%s: header has data after the JSON object at byte %zu",
                        what, pos);
    if (rc != NX_OK) {
        cJSON_Delete(*root);
        *root = NULL;
    }
    return rc;
}

static int parse_metadata(const cJSON *obj, const char *what, nx_st_header *h, nx_err *e)
{
    NX_ERROR_IF(h->metadata_json != NULL, e, NX_EINPUT, "%s: \"__metadata__\" appears twice",
                what);
    NX_ERROR_IF(!cJSON_IsObject(obj), e, NX_EINPUT, "%s: \"__metadata__\" is not a JSON object",
                what);
    const cJSON *kv;
    cJSON_ArrayForEach(kv, obj)
        NX_ERROR_IF(!cJSON_IsString(kv), e, NX_EINPUT,
                    "%s: \"__metadata__\" value of '%s' is not a string", what, kv->string);
    char *text = cJSON_PrintUnformatted(obj);
    NX_ALLOC_CHECK(text, e, "safetensors metadata");
    h->metadata_json = nx_strdup(text);
    cJSON_free(text);
    NX_ALLOC_CHECK(h->metadata_json, e, "safetensors metadata");
    return NX_OK;
}

/* The member key of a tensor object; serde refuses missing and repeated fields. */
static int tensor_field(const cJSON *obj, const char *key, const char *what, const cJSON **out,
                        nx_err *e)
{
    const cJSON *kv;
    *out = NULL;
    cJSON_ArrayForEach(kv, obj) {
        if (strcmp(kv->string, key) != 0)
            continue;
        NX_ERROR_IF(*out != NULL, e, NX_EINPUT, "%s: tensor '%s' has \"%s\" twice", what,
                    obj->string, key);
        *out = kv;
    }
    NX_ERROR_IF(*out == NULL, e, NX_EINPUT, "%s: tensor '%s' has no \"%s\"", what, obj->string,
                key);
    return NX_OK;
}

/* The reference reads shape and offsets as usize; cJSON holds doubles, exact up to 2^53. */
static int json_uint(const cJSON *v, const char *what, const char *tensor, const char *field,
                     int idx, uint64_t *out, nx_err *e)
{
    double d = cJSON_IsNumber(v) ? v->valuedouble : -1.0;
    if (d >= 0.0 && d <= 9007199254740992.0 && (double)(uint64_t)d == d) {
        *out = (uint64_t)d;
        return NX_OK;
    }
    NX_ERROR_IF(!cJSON_IsNumber(v), e, NX_EINPUT, "%s: tensor '%s': %s[%d] is not a number",
                what, tensor, field, idx);
    return nx_err_set(e, NX_EINPUT, "%s: tensor '%s': %s[%d] is %.17g, not a non-negative integer",
                      what, tensor, field, idx, d);
}

static int parse_shape(const cJSON *obj, const char *what, nx_st_tensor *t, nx_err *e)
{
    const cJSON *shape, *d;
    NX_TRY(tensor_field(obj, "shape", what, &shape, e));
    NX_ERROR_IF(!cJSON_IsArray(shape), e, NX_EINPUT, "%s: tensor '%s': \"shape\" is not an array",
                what, t->name);
    int ndim = cJSON_GetArraySize(shape);
    NX_ERROR_IF(ndim > NX_MAX_DIMS, e, NX_EINPUT,
                "%s: tensor '%s' has %d dimensions (at most %d supported)", what, t->name, ndim,
                NX_MAX_DIMS);
    cJSON_ArrayForEach(d, shape) {
        uint64_t v = 0;
        NX_TRY(json_uint(d, what, t->name, "shape", t->ndim, &v, e));
        t->shape[t->ndim++] = (int64_t)v;
    }
    return NX_OK;
}

static int parse_offsets(const cJSON *obj, const char *what, nx_st_tensor *t, nx_err *e)
{
    const cJSON *offs;
    NX_TRY(tensor_field(obj, "data_offsets", what, &offs, e));
    NX_ERROR_IF(!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2, e, NX_EINPUT,
                "%s: tensor '%s': \"data_offsets\" is not an array [begin, end]", what, t->name);
    NX_TRY(json_uint(cJSON_GetArrayItem(offs, 0), what, t->name, "data_offsets", 0, &t->begin,
                     e));
    NX_TRY(json_uint(cJSON_GetArrayItem(offs, 1), what, t->name, "data_offsets", 1, &t->end, e));
    NX_ERROR_IF(t->end < t->begin, e, NX_EINPUT,
                "%s: tensor '%s' has data_offsets [%llu, %llu] that end before they begin", what,
                t->name, (unsigned long long)t->begin, (unsigned long long)t->end);
    return NX_OK;
}

static int check_tensor_bytes(const nx_st_tensor *t, const char *what, nx_err *e)
{
    char shape[256];
    uint64_t bytes;
    shape_format(t->ndim, t->shape, shape, sizeof shape);
    NX_ERROR_IF(tensor_bytes(t->dtype, t->ndim, t->shape, &bytes) != 0, e, NX_EINPUT,
                "%s: tensor '%s': shape %s of %s overflows 64 bits", what, t->name, shape,
                nx_dtype_name(t->dtype));
    NX_ERROR_IF(bytes != t->end - t->begin, e, NX_EINPUT,
                "%s: tensor '%s': shape %s of %s is %llu bytes but data_offsets [%llu, %llu] "
                "span %llu", what, t->name, shape, nx_dtype_name(t->dtype),
                (unsigned long long)bytes, (unsigned long long)t->begin,
                (unsigned long long)t->end, (unsigned long long)(t->end - t->begin));
    return NX_OK;
}

/* t->name is set first, so that nx_st_header_free releases it whatever fails next. */
static int parse_tensor(const cJSON *obj, const char *what, nx_st_tensor *t, nx_err *e)
{
    t->name = nx_strdup(obj->string);
    NX_ALLOC_CHECK(t->name, e, "tensor name");
    NX_ERROR_IF(!cJSON_IsObject(obj), e, NX_EINPUT, "%s: tensor '%s' is not a JSON object", what,
                t->name);
    const cJSON *dtype;
    NX_TRY(tensor_field(obj, "dtype", what, &dtype, e));
    NX_ERROR_IF(!cJSON_IsString(dtype), e, NX_EINPUT, "%s: tensor '%s': \"dtype\" is not a string",
                what, t->name);
    NX_ERROR_IF(nx_dtype_parse(dtype->valuestring, &t->dtype) != 0, e, NX_EINPUT,
                "%s: tensor '%s' has unknown dtype '%s'", what, t->name, dtype->valuestring);
    NX_TRY(parse_shape(obj, what, t, e));
    NX_TRY(parse_offsets(obj, what, t, e));
    return check_tensor_bytes(t, what, e);
}

static int check_unique_names(const nx_st_header *h, const char *what, nx_err *e)
{
    if (h->n < 2)
        return NX_OK;
    const char **names = malloc((size_t)h->n * sizeof *names);
    NX_ALLOC_CHECK(names, e, "tensor names");
    for (int64_t i = 0; i < h->n; i++)
        names[i] = h->tensors[i].name;
    const char *dup = names_duplicate(names, h->n);
    int rc = dup ? nx_err_set(e, NX_EINPUT, "%s: tensor '%s' appears twice", what, dup) : NX_OK;
    free(names);
    return rc;
}

static int cmp_by_offsets(const void *pa, const void *pb)
{
    const nx_st_tensor *a = *(const nx_st_tensor *const *)pa, *b = *(const nx_st_tensor *const *)pb;
    if (a->begin != b->begin)
        return a->begin < b->begin ? -1 : 1;
    if (a->end != b->end)
        return a->end < b->end ? -1 : 1;
    return a < b ? -1 : a > b; /* header order among equal offsets */
}

/* Walks tensors in offset order (as the reference does): each must begin where the previous
 * ended, the first at 0, the last must end exactly at the end of the data section. */
static int tiling_walk(nx_st_tensor **order, int64_t n, uint64_t data_bytes, const char *what,
                       nx_err *e)
{
    uint64_t pos = 0;
    const char *prev = NULL;
    for (int64_t i = 0; i < n; i++) {
        const nx_st_tensor *t = order[i];
        NX_ERROR_IF(t->begin < pos, e, NX_EINPUT, "%s: tensor '%s' overlaps the previous tensor "
                    "'%s' (begins at %llu, previous ends at %llu)", what, t->name, prev,
                    (unsigned long long)t->begin, (unsigned long long)pos);
        NX_ERROR_IF(t->begin > pos && prev == NULL, e, NX_EINPUT, "%s: hole before tensor '%s' "
                    "(the first tensor begins at %llu, not 0)", what, t->name,
                    (unsigned long long)t->begin);
        NX_ERROR_IF(t->begin > pos, e, NX_EINPUT, "%s: hole before tensor '%s' (begins at %llu, "
                    "previous tensor '%s' ends at %llu)", what, t->name,
                    (unsigned long long)t->begin, prev, (unsigned long long)pos);
        pos = t->end;
        prev = t->name;
    }
    NX_ERROR_IF(pos > data_bytes, e, NX_EINPUT, "%s: tensors end at data offset %llu but the data "
                "section is only %llu bytes (truncated file?)", what, (unsigned long long)pos,
                (unsigned long long)data_bytes);
    NX_ERROR_IF(pos < data_bytes, e, NX_EINPUT, "%s: data section is %llu bytes but tensors end "
                "at data offset %llu (trailing bytes)", what, (unsigned long long)data_bytes,
                (unsigned long long)pos);
    return NX_OK;
}

static int check_tiling(nx_st_header *h, uint64_t data_bytes, const char *what, nx_err *e)
{
    nx_st_tensor **order = malloc((size_t)(h->n ? h->n : 1) * sizeof *order);
    NX_ALLOC_CHECK(order, e, "tensor order");
    for (int64_t i = 0; i < h->n; i++)
        order[i] = &h->tensors[i];
    if (h->n > 1)
        qsort(order, (size_t)h->n, sizeof *order, cmp_by_offsets);
    int rc = tiling_walk(order, h->n, data_bytes, what, e);
    free(order);
    return rc;
}

static int parse_root(const cJSON *root, uint64_t data_bytes, const char *what, nx_st_header *h,
                      nx_err *e)
{
    const cJSON *kv;
    int members = cJSON_GetArraySize(root);
    h->tensors = calloc((size_t)(members ? members : 1), sizeof *h->tensors);
    NX_ALLOC_CHECK(h->tensors, e, "tensor list");
    cJSON_ArrayForEach(kv, root) {
        if (strcmp(kv->string, "__metadata__") == 0)
            NX_TRY(parse_metadata(kv, what, h, e));
        else
            NX_TRY(parse_tensor(kv, what, &h->tensors[h->n++], e));
    }
    NX_TRY(check_unique_names(h, what, e));
    return check_tiling(h, data_bytes, what, e);
}

int nx_st_header_parse(const char *json, size_t json_len, uint64_t data_bytes, const char *what,
                       nx_st_header *h, nx_err *e)
{
    cJSON *root = NULL;
    memset(h, 0, sizeof *h);
    what = what ? what : "safetensors header";
    NX_TRY(json_parse_object(json, json_len, what, &root, e));
    int rc = parse_root(root, data_bytes, what, h, e);
    cJSON_Delete(root);
    if (rc != NX_OK) {
        nx_st_header_free(h);
        return rc;
    }
    h->json_bytes = json_len;
    h->data_start = 8 + (uint64_t)json_len;
    h->file_bytes = h->data_start + data_bytes;
    return NX_OK;
}

/* Reads the length prefix and the JSON text after it (malloc'd into *json). */
static int read_header_text(int fd, const char *path, char **json, uint64_t *json_bytes,
                            uint64_t *file_bytes, nx_err *e)
{
    struct stat st;
    unsigned char prefix[8];
    if (fstat(fd, &st) != 0)
        return nx_err_errno(e, NX_EIO, "%s: cannot stat", path);
    uint64_t size = (uint64_t)st.st_size, n = 0;
    NX_ERROR_IF(size < 8, e, NX_EINPUT, "%s: file is %llu bytes, too short for the 8-byte header "
                "length", path, (unsigned long long)size);
    NX_TRY(nx_pread_full(fd, prefix, 8, 0, path, e));
    for (int i = 7; i >= 0; i--)
        n = n << 8 | prefix[i];
    NX_ERROR_IF(n > NX_ST_MAX_HEADER_BYTES, e, NX_EINPUT, "%s: header length %llu is above the "
                "limit of %llu bytes", path, (unsigned long long)n, NX_ST_MAX_HEADER_BYTES);
    NX_ERROR_IF(n > size - 8, e, NX_EINPUT, "%s: header length %llu runs past the end of the "
                "file (%llu bytes)", path, (unsigned long long)n, (unsigned long long)size);
    *json = malloc((size_t)n + 1);
    NX_ALLOC_CHECK(*json, e, "safetensors header");
    (*json)[n] = '\0';
    *json_bytes = n;
    *file_bytes = size;
    return nx_pread_full(fd, *json, (size_t)n, 8, path, e);
}

int nx_st_header_read(const char *path, nx_st_header *h, nx_err *e)
{
    char *json = NULL;
    uint64_t json_bytes = 0, file_bytes = 0;
    memset(h, 0, sizeof *h);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return nx_err_errno(e, NX_EINPUT, "%s: cannot open", path);
    int rc = read_header_text(fd, path, &json, &json_bytes, &file_bytes, e);
    close(fd);
    if (rc == NX_OK)
        rc = nx_st_header_parse(json, (size_t)json_bytes, file_bytes - 8 - json_bytes, path, h,
                                e);
    free(json);
    return rc;
}

/* ---- Writer ---------------------------------------------------------------------------- */

/* Growing text buffer; an allocation failure sticks and is reported once at the end. */
typedef struct text_buf {
    char *p;
    size_t len, cap;
    int oom;
} text_buf;

static void buf_put(text_buf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (p == NULL) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void buf_puts(text_buf *b, const char *s)
{
    buf_put(b, s, strlen(s));
}

static void buf_u64(text_buf *b, uint64_t v)
{
    char num[24];
    buf_put(b, num, (size_t)snprintf(num, sizeof num, "%llu", (unsigned long long)v));
}

/* A JSON string as serde_json writes it: only '"', '\\' and control characters are escaped,
 * the short forms where JSON has them, else \u00xx in lower-case hex; other bytes as they are. */
static void buf_json_string(text_buf *b, const char *s)
{
    static const char short_esc[32] = { ['\b'] = 'b', ['\t'] = 't', ['\n'] = 'n',
                                        ['\f'] = 'f', ['\r'] = 'r' };
    buf_put(b, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        char esc[8];
        if (*c == '"' || *c == '\\')
            buf_put(b, (const char[]){ '\\', (char)*c }, 2);
        else if (*c < 0x20 && short_esc[*c])
            buf_put(b, (const char[]){ '\\', short_esc[*c] }, 2);
        else if (*c < 0x20)
            buf_put(b, esc, (size_t)snprintf(esc, sizeof esc, "\\u%04x", *c));
        else
            buf_put(b, (const char *)c, 1);
    }
    buf_put(b, "\"", 1);
}

static void buf_tensor(text_buf *b, const nx_st_entry *t)
{
    buf_json_string(b, t->name);
    buf_puts(b, ":{\"dtype\":\"");
    buf_puts(b, nx_dtype_name(t->dtype));
    buf_puts(b, "\",\"shape\":[");
    for (int i = 0; i < t->ndim; i++) {
        if (i)
            buf_put(b, ",", 1);
        buf_u64(b, (uint64_t)t->shape[i]);
    }
    buf_puts(b, "],\"data_offsets\":[");
    buf_u64(b, t->begin);
    buf_put(b, ",", 1);
    buf_u64(b, t->end);
    buf_puts(b, "]}");
}

static int check_entry(const nx_st_entry *t, nx_err *e)
{
    NX_ERROR_IF(t->name == NULL, e, NX_EINPUT, "safetensors layout: tensor without a name");
    NX_ERROR_IF(!dtype_valid(t->dtype), e, NX_EINPUT, "safetensors layout: tensor '%s' has "
                "invalid dtype %d", t->name, (int)t->dtype);
    NX_ERROR_IF(t->ndim < 0 || t->ndim > NX_MAX_DIMS, e, NX_EINPUT, "safetensors layout: tensor "
                "'%s' has %d dimensions", t->name, t->ndim);
    for (int i = 0; i < t->ndim; i++)
        NX_ERROR_IF(t->shape[i] < 0, e, NX_EINPUT, "safetensors layout: tensor '%s' has "
                    "negative dimension %lld", t->name, (long long)t->shape[i]);
    return NX_OK;
}

static int check_entries(const nx_st_entry *entries, int64_t n, nx_err *e)
{
    for (int64_t i = 0; i < n; i++)
        NX_TRY(check_entry(&entries[i], e));
    if (n < 2)
        return NX_OK;
    const char **names = malloc((size_t)n * sizeof *names);
    NX_ALLOC_CHECK(names, e, "tensor names");
    for (int64_t i = 0; i < n; i++)
        names[i] = entries[i].name;
    const char *dup = names_duplicate(names, n);
    int rc = dup ? nx_err_set(e, NX_EINPUT, "safetensors layout: tensor '%s' appears twice", dup)
                 : NX_OK;
    free(names);
    return rc;
}

/* The reference's writer order: dtype descending, then name ascending bytewise. */
static int cmp_entries(const void *pa, const void *pb)
{
    const nx_st_entry *a = pa, *b = pb;
    if (a->dtype != b->dtype)
        return a->dtype > b->dtype ? -1 : 1;
    return strcmp(a->name, b->name);
}

static int assign_offsets(nx_st_entry *entries, int64_t n, nx_err *e)
{
    uint64_t pos = 0, bytes;
    for (int64_t i = 0; i < n; i++) {
        nx_st_entry *t = &entries[i];
        NX_ERROR_IF(tensor_bytes(t->dtype, t->ndim, t->shape, &bytes) != 0 ||
                    __builtin_add_overflow(pos, bytes, &pos), e, NX_EINPUT,
                    "safetensors layout: tensor '%s' overflows 64-bit offsets", t->name);
        t->begin = pos - bytes;
        t->end = pos;
    }
    return NX_OK;
}

/* Renders prefix + JSON + padding into b. */
static void render_header(const nx_st_entry *entries, int64_t n, int with_metadata, text_buf *b)
{
    buf_put(b, "\0\0\0\0\0\0\0\0", 8);
    buf_puts(b, with_metadata ? "{\"__metadata__\":{\"format\":\"pt\"}" : "{");
    for (int64_t i = 0; i < n; i++) {
        if (i > 0 || with_metadata)
            buf_put(b, ",", 1);
        buf_tensor(b, &entries[i]);
    }
    buf_put(b, "}", 1);
    while (!b->oom && b->len % 8 != 0)
        buf_put(b, " ", 1);
    if (b->oom)
        return;
    uint64_t json_bytes = b->len - 8;
    for (int i = 0; i < 8; i++)
        b->p[i] = (char)(json_bytes >> (8 * i) & 0xFF);
}

static int layout(nx_st_entry *entries, int64_t n, int with_metadata, char **header,
                  uint64_t *header_bytes, nx_err *e)
{
    text_buf b = { 0 };
    *header = NULL;
    *header_bytes = 0;
    NX_ERROR_IF(n < 0, e, NX_EINPUT, "safetensors layout: negative tensor count %lld",
                (long long)n);
    NX_TRY(check_entries(entries, n, e));
    if (n > 1)
        qsort(entries, (size_t)n, sizeof *entries, cmp_entries);
    NX_TRY(assign_offsets(entries, n, e));
    render_header(entries, n, with_metadata, &b);
    if (b.oom) {
        free(b.p);
        return nx_err_set(e, NX_EIO, "out of memory rendering a safetensors header");
    }
    *header = b.p;
    *header_bytes = b.len;
    return NX_OK;
}

int nx_st_layout(nx_st_entry *entries, int64_t n, char **header, uint64_t *header_bytes,
                 nx_err *e)
{
    return layout(entries, n, 1, header, header_bytes, e);
}

int nx_st_layout_bare(nx_st_entry *entries, int64_t n, char **header, uint64_t *header_bytes,
                      nx_err *e)
{
    return layout(entries, n, 0, header, header_bytes, e);
}
