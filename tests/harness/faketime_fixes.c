/* The timed waits libfaketime 0.9.10 gets wrong once only the wall clock is shifted (`make test-date`,
 * tests/harness/clock_shift.py: FAKETIME_DONT_FAKE_MONOTONIC=1). Preloaded before libfaketime.
 *
 * - C11 cnd_timedwait: not intercepted at all. librdkafka (confluent-kafka) waits with it on a deadline
 *   read from the shifted wall clock, which glibc then waited for on the real one: a year.
 *   list_topics(timeout=2) never returned.
 * - pthread_cond_timedwait on a CLOCK_MONOTONIC condition (CPython's GIL hand-off): libfaketime moved
 *   the deadline anyway; two threads sharing the GIL ran 40x slower.
 * - clock_nanosleep on CLOCK_MONOTONIC with an absolute deadline (CPython's time.sleep): moved by the
 *   offset to before the epoch, EINVAL; every time.sleep raised OSError.
 *
 * So every timed condition wait becomes "the time left on the clock the caller read" waited on
 * CLOCK_MONOTONIC, which a date change leaves alone, with glibc's own functions; sleeps on any clock but
 * the wall clock go to glibc as they are. In glibc a cnd_t is a pthread_cond_t, an mtx_t a
 * pthread_mutex_t, and bit 1 of a condition's __wrefs is its clock (1: CLOCK_MONOTONIC).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <threads.h>
#include <time.h>
#include <unistd.h>

typedef int (*clockwait_fn)(pthread_cond_t *, pthread_mutex_t *, clockid_t, const struct timespec *);
typedef int (*sleep_fn)(clockid_t, int, const struct timespec *, struct timespec *);

static void *glibc(const char *name) {
    void *libc = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD);
    return libc ? dlsym(libc, name) : NULL;
}

/* Waits until `deadline` on `clock` (CLOCK_REALTIME: the shifted one) as a monotonic deadline. */
static int wait_monotonic(pthread_cond_t *cond, pthread_mutex_t *mutex, clockid_t clock,
                          const struct timespec *deadline) {
    static clockwait_fn clockwait;
    if (!clockwait) clockwait = (clockwait_fn)glibc("pthread_cond_clockwait");
    if (clock == CLOCK_MONOTONIC) return clockwait(cond, mutex, CLOCK_MONOTONIC, deadline);
    struct timespec now, wake;
    clock_gettime(clock, &now);  /* libfaketime's answer: the clock the deadline was read from */
    clock_gettime(CLOCK_MONOTONIC, &wake);
    long long left_ns = (long long)(deadline->tv_sec - now.tv_sec) * 1000000000LL
                        + (deadline->tv_nsec - now.tv_nsec);
    if (left_ns < 0) left_ns = 0;
    long long wake_ns = wake.tv_nsec + left_ns % 1000000000LL;
    wake.tv_sec += left_ns / 1000000000LL + wake_ns / 1000000000LL;
    wake.tv_nsec = wake_ns % 1000000000LL;
    return clockwait(cond, mutex, CLOCK_MONOTONIC, &wake);
}

/* glibc's own initialisation (2.36: zeroed, then the clock and process-shared bits), without
 * libfaketime's: its pthread_cond_init starts libfaketime, whose symbol lookups allocate; called from
 * jemalloc's start-up (Redis) that deadlocked on jemalloc's own lock. libfaketime keeps it only to know
 * which conditions wait on the monotonic clock, which pthread_cond_timedwait below reads from the
 * condition itself. */
int pthread_cond_init(pthread_cond_t *restrict cond, const pthread_condattr_t *restrict attr) {
    static const pthread_cond_t fresh = PTHREAD_COND_INITIALIZER;
    *cond = fresh;
    if (attr != NULL) {
        clockid_t clock;
        int shared;
        if (pthread_condattr_getclock(attr, &clock) == 0 && clock == CLOCK_MONOTONIC) cond->__data.__wrefs |= 2;
        if (pthread_condattr_getpshared(attr, &shared) == 0 && shared == PTHREAD_PROCESS_SHARED)
            cond->__data.__wrefs |= 1;
    }
    return 0;
}

int pthread_cond_timedwait(pthread_cond_t *restrict cond, pthread_mutex_t *restrict mutex,
                           const struct timespec *restrict deadline) {
    clockid_t clock = (cond->__data.__wrefs >> 1) & 1 ? CLOCK_MONOTONIC : CLOCK_REALTIME;
    return wait_monotonic(cond, mutex, clock, deadline);
}

int cnd_timedwait(cnd_t *restrict cond, mtx_t *restrict mutex, const struct timespec *restrict deadline) {
    int err = wait_monotonic((pthread_cond_t *)cond, (pthread_mutex_t *)mutex, CLOCK_REALTIME, deadline);
    return err == 0 ? thrd_success : err == ETIMEDOUT ? thrd_timedout : thrd_error;
}

/* Only the wall clock is libfaketime's; every other clock is the kernel's, by a plain system call (no
 * symbol lookup, which could allocate). Keeps libfaketime out of allocator start-up: jemalloc (Redis)
 * reads the monotonic clock while libfaketime is still loading, and libfaketime gave up on the
 * recursion, so redis-server did not start. */
int clock_gettime(clockid_t clock, struct timespec *now) {
    static int (*shifted)(clockid_t, struct timespec *);
    if (clock != CLOCK_REALTIME && clock != CLOCK_REALTIME_COARSE)
        return (int)syscall(SYS_clock_gettime, clock, now);
    if (!shifted) shifted = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    return shifted(clock, now);
}

int clock_nanosleep(clockid_t clock, int flags, const struct timespec *request, struct timespec *remain) {
    static sleep_fn shifted, plain;
    if (!shifted) {
        shifted = (sleep_fn)dlsym(RTLD_NEXT, "clock_nanosleep");
        plain = (sleep_fn)glibc("clock_nanosleep");
    }
    return (clock == CLOCK_REALTIME ? shifted : plain)(clock, flags, request, remain);
}
