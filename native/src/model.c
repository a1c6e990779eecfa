/* Loading and reference counting of compiled models (see vg_model.h). */
#include "voxguard/vg_model.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int32_t (*int_fn)(void);
typedef void (*num_class_fn)(int32_t *out);
typedef const char *(*str_fn)(void);

static void *resolve(void *handle, const char *name, const char *path, char *err, size_t errlen) {
    dlerror();
    void *sym = dlsym(handle, name);
    if (sym == NULL) {
        snprintf(err, errlen, "%s: symbol %s not found; is this a TL2cgen-compiled model?", path, name);
    }
    return sym;
}

/* dlopen `file` (a path or /proc/self/fd/N); messages and m->path name `path`. */
static vg_model *open_library(const char *file, const char *path, int fd, char *err, size_t errlen) {
    if (strlen(path) >= sizeof(((vg_model *)0)->path)) {
        snprintf(err, errlen, "model path too long (%zu bytes)", strlen(path));
        return NULL;
    }
    void *handle = dlopen(file, RTLD_NOW | RTLD_LOCAL);
    if (handle == NULL) {
        snprintf(err, errlen, "cannot load %s: %s", path, dlerror());
        return NULL;
    }
    int_fn num_feature = (int_fn)resolve(handle, "get_num_feature", path, err, errlen);
    int_fn num_target = num_feature ? (int_fn)resolve(handle, "get_num_target", path, err, errlen) : NULL;
    num_class_fn num_class = num_target ? (num_class_fn)resolve(handle, "get_num_class", path, err, errlen) : NULL;
    str_fn threshold_type = num_class ? (str_fn)resolve(handle, "get_threshold_type", path, err, errlen) : NULL;
    str_fn leaf_type = threshold_type ? (str_fn)resolve(handle, "get_leaf_output_type", path, err, errlen) : NULL;
    vg_predict_fn predict = leaf_type ? (vg_predict_fn)resolve(handle, "predict", path, err, errlen) : NULL;
    if (predict == NULL) {
        dlclose(handle);
        return NULL;
    }
    int32_t classes[1] = {0};
    if (num_target() != 1) {
        snprintf(err, errlen, "%s: %d targets; only single-target binary classifiers are served", path,
                 (int)num_target());
        dlclose(handle);
        return NULL;
    }
    num_class(classes);
    if (classes[0] != 1) {
        snprintf(err, errlen, "%s: %d classes; only binary classifiers (one probability) are served", path,
                 (int)classes[0]);
        dlclose(handle);
        return NULL;
    }
    if (strcmp(threshold_type(), "float32") != 0 || strcmp(leaf_type(), "float32") != 0) {
        snprintf(err, errlen, "%s: threshold type %s, leaf type %s; expected float32 for both", path, threshold_type(),
                 leaf_type());
        dlclose(handle);
        return NULL;
    }
    if (num_feature() <= 0) {
        snprintf(err, errlen, "%s: get_num_feature() returned %d; expected at least one feature", path,
                 (int)num_feature());
        dlclose(handle);
        return NULL;
    }
    vg_model *m = calloc(1, sizeof(vg_model));
    if (m == NULL) {
        snprintf(err, errlen, "out of memory");
        dlclose(handle);
        return NULL;
    }
    m->handle = handle;
    m->predict = predict;
    m->num_feature = num_feature();
    m->refcount = 1;
    m->fd = fd;
    strcpy(m->path, path);
    return m;
}

vg_model *vg_model_open(const char *path, char *err, size_t errlen) {
    return open_library(path, path, -1, err, errlen);
}

vg_model *vg_model_open_fd(int fd, const char *path, char *err, size_t errlen) {
    char file[64];
    snprintf(file, sizeof file, "/proc/self/fd/%d", fd);
    vg_model *m = open_library(file, path, fd, err, errlen);
    if (m == NULL) {
        close(fd);
    }
    return m;
}

void vg_model_retain(vg_model *m) {
    __atomic_add_fetch(&m->refcount, 1, __ATOMIC_RELAXED);
}

void vg_model_release(vg_model *m) {
    if (m != NULL && __atomic_sub_fetch(&m->refcount, 1, __ATOMIC_ACQ_REL) == 0) {
        dlclose(m->handle);
        if (m->fd >= 0) {
            close(m->fd);
        }
        free(m);
    }
}

typedef struct batch_chunk {
    const vg_model *model;
    const float *rows;
    size_t n;
    float *out;
    int rc;
} batch_chunk;

static void *score_chunk(void *arg) {
    batch_chunk *c = arg;
    vg_entry *scratch = malloc((size_t)c->model->num_feature * sizeof(vg_entry));
    if (scratch == NULL) {
        c->rc = ENOMEM;
        return NULL;
    }
    const size_t stride = (size_t)c->model->num_feature;
    for (size_t i = 0; i < c->n; ++i) {
        c->out[i] = vg_model_score(c->model, c->rows + i * stride, scratch);
    }
    free(scratch);
    c->rc = 0;
    return NULL;
}

#define VG_MAX_THREADS 256

int vg_model_score_batch(const vg_model *m, const float *rows, size_t n, float *out, int nthreads) {
    if (nthreads < 1) {
        nthreads = 1;
    }
    if (nthreads > VG_MAX_THREADS) {
        nthreads = VG_MAX_THREADS;
    }
    if ((size_t)nthreads > n) {
        nthreads = n > 0 ? (int)n : 1;
    }
    batch_chunk chunks[VG_MAX_THREADS];
    pthread_t threads[VG_MAX_THREADS];
    int started[VG_MAX_THREADS] = {0};
    const size_t stride = (size_t)m->num_feature;
    const size_t base = n / (size_t)nthreads, extra = n % (size_t)nthreads;
    size_t first = 0;
    for (int t = 0; t < nthreads; ++t) {
        size_t count = base + ((size_t)t < extra ? 1 : 0);
        chunks[t] = (batch_chunk){m, rows + first * stride, count, out + first, 0};
        first += count;
    }
    /* A thread that cannot be started is scored by the calling thread instead: slower, never wrong. */
    for (int t = 1; t < nthreads; ++t) {
        started[t] = pthread_create(&threads[t], NULL, score_chunk, &chunks[t]) == 0;
    }
    score_chunk(&chunks[0]);
    int rc = chunks[0].rc;
    for (int t = 1; t < nthreads; ++t) {
        if (started[t]) {
            pthread_join(threads[t], NULL);
        } else {
            score_chunk(&chunks[t]);
        }
        if (chunks[t].rc != 0) {
            rc = chunks[t].rc;
        }
    }
    return rc;
}
