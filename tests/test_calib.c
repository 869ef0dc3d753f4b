/* nx_calib: the HDF5 calibration schema of DESIGN.md ("Calibration file"), on files written
 * here with the HDF5 C API. */
#include <errno.h>
#include <hdf5.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "nvfp4x/calib.h"
#include "nvfp4x/util.h"
#include "nx_test.h"

#define Q "model.layers.0.self_attn.q_proj"
#define K "model.layers.0.self_attn.k_proj"
#define DOWN "model.layers.0.mlp.experts.3.down_proj"
#define BAD "model.layers.1.mlp.experts.0.up_proj"
#define DOWN_H5 "/model/layers/0/mlp/experts/3/down_proj"
#define BAD_H5 "/model/layers/1/mlp/experts/0/up_proj"

static char *tmp_dir;
static char *calib_file; /* the fixture every read test opens */

static int mkdir_p(const char *path)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    return mkdir(buf, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

/* IEEE half and bfloat16 built the way h5py builds its float16: HDF5 1.10 has no predefined
 * 16-bit float type, but converts any described float layout. */
static hid_t type_f16(void)
{
    hid_t t = H5Tcopy(H5T_IEEE_F32LE);
    H5Tset_fields(t, 15, 10, 5, 0, 10);
    H5Tset_size(t, 2);
    H5Tset_ebias(t, 15);
    return t;
}

static hid_t type_bf16(void)
{
    hid_t t = H5Tcopy(H5T_IEEE_F32LE);
    H5Tset_fields(t, 15, 7, 8, 0, 7);
    H5Tset_size(t, 2);
    H5Tset_ebias(t, 127);
    return t;
}

/* Dataset at path (groups created on the way); rank 0 is a scalar dataspace. The data is in
 * the file's own layout, so what is stored is exactly these bytes. */
static void put(hid_t file, const char *path, hid_t type, int rank, const hsize_t *dims,
                const void *data)
{
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    hid_t space = rank == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(rank, dims, NULL);
    hid_t d = H5Dcreate2(file, path, type, space, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    CHECK_MSG(d >= 0 && H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0,
              "writing %s", path);
    H5Dclose(d);
    H5Sclose(space);
    H5Pclose(lcpl);
}

static void put_f32(hid_t file, const char *path, int rank, const hsize_t *dims,
                    const float *data)
{
    put(file, path, H5T_IEEE_F32LE, rank, dims, data);
}

static char *write_fixture(void)
{
    char *path = nx_path_join(tmp_dir, "calib.h5");
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t one[1] = { 1 }, three[1] = { 3 }, eight[1] = { 8 }, block[2] = { 4, 2 };

    put_f32(f, "/model/layers/0/self_attn/q_proj/input_quantizer/_amax", 0, NULL,
            (float[]){ 2.5f });
    put_f32(f, "/model/layers/0/self_attn/k_proj/input_quantizer/_amax", 1, one,
            (float[]){ 1.25f });
    put(f, "/model/layers/0/self_attn/q_proj/weight_quantizer/_amax", H5T_IEEE_F64LE, 0, NULL,
        (double[]){ 0.1 });
    put_f32(f, "/model/layers/0/self_attn/k_bmm_quantizer/_amax", 0, NULL, (float[]){ 0.0f });

    put_f32(f, DOWN_H5 "/weight_quantizer/_amax", 2, block,
            (float[]){ 0.5f, 1, 1.5f, 2, 2.5f, 3, 3.5f, 4 });
    hid_t f16 = type_f16(), bf16 = type_bf16();
    /* 3.0, 0.1 (rounded), 65504 (largest), 2^-24 (smallest subnormal) */
    put(f, DOWN_H5 "/weight_quantizer/_global_amax", f16, 0, NULL, (uint16_t[]){ 0x4200 });
    put(f, DOWN_H5 "/input_quantizer/_amax", f16, 1, three,
        (uint16_t[]){ 0x2E66, 0x7BFF, 0x0001 });
    put(f, DOWN_H5 "/output_quantizer/_amax", bf16, 0, NULL, (uint16_t[]){ 0x3FC0 });

    put(f, BAD_H5 "/input_quantizer/_amax", H5T_STD_I32LE, 0, NULL, (int32_t[]){ 3 });
    hid_t str = H5Tcopy(H5T_C_S1);
    H5Tset_size(str, 4);
    put(f, BAD_H5 "/output_quantizer/_amax", str, 0, NULL, "1.5");
    put_f32(f, BAD_H5 "/weight_quantizer/_amax", 1, eight,
            (float[]){ 1, 1, 1, 1, 1, 1, 1, NAN });
    put_f32(f, BAD_H5 "/weight_quantizer/_global_amax", 1, three,
            (float[]){ 1, -0.0f, -1.5f });
    put_f32(f, BAD_H5 "/k_bmm_quantizer/_amax", 1, three, (float[]){ INFINITY, 1, 1 });
    put_f32(f, BAD_H5 "/v_bmm_quantizer/_amax", 0, NULL, (float[]){ -INFINITY });
    put(f, BAD_H5 "/q_bmm_quantizer/_amax", H5T_IEEE_F64LE, 0, NULL, (double[]){ 1e300 });

    H5Gclose(H5Gcreate2(f, "/empty_group", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    H5Lcreate_soft(DOWN_H5 "/weight_quantizer/_amax", f, "/soft_link", H5P_DEFAULT,
                   H5P_DEFAULT);
    H5Tclose(str);
    H5Tclose(bf16);
    H5Tclose(f16);
    H5Fclose(f);
    return path;
}

#define FIXTURE_DATASETS 15

static int contains(const char *s, const char *part)
{
    return strstr(s, part) != NULL;
}

static nx_calib *open_fixture(void)
{
    nx_err e = { 0 };
    nx_calib *c = NULL;
    int rc = nx_calib_open(calib_file, &c, &e);
    CHECK_MSG(rc == NX_OK && c != NULL, "%s", e.msg);
    return c;
}

/* Reads n values and expects refusal with every part of `parts` in the message. */
static void expect_refused(const char *module, const char *quantizer, const char *buffer,
                           int64_t n, const char *part1, const char *part2)
{
    nx_calib *c = open_fixture();
    if (c == NULL)
        return;
    float out[32];
    nx_err e = { 0 };
    int rc = nx_calib_read(c, module, quantizer, buffer, out, n, &e);
    CHECK_MSG(rc == NX_EINPUT && e.code == NX_EINPUT, "rc %d: %s", rc, e.msg);
    CHECK_MSG(contains(e.msg, calib_file), "%s", e.msg);
    CHECK_MSG(contains(e.msg, part1), "%s", e.msg);
    CHECK_MSG(part2 == NULL || contains(e.msg, part2), "%s", e.msg);
    nx_calib_close(c);
}

static void opens_and_indexes_every_dataset(void)
{
    nx_calib *c = open_fixture();
    if (c == NULL)
        return;
    CHECK(nx_calib_size(c) == FIXTURE_DATASETS);
    CHECK(strcmp(nx_calib_path(c), calib_file) == 0);
    nx_calib_close(c);
}

static void count_is_product_of_dims(void)
{
    nx_calib *c = open_fixture();
    if (c == NULL)
        return;
    CHECK(nx_calib_count(c, Q, "input_quantizer", "_amax") == 1);    /* scalar */
    CHECK(nx_calib_count(c, K, "input_quantizer", "_amax") == 1);    /* shape [1] */
    CHECK(nx_calib_count(c, DOWN, "weight_quantizer", "_amax") == 8); /* [4, 2] */
    CHECK(nx_calib_count(c, DOWN, "input_quantizer", "_amax") == 3);
    CHECK(nx_calib_count(c, BAD, "input_quantizer", "_amax") == 1); /* counted, refused later */
    nx_calib_close(c);
}

static void count_is_minus_one_when_absent(void)
{
    nx_calib *c = open_fixture();
    if (c == NULL)
        return;
    CHECK(nx_calib_count(c, "model.layers.9.self_attn.q_proj", "input_quantizer", "_amax") == -1);
    CHECK(nx_calib_count(c, Q, "input_quantizer", "_global_amax") == -1);
    CHECK(nx_calib_count(c, "model.layers.0.self_attn", "q_proj", "input_quantizer") == -1);
    CHECK(nx_calib_count(c, "", "empty_group", "x") == -1);
    CHECK(nx_calib_count(c, "soft", "link", "x") == -1);
    nx_calib_close(c);
}

static float read_one(nx_calib *c, const char *module, const char *quantizer,
                      const char *buffer)
{
    float v = -1;
    nx_err e = { 0 };
    int rc = nx_calib_read(c, module, quantizer, buffer, &v, 1, &e);
    CHECK_MSG(rc == NX_OK, "%s.%s.%s: %s", module, quantizer, buffer, e.msg);
    return v;
}

static void reads_scalar_and_shape_one(void)
{
    nx_calib *c = open_fixture();
    if (c == NULL)
        return;
    CHECK(read_one(c, Q, "input_quantizer", "_amax") == 2.5f);
    CHECK(read_one(c, K, "input_quantizer", "_amax") == 1.25f);
    CHECK(read_one(c, "model.layers.0.self_attn", "k_bmm_quantizer", "_amax") == 0.0f);
    nx_calib_close(c);
}

static void reads_f64_rounded_to_f32(void)
{
    nx_calib *c = open_fixture();
    if (c == NULL)
        return;
    CHECK(read_one(c, Q, "weight_quantizer", "_amax") == 0.1f);
    nx_calib_close(c);
}

static void reads_f16_and_bf16(void)
{
    nx_calib *c = open_fixture();
    if (c == NULL)
        return;
    CHECK(read_one(c, DOWN, "weight_quantizer", "_global_amax") == 3.0f);
    CHECK(read_one(c, DOWN, "output_quantizer", "_amax") == 1.5f);
    float v[3] = { 0 };
    nx_err e = { 0 };
    CHECK_MSG(nx_calib_read(c, DOWN, "input_quantizer", "_amax", v, 3, &e) == NX_OK, "%s",
              e.msg);
    CHECK(v[0] == 0.0999755859375f);
    CHECK(v[1] == 65504.0f);
    CHECK(v[2] == 0x1p-24f);
    nx_calib_close(c);
}

static void reads_per_block_row_major(void)
{
    nx_calib *c = open_fixture();
    if (c == NULL)
        return;
    float v[8] = { 0 };
    nx_err e = { 0 };
    CHECK_MSG(nx_calib_read(c, DOWN, "weight_quantizer", "_amax", v, 8, &e) == NX_OK, "%s",
              e.msg);
    for (int i = 0; i < 8; i++)
        CHECK_MSG(v[i] == 0.5f * (float)(i + 1), "v[%d] = %g", i, (double)v[i]);
    nx_calib_close(c);
}

static void refuses_missing_dataset(void)
{
    expect_refused("model.layers.9.mlp.gate_proj", "input_quantizer", "_amax", 1,
                   "dataset /model/layers/9/mlp/gate_proj/input_quantizer/_amax missing", NULL);
}

static void refuses_wrong_count(void)
{
    expect_refused(DOWN, "weight_quantizer", "_amax", 20,
                   "dataset /model/layers/0/mlp/experts/3/down_proj/weight_quantizer/_amax",
                   "has 8 values, expected 20");
    expect_refused(Q, "input_quantizer", "_amax", 2,
                   "dataset /model/layers/0/self_attn/q_proj/input_quantizer/_amax",
                   "has 1 value, expected 2");
}

static void refuses_integer_and_string(void)
{
    expect_refused(BAD, "input_quantizer", "_amax", 1,
                   "dataset /model/layers/1/mlp/experts/0/up_proj/input_quantizer/_amax",
                   "integer");
    expect_refused(BAD, "output_quantizer", "_amax", 1,
                   "dataset /model/layers/1/mlp/experts/0/up_proj/output_quantizer/_amax",
                   "string");
}

static void refuses_nan(void)
{
    expect_refused(BAD, "weight_quantizer", "_amax", 8,
                   "dataset /model/layers/1/mlp/experts/0/up_proj/weight_quantizer/_amax",
                   "value 7 is NaN");
}

static void refuses_negative_but_not_negative_zero(void)
{
    expect_refused(BAD, "weight_quantizer", "_global_amax", 3,
                   "dataset /model/layers/1/mlp/experts/0/up_proj/weight_quantizer/_global_amax",
                   "value 2 is negative (-1.5)");
}

static void refuses_infinite(void)
{
    expect_refused(BAD, "k_bmm_quantizer", "_amax", 3,
                   "dataset /model/layers/1/mlp/experts/0/up_proj/k_bmm_quantizer/_amax",
                   "value 0 is infinite");
    expect_refused(BAD, "v_bmm_quantizer", "_amax", 1, "v_bmm_quantizer/_amax",
                   "value 0 is infinite");
}

static void refuses_f64_beyond_float_range(void)
{
    expect_refused(BAD, "q_bmm_quantizer", "_amax", 1, "q_bmm_quantizer/_amax",
                   "value 0 is infinite");
}

static void expect_open_refused(const char *path, int code, const char *part)
{
    nx_err e = { 0 };
    nx_calib *c = (nx_calib *)&e; /* must be reset to NULL */
    int rc = nx_calib_open(path, &c, &e);
    CHECK_MSG(rc == code && e.code == code, "rc %d: %s", rc, e.msg);
    CHECK(c == NULL);
    CHECK_MSG(contains(e.msg, path), "%s", e.msg);
    CHECK_MSG(contains(e.msg, part), "%s", e.msg);
}

static void refuses_non_hdf5_file(void)
{
    char *path = nx_path_join(tmp_dir, "not_hdf5.h5");
    nx_err e = { 0 };
    const char text[] = "this is not an HDF5 file\n";
    CHECK(nx_file_write_all(path, text, sizeof text - 1, &e) == NX_OK);
    expect_open_refused(path, NX_EINPUT, ": not a readable HDF5 file");
    free(path);
}

static void refuses_missing_file(void)
{
    char *path = nx_path_join(tmp_dir, "no_such_file.h5");
    expect_open_refused(path, NX_EINPUT, ": not a readable HDF5 file");
    free(path);
}

static void refuses_two_datasets_with_one_key(void)
{
    char *path = nx_path_join(tmp_dir, "collide.h5");
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    put_f32(f, "/a.b/c", 0, NULL, (float[]){ 1 });
    put_f32(f, "/a/b.c", 0, NULL, (float[]){ 1 });
    H5Fclose(f);
    expect_open_refused(path, NX_EINPUT, "both have key a.b.c");
    free(path);
}

static void opens_file_without_datasets(void)
{
    char *path = nx_path_join(tmp_dir, "empty.h5");
    H5Fclose(H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
    nx_err e = { 0 };
    nx_calib *c = NULL;
    CHECK_MSG(nx_calib_open(path, &c, &e) == NX_OK, "%s", e.msg);
    if (c) {
        CHECK(nx_calib_size(c) == 0);
        CHECK(nx_calib_count(c, Q, "input_quantizer", "_amax") == -1);
    }
    nx_calib_close(c);
    nx_calib_close(NULL);
    free(path);
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    const char *tmp = getenv("NX_TEST_TMP");
    tmp_dir = nx_path_join(tmp ? tmp : "/tmp", "calib");
    if (tmp_dir == NULL || mkdir_p(tmp_dir) != 0) {
        fprintf(stderr, "cannot create %s\n", tmp_dir ? tmp_dir : "scratch dir");
        return EXIT_FAILURE;
    }
    calib_file = write_fixture();

    RUN(opens_and_indexes_every_dataset);
    RUN(count_is_product_of_dims);
    RUN(count_is_minus_one_when_absent);
    RUN(reads_scalar_and_shape_one);
    RUN(reads_f64_rounded_to_f32);
    RUN(reads_f16_and_bf16);
    RUN(reads_per_block_row_major);
    RUN(refuses_missing_dataset);
    RUN(refuses_wrong_count);
    RUN(refuses_integer_and_string);
    RUN(refuses_nan);
    RUN(refuses_negative_but_not_negative_zero);
    RUN(refuses_infinite);
    RUN(refuses_f64_beyond_float_range);
    RUN(refuses_non_hdf5_file);
    RUN(refuses_missing_file);
    RUN(refuses_two_datasets_with_one_key);
    RUN(opens_file_without_datasets);

    free(calib_file);
    free(tmp_dir);
    return TEST_SUMMARY();
}
