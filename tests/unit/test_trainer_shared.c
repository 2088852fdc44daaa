/* The trainer on a backbone that is already resident (how the daemon shares one copy between
 * jobs): the same run gives bit-identical parameters with its own copy and with a shared one,
 * and a shared backbone that is not the spec's model is refused. Real all-MiniLM-L6-v2. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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
