/* The job store (daemon/job_store.c): jobs and events round-trip, sequence numbers, state
 * stamps, listing with filters and paging, files per tenant, and that everything acknowledged
 * survives a SIGKILL of the writer. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "job_store.h"

static char dir[64];

static void make_dir(void)
{
    snprintf(dir, sizeof dir, "/tmp/sherl-store-XXXXXX");
    cr_assert(mkdtemp(dir));
}

static void remove_dir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_assert(system(cmd) == 0);
}

static job_store *open_store(void)
{
    char path[128];
    snprintf(path, sizeof path, "%s/jobs.db", dir);
    job_store *s;
    sherl_status st = job_store_open(&s, path);
    cr_assert(st.code == SHERL_OK, "%s", st.msg);
    return s;
}

static void new_job(job_store *s, const char *id, const char *tenant, int64_t created)
{
    job_record r = {0};
    snprintf(r.id, sizeof r.id, "%s", id);
    snprintf(r.tenant, sizeof r.tenant, "%s", tenant);
    snprintf(r.name, sizeof r.name, "name-%s", id);
    r.state = JOB_QUEUED;
    r.priority = 2;
    r.created_ms = created;
    r.planned_bytes = 12345;
    r.spec_json = (char *)"{\"name\": \"x\"}";
    sherl_status st = job_store_insert(s, &r, created, 1, (const uint8_t *)"q", 1);
    cr_assert(st.code == SHERL_OK, "%s", st.msg);
    cr_expect_eq(r.last_seq, 1);
}

TestSuite(job_store, .init = make_dir, .fini = remove_dir);

Test(job_store, jobs_and_events_round_trip)
{
    job_store *s = open_store();
    new_job(s, "j-0000000000000001", "alice", 1000);
    job_record dup = {0};
    snprintf(dup.id, sizeof dup.id, "j-0000000000000001");
    dup.spec_json = (char *)"{}";
    cr_expect(job_store_insert(s, &dup, 1, 1, NULL, 0).code == SHERL_EINVAL, "duplicate id");

    int64_t seq;
    cr_assert(job_store_append(s, "j-0000000000000001", 2000, 1, (const uint8_t *)"r", 1,
                               JOB_RUNNING, NULL, &seq).code == SHERL_OK);
    cr_expect_eq(seq, 2);
    cr_assert(job_store_append(s, "j-0000000000000001", 2500, 2, (const uint8_t *)"p1", 2, 0,
                               NULL, &seq).code == SHERL_OK);
    cr_expect_eq(seq, 3);
    cr_assert(job_store_append(s, "j-0000000000000001", 3000, 1, (const uint8_t *)"f", 1,
                               JOB_FAILED, "data: bad label", &seq).code == SHERL_OK);
    cr_expect_eq(seq, 4);
    cr_expect(job_store_append(s, "j-nope", 1, 1, NULL, 0, 0, NULL, &seq).code == SHERL_EINVAL);
    /* a final state is final: a late STOPPING (a cancel racing the job's end) is refused and
     * appends nothing; a message still may */
    sherl_status st = job_store_append(s, "j-0000000000000001", 3100, 1, (const uint8_t *)"s",
                                       1, JOB_STOPPING, NULL, &seq);
    cr_expect(st.code == SHERL_EINVAL && strstr(st.msg, "already FAILED"), "%s", st.msg);

    job_record r;
    cr_assert(job_store_get(s, "j-0000000000000001", &r).code == SHERL_OK);
    cr_expect_str_eq(r.tenant, "alice");
    cr_expect_str_eq(r.name, "name-j-0000000000000001");
    cr_expect_eq(r.state, JOB_FAILED);
    cr_expect_eq(r.priority, 2);
    cr_expect_eq(r.created_ms, 1000);
    cr_expect_eq(r.started_ms, 2000);
    cr_expect_eq(r.finished_ms, 3000);
    cr_expect_eq(r.last_seq, 4);
    cr_expect_eq(r.planned_bytes, 12345);
    cr_expect_str_eq(r.spec_json, "{\"name\": \"x\"}");
    cr_expect_str_eq(r.error, "data: bad label");
    job_record_free(&r);
    cr_expect(job_store_get(s, "j-nope", &r).code == SHERL_EINVAL);

    job_event *ev;
    int n;
    cr_assert(job_store_events(s, "j-0000000000000001", 1, 100, &ev, &n).code == SHERL_OK);
    cr_assert_eq(n, 3);
    cr_expect_eq(ev[0].seq, 2);
    cr_expect_eq(ev[1].kind, 2);
    cr_expect(ev[1].len == 2 && !memcmp(ev[1].payload, "p1", 2));
    cr_expect_eq(ev[2].time_ms, 3000);
    job_events_free(ev, n);
    cr_assert(job_store_count_resume(s, "j-0000000000000001").code == SHERL_OK);
    cr_assert(job_store_get(s, "j-0000000000000001", &r).code == SHERL_OK);
    cr_expect_eq(r.resumes, 1);
    job_record_free(&r);
    job_store_close(s);
}

Test(job_store, list_filters_by_tenant_and_state_and_pages_newest_first)
{
    job_store *s = open_store();
    char id[32];
    for (int i = 0; i < 7; i++) {
        snprintf(id, sizeof id, "j-%016d", i);
        /* two jobs share a creation time: paging must still neither skip nor repeat */
        new_job(s, id, i % 2 ? "bob" : "alice", i == 3 ? 200 : 100 * i);
    }
    cr_assert(job_store_append(s, "j-0000000000000004", 900, 1, NULL, 0, JOB_RUNNING, NULL,
                               NULL).code == SHERL_OK);
    job_record *r;
    int n;
    cr_assert(job_store_list(s, "alice", NULL, 0, 0, NULL, 100, &r, &n).code == SHERL_OK);
    cr_expect_eq(n, 4);
    for (int i = 0; i < n; i++) {
        cr_expect_str_eq(r[i].tenant, "alice");
        job_record_free(&r[i]);
    }
    free(r);
    job_state running = JOB_RUNNING;
    cr_assert(job_store_list(s, NULL, &running, 1, 0, NULL, 100, &r, &n).code == SHERL_OK);
    cr_expect(n == 1 && !strcmp(r[0].id, "j-0000000000000004"));
    job_record_free(&r[0]);
    free(r);
    /* pages of 2 over every tenant: 6, 5, 4, then 3 and 2 (both at 200), 1, 0 */
    const char *want[] = {"j-0000000000000006", "j-0000000000000005", "j-0000000000000004",
                          "j-0000000000000003", "j-0000000000000002", "j-0000000000000001",
                          "j-0000000000000000"};
    int seen = 0;
    int64_t before = 0;
    char before_id[32] = "";
    for (int page = 0; page < 10; page++) {
        cr_assert(job_store_list(s, NULL, NULL, 0, before, before_id, 2, &r, &n).code == SHERL_OK);
        for (int i = 0; i < n; i++) {
            cr_assert(seen < 7, "more jobs than exist");
            cr_expect_str_eq(r[i].id, want[seen], "position %d", seen);
            seen++;
        }
        if (n) {
            before = r[n - 1].created_ms;
            snprintf(before_id, sizeof before_id, "%s", r[n - 1].id);
        }
        for (int i = 0; i < n; i++)
            job_record_free(&r[i]);
        free(r);
        if (n < 2)
            break;
    }
    cr_expect_eq(seen, 7);
    job_store_close(s);
}

Test(job_store, files_belong_to_their_tenant)
{
    job_store *s = open_store();
    const char *ref = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    cr_assert(job_store_put_file(s, ref, "alice", "train.jsonl", 42, 5).code == SHERL_OK);
    cr_assert(job_store_put_file(s, ref, "alice", "again.jsonl", 42, 6).code == SHERL_OK);
    char name[64];
    int64_t size = 0;
    cr_expect(job_store_has_file(s, ref, "alice", name, sizeof name, &size));
    cr_expect_str_eq(name, "train.jsonl");
    cr_expect_eq(size, 42);
    cr_expect(!job_store_has_file(s, ref, "bob", NULL, 0, NULL));
    cr_expect(job_store_has_file(s, ref, NULL, NULL, 0, NULL));
    job_store_close(s);
}

/* A child appends events and reports each seq on a pipe once job_store_append returned; the
 * parent SIGKILLs it mid-stream. Everything reported must be in the store afterwards. */
Test(job_store, acknowledged_events_survive_sigkill, .timeout = 60)
{
    job_store *s = open_store();
    new_job(s, "j-00000000000000aa", "", 1);
    job_store_close(s);
    int fd[2];
    cr_assert(pipe(fd) == 0);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        close(fd[0]);
        job_store *c = open_store();
        for (int i = 0; i < 100000; i++) {
            int64_t seq;
            if (job_store_append(c, "j-00000000000000aa", i, 2, (const uint8_t *)&i, sizeof i,
                                 0, NULL, &seq).code)
                _exit(3);
            if (write(fd[1], &seq, sizeof seq) != (ssize_t)sizeof seq)
                _exit(4);
        }
        _exit(0);
    }
    close(fd[1]);
    int64_t acked = 0, seq;
    while (acked < 50 && read(fd[0], &seq, sizeof seq) == (ssize_t)sizeof seq)
        acked = seq;
    kill(pid, SIGKILL);
    /* the child may have acknowledged more before the signal landed: read them all */
    while (read(fd[0], &seq, sizeof seq) == (ssize_t)sizeof seq)
        acked = seq;
    int status;
    waitpid(pid, &status, 0);
    cr_expect(WIFSIGNALED(status), "the writer finished before it was killed");
    close(fd[0]);
    s = open_store();
    job_record r;
    cr_assert(job_store_get(s, "j-00000000000000aa", &r).code == SHERL_OK);
    cr_expect(r.last_seq >= acked, "acknowledged up to seq %lld, store has %lld",
              (long long)acked, (long long)r.last_seq);
    job_record_free(&r);
    job_event *ev;
    int n;
    cr_assert(job_store_events(s, "j-00000000000000aa", 0, 1 << 20, &ev, &n).code == SHERL_OK);
    cr_expect(n >= acked, "%d events, %lld acknowledged", n, (long long)acked);
    for (int i = 0; i < n; i++)
        cr_expect_eq(ev[i].seq, i + 1, "gap at %d", i);
    job_events_free(ev, n);
    job_store_close(s);
}
