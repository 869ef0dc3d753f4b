/* report: nx_qstats_add on hand-made blocks with known errors, counts and histograms; the
 * HDF5 file (docs/report.md) read back with the HDF5 library: rows in natural name order,
 * every column, the root attributes, no temporary file left, errors that name the path. */
#include "nvfp4x/report.h"

#include <hdf5.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nvfp4x/util.h"
#include "nx_test.h"

static char tmp_root[512];

#define E4M3_ONE 0x38 /* 1.0 */
#define E4M3_448 0x7E

static uint8_t pack2(uint8_t lo, uint8_t hi)
{
    return (uint8_t)(lo | hi << 4);
}

/* Row 0: scale 1.0, ws2 0.5, every code 2 (1.0) so w_hat = 0.5; w = 0.5 except w[15] = 1.0.
 * Row 1: scale 448 (saturated), codes 0, w all zero. */
static void two_blocks(float w[32], uint8_t codes[16], uint8_t scales[2])
{
    for (int k = 0; k < 32; k++)
        w[k] = k < 16 ? 0.5f : 0.0f;
    w[15] = 1.0f;
    for (int j = 0; j < 16; j++)
        codes[j] = j < 8 ? pack2(2, 2) : 0;
    scales[0] = E4M3_ONE;
    scales[1] = E4M3_448;
}

static void test_known_values(void)
{
    float w[32];
    uint8_t codes[16], scales[2];
    nx_qstats s = { 0 };
    two_blocks(w, codes, scales);
    nx_qstats_add(&s, w, 2, 16, codes, scales, 0.5f);
    CHECK(s.elems == 32 && s.blocks == 2);
    CHECK(s.sum_sq_err == 0.25);          /* one error of 0.5 */
    CHECK(s.sum_sq_ref == 15 * 0.25 + 1); /* 4.75 */
    CHECK(s.max_abs_err == 0.5);
    CHECK(s.saturated_blocks == 1 && s.zero_blocks == 1);
    CHECK(s.hist[2] == 16 && s.hist[0] == 16);
    CHECK_MSG(fabs(nx_qstats_rel_rms(&s) - sqrt(0.25 / 4.75)) < 1e-15, "%.17g",
              nx_qstats_rel_rms(&s));
    CHECK_MSG(fabs(nx_qstats_snr_db(&s) - 10 * log10(19.0)) < 1e-12, "%.17g",
              nx_qstats_snr_db(&s));
}

/* Negative codes, the low nibble first, a subnormal scale, w_hat rounded in float32. */
static void test_codes_and_rounding(void)
{
    float w[16] = { -3.0f, 6.0f };
    uint8_t codes[8] = { pack2(0xD, 0x7) }, scale = E4M3_ONE;
    nx_qstats s = { 0 };
    nx_qstats_add(&s, w, 1, 16, codes, &scale, 1.0f);
    CHECK(s.sum_sq_err == 0.0 && s.max_abs_err == 0.0 && s.hist[0xD] == 1 && s.hist[7] == 1 &&
          s.hist[0] == 14 && s.zero_blocks == 0);
    CHECK(isinf(nx_qstats_snr_db(&s)) && nx_qstats_snr_db(&s) > 0 && nx_qstats_rel_rms(&s) == 0);

    /* 0x01 = 2^-9; ws2 = 1/3 in float32: w_hat = fl(6 * 2^-9 * ws2) = 2^-8 exactly, while
     * the product in double is 0.0039062501164... */
    float ws2 = 1.0f / 3.0f;
    memset(w, 0, sizeof w);
    uint8_t sub = 0x01, six[8] = { 0x07 };
    nx_qstats t = { 0 };
    nx_qstats_add(&t, w, 1, 16, six, &sub, ws2);
    CHECK_MSG(t.max_abs_err == 0x1p-8, "%.17g", t.max_abs_err);
    CHECK(t.zero_blocks == 1 && t.saturated_blocks == 0);
    CHECK(isinf(nx_qstats_rel_rms(&t)) && nx_qstats_snr_db(&t) < 0 && isinf(nx_qstats_snr_db(&t)));
}

static void test_nan_and_merge(void)
{
    float w[32];
    uint8_t codes[16], scales[2];
    two_blocks(w, codes, scales);
    nx_qstats whole = { 0 }, a = { 0 }, b = { 0 };
    nx_qstats_add(&whole, w, 2, 16, codes, scales, 0.5f);
    nx_qstats_add(&a, w, 1, 16, codes, scales, 0.5f);
    nx_qstats_add(&b, w + 16, 1, 16, codes + 8, scales + 1, 0.5f);
    nx_qstats_merge(&a, &b);
    CHECK(memcmp(&a, &whole, sizeof a) == 0);
    w[3] = NAN;
    nx_qstats n = { 0 };
    nx_qstats_add(&n, w, 2, 16, codes, scales, 0.5f);
    CHECK(isnan(n.max_abs_err) && isnan(nx_qstats_rel_rms(&n)));
    nx_qstats_merge(&whole, &n);
    CHECK(isnan(whole.max_abs_err));
}

/* ---- The file ----------------------------------------------------------------------------- */

static int read_col(hid_t f, const char *name, hid_t type, void *out)
{
    char path[128];
    snprintf(path, sizeof path, "/tensors/%s", name);
    hid_t d = H5Dopen2(f, path, H5P_DEFAULT);
    int ok = d >= 0 && H5Dread(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) >= 0;
    if (d >= 0)
        H5Dclose(d);
    return ok;
}

/* Module names as C strings, fixed-length rows of the file's width. */
static int read_names(hid_t f, char names[][64], int n)
{
    hid_t d = H5Dopen2(f, "/tensors/module", H5P_DEFAULT), t = H5Dget_type(d);
    size_t w = H5Tget_size(t);
    char *buf = calloc((size_t)n + 1, w);
    int ok = d >= 0 && w < 64 && H5Dread(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0;
    for (int i = 0; ok && i < n; i++) {
        memcpy(names[i], buf + (size_t)i * w, w);
        names[i][w] = '\0';
    }
    free(buf);
    H5Tclose(t);
    H5Dclose(d);
    return ok;
}

/* A variable-length string attribute. */
static void attr_text(hid_t f, const char *name, char *out, size_t len)
{
    hid_t a = H5Aopen(f, name, H5P_DEFAULT), t = H5Aget_type(a);
    char *value = NULL;
    out[0] = '\0';
    if (a >= 0 && H5Tis_variable_str(t) > 0 && H5Aread(a, t, &value) >= 0 && value) {
        snprintf(out, len, "%s", value);
        H5free_memory(value);
    }
    H5Tclose(t);
    H5Aclose(a);
}

/* This rank's share of x (every size-th entry), so that the file tests also run under
 * mpirun -np 2 or 3 with the rows spread over the ranks. */
static int64_t my_share(nx_report_entry *x, int64_t n)
{
    int rank, size;
    int64_t k = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    for (int64_t i = 0; i < n; i++)
        if (i % size == rank)
            x[k++] = x[i];
    return k;
}

static void entries_three(nx_report_entry x[3], float w[32], uint8_t codes[16],
                          uint8_t scales[2])
{
    static const char *const names[3] = { "model.layers.10.mlp.down_proj",
                                          "model.layers.2.mlp.up_proj",
                                          "model.layers.2.mlp.down_proj" };
    two_blocks(w, codes, scales);
    for (int i = 0; i < 3; i++) {
        x[i] = (nx_report_entry){ .module = names[i] };
        nx_qstats_add(&x[i].st, w, 2 - (i == 1), 16, codes, scales, 0.5f);
    }
    x[0].w_from_weight = 1;
    x[2].in_from_layer = 1;
    x[1].w_static = 1;
    x[0].w_swept = 1; /* sorted to row 2 */
    x[0].sw = (nx_sweep_stats){ .sum_sq_err_max = 1.0, .scale_ratio_sum = 3.0,
                                .scale_ratio_blocks = 2 };
}

static void check_file(const char *path)
{
    char names[3][64], text[64];
    int64_t elems[3], hist[3][16], sat[3];
    double rel[3], snr[3];
    uint8_t wfw[3], ifl[3], wst[3];
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    CHECK(f >= 0);
    CHECK(read_names(f, names, 3));
    CHECK_MSG(strcmp(names[0], "model.layers.2.mlp.down_proj") == 0 &&
              strcmp(names[1], "model.layers.2.mlp.up_proj") == 0 &&
              strcmp(names[2], "model.layers.10.mlp.down_proj") == 0, "%s %s %s", names[0],
              names[1], names[2]);
    CHECK(read_col(f, "elements", H5T_NATIVE_INT64, elems) && elems[0] == 32 &&
          elems[1] == 16 && elems[2] == 32);
    CHECK(read_col(f, "code_histogram", H5T_NATIVE_INT64, hist) && hist[0][2] == 16 &&
          hist[0][0] == 16 && hist[1][2] == 16 && hist[1][0] == 0);
    CHECK(read_col(f, "saturated_blocks", H5T_NATIVE_INT64, sat) && sat[0] == 1 && sat[1] == 0);
    CHECK(read_col(f, "rel_rms", H5T_NATIVE_DOUBLE, rel) && rel[0] == sqrt(0.25 / 4.75));
    CHECK(read_col(f, "snr_db", H5T_NATIVE_DOUBLE, snr) && snr[2] == 10 * log10(19.0));
    CHECK(read_col(f, "weight_amax_from_weight", H5T_NATIVE_UINT8, wfw) && wfw[2] == 1 &&
          wfw[0] == 0 && wfw[1] == 0);
    CHECK(read_col(f, "input_amax_from_layer", H5T_NATIVE_UINT8, ifl) && ifl[0] == 1);
    CHECK(read_col(f, "static_weight_amax", H5T_NATIVE_UINT8, wst) && wst[1] == 1);
    uint8_t swept[3];
    double err_max[3], rel_max[3], ratio[3];
    CHECK(read_col(f, "swept_weight_amax", H5T_NATIVE_UINT8, swept) && swept[2] == 1 &&
          swept[0] == 0 && swept[1] == 0);
    CHECK(read_col(f, "sum_sq_err_max", H5T_NATIVE_DOUBLE, err_max) && err_max[2] == 1.0 &&
          isnan(err_max[0]) && isnan(err_max[1]));
    CHECK(read_col(f, "rel_rms_max", H5T_NATIVE_DOUBLE, rel_max) &&
          rel_max[2] == sqrt(1.0 / 4.75) && isnan(rel_max[1]));
    CHECK(read_col(f, "mean_scale_ratio", H5T_NATIVE_DOUBLE, ratio) && ratio[2] == 1.5 &&
          isnan(ratio[0]));
    attr_text(f, "producer", text, sizeof text);
    CHECK_MSG(strcmp(text, "nvfp4x") == 0, "producer '%s'", text);
    H5Fclose(f);
}

static void test_file_written(void)
{
    nx_report_entry x[3];
    float w[32];
    uint8_t codes[16], scales[2];
    nx_err e = { 0 };
    entries_three(x, w, codes, scales);
    char *path = nx_asprintf("%s/report.h5", tmp_root), *tmp = nx_asprintf("%s.tmp", path);
    int64_t n = my_share(x, 3);
    CHECK_MSG(nx_report_write(path, x, n, MPI_COMM_WORLD, &e) == NX_OK, "%s", e.msg);
    check_file(path);
    CHECK(access(tmp, F_OK) != 0);
    /* again over the existing file: replaced */
    CHECK_MSG(nx_report_write(path, x, n, MPI_COMM_WORLD, &e) == NX_OK, "%s", e.msg);
    check_file(path);
    free(tmp);
    free(path);
}

static void test_empty_file(void)
{
    nx_err e = { 0 };
    char *path = nx_asprintf("%s/empty.h5", tmp_root);
    CHECK_MSG(nx_report_write(path, NULL, 0, MPI_COMM_WORLD, &e) == NX_OK, "%s", e.msg);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, "/tensors/code_histogram", H5P_DEFAULT), s = H5Dget_space(d);
    hsize_t dims[2] = { 9, 9 };
    CHECK(H5Sget_simple_extent_dims(s, dims, NULL) == 2 && dims[0] == 0 && dims[1] == 16);
    H5Sclose(s);
    H5Dclose(d);
    H5Fclose(f);
    free(path);
}

static void test_errors(void)
{
    nx_report_entry x[3];
    float w[32];
    uint8_t codes[16], scales[2];
    nx_err e = { 0 };
    entries_three(x, w, codes, scales);
    x[1].module = x[0].module;
    int64_t n = my_share(x, 3);
    nx_err e2 = { 0 };
    CHECK(nx_report_write("/nonexistent/dir/r.h5", x, 0, MPI_COMM_WORLD, &e) == NX_EIO);
    CHECK_MSG(strstr(e.msg, "/nonexistent/dir/r.h5") != NULL, "%s", e.msg);
    char *path = nx_asprintf("%s/twice.h5", tmp_root);
    CHECK(nx_report_write(path, x, n, MPI_COMM_WORLD, &e2) == NX_EINPUT);
    CHECK_MSG(strstr(e2.msg, path) && strstr(e2.msg, "model.layers.10.mlp.down_proj"), "%s",
              e2.msg);
    CHECK(access(path, F_OK) != 0);
    free(path);
}

int main(int argc, char **argv)
{
    /* keep MPI's plugins loaded so that their allocations can be told apart from ours */
    setenv("OMPI_MCA_mca_base_component_disable_dlclose", "1", 0);
    setenv("PMIX_MCA_mca_base_component_disable_dlclose", "1", 0);
    MPI_Init(&argc, &argv);
    const char *tmp = getenv("NX_TEST_TMP");
    snprintf(tmp_root, sizeof tmp_root, "%s/report", tmp ? tmp : "/tmp/nx_test_report");
    char *cmd = nx_asprintf("mkdir -p '%s'", tmp_root);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot create %s\n", tmp_root);
    free(cmd);
    RUN(test_known_values);
    RUN(test_codes_and_rounding);
    RUN(test_nan_and_merge);
    RUN(test_file_written);
    RUN(test_empty_file);
    RUN(test_errors);
    int status = TEST_SUMMARY();
    MPI_Finalize();
    return status;
}
