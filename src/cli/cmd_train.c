/* q3r train: flags in, library calls, a progress bar and a summary out. */
#include "q3r.h"
#include "q3r/adapter.h"
#include "q3r/io.h"
#include "q3r/train.h"

#include "args.h"
#include "base/util.h"
#include "commands.h"
#include "model_open.h"
#include "progress.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile int interrupted = 0;
static void on_sigint(int sig) {
    (void)sig;
    interrupted = 1;
}

/* Set "model.<key>" to v when the flag was given (v > 0); a model without that key refuses it. */
static int override(q3r_meta *meta, const char *key, int v, const char *flag, const char *preset) {
    if (v <= 0) return 0;
    if (!q3r_meta_has(meta, key)) {
        fprintf(stderr, "q3r train: --%s: the %s model has no such setting ('%s')\n", flag, preset, key);
        return -1;
    }
    q3r_error err;
    if (q3r_meta_setf(meta, &err, key, "%d", v)) {
        fprintf(stderr, "q3r train: %s\n", err.msg);
        return -1;
    }
    return 0;
}

/* "a|b|c" of the registered presets. */
static void preset_choices(char *buf, size_t cap) {
    size_t len = 0;
    buf[0] = 0;
    for (int i = 0; q3r_model_preset_name(i) && len < cap; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%s", i ? "|" : "", q3r_model_preset_name(i));
}

/* Data parallel: under an MPI launcher (mpirun, mpiexec, srun: its environment variables,
 * q3r_comm_launched_size) the program joins MPI_COMM_WORLD and trains one model with every
 * process; without one it never initialises MPI and runs as one process, exactly as a build
 * without MPI does. *comm is NULL for one process. Returns 0, or 2 after a message. */
static int join_mpi(q3r_comm **comm) {
    *comm = NULL;
    const int launched = q3r_comm_launched_size();
    if (launched < 1) return 0;
    q3r_error err;
    if (!q3r_comm_mpi_available()) {
        if (launched == 1) return 0;
        fprintf(stderr,
                "q3r train: started by an MPI launcher as one of %d processes, but this q3r was built "
                "without MPI: each would train alone (rebuild with libopenmpi-dev installed, -DQ3R_MPI=ON)\n",
                launched);
        return 2;
    }
    if (q3r_comm_mpi(comm, &err)) {
        fprintf(stderr, "q3r train: %s\n", err.msg);
        return 2;
    }
    return 0;
}

static q3r_comm *cli_comm; /* the run's communicator (NULL: one process) */

static int train_cmd(int argc, char **argv);

int q3r_cmd_train(int argc, char **argv) {
    int rc = join_mpi(&cli_comm);
    if (rc) return rc;
    rc = train_cmd(argc, argv);
    if (rc == 1 && q3r_comm_size(cli_comm) > 1) {
        /* the other processes may be waiting in a collective: end the whole job (a usage
         * error, exit 2, is the same on every rank: they all return) */
        fprintf(stderr, "q3r train: rank %d of %d failed (exit %d); aborting the MPI job\n",
                q3r_comm_rank(cli_comm), q3r_comm_size(cli_comm), rc);
        q3r_comm_abort(cli_comm, rc);
    }
    q3r_comm_free(cli_comm);
    cli_comm = NULL;
    return rc;
}

static int train_cmd(int argc, char **argv) {
    q3r_train_config c = q3r_train_defaults();
    int model = 0, width = 0, depth = 0, heads = 0, patch = 0, mlp = 0, threads = 0;
    char presets[256];
    preset_choices(presets, sizeof presets);
    int dataset = 0, schedule = 1, reg = 1, eps = 0, resume = 0, overwrite = 0, json = 0, quiet = 0,
        augment = 0;
    int epochs = c.epochs, batch = c.batch, period = c.period, log_every = c.log_every, warmup = 0;
    int seed = (int)c.seed, eps_steps = c.eps.geometric_steps, train_limit = 0, test_limit = 0;
    int checkpoint_every = 0, stop_after = 0, lorita_factors = c.lorita_factors;
    double lr = c.lr.lr, min_lr = c.lr.min_lr, wd = c.weight_decay, clip = c.clip, ls = 0, dropout = 0;
    double lambda = 0, pull = c.pull, eps_value = 0, eps_min = c.eps.eps_min;
    const char *data_dir = NULL, *targets = c.targets, *rank = c.rank, *out = c.out_dir;
    const char *text = Q3R_DEFAULT_TEXT;
    double val_fraction = c.val_fraction;
    int val_windows = 0, epoch_steps = 0, context = 0;
    const char *init = NULL, *classes = NULL;
    int new_head = 0, rslora = 0, on_update = 0, brule = 0, loss_samples = 0, loss_points = 8;
    const char *lora_q3r = NULL;
    double lora_alpha = 0;
    const arg_spec specs[] = {
        {"model", ARG_CHOICE, &model, "model preset", 0, 0, presets, NULL},
        {"width", ARG_INT, &width, "override the preset's width (0 keeps it)", 0, 8192, NULL, NULL},
        {"depth", ARG_INT, &depth, "override the preset's depth", 0, 256, NULL, NULL},
        {"heads", ARG_INT, &heads, "override the preset's heads", 0, 256, NULL, NULL},
        {"patch", ARG_INT, &patch, "override the preset's patch size", 0, 256, NULL, NULL},
        {"mlp", ARG_INT, &mlp, "override the preset's MLP hidden width", 0, 65536, NULL, NULL},
        {"context", ARG_INT, &context,
         "override the language model's context (bytes per window; 0 keeps the preset's)", 0, 65536, NULL,
         NULL},
        {"dropout", ARG_DOUBLE, &dropout, "dropout rate", 0, 0.99, NULL, NULL},
        {"data", ARG_STRING, &text,
         "language models: the text file, read as bytes (default " Q3R_DEFAULT_TEXT
         ", made by scripts/text-data.sh)",
         0, 0, NULL, "FILE"},
        {"val-fraction", ARG_DOUBLE, &val_fraction,
         "language models: the last fraction of the file held out for validation", 1e-6, 0.999999, NULL,
         NULL},
        {"val-windows", ARG_INT, &val_windows,
         "language models: score at most N validation windows (non-overlapping, from the split's start; 0: "
         "all)",
         0, 1e9, NULL, "N"},
        {"epoch-steps", ARG_INT, &epoch_steps,
         "language models: steps per epoch (0: ceil(training bytes / (batch x context)), one pass's worth of "
         "predicted bytes)",
         0, 1e9, NULL, "N"},
        {"dataset", ARG_CHOICE, &dataset, "dataset", 0, 0, "fashion-mnist|mnist|cifar10|cifar100", NULL},
        {"classes", ARG_STRING, &classes,
         "image models: train and test on these classes only, relabelled 0.. in the list's order (a held-out "
         "class split, e.g. 0-4 or 5,6,7,8,9)",
         0, 0, NULL, "LIST"},
        {"data-dir", ARG_STRING, &data_dir, "dataset directory (default /usr/share/datasets/<dataset>)", 0, 0,
         NULL, "DIR"},
        {"train-limit", ARG_INT, &train_limit, "use only the first N training images (0: all)", 0, 1e9, NULL,
         NULL},
        {"test-limit", ARG_INT, &test_limit, "evaluate on the first N test images (0: all)", 0, 1e9, NULL,
         NULL},
        {"augment", ARG_FLAG, &augment, "random crop (+ horizontal flip for RGB)", 0, 0, NULL, NULL},
        {"epochs", ARG_INT, &epochs, "epochs", 1, 100000, NULL, NULL},
        {"batch", ARG_INT, &batch, "batch size", 1, 65536, NULL, NULL},
        {"lr", ARG_DOUBLE, &lr, "peak learning rate", 0, 10, NULL, NULL},
        {"min-lr", ARG_DOUBLE, &min_lr, "final learning rate of the cosine schedule", 0, 10, NULL, NULL},
        {"warmup", ARG_INT, &warmup, "linear warmup steps (default: 5% of the run, at most 200)", 0, 1e9,
         NULL, NULL},
        {"schedule", ARG_CHOICE, &schedule, "learning-rate schedule", 0, 0, "constant|cosine", NULL},
        {"weight-decay", ARG_DOUBLE, &wd,
         "AdamW decay on matrices not under Q3R (lorita, factorized: also on the factors)", 0, 10, NULL,
         NULL},
        {"clip", ARG_DOUBLE, &clip, "global gradient-norm clip (0: off)", 0, 1e9, NULL, NULL},
        {"label-smoothing", ARG_DOUBLE, &ls, "label smoothing", 0, 0.99, NULL, NULL},
        {"reg", ARG_CHOICE, &reg,
         "none = AdamW; decoupled = AdamQ3R; coupled = 2 lambda R(W) in the gradient; nuclear = proximal "
         "nuclear-norm baseline (needs --lambda); lorita = each target a product of --lorita-factors "
         "matrices, weight decay on them; factorized = each target A B at --rank from the start; lora = "
         "fine-tuning adapters W_0 + (alpha/r) B A at the integer --rank, the rest of the model frozen; "
         "probe = a linear probe: the --init model frozen, only its fresh --new-head trained",
         0, 0, "none|decoupled|coupled|nuclear|lorita|factorized|lora|probe", NULL},
        {"init", ARG_STRING, &init,
         "fine-tune: start from this model file (its weights and config, not the seed's init; no --model)", 0,
         0, NULL, "FILE"},
        {"new-head", ARG_INT, &new_head,
         "with --init: replace the classifier head by a fresh one for N classes (trained also under --reg "
         "lora)",
         0, 1000000, NULL, "N"},
        {"lora-alpha", ARG_DOUBLE, &lora_alpha, "--reg lora: alpha of the scale alpha / r (0: the rank)", 0,
         1e9, NULL, NULL},
        {"rslora", ARG_FLAG, &rslora, "--reg lora: rank-stabilised scale alpha / sqrt(r)", 0, 0, NULL, NULL},
        {"on-update", ARG_FLAG, &on_update,
         "with --init and --reg decoupled|coupled|nuclear: the regularizer acts on the update W - W_0 (full "
         "fine-tuning with a low-rank update), its gradient or step on W",
         0, 0, NULL, NULL},
        {"lora-q3r", ARG_RANK, &lora_q3r,
         "--reg lora: coupled Q3R on the update B A toward this target rank (lambda from --lambda / --pull)",
         0, 0, NULL, "R"},
        {"lorita-factors", ARG_INT, &lorita_factors,
         "--reg lorita: factors per target, W = W_1 ... W_N (W_1 = the init, the rest identity)", 2,
         Q3R_REPARAM_MAX_FACTORS, NULL, "N"},
        {"targets", ARG_TARGETS, &targets, "matrices under Q3R: comma list of qkv, proj, fc1, fc2, head, all",
         0, 0, NULL, "LIST"},
        {"rank", ARG_RANK, &rank,
         "target rank (Q3R; the fixed rank of --reg factorized): integer, parameter fraction (0.4 or 40%), "
         "maxdim:P, or budget:P[@S] (Q3R: the targets keep P of their parameters in total, each one's rank "
         "chosen from its singular values at step S, or at that fraction of the run (@0.1, the default); "
         "dense training until then)",
         0, 0, NULL, "R"},
        ARGS_LOSS_RULE(
            &brule,
            "--rank budget:P: energy (each target's kept fraction of sum sigma^2, summed) or loss (the "
            "least summed increase of the training loss with each target cut alone, measured at step S "
            "as truncate --budget-rule loss measures; about points x targets forwards of the samples)",
            &loss_samples, &loss_points),
        {"lambda", ARG_DOUBLE, &lambda, "Q3R strength (0: automatic, from --pull)", 0, 1e6, NULL, NULL},
        {"pull", ARG_DOUBLE, &pull,
         "automatic lambda: 2 lambda sum_t lr_t = pull (the paper's runs: about 9; 0: lambda 0)", 0, 1e6,
         NULL, NULL},
        {"period", ARG_INT, &period, "refresh the SVDs every N steps", 1, 1000000, NULL, NULL},
        {"eps", ARG_CHOICE, &eps, "eps schedule", 0, 0, "default|geometric|constant|exploration", NULL},
        {"eps-value", ARG_DOUBLE, &eps_value, "eps of the constant schedule", 0, 1e30, NULL, NULL},
        {"eps-min", ARG_DOUBLE, &eps_min, "floor of the geometric schedule", 0, 1e30, NULL, NULL},
        {"eps-steps", ARG_INT, &eps_steps, "refreshes for the geometric schedule to reach its floor", 1, 1e9,
         NULL, NULL},
        {"seed", ARG_INT, &seed, "random seed (init, shuffling, dropout)", 0, 2147483647, NULL, NULL},
        {"threads", ARG_INT, &threads, "threads for OpenMP and BLAS (0: all cores)", 0, 1024, NULL, NULL},
        {"out", ARG_STRING, &out, "run directory: checkpoint, model, metrics.jsonl", 0, 0, NULL, "DIR"},
        {"resume", ARG_FLAG, &resume, "continue from DIR/checkpoint.safetensors", 0, 0, NULL, NULL},
        {"overwrite", ARG_FLAG, &overwrite,
         "start over in a DIR that already holds a run, replacing its files", 0, 0, NULL, NULL},
        {"checkpoint-every", ARG_INT, &checkpoint_every, "steps between checkpoints (epoch ends always)", 0,
         1e9, NULL, NULL},
        {"stop-after", ARG_INT, &stop_after, "stop with a checkpoint after N steps of this invocation", 0,
         1e9, NULL, NULL},
        {"log-every", ARG_INT, &log_every, "steps between metrics lines", 1, 1e9, NULL, NULL},
        {"json", ARG_FLAG, &json, "print the final summary as JSON on stdout", 0, 0, NULL, NULL},
        {"quiet", ARG_FLAG, &quiet, "no progress bar", 0, 0, NULL, NULL},
        {0},
    };
    int rc =
        args_parse("train",
                   "Train a model with AdamW or AdamQ3R (Q3R on chosen matrices): a ViT on an image "
                   "dataset, or a byte-level GPT (gpt-tiny, gpt-small) on a text file. For a GPT an epoch "
                   "is --epoch-steps steps of --batch random windows of the model's context (default: "
                   "training bytes / (batch x context) steps), followed by bits per byte on the "
                   "validation windows.",
                   specs, argc, argv, 2, NULL, 0, NULL);
    if (rc) return rc == 1 ? 0 : 2;

    q3r_error err;
    const int rank0 = q3r_comm_rank(cli_comm) == 0;
    c.comm = cli_comm;
    if (!rank0) quiet = 1; /* rank 0 alone reports */
    if (threads == 0 && q3r_comm_size(cli_comm) > 1) {
        /* --threads 0 under MPI: this machine's cores shared among its processes */
        const int local = q3r_comm_launched_local_size();
        const long cores = sysconf(_SC_NPROCESSORS_ONLN);
        if (local > 1) threads = cores > local ? (int)(cores / local) : 1;
    }
    static const char *const datasets[] = {"fashion-mnist", "mnist", "cifar10", "cifar100"};
    c.dataset = datasets[dataset];
    c.classes = classes;
    c.data_dir = data_dir;
    c.text_path = text;
    c.val_fraction = val_fraction;
    c.val_windows = val_windows;
    c.epoch_steps = epoch_steps;
    c.train_limit = train_limit;
    c.test_limit = test_limit;
    c.augment = augment;
    c.epochs = epochs;
    c.batch = batch;
    c.lr.kind = schedule ? Q3R_LR_COSINE : Q3R_LR_CONSTANT;
    c.lr.lr = lr;
    c.lr.min_lr = schedule ? min_lr : lr;
    c.lr.warmup_steps = args_given(specs, "warmup") ? warmup : -1;
    c.weight_decay = wd;
    c.clip = clip;
    c.label_smoothing = (float)ls;
    static const char *const methods[] = {"none",   "decoupled",  "coupled", "nuclear",
                                          "lorita", "factorized", "lora",    "probe"};
    if (q3r_train_set_method(&c, methods[reg], &err)) {
        fprintf(stderr, "q3r train: --reg: %s\n", err.msg);
        return 2;
    }
    if (args_given(specs, "lorita-factors") && c.weights != Q3R_WEIGHTS_LORITA) {
        fprintf(stderr, "q3r train: --lorita-factors applies only to --reg lorita\n");
        return 2;
    }
    c.lorita_factors = lorita_factors;
    if ((args_given(specs, "lora-alpha") || rslora) && c.weights != Q3R_WEIGHTS_LORA) {
        fprintf(stderr, "q3r train: --lora-alpha and --rslora apply only to --reg lora\n");
        return 2;
    }
    c.lora_alpha = lora_alpha;
    c.lora_rslora = rslora;
    if (on_update) {
        if (c.weights != Q3R_WEIGHTS_DENSE || c.reg == Q3R_REG_NONE) {
            fprintf(stderr,
                    "q3r train: --on-update applies to --reg decoupled, coupled or nuclear (for LoRA: "
                    "--lora-q3r R)\n");
            return 2;
        }
        if (!init) {
            fprintf(stderr, "q3r train: --on-update regularizes the update from an --init model; give --init "
                            "FILE\n");
            return 2;
        }
        c.weights = Q3R_WEIGHTS_DELTA;
    }
    if (lora_q3r) {
        if (c.weights != Q3R_WEIGHTS_LORA) {
            fprintf(stderr, "q3r train: --lora-q3r applies only to --reg lora\n");
            return 2;
        }
        c.reg = Q3R_REG_COUPLED;
        c.update_rank = lora_q3r;
    }
    q3r_rank_rule rule;
    if (!q3r_rank_parse(rank, &rule, &err) && rule.kind == Q3R_RANK_BUDGET &&
        ((c.reg != Q3R_REG_DECOUPLED && c.reg != Q3R_REG_COUPLED) ||
         (c.weights != Q3R_WEIGHTS_DENSE && c.weights != Q3R_WEIGHTS_DELTA))) {
        fprintf(
            stderr,
            "q3r train: --rank %s: a budget chooses Q3R's target ranks during training, so it needs --reg "
            "decoupled or coupled on dense weights (--reg %s; after training: truncate --budget)\n",
            rank, methods[reg]);
        return 2;
    }
    {
        const int budget = !q3r_rank_parse(rank, &rule, &err) && rule.kind == Q3R_RANK_BUDGET;
        const int r = args_check_loss_rule("train", specs, brule, budget, "--rank budget:P");
        if (r) return r;
    }
    if (new_head && !init) {
        fprintf(stderr, "q3r train: --new-head replaces the head of an --init model; give --init FILE\n");
        return 2;
    }
    if (init) {
        static const char *const model_flags[] = {"model", "width", "depth",  "heads",
                                                  "patch", "mlp",   "context"};
        for (size_t i = 0; i < sizeof model_flags / sizeof *model_flags; i++)
            if (args_given(specs, model_flags[i])) {
                fprintf(stderr, "q3r train: --%s and --init contradict each other: the model is %s's\n",
                        model_flags[i], init);
                return 2;
            }
    }
    c.init = init;
    c.new_head = new_head;
    c.targets = targets;
    c.rank = rank;
    c.lambda = lambda;
    c.pull = pull;
    c.period = period;
    c.budget_rule = brule;
    c.loss_samples = loss_samples;
    c.loss_points = loss_points;
    c.eps.schedule = (q3r_eps_schedule)eps;
    c.eps.eps_const = eps_value;
    c.eps.eps_min = eps_min;
    c.eps.geometric_steps = eps_steps;
    if (c.eps.schedule == Q3R_EPS_CONSTANT && !(eps_value > 0)) {
        fprintf(stderr, "q3r train: --eps constant needs --eps-value > 0\n");
        return 2;
    }
    if (c.lr.min_lr > c.lr.lr) {
        fprintf(stderr, "q3r train: --min-lr %g is above --lr %g\n", c.lr.min_lr, c.lr.lr);
        return 2;
    }
    c.seed = (uint64_t)seed;
    c.out_dir = out;
    if (resume && overwrite) {
        fprintf(stderr, "q3r train: --resume and --overwrite contradict each other\n");
        return 2;
    }
    if (!resume && !overwrite) {
        /* a run's files are never replaced by accident: an earlier result may be all someone has */
        static const char *const run_files[] = {"checkpoint.safetensors", "model.safetensors",
                                                "metrics.jsonl"};
        for (size_t i = 0; i < sizeof run_files / sizeof *run_files; i++) {
            q3r_text path;
            q3r_text_init(&path);
            q3r_text_addf(&path, "%s/%s", c.out_dir, run_files[i]);
            int exists = access(q3r_text_str(&path), F_OK) == 0;
            if (exists && rank0)
                fprintf(
                    stderr,
                    "q3r train: --out %s already holds a run (%s); pass --resume to continue it (a finished "
                    "run is scored again), --overwrite to start it over, or another --out\n",
                    c.out_dir, q3r_text_str(&path));
            q3r_text_free(&path);
            /* rank 0's verdict for all: it may already be writing when another rank looks */
            if (q3r_comm_broadcast(cli_comm, &exists, sizeof exists, 0, &err)) {
                fprintf(stderr, "q3r train: %s\n", err.msg);
                return 1;
            }
            if (exists) return 2;
        }
    }
    c.checkpoint_every = checkpoint_every;
    c.stop_after = stop_after;
    c.log_every = log_every;
    c.interrupt = &interrupted;
    q3r_set_threads(threads);
    signal(SIGINT, on_sigint);
    signal(SIGTERM, on_sigint);

    /* CIFAR with no model chosen: the CIFAR preset */
    const char *preset = q3r_model_preset_name(model);
    if (dataset >= 2 && !args_given(specs, "model") && !patch && !width) preset = "vit-tiny";
    q3r_meta mm;
    q3r_meta_init(&mm);
    if (q3r_model_preset(preset, &mm, &err)) {
        fprintf(stderr, "q3r train: --model: %s\n", err.msg);
        return 2;
    }
    int bad = override(&mm, "model.width", width, "width", preset) ||
              override(&mm, "model.depth", depth, "depth", preset) ||
              override(&mm, "model.heads", heads, "heads", preset) ||
              override(&mm, "model.patch", patch, "patch", preset) ||
              override(&mm, "model.mlp_hidden", mlp, "mlp", preset) ||
              override(&mm, "model.context", context, "context", preset) ||
              override(&mm, "model.classes", dataset == 3 ? 100 : 0, "dataset", preset);
    if (!bad && q3r_meta_setf(&mm, &err, "model.dropout", "%.9g", (float)dropout)) {
        fprintf(stderr, "q3r train: %s\n", err.msg);
        bad = 1;
    }
    /* the flags of the other kind of data are refused, not ignored */
    q3r_model *probe = NULL; /* a bad config is reported by the run */
    int tokens = 0, file_bad = 0;
    if (!bad && init) {
        if (q3r_model_load(init, 1, &probe, NULL, &err)) {
            fprintf(stderr, "q3r train: --init: %s\n", err.msg);
            bad = file_bad = 1;
        } else {
            preset = init;
        }
    } else if (!bad) {
        q3r_model_from_meta(&mm, 1, &probe, NULL);
    }
    if (probe) tokens = q3r_model_input_spec(probe)->kind == Q3R_INPUT_TOKENS;
    static const char *const image_flags[] = {"dataset",    "data-dir", "train-limit",
                                              "test-limit", "augment",  "classes"};
    static const char *const text_flags[] = {"data", "val-fraction", "val-windows", "epoch-steps"};
    for (size_t i = 0; !bad && i < (tokens ? 6 : 4); i++) {
        const char *f = tokens ? image_flags[i] : text_flags[i];
        if (args_given(specs, f)) {
            fprintf(stderr, "q3r train: --%s applies to %s; the %s model takes %s\n", f,
                    tokens ? "image models" : "language models", preset,
                    tokens ? "text (--data FILE)" : "images (--dataset)");
            bad = 1;
        }
    }
    if (!bad && tokens) {
        /* the text file is checked before anything is written to --out */
        if (!args_given(specs, "data") && access(text, F_OK) != 0) {
            fprintf(
                stderr,
                "q3r train: the default text file %s is missing; make it with scripts/text-data.sh (the King "
                "James Bible from Debian's bible-kjv package), or give --data FILE\n",
                text);
            bad = file_bad = 1;
        } else {
            q3r_corpus probe_text;
            if (q3r_corpus_load(&probe_text, text, val_fraction, q3r_model_input_spec(probe)->context,
                                &err)) {
                fprintf(stderr, "q3r train: --data: %s\n", err.msg);
                bad = file_bad = 1;
            }
            q3r_corpus_free(&probe_text);
        }
    }
    if (bad) {
        q3r_model_free(probe);
        q3r_meta_free(&mm);
        return file_bad ? 1 : 2; /* the text file (missing, too short) or a flag */
    }
    c.model = &mm;
    if (!quiet) {
        char desc[256] = "";
        int64_t nparams = 0;
        if (probe) {
            nparams = q3r_model_param_count(probe);
            q3r_model_describe(probe, desc, sizeof desc);
        }
        if (q3r_comm_size(cli_comm) > 1)
            fprintf(stderr,
                    "q3r train: data parallel over %d MPI processes (the global batch split among them)\n",
                    q3r_comm_size(cli_comm));
        fprintf(stderr, "q3r train: %s (%s; %.2f M parameters) on %s, %d epochs of batch %d, %d threads\n",
                preset, desc, (double)nparams / 1e6, tokens ? text : c.dataset, c.epochs, c.batch,
                q3r_get_threads());
        if (init)
            fprintf(stderr, "q3r train: fine-tuning from %s%s\n", init,
                    new_head ? " with a fresh classifier head" : "");
        if (c.weights == Q3R_WEIGHTS_LORA)
            fprintf(stderr, "q3r train: LoRA on %s at rank %s, alpha %g%s; the rest of the model frozen%s\n",
                    c.targets, c.rank, lora_alpha > 0 ? lora_alpha : atof(c.rank),
                    rslora ? " (rsLoRA: alpha / sqrt(r))" : "", new_head ? " but the new head" : "");
        if (c.weights == Q3R_WEIGHTS_LORA && lora_q3r)
            fprintf(stderr, "q3r train: coupled Q3R on the LoRA update B A toward rank %s\n", lora_q3r);
        if (c.weights == Q3R_WEIGHTS_DELTA)
            fprintf(stderr, "q3r train: the regularizer acts on the update W - W_0 from %s\n", init);
        else if (c.weights == Q3R_WEIGHTS_LORITA)
            fprintf(stderr,
                    "q3r train: LoRITa on %s, %d factors per matrix, weight decay %g on the factors\n",
                    c.targets, c.lorita_factors, c.weight_decay);
        else if (c.weights == Q3R_WEIGHTS_FACTORIZED)
            fprintf(
                stderr,
                "q3r train: factorized training (W = A B) on %s at rank %s, weight decay %g on the factors\n",
                c.targets, c.rank, c.weight_decay);
        else if (c.weights == Q3R_WEIGHTS_LORA)
            ;
        else if (c.weights == Q3R_WEIGHTS_PROBE)
            fprintf(stderr, "q3r train: a linear probe: the model frozen, only the fresh head trained\n");
        else if (c.reg == Q3R_REG_NUCLEAR)
            fprintf(stderr,
                    "q3r train: nuclear-norm proximal baseline on %s, lambda %g, prox every %d steps\n",
                    c.targets, c.lambda, c.period);
        else if (c.reg != Q3R_REG_NONE)
            fprintf(stderr, "q3r train: %s Q3R on %s, rank %s, %s lambda, refresh every %d steps, %s eps\n",
                    c.reg == Q3R_REG_DECOUPLED ? "decoupled (AdamQ3R)" : "coupled", c.targets, c.rank,
                    lambda > 0 ? "given" : "automatic", c.period,
                    c.weights == Q3R_WEIGHTS_DELTA && c.eps.schedule == Q3R_EPS_DEFAULT
                        ? "exploration (an update starts at 0)"
                        : q3r_eps_name(c.eps.schedule));
        else fprintf(stderr, "q3r train: AdamW, no rank regularizer\n");
    }
    q3r_model_free(probe);
    progress_bar bar;
    progress_init(&bar, quiet);
    q3r_train_result res;
    q3r_status s = q3r_train_run(&c, resume, progress_update, &bar, &res, &err);
    progress_finish(&bar);
    q3r_meta_free(&mm);
    if (s) {
        if (q3r_comm_size(cli_comm) > 1)
            fprintf(stderr, "q3r train: rank %d: %s\n", q3r_comm_rank(cli_comm), err.msg);
        else fprintf(stderr, "q3r train: %s\n", err.msg);
        return 1;
    }
    if (!rank0) return 0;
    const int acc = res.metric == Q3R_METRIC_ACCURACY;
    const char *mname = q3r_metric_name(res.metric);
    double e = acc ? q3r_binomial_err95(res.test_acc, res.test_n) : 0;
    if (json) {
        q3r_text out_json;
        q3r_text_init(&out_json);
        q3r_text_add_json_string(&out_json, c.out_dir);
        printf("{\"finished\": %s, \"steps\": %lld, \"epochs\": %d, \"lambda\": %.9g, \"train_loss\": %.6f, "
               "\"train_%s\": %.6f, \"test_%s\": %.6f, \"test_%s_err95\": %.6f, \"test_loss\": %.6f, "
               "\"test_n\": %lld, \"seconds\": %.1f, \"out\": %s}\n",
               res.finished ? "true" : "false", (long long)res.steps, res.epochs_done, res.lambda,
               res.train_loss, mname, res.train_acc, mname, res.test_acc, mname, e, res.test_loss,
               (long long)res.test_n, res.seconds, q3r_text_str(&out_json));
        q3r_text_free(&out_json);
    } else if (res.finished && acc) {
        printf("test accuracy %.2f%% +- %.2f (95%%, n = %lld), test loss %.4f; %lld steps in %.0f s; lambda "
               "%.4g\n",
               100 * res.test_acc, 100 * e, (long long)res.test_n, res.test_loss, (long long)res.steps,
               res.seconds, res.lambda);
        printf("model: %s/model.safetensors  metrics: %s/metrics.jsonl\n", c.out_dir, c.out_dir);
    } else if (res.finished) {
        printf("test %s %.4f (n = %lld), test loss %.4f; %lld steps in %.0f s; lambda %.4g\n",
               cli_metric_label(res.metric), res.test_acc, (long long)res.test_n, res.test_loss,
               (long long)res.steps, res.seconds, res.lambda);
        printf("model: %s/model.safetensors  metrics: %s/metrics.jsonl\n", c.out_dir, c.out_dir);
    } else {
        printf("stopped after step %lld; resume with: q3r train ... --out %s --resume\n",
               (long long)res.steps, c.out_dir);
    }
    return 0;
}
