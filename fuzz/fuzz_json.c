/* Fuzz target: the JSON parser (q3r_json_parse) on any bytes, and what readers do with a parsed
 * tree (find, as_u64 on every number). A parsed tree must serialise (q3r_json_set_string rebuilds a
 * flat object from its members) or be refused with a message; no input may crash, leak or hit UB. */
#include "q3r/io.h"

#include <stdlib.h>
#include <string.h>

static size_t walk(const q3r_json *v, int depth) {
    size_t n = 1;
    if (v->type == Q3R_JSON_NUMBER) {
        uint64_t u;
        (void)q3r_json_as_u64(v, &u, NULL);
    }
    if (v->type == Q3R_JSON_STRING && !v->text) abort();
    for (size_t i = 0; i < v->count; i++) {
        const q3r_json *c = &v->items[i];
        if (v->type == Q3R_JSON_OBJECT && (!c->key || (v->count <= 64 && q3r_json_find(v, c->key) != c)))
            abort(); /* keys are unique, so find gives back this member (small objects: find is linear) */
        n += walk(c, depth + 1);
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    q3r_error err = {0};
    q3r_json v;
    if (q3r_json_parse((const char *)data, size, &v, &err) == Q3R_OK) {
        walk(&v, 0);
        q3r_json_free(&v);
        /* a flat object of simple values goes through the string helpers as metadata does */
        char *text = malloc(size + 1);
        if (!text) return 0;
        memcpy(text, data, size);
        text[size] = 0;
        if (strlen(text) == size) {
            char *json = strdup(text), out[64];
            if (json && q3r_json_set_string(&json, "q3r.fuzz", "v", &err) == Q3R_OK &&
                q3r_json_get_string(json, "q3r.fuzz", out, sizeof out, &err) == Q3R_OK && strcmp(out, "v"))
                abort();
            free(json);
        }
        free(text);
    } else if (!err.msg[0]) {
        abort(); /* a failure always says why */
    }
    return 0;
}
