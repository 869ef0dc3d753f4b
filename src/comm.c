#include "nvfp4x/comm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int nx_agree(int rc, nx_err *e, MPI_Comm comm)
{
    int rank, size;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    int mine = rc ? rank : size, first;
    MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm);
    if (first == size)
        return NX_OK;
    struct { int code; char msg[sizeof e->msg]; } m;
    if (rank == first) {
        m.code = rc;
        memcpy(m.msg, e->msg, sizeof m.msg);
    }
    MPI_Bcast(&m, (int)sizeof m, MPI_BYTE, first, comm);
    e->code = m.code;
    if (size > 1)
        snprintf(e->msg, sizeof e->msg, "rank %d: %.1000s", first, m.msg);
    else
        memcpy(e->msg, m.msg, sizeof e->msg);
    e->msg[sizeof e->msg - 1] = '\0';
    return m.code;
}

void nx_buf_free(nx_buf *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}

void nx_buf_put(nx_buf *b, const void *p, uint64_t n)
{
    if (b->failed)
        return;
    if (b->len + n > b->cap) {
        uint64_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        uint8_t *d = realloc(b->data, cap);
        if (d == NULL) {
            b->failed = 1;
            return;
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

void nx_buf_put_u64(nx_buf *b, uint64_t v)
{
    uint8_t le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (uint8_t)(v >> (8 * i));
    nx_buf_put(b, le, 8);
}

void nx_buf_put_str(nx_buf *b, const char *s)
{
    if (s == NULL) {
        nx_buf_put_u64(b, UINT64_MAX);
        return;
    }
    uint64_t n = strlen(s);
    nx_buf_put_u64(b, n);
    nx_buf_put(b, s, n);
}

void nx_buf_get(nx_buf *b, void *p, uint64_t n)
{
    if (b->failed || b->pos + n > b->len) {
        b->failed = 1;
        memset(p, 0, n);
        return;
    }
    memcpy(p, b->data + b->pos, n);
    b->pos += n;
}

uint64_t nx_buf_get_u64(nx_buf *b)
{
    uint8_t le[8];
    nx_buf_get(b, le, 8);
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | le[i];
    return v;
}

char *nx_buf_get_str(nx_buf *b)
{
    uint64_t n = nx_buf_get_u64(b);
    if (n == UINT64_MAX || b->failed || b->pos + n > b->len) {
        b->failed |= n != UINT64_MAX;
        return NULL;
    }
    char *s = malloc(n + 1);
    if (s == NULL) {
        b->failed = 1;
        return NULL;
    }
    nx_buf_get(b, s, n);
    s[n] = '\0';
    return s;
}

int nx_buf_bcast(nx_buf *b, int root, MPI_Comm comm, nx_err *e)
{
    int rank;
    MPI_Comm_rank(comm, &rank);
    uint64_t len = b->len;
    MPI_Bcast(&len, 1, MPI_UINT64_T, root, comm);
    if (rank != root) {
        nx_buf_free(b);
        b->data = malloc(len ? len : 1);
        NX_ALLOC_CHECK(b->data, e, "the broadcast buffer");
        b->len = b->cap = len;
    }
    const uint64_t piece = 1ULL << 30;
    for (uint64_t off = 0; off < len; off += piece) {
        uint64_t n = len - off < piece ? len - off : piece;
        MPI_Bcast(b->data + off, (int)n, MPI_BYTE, root, comm);
    }
    b->pos = 0;
    return NX_OK;
}
