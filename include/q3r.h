/* q3r: the Quadratic Reweighted Rank Regularizer and low-rank Transformer training.
 * This is the only header an embedding program includes; the layers below it, bottom
 * to top, each use only those above them in this list. */
#ifndef Q3R_H
#define Q3R_H

#include "q3r/base.h"        /* status codes, RNG, aligned memory, named tensors, BLAS start-up */
#include "q3r/dist.h"        /* the communicator seam (one process or MPI), batch slices */
#include "q3r/linalg.h"      /* thin SVD */
#include "q3r/regularizer.h" /* Q3R: per-matrix state and sets of matrices */
#include "q3r/nuclear.h"     /* singular value thresholding (nuclear-norm prox) */
#include "q3r/spectrum.h"    /* spectra of the matrices in a tensor list */
#include "q3r/reparam.h"     /* factor chains for the LoRITa and factorized baselines */
#include "q3r/nn.h"          /* layer kernels, forward/backward */
#include "q3r/optim.h"       /* AdamW, schedules, clipping */
#include "q3r/data.h"        /* datasets and the batch loader */
#include "q3r/io.h"          /* safetensors, JSON, typed metadata, metrics logs */
#include "q3r/model.h"       /* the model interface, its registry and the matrix vocabulary */
#include "q3r/vit.h"         /* the Vision Transformer */
#include "q3r/gpt.h"         /* the byte-level GPT (nanoGPT) */
#include "q3r/train.h"       /* training loop, evaluation, model files */
#include "q3r/truncate.h"    /* SVD truncation to factored models, parameter accounting */
#include "q3r/sweep.h"       /* accuracy of a model truncated at a list of kept fractions */
#include "q3r/completion.h"  /* the matrix-completion demonstration */

#endif
