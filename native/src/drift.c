/* Live drift bins of the serving core: edges set from Python, counts read at scrape time (see vg_core.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core_internal.h"

void vg_drift_release(drift *d) {
    if (d != NULL && __atomic_sub_fetch(&d->refcount, 1, __ATOMIC_ACQ_REL) == 0) {
        free(d);
    }
}

VG_API int vg_core_set_drift(vg_core *core, int num_features, const int *num_edges, const float *edges,
                             int num_score_edges, const float *score_edges, char *err, size_t errcap) {
    if (num_features < 0 || num_features > VG_DRIFT_MAX_FEATURES) {
        return vg_fail(VG_INVALID_ARGUMENT, err, errcap, "drift tracks 0 to %d features, not %d", VG_DRIFT_MAX_FEATURES,
                       num_features);
    }
    drift *d = NULL;
    if (num_features > 0) {
        if (num_score_edges < 0 || num_score_edges > VG_DRIFT_MAX_EDGES) {
            return vg_fail(VG_INVALID_ARGUMENT, err, errcap, "the score has %d edges; at most %d", num_score_edges,
                           VG_DRIFT_MAX_EDGES);
        }
        for (int i = 0; i < num_features; ++i) {
            if (num_edges[i] < 0 || num_edges[i] > VG_DRIFT_MAX_EDGES) {
                return vg_fail(VG_INVALID_ARGUMENT, err, errcap, "feature %d has %d edges; at most %d", i, num_edges[i],
                               VG_DRIFT_MAX_EDGES);
            }
        }
        if ((d = calloc(1, sizeof *d)) == NULL) {
            return vg_fail(VG_INTERNAL, err, errcap, "out of memory");
        }
        d->refcount = 1;
        d->num_features = num_features;
        d->num_score_edges = num_score_edges;
        for (int i = 0; i < num_features; ++i) {
            d->num_edges[i] = num_edges[i];
            for (int j = 0; j < EDGE_SLOTS; ++j) {
                d->edges[i][j] = j < num_edges[i] ? edges[(size_t)i * VG_DRIFT_MAX_EDGES + j] : INFINITY;
            }
        }
        for (int j = 0; j < EDGE_SLOTS; ++j) {
            d->score_edges[j] = j < num_score_edges ? score_edges[j] : INFINITY;
        }
    }
    pthread_mutex_lock(&core->lock);
    config *next = vg_config_copy_locked(core);
    if (next == NULL) {
        pthread_mutex_unlock(&core->lock);
        vg_drift_release(d);
        return vg_fail(VG_INTERNAL, err, errcap, "out of memory");
    }
    vg_drift_release(next->drift);
    next->drift = d;
    ++core->drift_generations;
    if (d != NULL) {
        d->generation = core->drift_generations;
    }
    config *previous = vg_config_publish_locked(core, next);
    pthread_mutex_unlock(&core->lock);
    vg_config_release(previous);
    return VG_OK;
}

VG_API void vg_core_read_drift(vg_core *core, vg_drift_counts *counts) {
    memset(counts, 0, sizeof *counts);
    vg_reader reader;
    const drift *d = vg_reader_enter(core, &reader)->drift;
    if (d != NULL) {
        counts->generation = d->generation;
        counts->num_features = d->num_features;
        counts->score_bins = d->num_score_edges + 2;
        counts->rows = vg_load(&d->rows);
        for (int i = 0; i < d->num_features; ++i) {
            int values = d->num_edges[i] + 1;
            counts->feature_bins[i] = values + 1;
            for (int b = 0; b < values; ++b) {
                counts->features[i][b] = vg_load(&d->counts[i][b]);
            }
            counts->features[i][values] = vg_load(&d->counts[i][MISSING_BIN]);
        }
        for (int b = 0; b < d->num_score_edges + 1; ++b) {
            counts->score[b] = vg_load(&d->score[b]);
        }
        counts->score[d->num_score_edges + 1] = vg_load(&d->score[MISSING_BIN]);
    }
    vg_reader_leave(&reader);
}
