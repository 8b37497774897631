/* LoRA adapters in PEFT's format: the in-memory adapter, its directory (config JSON and
 * safetensors), merging into a model and extracting from a fine-tune (see q3r/adapter.h). */
#include "q3r/adapter.h"

#include <cblas.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/util.h"
#include "q3r/io.h"
#include "q3r/linalg.h"
#include "q3r/reparam.h"

static const char *const PREFIX = "base_model.model.";

/* ---- the adapter in memory ----------------------------------------------------------------- */

void q3r_adapter_init(q3r_adapter *a) {
    memset(a, 0, sizeof *a);
    q3r_tensor_list_init(&a->saved);
}

static void lora_free(q3r_lora *l) {
    free(l->module);
    q3r_free(l->A);
    q3r_free(l->B);
}

void q3r_adapter_free(q3r_adapter *a) {
    for (int i = 0; i < a->count; i++) lora_free(&a->items[i]);
    free(a->items);
    free(a->base_model);
    free(a->task_type);
    free(a->classes);
    q3r_tensor_list_free(&a->saved);
    q3r_adapter_init(a);
}

const q3r_lora *q3r_adapter_find(const q3r_adapter *a, const char *module) {
    for (int i = 0; module && i < a->count; i++)
        if (!strcmp(a->items[i].module, module)) return &a->items[i];
    return NULL;
}

double q3r_lora_scale(const q3r_adapter *a, const q3r_lora *l) {
    return a->use_rslora ? l->alpha / sqrt((double)l->rank) : l->alpha / (double)l->rank;
}

q3r_status q3r_adapter_add(q3r_adapter *a, const char *module, int rows, int cols, int rank, double alpha,
                           const float *A, const float *B, q3r_error *err) {
    if (!module || !*module) return q3r_fail(err, Q3R_EINVAL, "adapter: a module without a name");
    if (rows < 1 || cols < 1 || rank < 1)
        return q3r_fail(err, Q3R_EINVAL, "adapter module %s: %d x %d at rank %d", module, rows, cols, rank);
    if (!isfinite(alpha) || alpha <= 0)
        return q3r_fail(err, Q3R_EINVAL, "adapter module %s: lora_alpha %g must be > 0", module, alpha);
    if (q3r_adapter_find(a, module)) return q3r_fail(err, Q3R_EINVAL, "adapter: module %s twice", module);
    if (a->count == a->cap) {
        int cap = a->cap ? 2 * a->cap : 16;
        q3r_lora *grown = realloc(a->items, sizeof *grown * (size_t)cap);
        if (!grown) return q3r_fail(err, Q3R_ENOMEM, "adapter: out of memory");
        a->items = grown;
        a->cap = cap;
    }
    q3r_lora l = {.rows = rows, .cols = cols, .rank = rank, .alpha = alpha};
    l.module = strdup(module);
    l.A = q3r_alloc(sizeof(float) * (size_t)rank * cols);
    l.B = q3r_alloc(sizeof(float) * (size_t)rows * rank);
    if (!l.module || !l.A || !l.B) {
        lora_free(&l);
        return q3r_fail(err, Q3R_ENOMEM, "adapter module %s: out of memory", module);
    }
    if (A) memcpy(l.A, A, sizeof(float) * (size_t)rank * cols);
    else memset(l.A, 0, sizeof(float) * (size_t)rank * cols);
    if (B) memcpy(l.B, B, sizeof(float) * (size_t)rows * rank);
    else memset(l.B, 0, sizeof(float) * (size_t)rows * rank);
    a->items[a->count++] = l;
    return Q3R_OK;
}

/* ---- writing --------------------------------------------------------------------------------- */

/* A regex matching exactly this name (dots escaped), for rank_pattern / alpha_pattern. */
static void add_pattern_key(q3r_text *t, const char *module) {
    q3r_text q;
    q3r_text_init(&q);
    for (const char *c = module; *c; c++) {
        if (strchr(".^$*+?()[]{}|\\", *c)) q3r_text_add(&q, "\\");
        q3r_text_addf(&q, "%c", *c);
    }
    q3r_text_add_json_string(t, q3r_text_str(&q));
    q3r_text_free(&q);
}

static void add_number(q3r_text *t, double v) {
    if (v == floor(v) && fabs(v) < 1e15) q3r_text_addf(t, "%.0f", v);
    else q3r_text_addf(t, "%.17g", v);
}

/* A saved tensor's module: its name without the last component ("head.weight" -> "head"). */
static char *saved_module(const char *name) {
    const char *dot = strrchr(name, '.');
    const size_t n = dot ? (size_t)(dot - name) : strlen(name);
    char *m = malloc(n + 1);
    if (m) {
        memcpy(m, name, n);
        m[n] = 0;
    }
    return m;
}

static char *config_json(const q3r_adapter *a) {
    /* r and lora_alpha: the first module's; the others differ through the patterns */
    const int r = a->items[0].rank;
    const double alpha = a->items[0].alpha;
    q3r_text t;
    q3r_text_init(&t);
    q3r_text_add(&t, "{\n  \"peft_type\": \"LORA\",\n  \"r\": ");
    q3r_text_addf(&t, "%d", r);
    q3r_text_add(&t, ",\n  \"lora_alpha\": ");
    add_number(&t, alpha);
    q3r_text_add(&t, ",\n  \"target_modules\": [");
    for (int i = 0; i < a->count; i++) {
        q3r_text_add(&t, i ? ", " : "");
        q3r_text_add_json_string(&t, a->items[i].module);
    }
    q3r_text_add(&t, "],\n  \"rank_pattern\": {");
    int n = 0;
    for (int i = 0; i < a->count; i++)
        if (a->items[i].rank != r) {
            q3r_text_add(&t, n++ ? ", " : "");
            add_pattern_key(&t, a->items[i].module);
            q3r_text_addf(&t, ": %d", a->items[i].rank);
        }
    q3r_text_add(&t, "},\n  \"alpha_pattern\": {");
    n = 0;
    for (int i = 0; i < a->count; i++)
        if (a->items[i].alpha != alpha) {
            q3r_text_add(&t, n++ ? ", " : "");
            add_pattern_key(&t, a->items[i].module);
            q3r_text_add(&t, ": ");
            add_number(&t, a->items[i].alpha);
        }
    q3r_text_add(&t, "},\n  \"bias\": \"none\",\n  \"fan_in_fan_out\": false,\n  \"use_rslora\": ");
    q3r_text_add(&t, a->use_rslora ? "true" : "false");
    q3r_text_add(&t,
                 ",\n  \"lora_dropout\": 0.0,\n  \"init_lora_weights\": true,\n  \"inference_mode\": true,"
                 "\n  \"modules_to_save\": ");
    if (!a->saved.count) q3r_text_add(&t, "null");
    for (size_t i = 0; i < a->saved.count; i++) { /* each module once, in tensor order */
        char *mod = saved_module(a->saved.items[i].name);
        int seen = 0;
        for (size_t j = 0; mod && j < i && !seen; j++) {
            char *prev = saved_module(a->saved.items[j].name);
            seen = prev && !strcmp(prev, mod);
            free(prev);
        }
        if (!mod) t.failed = 1;
        else if (!seen) {
            q3r_text_add(&t, i ? ", " : "[");
            q3r_text_add_json_string(&t, mod);
        }
        free(mod);
    }
    if (a->saved.count) q3r_text_add(&t, "]");
    q3r_text_add(&t, ",\n  \"base_model_name_or_path\": ");
    if (a->base_model) q3r_text_add_json_string(&t, a->base_model);
    else q3r_text_add(&t, "null");
    q3r_text_add(&t, ",\n  \"task_type\": ");
    if (a->task_type) q3r_text_add_json_string(&t, a->task_type);
    else q3r_text_add(&t, "null");
    q3r_text_add(&t, ",\n  \"revision\": null\n}\n");
    if (t.failed) {
        q3r_text_free(&t);
        return NULL;
    }
    return t.buf;
}

q3r_status q3r_adapter_write(const char *dir, const q3r_adapter *a, q3r_error *err) {
    if (!a->count) return q3r_fail(err, Q3R_EINVAL, "adapter %s: no modules to write", dir);
    q3r_status s = q3r_mkdir_p(dir, err);
    if (s) return s;
    char *cfg_path = q3r_path_join(dir, "adapter_config.json"),
         *st_path = q3r_path_join(dir, "adapter_model.safetensors");
    char *json = config_json(a);
    q3r_tensor_list l;
    q3r_tensor_list_init(&l);
    if (!cfg_path || !st_path || !json) s = q3r_fail(err, Q3R_ENOMEM, "adapter %s: out of memory", dir);
    for (int i = 0; i < a->count && !s; i++) {
        const q3r_lora *x = &a->items[i];
        char *na = NULL, *nb = NULL;
        q3r_text t;
        q3r_text_init(&t);
        q3r_text_addf(&t, "%s%s.lora_A.weight", PREFIX, x->module);
        na = t.buf;
        q3r_text_init(&t);
        q3r_text_addf(&t, "%s%s.lora_B.weight", PREFIX, x->module);
        nb = t.buf;
        const int64_t sa[2] = {x->rank, x->cols}, sb[2] = {x->rows, x->rank};
        if (!na || !nb) s = q3r_fail(err, Q3R_ENOMEM, "adapter %s: out of memory", dir);
        if (!s) s = q3r_tensor_list_add(&l, na, Q3R_F32, 2, sa, x->A, err);
        if (!s) s = q3r_tensor_list_add(&l, nb, Q3R_F32, 2, sb, x->B, err);
        free(na);
        free(nb);
    }
    for (size_t i = 0; i < a->saved.count && !s; i++) {
        const q3r_tensor *x = &a->saved.items[i];
        q3r_text t;
        q3r_text_init(&t);
        q3r_text_addf(&t, "%s%s", PREFIX, x->name);
        s = t.failed ? q3r_fail(err, Q3R_ENOMEM, "adapter %s: out of memory", dir)
                     : q3r_tensor_list_add(&l, t.buf, x->dtype, x->ndim, x->shape, x->data, err);
        q3r_text_free(&t);
    }
    /* PEFT's own header metadata, and the class split of a saved head (PEFT ignores it) */
    q3r_text md;
    q3r_text_init(&md);
    q3r_text_add(&md, "{\"format\": \"pt\"");
    if (a->classes) {
        q3r_text_add(&md, ", \"q3r.data.classes\": ");
        q3r_text_add_json_string(&md, a->classes);
    }
    q3r_text_add(&md, "}");
    if (!s && md.failed) s = q3r_fail(err, Q3R_ENOMEM, "adapter %s: out of memory", dir);
    /* the weights first, the config last: a directory with a config is complete */
    if (!s) s = q3r_safetensors_write(st_path, &l, q3r_text_str(&md), err);
    q3r_text_free(&md);
    if (!s) s = q3r_write_file_atomic(cfg_path, json, strlen(json), err);
    q3r_tensor_list_free(&l);
    free(json);
    free(cfg_path);
    free(st_path);
    return s;
}

/* ---- reading --------------------------------------------------------------------------------- */

/* PEFT's LoRA config keys: the ones q3r reads, and the ones it accepts only at their default
 * (a value that changes what the adapter means is refused). Anything else is not PEFT's. */
static const char *const READ_KEYS[] = {"peft_type",    "r",
                                        "lora_alpha",   "target_modules",
                                        "rank_pattern", "alpha_pattern",
                                        "use_rslora",   "base_model_name_or_path",
                                        "task_type",    "modules_to_save"};
static const char *const FREE_KEYS[] = {/* informational or training-only: any value */
                                        "lora_dropout",      "inference_mode",     "revision",
                                        "init_lora_weights", "peft_version",       "auto_mapping",
                                        "exclude_modules",   "megatron_core",      "qalora_group_size",
                                        "runtime_config",    "ensure_weight_tying"};
/* at their default only: false, "none", null, {} or [] */
static const char *const DEFAULT_KEYS[] = {"bias",
                                           "fan_in_fan_out",
                                           "use_dora",
                                           "layers_to_transform",
                                           "layers_pattern",
                                           "megatron_config",
                                           "loftq_config",
                                           "eva_config",
                                           "corda_config",
                                           "lora_ga_config",
                                           "velora_config",
                                           "monteclora_config",
                                           "layer_replication",
                                           "lora_bias",
                                           "target_parameters",
                                           "trainable_token_indices",
                                           "alora_invocation_tokens",
                                           "use_qalora",
                                           "use_bdlora",
                                           "arrow_config"};

static int in_list(const char *key, const char *const *list, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!strcmp(key, list[i])) return 1;
    return 0;
}

static int is_default(const q3r_json *v) {
    switch (v->type) {
    case Q3R_JSON_NULL: return 1;
    case Q3R_JSON_BOOL: return !v->boolean;
    case Q3R_JSON_STRING: return !strcmp(v->text, "none");
    case Q3R_JSON_OBJECT:
    case Q3R_JSON_ARRAY: return v->count == 0;
    default: return 0;
    }
}

/* Whether name matches the POSIX extended regex `pattern` placed into `wrap` (a format with one
 * %s, anchoring it). An invalid pattern matches nothing. */
static int regex_matches(const char *wrap, const char *pattern, const char *name) {
    q3r_text re;
    q3r_text_init(&re);
    q3r_text_addf(&re, wrap, pattern);
    regex_t rx;
    int ok = !re.failed && !regcomp(&rx, q3r_text_str(&re), REG_EXTENDED | REG_NOSUB);
    int hit = ok && !regexec(&rx, name, 0, NULL, 0);
    if (ok) regfree(&rx);
    q3r_text_free(&re);
    return hit;
}

/* PEFT's pattern match: the key as a regex matching the whole name or a dotted suffix of it. */
static int pattern_matches(const char *pattern, const char *name) {
    return regex_matches("^(.*\\.)?(%s)$", pattern, name);
}

/* target_modules: a list of names (a module matches one that it equals or ends in "." + it) or
 * one regex (full match). */
static int target_matches(const q3r_json *targets, const char *module) {
    if (targets->type == Q3R_JSON_STRING) return regex_matches("^(%s)$", targets->text, module);
    const size_t n = strlen(module);
    for (size_t i = 0; i < targets->count; i++) {
        const char *key = targets->items[i].text;
        const size_t k = strlen(key);
        if (!strcmp(module, key) || (n > k && module[n - k - 1] == '.' && !strcmp(module + n - k, key)))
            return 1;
    }
    return 0;
}

/* The number under the first pattern key of obj that matches module, or dflt. */
static double pattern_value(const q3r_json *obj, const char *module, double dflt) {
    for (size_t i = 0; obj && i < obj->count; i++)
        if (pattern_matches(obj->items[i].key, module)) return obj->items[i].number;
    return dflt;
}

/* The regexes of a config (pattern keys, a target_modules string), compiled by regcomp: at most
 * PATTERN_MAX bytes, without interval expressions and with at most PLUS_MAX '+' operators. glibc's
 * regcomp expands {m,n} (the 24 bytes "(x{1,100}){1,100}{1,100}" take a minute), copies the
 * expression under each '+' once (x+ is x x*, so "((x)+)+..." or "x+++..." doubles per '+': 40 of
 * them took all memory under the fuzzer, fuzz/corpus/adapter/regress-regex-plus), and recurses per
 * parenthesis (20000 of them overflow the stack); module names need none of this. */
#define PATTERN_MAX 1024
#define PLUS_MAX 8
static q3r_status check_regex(const char *re, const char *path, const char *what, q3r_error *err) {
    if (strlen(re) > PATTERN_MAX)
        return q3r_fail(err, Q3R_EFORMAT, "%s: %s is longer than %d bytes", path, what, PATTERN_MAX);
    int plus = 0, bracket = 0;
    for (const char *c = re; *c; c++) {
        if (bracket) /* a bracket expression ends at a ']' that is not its first character */
            bracket = !(*c == ']' && c[-1] != '[' && !(c[-1] == '^' && c[-2] == '['));
        else if (*c == '\\' && c[1]) c++; /* an escaped character is a literal */
        else if (*c == '[') bracket = 1;
        else plus += *c == '+';
    }
    if (plus > PLUS_MAX)
        return q3r_fail(
            err, Q3R_EFORMAT,
            "%s: %s has %d '+' repetitions, more than the %d q3r accepts (POSIX regcomp copies what "
            "each one repeats, so they can grow a pattern exponentially)",
            path, what, plus, PLUS_MAX);
    if (strchr(re, '{'))
        return q3r_fail(err, Q3R_EFORMAT,
                        "%s: %s '%s' has a regex interval ({m,n}), which q3r does not accept (POSIX regcomp "
                        "expands it: a short pattern can take minutes)",
                        path, what, re);
    return Q3R_OK;
}

/* A rank: an integer in [1, INT_MAX]. */
static int is_rank(double v) { return v >= 1 && v <= INT_MAX && v == floor(v); }

static q3r_status check_config(const q3r_json *c, const char *path, q3r_error *err) {
    if (c->type != Q3R_JSON_OBJECT) return q3r_fail(err, Q3R_EFORMAT, "%s: not a JSON object", path);
    for (size_t i = 0; i < c->count; i++) {
        const q3r_json *v = &c->items[i];
        if (in_list(v->key, READ_KEYS, sizeof READ_KEYS / sizeof *READ_KEYS) ||
            in_list(v->key, FREE_KEYS, sizeof FREE_KEYS / sizeof *FREE_KEYS))
            continue;
        if (in_list(v->key, DEFAULT_KEYS, sizeof DEFAULT_KEYS / sizeof *DEFAULT_KEYS)) {
            if (!is_default(v))
                return q3r_fail(err, Q3R_EFORMAT,
                                "%s: '%s' is set; q3r reads plain LoRA adapters only (it must be false, "
                                "\"none\", null or empty)",
                                path, v->key);
            continue;
        }
        return q3r_fail(err, Q3R_EFORMAT, "%s: unknown key '%s' (not a PEFT LoRA config key)", path, v->key);
    }
    const q3r_json *t = q3r_json_find(c, "peft_type");
    if (!t || t->type != Q3R_JSON_STRING)
        return q3r_fail(err, Q3R_EFORMAT, "%s: key 'peft_type' missing or not a string", path);
    if (strcmp(t->text, "LORA"))
        return q3r_fail(err, Q3R_EFORMAT, "%s: peft_type '%s' is not LORA", path, t->text);
    const q3r_json *r = q3r_json_find(c, "r"), *al = q3r_json_find(c, "lora_alpha");
    /* ranks become ints: a value past INT_MAX (1e10) would not convert */
    if (!r || r->type != Q3R_JSON_NUMBER || !is_rank(r->number))
        return q3r_fail(err, Q3R_EFORMAT, "%s: key 'r' missing or not an integer in [1, %d]", path, INT_MAX);
    if (!al || al->type != Q3R_JSON_NUMBER || !(al->number > 0) || !isfinite(al->number))
        return q3r_fail(err, Q3R_EFORMAT, "%s: key 'lora_alpha' missing or not a positive finite number",
                        path);
    const q3r_json *tm = q3r_json_find(c, "target_modules");
    int ok = tm && (tm->type == Q3R_JSON_STRING || tm->type == Q3R_JSON_ARRAY);
    for (size_t i = 0; ok && tm->type == Q3R_JSON_ARRAY && i < tm->count; i++)
        ok = tm->items[i].type == Q3R_JSON_STRING;
    if (!ok)
        return q3r_fail(err, Q3R_EFORMAT, "%s: key 'target_modules' missing or not a list of names", path);
    q3r_status s;
    if (tm->type == Q3R_JSON_STRING && (s = check_regex(tm->text, path, "the regex 'target_modules'", err)))
        return s;
    static const char *const patterns[] = {"rank_pattern", "alpha_pattern"};
    for (int p = 0; p < 2; p++) {
        const q3r_json *o = q3r_json_find(c, patterns[p]);
        if (!o || o->type == Q3R_JSON_NULL) continue;
        if (o->type != Q3R_JSON_OBJECT)
            return q3r_fail(err, Q3R_EFORMAT, "%s: key '%s' is not an object", path, patterns[p]);
        for (size_t i = 0; i < o->count; i++) {
            const q3r_json *v = &o->items[i];
            if ((s = check_regex(v->key, path, p == 0 ? "a rank_pattern key" : "an alpha_pattern key", err)))
                return s;
            if (p == 0 && (v->type != Q3R_JSON_NUMBER || !is_rank(v->number)))
                return q3r_fail(err, Q3R_EFORMAT, "%s: rank_pattern['%s'] is not an integer in [1, %d]", path,
                                v->key, INT_MAX);
            if (p == 1 && (v->type != Q3R_JSON_NUMBER || !(v->number > 0) || !isfinite(v->number)))
                return q3r_fail(err, Q3R_EFORMAT, "%s: alpha_pattern['%s'] is not a positive finite number",
                                path, v->key);
        }
    }
    const q3r_json *ms = q3r_json_find(c, "modules_to_save");
    ok = !ms || ms->type == Q3R_JSON_NULL || ms->type == Q3R_JSON_ARRAY;
    for (size_t i = 0; ok && ms && ms->type == Q3R_JSON_ARRAY && i < ms->count; i++)
        ok = ms->items[i].type == Q3R_JSON_STRING;
    if (!ok)
        return q3r_fail(err, Q3R_EFORMAT, "%s: key 'modules_to_save' is not null or a list of names", path);
    const q3r_json *rs = q3r_json_find(c, "use_rslora");
    if (rs && rs->type != Q3R_JSON_BOOL && rs->type != Q3R_JSON_NULL)
        return q3r_fail(err, Q3R_EFORMAT, "%s: key 'use_rslora' is not true or false", path);
    return Q3R_OK;
}

static char *read_text_file(const char *path, q3r_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        q3r_fail(err, Q3R_EIO, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    q3r_text t;
    q3r_text_init(&t);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf - 1, f)) > 0) {
        buf[n] = 0;
        if (memchr(buf, 0, n)) {
            fclose(f);
            q3r_text_free(&t);
            q3r_fail(err, Q3R_EFORMAT, "%s: not a text file", path);
            return NULL;
        }
        q3r_text_add(&t, buf);
    }
    int bad = ferror(f);
    fclose(f);
    if (bad || t.failed) {
        q3r_text_free(&t);
        q3r_fail(err, Q3R_EIO, "cannot read %s", path);
        return NULL;
    }
    return t.buf ? t.buf : strdup("");
}

/* "base_model.model.<module>.lora_X.weight" -> module (malloc'd) and X; NULL for other names. */
static char *module_of(const char *name, char *which) {
    const size_t p = strlen(PREFIX), n = strlen(name), s = strlen(".lora_A.weight");
    if (n <= p + s || strncmp(name, PREFIX, p)) return NULL;
    const char *tail = name + n - s;
    if (strcmp(tail, ".lora_A.weight") && strcmp(tail, ".lora_B.weight")) return NULL;
    *which = tail[6];
    char *m = malloc(n - p - s + 1);
    if (m) {
        memcpy(m, name + p, n - p - s);
        m[n - p - s] = 0;
    }
    return m;
}

/* Whether "base_model.model.<module>.<param>" is a tensor of a module in modules_to_save (PEFT's
 * rule: the module's name is an entry or ends in "." + an entry). */
static int is_saved(const q3r_json *ms, const char *name) {
    const size_t p = strlen(PREFIX);
    if (!ms || ms->type != Q3R_JSON_ARRAY || strncmp(name, PREFIX, p)) return 0;
    char *mod = saved_module(name + p);
    int hit = 0;
    for (size_t i = 0; mod && i < ms->count && !hit; i++) {
        const char *key = ms->items[i].text;
        const size_t n = strlen(mod), k = strlen(key);
        hit = !strcmp(mod, key) || (n > k && mod[n - k - 1] == '.' && !strcmp(mod + n - k, key));
    }
    free(mod);
    return hit;
}

/* A saved module's tensor, as F32 under its name in the base. */
static q3r_status add_saved(q3r_adapter *a, const q3r_tensor *x, const char *path, q3r_error *err) {
    if (!q3r_dtype_is_float(x->dtype))
        return q3r_fail(err, Q3R_EFORMAT, "%s: tensor '%s' of modules_to_save is %s, not floating point",
                        path, x->name, q3r_dtype_name(x->dtype));
    const int64_t n = q3r_tensor_numel(x);
    float *f = q3r_alloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    if (!f) return q3r_fail(err, Q3R_ENOMEM, "%s: out of memory", path);
    q3r_status s = q3r_convert_to_f32(x->data, x->dtype, (size_t)n, f, err);
    if (s) q3r_fail_context(err, "%s: tensor '%s'", path, x->name);
    else s = q3r_tensor_list_add(&a->saved, x->name + strlen(PREFIX), Q3R_F32, x->ndim, x->shape, f, err);
    q3r_free(f);
    return s;
}

q3r_status q3r_adapter_read(const char *dir, q3r_adapter *a, q3r_error *err) {
    q3r_adapter_init(a);
    char *cfg_path = q3r_path_join(dir, "adapter_config.json"),
         *st_path = q3r_path_join(dir, "adapter_model.safetensors");
    char *text = NULL;
    q3r_json c = {0};
    q3r_tensor_list l;
    q3r_tensor_list_init(&l);
    q3r_status s = Q3R_OK;
    if (!cfg_path || !st_path) s = q3r_fail(err, Q3R_ENOMEM, "adapter %s: out of memory", dir);
    if (!s && !(text = read_text_file(cfg_path, err))) s = err ? err->code : Q3R_EIO;
    if (!s && (s = q3r_json_parse(text, strlen(text), &c, err))) q3r_fail_context(err, "%s", cfg_path);
    if (!s) s = check_config(&c, cfg_path, err);
    char *md = NULL;
    if (!s) s = q3r_safetensors_read(st_path, &l, &md, err);
    if (!s && md) { /* q3r's own key in the header metadata: the class split of a saved head */
        q3r_json mj = {0};
        if (!q3r_json_parse(md, strlen(md), &mj, NULL)) {
            const q3r_json *cl = q3r_json_find(&mj, "q3r.data.classes");
            if (cl && cl->type == Q3R_JSON_STRING && !(a->classes = strdup(cl->text)))
                s = q3r_fail(err, Q3R_ENOMEM, "adapter %s: out of memory", dir);
        }
        q3r_json_free(&mj);
    }
    free(md);
    const q3r_json *ms = s ? NULL : q3r_json_find(&c, "modules_to_save");
    const q3r_json *tm = s ? NULL : q3r_json_find(&c, "target_modules");
    const q3r_json *rp = s ? NULL : q3r_json_find(&c, "rank_pattern"),
                   *ap = s ? NULL : q3r_json_find(&c, "alpha_pattern");
    if (!s) {
        const q3r_json *rs = q3r_json_find(&c, "use_rslora"),
                       *bm = q3r_json_find(&c, "base_model_name_or_path"),
                       *tt = q3r_json_find(&c, "task_type");
        a->use_rslora = rs && rs->type == Q3R_JSON_BOOL && rs->boolean;
        if (bm && bm->type == Q3R_JSON_STRING) a->base_model = strdup(bm->text);
        if (tt && tt->type == Q3R_JSON_STRING) a->task_type = strdup(tt->text);
    }
    const double r0 = s ? 0 : q3r_json_find(&c, "r")->number,
                 a0 = s ? 0 : q3r_json_find(&c, "lora_alpha")->number;
    /* every lora_A with its lora_B, shapes as the config says */
    for (size_t i = 0; i < l.count && !s; i++) {
        char which;
        char *module = module_of(l.items[i].name, &which);
        if (!module && is_saved(ms, l.items[i].name)) {
            s = add_saved(a, &l.items[i], st_path, err);
            continue;
        }
        if (!module) {
            s = q3r_fail(err, Q3R_EFORMAT,
                         "%s: tensor '%s' is not a LoRA factor (%s<module>.lora_A/B.weight) nor of a "
                         "module in modules_to_save",
                         st_path, l.items[i].name, PREFIX);
            break;
        }
        if (which == 'B') { /* checked with its A */
            free(module);
            continue;
        }
        q3r_text nb;
        q3r_text_init(&nb);
        q3r_text_addf(&nb, "%s%s.lora_B.weight", PREFIX, module);
        const q3r_tensor *A = &l.items[i], *B = q3r_tensor_list_find(&l, q3r_text_str(&nb));
        const int rank = (int)pattern_value(rp, module, r0);
        const double alpha = pattern_value(ap, module, a0);
        if (!B) s = q3r_fail(err, Q3R_EFORMAT, "%s: '%s' has no '%s'", st_path, A->name, q3r_text_str(&nb));
        else if (A->dtype != Q3R_F32 || B->dtype != Q3R_F32 || A->ndim != 2 || B->ndim != 2)
            s = q3r_fail(err, Q3R_EFORMAT, "%s: the factors of %s must be 2-D F32", st_path, module);
        else if (A->shape[0] != rank || B->shape[1] != rank)
            s = q3r_fail(err, Q3R_EFORMAT,
                         "%s: module %s has rank %lld in its tensors, its config says %d (r / rank_pattern)",
                         cfg_path, module, (long long)A->shape[0], rank);
        else if (!target_matches(tm, module))
            s = q3r_fail(err, Q3R_EFORMAT, "%s: module %s has factors but is not in target_modules", cfg_path,
                         module);
        else
            s = q3r_adapter_add(a, module, (int)B->shape[0], (int)A->shape[1], rank, alpha, A->data, B->data,
                                err);
        if (s && err && !strstr(err->msg, dir)) q3r_fail_context(err, "%s", dir);
        q3r_text_free(&nb);
        free(module);
    }
    /* every lora_B has its lora_A */
    for (size_t i = 0; i < l.count && !s; i++) {
        char which;
        char *module = module_of(l.items[i].name, &which);
        if (module && which == 'B' && !q3r_adapter_find(a, module))
            s = q3r_fail(err, Q3R_EFORMAT, "%s: '%s' has no lora_A", st_path, l.items[i].name);
        free(module);
    }
    if (!s && !a->count) s = q3r_fail(err, Q3R_EFORMAT, "%s: no LoRA factors", st_path);
    q3r_tensor_list_free(&l);
    q3r_json_free(&c);
    free(text);
    free(cfg_path);
    free(st_path);
    if (s) q3r_adapter_free(a);
    return s;
}

/* ---- a model's modules ---------------------------------------------------------------------- */

/* The module (tensor name without ".weight") that holds dense matrix i, its row offset in that
 * tensor and the tensor's shape. 0, or -1 when the matrix is factored. */
static int matrix_module(q3r_model *m, int i, q3r_matrix *mx, char *module, size_t cap, int *row0, int *rows,
                         int *cols) {
    if (q3r_model_matrix(m, i, mx, NULL) || !mx->w) return -1;
    const q3r_param_info *t = q3r_model_tensor(m, mx->tensor);
    const size_t len = strlen(t->name);
    const size_t keep = len > 7 && !strcmp(t->name + len - 7, ".weight") ? len - 7 : len;
    snprintf(module, cap, "%.*s", (int)keep, t->name);
    *row0 = (int)((mx->w - (q3r_model_params(m) + t->offset)) / mx->cols);
    *rows = (int)t->shape[0];
    *cols = (int)t->shape[1];
    return 0;
}

q3r_status q3r_adapter_merge(q3r_model *m, const q3r_adapter *a, q3r_error *err) {
    const int nm = q3r_model_num_matrices(m);
    char module[256];
    /* check: every module is the weight of some dense matrices of the model, of its shape */
    for (int k = 0; k < a->count; k++) {
        const q3r_lora *l = &a->items[k];
        int found = 0;
        for (int i = 0; i < nm; i++) {
            q3r_matrix mx;
            int row0, rows, cols;
            if (matrix_module(m, i, &mx, module, sizeof module, &row0, &rows, &cols) ||
                strcmp(module, l->module))
                continue;
            if (rows != l->rows || cols != l->cols)
                return q3r_fail(err, Q3R_EINVAL,
                                "adapter module %s is %d x %d, the model's weight is %d x %d", l->module,
                                l->rows, l->cols, rows, cols);
            found = 1;
        }
        if (!found)
            return q3r_fail(
                err, Q3R_EINVAL,
                "adapter module %s names no dense weight matrix of this %s model (a target module is "
                "the weight of a matrix, e.g. blocks.0.attn.qkv)",
                l->module, q3r_model_family_name(m));
    }
    for (size_t k = 0; k < a->saved.count; k++) { /* modules_to_save: the base's tensors, same shapes */
        const q3r_tensor *x = &a->saved.items[k];
        const q3r_param_info *p = q3r_model_find(m, x->name);
        if (!p)
            return q3r_fail(err, Q3R_EINVAL,
                            "adapter: saved tensor %s (modules_to_save) is not in this %s model", x->name,
                            q3r_model_family_name(m));
        int same = p->ndim == x->ndim;
        for (int d = 0; same && d < p->ndim; d++) same = p->shape[d] == x->shape[d];
        if (!same)
            return q3r_fail(err, Q3R_EINVAL,
                            "adapter: saved tensor %s (modules_to_save) has %lld entries in %d dims, the "
                            "model's %lld in %d",
                            x->name, (long long)q3r_tensor_numel(x), x->ndim, (long long)q3r_param_numel(p),
                            p->ndim);
    }
    for (size_t k = 0; k < a->saved.count; k++) {
        const q3r_tensor *x = &a->saved.items[k];
        const q3r_param_info *p = q3r_model_find(m, x->name);
        memcpy(q3r_model_params(m) + p->offset, x->data, sizeof(float) * (size_t)q3r_param_numel(p));
    }
    /* W[row0 + j, :] += s B[row0 + j, :] A for each matrix's rows of its module */
    for (int k = 0; k < a->count; k++) {
        const q3r_lora *l = &a->items[k];
        const float s = (float)q3r_lora_scale(a, l);
        for (int i = 0; i < nm; i++) {
            q3r_matrix mx;
            int row0, rows, cols;
            if (matrix_module(m, i, &mx, module, sizeof module, &row0, &rows, &cols) ||
                strcmp(module, l->module))
                continue;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, mx.rows, mx.cols, l->rank, s,
                        l->B + (size_t)row0 * l->rank, l->rank, l->A, l->cols, 1.0f, mx.w, mx.cols);
        }
    }
    return Q3R_OK;
}

/* The index of m's classifier head matrix, or -1; its name and rows. */
static int head_matrix(const q3r_model *m, const char **name, int *rows) {
    const int i = q3r_model_find_kind(m, Q3R_MAT_HEAD);
    if (i >= 0) q3r_model_matrix_shape(m, i, name, NULL, rows, NULL, NULL);
    return i;
}

q3r_status q3r_adapter_save_head(q3r_adapter *a, q3r_model *m, const char *classes, q3r_error *err) {
    const char *head = NULL;
    int rows;
    if (head_matrix(m, &head, &rows) < 0)
        return q3r_fail(err, Q3R_EINVAL, "adapter: this %s model has no classifier head to save",
                        q3r_model_family_name(m));
    const size_t hl = strlen(head);
    q3r_status s = Q3R_OK;
    for (int i = 0; i < q3r_model_num_tensors(m) && !s; i++) {
        const q3r_param_info *p = q3r_model_tensor(m, i);
        if (strncmp(p->name, head, hl) || p->name[hl] != '.') continue;
        s = q3r_tensor_list_add(&a->saved, p->name, Q3R_F32, p->ndim, p->shape,
                                q3r_model_params(m) + p->offset, err);
    }
    free(a->classes);
    a->classes = NULL;
    if (!s && classes && *classes && !(a->classes = strdup(classes)))
        s = q3r_fail(err, Q3R_ENOMEM, "adapter: out of memory");
    return s;
}

q3r_status q3r_adapter_apply(q3r_model **m, q3r_meta *meta, const q3r_adapter *a, int max_batch,
                             q3r_error *err) {
    const char *head = NULL;
    int rows = 0;
    if (head_matrix(*m, &head, &rows) >= 0) { /* a saved head of another size: a fresh one of that size */
        char name[256];
        snprintf(name, sizeof name, "%s.weight", head);
        const q3r_tensor *x = q3r_tensor_list_find(&a->saved, name);
        if (x && x->ndim == 2 && x->shape[0] != rows) {
            q3r_model *nm = NULL;
            q3r_status s = q3r_model_new_head(*m, (int)x->shape[0], 0, max_batch, &nm, err);
            if (s)
                return q3r_fail_context(err, "adapter: the saved head of %lld classes",
                                        (long long)x->shape[0]);
            q3r_model_free(*m);
            *m = nm;
        }
    }
    q3r_status s = q3r_adapter_merge(*m, a, err);
    if (!s && meta && a->classes) s = q3r_meta_set(meta, "data.classes", a->classes, err);
    return s;
}

/* ---- packing: matrices' factors into modules ------------------------------------------------- */

/* Fills block `matrix`'s factors, B (rows x rank, leading dimension ldb) and A (rank x cols,
 * leading dimension lda), so that s B A is that matrix's update. */
typedef q3r_status (*block_fill)(void *ctx, int matrix, int rank, float *B, int ldb, float *A, int lda,
                                 q3r_error *err);

/* One module per weight tensor that holds selected matrices, in matrix order, each of rank
 * (blocks) x rank: A the blocks' A stacked, B block-diagonal (block j's rows of the tensor, its
 * columns j rank ..), alpha such that the module's scale is the blocks' own s. */
static q3r_status pack_modules(q3r_model *m, const uint8_t *sel, int rank, double scale, int use_rslora,
                               block_fill fill, void *ctx, q3r_adapter *out, const char *what,
                               q3r_error *err) {
    const int nm = q3r_model_num_matrices(m);
    q3r_status s = Q3R_OK;
    char module[256];
    for (int i = 0; i < nm && !s; i++) {
        q3r_matrix mb;
        int row0, rows, cols;
        if (!sel[i]) continue;
        if (matrix_module(m, i, &mb, module, sizeof module, &row0, &rows, &cols)) {
            s = q3r_fail(err, Q3R_EINVAL, "%s: matrix %s is factored; the model must be dense", what,
                         mb.name);
            break;
        }
        if (q3r_adapter_find(out, module)) continue; /* filled with an earlier block */
        /* the selected blocks of this module */
        int blocks[8], nb = 0;
        for (int j = i; j < nm && nb < 8; j++) {
            q3r_matrix x;
            char mj[256];
            int r0, rr, cc;
            if (sel[j] && !matrix_module(m, j, &x, mj, sizeof mj, &r0, &rr, &cc) && !strcmp(mj, module))
                blocks[nb++] = j;
        }
        const int R = nb * rank;
        float *A = q3r_calloc(sizeof(float) * (size_t)R * cols),
              *B = q3r_calloc(sizeof(float) * (size_t)rows * R);
        if (!A || !B) s = q3r_fail(err, Q3R_ENOMEM, "%s: out of memory", what);
        for (int b = 0; b < nb && !s; b++) {
            q3r_matrix xb;
            int r0, rr, cc;
            matrix_module(m, blocks[b], &xb, module, sizeof module, &r0, &rr, &cc);
            s = fill(ctx, blocks[b], rank, B + (size_t)r0 * R + (size_t)b * rank, R,
                     A + (size_t)b * rank * cols, cols, err);
        }
        /* one module of rank nb r with the blocks' own scale: alpha' / (nb r) = alpha / r */
        const double am = use_rslora ? scale * sqrt((double)R) : scale * R;
        if (!s) s = q3r_adapter_add(out, module, rows, cols, R, am, A, B, err);
        q3r_free(A);
        q3r_free(B);
    }
    return s;
}

/* ---- extraction ------------------------------------------------------------------------------ */

typedef struct {
    q3r_model *base, *tuned;
    double root; /* sqrt(s) */
} extract_ctx;

/* The best rank-r factors of tuned - base by a double-precision SVD, sqrt(S) on each side / sqrt(s). */
static q3r_status extract_fill(void *vctx, int matrix, int rank, float *B, int ldb, float *A, int lda,
                               q3r_error *err) {
    extract_ctx *x = vctx;
    q3r_matrix xb, xt;
    q3r_model_matrix(x->base, matrix, &xb, NULL);
    if (q3r_model_matrix(x->tuned, matrix, &xt, NULL) || !xt.w)
        return q3r_fail(err, Q3R_EINVAL, "adapter extract: matrix %s is factored; both models must be dense",
                        xb.name);
    const int m = xb.rows, n = xb.cols, k = m < n ? m : n;
    if (rank > k)
        return q3r_fail(err, Q3R_EINVAL, "adapter extract: rank %d is above min(rows, cols) = %d of %s", rank,
                        k, xb.name);
    q3r_status s = Q3R_OK;
    float *D = malloc(sizeof(float) * (size_t)m * n);
    double *U = malloc(sizeof(double) * (size_t)m * k), *S = malloc(sizeof(double) * (size_t)k),
           *VT = malloc(sizeof(double) * (size_t)k * n);
    if (!D || !U || !S || !VT) s = q3r_fail(err, Q3R_ENOMEM, "adapter extract: out of memory");
    for (size_t e = 0; !s && e < (size_t)m * n; e++) D[e] = xt.w[e] - xb.w[e];
    if (!s && (s = q3r_svd_thin(D, m, n, n, U, S, VT, err)))
        q3r_fail_context(err, "adapter extract %s", xb.name);
    for (int j = 0; !s && j < rank; j++) {
        const double sq = sqrt(S[j]) / x->root;
        for (int r = 0; r < m; r++) B[(size_t)r * ldb + j] = (float)(U[(size_t)r * k + j] * sq);
        for (int c = 0; c < n; c++) A[(size_t)j * lda + c] = (float)(sq * VT[(size_t)j * n + c]);
    }
    free(D);
    free(U);
    free(S);
    free(VT);
    return s;
}

q3r_status q3r_adapter_extract(q3r_model *base, q3r_model *tuned, const char *targets, int rank, double alpha,
                               int use_rslora, q3r_adapter *out, q3r_error *err) {
    q3r_adapter_init(out);
    out->use_rslora = use_rslora;
    if (rank < 1) return q3r_fail(err, Q3R_EINVAL, "adapter extract: rank %d < 1", rank);
    if (!(alpha > 0)) return q3r_fail(err, Q3R_EINVAL, "adapter extract: alpha %g must be > 0", alpha);
    const int nm = q3r_model_num_matrices(base);
    if (strcmp(q3r_model_family_name(base), q3r_model_family_name(tuned)) ||
        q3r_model_num_matrices(tuned) != nm || q3r_model_num_params(base) != q3r_model_num_params(tuned))
        return q3r_fail(err, Q3R_EINVAL,
                        "adapter extract: the fine-tuned model is not the base's architecture");
    uint8_t *sel = calloc((size_t)nm, 1);
    if (!sel) return q3r_fail(err, Q3R_ENOMEM, "adapter extract: out of memory");
    q3r_status s = q3r_model_select(base, targets, sel, err);
    const double scale = use_rslora ? alpha / sqrt((double)rank) : alpha / (double)rank;
    extract_ctx ctx = {.base = base, .tuned = tuned, .root = sqrt(scale)};
    if (!s)
        s = pack_modules(base, sel, rank, scale, use_rslora, extract_fill, &ctx, out, "adapter extract", err);
    free(sel);
    if (s) q3r_adapter_free(out);
    return s;
}

/* ---- a LoRA run's chains ----------------------------------------------------------------------- */

typedef struct {
    q3r_model *m;
    q3r_reparam *rp;
} chains_ctx;

static int chain_of(q3r_reparam *rp, const char *name) {
    for (int i = 0; i < q3r_reparam_count(rp); i++)
        if (!strcmp(q3r_reparam_name(rp, i), name)) return i;
    return -1;
}

static q3r_status chains_fill(void *vctx, int matrix, int rank, float *B, int ldb, float *A, int lda,
                              q3r_error *err) {
    chains_ctx *x = vctx;
    const char *name = NULL;
    q3r_model_matrix_shape(x->m, matrix, &name, NULL, NULL, NULL, NULL);
    const int c = chain_of(x->rp, name);
    int br, bc, ar, ac;
    const float *fb = c < 0 ? NULL : q3r_reparam_factor(x->rp, c, 0, &br, &bc, NULL),
                *fa = c < 0 ? NULL : q3r_reparam_factor(x->rp, c, 1, &ar, &ac, NULL);
    if (!fb || !fa || q3r_reparam_num_factors(x->rp, c) != 2 || bc != rank || ar != rank)
        return q3r_fail(err, Q3R_EINVAL, "adapter of a LoRA run: matrix %s has no rank-%d factor pair", name,
                        rank);
    for (int r = 0; r < br; r++)
        memcpy(B + (size_t)r * ldb, fb + (size_t)r * bc, sizeof(float) * (size_t)rank);
    for (int r = 0; r < rank; r++)
        memcpy(A + (size_t)r * lda, fa + (size_t)r * ac, sizeof(float) * (size_t)ac);
    return Q3R_OK;
}

q3r_status q3r_adapter_from_chains(q3r_model *m, q3r_reparam *rp, int rank, double alpha, int use_rslora,
                                   q3r_adapter *out, q3r_error *err) {
    q3r_adapter_init(out);
    out->use_rslora = use_rslora;
    if (rank < 1 || !(alpha > 0))
        return q3r_fail(err, Q3R_EINVAL, "adapter of a LoRA run: rank %d, alpha %g", rank, alpha);
    const int nm = q3r_model_num_matrices(m);
    uint8_t *sel = calloc((size_t)nm, 1);
    if (!sel) return q3r_fail(err, Q3R_ENOMEM, "adapter of a LoRA run: out of memory");
    int found = 0;
    for (int i = 0; i < nm; i++) {
        const char *name = NULL;
        q3r_model_matrix_shape(m, i, &name, NULL, NULL, NULL, NULL);
        if (name && chain_of(rp, name) >= 0) sel[i] = 1, found++;
    }
    q3r_status s =
        found == q3r_reparam_count(rp)
            ? Q3R_OK
            : q3r_fail(err, Q3R_EINVAL, "adapter of a LoRA run: %d of %d chains name a matrix of the model",
                       found, q3r_reparam_count(rp));
    const double scale = use_rslora ? alpha / sqrt((double)rank) : alpha / (double)rank;
    chains_ctx ctx = {.m = m, .rp = rp};
    if (!s)
        s = pack_modules(m, sel, rank, scale, use_rslora, chains_fill, &ctx, out, "adapter of a LoRA run",
                         err);
    free(sel);
    if (s) q3r_adapter_free(out);
    return s;
}
