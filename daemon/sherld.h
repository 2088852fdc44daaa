/* The daemon's shared state and the job machinery behind the RPC handlers:
 *   jobs.c       validation and admission, the scheduler (on the libuv loop), job threads,
 *                recovery and drain
 *   backbones.c  the registry of resident backbones, one per (folder, backend, precision),
 *                shared and reference counted
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
    const sherl_backend *be; /* the key is (path, be, prec) */
    char device[32];       /* be's label: "cpu", "cuda:1" */
    sherl_precision prec;
    bert_model *model;     /* NULL in snapshots (backbones_list, backbones_unload's out) */
    int refs;              /* jobs using it */
    int pinned;            /* loaded by LoadBackbone: stays until UnloadBackbone */
    int64_t bytes;         /* the planner's backbone line: what admission counts */
    int layers, hidden;
    int loading;           /* its first user loads it now, outside the lock: model is NULL, and
                            * it already counts as resident (bytes, admission, sharing) */
    int waiters;           /* loading: acquires waiting for it */
    int orphaned;          /* loading: its loader failed with waiters left; one of them loads it
                            * instead, so its bytes stay counted all along */
    unsigned long long gen; /* which entry of its key a waiter waits on */
} backbone_entry;

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t load_done; /* a loading entry became loaded or orphaned, or went away */
    backbone_entry *e;
    int n, cap;
    unsigned long long gens;
} backbone_registry;

void backbones_init(backbone_registry *r);
void backbones_free(backbone_registry *r);
/* What a job's acquire adds: counted (may be NULL) is called, outside the registry's lock, once
 * the registry counts the bytes of the caller's copy (its loading entry made, or a loaded one
 * taken), so a reservation the caller held for them may go (while it waits for another's load
 * both are counted); stop (may be NULL), when set (with backbones_wake after), ends a wait for
 * another's load with SHERL_ECANCELLED. */
typedef struct {
    void (*counted)(void *ctx);
    void *ctx;
    const volatile int *stop;
} backbone_hooks;

/* The resident copy of the backbone at resolved path on backend be with its weight matrices
 * in prec, loading it when absent; *model is shared read-only until backbones_release. pin:
 * keep it loaded with no job using it. The load runs outside the registry's lock, behind a
 * loading entry: other keys, lists and admission go on meanwhile, and a second user of the
 * same key waits for that load instead of making a second copy (or, when it fails, one waiter
 * takes the entry over and loads it, the bytes counted all along). hooks may be NULL. */
sherl_status backbones_acquire(backbone_registry *r, const char *path, const sherl_backend *be,
                               sherl_precision prec, int pin, bert_model **model,
                               const backbone_hooks *hooks);
/* Wakes every acquire waiting for a load, to look at its stop flag. */
void backbones_wake(backbone_registry *r);
void backbones_release(backbone_registry *r, const bert_model *model);
/* The resolved path of a loaded or loading backbone named name, 0 when none (path: PATH_MAX
 * bytes). */
int backbones_find_name(backbone_registry *r, const char *name, char *path);
/* Whether the key is resident or loading (either way its bytes are counted already). */
int backbones_is_loaded(backbone_registry *r, const char *path, const sherl_backend *be,
                        sherl_precision prec);
/* The config.json of the model folder at path (the backbone's size before it is loaded). */
sherl_status backbones_config(const char *path, hf_config *cfg);
/* The bytes a backbone of this config holds resident at prec, as the planner counts them. */
int64_t backbones_planned_bytes(const hf_config *cfg, sherl_precision prec);
/* Unpins the one backbone whose name (or resolved path, when name starts with '/') matches,
 * on backend be (NULL: any; gpu_only: any device backend) at precision prec (-1: any), and
 * frees it unless jobs use it. 0 ok, -1 none matches, -2 in use by jobs, -3 several match, -4
 * still loading. out
 * (may be NULL) receives the matched entry (a snapshot); others (may be NULL) lists every match
 * as "device/precision". */
int backbones_unload(backbone_registry *r, const char *name, const sherl_backend *be,
                     int gpu_only, int prec, backbone_entry *out, char *others,
                     size_t others_cap);
/* A snapshot, loading entries included: *out malloc'd (free it); model pointers are NULL. */
int backbones_list(backbone_registry *r, backbone_entry **out);

/* ---- memory pools ----
 * Admission counts the planner's bytes against one pool per backend in use. Pool 0 is host
 * memory ("cpu", budget memory-budget): it holds cpu jobs whole and the host side of device
 * jobs (PLAN_HOST items and the largest transient). A device pool ("cuda:0", budget its total
 * memory minus gpu-memory-reserve) holds the arenas (PLAN_ARENA items) of the jobs on it and
 * the backbones resident on it. */
#define SHERLD_MAX_POOLS (1 + SHERL_CUDA_MAX_DEVICES)

typedef struct {
    const sherl_backend *be; /* pool 0: sherl_backend_cpu() (every host-memory backend) */
    char name[32];           /* "cpu", "cuda:0" (sherl_backend_label) */
    int64_t budget;
    int64_t total;           /* the memory's size when the pool was made */
} mem_pool;

/* What a job holds, by pool. */
typedef struct {
    int pool;              /* where its arenas and backbone go; -1: its backend is not usable
                            * (a recovered job: it fails with the reason when it starts) */
    int64_t dev_own;       /* on pool: arenas minus the backbone (host backends: all of the
                            * peak minus the backbone) */
    int64_t host_own;      /* on pool 0 besides, for device backends: peak minus arenas */
    int64_t backbone;      /* on pool unless the backbone is resident for the job's key */
} job_need;

/* The split of a plan over the pools (pool: the pool of the job's backend). */
job_need job_need_of(int pool, int host_memory, int64_t peak, int64_t arena, int64_t backbone);
/* The bytes the job adds to each of n pools: its own, plus its backbone unless resident. */
void job_need_bytes(const job_need *j, int backbone_resident, int64_t *bytes, int n);
/* The first pool (of n) where used + bytes exceed the budget, or -1 when it fits them all. */
int pools_short(const int64_t *bytes, const int64_t *used, const int64_t *budget, int n);

/* One GPU a job that may run on any of them ("cuda", "auto") could go to. */
typedef struct {
    int pool;       /* its pool */
    int jobs;       /* jobs running there now */
    int resident;   /* the job's backbone is resident there for its key */
} pool_choice;
/* Where such a job goes: of the nc candidates, those where it fits now (j's bytes moved to the
 * candidate's pool, its backbone counted unless resident), the one running the fewest jobs (a
 * GPU's compute is shared by its jobs: spread them), then one holding its backbone (share the
 * copy), then the most budget left after it, then the first. The chosen candidate's index, or
 * -1 when it fits none now. n: the pools in used and budget. */
int pools_pick(const job_need *j, const pool_choice *c, int nc, const int64_t *used,
               const int64_t *budget, int n);

/* ---- jobs ---- */
typedef struct running_job running_job;
typedef struct queued_job queued_job;

/* Memory an RPC holds while it runs (Predict: its model's arenas, and its backbone until the
 * registry counts it), admitted and counted as a job's is. */
typedef struct call_use {
    struct call_use *next;
    char id[PATH_MAX];      /* "predict:<job id>" */
    char name[128];
    int pool;               /* its backend's */
    int64_t own;            /* on pool */
    int64_t host;           /* on the host pool besides, for a device backend */
    int64_t backbone;       /* on pool until the registry counts the backbone */
} call_use;

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
    call_use *calls;           /* RPCs holding planned memory now (Predict) */
    int draining, stopping;
    int watchers;              /* WatchJob streams running (a drain waits for them to flush) */
    int64_t budget;            /* bytes of host memory (pools[0].budget) */
    mem_pool pools[SHERLD_MAX_POOLS]; /* under mu */
    int n_pools;
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
typedef struct {
    int fits_now, fits_ever;
    int64_t free_bytes;          /* of the host pool */
    char device[32];             /* the pool of the job's arenas */
    const char *backend;         /* "cpu", "cuda" */
    const char *precision;       /* "fp32", "bf16" */
    int64_t device_bytes, host_bytes;   /* the plan's arenas; the rest of its peak */
    int64_t device_budget, device_free;
    int backbone_resident;
    char reason[600];
} job_estimate;
job_result jobs_estimate(sherld *d, const char *tenant, const char *spec_json, memory_plan *plan,
                         job_estimate *e);
job_result jobs_cancel(sherld *d, const char *tenant, const char *id);
/* The job's record if the tenant may see it (NULL tenant: any). */
job_result jobs_get(sherld *d, const char *tenant, const char *id, job_record *out);
/* Appends an event to a job's log and wakes watchers. */
sherl_status jobs_event(sherld *d, const char *id, int kind, const uint8_t *payload, size_t len,
                        job_state new_state, const char *error);
/* Admits an RPC's memory (u's pool, own, host, backbone set; the rest is filled in) against
 * the budgets now, as a job's: counted until jobs_call_release. RESOURCE_EXHAUSTED naming the
 * numbers when it does not fit now. what names the call in the message ("Predict"). */
job_result jobs_call_reserve(sherld *d, call_use *u, const char *what);
void jobs_call_release(sherld *d, call_use *u);
/* The registry counts the call's backbone now (backbones_acquire's counted): its reservation
 * of those bytes ends. */
void jobs_call_backbone_counted(sherld *d, call_use *u);
/* Planned bytes in use in host memory (pool 0). */
int64_t jobs_used_bytes(sherld *d);
void jobs_counts(sherld *d, int *queued, int *running);
/* The pool of backend be, made (with its budget) on first use; -1 when there is no room. */
int jobs_pool(sherld *d, const sherl_backend *be);
/* Whether a job or backbone of device name `device` on backend be may go to any GPU of the
 * node, the daemon's choice: "cuda", and "auto" when it selected a GPU. */
int jobs_any_gpu(const char *device, const sherl_backend *be);
/* The backend a device name ("cpu", "cuda", "cuda:N", "auto") selects (for "cuda" and "auto",
 * the first GPU: see jobs_any_gpu); an error naming field, and for a GPU this node cannot use,
 * the reason (FAILED_PRECONDITION). */
job_result jobs_backend_named(const char *field, const char *device, const sherl_backend **be);
/* The GPU where a backbone of `bytes` at (path, prec) should be resident for a "cuda" or
 * "auto" request: one already holding it, else the one with the most budget left that has room
 * for it, else (none has room) the one with the most left. NULL when the node has no GPU. */
const sherl_backend *jobs_gpu_for_backbone(sherld *d, const char *path, sherl_precision prec,
                                           int64_t bytes);

/* One pool's state for GetNodeStatus: the memory, and every backbone and running job in it. */
typedef struct {
    char id[PATH_MAX];   /* a job's id or a backbone's path */
    char name[128];
    char precision[8];
    int64_t bytes;
} pool_use;

typedef struct {
    mem_pool pool;
    char description[256];
    int64_t total, free;   /* measured now (0 when the backend cannot tell) */
    int64_t planned;       /* the sum of uses[].bytes */
    pool_use *uses;        /* backbones first (n_backbones), then jobs */
    int n_backbones, n_jobs;
} pool_status;

/* Every pool, host first; *out malloc'd, free with jobs_pools_free. */
int jobs_pools(sherld *d, pool_status **out);
void jobs_pools_free(pool_status *p, int n);

#endif
