/* Configuration snapshots of the serving core: creation, model slots, challenger cut, counter blocks.
 *
 * A snapshot is immutable; writers copy the current one, change the copy and publish it under core->lock, wait
 * for the requests still reading the previous one (see struct vg_core), then release it.
 */
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "core_internal.h"

VG_API const double vg_latency_bounds_s[VG_LATENCY_BUCKETS] = {
    1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2,
};

void vg_config_release(config *cfg) {
    if (__atomic_sub_fetch(&cfg->refcount, 1, __ATOMIC_ACQ_REL) == 0) {
        for (int s = 0; s < 2; ++s) {
            vg_model_release(cfg->slot[s].model);
            vg_forest_free(cfg->slot[s].explainer);
        }
        vg_drift_release(cfg->drift);
        free(cfg);
    }
}

/* Copy of the current snapshot with its own model references; called with the lock held. */
config *vg_config_copy_locked(vg_core *core) {
    config *next = malloc(sizeof(config));
    if (next == NULL) {
        return NULL;
    }
    *next = *core->cfg;
    next->refcount = 1;
    for (int s = 0; s < 2; ++s) {
        if (next->slot[s].model != NULL) {
            vg_model_retain(next->slot[s].model);
        }
        if (next->slot[s].explainer != NULL) {
            vg_forest_retain(next->slot[s].explainer);
        }
    }
    if (next->drift != NULL) {
        __atomic_add_fetch(&next->drift->refcount, 1, __ATOMIC_RELAXED);
    }
    return next;
}

/* Readers of epoch parity `parity`, summed over the shards. */
static uint64_t readers_of(vg_core *core, int parity) {
    uint64_t n = 0;
    for (int s = 0; s < VG_SHARDS; ++s) {
        n += __atomic_load_n(&core->shards[s].readers[parity], __ATOMIC_SEQ_CST);
    }
    return n;
}

config *vg_config_publish_locked(vg_core *core, config *next) {
    config *previous = core->cfg;
    __atomic_store_n(&core->cfg, next, __ATOMIC_SEQ_CST);
    int parity = (int)(core->epoch & 1);
    __atomic_store_n(&core->epoch, core->epoch + 1, __ATOMIC_SEQ_CST);
    /* A request lasts microseconds (a large batch milliseconds): yield rather than sleep. */
    while (readers_of(core, parity) != 0) {
        sched_yield();
    }
    return previous;
}

/* The counter block of `model_id`; a new id takes a free block, or resets the oldest block that no slot uses
 * (a request still running on an older snapshot may then count once under the new id). Lock held. */
static int counters_for_locked(vg_core *core, const char *model_id) {
    for (int i = 0; i < core->num_models; ++i) {
        if (strcmp(core->models[i].model_id, model_id) == 0) {
            return i;
        }
    }
    int index = core->num_models;
    if (index < VG_MAX_MODELS) {
        core->num_models++;
    } else {
        index = -1;
        for (int i = 0; i < VG_MAX_MODELS; ++i) {
            int in_use = (core->cfg->slot[0].model != NULL && core->cfg->slot[0].block == i) ||
                         (core->cfg->slot[1].model != NULL && core->cfg->slot[1].block == i);
            if (!in_use && (index < 0 || core->created[i] < core->created[index])) {
                index = i;
            }
        }
    }
    model_block *block = &core->models[index];
    core->created[index] = ++core->blocks_created;
    for (int s = 0; s < VG_SHARDS; ++s) {
        model_shard *c = &block->shard[s];
        __atomic_store_n(&c->requests, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&c->fraud, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&c->latency_ns_sum, 0, __ATOMIC_RELAXED);
        for (int b = 0; b <= VG_LATENCY_BUCKETS; ++b) {
            __atomic_store_n(&c->latency_buckets[b], 0, __ATOMIC_RELAXED);
        }
        for (int b = 0; b < VG_SCORE_BUCKETS; ++b) {
            __atomic_store_n(&c->score_buckets[b], 0, __ATOMIC_RELAXED);
        }
        __atomic_store_n(&c->shadow_requests, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&c->shadow_fraud, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&c->shadow_agreements, 0, __ATOMIC_RELAXED);
    }
    snprintf(block->model_id, sizeof block->model_id, "%s", model_id);
    return index;
}

VG_API vg_core *vg_core_new(size_t max_request_bytes, size_t max_batch_bytes, size_t max_batch_rows, int explain_policy,
                            uint32_t explain_top_k) {
    if (explain_policy < VG_EXPLAIN_OFF || explain_policy > VG_EXPLAIN_ALWAYS || explain_top_k < 1 ||
        explain_top_k > VG_MAX_REASONS) {
        return NULL;
    }
    void *memory = NULL;
    config *cfg = calloc(1, sizeof(config));
    if (cfg == NULL || posix_memalign(&memory, VG_CACHE_LINE, sizeof(vg_core)) != 0) {
        free(cfg);
        return NULL;
    }
    vg_core *core = memset(memory, 0, sizeof(vg_core));
    pthread_mutex_init(&core->lock, NULL);
    pthread_mutex_init(&core->log_lock, NULL);
    cfg->refcount = 1;
    cfg->model_name_len = sizeof VG_DEFAULT_MODEL_NAME - 1;
    memcpy(cfg->model_name, VG_DEFAULT_MODEL_NAME, sizeof VG_DEFAULT_MODEL_NAME);
    core->cfg = cfg;
    core->max_request_bytes = max_request_bytes;
    core->max_batch_bytes = max_batch_bytes;
    core->max_batch_rows = max_batch_rows;
    core->explain_policy = explain_policy;
    core->explain_top_k = explain_top_k;
    for (int i = 0; i < VG_LATENCY_BUCKETS; ++i) {
        core->latency_bounds_ns[i] = (uint64_t)(vg_latency_bounds_s[i] * 1e9 + 0.5);
    }
    return core;
}

VG_API void vg_core_free(vg_core *core) {
    if (core != NULL) {
        vg_config_release(core->cfg);
        pthread_mutex_destroy(&core->lock);
        pthread_mutex_destroy(&core->log_lock);
        free(core->log);
        free(core);
    }
}

VG_API int vg_core_set_model(vg_core *core, int slot, vg_model *model, vg_forest *explainer, const char *model_id,
                             float threshold, int64_t cut, char *err, size_t errcap) {
    if (cut > ((int64_t)1 << 32)) {
        return vg_fail(VG_INVALID_ARGUMENT, err, errcap, "challenger cut must be in [0, 2**32]");
    }
    if (slot != VG_CHAMPION && slot != VG_CHALLENGER) {
        return vg_fail(VG_INVALID_ARGUMENT, err, errcap, "slot must be 0 (champion) or 1 (challenger), not %d", slot);
    }
    size_t id_len = model_id == NULL ? 0 : strlen(model_id);
    if (model != NULL && (id_len == 0 || id_len >= VG_MODEL_ID_MAX)) {
        return vg_fail(VG_INVALID_ARGUMENT, err, errcap, "model id must have 1 to %d bytes", VG_MODEL_ID_MAX - 1);
    }
    if (model != NULL && !(threshold >= 0.0f && threshold <= 1.0f)) {
        return vg_fail(VG_INVALID_ARGUMENT, err, errcap, "threshold must be in [0, 1]");
    }
    if (model != NULL && (model->num_feature < 1 || model->num_feature > VG_MAX_FEATURES)) {
        return vg_fail(VG_INVALID_ARGUMENT, err, errcap, "model has %d features; at most %d are served",
                       (int)model->num_feature, VG_MAX_FEATURES);
    }
    if (model != NULL && explainer != NULL && vg_forest_num_features(explainer) != model->num_feature) {
        return vg_fail(VG_INVALID_ARGUMENT, err, errcap, "explainer has %d features, the model %d",
                       (int)vg_forest_num_features(explainer), (int)model->num_feature);
    }
    pthread_mutex_lock(&core->lock);
    config *next = vg_config_copy_locked(core);
    if (next == NULL) {
        pthread_mutex_unlock(&core->lock);
        return vg_fail(VG_INTERNAL, err, errcap, "out of memory");
    }
    slot_config *target = &next->slot[slot];
    vg_model_release(target->model);
    vg_forest_free(target->explainer);
    memset(target, 0, sizeof *target);
    if (model != NULL) {
        vg_model_retain(model);
        target->model = model;
        if (explainer != NULL) {
            vg_forest_retain(explainer);
            target->explainer = explainer;
        }
        target->threshold = threshold;
        target->id_len = id_len;
        memcpy(target->id, model_id, id_len + 1);
        target->block = counters_for_locked(core, model_id);
    }
    if (cut >= 0) {
        next->cut = (uint64_t)cut;
    }
    config *previous = vg_config_publish_locked(core, next);
    pthread_mutex_unlock(&core->lock);
    vg_config_release(previous);
    return VG_OK;
}

VG_API int vg_core_set_cut(vg_core *core, uint64_t cut, char *err, size_t errcap) {
    if (cut > ((uint64_t)1 << 32)) {
        return vg_fail(VG_INVALID_ARGUMENT, err, errcap, "challenger cut must be in [0, 2**32]");
    }
    pthread_mutex_lock(&core->lock);
    config *next = vg_config_copy_locked(core);
    if (next == NULL) {
        pthread_mutex_unlock(&core->lock);
        return vg_fail(VG_INTERNAL, err, errcap, "out of memory");
    }
    next->cut = cut;
    config *previous = vg_config_publish_locked(core, next);
    pthread_mutex_unlock(&core->lock);
    vg_config_release(previous);
    return VG_OK;
}

VG_API int vg_core_set_shadow(vg_core *core, int shadow, uint64_t sample_cut, char *err, size_t errcap) {
    if (sample_cut > ((uint64_t)1 << 32)) {
        return vg_fail(VG_INVALID_ARGUMENT, err, errcap, "shadow sample cut must be in [0, 2**32]");
    }
    pthread_mutex_lock(&core->lock);
    config *next = vg_config_copy_locked(core);
    if (next == NULL) {
        pthread_mutex_unlock(&core->lock);
        return vg_fail(VG_INTERNAL, err, errcap, "out of memory");
    }
    next->shadow = shadow != 0;
    next->shadow_cut = sample_cut;
    config *previous = vg_config_publish_locked(core, next);
    pthread_mutex_unlock(&core->lock);
    vg_config_release(previous);
    return VG_OK;
}

VG_API int vg_core_set_model_name(vg_core *core, const char *name, char *err, size_t errcap) {
    size_t len = strlen(name);
    if (len == 0 || len >= VG_MODEL_ID_MAX) {
        return vg_fail(VG_INVALID_ARGUMENT, err, errcap, "the model name must have 1 to %d bytes", VG_MODEL_ID_MAX - 1);
    }
    pthread_mutex_lock(&core->lock);
    config *next = vg_config_copy_locked(core);
    if (next == NULL) {
        pthread_mutex_unlock(&core->lock);
        return vg_fail(VG_INTERNAL, err, errcap, "out of memory");
    }
    memcpy(next->model_name, name, len + 1);
    next->model_name_len = len;
    config *previous = vg_config_publish_locked(core, next);
    pthread_mutex_unlock(&core->lock);
    vg_config_release(previous);
    return VG_OK;
}

VG_API void vg_core_read_stats(vg_core *core, vg_core_stats *stats) {
    memset(stats, 0, sizeof *stats);
    for (int s = 0; s < VG_SHARDS; ++s) {
        const core_shard *shard = &core->shards[s];
        for (int slot = 0; slot < 2; ++slot) {
            stats->slot_requests[slot] += vg_load(&shard->slot_requests[slot]);
        }
        for (int i = 0; i < VG_STATUS_MAX; ++i) {
            stats->errors[i] += vg_load(&shard->errors[i]);
        }
    }
    pthread_mutex_lock(&core->lock);
    stats->num_models = core->num_models;
    for (int i = 0; i < core->num_models; ++i) {
        const model_block *block = &core->models[i];
        vg_model_counters *o = &stats->models[i];
        memcpy(o->model_id, block->model_id, sizeof o->model_id);
        for (int s = 0; s < VG_SHARDS; ++s) {
            const model_shard *c = &block->shard[s];
            o->requests += vg_load(&c->requests);
            o->fraud += vg_load(&c->fraud);
            o->latency_ns_sum += vg_load(&c->latency_ns_sum);
            for (int b = 0; b <= VG_LATENCY_BUCKETS; ++b) {
                o->latency_buckets[b] += vg_load(&c->latency_buckets[b]);
            }
            for (int b = 0; b < VG_SCORE_BUCKETS; ++b) {
                o->score_buckets[b] += vg_load(&c->score_buckets[b]);
            }
            o->shadow_requests += vg_load(&c->shadow_requests);
            o->shadow_fraud += vg_load(&c->shadow_fraud);
            o->shadow_agreements += vg_load(&c->shadow_agreements);
        }
    }
    pthread_mutex_unlock(&core->lock);
}

VG_API void vg_core_count_refusal(vg_core *core, int status) {
    if (status > VG_OK && status < VG_STATUS_MAX) {
        vg_add(&core->shards[vg_shard()].errors[status], 1);
    }
}
