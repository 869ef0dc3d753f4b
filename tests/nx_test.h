/* Minimal unit-test harness: named cases, CHECK that reports and continues, a closing
 * "N passed, N failed" line that ctest logs show. */
#ifndef NX_TEST_H
#define NX_TEST_H

#include <stdio.h>
#include <stdlib.h>

static int nx_test_failed_checks;
static int nx_test_passed, nx_test_failed;

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__,   \
                    #cond);                                                    \
            nx_test_failed_checks++;                                           \
        }                                                                      \
    } while (0)

#define CHECK_MSG(cond, ...)                                                   \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__,   \
                    #cond);                                                    \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
            nx_test_failed_checks++;                                           \
        }                                                                      \
    } while (0)

#define RUN(fn)                                                                \
    do {                                                                       \
        int before_ = nx_test_failed_checks;                                   \
        fn();                                                                  \
        if (nx_test_failed_checks == before_) {                                \
            nx_test_passed++;                                                  \
            printf("ok   %s\n", #fn);                                          \
        } else {                                                               \
            nx_test_failed++;                                                  \
            printf("FAIL %s\n", #fn);                                          \
        }                                                                      \
    } while (0)

#define TEST_SUMMARY()                                                         \
    (printf("%d passed, %d failed\n", nx_test_passed, nx_test_failed),         \
     nx_test_failed ? EXIT_FAILURE : EXIT_SUCCESS)

#endif
