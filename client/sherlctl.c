/* sherlctl: the command line of sherld. Human-readable output by default, --json for scripts.
 * Exit codes: 0 success; 1 the daemon answered an error (its code and message are printed);
 * 2 usage; 3 a watched job ended FAILED or CANCELLED; 4 the daemon cannot be reached. */
#include <cJSON.h>
#include <libgen.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "grpc/health/v1/health.pb-c.h"
#include "json_util.h"
#include "rpc_client.h"
#include "sherl/v1/sherl.pb-c.h"

static const char USAGE[] =
    "usage: sherlctl [--addr HOST:PORT] [--token T] [--json] [--timeout S] COMMAND ...\n"
    "\n"
    "commands:\n"
    "  submit JOB.json [--watch] [--priority N] [--no-upload]\n"
    "                                             validate, plan and queue a job; data files\n"
    "                                             found here are uploaded first (--no-upload:\n"
    "                                             paths are the daemon's, under its data roots)\n"
    "  estimate JOB.json [--no-upload]            the memory plan and whether it fits\n"
    "  list [--state STATE]...                    jobs, newest first\n"
    "  get ID                                     one job: state, progress, metrics, plan\n"
    "  watch ID                                   follow a job's progress to its end\n"
    "  cancel ID                                  cancel a queued or running job\n"
    "  artifact get ID [--file F] [-o PATH]       download adapter_model.safetensors (or\n"
    "                                             adapter_config.json, metrics.json)\n"
    "  predict ID TEXT...                         run a succeeded job's model on texts\n"
    "  backbones load PATH [--device D] [--precision P] | list\n"
    "          | unload NAME [--device D] [--precision P]\n"
    "                                             resident backbones, one per (folder, device,\n"
    "                                             precision): D cpu, cuda:N, cuda (any GPU)\n"
    "                                             or auto; P fp32, bf16 or fp16\n"
    "  node                                       the daemon's status: memory by device,\n"
    "                                             backbone and job\n"
    "  health                                     grpc.health.v1 check\n"
    "\n"
    "  --addr      daemon address (default $SHERL_ADDR, else 127.0.0.1:7070)\n"
    "  --token     bearer token (default $SHERL_TOKEN)\n"
    "  --json      machine-readable output\n"
    "  --timeout   seconds per call (default 60; watch has none)\n"
    "  --ca FILE   the server's CA certificate (PEM) for TLS (default $SHERL_CA; none: plaintext)\n"
    "exit codes: 0 ok, 1 error from the daemon, 2 usage, 3 job FAILED/CANCELLED, 4 unreachable\n";

static int g_json;
static double g_timeout = 60;
static rpc_client *g_cl;

static const char *const STATES[] = {"UNSPECIFIED", "QUEUED",    "LOADING", "RUNNING",
                                     "STOPPING",    "SUCCEEDED", "FAILED",  "CANCELLED"};

static const char *state_name(int s) { return s >= 0 && s < 8 ? STATES[s] : "UNKNOWN"; }

static int rpc_fail(const rpc_status *st)
{
    fprintf(stderr, "sherlctl: %s: %s\n", rpc_code_name(st->code), st->message);
    return st->code == 14 || st->code == 4 ? 4 : 1;
}

/* Packs msg, calls method, unpacks the response with `unpack`. */
static int call(const char *method, const ProtobufCMessage *msg, void **resp,
                void *(*unpack)(ProtobufCAllocator *, size_t, const uint8_t *))
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(len ? len : 1);
    protobuf_c_message_pack(msg, buf);
    uint8_t *out;
    size_t olen;
    rpc_status st;
    int code = rpc_unary(g_cl, method, buf, len, &out, &olen, g_timeout, &st);
    free(buf);
    if (code)
        return rpc_fail(&st);
    *resp = unpack(NULL, olen, out);
    free(out);
    if (!*resp) {
        fprintf(stderr, "sherlctl: the daemon's answer to %s does not decode\n", method);
        return 1;
    }
    return 0;
}

#define UNPACK(fn) ((void *(*)(ProtobufCAllocator *, size_t, const uint8_t *))(fn))

static void print_json(cJSON *o)
{
    char *t = cJSON_Print(o);
    if (t)
        puts(t);
    free(t);
    cJSON_Delete(o);
}

static void fmt_mib(char *buf, size_t n, int64_t b) { snprintf(buf, n, "%.1f MiB", b / 1048576.0); }

/* ------------------------------------------------------------------------------------------
 * jobs as JSON and text */

static cJSON *progress_json(const Sherl__V1__Progress *p)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "step", p->step);
    cJSON_AddNumberToObject(o, "total_steps", p->total_steps);
    cJSON_AddNumberToObject(o, "epoch", p->epoch);
    cJSON_AddNumberToObject(o, "epochs", p->epochs);
    cJSON_AddNumberToObject(o, "loss", p->loss);
    cJSON_AddNumberToObject(o, "lr", p->lr);
    cJSON_AddNumberToObject(o, "samples_per_s", p->samples_per_s);
    cJSON_AddNumberToObject(o, "elapsed_s", p->elapsed_s);
    cJSON_AddNumberToObject(o, "eta_s", p->eta_s);
    cJSON_AddNumberToObject(o, "memory_bytes", (double)p->memory_bytes);
    cJSON_AddNumberToObject(o, "planned_bytes", (double)p->planned_bytes);
    return o;
}

static cJSON *eval_json(const Sherl__V1__EvalMetrics *e)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "split", e->split);
    cJSON_AddNumberToObject(o, "step", e->step);
    cJSON_AddNumberToObject(o, "loss", e->loss);
    cJSON_AddNumberToObject(o, "accuracy", e->accuracy);
    cJSON_AddNumberToObject(o, "macro_f1", e->macro_f1);
    cJSON_AddNumberToObject(o, "pearson", e->pearson);
    cJSON_AddNumberToObject(o, "spearman", e->spearman);
    return o;
}

static cJSON *job_json(const Sherl__V1__Job *j)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", j->id);
    cJSON_AddStringToObject(o, "name", j->name);
    cJSON_AddStringToObject(o, "tenant", j->tenant);
    cJSON_AddStringToObject(o, "state", state_name(j->state));
    cJSON_AddStringToObject(o, "method", j->method);
    cJSON_AddStringToObject(o, "backbone", j->backbone);
    cJSON_AddNumberToObject(o, "priority", j->priority);
    cJSON_AddNumberToObject(o, "created_ms", (double)j->created_ms);
    cJSON_AddNumberToObject(o, "started_ms", (double)j->started_ms);
    cJSON_AddNumberToObject(o, "finished_ms", (double)j->finished_ms);
    cJSON_AddNumberToObject(o, "resumes", j->resumes);
    cJSON_AddStringToObject(o, "error", j->error);
    if (j->progress)
        cJSON_AddItemToObject(o, "progress", progress_json(j->progress));
    cJSON *ev = cJSON_AddArrayToObject(o, "evals");
    for (size_t i = 0; i < j->n_evals; i++)
        cJSON_AddItemToArray(ev, eval_json(j->evals[i]));
    if (j->plan) {
        cJSON *p = cJSON_AddObjectToObject(o, "plan");
        cJSON_AddNumberToObject(p, "peak_bytes", (double)j->plan->peak_bytes);
        cJSON_AddNumberToObject(p, "job_bytes", (double)j->plan->job_bytes);
        cJSON_AddNumberToObject(p, "backbone_bytes", (double)j->plan->backbone_bytes);
        cJSON_AddNumberToObject(p, "trainable_params", (double)j->plan->trainable_params);
    }
    return o;
}

static void print_job(const Sherl__V1__Job *j)
{
    if (g_json) {
        print_json(job_json(j));
        return;
    }
    printf("%s  %-10s %s (%s on %s)\n", j->id, state_name(j->state), j->name, j->method,
           j->backbone);
    if (j->plan) {
        char a[32], b[32];
        fmt_mib(a, sizeof a, j->plan->peak_bytes);
        fmt_mib(b, sizeof b, j->plan->job_bytes);
        printf("  planned memory: %s peak, %s of it the job's own; %lld trainable parameters\n",
               a, b, (long long)j->plan->trainable_params);
    }
    if (j->progress)
        printf("  step %d/%d, epoch %d/%d, loss %.4f, %.1f samples/s\n", j->progress->step,
               j->progress->total_steps, j->progress->epoch + 1, j->progress->epochs,
               j->progress->loss, j->progress->samples_per_s);
    for (size_t i = 0; i < j->n_evals; i++)
        printf("  %-10s accuracy %.4f, macro-F1 %.4f, loss %.4f\n", j->evals[i]->split,
               j->evals[i]->accuracy, j->evals[i]->macro_f1, j->evals[i]->loss);
    if (j->error && *j->error)
        printf("  error: %s\n", j->error);
    if (j->resumes)
        printf("  resumed %d time(s) after daemon restarts\n", j->resumes);
}

/* ------------------------------------------------------------------------------------------
 * submit */

static int sha256_file(const char *path, char *hex, int64_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    unsigned char buf[65536];
    size_t n;
    *size = 0;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
        EVP_DigestUpdate(md, buf, n);
        *size += (int64_t)n;
    }
    fclose(f);
    unsigned char dg[32];
    unsigned dl;
    EVP_DigestFinal_ex(md, dg, &dl);
    EVP_MD_CTX_free(md);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", dg[i]);
    return 0;
}

/* Uploads a local file; ref receives "sha256:<hex>". */
static int upload(const char *path, char *ref)
{
    char hex[65];
    int64_t size;
    if (sha256_file(path, hex, &size)) {
        fprintf(stderr, "sherlctl: cannot read %s\n", path);
        return 2;
    }
    FILE *f = fopen(path, "rb");
    rpc_stream *s = rpc_stream_open(g_cl, "/sherl.v1.Sherl/UploadFile", NULL, 0, 0);
    uint8_t *buf = malloc(1 << 20);
    int first = 1, bad = 0;
    size_t n;
    char *base = strrchr(path, '/');
    do {
        n = fread(buf, 1, 1 << 20, f);
        Sherl__V1__UploadChunk ch = SHERL__V1__UPLOAD_CHUNK__INIT;
        if (first)
            ch.name = base ? base + 1 : (char *)path, ch.size = size;
        ch.data.data = buf, ch.data.len = n;
        if (n < (1u << 20))
            ch.sha256 = hex;
        size_t len = sherl__v1__upload_chunk__get_packed_size(&ch);
        uint8_t *out = malloc(len + 1);
        sherl__v1__upload_chunk__pack(&ch, out);
        bad = rpc_stream_write(s, out, len);
        free(out);
        first = 0;
    } while (n == (1u << 20) && !bad);
    if (!bad && n == (1u << 20)) { /* the size was a multiple of the chunk: a last empty chunk */
        Sherl__V1__UploadChunk ch = SHERL__V1__UPLOAD_CHUNK__INIT;
        ch.sha256 = hex;
        uint8_t out[128];
        size_t len = sherl__v1__upload_chunk__pack(&ch, out);
        rpc_stream_write(s, out, len);
    }
    free(buf);
    fclose(f);
    uint8_t *resp;
    size_t rl;
    rpc_status st;
    if (rpc_stream_finish(s, &resp, &rl, &st))
        return rpc_fail(&st);
    Sherl__V1__FileInfo *fi = sherl__v1__file_info__unpack(NULL, rl, resp);
    free(resp);
    if (!fi)
        return 1;
    snprintf(ref, 80, "%s", fi->ref);
    if (!g_json)
        fprintf(stderr, "uploaded %s (%lld bytes) as %s\n", path, (long long)fi->size, fi->ref);
    sherl__v1__file_info__free_unpacked(fi, NULL);
    return 0;
}

/* Reads the spec, makes relative paths absolute (against the spec's folder) and uploads data
 * files that exist here. Returns the JSON text to send (malloc'd) or NULL. */
static int g_no_upload;

static char *prepare_spec(const char *path, int *rc)
{
    cJSON *root;
    sherl_status st = json_load_object(path, 1 << 20, &root);
    if (st.code) {
        fprintf(stderr, "sherlctl: %s\n", st.msg);
        *rc = 2;
        return NULL;
    }
    char dirbuf[PATH_MAX], absdir[PATH_MAX];
    snprintf(dirbuf, sizeof dirbuf, "%s", path);
    if (!realpath(dirname(dirbuf), absdir))
        snprintf(absdir, sizeof absdir, ".");
    cJSON *data = cJSON_GetObjectItemCaseSensitive(root, "data");
    static const char *const fields[] = {"train", "validation", "test"};
    for (int i = 0; i < 3 && cJSON_IsObject(data); i++) {
        cJSON *v = cJSON_GetObjectItemCaseSensitive(data, fields[i]);
        if (!cJSON_IsString(v) || !strncmp(v->valuestring, "sha256:", 7))
            continue;
        char local[PATH_MAX * 2];
        snprintf(local, sizeof local, "%s%s%s", v->valuestring[0] == '/' ? "" : absdir,
                 v->valuestring[0] == '/' ? "" : "/", v->valuestring);
        struct stat sb;
        if (g_no_upload || stat(local, &sb) || !S_ISREG(sb.st_mode)) {
            /* not uploaded: the daemon resolves the path under its data roots */
            cJSON_SetValuestring(v, local);
            continue;
        }
        char ref[80];
        if ((*rc = upload(local, ref))) {
            cJSON_Delete(root);
            return NULL;
        }
        cJSON_SetValuestring(v, ref);
    }
    cJSON *bb = cJSON_GetObjectItemCaseSensitive(root, "backbone");
    if (cJSON_IsString(bb) && strchr(bb->valuestring, '/') && bb->valuestring[0] != '/') {
        char abs[PATH_MAX * 2];
        snprintf(abs, sizeof abs, "%s/%s", absdir, bb->valuestring);
        cJSON_SetValuestring(bb, abs);
    }
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return text;
}

static int watch(const char *id, int quiet_end);

static int cmd_submit(int argc, char **argv)
{
    const char *path = NULL;
    int do_watch = 0, priority = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--watch"))
            do_watch = 1;
        else if (!strcmp(argv[i], "--no-upload"))
            g_no_upload = 1;
        else if (!strcmp(argv[i], "--priority") && i + 1 < argc)
            priority = atoi(argv[++i]);
        else if (!path)
            path = argv[i];
        else
            return fprintf(stderr, "sherlctl submit: unexpected '%s'\n", argv[i]), 2;
    }
    if (!path)
        return fprintf(stderr, "sherlctl submit: missing JOB.json\n"), 2;
    int rc = 0;
    char *spec = prepare_spec(path, &rc);
    if (!spec)
        return rc;
    Sherl__V1__SubmitJobRequest req = SHERL__V1__SUBMIT_JOB_REQUEST__INIT;
    req.spec_source_case = SHERL__V1__SUBMIT_JOB_REQUEST__SPEC_SOURCE_SPEC_JSON;
    req.spec_json = spec;
    req.priority = priority;
    Sherl__V1__Job *job;
    rc = call("/sherl.v1.Sherl/SubmitJob", &req.base, (void **)&job,
              UNPACK(sherl__v1__job__unpack));
    free(spec);
    if (rc)
        return rc;
    char id[64];
    snprintf(id, sizeof id, "%s", job->id);
    if (!do_watch || g_json)
        print_job(job);
    else
        printf("submitted %s (%s)\n", job->id, job->name);
    sherl__v1__job__free_unpacked(job, NULL);
    return do_watch ? watch(id, 0) : 0;
}

static int cmd_estimate(int argc, char **argv)
{
    const char *path = NULL;
    for (int i = 0; i < argc; i++) { /* --no-upload before or after the file, as submit */
        if (!strcmp(argv[i], "--no-upload"))
            g_no_upload = 1;
        else if (!path)
            path = argv[i];
        else
            return fprintf(stderr, "sherlctl estimate: unexpected '%s'\n", argv[i]), 2;
    }
    if (!path)
        return fprintf(stderr, "sherlctl estimate: expected JOB.json\n"), 2;
    int rc = 0;
    char *spec = prepare_spec(path, &rc);
    if (!spec)
        return rc;
    Sherl__V1__EstimateJobRequest req = SHERL__V1__ESTIMATE_JOB_REQUEST__INIT;
    req.spec_source_case = SHERL__V1__ESTIMATE_JOB_REQUEST__SPEC_SOURCE_SPEC_JSON;
    req.spec_json = spec;
    Sherl__V1__Estimate *e;
    rc = call("/sherl.v1.Sherl/EstimateJob", &req.base, (void **)&e,
              UNPACK(sherl__v1__estimate__unpack));
    free(spec);
    if (rc)
        return rc;
    if (g_json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddBoolToObject(o, "fits_now", e->fits_now);
        cJSON_AddBoolToObject(o, "fits_ever", e->fits_ever);
        cJSON_AddNumberToObject(o, "budget_bytes", (double)e->budget_bytes);
        cJSON_AddNumberToObject(o, "free_bytes", (double)e->free_bytes);
        cJSON_AddStringToObject(o, "reason", e->reason);
        cJSON_AddStringToObject(o, "device", e->device);
        cJSON_AddStringToObject(o, "backend", e->backend);
        cJSON_AddStringToObject(o, "precision", e->precision);
        cJSON_AddNumberToObject(o, "device_bytes", (double)e->device_bytes);
        cJSON_AddNumberToObject(o, "host_bytes", (double)e->host_bytes);
        cJSON_AddNumberToObject(o, "device_budget_bytes", (double)e->device_budget_bytes);
        cJSON_AddNumberToObject(o, "device_free_bytes", (double)e->device_free_bytes);
        cJSON_AddBoolToObject(o, "backbone_resident", e->backbone_resident);
        cJSON *p = cJSON_AddObjectToObject(o, "plan");
        cJSON_AddNumberToObject(p, "peak_bytes", (double)e->plan->peak_bytes);
        cJSON_AddNumberToObject(p, "job_bytes", (double)e->plan->job_bytes);
        cJSON_AddNumberToObject(p, "backbone_bytes", (double)e->plan->backbone_bytes);
        cJSON *items = cJSON_AddArrayToObject(p, "items");
        for (size_t i = 0; i < e->plan->n_items; i++) {
            cJSON *it = cJSON_CreateObject();
            cJSON_AddStringToObject(it, "name", e->plan->items[i]->name);
            cJSON_AddStringToObject(it, "kind", e->plan->items[i]->kind);
            cJSON_AddNumberToObject(it, "bytes", (double)e->plan->items[i]->bytes);
            cJSON_AddItemToArray(items, it);
        }
        print_json(o);
    } else {
        printf("batch %d x %d tokens, %lld trainable parameters\n", e->plan->batch,
               e->plan->seq_len, (long long)e->plan->trainable_params);
        for (size_t i = 0; i < e->plan->n_items; i++)
            printf("  %-26s %10.2f MiB  %s\n", e->plan->items[i]->name,
                   e->plan->items[i]->bytes / 1048576.0, e->plan->items[i]->kind);
        printf("  %-26s %10.2f MiB\n", "planned peak", e->plan->peak_bytes / 1048576.0);
        printf("device %s (%s, %s): %.1f MiB of arenas%s, %.1f MiB free of its %.1f MiB budget\n",
               e->device, e->backend, e->precision, e->device_bytes / 1048576.0,
               e->backbone_resident ? " (the backbone is resident already)" : "",
               e->device_free_bytes / 1048576.0, e->device_budget_bytes / 1048576.0);
        printf("host: %.1f MiB besides%s\n", e->host_bytes / 1048576.0,
               strcmp(e->device, "cpu") ? "" : " (the same memory: cpu)");
        printf("fits now: %s; fits the budget (%.1f MiB): %s%s%s\n", e->fits_now ? "yes" : "no",
               e->budget_bytes / 1048576.0, e->fits_ever ? "yes" : "no", *e->reason ? "; " : "",
               e->reason);
    }
    sherl__v1__estimate__free_unpacked(e, NULL);
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * get, list, cancel, watch */

static int cmd_get(int argc, char **argv, int cancel)
{
    if (argc != 1)
        return fprintf(stderr, "sherlctl %s: expected a job id\n", cancel ? "cancel" : "get"), 2;
    Sherl__V1__Job *job;
    int rc;
    if (cancel) {
        Sherl__V1__CancelJobRequest req = SHERL__V1__CANCEL_JOB_REQUEST__INIT;
        req.id = argv[0];
        rc = call("/sherl.v1.Sherl/CancelJob", &req.base, (void **)&job,
                  UNPACK(sherl__v1__job__unpack));
    } else {
        Sherl__V1__GetJobRequest req = SHERL__V1__GET_JOB_REQUEST__INIT;
        req.id = argv[0];
        rc = call("/sherl.v1.Sherl/GetJob", &req.base, (void **)&job,
                  UNPACK(sherl__v1__job__unpack));
    }
    if (rc)
        return rc;
    print_job(job);
    sherl__v1__job__free_unpacked(job, NULL);
    return 0;
}

static int cmd_list(int argc, char **argv)
{
    Sherl__V1__JobState states[8];
    size_t ns = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--state") || i + 1 >= argc)
            return fprintf(stderr, "sherlctl list: unexpected '%s'\n", argv[i]), 2;
        const char *s = argv[++i];
        int found = 0;
        for (int k = 1; k < 8; k++)
            if (!strcasecmp(s, STATES[k]) && ns < 8)
                states[ns++] = (Sherl__V1__JobState)k, found = 1;
        if (!found)
            return fprintf(stderr, "sherlctl list: unknown state '%s'\n", s), 2;
    }
    cJSON *all = g_json ? cJSON_CreateArray() : NULL;
    char token[128] = "";
    if (!g_json)
        printf("%-19s %-10s %-8s %-24s %s\n", "ID", "STATE", "METHOD", "NAME", "PROGRESS");
    do {
        Sherl__V1__ListJobsRequest req = SHERL__V1__LIST_JOBS_REQUEST__INIT;
        req.n_states = ns, req.states = states;
        req.page_size = 100;
        req.page_token = token;
        Sherl__V1__ListJobsResponse *resp;
        int rc = call("/sherl.v1.Sherl/ListJobs", &req.base, (void **)&resp,
                      UNPACK(sherl__v1__list_jobs_response__unpack));
        if (rc) {
            cJSON_Delete(all);
            return rc;
        }
        for (size_t i = 0; i < resp->n_jobs; i++) {
            const Sherl__V1__Job *j = resp->jobs[i];
            if (g_json) {
                cJSON_AddItemToArray(all, job_json(j));
                continue;
            }
            char prog[64] = "";
            if (j->progress)
                snprintf(prog, sizeof prog, "step %d/%d loss %.4f", j->progress->step,
                         j->progress->total_steps, j->progress->loss);
            printf("%-19s %-10s %-8s %-24.24s %s\n", j->id, state_name(j->state), j->method,
                   j->name, prog);
        }
        snprintf(token, sizeof token, "%s", resp->next_page_token);
        sherl__v1__list_jobs_response__free_unpacked(resp, NULL);
    } while (token[0]);
    if (g_json)
        print_json(all);
    return 0;
}

static void progress_bar(const Sherl__V1__Progress *p)
{
    int width = 30;
    double frac = p->total_steps ? (double)p->step / p->total_steps : 0;
    int fill = (int)(frac * width + 0.5);
    char bar[64];
    for (int i = 0; i < width; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[width] = 0;
    int eta = p->eta_s > 0 && p->eta_s < 1e7 ? (int)p->eta_s : 0;
    fprintf(stderr, "\r[%s] step %d/%d  loss %.4f  lr %.2e  %.1f samples/s  ETA %02d:%02d   ", bar,
            p->step, p->total_steps, p->loss, p->lr, p->samples_per_s, eta / 60, eta % 60);
    fflush(stderr);
}

static int watch(const char *id, int quiet_end)
{
    (void)quiet_end;
    Sherl__V1__WatchJobRequest req = SHERL__V1__WATCH_JOB_REQUEST__INIT;
    req.id = (char *)id;
    uint8_t buf[256];
    size_t len = sherl__v1__watch_job_request__pack(&req, buf);
    rpc_stream *s = rpc_stream_open(g_cl, "/sherl.v1.Sherl/WatchJob", buf, len, 0);
    int final = 0, bar = 0;
    uint8_t *msg;
    size_t ml;
    while (rpc_stream_read(s, &msg, &ml) == 1) {
        Sherl__V1__JobEvent *e = sherl__v1__job_event__unpack(NULL, ml, msg);
        free(msg);
        if (!e)
            continue;
        if (g_json) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNumberToObject(o, "seq", (double)e->seq);
            cJSON_AddNumberToObject(o, "time_ms", (double)e->time_ms);
            if (e->kind_case == SHERL__V1__JOB_EVENT__KIND_STATE)
                cJSON_AddStringToObject(o, "state", state_name(e->state));
            else if (e->kind_case == SHERL__V1__JOB_EVENT__KIND_PROGRESS)
                cJSON_AddItemToObject(o, "progress", progress_json(e->progress));
            else if (e->kind_case == SHERL__V1__JOB_EVENT__KIND_EVAL)
                cJSON_AddItemToObject(o, "eval", eval_json(e->eval));
            else if (e->kind_case == SHERL__V1__JOB_EVENT__KIND_MESSAGE)
                cJSON_AddStringToObject(o, "message", e->message);
            char *t = cJSON_PrintUnformatted(o);
            puts(t);
            fflush(stdout);
            free(t);
            cJSON_Delete(o);
        } else if (e->kind_case == SHERL__V1__JOB_EVENT__KIND_PROGRESS) {
            progress_bar(e->progress);
            bar = 1;
        } else {
            if (bar)
                fputc('\n', stderr), bar = 0;
            if (e->kind_case == SHERL__V1__JOB_EVENT__KIND_STATE)
                fprintf(stderr, "%s: %s\n", id, state_name(e->state));
            else if (e->kind_case == SHERL__V1__JOB_EVENT__KIND_EVAL)
                fprintf(stderr, "%s: %s accuracy %.4f, macro-F1 %.4f, loss %.4f (step %d)\n", id,
                        e->eval->split, e->eval->accuracy, e->eval->macro_f1, e->eval->loss,
                        e->eval->step);
            else if (e->kind_case == SHERL__V1__JOB_EVENT__KIND_MESSAGE)
                fprintf(stderr, "%s: %s\n", id, e->message);
        }
        if (e->kind_case == SHERL__V1__JOB_EVENT__KIND_STATE && e->state >= 5)
            final = e->state;
        sherl__v1__job_event__free_unpacked(e, NULL);
    }
    rpc_status st;
    if (rpc_stream_finish(s, NULL, NULL, &st))
        return rpc_fail(&st);
    if (bar)
        fputc('\n', stderr);
    if (final && !g_json) { /* end with the job's final state and metrics */
        Sherl__V1__GetJobRequest req2 = SHERL__V1__GET_JOB_REQUEST__INIT;
        req2.id = (char *)id;
        Sherl__V1__Job *job;
        if (!call("/sherl.v1.Sherl/GetJob", &req2.base, (void **)&job,
                  UNPACK(sherl__v1__job__unpack))) {
            print_job(job);
            sherl__v1__job__free_unpacked(job, NULL);
        }
    }
    return final == 5 ? 0 : final ? 3 : 1;
}

/* ------------------------------------------------------------------------------------------
 * artifacts, predict, backbones, node, health */

static int cmd_artifact(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[0], "get"))
        return fprintf(stderr, "sherlctl artifact: expected 'get ID [--file F] [-o PATH]'\n"), 2;
    const char *id = argv[1], *file = "adapter_model.safetensors", *out = NULL;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--file"))
            file = argv[i + 1];
        else if (!strcmp(argv[i], "-o"))
            out = argv[i + 1];
        else
            return fprintf(stderr, "sherlctl artifact get: unexpected '%s'\n", argv[i]), 2;
    }
    if (!out)
        out = file;
    Sherl__V1__DownloadArtifactRequest req = SHERL__V1__DOWNLOAD_ARTIFACT_REQUEST__INIT;
    req.job_id = (char *)id, req.file = (char *)file;
    size_t len = sherl__v1__download_artifact_request__get_packed_size(&req);
    uint8_t *buf = malloc(len + 1);
    sherl__v1__download_artifact_request__pack(&req, buf);
    rpc_stream *s = rpc_stream_open(g_cl, "/sherl.v1.Sherl/DownloadArtifact", buf, len, 0);
    free(buf);
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s.part", out);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        rpc_stream_cancel(s);
        return fprintf(stderr, "sherlctl: cannot write %s\n", tmp), 2;
    }
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    char want[80] = "";
    long long total = -1, got = 0;
    uint8_t *msg;
    size_t ml;
    while (rpc_stream_read(s, &msg, &ml) == 1) {
        Sherl__V1__ArtifactChunk *ch = sherl__v1__artifact_chunk__unpack(NULL, ml, msg);
        free(msg);
        if (!ch)
            continue;
        if (total < 0)
            total = ch->size;
        fwrite(ch->data.data, 1, ch->data.len, f);
        EVP_DigestUpdate(md, ch->data.data, ch->data.len);
        got += (long long)ch->data.len;
        if (ch->sha256 && *ch->sha256)
            snprintf(want, sizeof want, "%s", ch->sha256);
        sherl__v1__artifact_chunk__free_unpacked(ch, NULL);
    }
    fclose(f);
    unsigned char dg[32];
    unsigned dl;
    EVP_DigestFinal_ex(md, dg, &dl);
    EVP_MD_CTX_free(md);
    char hex[65];
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", dg[i]);
    rpc_status st;
    if (rpc_stream_finish(s, NULL, NULL, &st)) {
        unlink(tmp);
        return rpc_fail(&st);
    }
    if (got != total || strcmp(want, hex)) {
        unlink(tmp);
        fprintf(stderr, "sherlctl: the download of %s is damaged (%lld of %lld bytes, sha256 %s "
                        "vs %s)\n",
                file, got, total, hex, want);
        return 1;
    }
    if (rename(tmp, out))
        return fprintf(stderr, "sherlctl: cannot write %s\n", out), 2;
    if (g_json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "path", out);
        cJSON_AddNumberToObject(o, "bytes", (double)got);
        cJSON_AddStringToObject(o, "sha256", hex);
        print_json(o);
    } else {
        printf("%s: %lld bytes, sha256 %s\n", out, got, hex);
    }
    return 0;
}

static int cmd_predict(int argc, char **argv)
{
    if (argc < 2)
        return fprintf(stderr, "sherlctl predict: expected ID TEXT...\n"), 2;
    Sherl__V1__PredictRequest req = SHERL__V1__PREDICT_REQUEST__INIT;
    req.job_id = argv[0];
    req.n_texts = (size_t)(argc - 1), req.texts = argv + 1;
    Sherl__V1__PredictResponse *resp;
    int rc = call("/sherl.v1.Sherl/Predict", &req.base, (void **)&resp,
                  UNPACK(sherl__v1__predict_response__unpack));
    if (rc)
        return rc;
    cJSON *arr = g_json ? cJSON_CreateArray() : NULL;
    for (size_t i = 0; i < resp->n_predictions; i++) {
        const Sherl__V1__Prediction *p = resp->predictions[i];
        float best = 0;
        for (size_t k = 0; k < p->n_scores; k++)
            if (p->scores[k] > best)
                best = p->scores[k];
        if (g_json) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "text", argv[1 + i]);
            cJSON_AddStringToObject(o, "label", p->label);
            cJSON *sc = cJSON_AddArrayToObject(o, "scores");
            for (size_t k = 0; k < p->n_scores; k++)
                cJSON_AddItemToArray(sc, cJSON_CreateNumber(p->scores[k]));
            cJSON_AddItemToArray(arr, o);
        } else if (*p->label) {
            printf("%-20s %.3f  %s\n", p->label, best, argv[1 + i]);
        } else {
            printf("%10.4f  %s\n", p->n_scores ? p->scores[0] : 0.0f, argv[1 + i]);
        }
    }
    if (g_json)
        print_json(arr);
    sherl__v1__predict_response__free_unpacked(resp, NULL);
    return 0;
}

static void print_backbone(const Sherl__V1__Backbone *b, cJSON *arr)
{
    if (arr) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", b->name);
        cJSON_AddStringToObject(o, "path", b->path);
        cJSON_AddNumberToObject(o, "bytes", (double)b->bytes);
        cJSON_AddNumberToObject(o, "jobs", b->jobs);
        cJSON_AddBoolToObject(o, "loaded", b->loaded);
        cJSON_AddStringToObject(o, "device", b->device);
        cJSON_AddStringToObject(o, "precision", b->precision);
        cJSON_AddNumberToObject(o, "layers", b->layers);
        cJSON_AddNumberToObject(o, "hidden", b->hidden);
        cJSON_AddItemToArray(arr, o);
        return;
    }
    printf("%-24s %-7s %-4s %8.1f MiB  %d job(s)  %d layers x %d  %s%s\n", b->name, b->device,
           b->precision, b->bytes / 1048576.0, b->jobs, b->layers, b->hidden, b->path,
           b->loaded ? "" : "  (loading)");
}

/* --device D and --precision P after a backbones command's argument; -1 on anything else. */
static int backbone_flags(int argc, char **argv, char **device, char **precision)
{
    for (int i = 0; i < argc; i += 2) {
        if (i + 1 >= argc)
            return -1;
        if (!strcmp(argv[i], "--device"))
            *device = argv[i + 1];
        else if (!strcmp(argv[i], "--precision"))
            *precision = argv[i + 1];
        else
            return -1;
    }
    return 0;
}

static int cmd_backbones(int argc, char **argv)
{
    if (argc >= 1 && !strcmp(argv[0], "list")) {
        Sherl__V1__ListBackbonesRequest req = SHERL__V1__LIST_BACKBONES_REQUEST__INIT;
        Sherl__V1__ListBackbonesResponse *resp;
        int rc = call("/sherl.v1.Sherl/ListBackbones", &req.base, (void **)&resp,
                      UNPACK(sherl__v1__list_backbones_response__unpack));
        if (rc)
            return rc;
        cJSON *arr = g_json ? cJSON_CreateArray() : NULL;
        for (size_t i = 0; i < resp->n_backbones; i++)
            print_backbone(resp->backbones[i], arr);
        if (arr)
            print_json(arr);
        sherl__v1__list_backbones_response__free_unpacked(resp, NULL);
        return 0;
    }
    char *device = (char *)"", *precision = (char *)"";
    if (argc >= 2 && (!strcmp(argv[0], "load") || !strcmp(argv[0], "unload")) &&
        backbone_flags(argc - 2, argv + 2, &device, &precision) == 0) {
        Sherl__V1__Backbone *b;
        int rc;
        if (!strcmp(argv[0], "load")) {
            char abs[PATH_MAX];
            Sherl__V1__LoadBackboneRequest req = SHERL__V1__LOAD_BACKBONE_REQUEST__INIT;
            req.path = realpath(argv[1], abs) ? abs : argv[1];
            req.device = device, req.precision = precision;
            rc = call("/sherl.v1.Sherl/LoadBackbone", &req.base, (void **)&b,
                      UNPACK(sherl__v1__backbone__unpack));
        } else {
            Sherl__V1__UnloadBackboneRequest req = SHERL__V1__UNLOAD_BACKBONE_REQUEST__INIT;
            req.name = argv[1];
            req.device = device, req.precision = precision;
            rc = call("/sherl.v1.Sherl/UnloadBackbone", &req.base, (void **)&b,
                      UNPACK(sherl__v1__backbone__unpack));
        }
        if (rc)
            return rc;
        if (g_json) {
            cJSON *arr = cJSON_CreateArray();
            print_backbone(b, arr);
            print_json(arr);
        } else if (b->loaded) {
            print_backbone(b, NULL);
        } else {
            printf("unloaded %s (%s, %s)\n", b->name, b->device, b->precision);
        }
        sherl__v1__backbone__free_unpacked(b, NULL);
        return 0;
    }
    return fprintf(stderr, "sherlctl backbones: expected load PATH, list or unload NAME, each "
                           "load or unload optionally with --device D and --precision P\n"),
           2;
}

static int cmd_node(void)
{
    Sherl__V1__GetNodeStatusRequest req = SHERL__V1__GET_NODE_STATUS_REQUEST__INIT;
    Sherl__V1__NodeStatus *n;
    int rc = call("/sherl.v1.Sherl/GetNodeStatus", &req.base, (void **)&n,
                  UNPACK(sherl__v1__node_status__unpack));
    if (rc)
        return rc;
    if (g_json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "version", n->version);
        cJSON_AddStringToObject(o, "device", n->device);
        cJSON_AddNumberToObject(o, "memory_budget_bytes", (double)n->memory_budget_bytes);
        cJSON_AddNumberToObject(o, "memory_used_bytes", (double)n->memory_used_bytes);
        cJSON_AddNumberToObject(o, "rss_bytes", (double)n->rss_bytes);
        cJSON_AddNumberToObject(o, "queued", n->queued);
        cJSON_AddNumberToObject(o, "running", n->running);
        cJSON_AddNumberToObject(o, "max_concurrent_jobs", n->max_concurrent_jobs);
        cJSON_AddBoolToObject(o, "draining", n->draining);
        cJSON_AddNumberToObject(o, "uptime_s", (double)n->uptime_s);
        cJSON *arr = cJSON_AddArrayToObject(o, "backbones");
        for (size_t i = 0; i < n->n_backbones; i++)
            print_backbone(n->backbones[i], arr);
        cJSON *devs = cJSON_AddArrayToObject(o, "devices");
        for (size_t i = 0; i < n->n_devices; i++) {
            const Sherl__V1__DeviceStatus *x = n->devices[i];
            cJSON *dj = cJSON_CreateObject();
            cJSON_AddStringToObject(dj, "name", x->name);
            cJSON_AddStringToObject(dj, "backend", x->backend);
            cJSON_AddStringToObject(dj, "description", x->description);
            cJSON_AddNumberToObject(dj, "total_bytes", (double)x->total_bytes);
            cJSON_AddNumberToObject(dj, "free_bytes", (double)x->free_bytes);
            cJSON_AddNumberToObject(dj, "budget_bytes", (double)x->budget_bytes);
            cJSON_AddNumberToObject(dj, "planned_bytes", (double)x->planned_bytes);
            for (int k = 0; k < 2; k++) {
                cJSON *us = cJSON_AddArrayToObject(dj, k ? "jobs" : "backbones");
                size_t nu = k ? x->n_jobs : x->n_backbones;
                Sherl__V1__MemoryUse **u = k ? x->jobs : x->backbones;
                for (size_t j = 0; j < nu; j++) {
                    cJSON *uj = cJSON_CreateObject();
                    cJSON_AddStringToObject(uj, "id", u[j]->id);
                    cJSON_AddStringToObject(uj, "name", u[j]->name);
                    if (!k)
                        cJSON_AddStringToObject(uj, "precision", u[j]->precision);
                    cJSON_AddNumberToObject(uj, "bytes", (double)u[j]->bytes);
                    cJSON_AddItemToArray(us, uj);
                }
            }
            cJSON_AddItemToArray(devs, dj);
        }
        print_json(o);
    } else {
        printf("sherld %s, up %lld s%s\n%s\n", n->version, (long long)n->uptime_s,
               n->draining ? ", draining" : "", n->device);
        printf("memory: %.1f MiB planned in use of %.1f MiB budget; resident %.1f MiB\n",
               n->memory_used_bytes / 1048576.0, n->memory_budget_bytes / 1048576.0,
               n->rss_bytes / 1048576.0);
        printf("jobs: %d running (at most %d), %d queued\n", n->running, n->max_concurrent_jobs,
               n->queued);
        for (size_t i = 0; i < n->n_devices; i++) {
            const Sherl__V1__DeviceStatus *x = n->devices[i];
            printf("device %s: %s\n  %.1f MiB planned of %.1f MiB budget; %.1f MiB free of "
                   "%.1f MiB\n",
                   x->name, x->description, x->planned_bytes / 1048576.0,
                   x->budget_bytes / 1048576.0, x->free_bytes / 1048576.0,
                   x->total_bytes / 1048576.0);
            for (size_t j = 0; j < x->n_backbones; j++)
                printf("  backbone %-24s %-4s %10.1f MiB\n", x->backbones[j]->name,
                       x->backbones[j]->precision, x->backbones[j]->bytes / 1048576.0);
            for (size_t j = 0; j < x->n_jobs; j++)
                printf("  job      %-18s %-10s %10.1f MiB\n", x->jobs[j]->id, x->jobs[j]->name,
                       x->jobs[j]->bytes / 1048576.0);
        }
        if (n->n_backbones)
            printf("backbones:\n");
        for (size_t i = 0; i < n->n_backbones; i++)
            print_backbone(n->backbones[i], NULL);
    }
    sherl__v1__node_status__free_unpacked(n, NULL);
    return 0;
}

static int cmd_health(void)
{
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    Grpc__Health__V1__HealthCheckResponse *r;
    int rc = call("/grpc.health.v1.Health/Check", &req.base, (void **)&r,
                  UNPACK(grpc__health__v1__health_check_response__unpack));
    if (rc)
        return rc;
    static const char *const names[] = {"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"};
    const char *s = r->status >= 0 && r->status < 4 ? names[r->status] : "UNKNOWN";
    if (g_json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "status", s);
        print_json(o);
    } else {
        puts(s);
    }
    int serving = r->status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    grpc__health__v1__health_check_response__free_unpacked(r, NULL);
    return serving ? 0 : 1;
}

int main(int argc, char **argv)
{
    const char *addr = getenv("SHERL_ADDR"), *token = getenv("SHERL_TOKEN");
    const char *ca_file = getenv("SHERL_CA");
    if (!addr || !*addr)
        addr = "127.0.0.1:7070";
    int i = 1;
    for (; i < argc && !strncmp(argv[i], "-", 1); i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(USAGE, stdout);
            return 0;
        } else if (!strcmp(argv[i], "--json")) {
            g_json = 1;
        } else if (!strcmp(argv[i], "--addr") && i + 1 < argc) {
            addr = argv[++i];
        } else if (!strcmp(argv[i], "--token") && i + 1 < argc) {
            token = argv[++i];
        } else if (!strcmp(argv[i], "--ca") && i + 1 < argc) {
            ca_file = argv[++i];
        } else if (!strcmp(argv[i], "--timeout") && i + 1 < argc) {
            g_timeout = atof(argv[++i]);
        } else {
            fprintf(stderr, "sherlctl: unknown option '%s' (see sherlctl --help)\n", argv[i]);
            return 2;
        }
    }
    if (i >= argc) {
        fputs(USAGE, stderr);
        return 2;
    }
    const char *cmd = argv[i++];
    int n = argc - i;
    char **rest = argv + i;
    for (int k = 0; k < n; k++) {
        if (!strcmp(rest[k], "--json"))
            g_json = 1;
        if (!strcmp(rest[k], "--help") || !strcmp(rest[k], "-h")) { /* sherlctl CMD --help */
            fputs(USAGE, stdout);
            return 0;
        }
    }
    /* --json may follow the command too; drop it from the command's arguments */
    int m = 0;
    for (int k = 0; k < n; k++)
        if (strcmp(rest[k], "--json"))
            rest[m++] = rest[k];
    n = m;
    char *ca = NULL;
    size_t ca_len;
    if (ca_file && *ca_file) {
        sherl_status cst = sherl_read_file(ca_file, 1 << 20, &ca, &ca_len);
        if (cst.code) {
            fprintf(stderr, "sherlctl: --ca: %s\n", cst.msg);
            return 2;
        }
    }
    sherl_status st = rpc_client_open(&g_cl, addr, token, ca);
    free(ca);
    if (st.code) {
        fprintf(stderr, "sherlctl: %s\n", st.msg);
        return 4;
    }
    int rc;
    if (!strcmp(cmd, "submit"))
        rc = cmd_submit(n, rest);
    else if (!strcmp(cmd, "estimate"))
        rc = cmd_estimate(n, rest);
    else if (!strcmp(cmd, "list"))
        rc = cmd_list(n, rest);
    else if (!strcmp(cmd, "get"))
        rc = cmd_get(n, rest, 0);
    else if (!strcmp(cmd, "cancel"))
        rc = cmd_get(n, rest, 1);
    else if (!strcmp(cmd, "watch"))
        rc = n == 1 ? watch(rest[0], 0) : (fprintf(stderr, "sherlctl watch: expected an id\n"), 2);
    else if (!strcmp(cmd, "artifact"))
        rc = cmd_artifact(n, rest);
    else if (!strcmp(cmd, "predict"))
        rc = cmd_predict(n, rest);
    else if (!strcmp(cmd, "backbones"))
        rc = cmd_backbones(n, rest);
    else if (!strcmp(cmd, "node"))
        rc = cmd_node();
    else if (!strcmp(cmd, "health"))
        rc = cmd_health();
    else
        rc = (fprintf(stderr, "sherlctl: unknown command '%s' (see sherlctl --help)\n", cmd), 2);
    rpc_client_close(g_cl);
    return rc;
}
