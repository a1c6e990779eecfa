/* The prediction log ring of the serving core: bounded, lock-free for producers, one consumer at a time. */
#include <stdlib.h>

#include "core_internal.h"

void vg_log_push(vg_core *core, log_ring *ring, const vg_log_record *record) {
    uint64_t pos = __atomic_load_n(&ring->head, __ATOMIC_RELAXED);
    for (;;) {
        log_cell *cell = &ring->cells[pos & ring->mask];
        uint64_t seq = __atomic_load_n(&cell->seq, __ATOMIC_ACQUIRE);
        int64_t lag = (int64_t)(seq - pos);
        if (lag == 0) {
            if (__atomic_compare_exchange_n(&ring->head, &pos, pos + 1, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
                cell->record = *record;
                __atomic_store_n(&cell->seq, pos + 1, __ATOMIC_RELEASE);
                return;
            }
        } else if (lag < 0) { /* full: the consumer has not freed this cell yet */
            vg_add(&core->log_dropped, 1);
            return;
        } else {
            pos = __atomic_load_n(&ring->head, __ATOMIC_RELAXED);
        }
    }
}

VG_API int vg_core_enable_log(vg_core *core, size_t capacity, char *err, size_t errcap) {
    if (capacity < 2 || capacity > ((size_t)1 << 24)) {
        return vg_fail(VG_INVALID_ARGUMENT, err, errcap, "log capacity must be in [2, 2**24], not %zu", capacity);
    }
    size_t cells = 2;
    while (cells < capacity) {
        cells <<= 1;
    }
    pthread_mutex_lock(&core->log_lock);
    if (core->log == NULL) {
        log_ring *ring = calloc(1, sizeof(log_ring) + cells * sizeof(log_cell));
        if (ring == NULL) {
            pthread_mutex_unlock(&core->log_lock);
            return vg_fail(VG_INTERNAL, err, errcap, "out of memory");
        }
        ring->mask = cells - 1;
        for (size_t i = 0; i < cells; ++i) {
            ring->cells[i].seq = i;
        }
        __atomic_store_n(&core->log, ring, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&core->log_lock);
    return VG_OK;
}

VG_API size_t vg_core_drain_log(vg_core *core, vg_log_record *out, size_t max) {
    size_t n = 0;
    pthread_mutex_lock(&core->log_lock);
    log_ring *ring = core->log;
    if (ring != NULL) {
        uint64_t pos = ring->tail;
        while (n < max) {
            log_cell *cell = &ring->cells[pos & ring->mask];
            uint64_t seq = __atomic_load_n(&cell->seq, __ATOMIC_ACQUIRE);
            if ((int64_t)(seq - (pos + 1)) < 0) {
                break; /* empty, or the next record is still being written */
            }
            out[n++] = cell->record;
            __atomic_store_n(&cell->seq, pos + ring->mask + 1, __ATOMIC_RELEASE);
            ++pos;
        }
        ring->tail = pos;
    }
    pthread_mutex_unlock(&core->log_lock);
    return n;
}

VG_API uint64_t vg_core_log_dropped(vg_core *core) {
    return vg_load(&core->log_dropped);
}
