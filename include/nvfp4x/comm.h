/* MPI glue: agreeing on success after each phase, and byte buffers for broadcasts. */
#ifndef NVFP4X_COMM_H
#define NVFP4X_COMM_H

#include <mpi.h>
#include <stdint.h>

#include "nvfp4x/error.h"

/* Every rank passes its status; all return the same: NX_OK, or the code of the lowest failing
 * rank with its message, prefixed "rank R: " when there is more than one rank. */
int nx_agree(int rc, nx_err *e, MPI_Comm comm);

/* Growable byte buffer with little-endian packing, for one-shot broadcasts. */
typedef struct nx_buf {
    uint8_t *data;
    uint64_t len, cap, pos; /* pos: read cursor */
    int failed;             /* an allocation failed or a read ran past the end */
} nx_buf;

void nx_buf_free(nx_buf *b);
void nx_buf_put(nx_buf *b, const void *p, uint64_t n);
void nx_buf_put_u64(nx_buf *b, uint64_t v);
void nx_buf_put_str(nx_buf *b, const char *s); /* NULL allowed */
void nx_buf_get(nx_buf *b, void *p, uint64_t n);
uint64_t nx_buf_get_u64(nx_buf *b);
char *nx_buf_get_str(nx_buf *b); /* malloc'd copy, NULL for a NULL string */

/* Broadcast b from root (any size; sent in pieces under 2 GiB). Receivers' b is replaced. */
int nx_buf_bcast(nx_buf *b, int root, MPI_Comm comm, nx_err *e);

#endif
