/* Staging directory life cycle: open (fresh or resumed), check with verify's structural rules,
 * commit by one rename. */
#include "nvfp4x/staging.h"

#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "nvfp4x/journal.h"
#include "nvfp4x/util.h"
#include "nvfp4x/verify.h"

#define PLAN_ID NX_JOURNAL_DIR "/plan.id"

static int unlink_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

int nx_remove_tree(const char *path)
{
    return nftw(path, unlink_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Does the staging directory belong to an export with this fingerprint? */
static int same_fingerprint(const char *staging, const char *fingerprint, int *same, nx_err *e)
{
    char *path = nx_path_join(staging, PLAN_ID), *text = NULL;
    NX_ALLOC_CHECK(path, e, "a path");
    nx_err ignored = { 0 };
    *same = nx_file_read_all(path, &text, NULL, &ignored) == NX_OK &&
            strcmp(text, fingerprint) == 0;
    free(text);
    free(path);
    return NX_OK;
}

static int create_fresh(const char *path, const char *fingerprint, nx_err *e)
{
    if (mkdir(path, 0755) != 0)
        return nx_err_errno(e, NX_EIO, "%s: cannot create", path);
    char *jdir = nx_path_join(path, NX_JOURNAL_DIR), *id = nx_path_join(path, PLAN_ID);
    int rc = jdir && id ? NX_OK : nx_err_set(e, NX_EIO, "out of memory");
    if (rc == NX_OK && mkdir(jdir, 0755) != 0)
        rc = nx_err_errno(e, NX_EIO, "%s: cannot create", jdir);
    if (rc == NX_OK)
        rc = nx_file_write_all(id, fingerprint, strlen(fingerprint), e);
    free(jdir);
    free(id);
    return rc;
}

/* An existing staging directory: resume it, discard it, or refuse. */
static int reuse_or_discard(const char *path, const nx_staging_opts *o, int *resumed, nx_err *e)
{
    int same = 0;
    if (o->resume)
        NX_TRY(same_fingerprint(path, o->fingerprint, &same, e));
    if (same) {
        *resumed = 1;
        return NX_OK;
    }
    NX_ERROR_IF(o->resume && !o->force, e, NX_EINPUT, "%s: made by a different export (inputs or "
                "options changed since); use --force to start over", path);
    NX_ERROR_IF(!o->force, e, NX_EINPUT, "%s: staging directory of an interrupted export exists; "
                "use --resume to continue it or --force to discard it", path);
    if (nx_remove_tree(path) != 0)
        return nx_err_errno(e, NX_EIO, "%s: cannot remove", path);
    return create_fresh(path, o->fingerprint, e);
}

int nx_staging_open(const char *dst, const nx_staging_opts *o, char **staging, int *resumed,
                    nx_err *e)
{
    *staging = NULL;
    *resumed = 0;
    char *path = nx_asprintf("%s.nvfp4x-staging", dst);
    NX_ALLOC_CHECK(path, e, "a path");
    struct stat st;
    int rc = NX_OK;
    if (!o->force && stat(dst, &st) == 0)
        rc = nx_err_set(e, NX_EINPUT, "%s: output already exists (use --force to replace it)",
                        dst);
    else if (stat(path, &st) == 0)
        rc = reuse_or_discard(path, o, resumed, e);
    else
        rc = create_fresh(path, o->fingerprint, e);
    if (rc == NX_OK)
        *staging = path; /* only now is it ours to remove on failure */
    else
        free(path);
    return rc;
}

static int fsync_path(const char *path, nx_err *e)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return nx_err_errno(e, NX_EIO, "%s: cannot open to fsync", path);
    int rc = fsync(fd) == 0 ? NX_OK : nx_err_errno(e, NX_EIO, "%s: fsync failed", path);
    close(fd);
    return rc;
}

/* The parent directory of path (for fsync after rename), malloc'd. */
static char *parent_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (slash == NULL)
        return nx_strdup(".");
    if (slash == path)
        return nx_strdup("/");
    return nx_asprintf("%.*s", (int)(slash - path), path);
}

int nx_staging_commit(const char *staging, const char *dst, int force, nx_err *e)
{
    char *journal = nx_path_join(staging, NX_JOURNAL_DIR);
    NX_ALLOC_CHECK(journal, e, "a path");
    int removed = nx_remove_tree(journal);
    free(journal);
    NX_ERROR_IF(removed != 0, e, NX_EIO, "%s/%s: cannot remove", staging, NX_JOURNAL_DIR);
    NX_TRY(fsync_path(staging, e));
    char *old = NULL;
    struct stat st;
    if (force && stat(dst, &st) == 0) {
        old = nx_asprintf("%s.nvfp4x-old", dst);
        NX_ALLOC_CHECK(old, e, "a path");
        if (rename(dst, old) != 0) {
            free(old);
            return nx_err_errno(e, NX_EIO, "%s: cannot move the old output aside", dst);
        }
    }
    int rc = rename(staging, dst) == 0
                 ? NX_OK : nx_err_errno(e, NX_EIO, "%s: cannot rename to %s", staging, dst);
    if (old) {
        if (rc == NX_OK)
            nx_remove_tree(old);
        else
            rename(old, dst);
        free(old);
    }
    char *parent = parent_of(dst);
    if (rc == NX_OK && parent)
        rc = fsync_path(parent, e);
    free(parent);
    return rc;
}

static double monotonic_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The rules of the lines after the first, each once, in order of appearance: " M1 T5 ". */
static void later_rules(const char *lines, char *buf, size_t len)
{
    snprintf(buf, len, " ");
    for (const char *p = strchr(lines, '\n'); p && p[1]; p = strchr(p + 1, '\n')) {
        char id[16];
        size_t n = strcspn(p + 1, " \n"), used = strlen(buf);
        if (n == 0 || n + 3 > sizeof id)
            continue;
        snprintf(id, sizeof id, " %.*s ", (int)n, p + 1);
        if (strstr(buf, id) == NULL && used + n + 1 < len)
            snprintf(buf + used, len - used, "%s", id + 1);
    }
}

/* The error for violations: the first line verify wrote ("RULE name: message"), then how many
 * more and their rules. A rerun would write the same bytes, so --resume is not the advice. */
static int violations_error(const char *staging, const char *lines, int64_t n, nx_err *e)
{
    char rules[128], more[192] = "";
    if (lines == NULL)
        lines = "violations (out of memory recording them)";
    later_rules(lines, rules, sizeof rules);
    if (n > 1)
        snprintf(more, sizeof more, " (and %lld more:%.*s; nvfp4x verify lists them)",
                 (long long)(n - 1), (int)strlen(rules) - 1, rules);
    int first = (int)strcspn(lines, "\n");
    return nx_err_set(e, NX_EIO, "pre-commit check of %s: %.*s%s; nothing was published, the "
                      "staging directory is kept for inspection", staging,
                      first < 600 ? first : 600, lines, more);
}

static int staging_check(const char *staging, nx_staging_check *chk, nx_err *e)
{
    char *lines = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&lines, &len);
    NX_ALLOC_CHECK(out, e, "the check's output");
    nx_verify_opts vo = { .dir = staging, .structural = 1 };
    nx_verify_result r;
    nx_err ve = { 0 };
    double t0 = monotonic_s();
    int rc = nx_verify_run(&vo, &r, out, &ve);
    int closed = fclose(out);
    chk->seconds = monotonic_s() - t0;
    chk->n_tensors = r.n_tensors;
    chk->n_quantized = r.n_quantized;
    chk->n_violations = r.n_violations;
    chk->failed = rc != NX_OK || r.n_violations > 0;
    if (rc != NX_OK)
        rc = nx_err_set(e, NX_EIO, "pre-commit check of %s: cannot read it as a checkpoint: "
                        "%s; nothing was published, the staging directory is kept for "
                        "inspection", staging, ve.msg);
    else if (r.n_violations > 0)
        rc = violations_error(staging, closed == 0 ? lines : NULL, r.n_violations, e);
    free(lines);
    return rc;
}

int nx_staging_check_commit(const char *staging, const char *dst, int force,
                            nx_staging_check *chk, nx_err *e)
{
    memset(chk, 0, sizeof *chk);
    NX_TRY(staging_check(staging, chk, e));
    return nx_staging_commit(staging, dst, force, e);
}
