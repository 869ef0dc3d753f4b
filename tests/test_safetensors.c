/* safetensors: the writer renders headers as the reference library does, the reader refuses
 * every malformed file with NX_EINPUT and a message naming the file. */
#include "nvfp4x/safetensors.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>

#include "nvfp4x/util.h"
#include "nx_test.h"

static const char *tmp_dir;

/* A file: 8-byte little-endian length, json, data_bytes of pattern. */
static char *file_with_header(const char *json, size_t data_bytes, size_t *len)
{
    size_t n = strlen(json);
    *len = 8 + n + data_bytes;
    char *buf = calloc(1, *len);
    for (int i = 0; i < 8; i++)
        buf[i] = (char)((uint64_t)n >> (8 * i) & 0xFF);
    memcpy(buf + 8, json, n);
    for (size_t i = 0; i < data_bytes; i++)
        buf[8 + n + i] = (char)i;
    return buf;
}

static char *write_bytes(const char *name, const void *buf, size_t len)
{
    nx_err e = { 0 };
    char *path = nx_path_join(tmp_dir, name);
    int rc = nx_file_write_all(path, buf, len, &e);
    CHECK_MSG(rc == NX_OK, "%s", e.msg);
    return path;
}

static char *write_st(const char *name, const char *json, size_t data_bytes)
{
    size_t len;
    char *buf = file_with_header(json, data_bytes, &len);
    char *path = write_bytes(name, buf, len);
    free(buf);
    return path;
}

static int header_is_zeroed(const nx_st_header *h)
{
    static const nx_st_header zero;
    return memcmp(h, &zero, sizeof zero) == 0;
}

/* Reads path expecting NX_EINPUT with the file name and `rule` in the message. */
static void expect_refused_path(const char *path, const char *name, const char *rule)
{
    nx_err e = { 0 };
    nx_st_header h;
    int rc = nx_st_header_read(path, &h, &e);
    CHECK_MSG(rc == NX_EINPUT && e.code == NX_EINPUT, "%s: rc %d: %s", name, rc, e.msg);
    CHECK_MSG(strstr(e.msg, name) != NULL, "message does not name the file: %s", e.msg);
    CHECK_MSG(strstr(e.msg, rule) != NULL, "message lacks '%s': %s", rule, e.msg);
    CHECK(header_is_zeroed(&h));
    nx_st_header_free(&h);
}

static void expect_refused(const char *name, const char *json, size_t data_bytes,
                           const char *rule)
{
    char *path = write_st(name, json, data_bytes);
    expect_refused_path(path, name, rule);
    free(path);
}

static nx_st_entry entry(const char *name, nx_dtype dt, int ndim, int64_t d0, int64_t d1,
                         int64_t id)
{
    nx_st_entry t = { .name = name, .dtype = dt, .ndim = ndim, .id = id };
    t.shape[0] = d0;
    t.shape[1] = d1;
    return t;
}

static void test_dtype_names(void)
{
    for (int i = 0; i < NX_DT_COUNT; i++) {
        nx_dtype dt;
        CHECK(nx_dtype_parse(nx_dtype_name((nx_dtype)i), &dt) == 0 && dt == (nx_dtype)i);
    }
    nx_dtype dt = NX_DT_U8;
    CHECK(nx_dtype_parse("bf16", &dt) == -1 && dt == NX_DT_U8);
    CHECK(nx_dtype_parse("F4", &dt) == -1);
    CHECK(strcmp(nx_dtype_name(NX_DT_F8_E4M3), "F8_E4M3") == 0);
    CHECK(nx_dtype_size(NX_DT_BOOL) == 1 && nx_dtype_size(NX_DT_BF16) == 2);
    CHECK(nx_dtype_size(NX_DT_F32) == 4 && nx_dtype_size(NX_DT_U64) == 8);
    CHECK(nx_dtype_parse("F8_E8M0", &dt) == 0 && dt == NX_DT_F8_E8M0);
    CHECK(nx_dtype_size(NX_DT_F8_E8M0) == 1);
}

/* F8_E8M0 sorts where the reference's enum has it: after F8_E4M3, before I16 (so, written
 * descending, between them). */
static void test_layout_e8m0_order(void)
{
    nx_st_entry t[] = {
        entry("a.weight", NX_DT_F8_E4M3, 2, 2, 2, 0),
        entry("a.scale", NX_DT_F8_E8M0, 2, 1, 1, 1),
        entry("b.tid", NX_DT_I16, 1, 1, 0, 2),
        entry("c.w", NX_DT_I8, 2, 2, 1, 3),
    };
    static const int64_t want_ids[] = { 2, 1, 0, 3 };
    char *hdr = NULL;
    uint64_t hdr_bytes = 0;
    nx_err e = { 0 };
    CHECK_MSG(nx_st_layout(t, 4, &hdr, &hdr_bytes, &e) == NX_OK, "%s", e.msg);
    for (int i = 0; i < 4; i++)
        CHECK_MSG(t[i].id == want_ids[i], "position %d: id %lld", i, (long long)t[i].id);
    free(hdr);
}

/* No __metadata__: what save_file(tensors) writes without a metadata argument. */
static void test_layout_bare_header(void)
{
    nx_st_entry t[] = { entry("y", NX_DT_F8_E8M0, 1, 2, 0, 0), entry("x", NX_DT_F32, 0, 0, 0, 1) };
    static const char want[] = "\x70\0\0\0\0\0\0\0"
        "{\"x\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
        "\"y\":{\"dtype\":\"F8_E8M0\",\"shape\":[2],\"data_offsets\":[4,6]}}  ";
    char *hdr = NULL;
    uint64_t hdr_bytes = 0;
    nx_err e = { 0 };
    CHECK_MSG(nx_st_layout_bare(t, 2, &hdr, &hdr_bytes, &e) == NX_OK, "%s", e.msg);
    CHECK_MSG(hdr_bytes == sizeof want - 1, "%llu bytes", (unsigned long long)hdr_bytes);
    CHECK(hdr && memcmp(hdr, want, sizeof want - 1) == 0);
    free(hdr);
    nx_st_entry none[1];
    CHECK(nx_st_layout_bare(none, 0, &hdr, &hdr_bytes, &e) == NX_OK && hdr_bytes == 16 &&
          memcmp(hdr + 8, "{}      ", 8) == 0);
    free(hdr);
}

static void test_layout_sort_order(void)
{
    nx_st_entry t[] = {
        entry("w.weight_scale", NX_DT_F8_E4M3, 2, 4, 1, 0),
        entry("w.weight", NX_DT_U8, 2, 4, 8, 1),
        entry("layers.2.norm", NX_DT_F16, 1, 4, 0, 2),
        entry("layers.10.norm", NX_DT_BF16, 1, 4, 0, 3),
        entry("w.weight_scale_2", NX_DT_F32, 0, 0, 0, 4),
        entry("w.input_scale", NX_DT_F32, 0, 0, 0, 5),
        entry("layers.2.x", NX_DT_BF16, 1, 2, 0, 6),
        entry("Z", NX_DT_BF16, 1, 2, 0, 7),
    };
    /* Bytewise: 'Z' < 'l', "layers.10" < "layers.2". */
    static const int64_t want_ids[] = { 5, 4, 7, 3, 6, 2, 0, 1 };
    static const uint64_t want_begin[] = { 0, 4, 8, 12, 20, 24, 32, 36 };
    char *hdr = NULL;
    uint64_t hdr_bytes = 0;
    nx_err e = { 0 };
    CHECK_MSG(nx_st_layout(t, 8, &hdr, &hdr_bytes, &e) == NX_OK, "%s", e.msg);
    for (int i = 0; i < 8; i++) {
        CHECK_MSG(t[i].id == want_ids[i], "position %d: id %lld", i, (long long)t[i].id);
        CHECK_MSG(t[i].begin == want_begin[i], "position %d: begin %llu", i,
                  (unsigned long long)t[i].begin);
    }
    CHECK(t[7].end == 68);
    free(hdr);
}

static void test_layout_exact_header(void)
{
    nx_st_entry t[] = { entry("x", NX_DT_F32, 0, 0, 0, 0) };
    static const char want[] = "\x58\0\0\0\0\0\0\0"
        "{\"__metadata__\":{\"format\":\"pt\"},"
        "\"x\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}    ";
    char *hdr = NULL;
    uint64_t hdr_bytes = 0;
    nx_err e = { 0 };
    CHECK_MSG(nx_st_layout(t, 1, &hdr, &hdr_bytes, &e) == NX_OK, "%s", e.msg);
    CHECK_MSG(hdr_bytes == sizeof want - 1, "%llu bytes", (unsigned long long)hdr_bytes);
    CHECK(hdr && memcmp(hdr, want, sizeof want - 1) == 0);
    free(hdr);
}

/* Names escaped as serde_json does: '"', '\\', \n short, other controls \u00xx, DEL and UTF-8
 * kept as they are. */
static void test_layout_escapes_names(void)
{
    nx_st_entry t[] = {
        entry("a\"b\\c\n\x1f\x7f\xc3\xa9", NX_DT_BF16, 2, 2, 3, 0),
        entry("x", NX_DT_F32, 0, 0, 0, 1),
    };
    static const char want[] = "\xa0\0\0\0\0\0\0\0"
        "{\"__metadata__\":{\"format\":\"pt\"},"
        "\"x\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
        "\"a\\\"b\\\\c\\n\\u001f\x7f\xc3\xa9\":{\"dtype\":\"BF16\",\"shape\":[2,3],"
        "\"data_offsets\":[4,16]}}  ";
    char *hdr = NULL;
    uint64_t hdr_bytes = 0;
    nx_err e = { 0 };
    CHECK_MSG(nx_st_layout(t, 2, &hdr, &hdr_bytes, &e) == NX_OK, "%s", e.msg);
    CHECK_MSG(hdr_bytes == sizeof want - 1, "%llu bytes", (unsigned long long)hdr_bytes);
    CHECK(hdr && memcmp(hdr, want, sizeof want - 1) == 0);
    free(hdr);
}

static void test_layout_padding(void)
{
    char name[40];
    for (int len = 1; len <= 24; len++) {
        memset(name, 'n', (size_t)len);
        name[len] = '\0';
        nx_st_entry t[] = { entry(name, NX_DT_U8, 1, len, 0, 0) };
        char *hdr = NULL;
        uint64_t hdr_bytes = 0, prefix = 0;
        nx_err e = { 0 };
        CHECK_MSG(nx_st_layout(t, 1, &hdr, &hdr_bytes, &e) == NX_OK, "%s", e.msg);
        CHECK_MSG(hdr_bytes % 8 == 0, "name length %d: %llu bytes", len,
                  (unsigned long long)hdr_bytes);
        for (int i = 7; i >= 0; i--)
            prefix = prefix << 8 | (unsigned char)hdr[i];
        CHECK(prefix == hdr_bytes - 8);
        uint64_t end = hdr_bytes;
        while (end > 8 && hdr[end - 1] == ' ')
            end--;
        CHECK(hdr[end - 1] == '}' && hdr_bytes - end < 8);
        free(hdr);
    }
}

static void test_layout_empty(void)
{
    char *hdr = NULL;
    uint64_t hdr_bytes = 0;
    nx_err e = { 0 };
    static const char want[] = "\x20\0\0\0\0\0\0\0{\"__metadata__\":{\"format\":\"pt\"}}";
    CHECK_MSG(nx_st_layout(NULL, 0, &hdr, &hdr_bytes, &e) == NX_OK, "%s", e.msg);
    CHECK(hdr_bytes == sizeof want - 1 && memcmp(hdr, want, sizeof want - 1) == 0);
    free(hdr);
}

static void test_layout_refuses_bad_entries(void)
{
    nx_st_entry dup[] = { entry("a", NX_DT_F32, 0, 0, 0, 0), entry("a", NX_DT_U8, 0, 0, 0, 1) };
    nx_st_entry neg[] = { entry("a", NX_DT_F32, 1, -1, 0, 0) };
    nx_st_entry big[] = { entry("a", NX_DT_F64, 2, INT64_MAX, INT64_MAX, 0) };
    char *hdr = NULL;
    uint64_t hdr_bytes = 0;
    nx_err e = { 0 };
    CHECK(nx_st_layout(dup, 2, &hdr, &hdr_bytes, &e) == NX_EINPUT && hdr == NULL);
    CHECK_MSG(strstr(e.msg, "'a' appears twice") != NULL, "%s", e.msg);
    e = (nx_err){ 0 };
    CHECK(nx_st_layout(neg, 1, &hdr, &hdr_bytes, &e) == NX_EINPUT && hdr == NULL);
    e = (nx_err){ 0 };
    CHECK(nx_st_layout(big, 1, &hdr, &hdr_bytes, &e) == NX_EINPUT && hdr == NULL);
}

static void test_round_trip(void)
{
    nx_st_entry t[] = {
        entry("model.layers.0.mlp.experts.0.down_proj.weight", NX_DT_U8, 2, 16, 8, 0),
        entry("model.layers.0.mlp.experts.0.down_proj.weight_scale", NX_DT_F8_E4M3, 2, 16, 1, 1),
        entry("model.layers.0.mlp.experts.0.down_proj.weight_scale_2", NX_DT_F32, 0, 0, 0, 2),
        entry("model.embed_tokens.weight", NX_DT_BF16, 2, 32, 16, 3),
        entry("model.empty", NX_DT_F16, 2, 0, 4, 4),
        entry("model.mask", NX_DT_BOOL, 1, 3, 0, 5),
    };
    char *hdr = NULL;
    uint64_t hdr_bytes = 0;
    nx_err e = { 0 };
    CHECK_MSG(nx_st_layout(t, 6, &hdr, &hdr_bytes, &e) == NX_OK, "%s", e.msg);
    uint64_t total = hdr_bytes + t[5].end;
    char *file = calloc(1, total);
    memcpy(file, hdr, hdr_bytes);
    for (uint64_t i = hdr_bytes; i < total; i++)
        file[i] = (char)(i * 7);
    char *path = write_bytes("round_trip.safetensors", file, total);

    nx_st_header h;
    CHECK_MSG(nx_st_header_read(path, &h, &e) == NX_OK, "%s", e.msg);
    CHECK(h.n == 6 && h.json_bytes == hdr_bytes - 8 && h.data_start == hdr_bytes);
    CHECK(h.file_bytes == total);
    CHECK(h.metadata_json && strcmp(h.metadata_json, "{\"format\":\"pt\"}") == 0);
    for (int64_t i = 0; i < h.n && i < 6; i++) {
        const nx_st_tensor *r = &h.tensors[i];
        CHECK(strcmp(r->name, t[i].name) == 0 && r->dtype == t[i].dtype);
        CHECK(r->ndim == t[i].ndim && r->begin == t[i].begin && r->end == t[i].end);
        CHECK(memcmp(r->shape, t[i].shape, sizeof r->shape) == 0);
    }
    nx_st_header_free(&h);
    CHECK(header_is_zeroed(&h));
    free(path);
    free(file);
    free(hdr);
}

/* A header written by another tool: no metadata, offsets not in header order, extra spaces. */
static void test_reads_foreign_header(void)
{
    static const char json[] =
        "{ \"b\": {\"data_offsets\": [4, 12], \"shape\": [2], \"dtype\": \"I32\"},\n"
        "  \"a\": {\"dtype\": \"F32\", \"shape\": [], \"data_offsets\": [0, 4]},\n"
        "  \"z\": {\"dtype\": \"U8\", \"shape\": [0], \"data_offsets\": [4, 4]}}\n";
    char *path = write_st("foreign.safetensors", json, 12);
    nx_st_header h;
    nx_err e = { 0 };
    CHECK_MSG(nx_st_header_read(path, &h, &e) == NX_OK, "%s", e.msg);
    CHECK(h.n == 3 && h.metadata_json == NULL);
    if (h.n == 3) {
        CHECK(strcmp(h.tensors[0].name, "b") == 0 && h.tensors[0].dtype == NX_DT_I32);
        CHECK(h.tensors[0].ndim == 1 && h.tensors[0].shape[0] == 2 && h.tensors[0].begin == 4);
        CHECK(strcmp(h.tensors[1].name, "a") == 0 && h.tensors[1].ndim == 0);
        CHECK(strcmp(h.tensors[2].name, "z") == 0 && h.tensors[2].end == 4);
    }
    nx_st_header_free(&h);
    free(path);
}

static void test_parse_in_memory(void)
{
    nx_st_header h;
    nx_err e = { 0 };
    CHECK_MSG(nx_st_header_parse("{}      ", 8, 0, "mem", &h, &e) == NX_OK, "%s", e.msg);
    CHECK(h.n == 0 && h.json_bytes == 8 && h.data_start == 16 && h.file_bytes == 16);
    nx_st_header_free(&h);
    /* The reference's own case: leading whitespace padding is allowed. */
    CHECK_MSG(nx_st_header_parse("\t\n{}\r ", 6, 0, "mem", &h, &e) == NX_OK, "%s", e.msg);
    nx_st_header_free(&h);
    CHECK(nx_st_header_parse("{}", 2, 4, "mem", &h, &e) == NX_EINPUT);
    CHECK_MSG(strstr(e.msg, "mem: data section is 4 bytes") != NULL, "%s", e.msg);
    CHECK(header_is_zeroed(&h));
    nx_st_header_free(&h);
    nx_st_header_free(&h);
}

static void test_refuses_truncated_data(void)
{
    expect_refused("truncated.safetensors",
                   "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8,
                   "truncated");
}

static void test_refuses_trailing_data(void)
{
    expect_refused("trailing.safetensors",
                   "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8,
                   "trailing bytes");
}

static void test_refuses_header_past_eof(void)
{
    unsigned char buf[20] = { 0xe8, 0x03 }; /* N = 1000 */
    memcpy(buf + 8, "{}", 2);
    char *path = write_bytes("past_eof.safetensors", buf, sizeof buf);
    expect_refused_path(path, "past_eof.safetensors", "runs past the end of the file");
    free(path);
}

static void test_refuses_header_above_limit(void)
{
    unsigned char buf[16] = { 0x00, 0xc2, 0xeb, 0x0b }; /* N = 200000000 */
    char *path = write_bytes("huge_len.safetensors", buf, sizeof buf);
    expect_refused_path(path, "huge_len.safetensors", "above the limit");
    free(path);
}

static void test_refuses_short_file(void)
{
    char *path = write_bytes("short.safetensors", "\x02\0\0", 3);
    expect_refused_path(path, "short.safetensors", "too short");
    free(path);
}

static void test_refuses_missing_file(void)
{
    char *path = nx_path_join(tmp_dir, "missing.safetensors");
    expect_refused_path(path, "missing.safetensors", "cannot open");
    free(path);
}

static void test_refuses_malformed_json(void)
{
    expect_refused("malformed.safetensors", "{\"a\":{\"dtype\":\"F32\",", 0, "not valid JSON");
    expect_refused("garbage_after.safetensors", "{} x", 0, "data after the JSON object");
    expect_refused("bad_utf8.safetensors", "{\"\xc3\x28\":{}}", 0, "invalid UTF-8");
    expect_refused("control_char.safetensors", "{}\x01", 0, "control character");
    expect_refused("bom.safetensors", "\xEF\xBB\xBF{}", 0, "byte order mark");
}

static void test_refuses_overlap(void)
{
    expect_refused("overlap.safetensors",
                   "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                   "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12,
                   "tensor 'b' overlaps the previous tensor 'a' (begins at 4, previous ends at 8)");
}

static void test_refuses_hole(void)
{
    expect_refused("hole.safetensors",
                   "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                   "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 12,
                   "hole before tensor 'b' (begins at 8");
    expect_refused("hole_first.safetensors",
                   "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
                   "hole before tensor 'a'");
}

static void test_refuses_unknown_dtype(void)
{
    expect_refused("dtype.safetensors",
                   "{\"a\":{\"dtype\":\"Q4\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                   "tensor 'a' has unknown dtype 'Q4'");
}

static void test_refuses_shape_bytes_mismatch(void)
{
    expect_refused("mismatch.safetensors",
                   "{\"a\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[0,8]}}", 8,
                   "tensor 'a': shape [2, 3] of BF16 is 12 bytes but data_offsets [0, 8] span 8");
    expect_refused("overflow.safetensors",
                   "{\"a\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296,16],"
                   "\"data_offsets\":[0,0]}}", 0, "overflows");
}

static void test_refuses_duplicate_name(void)
{
    expect_refused("duplicate.safetensors",
                   "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                   "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2,
                   "tensor 'a' appears twice");
}

static void test_refuses_negative_shape(void)
{
    expect_refused("negative.safetensors",
                   "{\"a\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,0]}}", 0,
                   "shape[0] is -1, not a non-negative integer");
    expect_refused("fraction.safetensors",
                   "{\"a\":{\"dtype\":\"U8\",\"shape\":[1.5],\"data_offsets\":[0,0]}}", 0,
                   "not a non-negative integer");
}

static void test_refuses_non_object_header(void)
{
    expect_refused("array.safetensors", "[1,2,3]", 0, "not a JSON object");
    expect_refused("string.safetensors", "\"{}\"", 0, "not a JSON object");
    expect_refused("number.safetensors", " 42 ", 0, "not a JSON object");
    expect_refused("empty.safetensors", "", 0, "not valid JSON");
}

static void test_refuses_bad_fields(void)
{
    expect_refused("offsets_reversed.safetensors",
                   "{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,0]}}", 4,
                   "end before they begin");
    expect_refused("offsets_three.safetensors",
                   "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]}}", 1,
                   "\"data_offsets\" is not an array [begin, end]");
    expect_refused("no_shape.safetensors",
                   "{\"a\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", 1,
                   "tensor 'a' has no \"shape\"");
    expect_refused("dims.safetensors",
                   "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                   "\"data_offsets\":[0,1]}}", 1, "9 dimensions");
    expect_refused("tensor_not_object.safetensors", "{\"a\":[]}", 0,
                   "tensor 'a' is not a JSON object");
    expect_refused("metadata_value.safetensors", "{\"__metadata__\":{\"format\":1}}", 0,
                   "value of 'format' is not a string");
    expect_refused("metadata_array.safetensors", "{\"__metadata__\":[]}", 0,
                   "\"__metadata__\" is not a JSON object");
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    tmp_dir = getenv("NX_TEST_TMP");
    if (tmp_dir == NULL)
        tmp_dir = "/tmp";
    if (mkdir(tmp_dir, 0755) != 0 && errno != EEXIST) {
        perror(tmp_dir);
        return EXIT_FAILURE;
    }
    RUN(test_dtype_names);
    RUN(test_layout_sort_order);
    RUN(test_layout_exact_header);
    RUN(test_layout_e8m0_order);
    RUN(test_layout_bare_header);
    RUN(test_layout_escapes_names);
    RUN(test_layout_padding);
    RUN(test_layout_empty);
    RUN(test_layout_refuses_bad_entries);
    RUN(test_round_trip);
    RUN(test_reads_foreign_header);
    RUN(test_parse_in_memory);
    RUN(test_refuses_truncated_data);
    RUN(test_refuses_trailing_data);
    RUN(test_refuses_header_past_eof);
    RUN(test_refuses_header_above_limit);
    RUN(test_refuses_short_file);
    RUN(test_refuses_missing_file);
    RUN(test_refuses_malformed_json);
    RUN(test_refuses_overlap);
    RUN(test_refuses_hole);
    RUN(test_refuses_unknown_dtype);
    RUN(test_refuses_shape_bytes_mismatch);
    RUN(test_refuses_duplicate_name);
    RUN(test_refuses_negative_shape);
    RUN(test_refuses_non_object_header);
    RUN(test_refuses_bad_fields);
    return TEST_SUMMARY();
}
