/* Subcommands of the `sherl` CLI that live in their own files. */
#ifndef SHERL_CLI_H
#define SHERL_CLI_H

typedef struct {
    int resume;     /* continue from the output folder's checkpoint */
    int stop_after; /* > 0: stop with a checkpoint after this many steps */
    int threads;    /* > 0: overrides resources.threads */
    int json;       /* plan: JSON output */
} cli_train_opts;

int cmd_train(const char *job_path, const cli_train_opts *o);
int cmd_plan(const char *job_path, const cli_train_opts *o);

#endif
