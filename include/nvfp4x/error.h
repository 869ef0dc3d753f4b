/* Error context and the macros every fallible function uses (STYLE.md: errors travel). */
#ifndef NVFP4X_ERROR_H
#define NVFP4X_ERROR_H

/* Exit statuses (DESIGN.md "Errors"): bad input is 2, I/O or MPI failure is 1. */
enum { NX_OK = 0, NX_EIO = 1, NX_EINPUT = 2 };

typedef struct nx_err {
    int code;
    char msg[1024];
} nx_err;

/* Records the first error only (later ones are consequences), returns code. */
int nx_err_set(nx_err *e, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Like nx_err_set, appending ": strerror(errno)". */
int nx_err_errno(nx_err *e, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define NX_ERROR_IF(cond, e, code, ...)                                        \
    do {                                                                       \
        if (cond)                                                              \
            return nx_err_set((e), (code), __VA_ARGS__);                       \
    } while (0)

#define NX_TRY(expr)                                                           \
    do {                                                                       \
        int nx_try_rc_ = (expr);                                               \
        if (nx_try_rc_)                                                        \
            return nx_try_rc_;                                                 \
    } while (0)

#define NX_ALLOC_CHECK(p, e, what)                                             \
    NX_ERROR_IF((p) == NULL, e, NX_EIO, "out of memory allocating %s", what)

#endif
