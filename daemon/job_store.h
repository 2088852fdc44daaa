/* The job store: SQLite (WAL, synchronous=FULL) holding jobs, their append-only event logs and
 * uploaded files. Every call is one transaction that has committed when it returns, so a state
 * change or event the daemon acknowledges survives a crash (SIGKILL, power loss). Artifacts and
 * checkpoints live as files beside the database (see state.c). Thread-safe: one connection
 * behind a mutex. */
#ifndef SHERLD_JOB_STORE_H
#define SHERLD_JOB_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef struct job_store job_store;

/* Job states, numbered as sherl.v1.JobState. */
typedef enum {
    JOB_QUEUED = 1,
    JOB_LOADING = 2,
    JOB_RUNNING = 3,
    JOB_STOPPING = 4,
    JOB_SUCCEEDED = 5,
    JOB_FAILED = 6,
    JOB_CANCELLED = 7
} job_state;

const char *job_state_name(job_state s);
int job_state_is_final(job_state s);

#define JOB_ID_LEN 19 /* "j-" + 16 hex digits */

typedef struct {
    char id[JOB_ID_LEN + 1];
    char tenant[64];
    char name[128];
    job_state state;
    int priority;
    int64_t created_ms, started_ms, finished_ms;
    int resumes;
    int64_t last_seq;   /* the job's last event */
    int64_t planned_bytes;
    char *spec_json;    /* malloc'd; the validated spec */
    char *plan_json;    /* malloc'd, may be NULL */
    char *error;        /* malloc'd, may be NULL: why it failed */
} job_record;

void job_record_free(job_record *r);

typedef struct {
    int64_t seq, time_ms;
    int kind;           /* the caller's event kind (see daemon/events.h) */
    uint8_t *payload;   /* malloc'd */
    size_t len;
} job_event;

void job_events_free(job_event *ev, int n);

sherl_status job_store_open(job_store **out, const char *path);
void job_store_close(job_store *s);

/* Inserts a new job together with its first event (payload: the encoded event) in one
 * transaction; r->last_seq becomes 1. SHERL_EINVAL if the id exists. */
sherl_status job_store_insert(job_store *s, job_record *r, int64_t time_ms, int kind,
                              const uint8_t *payload, size_t len);
/* Appends an event (seq = last + 1, returned in *seq) and, when new_state > 0, sets the job's
 * state (with started_ms / finished_ms stamped on RUNNING / a final state) and error (may be
 * NULL) — in one transaction. SHERL_EINVAL when the job is unknown, or (nothing appended) when
 * new_state > 0 and the job is already in a final state. */
sherl_status job_store_append(job_store *s, const char *id, int64_t time_ms, int kind,
                              const uint8_t *payload, size_t len, job_state new_state,
                              const char *error, int64_t *seq);
/* Counts one more resume of the job. */
sherl_status job_store_count_resume(job_store *s, const char *id);
/* SHERL_EINVAL "unknown job" when absent (callers map it to NOT_FOUND). */
sherl_status job_store_get(job_store *s, const char *id, job_record *out);
/* Jobs of a tenant (NULL: every tenant) in the given states (n_states 0: all), newest first,
 * created before `before_ms` (0: no bound) or, at equal times, with a smaller id than
 * before_id; at most limit. *out is malloc'd (job_record_free each, then free). */
sherl_status job_store_list(job_store *s, const char *tenant, const job_state *states,
                            int n_states, int64_t before_ms, const char *before_id, int limit,
                            job_record **out, int *n);
/* Events of a job with seq > after_seq, oldest first, at most limit. */
sherl_status job_store_events(job_store *s, const char *id, int64_t after_seq, int limit,
                              job_event **out, int *n);

/* Uploaded files, content-addressed: ref is "sha256:<64 hex>". Putting an existing ref for
 * the same tenant is a no-op. */
sherl_status job_store_put_file(job_store *s, const char *ref, const char *tenant,
                                const char *name, int64_t size, int64_t time_ms);
/* 1 and fills name/size when the tenant has the file (NULL tenant: any), 0 when not. */
int job_store_has_file(job_store *s, const char *ref, const char *tenant, char *name,
                       size_t name_cap, int64_t *size);

#endif
