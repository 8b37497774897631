/* Fuzz target: PEFT adapter directories (q3r_adapter_read). Input: adapter_config.json and
 * adapter_model.safetensors cut at FZ_CUT (fuzz_common.h); an input without the marker leaves the
 * safetensors file out. An adapter read must hold what it says: every module's factors sized
 * rank x cols and rows x rank. */
#include "q3r/adapter.h"
#include "fuzz_common.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *part[2];
    size_t len[2];
    const int n = fz_split(data, size, 2, part, len);
    fz_write("adapter_config.json", part[0], len[0], 0);
    if (n == 2) fz_write("adapter_model.safetensors", part[1], len[1], 0);
    else fz_remove("adapter_model.safetensors");
    q3r_error err = {0};
    q3r_adapter a;
    if (q3r_adapter_read(fz_dir(), &a, &err) == Q3R_OK) {
        if (a.count < 1) abort();
        for (int i = 0; i < a.count; i++) {
            const q3r_lora *l = &a.items[i];
            if (l->rows < 1 || l->cols < 1 || l->rank < 1 || !l->A || !l->B || !l->module ||
                q3r_adapter_find(&a, l->module) != l)
                abort();
            volatile float last = l->A[(size_t)l->rank * l->cols - 1] + l->B[(size_t)l->rows * l->rank - 1];
            (void)last;
            (void)q3r_lora_scale(&a, l);
        }
    } else if (!err.msg[0] || a.count) {
        abort();
    }
    q3r_adapter_free(&a);
    return 0;
}
