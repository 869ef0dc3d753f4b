/* libFuzzer harness for the safetensors header parser (nx_st_header_parse) and, where a header
 * is valid, a round trip through the writer (nx_st_layout).
 *
 * Input: the first 8 bytes are the data section length (little-endian, as in a file's length
 * prefix, but counting the data after the header), the rest is the header JSON. Inputs shorter
 * than 8 bytes are a JSON text with an empty data section.
 *
 * Any broken property aborts, so that libFuzzer reports the input:
 *   - an accepted header's tensors tile [0, data_bytes) exactly, with bytes = shape x dtype size,
 *     unique names, at most NX_MAX_DIMS dimensions, known dtypes;
 *   - nx_st_layout renders an accepted header, and the rendered header parses again with the
 *     same names, dtypes, shapes and the offsets the layout assigned;
 *   - rendering that re-parsed header once more gives the same bytes (the writer is stable). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nvfp4x/safetensors.h"

#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "fuzz_st_header: check failed at line %d: %s\n", __LINE__,     \
                    #cond);                                                                \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* (begin, end) order, as the reference walks them: an empty tensor sorts before a non-empty
 * one that begins at the same offset. */
static int cmp_by_offsets(const void *pa, const void *pb)
{
    const nx_st_tensor *a = *(const nx_st_tensor *const *)pa;
    const nx_st_tensor *b = *(const nx_st_tensor *const *)pb;
    if (a->begin != b->begin)
        return a->begin < b->begin ? -1 : 1;
    return (a->end > b->end) - (a->end < b->end);
}

static int cmp_names(const void *pa, const void *pb)
{
    return strcmp(*(const char *const *)pa, *(const char *const *)pb);
}

/* The contract of an accepted header (safetensors.h), checked independently of the parser. */
static void check_accepted(const nx_st_header *h, size_t json_len, uint64_t data_bytes)
{
    CHECK(h->n >= 0);
    CHECK(h->n == 0 || h->tensors != NULL);
    CHECK(h->json_bytes == json_len);
    CHECK(h->data_start == 8 + (uint64_t)json_len);
    CHECK(h->file_bytes == h->data_start + data_bytes);
    if (h->n == 0) {
        CHECK(data_bytes == 0);
        return;
    }
    const nx_st_tensor **order = malloc((size_t)h->n * sizeof *order);
    const char **names = malloc((size_t)h->n * sizeof *names);
    CHECK(order != NULL && names != NULL);
    for (int64_t i = 0; i < h->n; i++) {
        const nx_st_tensor *t = &h->tensors[i];
        CHECK(t->name != NULL);
        CHECK((int)t->dtype >= 0 && t->dtype < NX_DT_COUNT);
        CHECK(t->ndim >= 0 && t->ndim <= NX_MAX_DIMS);
        CHECK(t->begin <= t->end && t->end <= data_bytes);
        uint64_t bytes = nx_dtype_size(t->dtype);
        for (int d = 0; d < t->ndim; d++) {
            CHECK(t->shape[d] >= 0);
            CHECK(!__builtin_mul_overflow(bytes, (uint64_t)t->shape[d], &bytes));
        }
        CHECK(bytes == t->end - t->begin);
        order[i] = t;
        names[i] = t->name;
    }
    qsort(order, (size_t)h->n, sizeof *order, cmp_by_offsets);
    uint64_t pos = 0;
    for (int64_t i = 0; i < h->n; i++) {
        CHECK(order[i]->begin == pos);
        pos = order[i]->end;
    }
    CHECK(pos == data_bytes);
    qsort(names, (size_t)h->n, sizeof *names, cmp_names);
    for (int64_t i = 1; i < h->n; i++)
        CHECK(strcmp(names[i - 1], names[i]) != 0);
    free(order);
    free(names);
}

/* Entries for nx_st_layout; names point into h. */
static nx_st_entry *entries_from(const nx_st_header *h)
{
    nx_st_entry *es = calloc((size_t)(h->n ? h->n : 1), sizeof *es);
    CHECK(es != NULL);
    for (int64_t i = 0; i < h->n; i++) {
        const nx_st_tensor *t = &h->tensors[i];
        es[i].name = t->name;
        es[i].dtype = t->dtype;
        es[i].ndim = t->ndim;
        memcpy(es[i].shape, t->shape, sizeof es[i].shape);
        es[i].id = i;
    }
    return es;
}

/* Renders h; checks the framing of the result and returns it. */
static char *render(const nx_st_header *h, nx_st_entry **entries, uint64_t *header_bytes)
{
    nx_err e = { 0 };
    char *header = NULL;
    *entries = entries_from(h);
    int rc = nx_st_layout(*entries, h->n, &header, header_bytes, &e);
    if (rc != NX_OK)
        fprintf(stderr, "fuzz_st_header: nx_st_layout refused an accepted header: %s\n", e.msg);
    CHECK(rc == NX_OK);
    CHECK(header != NULL);
    CHECK(*header_bytes >= 8 && *header_bytes % 8 == 0);
    CHECK(le64((const uint8_t *)header) == *header_bytes - 8);
    return header;
}

static const nx_st_tensor *find_tensor(const nx_st_header *h, const char *name)
{
    for (int64_t i = 0; i < h->n; i++)
        if (strcmp(h->tensors[i].name, name) == 0)
            return &h->tensors[i];
    return NULL;
}

static void round_trip(const nx_st_header *h, uint64_t data_bytes)
{
    nx_st_entry *entries = NULL, *entries2 = NULL;
    uint64_t header_bytes = 0, header_bytes2 = 0;
    char *header = render(h, &entries, &header_bytes);

    nx_st_header h2;
    nx_err e = { 0 };
    int rc = nx_st_header_parse(header + 8, (size_t)(header_bytes - 8), data_bytes, "rendered",
                                &h2, &e);
    if (rc != NX_OK)
        fprintf(stderr, "fuzz_st_header: rendered header does not parse: %s\n", e.msg);
    CHECK(rc == NX_OK);
    check_accepted(&h2, (size_t)(header_bytes - 8), data_bytes);
    CHECK(h2.n == h->n);
    CHECK(h2.metadata_json != NULL && strcmp(h2.metadata_json, "{\"format\":\"pt\"}") == 0);
    for (int64_t i = 0; i < h->n; i++) {
        const nx_st_entry *want = &entries[i];
        const nx_st_tensor *got = find_tensor(&h2, want->name);
        CHECK(got != NULL);
        CHECK(got->dtype == want->dtype && got->ndim == want->ndim);
        CHECK(memcmp(got->shape, want->shape, (size_t)want->ndim * sizeof *want->shape) == 0);
        CHECK(got->begin == want->begin && got->end == want->end);
        const nx_st_tensor *orig = find_tensor(h, want->name);
        CHECK(orig != NULL && orig->dtype == got->dtype && orig->ndim == got->ndim);
        CHECK(memcmp(orig->shape, got->shape, (size_t)got->ndim * sizeof *got->shape) == 0);
    }

    char *header2 = render(&h2, &entries2, &header_bytes2);
    CHECK(header_bytes2 == header_bytes && memcmp(header2, header, (size_t)header_bytes) == 0);

    free(header2);
    free(entries2);
    nx_st_header_free(&h2);
    free(header);
    free(entries);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t data_bytes = 0;
    const char *json = (const char *)data;
    size_t json_len = size;
    if (size >= 8) {
        data_bytes = le64(data);
        json += 8;
        json_len -= 8;
    }
    nx_st_header h;
    nx_err e = { 0 };
    int rc = nx_st_header_parse(json, json_len, data_bytes, "fuzz", &h, &e);
    if (rc != NX_OK) {
        CHECK(rc == NX_EINPUT || rc == NX_EIO);
        CHECK(e.code == rc && e.msg[0] != '\0');
        CHECK(h.n == 0 && h.tensors == NULL && h.metadata_json == NULL);
        return 0;
    }
    CHECK(e.code == NX_OK);
    check_accepted(&h, json_len, data_bytes);
    round_trip(&h, data_bytes);
    nx_st_header_free(&h);
    return 0;
}
