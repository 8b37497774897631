/* Fuzz target: CIFAR-10/100 binary batches (q3r_dataset_load_cifar10 / _cifar100, a directory).
 * Input: one options byte, then the directory's files cut at FZ_CUT (fuzz_common.h): bits 0..1 of the
 * options choose the reader (0: CIFAR-10 test_batch.bin, 1: CIFAR-10 data_batch_1..5.bin, 2: CIFAR-100
 * test.bin, 3: CIFAR-100 train.bin), bit 2 the fine CIFAR-100 labels. A file whose part is missing
 * from the input is absent from the directory. */
#include "q3r/data.h"
#include "fuzz_common.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    static const char *const c10_train[] = {"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin",
                                            "data_batch_4.bin", "data_batch_5.bin"};
    static const char *const c10_test[] = {"test_batch.bin"}, *const c100_test[] = {"test.bin"},
                             *const c100_train[] = {"train.bin"};
    static const char *const *const files[4] = {c10_test, c10_train, c100_test, c100_train};
    static const int nfiles[4] = {1, 5, 1, 1};
    const int mode = data[0] & 3, fine = (data[0] >> 2) & 1;
    const uint8_t *part[5];
    size_t len[5];
    const int n = fz_split(data + 1, size - 1, nfiles[mode], part, len);
    for (int k = 0; k < nfiles[mode]; k++) {
        if (k < n) fz_write(files[mode][k], part[k], len[k], 0);
        else fz_remove(files[mode][k]);
    }
    q3r_error err = {0};
    q3r_dataset ds;
    q3r_status s = mode < 2 ? q3r_dataset_load_cifar10(&ds, fz_dir(), mode == 1, &err)
                            : q3r_dataset_load_cifar100(&ds, fz_dir(), mode == 3, fine, &err);
    const int classes = mode < 2 ? 10 : fine ? 100 : 20;
    if (s == Q3R_OK) {
        if (ds.n < 1 || ds.c != 3 || ds.h != 32 || ds.w != 32 || ds.num_classes != classes) abort();
        for (int64_t i = 0; i < ds.n; i++)
            if (ds.labels[i] < 0 || ds.labels[i] >= classes) abort();
    } else if (!err.msg[0] || ds.pixels || ds.labels) {
        abort();
    }
    q3r_dataset_free(&ds);
    /* the files of the other modes must not linger from an earlier input */
    for (int k = 0; k < nfiles[mode]; k++) fz_remove(files[mode][k]);
    return 0;
}
