/* The GPU's reciprocal (MSE.md 3a, Appendix B): MUFU.RCP(s) = RN(1/s) + delta[mantissa(s)]
 * ulp, delta in {-1, 0, +1}, measured on an H200 (sm_90) for all 2^23 mantissas. The table is
 * project data (data/rcp_delta_sm90.i8.gz: gzip of the int8 array, compiled into the binary by
 * cmake/embed.cmake) and is decoded once, on first use, into 2 bits per mantissa (2 MiB). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "nvfp4x/sweep.h"
#include "nvfp4x/util.h"

#define MANTISSAS (1u << 23)
#define CHUNK (1u << 16)
/* CRC-32C of the 2^23 int8 values; SHA-256 862bea10...e8fe as MSE.md gives it (the test
 * tests/py_sweep_table.py checks that one). */
#define TABLE_CRC32C 0xF3C48B27u

extern const unsigned char nx_rcp_delta_gz[];
extern const unsigned long nx_rcp_delta_gz_len;

static uint8_t *g_packed; /* delta + 1, four mantissas per byte, low bits first */
static int g_status = NX_EIO;
static char g_msg[256] = "internal: the MUFU.RCP table was not loaded";
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

/* Packs n decoded values starting at mantissa at; 0 if one is not -1, 0 or +1. */
static int pack(const int8_t *v, uint32_t at, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        uint32_t code = (uint32_t)(v[i] + 1);
        if (code > 2)
            return 0;
        g_packed[(at + i) >> 2] |= (uint8_t)(code << (2 * ((at + i) & 3)));
    }
    return 1;
}

static const char *inflate_all(z_stream *zs, uint32_t *crc)
{
    static int8_t out[CHUNK];
    uint32_t done = 0;
    int zrc = Z_OK;
    while (zrc == Z_OK) {
        zs->next_out = (Bytef *)out;
        zs->avail_out = CHUNK;
        zrc = inflate(zs, Z_NO_FLUSH);
        if (zrc != Z_OK && zrc != Z_STREAM_END)
            return "the compressed data is damaged";
        uint32_t n = CHUNK - zs->avail_out;
        if (n > MANTISSAS - done)
            return "it holds more than 2^23 values";
        if (!pack(out, done, n))
            return "a value is not -1, 0 or +1";
        *crc = nx_crc32c(*crc, out, n);
        done += n;
    }
    return done == MANTISSAS ? NULL : "it holds fewer than 2^23 values";
}

static void load(void)
{
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    g_packed = calloc(MANTISSAS / 4, 1);
    if (g_packed == NULL || inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) {
        snprintf(g_msg, sizeof g_msg, "out of memory decoding the MUFU.RCP table");
        return;
    }
    zs.next_in = (Bytef *)nx_rcp_delta_gz;
    zs.avail_in = (uInt)nx_rcp_delta_gz_len;
    uint32_t crc = 0;
    const char *why = inflate_all(&zs, &crc);
    inflateEnd(&zs);
    if (why == NULL && crc != TABLE_CRC32C)
        why = "its CRC-32C differs";
    if (why) {
        snprintf(g_msg, sizeof g_msg, "internal: the MUFU.RCP table compiled into this binary "
                 "is not the measured one (data/rcp_delta_sm90.i8.gz): %s", why);
        return;
    }
    g_status = NX_OK;
}

int nx_rcp_table_load(nx_err *e)
{
    pthread_once(&g_once, load);
    NX_ERROR_IF(g_status != NX_OK, e, g_status, "%s", g_msg);
    return NX_OK;
}

int nx_rcp_delta(uint32_t mantissa)
{
    mantissa &= MANTISSAS - 1;
    return (int)((g_packed[mantissa >> 2] >> (2 * (mantissa & 3))) & 3) - 1;
}

float nx_sweep_rcp(float s, nx_numerics m)
{
    float rn = 1.0f / s;
    if (m == NX_NUMERICS_CPU)
        return rn;
    return nx_f32_from_bits(nx_f32_bits(rn) + (uint32_t)nx_rcp_delta(nx_f32_bits(s)));
}
