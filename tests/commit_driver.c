/* Test driver (built, not installed, not a ctest case): the last step of an export,
 * nx_staging_check_commit, on a staging directory that a test prepared, as export's rank 0 runs
 * it. Used by tests/e2e_precommit.sh and to time the check (docs/performance.md).
 *
 *   commit_driver STAGING DST [--force]
 *
 * Prints what the check found and its time; exits with the status export would have. */
#include <stdio.h>
#include <string.h>

#include "nvfp4x/staging.h"

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 4 || (argc == 4 && strcmp(argv[3], "--force") != 0)) {
        fprintf(stderr, "usage: commit_driver STAGING DST [--force]\n");
        return 2;
    }
    nx_staging_check chk;
    nx_err e = { 0 };
    int rc = nx_staging_check_commit(argv[1], argv[2], argc == 4, &chk, &e);
    printf("pre-commit check: %lld tensors, %lld quantized modules, %lld violations, %.3f s%s\n",
           (long long)chk.n_tensors, (long long)chk.n_quantized, (long long)chk.n_violations,
           chk.seconds, chk.failed ? ", not committed" : "");
    if (rc != NX_OK)
        fprintf(stderr, "commit_driver: error: %s\n", e.msg);
    return rc;
}
