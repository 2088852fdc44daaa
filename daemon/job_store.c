#include "job_store.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct job_store {
    sqlite3 *db;
    pthread_mutex_t mu;
    char path[1024];
};

static const char *const STATE_NAMES[] = {"UNSPECIFIED", "QUEUED", "LOADING", "RUNNING",
                                          "STOPPING", "SUCCEEDED", "FAILED", "CANCELLED"};

const char *job_state_name(job_state s)
{
    return (unsigned)s < 8 ? STATE_NAMES[s] : "UNKNOWN";
}

int job_state_is_final(job_state s)
{
    return s == JOB_SUCCEEDED || s == JOB_FAILED || s == JOB_CANCELLED;
}

void job_record_free(job_record *r)
{
    if (!r)
        return;
    free(r->spec_json), free(r->plan_json), free(r->error);
    r->spec_json = r->plan_json = r->error = NULL;
}

void job_events_free(job_event *ev, int n)
{
    for (int i = 0; ev && i < n; i++)
        free(ev[i].payload);
    free(ev);
}

static sherl_status db_error(job_store *s, const char *what)
{
    return sherl_errorf(SHERL_EIO, "job store %s: %s: %s", s->path, what, sqlite3_errmsg(s->db));
}

static const char SCHEMA[] =
    "CREATE TABLE IF NOT EXISTS jobs ("
    "  id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT NOT NULL,"
    "  state INTEGER NOT NULL, priority INTEGER NOT NULL,"
    "  created_ms INTEGER NOT NULL, started_ms INTEGER NOT NULL DEFAULT 0,"
    "  finished_ms INTEGER NOT NULL DEFAULT 0, resumes INTEGER NOT NULL DEFAULT 0,"
    "  last_seq INTEGER NOT NULL DEFAULT 0, planned_bytes INTEGER NOT NULL DEFAULT 0,"
    "  spec_json TEXT NOT NULL, plan_json TEXT, error TEXT);"
    "CREATE INDEX IF NOT EXISTS jobs_by_time ON jobs (created_ms DESC, id DESC);"
    "CREATE TABLE IF NOT EXISTS events ("
    "  job_id TEXT NOT NULL, seq INTEGER NOT NULL, time_ms INTEGER NOT NULL,"
    "  kind INTEGER NOT NULL, payload BLOB NOT NULL, PRIMARY KEY (job_id, seq))"
    "  WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS files ("
    "  ref TEXT NOT NULL, tenant TEXT NOT NULL, name TEXT NOT NULL, size INTEGER NOT NULL,"
    "  created_ms INTEGER NOT NULL, PRIMARY KEY (ref, tenant)) WITHOUT ROWID;";

sherl_status job_store_open(job_store **out, const char *path)
{
    *out = NULL;
    job_store *s = calloc(1, sizeof *s);
    if (!s)
        return sherl_errorf(SHERL_ENOMEM, "out of memory");
    snprintf(s->path, sizeof s->path, "%s", path);
    pthread_mutex_init(&s->mu, NULL);
    sherl_status st = sherl_ok();
    if (sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                                          SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
        st = s->db ? db_error(s, "open") : sherl_errorf(SHERL_ENOMEM, "out of memory");
        goto fail;
    }
    sqlite3_busy_timeout(s->db, 5000);
    /* WAL: readers do not block the writer; synchronous=FULL: a commit is on disk when it
     * returns, which is what "committed before acknowledged" needs across power loss too. */
    char *err = NULL;
    if (sqlite3_exec(s->db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                            "PRAGMA foreign_keys=ON;",
                     NULL, NULL, &err) != SQLITE_OK ||
        sqlite3_exec(s->db, SCHEMA, NULL, NULL, &err) != SQLITE_OK) {
        st = sherl_errorf(SHERL_EIO, "job store %s: %s", path, err ? err : "schema");
        sqlite3_free(err);
        goto fail;
    }
    *out = s;
    return sherl_ok();
fail:
    job_store_close(s);
    return st;
}

void job_store_close(job_store *s)
{
    if (!s)
        return;
    if (s->db)
        sqlite3_close(s->db);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* ------------------------------------------------------------------------------------------
 * statements */

static sqlite3_stmt *prepare(job_store *s, const char *sql)
{
    sqlite3_stmt *q = NULL;
    if (sqlite3_prepare_v2(s->db, sql, -1, &q, NULL) != SQLITE_OK)
        return NULL;
    return q;
}

static int exec(job_store *s, const char *sql)
{
    return sqlite3_exec(s->db, sql, NULL, NULL, NULL) == SQLITE_OK;
}

static sherl_status insert_event(job_store *s, const char *id, int64_t seq, int64_t time_ms,
                                 int kind, const uint8_t *payload, size_t len)
{
    sqlite3_stmt *q = prepare(s, "INSERT INTO events (job_id, seq, time_ms, kind, payload) "
                                 "VALUES (?, ?, ?, ?, ?)");
    if (!q)
        return db_error(s, "prepare event");
    sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 2, seq);
    sqlite3_bind_int64(q, 3, time_ms);
    sqlite3_bind_int(q, 4, kind);
    sqlite3_bind_blob(q, 5, payload ? (const void *)payload : "", (int)len, SQLITE_STATIC);
    int rc = sqlite3_step(q);
    sqlite3_finalize(q);
    return rc == SQLITE_DONE ? sherl_ok() : db_error(s, "insert event");
}

static sherl_status finish_tx(job_store *s, sherl_status st)
{
    if (st.code) {
        exec(s, "ROLLBACK");
        return st;
    }
    if (!exec(s, "COMMIT")) {
        st = db_error(s, "commit");
        exec(s, "ROLLBACK");
    }
    return st;
}

sherl_status job_store_insert(job_store *s, job_record *r, int64_t time_ms, int kind,
                              const uint8_t *payload, size_t len)
{
    pthread_mutex_lock(&s->mu);
    sherl_status st = sherl_ok();
    if (!exec(s, "BEGIN IMMEDIATE")) {
        st = db_error(s, "begin");
        pthread_mutex_unlock(&s->mu);
        return st;
    }
    sqlite3_stmt *q = prepare(s, "INSERT INTO jobs (id, tenant, name, state, priority, created_ms,"
                                 " last_seq, planned_bytes, spec_json, plan_json)"
                                 " VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, ?)");
    if (!q) {
        st = db_error(s, "prepare job");
    } else {
        sqlite3_bind_text(q, 1, r->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 2, r->tenant, -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 3, r->name, -1, SQLITE_STATIC);
        sqlite3_bind_int(q, 4, (int)r->state);
        sqlite3_bind_int(q, 5, r->priority);
        sqlite3_bind_int64(q, 6, r->created_ms);
        sqlite3_bind_int64(q, 7, r->planned_bytes);
        sqlite3_bind_text(q, 8, r->spec_json ? r->spec_json : "{}", -1, SQLITE_STATIC);
        if (r->plan_json)
            sqlite3_bind_text(q, 9, r->plan_json, -1, SQLITE_STATIC);
        else
            sqlite3_bind_null(q, 9);
        int rc = sqlite3_step(q);
        if (rc == SQLITE_CONSTRAINT)
            st = sherl_errorf(SHERL_EINVAL, "job %s already exists", r->id);
        else if (rc != SQLITE_DONE)
            st = db_error(s, "insert job");
        sqlite3_finalize(q);
    }
    if (!st.code)
        st = insert_event(s, r->id, 1, time_ms, kind, payload, len);
    st = finish_tx(s, st);
    if (!st.code)
        r->last_seq = 1;
    pthread_mutex_unlock(&s->mu);
    return st;
}

sherl_status job_store_append(job_store *s, const char *id, int64_t time_ms, int kind,
                              const uint8_t *payload, size_t len, job_state new_state,
                              const char *error, int64_t *seq)
{
    pthread_mutex_lock(&s->mu);
    sherl_status st = sherl_ok();
    if (!exec(s, "BEGIN IMMEDIATE")) {
        st = db_error(s, "begin");
        pthread_mutex_unlock(&s->mu);
        return st;
    }
    int64_t next = 0;
    sqlite3_stmt *q = prepare(s, "SELECT last_seq, state FROM jobs WHERE id = ?");
    if (!q) {
        st = db_error(s, "prepare");
    } else {
        sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
        if (sqlite3_step(q) == SQLITE_ROW) {
            next = sqlite3_column_int64(q, 0) + 1;
            job_state now = (job_state)sqlite3_column_int(q, 1);
            /* a final state is final: a late STOPPING (a cancel racing the job's end) must not
             * reopen it */
            if (new_state > 0 && job_state_is_final(now))
                st = sherl_errorf(SHERL_EINVAL, "job '%.40s' is already %s", id,
                                  job_state_name(now));
        } else {
            st = sherl_errorf(SHERL_EINVAL, "unknown job '%.40s'", id);
        }
        sqlite3_finalize(q);
    }
    if (!st.code)
        st = insert_event(s, id, next, time_ms, kind, payload, len);
    if (!st.code) {
        q = prepare(s, new_state > 0
                           ? "UPDATE jobs SET last_seq = ?1, state = ?2,"
                             " started_ms = CASE WHEN ?2 = 3 AND started_ms = 0 THEN ?3"
                             "   ELSE started_ms END,"
                             " finished_ms = CASE WHEN ?2 IN (5, 6, 7) THEN ?3 ELSE finished_ms END,"
                             " error = COALESCE(?4, error) WHERE id = ?5"
                           : "UPDATE jobs SET last_seq = ?1 WHERE id = ?5");
        if (!q) {
            st = db_error(s, "prepare update");
        } else {
            sqlite3_bind_int64(q, 1, next);
            if (new_state > 0) {
                sqlite3_bind_int(q, 2, (int)new_state);
                sqlite3_bind_int64(q, 3, time_ms);
                if (error)
                    sqlite3_bind_text(q, 4, error, -1, SQLITE_STATIC);
                else
                    sqlite3_bind_null(q, 4);
            }
            sqlite3_bind_text(q, 5, id, -1, SQLITE_STATIC);
            if (sqlite3_step(q) != SQLITE_DONE)
                st = db_error(s, "update job");
            sqlite3_finalize(q);
        }
    }
    st = finish_tx(s, st);
    if (!st.code && seq)
        *seq = next;
    pthread_mutex_unlock(&s->mu);
    return st;
}

sherl_status job_store_count_resume(job_store *s, const char *id)
{
    pthread_mutex_lock(&s->mu);
    sherl_status st = sherl_ok();
    sqlite3_stmt *q = prepare(s, "UPDATE jobs SET resumes = resumes + 1 WHERE id = ?");
    if (!q) {
        st = db_error(s, "prepare");
    } else {
        sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
        if (sqlite3_step(q) != SQLITE_DONE)
            st = db_error(s, "update resumes");
        else if (sqlite3_changes(s->db) != 1)
            st = sherl_errorf(SHERL_EINVAL, "unknown job '%.40s'", id);
        sqlite3_finalize(q);
    }
    pthread_mutex_unlock(&s->mu);
    return st;
}

/* ------------------------------------------------------------------------------------------
 * reads */

#define JOB_COLUMNS                                                                             \
    "id, tenant, name, state, priority, created_ms, started_ms, finished_ms, resumes, last_seq," \
    " planned_bytes, spec_json, plan_json, error"

static char *dup_text(sqlite3_stmt *q, int col)
{
    const unsigned char *t = sqlite3_column_text(q, col);
    return t ? strdup((const char *)t) : NULL;
}

static void copy_text(char *dst, size_t cap, sqlite3_stmt *q, int col)
{
    const unsigned char *t = sqlite3_column_text(q, col);
    snprintf(dst, cap, "%s", t ? (const char *)t : "");
}

static sherl_status read_job(sqlite3_stmt *q, job_record *r)
{
    memset(r, 0, sizeof *r);
    copy_text(r->id, sizeof r->id, q, 0);
    copy_text(r->tenant, sizeof r->tenant, q, 1);
    copy_text(r->name, sizeof r->name, q, 2);
    r->state = (job_state)sqlite3_column_int(q, 3);
    r->priority = sqlite3_column_int(q, 4);
    r->created_ms = sqlite3_column_int64(q, 5);
    r->started_ms = sqlite3_column_int64(q, 6);
    r->finished_ms = sqlite3_column_int64(q, 7);
    r->resumes = sqlite3_column_int(q, 8);
    r->last_seq = sqlite3_column_int64(q, 9);
    r->planned_bytes = sqlite3_column_int64(q, 10);
    r->spec_json = dup_text(q, 11);
    r->plan_json = dup_text(q, 12);
    r->error = dup_text(q, 13);
    if (!r->spec_json) {
        job_record_free(r);
        return sherl_errorf(SHERL_ENOMEM, "out of memory");
    }
    return sherl_ok();
}

sherl_status job_store_get(job_store *s, const char *id, job_record *out)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&s->mu);
    sherl_status st;
    sqlite3_stmt *q = prepare(s, "SELECT " JOB_COLUMNS " FROM jobs WHERE id = ?");
    if (!q) {
        st = db_error(s, "prepare");
    } else {
        sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
        int rc = sqlite3_step(q);
        if (rc == SQLITE_ROW)
            st = read_job(q, out);
        else if (rc == SQLITE_DONE)
            st = sherl_errorf(SHERL_EINVAL, "unknown job '%.40s'", id);
        else
            st = db_error(s, "get job");
        sqlite3_finalize(q);
    }
    pthread_mutex_unlock(&s->mu);
    return st;
}

sherl_status job_store_list(job_store *s, const char *tenant, const job_state *states,
                            int n_states, int64_t before_ms, const char *before_id, int limit,
                            job_record **out, int *n)
{
    *out = NULL, *n = 0;
    if (limit <= 0)
        return sherl_ok();
    char sql[1024];
    int len = snprintf(sql, sizeof sql, "SELECT " JOB_COLUMNS " FROM jobs WHERE 1");
    if (tenant)
        len += snprintf(sql + len, sizeof sql - len, " AND tenant = ?1");
    if (before_ms > 0)
        len += snprintf(sql + len, sizeof sql - len,
                        " AND (created_ms < ?2 OR (created_ms = ?2 AND id < ?3))");
    if (n_states > 0) {
        len += snprintf(sql + len, sizeof sql - len, " AND state IN (");
        for (int i = 0; i < n_states && i < 8; i++)
            len += snprintf(sql + len, sizeof sql - len, "%s%d", i ? "," : "", (int)states[i]);
        len += snprintf(sql + len, sizeof sql - len, ")");
    }
    snprintf(sql + len, sizeof sql - len, " ORDER BY created_ms DESC, id DESC LIMIT ?4");
    pthread_mutex_lock(&s->mu);
    sherl_status st = sherl_ok();
    sqlite3_stmt *q = prepare(s, sql);
    job_record *res = calloc((size_t)limit, sizeof *res);
    int count = 0;
    if (!q || !res) {
        st = q ? sherl_errorf(SHERL_ENOMEM, "out of memory") : db_error(s, "prepare list");
    } else {
        if (tenant)
            sqlite3_bind_text(q, 1, tenant, -1, SQLITE_STATIC);
        if (before_ms > 0) {
            sqlite3_bind_int64(q, 2, before_ms);
            sqlite3_bind_text(q, 3, before_id ? before_id : "", -1, SQLITE_STATIC);
        }
        sqlite3_bind_int(q, 4, limit);
        int rc;
        while (!st.code && (rc = sqlite3_step(q)) == SQLITE_ROW && count < limit) {
            st = read_job(q, &res[count]);
            if (!st.code)
                count++;
        }
        if (!st.code && rc != SQLITE_DONE && rc != SQLITE_ROW)
            st = db_error(s, "list jobs");
    }
    sqlite3_finalize(q);
    pthread_mutex_unlock(&s->mu);
    if (st.code) {
        for (int i = 0; i < count; i++)
            job_record_free(&res[i]);
        free(res);
        return st;
    }
    *out = res, *n = count;
    return sherl_ok();
}

sherl_status job_store_events(job_store *s, const char *id, int64_t after_seq, int limit,
                              job_event **out, int *n)
{
    *out = NULL, *n = 0;
    if (limit <= 0)
        return sherl_ok();
    pthread_mutex_lock(&s->mu);
    sherl_status st = sherl_ok();
    sqlite3_stmt *q = prepare(s, "SELECT seq, time_ms, kind, payload FROM events"
                                 " WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?");
    job_event *ev = calloc((size_t)limit, sizeof *ev);
    int count = 0;
    if (!q || !ev) {
        st = q ? sherl_errorf(SHERL_ENOMEM, "out of memory") : db_error(s, "prepare events");
    } else {
        sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(q, 2, after_seq);
        sqlite3_bind_int(q, 3, limit);
        int rc;
        while ((rc = sqlite3_step(q)) == SQLITE_ROW && count < limit) {
            job_event *e = &ev[count];
            e->seq = sqlite3_column_int64(q, 0);
            e->time_ms = sqlite3_column_int64(q, 1);
            e->kind = sqlite3_column_int(q, 2);
            int len = sqlite3_column_bytes(q, 3);
            e->payload = malloc(len ? (size_t)len : 1);
            if (!e->payload) {
                st = sherl_errorf(SHERL_ENOMEM, "out of memory");
                break;
            }
            if (len)
                memcpy(e->payload, sqlite3_column_blob(q, 3), (size_t)len);
            e->len = (size_t)len;
            count++;
        }
        if (!st.code && rc != SQLITE_DONE && rc != SQLITE_ROW)
            st = db_error(s, "read events");
    }
    sqlite3_finalize(q);
    pthread_mutex_unlock(&s->mu);
    if (st.code) {
        job_events_free(ev, count);
        return st;
    }
    *out = ev, *n = count;
    return sherl_ok();
}

/* ------------------------------------------------------------------------------------------
 * files */

sherl_status job_store_put_file(job_store *s, const char *ref, const char *tenant,
                                const char *name, int64_t size, int64_t time_ms)
{
    pthread_mutex_lock(&s->mu);
    sherl_status st = sherl_ok();
    sqlite3_stmt *q = prepare(s, "INSERT OR IGNORE INTO files (ref, tenant, name, size, created_ms)"
                                 " VALUES (?, ?, ?, ?, ?)");
    if (!q) {
        st = db_error(s, "prepare file");
    } else {
        sqlite3_bind_text(q, 1, ref, -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 2, tenant ? tenant : "", -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 3, name ? name : "", -1, SQLITE_STATIC);
        sqlite3_bind_int64(q, 4, size);
        sqlite3_bind_int64(q, 5, time_ms);
        if (sqlite3_step(q) != SQLITE_DONE)
            st = db_error(s, "insert file");
        sqlite3_finalize(q);
    }
    pthread_mutex_unlock(&s->mu);
    return st;
}

int job_store_has_file(job_store *s, const char *ref, const char *tenant, char *name,
                       size_t name_cap, int64_t *size)
{
    pthread_mutex_lock(&s->mu);
    int found = 0;
    sqlite3_stmt *q = prepare(s, tenant ? "SELECT name, size FROM files WHERE ref = ? AND tenant = ?"
                                        : "SELECT name, size FROM files WHERE ref = ?");
    if (q) {
        sqlite3_bind_text(q, 1, ref, -1, SQLITE_STATIC);
        if (tenant)
            sqlite3_bind_text(q, 2, tenant, -1, SQLITE_STATIC);
        if (sqlite3_step(q) == SQLITE_ROW) {
            found = 1;
            if (name && name_cap)
                copy_text(name, name_cap, q, 0);
            if (size)
                *size = sqlite3_column_int64(q, 1);
        }
        sqlite3_finalize(q);
    }
    pthread_mutex_unlock(&s->mu);
    return found;
}
