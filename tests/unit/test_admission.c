/* sherld's admission arithmetic by memory pool (jobs.c): how a plan splits over host memory and
 * a device, that a resident backbone is counted once, and which pool a job does not fit. The
 * device path runs here without a GPU: a device pool is just an index with a budget. */
#include <criterion/criterion.h>

#include "sherld.h"

#define MiB ((int64_t)1 << 20)

Test(admission, a_cpu_job_is_all_host_memory)
{
    /* host backend: the whole peak goes to pool 0, the backbone separately */
    job_need j = job_need_of(0, 1, 120 * MiB, 100 * MiB, 80 * MiB);
    cr_expect_eq(j.pool, 0);
    cr_expect_eq(j.dev_own, 40 * MiB);
    cr_expect_eq(j.host_own, 0);
    cr_expect_eq(j.backbone, 80 * MiB);
    int64_t b[2];
    job_need_bytes(&j, 0, b, 2);
    cr_expect_eq(b[0], 120 * MiB, "not resident: the whole peak");
    cr_expect_eq(b[1], 0);
    job_need_bytes(&j, 1, b, 2);
    cr_expect_eq(b[0], 40 * MiB, "resident: the backbone is not counted again");
}

Test(admission, a_device_job_splits_arenas_from_host_memory)
{
    /* device backend: arenas on the device, the rest of the peak on the host */
    job_need j = job_need_of(1, 0, 120 * MiB, 100 * MiB, 80 * MiB);
    cr_expect_eq(j.dev_own, 20 * MiB);
    cr_expect_eq(j.host_own, 20 * MiB);
    int64_t b[2];
    job_need_bytes(&j, 0, b, 2);
    cr_expect_eq(b[1], 100 * MiB, "the device gets every arena, the backbone included");
    cr_expect_eq(b[0], 20 * MiB, "the host gets the host items and transients");
    job_need_bytes(&j, 1, b, 2);
    cr_expect_eq(b[1], 20 * MiB);
    cr_expect_eq(b[0], 20 * MiB);
}

Test(admission, pools_short_names_the_pool_that_does_not_fit)
{
    job_need j = job_need_of(1, 0, 120 * MiB, 100 * MiB, 80 * MiB);
    int64_t b[2], zero[2] = {0, 0};
    job_need_bytes(&j, 0, b, 2);
    int64_t budget[2] = {1024 * MiB, 99 * MiB};
    cr_expect_eq(pools_short(b, zero, budget, 2), 1, "100 MiB of arenas in a 99 MiB device");
    budget[1] = 100 * MiB;
    cr_expect_eq(pools_short(b, zero, budget, 2), -1, "exactly the budget fits");
    int64_t used[2] = {1010 * MiB, 0};
    cr_expect_eq(pools_short(b, used, budget, 2), 0, "the host side does not fit");
    used[0] = 0, used[1] = 90 * MiB;
    cr_expect_eq(pools_short(b, used, budget, 2), 1, "would wait for the device");
    job_need_bytes(&j, 1, b, 2); /* the backbone is resident: 20 MiB more fit beside 80 used */
    used[1] = 80 * MiB;
    cr_expect_eq(pools_short(b, used, budget, 2), -1);
}

Test(admission, an_overcommitted_pool_does_not_block_a_job_that_needs_none_of_it)
{
    job_need j = job_need_of(0, 1, 10 * MiB, 10 * MiB, 4 * MiB);
    int64_t b[2], used[2] = {0, 500 * MiB}, budget[2] = {100 * MiB, 100 * MiB};
    job_need_bytes(&j, 0, b, 2);
    cr_expect_eq(pools_short(b, used, budget, 2), -1);
}

Test(admission, a_job_without_a_usable_backend_reserves_nothing)
{
    /* recovered on a node that lost its GPU: it starts and fails with the reason */
    job_need j = job_need_of(-1, 0, 120 * MiB, 100 * MiB, 80 * MiB);
    int64_t b[2] = {7, 7};
    job_need_bytes(&j, 0, b, 2);
    cr_expect_eq(b[0], 0);
    cr_expect_eq(b[1], 0);
}

/* A job for any GPU: pools 1..3 are GPUs with 200 MiB budgets; the job needs 100 MiB of arenas
 * (80 of them its backbone) and 20 MiB of host memory. */
Test(admission, a_job_for_any_gpu_goes_where_it_fits_running_the_fewest_jobs)
{
    job_need j = job_need_of(1, 0, 120 * MiB, 100 * MiB, 80 * MiB);
    int64_t budget[4] = {1000 * MiB, 200 * MiB, 200 * MiB, 200 * MiB};
    int64_t used[4] = {0, 0, 0, 0};
    pool_choice c[3] = {{1, 0, 0}, {2, 0, 0}, {3, 0, 0}};
    /* all empty and alike: the first */
    cr_expect_eq(pools_pick(&j, c, 3, used, budget, 4), 0);
    /* fewer jobs wins over holding the backbone: GPU 1 holds it (20 MiB more fit there) but
     * runs 2 jobs, GPU 2 runs 1, GPU 3 none */
    c[0].jobs = 2, c[0].resident = 1, used[1] = 150 * MiB;
    c[1].jobs = 1, used[2] = 10 * MiB;
    cr_expect_eq(pools_pick(&j, c, 3, used, budget, 4), 2, "GPU 3 runs no job");
    /* at equal jobs, the one holding the backbone */
    c[2].jobs = 1, used[3] = 5 * MiB;
    c[0].jobs = 1;
    cr_expect_eq(pools_pick(&j, c, 3, used, budget, 4), 0, "GPU 1 holds the backbone");
    /* without it there, GPU 1 has no room for 100 MiB; of the others, the most left after it */
    c[0].resident = 0;
    cr_expect_eq(pools_pick(&j, c, 3, used, budget, 4), 2, "GPU 3 keeps 95 MiB, GPU 2 90 MiB");
    /* where it does not fit is never chosen, whatever its load */
    used[2] = 101 * MiB, used[3] = 101 * MiB;
    cr_expect_eq(pools_pick(&j, c, 3, used, budget, 4), -1, "fits none: 99 MiB left at most");
    used[2] = 100 * MiB, c[1].jobs = 5;
    cr_expect_eq(pools_pick(&j, c, 3, used, budget, 4), 1, "the only GPU with room, 5 jobs or not");
    /* the host side must fit too */
    used[0] = 990 * MiB;
    cr_expect_eq(pools_pick(&j, c, 3, used, budget, 4), -1, "20 MiB of host memory, 10 free");
    /* no candidates, or candidates outside the pools */
    used[0] = 0;
    cr_expect_eq(pools_pick(&j, c, 0, used, budget, 4), -1);
    pool_choice bad[2] = {{-1, 0, 0}, {7, 0, 0}};
    cr_expect_eq(pools_pick(&j, bad, 2, used, budget, 4), -1);
}
