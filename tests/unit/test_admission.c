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
