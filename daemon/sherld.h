/* The daemon's shared state and the job machinery behind the RPC handlers:
 *   jobs.c       validation and admission, the scheduler (on the libuv loop), job threads,
 *                recovery and drain
 *   backbones.c  the registry of resident backbones, shared and reference counted
 *   events.c     the encoded JobEvent payloads of the per-job event log
 *   service.c    the sherl.v1 and grpc.health.v1 handlers
 * Lock order: sherld.mu, then the registry's lock; the store has its own. */
#ifndef SHERLD_SHERLD_H
#define SHERLD_SHERLD_H

#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <uv.h>

#include "auth.h"
#include "bert.h"
#include "config.h"
#include "job_store.h"
#include "planner.h"

#define SHERLD_VERSION "0.4.0"

/* ---- backbones ---- */
typedef struct {
    char path[PATH_MAX];   /* resolved folder */
    char name[128];        /* the folder's base name */
    bert_model *model;
    int refs;              /* jobs using it */
    int pinned;            /* loaded by LoadBackbone: stays until UnloadBackbone */
    int64_t bytes;
} backbone_entry;

typedef struct {
    pthread_mutex_t mu;
    backbone_entry *e;
    int n, cap;
} backbone_registry;

void backbones_init(backbone_registry *r);
void backbones_free(backbone_registry *r);
/* The resident copy of the backbone at resolved path, loading it when absent; *model is
 * shared read-only until backbones_release. pin: keep it loaded with no job using it. */
sherl_status backbones_acquire(backbone_registry *r, const char *path, int pin, bert_model **model);
void backbones_release(backbone_registry *r, const bert_model *model);
/* The resolved path of a loaded backbone named name, 0 when none (path: PATH_MAX bytes). */
int backbones_find_name(backbone_registry *r, const char *name, char *path);
int backbones_is_loaded(backbone_registry *r, const char *path);
/* Unpins; frees it when no job uses it. 0 ok, -1 unknown, -2 in use by jobs. */
int backbones_unload(backbone_registry *r, const char *name);
int64_t backbones_bytes(backbone_registry *r);
/* A snapshot: *out malloc'd (free it); entries' model pointers must not be used. */
int backbones_list(backbone_registry *r, backbone_entry **out);

/* ---- jobs ---- */
typedef struct running_job running_job;
typedef struct queued_job queued_job;

typedef struct {
    sherld_config cfg;
    job_store *store;
    auth_tokens *tokens;       /* NULL: no authentication */
    backbone_registry backbones;
    pthread_mutex_t mu;
    pthread_cond_t changed;    /* broadcast on every job event (watchers wait on it) */
    uv_async_t wake;           /* wakes the scheduler on the loop thread (any thread may send) */
    uv_timer_t tick;           /* and a periodic pass */
    int loop_handles, handles_closed;
    queued_job *queue;         /* in memory: QUEUED jobs, for the scheduler */
    running_job *running;
    int n_running;
    int draining, stopping;
    int64_t budget;            /* bytes */
    int64_t started_ms;
    int64_t events;            /* count of events appended (watchers' cheap change check) */
    char files_dir[SHERLD_PATH_MAX + 16]; /* state-dir/files: uploads by sha256 */
    char jobs_dir[SHERLD_PATH_MAX + 16];  /* state-dir/jobs/<id>: outputs, checkpoints, artifacts */
} sherld;

int64_t sherld_now_ms(void);

/* Opens the store, loads tokens, recovers jobs a previous daemon left (RUNNING and LOADING
 * jobs resume from their checkpoints; STOPPING ones end CANCELLED; QUEUED stay queued), and
 * sets up the scheduler on the libuv loop (it runs while the loop runs). */
sherl_status jobs_start(sherld *d, uv_loop_t *loop);
/* Drain, on the loop's thread after the loop stopped: no new jobs; running ones checkpoint and
 * are recorded as resumable (QUEUED) within drain-timeout; the scheduler's handles close (run
 * the loop once more to finish closing them). */
void jobs_stop(sherld *d);

/* Results carry a gRPC status code (rpc.h) and a message naming the field and the problem. */
typedef struct {
    int code;
    char msg[600];
} job_result;

/* Parses, confines, plans and queues. id receives the new job's id. */
job_result jobs_submit(sherld *d, const char *tenant, const char *spec_json, int priority,
                       char *id);
/* The same checks and plan without queueing. */
job_result jobs_estimate(sherld *d, const char *tenant, const char *spec_json, memory_plan *plan,
                         int *fits_now, int *fits_ever, int64_t *free_bytes, char *reason,
                         size_t reason_cap);
job_result jobs_cancel(sherld *d, const char *tenant, const char *id);
/* The job's record if the tenant may see it (NULL tenant: any). */
job_result jobs_get(sherld *d, const char *tenant, const char *id, job_record *out);
/* Appends an event to a job's log and wakes watchers. */
sherl_status jobs_event(sherld *d, const char *id, int kind, const uint8_t *payload, size_t len,
                        job_state new_state, const char *error);
int64_t jobs_used_bytes(sherld *d);
void jobs_counts(sherld *d, int *queued, int *running);

#endif
