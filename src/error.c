#include "nvfp4x/error.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int err_vset(nx_err *e, int code, const char *fmt, va_list ap)
{
    if (e == NULL || e->code != NX_OK)
        return code;
    e->code = code;
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    return code;
}

int nx_err_set(nx_err *e, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    err_vset(e, code, fmt, ap);
    va_end(ap);
    return code;
}

int nx_err_errno(nx_err *e, int code, const char *fmt, ...)
{
    int saved = errno;
    if (e == NULL || e->code != NX_OK)
        return code;
    va_list ap;
    va_start(ap, fmt);
    err_vset(e, code, fmt, ap);
    va_end(ap);
    size_t len = strlen(e->msg);
    snprintf(e->msg + len, sizeof e->msg - len, ": %s", strerror(saved));
    return code;
}
