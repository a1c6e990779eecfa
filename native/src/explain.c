/* Exact path-dependent TreeSHAP over packed trees (see voxguard/vg_explain.h for the format).
 *
 * The recursion is Algorithm 2 of Lundberg, Erion & Lee, "Consistent Individualized Feature Attribution for Tree
 * Ensembles" (2018): one pass down each tree keeps, for the unique features on the path, the fraction of the
 * training cover that follows the row ("one") and that follows the split regardless of it ("zero"), with the
 * permutation weights of every subset size; at a leaf each feature on the path gets its Shapley share.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "voxguard/vg_explain.h"

#define MAGIC "VGTREES1"
#define NODE_BYTES 40
#define PATH_SLOTS (VG_FOREST_MAX_DEPTH + 2)
/* A tree is tabulated when its tables hold at most this many values, the forest at most TABLE_BUDGET. */
#define TREE_TABLE_LIMIT (1 << 16)
#define TABLE_BUDGET (1 << 23)
/* ... and has at most this many nodes: explaining a row notes each leaf's table row on the stack first. */
#define TREE_NODE_LIMIT 4096
/* Most unique features on a tabulated leaf's path (TREE_TABLE_LIMIT allows no more: 2^13 x 13 > 2^16). */
#define TABLE_MAX_K 12
/* A tree splitting on at most this many features gets dense table rows: one column per feature of the tree. */
#define DENSE_MAX_COLUMNS 16
#define LANES 4

typedef float lanes __attribute__((vector_size(LANES * sizeof(float))));

typedef struct node {
    int32_t left, right, feature;
    int32_t default_left;
    float threshold;
    double value, cover;
} node;

/* A leaf's precomputed answers (see tabulate): for each pattern of which of its path's k unique features the
 * row follows, the contribution of each of those features. */
typedef struct leaf_table {
    int32_t leaf;              /* node index */
    int32_t k;                 /* unique features on the path */
    int32_t first_step, steps; /* its path's splits in the tree's step array (while tabulating) */
    int32_t features[TABLE_MAX_K];
    /* (1 << k) rows, computed in double, stored in float (it halves what a row reads): a row of k values in the
     * order of `features` (sparse), or of the tree's `columns` values, zero where the path does not split (dense) */
    float *contributions;
} leaf_table;

/* One split on a leaf's path: the node, the side the path takes, and which unique feature it belongs to. */
typedef struct step {
    int32_t node;
    int32_t goes_left;
    int32_t element;
} step;

/* One node of a tabulated tree in preorder (a split's left child is the next visit): how the pattern of the path
 * changes through it. The side the row takes sets the bit of a feature new on the path and keeps an old one's; the
 * other side leaves a new one's bit clear and clears an old one's. */
typedef struct visit {
    int32_t feature; /* -1: a leaf */
    float threshold;
    uint32_t set_bit;    /* the feature's bit when it is new on the path, else 0 */
    uint32_t clear_mask; /* all ones when it is new, else all but its bit */
    uint32_t default_left;
} visit;

typedef struct tree {
    const node *nodes;
    int32_t num_nodes;
    double expected;    /* mean leaf value weighted by cover: the tree's answer when nothing is known */
    leaf_table *leaves; /* NULL: too large to tabulate, explained by the recursion */
    int32_t num_leaves;
    step *steps;
    visit *visits;   /* num_nodes, in preorder; its leaves come in the order of `leaves` */
    int32_t columns; /* dense rows: a multiple of LANES; 0: sparse rows */
    int32_t column_feature[DENSE_MAX_COLUMNS];
} tree;

typedef struct path_element {
    int32_t feature;
    double zero_fraction, one_fraction, weight;
} path_element;

/* The path weights' rational factors, by path depth d and position i: no division in the inner loops. */
typedef struct factors {
    double up[PATH_SLOTS][PATH_SLOTS];   /* (d + 1) / (i + 1) */
    double down[PATH_SLOTS][PATH_SLOTS]; /* (d - i) / (d + 1) */
    double rise[PATH_SLOTS][PATH_SLOTS]; /* (i + 1) / (d + 1) */
} factors;

struct vg_forest {
    int32_t num_features, num_trees, max_depth;
    double base_margin, bias;
    tree *trees;
    node *nodes;
    factors f;
    size_t tabulated; /* values held in tables, against TABLE_BUDGET */
    int refcount;     /* atomic via __atomic builtins */
    char (*names)[VG_FEATURE_NAME_MAX];
    size_t *name_len;
};

static void tabulate(vg_forest *forest, tree *t);
static void extend(const factors *f, path_element *path, int32_t depth, double zero_fraction, double one_fraction,
                   int32_t feature);
static double unwound_sum(const factors *f, const path_element *path, int32_t depth, int32_t index);

static uint32_t read_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t read_u64(const unsigned char *p) {
    return (uint64_t)read_u32(p) | (uint64_t)read_u32(p + 4) << 32;
}

static double read_f64(const unsigned char *p) {
    uint64_t bits = read_u64(p);
    double value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

static float read_f32(const unsigned char *p) {
    uint32_t bits = read_u32(p);
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

static vg_forest *fail(vg_forest *forest, char *err, size_t errlen, const char *message, long tree, long at) {
    if (err != NULL && errlen > 0) {
        if (tree >= 0) {
            snprintf(err, errlen, "packed trees: tree %ld, node %ld: %s", tree, at, message);
        } else {
            snprintf(err, errlen, "packed trees: %s", message);
        }
    }
    vg_forest_free(forest);
    return NULL;
}

/* Depth of the subtree at `index` and the cover-weighted mean of its leaves; -1 when deeper than the limit. */
static int32_t walk(const node *nodes, int32_t index, int32_t depth, double *mean) {
    const node *n = &nodes[index];
    if (n->left < 0) {
        *mean = n->value;
        return depth;
    }
    if (depth >= VG_FOREST_MAX_DEPTH) {
        return -1;
    }
    double left_mean, right_mean;
    int32_t left = walk(nodes, n->left, depth + 1, &left_mean);
    int32_t right = walk(nodes, n->right, depth + 1, &right_mean);
    if (left < 0 || right < 0) {
        return -1;
    }
    const double left_cover = nodes[n->left].cover, right_cover = nodes[n->right].cover;
    *mean = (left_mean * left_cover + right_mean * right_cover) / n->cover;
    return left > right ? left : right;
}

VG_API vg_forest *vg_forest_load(const void *data, size_t size, char *err, size_t errlen) {
    const unsigned char *p = data;
    if (size < 32 || memcmp(p, MAGIC, 8) != 0) {
        return fail(NULL, err, errlen, "not a VGTREES1 file (wrong magic or shorter than its header)", -1, 0);
    }
    vg_forest *forest = calloc(1, sizeof *forest);
    if (forest == NULL) {
        return fail(NULL, err, errlen, "out of memory", -1, 0);
    }
    forest->num_features = (int32_t)read_u32(p + 8);
    forest->num_trees = (int32_t)read_u32(p + 12);
    forest->base_margin = read_f64(p + 24);
    if (forest->num_features <= 0 || forest->num_trees <= 0 || forest->num_trees > (1 << 24)) {
        return fail(forest, err, errlen, "the header holds no features or no trees", -1, 0);
    }
    size_t counts_bytes = ((size_t)forest->num_trees * 4 + 7) / 8 * 8;
    if (size < 32 + counts_bytes) {
        return fail(forest, err, errlen, "truncated in the node counts", -1, 0);
    }
    size_t total = 0;
    for (int32_t t = 0; t < forest->num_trees; ++t) {
        uint32_t count = read_u32(p + 32 + 4 * (size_t)t);
        if (count == 0 || count > (1u << 24)) {
            return fail(forest, err, errlen, "a tree has no nodes or too many", t, 0);
        }
        total += count;
    }
    if (size != 32 + counts_bytes + total * NODE_BYTES) {
        return fail(forest, err, errlen, "its size does not match the node counts", -1, 0);
    }
    for (int d = 0; d < PATH_SLOTS; ++d) {
        for (int i = 0; i < PATH_SLOTS; ++i) {
            forest->f.up[d][i] = (d + 1) / (double)(i + 1);
            forest->f.down[d][i] = (d - i) / (double)(d + 1);
            forest->f.rise[d][i] = (i + 1) / (double)(d + 1);
        }
    }
    forest->trees = calloc((size_t)forest->num_trees, sizeof *forest->trees);
    forest->nodes = calloc(total, sizeof *forest->nodes);
    if (forest->trees == NULL || forest->nodes == NULL) {
        return fail(forest, err, errlen, "out of memory", -1, 0);
    }
    const unsigned char *at = p + 32 + counts_bytes;
    node *next = forest->nodes;
    forest->bias = forest->base_margin;
    for (int32_t t = 0; t < forest->num_trees; ++t) {
        const int32_t count = (int32_t)read_u32(p + 32 + 4 * (size_t)t);
        for (int32_t i = 0; i < count; ++i, at += NODE_BYTES) {
            node *n = &next[i];
            n->left = (int32_t)read_u32(at);
            n->right = (int32_t)read_u32(at + 4);
            n->feature = (int32_t)read_u32(at + 8);
            n->default_left = read_u32(at + 12) != 0;
            n->threshold = read_f32(at + 16);
            n->value = read_f64(at + 24);
            n->cover = read_f64(at + 32);
            const int leaf = n->left < 0;
            if (leaf != (n->right < 0) || leaf != (n->feature < 0)) {
                return fail(forest, err, errlen, "a node is half leaf, half split", t, i);
            }
            if (!leaf && (n->left <= i || n->right <= i || n->left >= count || n->right >= count)) {
                return fail(forest, err, errlen, "a child index is out of range or not after its parent", t, i);
            }
            if (!leaf && n->feature >= forest->num_features) {
                return fail(forest, err, errlen, "a split feature is out of range", t, i);
            }
            if (!(n->cover > 0) || !isfinite(n->cover) || !isfinite(n->value) || isnan(n->threshold)) {
                return fail(forest, err, errlen, "a cover is not positive, or a value is not finite", t, i);
            }
        }
        double expected;
        int32_t depth = walk(next, 0, 0, &expected);
        if (depth < 0) {
            return fail(forest, err, errlen, "the tree is deeper than the explainer's limit (32)", t, 0);
        }
        forest->trees[t].nodes = next;
        forest->trees[t].num_nodes = count;
        forest->trees[t].expected = expected;
        forest->bias += expected;
        if (depth > forest->max_depth) {
            forest->max_depth = depth;
        }
        next += count;
    }
    forest->names = calloc((size_t)forest->num_features, sizeof *forest->names);
    forest->name_len = calloc((size_t)forest->num_features, sizeof *forest->name_len);
    if (forest->names == NULL || forest->name_len == NULL) {
        return fail(forest, err, errlen, "out of memory", -1, 0);
    }
    for (int32_t i = 0; i < forest->num_features; ++i) {
        forest->name_len[i] = (size_t)snprintf(forest->names[i], VG_FEATURE_NAME_MAX, "f%d", (int)i);
    }
    for (int32_t t = 0; t < forest->num_trees; ++t) {
        tabulate(forest, &forest->trees[t]);
    }
    forest->refcount = 1;
    return forest;
}

VG_API void vg_forest_retain(vg_forest *forest) {
    __atomic_add_fetch(&forest->refcount, 1, __ATOMIC_RELAXED);
}

VG_API int vg_forest_set_feature_names(vg_forest *forest, const char *const *names, int32_t n, char *err,
                                       size_t errlen) {
    if (n != forest->num_features) {
        snprintf(err, errlen, "%d feature names for trees over %d features", (int)n, (int)forest->num_features);
        return -1;
    }
    for (int32_t i = 0; i < n; ++i) {
        size_t len = names[i] == NULL ? 0 : strlen(names[i]);
        if (len == 0 || len >= VG_FEATURE_NAME_MAX) {
            snprintf(err, errlen, "feature name %d must have 1 to %d bytes", (int)i, VG_FEATURE_NAME_MAX - 1);
            return -1;
        }
    }
    for (int32_t i = 0; i < n; ++i) {
        forest->name_len[i] = strlen(names[i]);
        memcpy(forest->names[i], names[i], forest->name_len[i] + 1);
    }
    return 0;
}

static void free_tables(tree *t) {
    for (int32_t i = 0; t->leaves != NULL && i < t->num_leaves; ++i) {
        free(t->leaves[i].contributions);
    }
    free(t->leaves);
    free(t->steps);
    free(t->visits);
    t->leaves = NULL;
    t->steps = NULL;
    t->visits = NULL;
    t->columns = 0;
}

VG_API void vg_forest_free(vg_forest *forest) {
    if (forest != NULL && (forest->refcount == 0 || __atomic_sub_fetch(&forest->refcount, 1, __ATOMIC_ACQ_REL) == 0)) {
        free(forest->names);
        free(forest->name_len);
        for (int32_t t = 0; forest->trees != NULL && t < forest->num_trees; ++t) {
            free_tables(&forest->trees[t]);
        }
        free(forest->trees);
        free(forest->nodes);
        free(forest);
    }
}

VG_API int32_t vg_forest_num_features(const vg_forest *forest) {
    return forest->num_features;
}

VG_API int32_t vg_forest_num_trees(const vg_forest *forest) {
    return forest->num_trees;
}

VG_API double vg_forest_bias(const vg_forest *forest) {
    return forest->bias;
}

/* The child a row goes to: the default one when its value is missing, else left when x < threshold. */
static int32_t next_node(const node *n, const float *row) {
    const float x = row[n->feature];
    if (isnan(x)) {
        return n->default_left ? n->left : n->right;
    }
    return x < n->threshold ? n->left : n->right;
}

VG_API double vg_forest_margin(const vg_forest *forest, const float *row) {
    double margin = forest->base_margin;
    for (int32_t t = 0; t < forest->num_trees; ++t) {
        const node *nodes = forest->trees[t].nodes;
        int32_t i = 0;
        while (nodes[i].left >= 0) {
            i = next_node(&nodes[i], row);
        }
        margin += nodes[i].value;
    }
    return margin;
}

/* Add a feature to the path with its zero and one fractions, updating the permutation weights. */
static void extend(const factors *f, path_element *path, int32_t depth, double zero_fraction, double one_fraction,
                   int32_t feature) {
    path[depth].feature = feature;
    path[depth].zero_fraction = zero_fraction;
    path[depth].one_fraction = one_fraction;
    path[depth].weight = depth == 0 ? 1.0 : 0.0;
    for (int32_t i = depth - 1; i >= 0; --i) {
        path[i + 1].weight += one_fraction * path[i].weight * f->rise[depth][i];
        path[i].weight = zero_fraction * path[i].weight * f->down[depth][i];
    }
}

/* Undo the extension of path element `index` (a feature split on again further down). */
static void unwind(const factors *f, path_element *path, int32_t depth, int32_t index) {
    const double one_fraction = path[index].one_fraction, zero_fraction = path[index].zero_fraction;
    double next_one = path[depth].weight;
    if (one_fraction != 0) {
        const double inverse_one = 1.0 / one_fraction;
        for (int32_t i = depth - 1; i >= 0; --i) {
            const double kept = path[i].weight;
            path[i].weight = next_one * f->up[depth][i] * inverse_one;
            next_one = kept - path[i].weight * zero_fraction * f->down[depth][i];
        }
    } else {
        const double inverse_zero = 1.0 / zero_fraction;
        for (int32_t i = depth - 1; i >= 0; --i) {
            path[i].weight = path[i].weight * inverse_zero / f->down[depth][i];
        }
    }
    for (int32_t i = index; i < depth; ++i) {
        path[i].feature = path[i + 1].feature;
        path[i].zero_fraction = path[i + 1].zero_fraction;
        path[i].one_fraction = path[i + 1].one_fraction;
    }
}

/* The total permutation weight the path would have without element `index`. */
static double unwound_sum(const factors *f, const path_element *path, int32_t depth, int32_t index) {
    const double one_fraction = path[index].one_fraction, zero_fraction = path[index].zero_fraction;
    double next_one = path[depth].weight, total = 0;
    if (one_fraction != 0) {
        const double inverse_one = 1.0 / one_fraction;
        for (int32_t i = depth - 1; i >= 0; --i) {
            const double share = next_one * f->up[depth][i] * inverse_one;
            total += share;
            next_one = path[i].weight - share * zero_fraction * f->down[depth][i];
        }
    } else if (zero_fraction != 0) {
        const double inverse_zero = 1.0 / zero_fraction;
        for (int32_t i = depth - 1; i >= 0; --i) {
            total += path[i].weight * inverse_zero / f->down[depth][i];
        }
    }
    return total;
}

static void recurse(const factors *f, const node *nodes, const float *row, double *phi, int32_t index, int32_t depth,
                    path_element *parent_path, double zero_fraction, double one_fraction, int32_t feature) {
    path_element *path = parent_path + depth + 1;
    memcpy(path, parent_path, (size_t)(depth + 1) * sizeof *path);
    extend(f, path, depth, zero_fraction, one_fraction, feature);
    const node *n = &nodes[index];
    if (n->left < 0) {
        for (int32_t i = 1; i <= depth; ++i) {
            const double weight = unwound_sum(f, path, depth, i);
            phi[path[i].feature] += weight * (path[i].one_fraction - path[i].zero_fraction) * n->value;
        }
        return;
    }
    const int32_t hot = next_node(n, row);
    const int32_t cold = hot == n->left ? n->right : n->left;
    double incoming_zero = 1, incoming_one = 1;
    int32_t seen = 0;
    while (seen <= depth && path[seen].feature != n->feature) {
        ++seen;
    }
    if (seen <= depth) { /* split on this feature before: undo that split and redo it here */
        incoming_zero = path[seen].zero_fraction;
        incoming_one = path[seen].one_fraction;
        unwind(f, path, depth, seen);
        depth -= 1;
    }
    recurse(f, nodes, row, phi, hot, depth + 1, path, nodes[hot].cover / n->cover * incoming_zero, incoming_one,
            n->feature);
    recurse(f, nodes, row, phi, cold, depth + 1, path, nodes[cold].cover / n->cover * incoming_zero, 0, n->feature);
}

/* Values in one table row of a leaf with `k` unique features on its path: the tree's columns (dense) or k. */
static inline size_t row_width(const tree *t, int32_t k) {
    return t->columns > 0 ? (size_t)t->columns : (size_t)k;
}

/* Each leaf's table row for `row`: one pass over the tree in preorder carries the pattern of the path (bit j: the
 * row follows every split on the path's j-th feature), without a branch on the row's values (a mispredicted branch
 * per split would cost more than the rest). Rows are prefetched as they are found. */
static void find_rows(const tree *t, const float *row, const float **rows) {
    uint32_t pending[PATH_SLOTS]; /* the patterns of the right children still to visit */
    int32_t waiting = 0, leaf = 0;
    uint32_t mask = 0;
    for (int32_t i = 0; i < t->num_nodes; ++i) {
        const visit *v = &t->visits[i];
        if (v->feature < 0) {
            const leaf_table *table = &t->leaves[leaf];
            rows[leaf] = table->contributions + (size_t)mask * row_width(t, table->k);
            __builtin_prefetch(rows[leaf]);
            ++leaf;
            mask = waiting > 0 ? pending[--waiting] : 0;
            continue;
        }
        const float x = row[v->feature];
        const uint32_t left = isnan(x) ? v->default_left : (uint32_t)(x < v->threshold);
        const uint32_t follows = mask | v->set_bit, misses = mask & v->clear_mask;
        const uint32_t differ = (follows ^ misses) & (0u - left);
        pending[waiting++] = follows ^ differ; /* the right child: the row's side unless it went left */
        mask = misses ^ differ;
    }
}

/* Add the leaves' rows of a tabulated tree to phi. */
static void add_rows(const tree *t, const float *const *rows, double *phi) {
    if (t->columns == 0) {
        for (int32_t l = 0; l < t->num_leaves; ++l) {
            const leaf_table *table = &t->leaves[l];
            for (int32_t j = 0; j < table->k; ++j) {
                phi[table->features[j]] += rows[l][j];
            }
        }
        return;
    }
    lanes sum[DENSE_MAX_COLUMNS / LANES] = {{0}};
    const int32_t groups = t->columns / LANES;
    for (int32_t l = 0; l < t->num_leaves; ++l) {
        for (int32_t g = 0; g < groups; ++g) {
            lanes values;
            memcpy(&values, rows[l] + g * LANES, sizeof values);
            sum[g] += values;
        }
    }
    for (int32_t c = 0; c < t->columns; ++c) {
        if (t->column_feature[c] >= 0) {
            phi[t->column_feature[c]] += sum[c / LANES][c % LANES];
        }
    }
}

VG_API void vg_forest_contributions(const vg_forest *forest, const float *row, double *phi) {
    enum { SLOTS = PATH_SLOTS * (PATH_SLOTS + 1) / 2 };
    path_element paths[SLOTS];
    const float *rows[TREE_NODE_LIMIT];
    memset(phi, 0, (size_t)(forest->num_features + 1) * sizeof *phi);
    for (int32_t t = 0; t < forest->num_trees; ++t) {
        const tree *tr = &forest->trees[t];
        if (tr->leaves == NULL) {
            recurse(&forest->f, tr->nodes, row, phi, 0, 0, paths, 1, 1, -1);
            continue;
        }
        find_rows(tr, row, rows);
        add_rows(tr, rows, phi);
    }
    phi[forest->num_features] = forest->bias;
}

/* Count the leaves and path steps of the subtree at `index` (depth = splits above it). */
static void count_paths(const node *nodes, int32_t index, int32_t depth, int32_t *leaves, int32_t *steps) {
    if (nodes[index].left < 0) {
        *leaves += 1;
        *steps += depth;
        return;
    }
    count_paths(nodes, nodes[index].left, depth + 1, leaves, steps);
    count_paths(nodes, nodes[index].right, depth + 1, leaves, steps);
}

/* Record each leaf's path (splits from the root, the side taken) in t->leaves and t->steps. */
static void collect_paths(tree *t, int32_t index, step *path, int32_t depth, int32_t *leaf, int32_t *steps) {
    const node *n = &t->nodes[index];
    if (n->left < 0) {
        leaf_table *out = &t->leaves[(*leaf)++];
        out->leaf = index;
        out->first_step = *steps;
        out->steps = depth;
        memcpy(&t->steps[*steps], path, (size_t)depth * sizeof *path);
        *steps += depth;
        return;
    }
    path[depth].node = index;
    path[depth].goes_left = 1;
    collect_paths(t, n->left, path, depth + 1, leaf, steps);
    path[depth].goes_left = 0;
    collect_paths(t, n->right, path, depth + 1, leaf, steps);
}

/* Lay the subtree at `index` out in preorder from t->visits[*count]; `features` are the path's unique ones so far. */
static void plan(tree *t, int32_t index, int32_t *features, int32_t k, int32_t *count) {
    const node *n = &t->nodes[index];
    visit *v = &t->visits[(*count)++];
    v->feature = n->feature;
    if (n->left < 0) {
        return;
    }
    v->threshold = n->threshold;
    v->default_left = (uint32_t)n->default_left;
    int32_t j = 0;
    while (j < k && features[j] != n->feature) {
        ++j;
    }
    const int is_new = j == k;
    v->set_bit = is_new ? 1u << j : 0;
    v->clear_mask = is_new ? ~0u : ~(1u << j);
    if (is_new) {
        features[k++] = n->feature;
    }
    plan(t, n->left, features, k, count);
    plan(t, n->right, features, k, count);
}

/* Give a tree dense rows when it splits on at most DENSE_MAX_COLUMNS features: one column each, padded to LANES. */
static void choose_columns(tree *t) {
    int32_t used = 0;
    t->columns = 0;
    for (int32_t l = 0; l < t->num_leaves; ++l) {
        for (int32_t j = 0; j < t->leaves[l].k; ++j) {
            const int32_t feature = t->leaves[l].features[j];
            int32_t c = 0;
            while (c < used && t->column_feature[c] != feature) {
                ++c;
            }
            if (c == used) {
                if (used == DENSE_MAX_COLUMNS) {
                    return;
                }
                t->column_feature[used++] = feature;
            }
        }
    }
    t->columns = (used + LANES - 1) / LANES * LANES;
    for (int32_t c = used; c < t->columns; ++c) {
        t->column_feature[c] = -1;
    }
}

/* Values the tree's tables hold with its rows' layout. */
static size_t table_size(const tree *t) {
    size_t size = 0;
    for (int32_t l = 0; l < t->num_leaves; ++l) {
        const int32_t k = t->leaves[l].k;
        size += ((size_t)1 << k) * row_width(t, k);
    }
    return size;
}

/* The column of `feature` in a tree with dense rows. */
static int32_t column_of(const tree *t, int32_t feature) {
    int32_t c = 0;
    while (t->column_feature[c] != feature) {
        ++c;
    }
    return c;
}

/* Tabulate a tree (Fast TreeSHAP, Yang 2021): at a leaf, path-dependent TreeSHAP depends on the row only through
 * which of the path's k unique features the row follows at every one of their splits (the element's one fraction,
 * 0 or 1); the zero fractions are fixed. So the k contributions of the leaf are computed once for each of the
 * 2^k patterns, and explaining a row costs a pattern lookup per leaf instead of the recursion's O(k^2) per leaf.
 * Trees whose tables would pass TREE_TABLE_LIMIT or the forest's TABLE_BUDGET, or with more than TREE_NODE_LIMIT
 * nodes, keep the recursion. */
static void tabulate(vg_forest *forest, tree *t) {
    int32_t num_leaves = 0, num_steps = 0;
    count_paths(t->nodes, 0, 0, &num_leaves, &num_steps);
    t->leaves = calloc((size_t)num_leaves, sizeof *t->leaves);
    t->steps = calloc((size_t)(num_steps > 0 ? num_steps : 1), sizeof *t->steps);
    if (t->leaves == NULL || t->steps == NULL) {
        free_tables(t);
        return;
    }
    t->num_leaves = num_leaves;
    step path[PATH_SLOTS];
    int32_t leaf_count = 0, step_count = 0;
    collect_paths(t, 0, path, 0, &leaf_count, &step_count);
    double zero[PATH_SLOTS];
    for (int32_t l = 0; l < num_leaves; ++l) {
        leaf_table *leaf = &t->leaves[l];
        leaf->k = 0;
        for (int32_t i = 0; i < leaf->steps; ++i) {
            step *st = &t->steps[leaf->first_step + i];
            const node *n = &t->nodes[st->node];
            int32_t j = 0;
            while (j < leaf->k && leaf->features[j] != n->feature) {
                ++j;
            }
            if (j == leaf->k) {
                if (leaf->k == TABLE_MAX_K) {
                    free_tables(t); /* too many features on one path: this tree keeps the recursion */
                    return;
                }
                leaf->features[leaf->k++] = n->feature;
            }
            st->element = j;
        }
    }
    choose_columns(t);
    size_t size = table_size(t);
    if (t->columns > 0 && size > TREE_TABLE_LIMIT) { /* dense rows too large: sparse ones may fit */
        t->columns = 0;
        size = table_size(t);
    }
    if (size > TREE_TABLE_LIMIT || forest->tabulated + size > TABLE_BUDGET || t->num_nodes > TREE_NODE_LIMIT) {
        free_tables(t);
        return;
    }
    path_element elements[PATH_SLOTS];
    for (int32_t l = 0; l < num_leaves; ++l) {
        leaf_table *leaf = &t->leaves[l];
        const int32_t k = leaf->k;
        for (int32_t j = 0; j < k; ++j) {
            zero[j] = 1.0;
        }
        for (int32_t i = 0; i < leaf->steps; ++i) {
            const step *st = &t->steps[leaf->first_step + i];
            const node *n = &t->nodes[st->node];
            zero[st->element] *= t->nodes[st->goes_left ? n->left : n->right].cover / n->cover;
        }
        const size_t width = row_width(t, k);
        int32_t column[TABLE_MAX_K]; /* where each of the path's features goes in a row */
        for (int32_t j = 0; j < k; ++j) {
            column[j] = t->columns > 0 ? column_of(t, leaf->features[j]) : j;
        }
        leaf->contributions = calloc(((size_t)1 << k) * (width > 0 ? width : 1), sizeof(float));
        if (leaf->contributions == NULL) {
            free_tables(t);
            return;
        }
        const double value = t->nodes[leaf->leaf].value;
        for (uint32_t mask = 0; mask < (1u << k); ++mask) {
            extend(&forest->f, elements, 0, 1, 1, -1);
            for (int32_t j = 0; j < k; ++j) {
                extend(&forest->f, elements, j + 1, zero[j], (mask >> j) & 1u, leaf->features[j]);
            }
            float *c = leaf->contributions + (size_t)mask * width;
            for (int32_t j = 0; j < k; ++j) {
                const double one = (mask >> j) & 1u;
                c[column[j]] = (float)(unwound_sum(&forest->f, elements, k, j + 1) * (one - zero[j]) * value);
            }
        }
    }
    t->visits = calloc((size_t)t->num_nodes, sizeof *t->visits);
    if (t->visits == NULL) {
        free_tables(t);
        return;
    }
    int32_t features[PATH_SLOTS], visited = 0;
    plan(t, 0, features, 0, &visited);
    free(t->steps); /* the paths were needed to build the tables only */
    t->steps = NULL;
    forest->tabulated += size;
}

VG_API int32_t vg_forest_top_reasons(const vg_forest *forest, const float *row, int32_t k, vg_reason *out,
                                     float *bias) {
    double phi[VG_MAX_FEATURES + 1];
    const int32_t n = forest->num_features;
    if (n > VG_MAX_FEATURES) {
        return 0;
    }
    vg_forest_contributions(forest, row, phi);
    *bias = (float)phi[n];
    k = k < n ? k : n;
    k = k < VG_MAX_REASONS ? k : VG_MAX_REASONS;
    int32_t chosen[VG_MAX_REASONS];
    for (int32_t r = 0; r < k; ++r) { /* selection: k is small */
        int32_t best = -1;
        for (int32_t i = 0; i < n; ++i) {
            int taken = 0;
            for (int32_t q = 0; q < r; ++q) {
                taken |= chosen[q] == i;
            }
            if (!taken && (best < 0 || fabs(phi[i]) > fabs(phi[best]))) {
                best = i;
            }
        }
        chosen[r] = best;
        out[r].feature = forest->names[best];
        out[r].feature_len = forest->name_len[best];
        out[r].feature_index = best;
        out[r].value = row[best];
        out[r].contribution = (float)phi[best];
    }
    return k;
}
