/* Fuzz target: the metadata map (q3r_meta_parse of a NUL-terminated JSON text), its typed getters
 * on every key, and the round trip: q3r_meta_to_json of a parsed map parses back to the same map. */
#include "q3r/io.h"
#include "fuzz_common.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = fz_strdup(data, size);
    q3r_error err = {0};
    q3r_meta m;
    q3r_meta_init(&m);
    if (q3r_meta_parse(&m, text, &err) == Q3R_OK) {
        for (size_t i = 0; i < m.count; i++) {
            const char *k = m.items[i].key;
            int64_t i64;
            uint64_t u64;
            int iv, ints[4];
            double d;
            float fl[4];
            (void)q3r_meta_get_i64(&m, k, &i64, &err);
            (void)q3r_meta_get_u64(&m, k, &u64, &err);
            (void)q3r_meta_get_int(&m, k, &iv, &err);
            (void)q3r_meta_get_double(&m, k, &d, &err);
            int n = q3r_meta_list_count(&m, k);
            if (n >= 0 && n <= 4) {
                (void)q3r_meta_get_ints(&m, k, ints, n, &err);
                (void)q3r_meta_get_floats(&m, k, fl, n, &err);
            }
            if (q3r_meta_get(&m, k) != m.items[i].value) abort();
        }
        char *json = NULL;
        q3r_meta back;
        q3r_meta_init(&back);
        if (q3r_meta_to_json(&m, &json, &err) == Q3R_OK) {
            if (q3r_meta_parse(&back, json, &err) != Q3R_OK || back.count != m.count ||
                q3r_meta_first_difference(&m, &back, NULL) || q3r_meta_first_difference(&back, &m, NULL))
                abort(); /* what the map writes it reads back unchanged */
        }
        q3r_meta_free(&back);
        free(json);
    } else if (m.count || !err.msg[0]) {
        abort(); /* failure: map left empty, a message given */
    }
    q3r_meta_free(&m);
    free(text);
    return 0;
}
