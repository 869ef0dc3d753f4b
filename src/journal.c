/* The journal of finished work items, and the fingerprint that ties a staging directory to
 * its inputs and options. */
#include "nvfp4x/journal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nvfp4x/version.h"

static int record(nx_journal *j, const char *key, const uint32_t *crc, int n, nx_err *e)
{
    int64_t at = nx_strmap_get(&j->done, key);
    if (at < 0) {
        if (j->n == j->cap) {
            int64_t cap = j->cap ? j->cap * 2 : 1024;
            void *grown = realloc(j->crcs, (size_t)cap * sizeof *j->crcs);
            NX_ALLOC_CHECK(grown, e, "the journal");
            j->crcs = grown;
            j->cap = cap;
        }
        at = j->n++;
        NX_ERROR_IF(nx_strmap_put(&j->done, key, at) < 0, e, NX_EIO, "out of memory");
    }
    memset(j->crcs[at], 0, sizeof j->crcs[at]);
    memcpy(j->crcs[at], crc, (size_t)n * sizeof *crc);
    return NX_OK;
}

/* One line: "<crc>[,<crc>...] <key>\n". Malformed or torn lines are skipped. */
static void parse_line(nx_journal *j, char *line, nx_err *e)
{
    char *space = strchr(line, ' ');
    if (space == NULL || space[1] == '\0')
        return;
    *space = '\0';
    uint32_t crc[NX_JOURNAL_MAX_OUTS];
    int n = 0;
    for (char *tok = strtok(line, ","); tok && n < NX_JOURNAL_MAX_OUTS; tok = strtok(NULL, ",")) {
        char *end;
        unsigned long v = strtoul(tok, &end, 16);
        if (*end != '\0')
            return;
        crc[n++] = (uint32_t)v;
    }
    if (n > 0)
        record(j, space + 1, crc, n, e);
}

static int load_file(nx_journal *j, const char *path, nx_err *e)
{
    char *text = NULL;
    size_t len = 0;
    NX_TRY(nx_file_read_all(path, &text, &len, e));
    char *line = text;
    for (char *nl; (nl = memchr(line, '\n', len - (size_t)(line - text))) != NULL; line = nl + 1) {
        *nl = '\0';
        parse_line(j, line, e);
    }
    free(text);
    return e->code;
}

static int load_all(nx_journal *j, const char *dir, nx_err *e)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return nx_err_errno(e, NX_EIO, "%s: cannot list", dir);
    int rc = NX_OK;
    struct dirent *ent;
    while (rc == NX_OK && (ent = readdir(d)) != NULL) {
        if (strncmp(ent->d_name, "journal.", 8) != 0)
            continue;
        char *path = nx_path_join(dir, ent->d_name);
        rc = path ? load_file(j, path, e) : nx_err_set(e, NX_EIO, "out of memory");
        free(path);
    }
    closedir(d);
    return rc;
}

int nx_journal_open(nx_journal *j, const char *staging, int rank, int load, nx_err *e)
{
    memset(j, 0, sizeof *j);
    j->fd = -1;
    NX_ERROR_IF(nx_strmap_init(&j->done, 1024) != 0, e, NX_EIO, "out of memory");
    char *dir = nx_path_join(staging, NX_JOURNAL_DIR);
    NX_ALLOC_CHECK(dir, e, "a path");
    int rc = mkdir(dir, 0755) == 0 || errno == EEXIST
                 ? NX_OK : nx_err_errno(e, NX_EIO, "%s: cannot create", dir);
    if (rc == NX_OK && load)
        rc = load_all(j, dir, e);
    j->path = rc ? NULL : nx_asprintf("%s/journal.%d", dir, rank);
    free(dir);
    NX_TRY(rc);
    NX_ALLOC_CHECK(j->path, e, "a path");
    j->fd = open(j->path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (j->fd < 0)
        return nx_err_errno(e, NX_EIO, "%s: cannot open", j->path);
    return NX_OK;
}

const uint32_t *nx_journal_lookup(const nx_journal *j, const char *key)
{
    int64_t at = nx_strmap_get(&j->done, key);
    return at < 0 ? NULL : j->crcs[at];
}

int nx_journal_append(nx_journal *j, const char *key, const uint32_t *crc, int n, nx_err *e)
{
    char line[1200];
    int len = 0;
    for (int i = 0; i < n; i++)
        len += snprintf(line + len, sizeof line - (size_t)len, "%s%08x", i ? "," : "", crc[i]);
    len += snprintf(line + len, sizeof line - (size_t)len, " %s\n", key);
    NX_ERROR_IF(len >= (int)sizeof line, e, NX_EIO, "internal: journal key too long: %s", key);
    /* One write per record, O_APPEND: a crash leaves at most one torn line, which load skips. */
    ssize_t put = write(j->fd, line, (size_t)len);
    if (put != len)
        return nx_err_errno(e, NX_EIO, "%s: cannot append", j->path);
    return NX_OK;
}

int nx_journal_close(nx_journal *j, int rc, nx_err *e)
{
    if (j->fd >= 0) {
        if (rc == NX_OK && fsync(j->fd) != 0)
            rc = nx_err_errno(e, NX_EIO, "%s: fsync failed", j->path);
        close(j->fd);
    }
    nx_strmap_free(&j->done);
    free(j->crcs);
    free(j->path);
    memset(j, 0, sizeof *j);
    j->fd = -1;
    return rc;
}

static uint32_t crc_str(uint32_t crc, const char *s)
{
    return nx_crc32c(crc, s, strlen(s) + 1);
}

static uint32_t crc_file_stat(uint32_t crc, const char *path)
{
    struct stat st;
    char buf[96];
    if (stat(path, &st) != 0)
        return crc_str(crc, "missing");
    snprintf(buf, sizeof buf, "%lld %lld.%09ld", (long long)st.st_size,
             (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
    return crc_str(crc, buf);
}

char *nx_plan_fingerprint(const nx_catalog *c, const nx_plan *p, const char *opts,
                          const char *calib)
{
    uint32_t src = 0, layout = 0;
    for (int32_t f = 0; f < c->n_files; f++) {
        char *path = nx_path_join(c->dir, c->files[f]);
        src = crc_file_stat(crc_str(src, c->files[f]), path ? path : "");
        free(path);
    }
    src = calib ? crc_file_stat(src, calib) : crc_str(src, "no calibration");
    src = crc_str(src, c->config_text);
    for (int32_t s = 0; s < p->n_shards; s++)
        layout = nx_crc32c(crc_str(layout, p->shard_names[s]), p->shard_headers[s],
                           p->header_bytes[s]);
    return nx_asprintf("nvfp4x %s\noptions %s\nsource %08x\nlayout %08x %d shards\n", NX_VERSION,
                       opts, src, layout, p->n_shards);
}
