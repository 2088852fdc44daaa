// cuda_emu (see cuda_runtime.h): ops_cuda.cu converts with kernels.h's own functions, so this
// header only has to exist.
#pragma once
#include "cuda_runtime.h"
