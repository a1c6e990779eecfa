/* Throughput of vg_core_handle from N pthreads in one process: the serving core alone, no transport.
 *
 *   core_threads LIBRARY.so REQUEST_FILE THREADS SECONDS
 *
 * Loads the compiled model, serves it as champion, and has THREADS threads call vg_core_handle with the
 * Predict request read from REQUEST_FILE for SECONDS; prints the total number of answered calls, the wall-clock
 * seconds the threads ran and the CPU seconds the process was given meanwhile (so a caller can tell a round in
 * which the machine lent fewer than THREADS cores from one in which the core itself did not scale).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "voxguard/vg_core.h"

typedef struct worker {
    vg_core *core;
    const uint8_t *request;
    size_t length;
    double seconds;
    uint64_t calls;
    int failed;
} worker;

static double clock_s(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double now_s(void) {
    return clock_s(CLOCK_MONOTONIC);
}

static void *run(void *arg) {
    worker *w = arg;
    uint8_t out[1024];
    char err[256];
    size_t out_len;
    double end = now_s() + w->seconds;
    while (now_s() < end) {
        for (int i = 0; i < 256; ++i) {
            if (vg_core_handle(w->core, VG_CALL_PREDICT, w->request, w->length, out, sizeof out, &out_len, err,
                               sizeof err) != VG_OK) {
                fprintf(stderr, "refused: %s\n", err);
                w->failed = 1;
                return NULL;
            }
        }
        w->calls += 256;
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s LIBRARY.so REQUEST_FILE THREADS SECONDS\n", argv[0]);
        return 2;
    }
    char err[512];
    vg_model *model = vg_model_open(argv[1], err, sizeof err);
    if (model == NULL) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    FILE *f = fopen(argv[2], "rb");
    static uint8_t request[4096];
    size_t length = f ? fread(request, 1, sizeof request, f) : 0;
    if (f == NULL || length == 0) {
        fprintf(stderr, "cannot read %s\n", argv[2]);
        return 1;
    }
    fclose(f);
    int threads = atoi(argv[3]);
    double seconds = atof(argv[4]);
    vg_core *core = vg_core_new(16384, 4 << 20, 10000, VG_EXPLAIN_REQUEST, 3);
    if (core == NULL ||
        vg_core_set_model(core, VG_CHAMPION, model, NULL, "bench", 0.5f, -1, err, sizeof err) != VG_OK) {
        fprintf(stderr, "cannot configure the core: %s\n", err);
        return 1;
    }
    worker *workers = calloc((size_t)threads, sizeof(worker));
    pthread_t *ids = calloc((size_t)threads, sizeof(pthread_t));
    double wall = now_s(), cpu = clock_s(CLOCK_PROCESS_CPUTIME_ID);
    for (int i = 0; i < threads; ++i) {
        workers[i] = (worker){core, request, length, seconds, 0, 0};
        pthread_create(&ids[i], NULL, run, &workers[i]);
    }
    uint64_t total = 0;
    int failed = 0;
    for (int i = 0; i < threads; ++i) {
        pthread_join(ids[i], NULL);
        total += workers[i].calls;
        failed |= workers[i].failed;
    }
    wall = now_s() - wall;
    cpu = clock_s(CLOCK_PROCESS_CPUTIME_ID) - cpu;
    printf("%llu %.6f %.6f\n", (unsigned long long)total, wall, cpu);
    vg_core_free(core);
    vg_model_release(model);
    free(workers);
    free(ids);
    return failed;
}
