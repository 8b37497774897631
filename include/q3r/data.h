/* q3r data: image classification datasets (IDX for MNIST/Fashion-MNIST, CIFAR-10/100
 * binary batches), per-channel normalisation, and a deterministic, resumable batch loader
 * with shuffling and augmentation; text files read as bytes, split into training and
 * validation, with a resumable stream of random context windows and a fixed set of validation
 * windows. Knows nothing of models. */
#ifndef Q3R_DATA_H
#define Q3R_DATA_H

#include "q3r/base.h"

#ifdef __cplusplus
extern "C" {
#endif

#define Q3R_DATA_MAXCHANNELS 4

/* N images of C x H x W uint8 pixels (row-major, channel-major like CIFAR's files and
 * torch's tensors) with integer labels in [0, num_classes). */
typedef struct {
    char name[64];
    int64_t n;
    int c, h, w;
    int num_classes;
    uint8_t *pixels; /* [n, c, h, w], q3r_alloc'd */
    int32_t *labels; /* [n], q3r_alloc'd */
} q3r_dataset;

void q3r_dataset_free(q3r_dataset *ds);

/* IDX files (gzipped or plain; zlib reads both): images with magic 2051 (u8, 3 dims
 * n x rows x cols), labels with magic 2049 (u8, 1 dim n). Counts must agree, labels must be
 * < num_classes, and each file must hold exactly what its header says. c = 1. */
q3r_status q3r_dataset_load_idx(q3r_dataset *ds, const char *images_path, const char *labels_path,
                                int num_classes, const char *name, q3r_error *err);

/* CIFAR-10: dir/data_batch_1.bin .. data_batch_5.bin (train) or dir/test_batch.bin (test),
 * records of 1 label byte + 3072 pixel bytes. */
q3r_status q3r_dataset_load_cifar10(q3r_dataset *ds, const char *dir, int train, q3r_error *err);
/* CIFAR-100: dir/train.bin or dir/test.bin, records of coarse label, fine label, 3072
 * pixels; fine != 0 selects the 100 fine labels, else the 20 coarse ones. */
q3r_status q3r_dataset_load_cifar100(q3r_dataset *ds, const char *dir, int train, int fine,
                                     q3r_error *err);

/* By name: "mnist", "fashion-mnist" (IDX files {train,t10k}-{images-idx3,labels-idx1}-ubyte
 * with or without .gz), "cifar10", "cifar100" (fine labels). dir NULL means
 * /usr/share/datasets/<name>. split is "train" or "test". */
q3r_status q3r_dataset_load_named(q3r_dataset *ds, const char *name, const char *dir,
                                  const char *split, q3r_error *err);

/* Keep only the samples whose label is in a class list, relabelled by their place in it: a
 * held-out class split ("5,6,7,8,9" or "5-9": labels 5..9 become 0..4, in the list's order).
 * In place (order kept, buffers shrunk); num_classes becomes the list's length. Errors (ds
 * unchanged): a malformed list, a class outside [0, num_classes), a class twice. */
q3r_status q3r_dataset_keep_classes(q3r_dataset *ds, const char *classes, q3r_error *err);
/* q3r_dataset_load_named, then q3r_dataset_keep_classes when classes is neither NULL nor "". */
q3r_status q3r_dataset_load_split(q3r_dataset *ds, const char *name, const char *dir,
                                  const char *split, const char *classes, q3r_error *err);

/* ---- normalisation ------------------------------------------------------------------
 * x = (pixel / 255 - mean[c]) / std[c], as torchvision's ToTensor + Normalize. */
typedef struct {
    int c;
    float mean[Q3R_DATA_MAXCHANNELS], std[Q3R_DATA_MAXCHANNELS];
} q3r_normalize;

/* Per-channel mean and (population) standard deviation of pixel / 255 over the whole
 * dataset. Sums are exact integers, so the result does not depend on thread count.
 * Q3R_ENUMERIC if a channel is constant (std 0). */
q3r_status q3r_dataset_channel_stats(const q3r_dataset *ds, q3r_normalize *out, q3r_error *err);

/* ---- loader ---------------------------------------------------------------------------
 * Batches walk a permutation of the dataset (identity when shuffle is off) drawn afresh
 * for each epoch from (seed, epoch). Augmentation of a sample draws from an RNG keyed by
 * (seed, epoch, position in the epoch), so batches depend neither on the thread count nor
 * on the batch size, and the loader's whole position is (seed, epoch, index).
 *
 * Augmentation, in torchvision's order on the uint8 image: RandomCrop(H x W, padding =
 * crop_pad, zero fill) drawing top then left uniformly in [0, 2 * crop_pad], then
 * RandomHorizontalFlip (p = 0.5); then normalisation.
 *
 * Data parallel: with world > 1, batch_size is the GLOBAL batch size and each process (rank r
 * of world) receives only its contiguous slice of every global batch, [begin, end) from
 * q3r_comm_slice(count, r, world) over the count samples of that global batch (a short last
 * batch included: a rank's slice may then be empty). Every rank advances by the whole global
 * batch, so all ranks walk the same epochs and positions, and the concatenation over ranks of
 * their slices is, bit for bit, the batch a world-1 loader delivers. The position (export,
 * import) does not depend on rank or world. */
typedef struct {
    int64_t batch_size; /* the global batch size (all ranks together) */
    int shuffle;        /* 0: dataset order */
    int drop_last;      /* 1: skip a final partial batch */
    int crop_pad;       /* 0: no random crop */
    int hflip;          /* 0: no flips */
    uint64_t seed;
    q3r_normalize norm; /* norm.c must equal the dataset's channel count */
    int rank, world;    /* this process's slice of each global batch; world 0 or 1: the whole
                         * batch. 0 <= rank < max(world, 1). */
} q3r_loader_config;

typedef struct {
    const q3r_dataset *ds; /* borrowed; must outlive the loader */
    q3r_loader_config cfg;
    int64_t epoch;       /* current epoch, from 0 */
    int64_t index;       /* samples of this epoch already delivered */
    int64_t *perm;       /* [ds->n]: order of the epoch perm_epoch */
    int64_t perm_epoch;  /* -1: perm not built yet */
    int64_t last_global; /* samples in the global batch last delivered (0 before the first) */
} q3r_loader;

q3r_status q3r_loader_init(q3r_loader *L, const q3r_dataset *ds, const q3r_loader_config *cfg,
                           q3r_error *err);
void q3r_loader_free(q3r_loader *L);

/* Samples an epoch delivers (n, or n rounded down to a multiple of batch_size with
 * drop_last), and its number of batches; both global (all ranks together). */
int64_t q3r_loader_epoch_samples(const q3r_loader *L);
int64_t q3r_loader_batches_per_epoch(const q3r_loader *L);

/* The next batch: x [batch_size, c, h, w] floats and y [batch_size] labels; *count gets
 * the samples filled (batch_size, or fewer for the last batch of an epoch). When the epoch
 * is exhausted the loader moves to the next one first. *epoch_end (may be NULL) is set to
 * 1 when this batch was the epoch's last. With world > 1 only this rank's slice is filled
 * (from x[0], y[0]) and *count is its length, possibly 0; buffers of batch_size samples
 * still suffice. */
void q3r_loader_next(q3r_loader *L, float *x /* [batch_size, c, h, w] */,
                     int32_t *y /* [batch_size] */, int64_t *count, int *epoch_end);

/* Samples in the global batch the last q3r_loader_next delivered: the sum of every rank's
 * *count, and what a data-parallel trainer divides its summed loss and gradients by (each rank
 * sums its slice's per-sample losses, the gradients are all-reduced, the sum is divided by
 * this count, so the step equals a one-process step over the global batch). Equal to *count
 * when world <= 1; 0 before the first batch, and after import until the next one. */
int64_t q3r_loader_global_count(const q3r_loader *L);

/* Position as named tensors, I64 scalars: "data.epoch", "data.index", "data.seed" (the
 * seed's bits) and "data.n" (dataset size, checked on import). Import changes nothing on
 * failure. After import the loader delivers exactly the batches the exporter would have. */
q3r_status q3r_loader_export(const q3r_loader *L, q3r_tensor_list *out, q3r_error *err);
q3r_status q3r_loader_import(q3r_loader *L, const q3r_tensor_list *in, q3r_error *err);

/* Fill x [c, h, w] with sample i of ds augmented as described above (for tests and for
 * callers building their own batches). top, left in [0, 2 * pad]; pad 0 means no crop. */
void q3r_augment_sample(const q3r_dataset *ds, int64_t i, int pad, int top, int left, int flip,
                        const q3r_normalize *norm, float *x /* [c, h, w] */);

/* ---- text -------------------------------------------------------------------------------
 * Any file read as bytes (token ids 0..255), split by position: the first train_n bytes train,
 * the last val_n = floor(n * val_fraction) bytes validate (train_n = n - val_n).
 *
 * A window at byte offset o holds `context` input bytes x[i] = b[o + i] and as many targets,
 * the next bytes y[i] = b[o + i + 1] (context + 1 bytes of the file in all).
 *
 * Validation windows, a fixed set: window k (from 0) starts at train_n + k * context, so the
 * windows tile the validation split from its start without overlap and every validation byte
 * after the first is predicted exactly once, up to the last whole window; there are
 * floor((val_n - 1) / context) of them, or the first max_windows when that is fewer. */
typedef struct {
    char *path;      /* malloc'd copy of the path given */
    uint8_t *bytes;  /* [n], q3r_alloc'd */
    int64_t n;       /* bytes in the file */
    int64_t train_n; /* [0, train_n): training split */
    int64_t val_n;   /* [train_n, n): validation split */
    int context;     /* window length */
    double val_fraction;
} q3r_corpus;

/* Read path whole and split it. Errors name the file: missing or unreadable, a directory, empty,
 * shorter than one window (context + 1 bytes), a training split shorter than one window, a
 * validation split that holds no window; val_fraction outside (0, 1) and context < 1 too. */
q3r_status q3r_corpus_load(q3r_corpus *t, const char *path, double val_fraction, int context,
                           q3r_error *err);
void q3r_corpus_free(q3r_corpus *t);

/* Validation windows available (at most max_windows when max_windows > 0). */
int64_t q3r_corpus_val_windows(const q3r_corpus *t, int64_t max_windows);
/* Fill tokens[context], targets[context] with validation window k (see above). */
void q3r_corpus_val_window(const q3r_corpus *t, int64_t k, int32_t *tokens, int32_t *targets);

/* Training batches: a global batch of batch_size windows per step; window j of step s starts at
 * an offset drawn uniformly from [0, train_n - context - 1] by an RNG keyed by (seed, s, j), so
 * batches depend on neither the thread count nor the rank count and the stream's whole position
 * is the step. Data parallel: as the image loader (rank r of world gets its contiguous slice
 * q3r_comm_slice(batch_size, r, world) of every global batch; the slices concatenate, bit for
 * bit, to the world-1 batch). */
typedef struct {
    int64_t batch_size; /* the global batch size (all ranks together) */
    uint64_t seed;
    int rank, world; /* world 0 or 1: the whole batch */
} q3r_corpus_loader_config;

typedef struct {
    const q3r_corpus *text; /* borrowed; must outlive the loader */
    q3r_corpus_loader_config cfg;
    int64_t step;        /* global batches delivered */
    int64_t last_global; /* windows in the global batch last delivered (0 before the first) */
} q3r_corpus_loader;

q3r_status q3r_corpus_loader_init(q3r_corpus_loader *L, const q3r_corpus *t,
                                  const q3r_corpus_loader_config *cfg, q3r_error *err);
/* The next batch: this rank's windows, tokens and targets [count, context]; buffers of
 * batch_size windows suffice. */
void q3r_corpus_loader_next(q3r_corpus_loader *L, int32_t *tokens, int32_t *targets,
                            int64_t *count);
int64_t q3r_corpus_loader_global_count(const q3r_corpus_loader *L);
/* Position as I64 scalars "data.step", "data.seed" and "data.train_bytes" (checked on import);
 * import changes nothing on failure. */
q3r_status q3r_corpus_loader_export(const q3r_corpus_loader *L, q3r_tensor_list *out,
                                    q3r_error *err);
q3r_status q3r_corpus_loader_import(q3r_corpus_loader *L, const q3r_tensor_list *in,
                                    q3r_error *err);

#ifdef __cplusplus
}
#endif
#endif
