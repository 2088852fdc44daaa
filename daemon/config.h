/* sherld's configuration: one typed table of options with defaults, bounds and help
 * (config.c), read from a file of "name value" lines and overridden by --name value flags.
 * deploy/sherld.conf.example documents every option; `sherld --help` prints the same table. */
#ifndef SHERLD_CONFIG_H
#define SHERLD_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "status.h"

#define SHERLD_PATH_MAX 1024
#define SHERLD_MAX_ROOTS 16

typedef enum { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG } log_level;

typedef struct {
    char listen[256];                 /* host:port, or unix:/path */
    char state_dir[SHERLD_PATH_MAX];  /* the job store, uploads, artifacts, checkpoints */
    char data_roots[SHERLD_MAX_ROOTS][SHERLD_PATH_MAX]; /* job data and backbones must be inside */
    int n_data_roots;
    int max_concurrent_jobs;
    int max_queued_jobs;
    int64_t memory_budget;            /* bytes; 0 = 80% of MemAvailable at start */
    int64_t gpu_memory_reserve;       /* bytes of each GPU's memory admission leaves free */
    int threads;                      /* per job; 0 = every online CPU */
    log_level log_level;
    char log_file[SHERLD_PATH_MAX];   /* "" = stderr */
    char tokens_file[SHERLD_PATH_MAX];/* "" = no authentication (loopback only) */
    int64_t max_upload_bytes;
    int64_t max_message_bytes;
    int drain_timeout_s;              /* SIGTERM: how long running jobs get to checkpoint */
    char tls_cert[SHERLD_PATH_MAX], tls_key[SHERLD_PATH_MAX]; /* PEM files, both or neither */
} sherld_config;

/* Every option at its default; an error only if the table itself is wrong (tested). */
sherl_status config_defaults(sherld_config *c);
/* Applies one option by name (without the leading "--"); the value is checked against the
 * option's type and bounds. where (may be NULL) prefixes messages, e.g. "sherld.conf:12". */
sherl_status config_set(sherld_config *c, const char *name, const char *value, const char *where);
/* Reads "name value" lines ('#' starts a comment; blank lines skipped). */
sherl_status config_load_file(sherld_config *c, const char *path);
/* Line reader for "name value" files (config, tokens): the next line of the text at *cursor
 * (modified in place: NUL-terminated, '#' comment cut), advancing *cursor and *lineno; NULL at
 * the end. */
char *config_next_line(char **cursor, int *lineno);
/* Cross-option checks after everything is applied (TLS pairs, non-loopback listeners). */
sherl_status config_validate(const sherld_config *c);
/* The option table as help text: name, type, default, bounds, description. */
void config_print_help(FILE *f);
/* The effective configuration as "name value" lines (tokens file contents never printed). */
void config_print(FILE *f, const sherld_config *c);
const char *log_level_name(log_level l);
/* The table, for tests and tools: option i's name (i < config_option_count()). */
int config_option_count(void);
const char *config_option_name(int i);

#endif
