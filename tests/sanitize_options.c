/* Run-time defaults of AddressSanitizer and LeakSanitizer for every executable of the sanitizer
 * build (-DNX_SANITIZE=ON): nvfp4x itself and the tests. Compiled into those builds only; the
 * environment (ASAN_OPTIONS, LSAN_OPTIONS) still overrides them. */

const char *__asan_default_options(void);
const char *__lsan_default_options(void);
const char *__lsan_default_suppressions(void);

/* Full stacks at every allocation, so that a leak names the code that made it and the
 * suppressions below can tell Open MPI's allocations apart from ours. */
const char *__asan_default_options(void)
{
    return "detect_leaks=1:fast_unwind_on_malloc=0";
}

/* use_tls=0: the leak checker does not scan thread-local storage for pointers. On some
 * machines a component that Open MPI dlopen()s leaves a dynamic-TLS range that is not mapped
 * (LSAN_OPTIONS=verbosity=1 shows "DTLS ... at 0x3b82-0x400004c84"), and the checker's tracer
 * faults walking it at exit ("Tracer caught signal 11", "LeakSanitizer has encountered a fatal
 * error"), failing every test that runs an MPI process. Leaks are still found: skipping TLS
 * removes roots, so it can only report more, never fewer (tests/sanitizer_canary.sh plants
 * one of ours and checks that it is caught). */
const char *__lsan_default_options(void)
{
    return "use_tls=0:print_suppressions=0";
}

/* Open MPI, PMIx, hwloc and libevent keep allocations for the life of the process; an
 * allocation is suppressed only when one of these libraries is on its stack. So does libgomp:
 * its thread pool is referenced from thread-local storage alone, which use_tls=0 leaves
 * unscanned (every export reported its 192 bytes without this entry). The entry also hides
 * what OpenMP worker threads allocate; nvfp4x allocates nothing inside its parallel regions
 * (the quantization kernels write into the caller's buffers). */
const char *__lsan_default_suppressions(void)
{
    return "leak:libmpi.so\n"
           "leak:libopen-pal.so\n"
           "leak:libopen-rte.so\n"
           "leak:libpmix.so\n"
           "leak:libhwloc.so\n"
           "leak:libevent\n"
           "leak:mca_\n"
           "leak:libucp\n"
           "leak:libucs\n"
           "leak:libfabric\n"
           "leak:libgomp.so\n";
}
