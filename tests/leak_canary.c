/* A planted leak for the sanitizer build (tests/sanitizer_canary.sh): an MPI process like
 * nvfp4x (Open MPI's components loaded, an OpenMP thread pool started, the library's code run)
 * that loses one allocation of ours unless given --free. LeakSanitizer must report it, with
 * this file and nx_strdup on its stack, and must not report anything with --free. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nvfp4x/util.h"

/* Kept out of line so that the allocation's stack names it. */
__attribute__((noinline)) static char *planted_allocation(int rank)
{
    char text[64];
    snprintf(text, sizeof text, "nvfp4x planted leak, rank %d", rank);
    return nx_strdup(text);
}

int main(int argc, char **argv)
{
    int rank = 0, do_free = argc > 1 && strcmp(argv[1], "--free") == 0;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    double sum = 0.0;
    #pragma omp parallel for num_threads(2) reduction(+ : sum)
    for (int i = 0; i < 1000; i++)
        sum += (double)i;
    char *volatile p = planted_allocation(rank + (sum < 0.0));
    printf("leak_canary: rank %d allocated %zu bytes (%s)\n", rank, strlen(p) + 1,
           do_free ? "freed" : "lost");
    if (do_free)
        free(p);
    p = NULL;
    MPI_Barrier(MPI_COMM_WORLD);
    MPI_Finalize();
    return 0;
}
