#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

/* The CUDA backend's own lists (kernels/cuda/ops_cuda.cu): what the functions below answer when
 * no fake GPUs are asked for. */
#ifdef SHERL_HAVE_CUDA
const sherl_backend *cuda_device_table(int index);
int cuda_list_devices(sherl_device_info *out, int max, char *why, size_t why_len);
#else
/* Builds without nvcc have no CUDA backend at all. */
static const sherl_backend *cuda_device_table(int index)
{
    (void)index;
    return NULL;
}
const sherl_backend *sherl_backend_cuda_table_for_tests(int index)
{
    (void)index;
    return NULL;
}
static int cuda_list_devices(sherl_device_info *out, int max, char *why, size_t why_len)
{
    (void)out, (void)max;
    if (why && why_len)
        snprintf(why, why_len, "this build has no CUDA backend (nvcc was not found)");
    return 0;
}
#endif

/* ---- fake GPUs, for tests of what sits above the backend (the daemon's placement on several
 * GPUs) on machines without them: SHERL_TEST_FAKE_GPUS=N[:SIZE] makes the CUDA devices N
 * copies of the CPU backend that say they have no host memory (so the engine stages every copy
 * as on a GPU), each with SIZE bytes (K, M, G suffixes; default 4G), instead of the real ones.
 * Their ops are the CPU's, on host memory. Never for production: the name says so. */
static sherl_backend fake_gpus[SHERL_CUDA_MAX_DEVICES];
static int n_fake_gpus;
static size_t fake_gpu_bytes;

static int fake_mem_info(size_t *free_bytes, size_t *total_bytes)
{
    if (free_bytes)
        *free_bytes = fake_gpu_bytes;
    if (total_bytes)
        *total_bytes = fake_gpu_bytes;
    return 0;
}

static void fake_describe(char *buf, size_t len)
{
    char cpu[200];
    sherl_backend_cpu()->describe(cpu, sizeof cpu);
    snprintf(buf, len, "fake GPU (SHERL_TEST_FAKE_GPUS): %.200s", cpu);
}

static void fake_gpus_init(void)
{
    const char *v = getenv("SHERL_TEST_FAKE_GPUS");
    if (!v || !*v || !strcmp(v, "0"))
        return;
    char *end;
    long n = strtol(v, &end, 10);
    double bytes = 4.0 * (1 << 30);
    if (*end == ':') {
        char *unit;
        bytes = strtod(end + 1, &unit);
        double scale = *unit == 'K' ? 1024.0 : *unit == 'M' ? 1048576.0
                       : *unit == 'G' ? 1073741824.0 : 1.0;
        end = unit + (scale > 1.0);
        bytes *= scale;
    }
    if (*end || n < 1 || n > SHERL_CUDA_MAX_DEVICES || !(bytes >= 1 << 20) || bytes > 1e15) {
        fprintf(stderr, "sherl: SHERL_TEST_FAKE_GPUS='%s' ignored: expected N[:SIZE], N 1..%d, "
                        "SIZE at least 1M (e.g. 2:4G)\n",
                v, SHERL_CUDA_MAX_DEVICES);
        return;
    }
    fake_gpu_bytes = (size_t)bytes;
    for (int i = 0; i < n; i++) {
        fake_gpus[i] = *sherl_backend_cpu();
        fake_gpus[i].name = "cuda";
        fake_gpus[i].host_memory = 0;
        fake_gpus[i].device = i;
        fake_gpus[i].mem_info = fake_mem_info;
        fake_gpus[i].describe = fake_describe;
    }
    n_fake_gpus = (int)n;
}

static int fake_gpus_count(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, fake_gpus_init);
    return n_fake_gpus;
}

const sherl_backend *sherl_backend_cuda_device(int index)
{
    if (fake_gpus_count())
        return index >= 0 && index < n_fake_gpus ? &fake_gpus[index] : NULL;
    return cuda_device_table(index);
}

const sherl_backend *sherl_backend_cuda(void)
{
    for (int i = 0; i < SHERL_CUDA_MAX_DEVICES; i++) {
        const sherl_backend *be = sherl_backend_cuda_device(i);
        if (be)
            return be;
    }
    return NULL;
}

int sherl_cuda_devices(sherl_device_info *out, int max, char *why, size_t why_len)
{
    int n = fake_gpus_count();
    if (!n)
        return cuda_list_devices(out, max, why, why_len);
    for (int i = 0; out && i < n && i < max; i++) {
        memset(&out[i], 0, sizeof out[i]);
        out[i].index = i;
        snprintf(out[i].name, sizeof out[i].name, "fake GPU %d (the CPU; SHERL_TEST_FAKE_GPUS)", i);
        out[i].cc_major = 9;
        out[i].total_bytes = out[i].free_bytes = fake_gpu_bytes;
    }
    if (why && why_len)
        why[0] = 0;
    return n;
}

int sherl_cuda_absent(char *why, size_t len)
{
    const char *off = getenv("SHERL_CUDA_DISABLE");
    if (off && *off && strcmp(off, "0")) {
        snprintf(why, len, "the CUDA backend is disabled: SHERL_CUDA_DISABLE=%s", off);
        return 0;
    }
    char reason[256] = "";
    int n = sherl_cuda_devices(NULL, 0, reason, sizeof reason);
    if (n == 0) {
        snprintf(why, len, "%s", reason[0] ? reason : "no CUDA device");
        return 0;
    }
    snprintf(why, len, "%d CUDA device(s) present, but none this build can use (its machine code "
                       "is for sm_90 and later)",
             n);
    return -1;
}

int sherl_cuda_device_of_name(const char *name)
{
    if (!name || strncmp(name, "cuda:", 5))
        return -1;
    const char *p = name + 5;
    if (!*p || (p[0] == '0' && p[1]))
        return -1;
    int n = 0;
    for (; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        n = 10 * n + (*p - '0');
        if (n >= SHERL_CUDA_MAX_DEVICES)
            return -1;
    }
    return n;
}

void sherl_backend_label(const sherl_backend *be, char *buf, size_t len)
{
    if (!be)
        snprintf(buf, len, "none");
    else if (be->host_memory)
        snprintf(buf, len, "%s", be->name);
    else
        snprintf(buf, len, "%.24s:%d", be->name, be->device);
}

const sherl_backend *sherl_backend_by_name(const char *name)
{
    if (!name)
        return NULL;
    if (strcmp(name, "cpu") == 0)
        return sherl_backend_cpu();
    if (strcmp(name, "cuda") == 0)
        return sherl_backend_cuda();
    if (strncmp(name, "cuda:", 5) == 0) {
        int d = sherl_cuda_device_of_name(name);
        return d < 0 ? NULL : sherl_backend_cuda_device(d);
    }
    if (strcmp(name, "auto") == 0) {
        const sherl_backend *be = sherl_backend_cuda();
        return be ? be : sherl_backend_cpu();
    }
    return NULL;
}
