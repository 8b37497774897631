/* GPT model: whole-model gradient against central finite differences (tied and untied head,
 * dropout, label smoothing, a shorter sequence, some matrices factored), causality, scoring,
 * the parameter table and the tied head's two names, truncation (file round trip, logits of
 * the dense product, the tied head never a target), the budget's loss rule (weights restored, a
 * factored matrix at its own rank free, its errors), and config / metadata errors naming the
 * key. (The PyTorch oracle is test_gpt_torch.py.) */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "q3r/gpt.h"
#include "q3r/train.h"
#include "q3r/truncate.h"

static const q3r_gpt_config tiny = {8, 2, 2, 6, 16, 256, 1, 0.0f};
enum { BATCH = 3, CTX = 6 };

static int32_t tokens[BATCH * CTX], targets[BATCH * CTX];

static q3r_model *make(q3r_gpt_config cfg, const int *ranks, int max_batch, uint64_t seed, double perturb) {
    q3r_model *m = NULL;
    q3r_error err;
    CHECK_OK(q3r_gpt_create(&cfg, ranks, max_batch, &m, &err), &err);
    if (!m) return NULL;
    q3r_model_init(m, seed);
    q3r_rng r;
    q3r_rng_seed(&r, seed + 100);
    float *p = q3r_model_params(m);
    for (int i = 0; i < q3r_model_num_tensors(m); i++) {
        const q3r_param_info *t = q3r_model_tensor(m, i);
        for (int64_t j = 0; j < q3r_param_numel(t); j++)
            p[t->offset + j] += (float)(perturb * q3r_rng_normal(&r));
    }
    return m;
}

static double loss_at(q3r_model *m, int seq, float ls, int training) {
    q3r_rng r;
    q3r_rng_seed(&r, 99);
    float loss = 0;
    q3r_error err;
    /* the batch is laid out (BATCH, seq): a shorter seq uses the first BATCH * seq entries */
    q3r_batch b = {.count = BATCH, .tokens = tokens, .targets = targets, .seq_len = seq};
    CHECK_OK(q3r_model_forward(m, &b, ls, training, &r, &loss, &err), &err);
    return loss;
}

/* FD check of every tensor at 3 random entries, plus wte rows of bytes in the batch (where the
 * tied head's and the embedding's gradients meet). */
static void grad_check(const char *what, q3r_gpt_config cfg, const int *ranks, int seq, float ls) {
    q3r_model *m = make(cfg, ranks, 4, 7, 0.3);
    if (!m) return;
    q3r_error err;
    float *p = q3r_model_params(m);
    q3r_model_zero_grad(m);
    loss_at(m, seq, ls, 1);
    CHECK_OK(q3r_model_backward(m, &err), &err);
    const float *g = q3r_model_grads(m);
    const double h = 2e-3;
    q3r_rng r;
    q3r_rng_seed(&r, 3);
    int checked = 0;
    for (int i = 0; i < q3r_model_num_tensors(m); i++) {
        const q3r_param_info *t = q3r_model_tensor(m, i);
        const size_t n = (size_t)q3r_param_numel(t);
        const int wte = !strcmp(t->name, "transformer.wte.weight");
        for (int s = 0; s < (wte ? 9 : 3); s++) {
            size_t j = t->offset + q3r_rng_below(&r, n);
            if (wte && s >= 3) /* a row of a byte the batch holds */
                j = t->offset + (size_t)tokens[q3r_rng_below(&r, (uint64_t)BATCH * seq)] * cfg.width +
                    q3r_rng_below(&r, (uint64_t)cfg.width);
            const float v = p[j];
            p[j] = (float)(v + h);
            const double fp = loss_at(m, seq, ls, 1);
            p[j] = (float)(v - h);
            const double fm = loss_at(m, seq, ls, 1);
            p[j] = v;
            char msg[200];
            snprintf(msg, sizeof msg, "%s: d loss / d %s[%zu]", what, t->name, j - t->offset);
            CHECK_CLOSE(g[j], (fp - fm) / (2 * h), 2e-3, 3e-2, msg);
            checked++;
        }
    }
    CHECK(checked > 3 * 14, "%s: sampled %d entries", what, checked);
    q3r_model_free(m);
}

static void test_causal(void) {
    q3r_model *m = make(tiny, NULL, BATCH, 5, 0.3);
    if (!m) return;
    q3r_error err;
    const int V = 256, N = BATCH * CTX;
    q3r_batch b = {.count = BATCH, .tokens = tokens};
    CHECK_OK(q3r_model_forward(m, &b, 0, 0, NULL, NULL, &err), &err);
    float *before = malloc(sizeof(float) * N * V);
    memcpy(before, q3r_model_logits(m), sizeof(float) * N * V);
    for (int t = 0; t < CTX; t++) {
        int32_t tok[BATCH * CTX];
        memcpy(tok, tokens, sizeof tok);
        tok[CTX + t] = (tok[CTX + t] + 77) % V; /* sequence 1, position t */
        b.tokens = tok;
        CHECK_OK(q3r_model_forward(m, &b, 0, 0, NULL, NULL, &err), &err);
        const float *z = q3r_model_logits(m);
        int early_same = 1, late_changed = 1, others_same = 1;
        for (int s = 0; s < CTX; s++) {
            int same = !memcmp(z + (size_t)(CTX + s) * V, before + (size_t)(CTX + s) * V, sizeof(float) * V);
            if (s < t) early_same &= same;
            else late_changed &= !same;
        }
        others_same = !memcmp(z, before, sizeof(float) * CTX * V) &&
                      !memcmp(z + 2 * CTX * V, before + 2 * CTX * V, sizeof(float) * CTX * V);
        CHECK(early_same, "changing position %d changes no logit before it", t);
        CHECK(late_changed, "changing position %d changes the logits at and after it", t);
        CHECK(others_same, "changing sequence 1 leaves the other sequences' logits");
    }
    /* a shorter sequence gives the first positions' logits of the full one */
    int32_t shortt[BATCH * 4];
    for (int i = 0; i < BATCH; i++) memcpy(shortt + i * 4, tokens + i * CTX, sizeof(int32_t) * 4);
    b = (q3r_batch){.count = BATCH, .tokens = shortt, .seq_len = 4};
    CHECK_OK(q3r_model_forward(m, &b, 0, 0, NULL, NULL, &err), &err);
    double worst = 0;
    for (int i = 0; i < BATCH; i++)
        worst = fmax(worst, rel_max_err_f(q3r_model_logits(m) + (size_t)i * 4 * V,
                                          before + (size_t)i * CTX * V, (size_t)4 * V));
    CHECK(worst < 1e-5, "seq_len 4 = the first 4 positions of the full context (rel err %g)", worst);
    b.seq_len = CTX + 1;
    CHECK(q3r_model_forward(m, &b, 0, 0, NULL, NULL, &err) == Q3R_EINVAL && strstr(err.msg, "context"),
          "seq_len over the context: %s", err.msg);
    free(before);
    q3r_model_free(m);
}

static void test_score_and_table(void) {
    q3r_model *m = make(tiny, NULL, BATCH, 5, 0.0);
    if (!m) return;
    q3r_error err;
    float loss;
    q3r_batch b = {.count = BATCH, .tokens = tokens, .targets = targets, .seq_len = 5};
    CHECK_OK(q3r_model_forward(m, &b, 0, 0, NULL, &loss, &err), &err);
    CHECK(fabs(loss - log(256.0)) < 0.05, "init loss %g ~ log 256", loss);
    /* the loss: mean over all positions of an independent log-softmax */
    const float *z = q3r_model_logits(m);
    double sum = 0;
    int hits = 0;
    for (int i = 0; i < BATCH * 5; i++) {
        double mx = z[i * 256];
        int best = 0;
        for (int k = 1; k < 256; k++)
            if (z[i * 256 + k] > z[i * 256 + best]) best = k;
        mx = z[i * 256 + best];
        double se = 0;
        for (int k = 0; k < 256; k++) se += exp(z[i * 256 + k] - mx);
        sum += mx + log(se) - z[i * 256 + targets[i]];
        hits += best == targets[i];
    }
    CHECK_CLOSE(loss, sum / (BATCH * 5), 1e-6, 1e-5, "mean cross-entropy over positions");
    q3r_score s = {0};
    q3r_model_score(m, &b, loss, &s);
    CHECK(s.units == BATCH * 5 && s.correct == hits, "score: units %lld correct %lld (want %d)",
          (long long)s.units, (long long)s.correct, hits);
    CHECK_CLOSE(s.loss_sum, (double)loss * BATCH * 5, 1e-9, 1e-9, "loss_sum");
    CHECK(q3r_model_metric(m) == Q3R_METRIC_BITS_PER_BYTE, "metric bpb");
    CHECK(q3r_model_input_spec(m)->kind == Q3R_INPUT_TOKENS && q3r_model_input_spec(m)->context == CTX &&
              q3r_model_input_spec(m)->vocab == 256,
          "input spec");
    CHECK(q3r_model_find(m, "lm_head.weight") == NULL, "tied: one tensor, no lm_head.weight in the table");
    q3r_matrix mx;
    CHECK_OK(q3r_model_matrix(m, q3r_model_num_matrices(m) - 1, &mx, &err), &err);
    CHECK(!strcmp(mx.name, "lm_head") && mx.kind == Q3R_MAT_HEAD &&
              mx.w == q3r_model_params(m) + q3r_model_find(m, "transformer.wte.weight")->offset,
          "the tied head is the embedding");
    CHECK_OK(q3r_model_matrix(m, 3, &mx, &err), &err);
    CHECK(!strcmp(mx.name, "transformer.h.0.attn.c_proj") && mx.kind == Q3R_MAT_PROJ, "matrix 3: %s",
          mx.name);
    /* export: both names, the same values; import reads the embedding */
    q3r_tensor_list l;
    q3r_tensor_list_init(&l);
    CHECK_OK(q3r_model_export(m, &l, &err), &err);
    const q3r_tensor *a = q3r_tensor_list_find(&l, "transformer.wte.weight"),
                     *h = q3r_tensor_list_find(&l, "lm_head.weight");
    CHECK(a && h && l.count == (size_t)q3r_model_num_tensors(m) + 1 &&
              !memcmp(a->data, h->data, sizeof(float) * 256 * 8),
          "export writes the tied weight under both names");
    q3r_model *m2 = make(tiny, NULL, 1, 9, 0.0);
    CHECK_OK(q3r_model_import(m2, &l, &err), &err);
    CHECK(!memcmp(q3r_model_params(m2), q3r_model_params(m), sizeof(float) * q3r_model_num_params(m)),
          "import restores");
    q3r_tensor_list_free(&l);
    q3r_model_free(m2);
    /* init statistics: c_proj std 0.02 / sqrt(2 depth), others 0.02 */
    const q3r_gpt_config big = {128, 4, 4, 128, 512, 256, 1, 0.0f};
    q3r_model *g = make(big, NULL, 1, 1, 0.0);
    const char *names[] = {"transformer.h.1.mlp.c_fc.weight", "transformer.h.2.mlp.c_proj.weight",
                           "transformer.h.0.attn.c_proj.weight", "transformer.wte.weight"};
    const double want[] = {0.02, 0.02 / sqrt(8.0), 0.02 / sqrt(8.0), 0.02};
    for (int i = 0; i < 4; i++) {
        const q3r_param_info *t = q3r_model_find(g, names[i]);
        double s2 = 0;
        for (int64_t j = 0; j < q3r_param_numel(t); j++) s2 += pow(q3r_model_params(g)[t->offset + j], 2);
        const double sd = sqrt(s2 / (double)q3r_param_numel(t));
        CHECK(fabs(sd / want[i] - 1) < 0.03, "%s init std %g, want %g", names[i], sd, want[i]);
    }
    CHECK(q3r_model_params(g)[q3r_model_find(g, "transformer.ln_f.weight")->offset] == 1.0f, "ln_f 1");
    q3r_model_free(g);
    q3r_model_free(m);
}

static void test_presets(void) {
    const char *names[] = {"gpt-tiny", "gpt-small"};
    const int64_t want[] = {842496, 4870144};
    for (int i = 0; i < 2; i++) {
        q3r_meta meta;
        q3r_meta_init(&meta);
        q3r_error err;
        q3r_model *m = NULL;
        CHECK_OK(q3r_model_preset(names[i], &meta, &err), &err);
        CHECK_OK(q3r_model_from_meta(&meta, 1, &m, &err), &err);
        if (m) {
            /* closed form: V D + T D + L (12 D^2 + 13 D) + 2 D */
            printf("%s: %lld parameters\n", names[i], (long long)q3r_model_param_count(m));
            CHECK(q3r_model_param_count(m) == want[i], "%s: %lld parameters", names[i],
                  (long long)q3r_model_param_count(m));
            CHECK(!strcmp(q3r_model_family_name(m), "gpt"), "family");
        }
        q3r_model_free(m);
        q3r_meta_free(&meta);
    }
}

/* the dense model whose matrices are f's products: every dense tensor copied by name, then each
 * factored matrix of f multiplied out into d's */
static void densify(q3r_model *f, q3r_model *d) {
    for (int i = 0; i < q3r_model_num_tensors(d); i++) {
        const q3r_param_info *t = q3r_model_tensor(d, i), *u = q3r_model_find(f, t->name);
        if (u)
            memcpy(q3r_model_params(d) + t->offset, q3r_model_params(f) + u->offset,
                   sizeof(float) * (size_t)q3r_param_numel(t));
    }
    q3r_error err;
    for (int i = 0; i < q3r_model_num_matrices(f); i++) {
        q3r_matrix a, w;
        q3r_model_matrix(f, i, &a, &err);
        q3r_model_matrix(d, i, &w, &err);
        if (!a.rank) continue;
        for (int r = 0; r < a.rows; r++)
            for (int c = 0; c < a.cols; c++) {
                double s = 0;
                for (int k = 0; k < a.rank; k++) s += (double)a.a[r * a.rank + k] * a.b[k * a.cols + c];
                w.w[(size_t)r * a.cols + c] = (float)s;
            }
    }
}

static void truncate_case(q3r_gpt_config cfg, const char *targets, int expect_count) {
    q3r_error err;
    q3r_model *m = make(cfg, NULL, BATCH, 3, 0.1);
    if (!m) return;
    q3r_truncate_spec spec = {.targets = targets};
    CHECK_OK(q3r_rank_parse("3", &spec.rank, &err), &err);
    q3r_model *t = NULL;
    q3r_truncate_report rep;
    CHECK_OK(q3r_truncate(m, &spec, BATCH, &t, &rep, &err), &err);
    if (!t) {
        q3r_model_free(m);
        return;
    }
    CHECK(rep.count == expect_count && q3r_model_is_factored(t), "%s: %d matrices truncated (want %d)",
          targets, rep.count, expect_count);
    char path[512];
    tmp_path("trunc.safetensors", path, sizeof path);
    CHECK_OK(q3r_model_save(path, t, NULL, &err), &err);
    q3r_model *l = NULL;
    CHECK_OK(q3r_model_load(path, BATCH, &l, NULL, &err), &err);
    q3r_model *d = NULL;
    CHECK_OK(q3r_model_with_ranks(m, NULL, BATCH, &d, &err), &err);
    if (l && d) {
        densify(t, d);
        const size_t n = (size_t)BATCH * CTX * 256;
        q3r_batch b = {.count = BATCH, .tokens = tokens};
        float *zt = malloc(sizeof(float) * n);
        CHECK_OK(q3r_model_forward(t, &b, 0, 0, NULL, NULL, &err), &err);
        memcpy(zt, q3r_model_logits(t), sizeof(float) * n);
        CHECK_OK(q3r_model_forward(l, &b, 0, 0, NULL, NULL, &err), &err);
        CHECK(!memcmp(zt, q3r_model_logits(l), sizeof(float) * n), "%s: the file round-trips bit for bit",
              targets);
        CHECK(
            !memcmp(q3r_model_ranks(l), q3r_model_ranks(t), sizeof(int) * (size_t)q3r_model_num_matrices(t)),
            "%s: rank table restored", targets);
        CHECK_OK(q3r_model_forward(d, &b, 0, 0, NULL, NULL, &err), &err);
        const double e = rel_max_err_f(zt, q3r_model_logits(d), n);
        CHECK(e < 1e-5, "%s: logits of the factored model = the dense product's (rel err %g)", targets, e);
        free(zt);
    }
    q3r_truncate_report_free(&rep);
    q3r_model_free(d);
    q3r_model_free(l);
    q3r_model_free(t);
    q3r_model_free(m);
}

static void test_truncate(void) {
    const int L = tiny.depth;
    truncate_case(tiny, "qkv", 3 * L);
    truncate_case(tiny, "all", 6 * L);
    truncate_case(tiny, "all,head", 6 * L); /* tied: the head is silently not selected */
    q3r_gpt_config un = tiny;
    un.tie_head = 0;
    truncate_case(un, "all,head", 6 * L + 1);
    /* a tied head alone: refused, the message says why */
    q3r_error err;
    q3r_model *m = make(tiny, NULL, 1, 3, 0.0), *t = NULL;
    q3r_truncate_spec spec = {.targets = "head"};
    q3r_rank_parse("3", &spec.rank, &err);
    CHECK(q3r_truncate(m, &spec, 1, &t, NULL, &err) == Q3R_EINVAL && strstr(err.msg, "lm_head") &&
              strstr(err.msg, "tied"),
          "tied head as the only target: %s", err.msg);
    /* and it cannot be factored */
    int ranks[13] = {0};
    ranks[12] = 2;
    CHECK(q3r_model_with_ranks(m, ranks, 1, &t, &err) == Q3R_EINVAL && strstr(err.msg, "tie_head"),
          "factored tied head: %s", err.msg);
    q3r_model_free(m);
}

/* The budget's loss rule on a GPT with factored matrices: the weights come back bit for bit, a
 * factored matrix cut at its own rank costs nothing (the product is reproduced), and bad
 * arguments fail with a message. (Against torch: test_loss_rule.py.) */
static void test_loss_rule(void) {
    q3r_error err;
    int ranks[13] = {0};
    ranks[1] = 2, ranks[6 + 4] = 3;
    q3r_model *m = make(tiny, ranks, 4, 5, 0.2);
    char path[512];
    tmp_path("corpus.txt", path, sizeof path);
    FILE *f = fopen(path, "wb");
    q3r_rng r;
    q3r_rng_seed(&r, 8);
    for (int i = 0; i < 600; i++) fputc("abcdefgh "[q3r_rng_below(&r, 9)], f);
    fclose(f);
    q3r_corpus text;
    memset(&text, 0, sizeof text);
    CHECK_OK(q3r_corpus_load(&text, path, 0.1, CTX, &err), &err);
    q3r_truncate_basis *basis = NULL;
    CHECK_OK(q3r_truncate_basis_new(m, "all", NULL, &basis, &err), &err);
    if (!m || !basis) return;
    const size_t np = (size_t)q3r_model_num_params(m);
    float *before = malloc(sizeof(float) * np);
    memcpy(before, q3r_model_params(m), sizeof(float) * np);
    q3r_calib_spec c = {.text = &text, .samples = 10, .seed = 3};
    q3r_loss_table t;
    CHECK_OK(q3r_loss_sensitivity(m, basis, &c, 3, NULL, NULL, &t, &err), &err);
    CHECK(!memcmp(before, q3r_model_params(m), sizeof(float) * np), "loss rule: the weights are restored");
    CHECK(t.count == 13 && !t.increase[12] && t.samples == 10, "loss rule: the block matrices only");
    CHECK(t.max_rank[1] == 2 && t.points[1] == 2 && fabs(t.increase[1][2]) < 1e-5,
          "loss rule: factored K at its own rank 2 costs %g", t.increase[1][2]);
    CHECK(t.max_rank[10] == 3 && fabs(t.increase[10][3]) < 1e-5,
          "loss rule: factored c_fc at rank 3 costs %g", t.increase[10][3]);
    int worse = 0;
    for (int i = 0; i < 12; i++) worse |= t.increase[i][1] > 1e-4;
    CHECK(worse, "loss rule: some matrix at rank 1 costs the model");
    /* the budget under the loss rule spends no more than allowed */
    q3r_truncate_spec spec = {.targets = "all", .budget = 0.4, .basis = basis, .loss = &t};
    q3r_model *cut = NULL;
    q3r_truncate_report rep;
    CHECK_OK(q3r_truncate(m, &spec, 4, &cut, &rep, &err), &err);
    CHECK(cut && rep.targeted_after <= (int64_t)(0.4 * (double)rep.targeted_dense),
          "loss budget: spent %lld of %lld", (long long)rep.targeted_after, (long long)rep.targeted_dense);
    q3r_truncate_report_free(&rep);
    q3r_model_free(cut);
    spec.budget = 0;
    q3r_rank_parse("2", &spec.rank, &err);
    CHECK(q3r_truncate(m, &spec, 4, &cut, NULL, &err) == Q3R_EINVAL && strstr(err.msg, "budget"),
          "the loss rule without a budget: %s", err.msg);
    q3r_loss_table t2;
    CHECK(q3r_loss_sensitivity(m, basis, &c, 1, NULL, NULL, &t2, &err) == Q3R_EINVAL &&
              strstr(err.msg, "at least 2"),
          "one point: %s", err.msg);
    q3r_gpt_config deeper = tiny;
    deeper.depth = 3;
    q3r_model *other = make(deeper, NULL, 4, 5, 0.0);
    CHECK(other && q3r_loss_sensitivity(other, basis, &c, 3, NULL, NULL, &t2, &err) == Q3R_EINVAL &&
              strstr(err.msg, "13 matrices"),
          "another model's basis: %s", err.msg);
    c.samples = 100000;
    CHECK(q3r_loss_sensitivity(m, basis, &c, 3, NULL, NULL, &t2, &err) == Q3R_EINVAL &&
              strstr(err.msg, "100000"),
          "too many samples: %s", err.msg);
    q3r_model_free(other);
    q3r_loss_table_free(&t);
    q3r_truncate_basis_free(basis);
    q3r_corpus_free(&text);
    free(before);
    q3r_model_free(m);
}

static void meta_error(const char *key, const char *value, const char *want) {
    q3r_meta meta;
    q3r_meta_init(&meta);
    q3r_error err;
    CHECK_OK(q3r_gpt_config_to_meta(&tiny, "t", &meta, &err), &err);
    if (value) q3r_meta_set(&meta, key, value, &err);
    else q3r_meta_remove(&meta, key);
    q3r_model *m = NULL;
    q3r_status s = q3r_model_from_meta(&meta, 1, &m, &err);
    CHECK(s != Q3R_OK && m == NULL && strstr(err.msg, want), "%s = %s: %s", key, value ? value : "(absent)",
          s ? err.msg : "accepted");
    q3r_model_free(m);
    q3r_meta_free(&meta);
}

static void test_config_errors(void) {
    meta_error("model.heads", "3", "model.heads");
    meta_error("model.width", "0", "model.width");
    meta_error("model.width", NULL, "model.width");
    meta_error("model.depth", "-1", "model.depth");
    meta_error("model.depth", "100000", "model.depth"); /* past Q3R_TF_MAX_DEPTH: counts stay in int */
    meta_error("model.context", "0", "model.context");
    meta_error("model.context", "ten", "model.context");
    meta_error("model.mlp_hidden", "0", "model.mlp_hidden");
    meta_error("model.vocab", "100", "model.vocab");
    meta_error("model.tie_head", "2", "model.tie_head");
    meta_error("model.dropout", "1.5", "model.dropout");
    meta_error("model.family", "gpt2", "model.family");
    meta_error("model.ranks", "1,2", "model.ranks");
    meta_error("model.ranks", "0,0,0,0,0,0,0,0,0,0,0,0,2", "lm_head");
    meta_error("model.ranks", "9,0,0,0,0,0,0,0,0,0,0,0,0", "transformer.h.0.attn.q");
    /* optional keys take nanoGPT's defaults */
    q3r_meta meta;
    q3r_meta_init(&meta);
    q3r_error err;
    q3r_meta_set(&meta, "model.family", "gpt", &err);
    q3r_meta_set(&meta, "model.width", "8", &err);
    q3r_meta_set(&meta, "model.depth", "1", &err);
    q3r_meta_set(&meta, "model.heads", "2", &err);
    q3r_meta_set(&meta, "model.context", "4", &err);
    q3r_gpt_config c;
    CHECK_OK(q3r_gpt_config_from_meta(&meta, &c, &err), &err);
    CHECK(c.mlp_hidden == 32 && c.vocab == 256 && c.tie_head == 1 && c.dropout == 0.0f, "defaults");
    q3r_meta_free(&meta);
    q3r_gpt_config p;
    CHECK(q3r_gpt_preset("gpt-huge", &p, &err) == Q3R_EINVAL && strstr(err.msg, "gpt-huge"),
          "unknown preset");
    /* bad batches */
    q3r_model *m = make(tiny, NULL, 2, 1, 0.0);
    int32_t bad[2 * CTX];
    memcpy(bad, tokens, sizeof bad);
    bad[5] = 256;
    q3r_batch b = {.count = 2, .tokens = bad};
    CHECK(q3r_model_forward(m, &b, 0, 0, NULL, NULL, &err) == Q3R_EINVAL && strstr(err.msg, "token 256"),
          "%s", err.msg);
    b = (q3r_batch){.count = 3, .tokens = tokens};
    CHECK(q3r_model_forward(m, &b, 0, 0, NULL, NULL, &err) == Q3R_EINVAL && strstr(err.msg, "max_batch"),
          "%s", err.msg);
    q3r_model_free(m);
}

/* A model file's config must fit its tensors before the model is built (fuzz/corpus/model/
 * regress-config-past-tensors: a few bytes of metadata asked q3r_model_load for GBs). The bound is
 * a lower one: every real model, dense and factored, every preset, passes at its own size. */
static void test_file_size(void) {
    q3r_error err;
    int ranks[13] = {0}, head[13] = {0};
    ranks[0] = head[0] = 2, ranks[10] = head[10] = 3, head[12] = 4; /* a tied head is never factored */
    q3r_gpt_config un = tiny;
    un.tie_head = 0;
    q3r_model *ms[3] = {make(tiny, NULL, 1, 1, 0.0), make(tiny, ranks, 1, 1, 0.0), make(un, head, 1, 1, 0.0)};
    for (int i = 0; i < 3; i++) {
        if (!ms[i]) continue;
        q3r_meta meta;
        q3r_meta_init(&meta);
        CHECK_OK(q3r_model_config_to_meta(ms[i], &meta, &err), &err);
        const uint64_t n = (uint64_t)q3r_model_param_count(ms[i]);
        CHECK_OK(q3r_model_meta_check_size(&meta, n, &err), &err);
        q3r_meta_set(&meta, "model.depth", "20000", &err); /* dense: ~ 20000 x 900 parameters */
        q3r_meta_remove(&meta, "model.ranks");
        CHECK(q3r_model_meta_check_size(&meta, n, &err) == Q3R_EFORMAT && strstr(err.msg, "far more than"),
              "model %d, 20000 blocks: %s", i, err.msg);
        q3r_meta_free(&meta);
    }
    for (int i = 0; q3r_model_preset_name(i); i++) {
        q3r_meta meta;
        q3r_meta_init(&meta);
        q3r_model *m = NULL;
        CHECK_OK(q3r_model_preset(q3r_model_preset_name(i), &meta, &err), &err);
        CHECK_OK(q3r_model_from_meta(&meta, 1, &m, &err), &err);
        if (m) CHECK_OK(q3r_model_meta_check_size(&meta, (uint64_t)q3r_model_param_count(m), &err), &err);
        q3r_model_free(m);
        q3r_meta_free(&meta);
    }
    /* a file whose metadata asks for 20000 blocks of the tensors of 2 */
    char path[512], big[512];
    tmp_path("size.safetensors", path, sizeof path);
    tmp_path("size-20000.safetensors", big, sizeof big);
    CHECK_OK(q3r_model_save(path, ms[0], NULL, &err), &err);
    q3r_tensor_list l;
    q3r_tensor_list_init(&l);
    q3r_meta meta;
    q3r_meta_init(&meta);
    CHECK_OK(q3r_safetensors_read_meta(path, &l, &meta, &err), &err);
    CHECK_OK(q3r_meta_set(&meta, "model.depth", "20000", &err), &err);
    CHECK_OK(q3r_safetensors_write_meta(big, &l, &meta, &err), &err);
    q3r_model *m = NULL;
    CHECK(q3r_model_load(big, 1, &m, NULL, &err) == Q3R_EFORMAT && !m && strstr(err.msg, big) &&
              strstr(err.msg, "far more than"),
          "config past the tensors: %s", err.msg);
    q3r_tensor_list_free(&l);
    q3r_meta_free(&meta);
    for (int i = 0; i < 3; i++) q3r_model_free(ms[i]);
}

int main(void) {
    test_tmpdir("test_gpt");
    q3r_rng r;
    q3r_rng_seed(&r, 42);
    for (int i = 0; i < BATCH * CTX; i++) {
        tokens[i] = (int32_t)q3r_rng_below(&r, 256);
        targets[i] = (int32_t)q3r_rng_below(&r, 256);
    }
    q3r_set_threads(2);
    grad_check("dense, tied", tiny, NULL, CTX, 0.0f);
    q3r_gpt_config un = tiny;
    un.tie_head = 0;
    un.dropout = 0.2f;
    grad_check("dense, untied, dropout 0.2, ls 0.1, seq 4", un, NULL, 4, 0.1f);
    /* factored: block 0's Q (c_attn split), block 1's c_fc, block 0's mlp.c_proj, the head */
    int ranks[13] = {0};
    ranks[0] = 2, ranks[6 + 4] = 3, ranks[5] = 2;
    grad_check("factored, tied", tiny, ranks, CTX, 0.0f);
    un.dropout = 0.0f;
    ranks[12] = 4;
    grad_check("factored, untied, factored head", un, ranks, 5, 0.0f);
    test_causal();
    test_score_and_table();
    test_presets();
    test_truncate();
    test_loss_rule();
    test_config_errors();
    test_file_size();
    return check_report("test_gpt");
}
