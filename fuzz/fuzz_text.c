/* Fuzz target: the text corpus reader (q3r_corpus_load) and everything that reads its bytes: every
 * validation window, training batches, and the loader's position exported and imported. Input: the
 * context (1 + byte 0 % 64), the validation fraction ((byte 1 + 1) / 258) and then the file. */
#include "q3r/data.h"
#include "fuzz_common.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    const int context = 1 + data[0] % 64;
    const double frac = (data[1] + 1) / 258.0;
    const char *path = fz_write("corpus.txt", data + 2, size - 2, 0);
    q3r_error err = {0};
    q3r_corpus t;
    if (q3r_corpus_load(&t, path, frac, context, &err)) {
        if (!err.msg[0] || t.bytes) abort();
        return 0;
    }
    if (t.n != (int64_t)(size - 2) || t.train_n + t.val_n != t.n || t.train_n <= context ||
        t.val_n <= context)
        abort();
    int32_t tok[64 * 4], tgt[64 * 4];
    const int64_t nv = q3r_corpus_val_windows(&t, 0);
    for (int64_t k = 0; k < nv; k++) {
        q3r_corpus_val_window(&t, k, tok, tgt);
        for (int i = 0; i < context; i++)
            if (tok[i] < 0 || tok[i] > 255 || tgt[i] < 0 || tgt[i] > 255) abort();
    }
    q3r_corpus_loader L;
    q3r_corpus_loader_config cfg = {.batch_size = 4, .seed = data[0] ^ ((uint64_t)data[1] << 8)};
    if (q3r_corpus_loader_init(&L, &t, &cfg, &err)) abort();
    int64_t count;
    for (int step = 0; step < 3; step++) q3r_corpus_loader_next(&L, tok, tgt, &count);
    q3r_tensor_list pos;
    q3r_tensor_list_init(&pos);
    if (q3r_corpus_loader_export(&L, &pos, &err) || q3r_corpus_loader_import(&L, &pos, &err)) abort();
    q3r_tensor_list_free(&pos);
    q3r_corpus_free(&t);
    return 0;
}
