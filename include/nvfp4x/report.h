/* Quantization report (--report FILE.h5, export and verify): per quantized tensor error
 * statistics, scale usage and the fallbacks used, written to HDF5 (docs/report.md). */
#ifndef NVFP4X_REPORT_H
#define NVFP4X_REPORT_H

#include <mpi.h>
#include <stdint.h>

#include "nvfp4x/error.h"

typedef struct nx_qstats {
    int64_t elems;
    double sum_sq_err;       /* sum (w - w_hat)^2 */
    double sum_sq_ref;       /* sum w^2 */
    double max_abs_err;      /* NaN once any error is NaN */
    int64_t blocks;
    int64_t saturated_blocks; /* block scale byte 0x7E (448) */
    int64_t zero_blocks;      /* every weight of the block is zero */
    int64_t hist[16];         /* count of each 4-bit code */
} nx_qstats;

/* Accumulates rows x cols weights w (float32, cols % 16 == 0) against their codes
 * (rows*cols/2 bytes, element 2j in the low nibble), block scales (rows*cols/16 E4M3 bytes)
 * and weight_scale_2. w_hat = e2m1_value(code) * float(S) * ws2 in float32, left to right
 * (NUMERICS.md "Dequantization"); errors are accumulated in double. */
void nx_qstats_add(nx_qstats *s, const float *w, int64_t rows, int64_t cols,
                   const uint8_t *codes, const uint8_t *scales, float ws2);

/* Adds b into a: partial statistics of one tensor (threads, row ranges). */
void nx_qstats_merge(nx_qstats *a, const nx_qstats *b);

/* sqrt(sum_sq_err / sum_sq_ref); 0 when both are 0, +inf when only the reference is 0. */
double nx_qstats_rel_rms(const nx_qstats *s);

/* 10 log10(sum_sq_ref / sum_sq_err); +inf when the error is 0. */
double nx_qstats_snr_db(const nx_qstats *s);

/* --weight-calib mse: what the sweep bought, against max-calibrated (dynamic) block scales
 * with the same weight_scale_2. */
typedef struct nx_sweep_stats {
    double sum_sq_err_max;     /* sum err^2 of the dynamic scales (nx_qstats' definition) */
    double scale_ratio_sum;    /* over blocks with a non-zero weight: chosen amax / max |w| */
    int64_t scale_ratio_blocks;
} nx_sweep_stats;

typedef struct nx_report_entry {
    const char *module;      /* quantized module name, e.g. model.layers.0.self_attn.q_proj */
    nx_qstats st;
    uint8_t w_from_weight;   /* fallback: weight amax computed from the weight */
    uint8_t in_from_layer;   /* fallback: expert input amax from the layer max */
    uint8_t w_static;        /* static per-block amax from calibration */
    uint8_t w_swept;         /* static per-block amax from the MSE sweep (sw is filled) */
    nx_sweep_stats sw;
} nx_report_entry;

/* Collective over comm: every rank passes the entries it computed (any split, each module on
 * one rank only; entries are written in natural name order of the union, docs/report.md).
 * Writes path (replacing it) through path + ".tmp", renamed into place by rank 0. With
 * parallel HDF5 every rank writes its own rows collectively; with serial HDF5 rank 0 gathers
 * and writes. Returns the same status on every rank; errors name the path. */
int nx_report_write(const char *path, const nx_report_entry *entries, int64_t n,
                    MPI_Comm comm, nx_err *e);

#endif
