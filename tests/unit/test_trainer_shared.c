/* The trainer on a backbone that is already resident (how the daemon shares one copy between
 * jobs): the same run gives bit-identical parameters with its own copy and with a shared one,
 * and a shared backbone that is not the spec's model is refused. Real all-MiniLM-L6-v2. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "guarded_backend.h"
#include "trainer.h"

static char work[256];

static void write_file(const char *name, const char *text)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", work, name);
    FILE *f = fopen(p, "w");
    cr_assert(f, "%s", p);
    fputs(text, f);
    fclose(f);
}

static job_spec make_spec(const char *out)
{
    char json[2048];
    snprintf(json, sizeof json,
             "{\"name\": \"shared\", \"backbone\": \"%s\", \"method\": \"sherl\","
             " \"data\": {\"train\": \"train.jsonl\", \"max_length\": 24},"
             " \"train\": {\"epochs\": 1, \"max_steps\": 2, \"batch_size\": 4, \"seed\": 9},"
             " \"resources\": {\"threads\": 1}, \"output\": \"%s\"}",
             SHERL_MINILM_DIR, out);
    job_spec spec;
    sherl_status st = job_spec_parse(&spec, json, strlen(json), "spec", work);
    cr_assert(st.code == SHERL_OK, "%s", st.msg);
    return spec;
}

static char *read_all(const char *path, long *n)
{
    FILE *f = fopen(path, "rb");
    cr_assert(f, "%s", path);
    fseek(f, 0, SEEK_END);
    *n = ftell(f);
    rewind(f);
    char *b = malloc((size_t)*n);
    cr_assert(fread(b, 1, (size_t)*n, f) == (size_t)*n);
    fclose(f);
    return b;
}

Test(trainer, shared_backbone_gives_the_same_run, .timeout = 300)
{
    snprintf(work, sizeof work, "%s/trainer_shared", SHERL_TEST_WORK);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", work); /* no stale checkpoints from a past run */
    cr_assert(system(cmd) == 0);
    cr_assert(mkdir(work, 0755) == 0);
    write_file("train.jsonl",
               "{\"text\": \"a small dog barks at the mailman\", \"label\": \"animal\"}\n"
               "{\"text\": \"bread baked with flour and yeast\", \"label\": \"food\"}\n"
               "{\"text\": \"the cat sleeps on the warm sofa\", \"label\": \"animal\"}\n"
               "{\"text\": \"a bowl of hot tomato soup\", \"label\": \"food\"}\n"
               "{\"text\": \"horses run across the field\", \"label\": \"animal\"}\n"
               "{\"text\": \"fresh apples and sweet pears\", \"label\": \"food\"}\n"
               "{\"text\": \"an eagle circles over the valley\", \"label\": \"animal\"}\n"
               "{\"text\": \"rice cooked with saffron\", \"label\": \"food\"}\n");
    train_result r;
    job_spec own = make_spec("own");
    sherl_status st = train_run(&own, NULL, &r);
    cr_assert(st.code == SHERL_OK, "%s", st.msg);

    bert_model *bb;
    st = bert_load(&bb, SHERL_MINILM_DIR, sherl_backend_cpu());
    cr_assert(st.code == SHERL_OK, "%s", st.msg);
    job_spec shared = make_spec("shared");
    train_hooks hooks = {.backbone = bb};
    st = train_run(&shared, &hooks, &r);
    cr_assert(st.code == SHERL_OK, "%s", st.msg);
    cr_expect(r.plan.backbone_bytes > 80u << 20 && r.plan.backbone_bytes < r.plan.peak_bytes,
              "backbone %zu of peak %zu bytes", r.plan.backbone_bytes, r.plan.peak_bytes);

    char a[600], b[600];
    snprintf(a, sizeof a, "%s/own/checkpoint/params-00000002.safetensors", work);
    snprintf(b, sizeof b, "%s/shared/checkpoint/params-00000002.safetensors", work);
    long na, nb;
    char *da = read_all(a, &na), *db = read_all(b, &nb);
    cr_expect(na == nb && !memcmp(da, db, (size_t)na),
              "the shared-backbone run's parameters differ from the own-copy run's");
    free(da), free(db);

    /* a resident backbone that is not the spec's model */
    bb->cfg.layer_norm_eps *= 2;
    job_spec other = make_spec("other");
    st = train_run(&other, &hooks, &r);
    cr_expect(st.code == SHERL_EINVAL && strstr(st.msg, "the loaded backbone differs"), "%s",
              st.msg);
    bert_free(bb);
}

/* The engine on memory it may only reach through the backend's copies (as on a GPU): every
 * path of a run (weights upload, parameter init, batches, evaluation, checkpoints, resume)
 * must go through copy_to_device / copy_to_host, or the guarded backend faults. Its ops are
 * the CPU's, so the parameters must equal the CPU run's bit for bit; in bf16 too, where a
 * device's backbone is rounded on the host and copied (the CPU's in place). */
Test(trainer, device_memory_run_equals_the_cpu_run, .timeout = 600)
{
    snprintf(work, sizeof work, "%s/trainer_device", SHERL_TEST_WORK);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", work);
    cr_assert(system(cmd) == 0);
    cr_assert(mkdir(work, 0755) == 0);
    static const char *rows =
        "{\"text\": \"a small dog barks at the mailman\", \"label\": \"animal\"}\n"
        "{\"text\": \"bread baked with flour and yeast\", \"label\": \"food\"}\n"
        "{\"text\": \"the cat sleeps on the warm sofa\", \"label\": \"animal\"}\n"
        "{\"text\": \"a bowl of hot tomato soup\", \"label\": \"food\"}\n"
        "{\"text\": \"horses run across the field\", \"label\": \"animal\"}\n";
    write_file("train.jsonl", rows);
    write_file("val.jsonl", rows);
    /* (fp16 loads take the same path as bf16 with kernels.h's other conversion, which
     * test_kernels checks bit for bit against the compiler's _Float16) */
    const char *methods[] = {"sherl", "full", "sherl"};
    const char *precisions[] = {"fp32", "fp32", "bf16"};
    /* the guarded backend is a device to the engine, whose feed-forward chunks are otherwise
     * larger than the CPU's (bert_ffn_chunk), and BLAS sums a product of fewer rows in another
     * order: the CPU's chunks on both sides, for the same bits */
    bert_set_ffn_device_rows(1);
    for (int k = 0; k < 3; k++) {
        char json[2048], out_cpu[64], out_dev[64];
        snprintf(out_cpu, sizeof out_cpu, "%s-%s-cpu", methods[k], precisions[k]);
        snprintf(out_dev, sizeof out_dev, "%s-%s-dev", methods[k], precisions[k]);
        job_spec spec[2];
        for (int d = 0; d < 2; d++) {
            snprintf(json, sizeof json,
                     "{\"name\": \"dev\", \"backbone\": \"%s\", \"method\": \"%s\","
                     " \"data\": {\"train\": \"train.jsonl\", \"validation\": \"val.jsonl\","
                     " \"max_length\": 16},"
                     " \"train\": {\"epochs\": 2, \"batch_size\": 2, \"seed\": 5,"
                     " \"checkpoint_every\": 2},"
                     " \"resources\": {\"threads\": 1, \"precision\": \"%s\"},"
                     " \"output\": \"%s\"}",
                     SHERL_MINILM_DIR, methods[k], precisions[k], d ? out_dev : out_cpu);
            sherl_status st = job_spec_parse(&spec[d], json, strlen(json), "spec", work);
            cr_assert(st.code == SHERL_OK, "%s", st.msg);
        }
        train_result rc, rd;
        sherl_status st = train_run(&spec[0], NULL, &rc);
        cr_assert(st.code == SHERL_OK, "%s: %s", methods[k], st.msg);
        /* on the guarded backend: stop after 3 steps, then resume to the end */
        train_hooks h = {.backend = guarded_backend(), .stop_after_steps = 3};
        st = train_run(&spec[1], &h, &rd);
        cr_assert(st.code == SHERL_OK, "%s on device memory: %s", methods[k], st.msg);
        cr_assert(rd.stopped_early && rd.steps == 3);
        train_hooks h2 = {.backend = guarded_backend(), .resume = 1};
        st = train_run(&spec[1], &h2, &rd);
        cr_assert(st.code == SHERL_OK, "%s on device memory, resumed: %s", methods[k], st.msg);
        cr_expect_eq(rd.resumed_from_step, 3);
        cr_expect_eq(rd.steps, rc.steps);
        cr_expect(rd.has_val && rd.val_loss == rc.val_loss && rd.val_accuracy == rc.val_accuracy,
                  "%s: validation loss %.9g vs cpu %.9g", methods[k], rd.val_loss, rc.val_loss);
        char a[600], b[600];
        snprintf(a, sizeof a, "%s/%s/checkpoint/params-%08d.safetensors", work, out_cpu, rc.steps);
        snprintf(b, sizeof b, "%s/%s/checkpoint/params-%08d.safetensors", work, out_dev, rd.steps);
        long na, nb;
        char *da = read_all(a, &na), *db = read_all(b, &nb);
        cr_expect(na == nb && !memcmp(da, db, (size_t)na),
                  "%s: the device-memory run's parameters differ from the cpu run's", methods[k]);
        free(da), free(db);
    }
    bert_set_ffn_device_rows(0);
}
