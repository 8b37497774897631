/* q3r: the Quadratic Reweighted Rank Regularizer and low-rank Transformer training.
 * This is the only header an embedding program includes. */
#ifndef Q3R_H
#define Q3R_H

#include "q3r/base.h"

#endif
