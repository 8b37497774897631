/* Fuzz target: safetensors files. The input is the file; q3r_safetensors_read (with the metadata as
 * text) and q3r_safetensors_read_meta (as a map) read it. What one accepts the other must too, with
 * the same tensors, and a read that fails leaves the list as it was (here: one tensor before). */
#include "q3r/io.h"
#include "fuzz_common.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fz_write("x.safetensors", data, size, 0);
    q3r_error err = {0};
    q3r_tensor_list a, b;
    q3r_tensor_list_init(&a);
    q3r_tensor_list_init(&b);
    const int64_t one = 1;
    if (q3r_tensor_list_add(&a, "before", Q3R_U8, 1, &one, NULL, &err)) abort();
    char *md = NULL;
    q3r_status s1 = q3r_safetensors_read(path, &a, &md, &err);
    if (s1 && (a.count != 1 || md || !err.msg[0])) abort();
    q3r_meta meta;
    q3r_meta_init(&meta);
    q3r_status s2 = q3r_safetensors_read_meta(path, &b, &meta, &err);
    if ((s1 == Q3R_OK) != (s2 == Q3R_OK) && s1 != Q3R_ENOMEM && s2 != Q3R_ENOMEM) abort();
    if (!s1 && !s2) {
        if (a.count != b.count + 1 || (!md && meta.count)) abort();
        for (size_t i = 0; i < b.count; i++) {
            const q3r_tensor *x = &a.items[i + 1], *y = &b.items[i];
            size_t bytes = (size_t)q3r_tensor_numel(x) * q3r_dtype_size(x->dtype);
            if (strcmp(x->name, y->name) || x->dtype != y->dtype || x->ndim != y->ndim ||
                (bytes && memcmp(x->data, y->data, bytes)))
                abort();
        }
    }
    q3r_meta_free(&meta);
    free(md);
    q3r_tensor_list_free(&a);
    q3r_tensor_list_free(&b);
    return 0;
}
