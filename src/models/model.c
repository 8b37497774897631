/* The model interface: the registry of families, and everything that is the same for every
 * model (parameter table, matrix list, selection, export/import, scores), done once here from
 * the fields of struct q3r_model (model_impl.h). */
#include "model_impl.h"

#include "base/util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- registry ----------------------------------------------------------------------------- */

static const q3r_model_family *const families[] = {&q3r_vit_family, &q3r_gpt_family};
enum { NFAMILIES = sizeof families / sizeof families[0] };

const char *q3r_model_preset_name(int i) {
    for (int f = 0; f < NFAMILIES; f++)
        for (const char *const *p = families[f]->presets; *p; p++)
            if (i-- == 0) return *p;
    return NULL;
}

q3r_status q3r_model_preset(const char *name, q3r_meta *meta, q3r_error *err) {
    if (!name) return q3r_fail(err, Q3R_EINVAL, "model preset: no name given");
    for (int f = 0; f < NFAMILIES; f++)
        for (const char *const *p = families[f]->presets; *p; p++)
            if (!strcmp(*p, name)) return families[f]->preset(name, meta, err);
    char known[256] = "";
    size_t len = 0;
    for (int i = 0; q3r_model_preset_name(i) && len < sizeof known; i++)
        len += (size_t)snprintf(known + len, sizeof known - len, "%s%s", i ? ", " : "",
                                q3r_model_preset_name(i));
    return q3r_fail(err, Q3R_EINVAL, "model preset '%s' unknown (known: %s)", name, known);
}

static const q3r_model_family *family_of(const q3r_meta *meta, q3r_error *err) {
    const char *name = q3r_meta_get(meta, "model.family");
    if (!name) name = "vit"; /* files written before the key existed */
    for (int f = 0; f < NFAMILIES; f++)
        if (!strcmp(families[f]->family, name)) return families[f];
    q3r_fail(err, Q3R_EFORMAT, "metadata 'model.family' = '%s' is not a known model family", name);
    return NULL;
}

/* "model.ranks" of a config of n matrices (malloc'd into *ranks; NULL when absent: dense). */
static q3r_status meta_ranks(const q3r_meta *meta, int n, int **ranks, q3r_error *err) {
    *ranks = NULL;
    if (!q3r_meta_has(meta, "model.ranks")) return Q3R_OK;
    int *r = malloc(sizeof(int) * (size_t)n);
    if (!r) return q3r_fail(err, Q3R_ENOMEM, "model: out of memory");
    if (q3r_meta_list_count(meta, "model.ranks") != n || q3r_meta_get_ints(meta, "model.ranks", r, n, NULL)) {
        free(r);
        return q3r_fail(err, Q3R_EFORMAT,
                        "metadata 'model.ranks' must be %d comma-separated ranks >= 0 (one per "
                        "matrix of the model, 0 = dense)",
                        n);
    }
    for (int i = 0; i < n; i++)
        if (r[i] < 0) {
            const int bad = r[i];
            free(r);
            return q3r_fail(err, Q3R_EFORMAT,
                            "metadata 'model.ranks': entry %d is %d; ranks are >= 0 (0 = dense)", i, bad);
        }
    *ranks = r;
    return Q3R_OK;
}

q3r_status q3r_model_from_meta(const q3r_meta *meta, int max_batch, q3r_model **out, q3r_error *err) {
    if (!meta || !out) return q3r_fail(err, Q3R_EINVAL, "model: NULL argument");
    *out = NULL;
    const q3r_model_family *fam = family_of(meta, err);
    if (!fam) return Q3R_EFORMAT;
    int *ranks = NULL;
    if (q3r_meta_has(meta, "model.ranks")) {
        int n;
        q3r_status s = fam->num_matrices(meta, &n, err);
        if (!s) s = meta_ranks(meta, n, &ranks, err);
        if (s) return s;
    }
    q3r_status s = fam->from_meta(meta, ranks, max_batch, out, err);
    if (s && ranks) q3r_fail_context(err, "model.ranks");
    free(ranks);
    return s;
}

q3r_status q3r_model_meta_check_size(const q3r_meta *meta, uint64_t numbers, q3r_error *err) {
    if (!meta) return q3r_fail(err, Q3R_EINVAL, "model: NULL argument");
    const q3r_model_family *fam = family_of(meta, err);
    if (!fam) return Q3R_EFORMAT;
    int n;
    q3r_status s = fam->num_matrices(meta, &n, err);
    if (s) return s;
    /* room for a mix-up of files, whose import says more than a count would; past it, no file's */
    const double room = 16.0 * (double)numbers + (double)(1 << 20);
    double need = n; /* a matrix takes one number at least: so n is bounded before "model.ranks" is read */
    if ((double)n <= room) {
        int *ranks;
        if ((s = meta_ranks(meta, n, &ranks, err))) return s;
        s = fam->min_params(meta, ranks, &need, err);
        free(ranks);
        if (s) return s;
    }
    if (need > room)
        return q3r_fail(
            err, Q3R_EFORMAT,
            "the model its metadata describes (%s) has at least %.0f parameters, far more than the "
            "%llu F32 numbers its tensors hold",
            fam->family, need, (unsigned long long)numbers);
    return Q3R_OK;
}

q3r_status q3r_model_with_ranks(const q3r_model *m, const int *ranks, int max_batch, q3r_model **out,
                                q3r_error *err) {
    return m->ops->with_ranks(m, ranks, max_batch, out, err);
}

q3r_status q3r_model_new_head(const q3r_model *m, int classes, uint64_t seed, int max_batch, q3r_model **out,
                              q3r_error *err) {
    if (!m->ops->new_head)
        return q3r_fail(err, Q3R_EINVAL, "a %s model has no classifier head to replace", m->ops->family);
    if (classes < 1) return q3r_fail(err, Q3R_EINVAL, "new head: %d classes", classes);
    return m->ops->new_head(m, classes, seed, max_batch, out, err);
}

void q3r_model_free(q3r_model *m) {
    if (m) m->ops->destroy(m);
}

const char *q3r_model_family_name(const q3r_model *m) { return m->ops->family; }

q3r_status q3r_model_config_to_meta(const q3r_model *m, q3r_meta *meta, q3r_error *err) {
    q3r_status s = m->ops->config_to_meta(m, meta, err);
    if (s) return s;
    if (!m->factored) {
        q3r_meta_remove(meta, "model.ranks");
        return Q3R_OK;
    }
    q3r_text t;
    q3r_text_init(&t);
    if (q3r_text_add_ints(&t, m->ranks, m->nmat, ","))
        s = q3r_fail(err, Q3R_ENOMEM, "model metadata: out of memory");
    else s = q3r_meta_set(meta, "model.ranks", q3r_text_str(&t), err);
    q3r_text_free(&t);
    return s;
}

const q3r_model_input *q3r_model_input_spec(const q3r_model *m) { return &m->input; }
q3r_metric q3r_model_metric(const q3r_model *m) { return m->metric; }
int q3r_model_max_batch(const q3r_model *m) { return m->max_batch; }
void q3r_model_describe(const q3r_model *m, char *buf, size_t cap) { m->ops->describe(m, buf, cap); }
void q3r_model_init(q3r_model *m, uint64_t seed) { m->ops->init(m, seed); }
double q3r_model_forward_flops(const q3r_model *m, int B) { return m->ops->forward_flops(m, B); }

void q3r_model_profile(q3r_model *m, int on) {
    if (!m) return;
    if (on) memset(m->prof, 0, sizeof m->prof);
    m->profiling = on != 0;
}

void q3r_model_profile_read(const q3r_model *m, double *forward, double *backward) {
    for (int i = 0; i < Q3R_PROF_PARTS; i++) {
        if (forward) forward[i] = m ? m->prof[0][i] : 0;
        if (backward) backward[i] = m ? m->prof[1][i] : 0;
    }
}

const char *q3r_prof_part_name(q3r_prof_part part) {
    static const char *const names[Q3R_PROF_PARTS] = {"qkv",       "proj", "fc1",  "fc2",
                                                      "attention", "norm", "gelu", "other"};
    return (unsigned)part < Q3R_PROF_PARTS ? names[part] : "?";
}

const float *q3r_model_matrix_input(const q3r_model *m, int i, int64_t *rows) {
    *rows = 0;
    return m->ops->matrix_input ? m->ops->matrix_input(m, i, rows) : NULL;
}

/* ---- forward, backward, metrics ----------------------------------------------------------- */

q3r_status q3r_model_forward(q3r_model *m, const q3r_batch *b, float label_smoothing, int training,
                             q3r_rng *rng, float *loss, q3r_error *err) {
    if (!b) return q3r_fail(err, Q3R_EINVAL, "%s forward: batch is NULL", m->ops->family);
    return m->ops->forward(m, b, label_smoothing, training, rng, loss, err);
}

q3r_status q3r_model_backward(q3r_model *m, q3r_error *err) { return m->ops->backward(m, err); }

const float *q3r_model_logits(const q3r_model *m) { return m->ops->logits(m); }

void q3r_model_score(const q3r_model *m, const q3r_batch *b, float loss, q3r_score *s) {
    m->ops->score(m, b, loss, s);
}

void q3r_model_score_classifier(const q3r_batch *b, const float *logits, int classes, float loss,
                                q3r_score *s) {
    int64_t correct = 0;
    for (int64_t i = 0; i < b->count; i++) {
        const float *row = logits + i * classes;
        int best = 0;
        for (int k = 1; k < classes; k++)
            if (row[k] > row[best]) best = k;
        correct += best == b->targets[i];
    }
    s->correct += correct;
    s->units += b->count;
    s->loss_sum += (double)loss * (double)b->count;
}

const char *q3r_metric_name(q3r_metric m) { return m == Q3R_METRIC_BITS_PER_BYTE ? "bpb" : "acc"; }

double q3r_score_value(q3r_metric m, const q3r_score *s) {
    if (s->units <= 0) return NAN;
    if (m == Q3R_METRIC_BITS_PER_BYTE) return s->loss_sum / (double)s->units / log(2.0);
    return (double)s->correct / (double)s->units;
}

double q3r_score_loss(const q3r_score *s) { return s->units > 0 ? s->loss_sum / (double)s->units : NAN; }

void q3r_model_zero_grad(q3r_model *m) { memset(m->grads, 0, sizeof(float) * m->nparams); }

/* ---- parameters ----------------------------------------------------------------------------- */

float *q3r_model_params(q3r_model *m) { return m->params; }
float *q3r_model_grads(q3r_model *m) { return m->grads; }
size_t q3r_model_num_params(const q3r_model *m) { return m->nparams; }

int64_t q3r_param_numel(const q3r_param_info *p) {
    int64_t n = 1;
    for (int k = 0; k < p->ndim; k++) n *= p->shape[k];
    return n;
}

int64_t q3r_model_param_count(const q3r_model *m) {
    int64_t n = 0;
    for (int i = 0; i < m->ntensors; i++) n += q3r_param_numel(&m->info[i]);
    return n;
}

int q3r_model_num_tensors(const q3r_model *m) { return m->ntensors; }

const q3r_param_info *q3r_model_tensor(const q3r_model *m, int i) {
    return i >= 0 && i < m->ntensors ? &m->info[i] : NULL;
}

const q3r_param_info *q3r_model_find(const q3r_model *m, const char *name) {
    for (int i = 0; name && i < m->ntensors; i++)
        if (strcmp(m->info[i].name, name) == 0) return &m->info[i];
    return NULL;
}

int q3r_model_tensor_of(const q3r_model *m, const float *p) {
    for (int t = 0; t < m->ntensors; t++) {
        const float *base = m->params + m->info[t].offset;
        if (p >= base && p < base + q3r_param_numel(&m->info[t])) return t;
    }
    return -1;
}

/* ---- matrices ------------------------------------------------------------------------------- */

int q3r_model_num_matrices(const q3r_model *m) { return m->nmat; }
const int *q3r_model_ranks(const q3r_model *m) { return m->ranks; }
int q3r_model_is_factored(const q3r_model *m) { return m->factored; }

int q3r_model_find_kind(const q3r_model *m, q3r_matrix_kind kind) {
    for (int i = 0; i < m->nmat; i++)
        if (m->mats[i].kind == kind) return i;
    return -1;
}

q3r_status q3r_model_matrix_shape(const q3r_model *m, int i, const char **name, q3r_matrix_kind *kind,
                                  int *rows, int *cols, q3r_error *err) {
    if (i < 0 || i >= m->nmat)
        return q3r_fail(err, Q3R_EINVAL, "%s: matrix index %d not in [0, %d)", m->ops->family, i, m->nmat);
    const q3r_model_matrix_slot *x = &m->mats[i];
    if (name) *name = x->name;
    if (kind) *kind = x->kind;
    if (rows) *rows = x->rows;
    if (cols) *cols = x->cols;
    return Q3R_OK;
}

q3r_status q3r_model_matrix(q3r_model *m, int i, q3r_matrix *out, q3r_error *err) {
    q3r_status s = q3r_model_matrix_shape(m, i, NULL, NULL, NULL, NULL, err);
    if (s) return s;
    const q3r_model_matrix_slot *x = &m->mats[i];
    memset(out, 0, sizeof *out);
    out->name = x->name;
    out->kind = x->kind;
    out->rows = x->rows;
    out->cols = x->cols;
    out->rank = x->rank;
    out->tensor = x->w;
    if (x->rank) {
        out->a = q3r_model_par(m, x->a);
        out->b = q3r_model_par(m, x->b);
        out->da = q3r_model_grd(m, x->a);
        out->db = q3r_model_grd(m, x->b);
    } else {
        out->w = q3r_model_par(m, x->w) + x->row0 * (size_t)x->cols;
        out->dw = q3r_model_grd(m, x->w) + x->row0 * (size_t)x->cols;
    }
    return Q3R_OK;
}

q3r_status q3r_model_select(const q3r_model *m, const char *targets, uint8_t *selected, q3r_error *err) {
    unsigned kinds;
    q3r_status s = q3r_targets_parse(targets, &kinds, err);
    if (s) return s;
    int any = 0, tied = -1;
    for (int i = 0; i < m->nmat; i++) {
        const int kind = kinds >> m->mats[i].kind & 1u;
        selected[i] = m->mats[i].targetable && kind;
        if (kind && !m->mats[i].targetable) tied = i;
        any |= selected[i];
    }
    if (!any && tied >= 0)
        return q3r_fail(err, Q3R_EINVAL,
                        "targets '%s' select none of this %s model's matrices ('%s' is tied to an "
                        "embedding and is never a target)",
                        targets, m->ops->family, m->mats[tied].name);
    if (!any)
        return q3r_fail(err, Q3R_EINVAL, "targets '%s' select none of this %s model's matrices", targets,
                        m->ops->family);
    return Q3R_OK;
}

/* ---- named export / import ------------------------------------------------------------------ */

q3r_status q3r_model_export(const q3r_model *m, q3r_tensor_list *out, q3r_error *err) {
    for (int i = 0; i < m->ntensors; i++) {
        const q3r_param_info *t = &m->info[i];
        q3r_status s =
            q3r_tensor_list_add(out, t->name, Q3R_F32, t->ndim, t->shape, m->params + t->offset, err);
        if (s) return q3r_fail_context(err, "%s export", m->ops->family);
    }
    if (m->alias_tensor >= 0) {
        const q3r_param_info *t = &m->info[m->alias_tensor];
        q3r_status s =
            q3r_tensor_list_add(out, m->alias_name, Q3R_F32, t->ndim, t->shape, m->params + t->offset, err);
        if (s) return q3r_fail_context(err, "%s export", m->ops->family);
    }
    return Q3R_OK;
}

static void shape_text(char *buf, size_t cap, const char *dtype, int ndim, const int64_t *shape) {
    int w = snprintf(buf, cap, "%s (", dtype);
    for (int k = 0; k < ndim && k < Q3R_TENSOR_MAXDIM && (size_t)w < cap; k++)
        w += snprintf(buf + w, cap - (size_t)w, "%s%lld", k ? ", " : "", (long long)shape[k]);
    if ((size_t)w < cap) snprintf(buf + w, cap - (size_t)w, ")");
}

/* Weights may be F32, or F64, F16 or BF16 (a PyTorch export in half precision), converted on
 * load; a non-finite value is refused, naming the tensor. */
q3r_status q3r_model_import(q3r_model *m, const q3r_tensor_list *in, q3r_error *err) {
    const char *fam = m->ops->family;
    int64_t most = 1;
    for (int i = 0; i < m->ntensors; i++)
        most = q3r_param_numel(&m->info[i]) > most ? q3r_param_numel(&m->info[i]) : most;
    float *scratch = NULL;
    q3r_status s = Q3R_OK;
    /* validate everything first (pass 0, converting into scratch), so a failed import leaves the
     * model untouched */
    for (int pass = 0; pass < 2 && !s; pass++) {
        for (int i = 0; i < m->ntensors && !s; i++) {
            const q3r_param_info *t = &m->info[i];
            const q3r_tensor *src = q3r_tensor_list_find(in, t->name);
            if (!src) {
                s = q3r_fail(err, Q3R_EFORMAT, "%s import: tensor '%s' missing", fam, t->name);
                break;
            }
            int same = q3r_dtype_is_float(src->dtype) && src->ndim == t->ndim;
            for (int k = 0; same && k < t->ndim; k++) same = src->shape[k] == t->shape[k];
            if (!same) {
                char want[96], got[96];
                shape_text(want, sizeof want, "F32", t->ndim, t->shape);
                shape_text(got, sizeof got, q3r_dtype_name(src->dtype), src->ndim, src->shape);
                s = q3r_fail(err, Q3R_EFORMAT, "%s import: tensor '%s' is %s, model wants %s", fam, t->name,
                             got, want);
                break;
            }
            if (pass == 0 && !scratch && !(scratch = q3r_alloc(sizeof(float) * (size_t)most))) {
                s = q3r_fail(err, Q3R_ENOMEM, "%s import: out of memory", fam);
                break;
            }
            float *dst = pass == 0 ? scratch : m->params + t->offset;
            if ((s = q3r_convert_to_f32(src->data, src->dtype, (size_t)q3r_param_numel(t), dst, err)))
                q3r_fail_context(err, "%s import: tensor '%s' (%s)", fam, t->name,
                                 q3r_dtype_name(src->dtype));
        }
    }
    q3r_free(scratch);
    return s;
}

/* ---- a family's config as metadata ----------------------------------------------------------- */

q3r_status q3r_config_to_meta(q3r_meta *meta, const char *family, const char *name, const q3r_config_field *f,
                              int n, float dropout, q3r_error *err) {
    q3r_status s = q3r_meta_set(meta, "model.family", family, err);
    if (!s && ((name && *name) || !q3r_meta_has(meta, "model.name")))
        s = q3r_meta_set(meta, "model.name", name ? name : "", err);
    for (int i = 0; i < n && !s; i++) s = q3r_meta_setf(meta, err, f[i].key, "%d", *f[i].value);
    if (!s) s = q3r_meta_setf(meta, err, "model.dropout", "%.9g", dropout);
    return s;
}

q3r_status q3r_config_from_meta(const q3r_meta *meta, const q3r_config_field *f, int n, float *dropout,
                                q3r_error *err) {
    for (int i = 0; i < n; i++) {
        if (!f[i].required && !q3r_meta_has(meta, f[i].key)) continue;
        q3r_status s = q3r_meta_get_int(meta, f[i].key, f[i].value, err);
        if (s) return s;
    }
    if (q3r_meta_has(meta, "model.dropout")) {
        double d;
        q3r_status s = q3r_meta_get_double(meta, "model.dropout", &d, err);
        if (s) return s;
        *dropout = (float)d;
    }
    return Q3R_OK;
}

/* ---- building a model (for the families) ---------------------------------------------------- */

q3r_status q3r_model_base_init(q3r_model *m, const q3r_model_ops *ops, int max_tensors, int nmat,
                               const int *ranks, int max_batch, const char *what, q3r_error *err) {
    m->ops = ops;
    m->max_batch = max_batch;
    m->alias_tensor = -1;
    m->tensor_cap = max_tensors;
    m->info = calloc((size_t)max_tensors, sizeof *m->info);
    m->names = calloc((size_t)max_tensors, Q3R_MODEL_NAME_LEN);
    m->nmat = nmat;
    m->mats = calloc((size_t)nmat, sizeof *m->mats);
    m->ranks = calloc((size_t)nmat, sizeof *m->ranks);
    if (!m->info || !m->names || !m->mats || !m->ranks)
        return q3r_fail(err, Q3R_ENOMEM, "%s: out of memory", what);
    for (int i = 0; i < nmat; i++) {
        m->ranks[i] = ranks ? ranks[i] : 0;
        if (m->ranks[i]) m->factored = 1;
        if (m->ranks[i] > m->max_rank) m->max_rank = m->ranks[i];
        m->mats[i].rank = m->ranks[i];
        m->mats[i].w = m->mats[i].a = m->mats[i].b = -1;
        m->mats[i].targetable = 1;
    }
    return Q3R_OK;
}

void q3r_model_base_free(q3r_model *m) {
    q3r_free(m->params);
    q3r_free(m->grads);
    free(m->info);
    free(m->names);
    free(m->mats);
    free(m->ranks);
}

int q3r_model_add_tensor(q3r_model *m, size_t *off, const char *name, int kind, int ndim, int64_t d0,
                         int64_t d1, int64_t d2, int64_t d3) {
    int i = m->ntensors++;
    q3r_param_info *t = &m->info[i];
    char *nm = m->names + (size_t)i * Q3R_MODEL_NAME_LEN;
    snprintf(nm, Q3R_MODEL_NAME_LEN, "%s", name);
    t->name = nm;
    t->offset = *off;
    t->ndim = ndim;
    const int64_t d[4] = {d0, d1, d2, d3};
    size_t numel = 1;
    for (int k = 0; k < 4; k++) {
        t->shape[k] = k < ndim ? d[k] : 0;
        if (k < ndim) numel *= (size_t)d[k];
    }
    t->kind = kind;
    *off += (numel + 15) & ~(size_t)15; /* next tensor on a 64-byte boundary */
    return i;
}

void q3r_model_add_matrix(q3r_model *m, size_t *off, int i, const char *base) {
    q3r_model_matrix_slot *x = &m->mats[i];
    char nm[Q3R_MODEL_NAME_LEN];
    x->a = x->b = x->w = -1;
    x->row0 = 0;
    if (x->rank) {
        snprintf(nm, sizeof nm, "%s.weight_a", base);
        x->a = q3r_model_add_tensor(m, off, nm, Q3R_PARAM_MATRIX, 2, x->rows, x->rank, 0, 0);
        snprintf(nm, sizeof nm, "%s.weight_b", base);
        x->b = q3r_model_add_tensor(m, off, nm, Q3R_PARAM_MATRIX, 2, x->rank, x->cols, 0, 0);
    } else {
        snprintf(nm, sizeof nm, "%s.weight", base);
        x->w = q3r_model_add_tensor(m, off, nm, Q3R_PARAM_MATRIX, 2, x->rows, x->cols, 0, 0);
    }
}

q3r_status q3r_model_base_alloc(q3r_model *m, size_t off, const char *what, q3r_error *err) {
    m->nparams = off;
    m->params = q3r_calloc(sizeof(float) * off);
    m->grads = q3r_calloc(sizeof(float) * off);
    if (!m->params || !m->grads) return q3r_fail(err, Q3R_ENOMEM, "%s: out of memory for parameters", what);
    return Q3R_OK;
}
