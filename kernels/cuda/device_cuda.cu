// CUDA backend entry point. This build compiles and links the CUDA side on every machine
// with nvcc; it runs only where a GPU is present. The op kernels (the same table as cpu/,
// with cuBLAS for the products) are the CUDA backend issue's work: until that lands,
// sherl_backend_cuda() reports "no CUDA backend" and every caller uses the CPU.
#include <cuda_runtime.h>

extern "C" {
#include "kernels.h"

// Number of usable CUDA devices; 0 on any error. Without a GPU the runtime reports
// "driver insufficient" (error 35) rather than "no device", so every error means none.
int sherl_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n;
}

const sherl_backend *sherl_backend_cuda(void)
{
    return NULL;
}
}
