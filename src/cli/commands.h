/* The q3r subcommands. Each takes the full argv (argv[1] is its own name). */
#ifndef Q3R_CLI_COMMANDS_H
#define Q3R_CLI_COMMANDS_H

int q3r_cmd_version(int argc, char **argv);
int q3r_cmd_demo(int argc, char **argv);
int q3r_cmd_train(int argc, char **argv);
int q3r_cmd_eval(int argc, char **argv);
int q3r_cmd_spectrum(int argc, char **argv);
int q3r_cmd_truncate(int argc, char **argv);
int q3r_cmd_sweep(int argc, char **argv);
int q3r_cmd_adapter(int argc, char **argv);
int q3r_cmd_sample(int argc, char **argv);

#endif
