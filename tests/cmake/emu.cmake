# cuda_emu (tests/emu): the CUDA backend's own source, kernels/cuda/ops_cuda.cu, compiled for the
# CPU with an emulated CUDA runtime and cuBLAS, so its kernels are run and checked against the
# CPU backend on every machine, CI's included (no nvcc or GPU needed). gpu_ops_emu is
# tests/gpu/ops.c over that build: each op of the table, CUDA kernels and all, against the CPU.
set(SHERL_EMU_DIR ${CMAKE_SOURCE_DIR}/tests/emu)
set(SHERL_EMU_SOURCE ${CMAKE_CURRENT_BINARY_DIR}/ops_cuda_emu.cpp)
add_custom_command(OUTPUT ${SHERL_EMU_SOURCE}
  COMMAND ${CMAKE_COMMAND} -DIN=${CMAKE_SOURCE_DIR}/kernels/cuda/ops_cuda.cu
          -DOUT=${SHERL_EMU_SOURCE} -P ${SHERL_EMU_DIR}/translate.cmake
  DEPENDS ${CMAKE_SOURCE_DIR}/kernels/cuda/ops_cuda.cu ${SHERL_EMU_DIR}/translate.cmake
  COMMENT "cuda_emu: translating ops_cuda.cu's launches for the CPU")
add_library(sherl_kernels_emu STATIC
  ${CMAKE_SOURCE_DIR}/kernels/backend.c
  ${CMAKE_SOURCE_DIR}/kernels/cpu/ops_cpu.c
  ${SHERL_EMU_SOURCE}
  ${SHERL_EMU_DIR}/cuda_emu.cpp)
target_include_directories(sherl_kernels_emu PUBLIC ${CMAKE_SOURCE_DIR}/kernels)
# the emulated headers stand where the CUDA toolkit's would
target_include_directories(sherl_kernels_emu BEFORE PRIVATE ${SHERL_EMU_DIR}/include)
target_include_directories(sherl_kernels_emu SYSTEM PRIVATE ${BLIS_INCLUDE_DIR})
target_compile_definitions(sherl_kernels_emu PRIVATE SHERL_HAVE_CUDA=1)
# -ffp-contract=off: no fused multiply-adds the CUDA source does not ask for; #pragma unroll is
# nvcc's
target_compile_options(sherl_kernels_emu PRIVATE
  $<$<COMPILE_LANGUAGE:CXX>:-ffp-contract=off -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas>
  $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<BOOL:${SHERL_WERROR}>>:-Werror>)
set_target_properties(sherl_kernels_emu PROPERTIES CXX_STANDARD 17 CXX_STANDARD_REQUIRED ON
  CXX_EXTENSIONS OFF)
target_link_libraries(sherl_kernels_emu PUBLIC ${BLIS_LIBRARY} OpenMP::OpenMP_C ${MATH_LIB}
  Threads::Threads)

add_executable(gpu_ops_emu ${SHERL_TEST_DIR}/gpu/ops.c)
target_link_libraries(gpu_ops_emu PRIVATE sherl_kernels_emu)
set_target_properties(gpu_ops_emu PROPERTIES LINKER_LANGUAGE CXX)
# --require: the emulated device must be there (no "no GPU, not run" pass)
add_test(NAME gpu_ops_emu COMMAND gpu_ops_emu --backend cuda --require)
# SHERL_CUDA_LT=0: the ops that fuse a product's tail with cublasLt run product and tail apart
add_test(NAME gpu_ops_emu_no_lt COMMAND gpu_ops_emu --backend cuda --require --filter half16)
set_tests_properties(gpu_ops_emu_no_lt PROPERTIES ENVIRONMENT SHERL_CUDA_LT=0)
# SHERL_CUDA_ATTN_STRIP=0: the fused attention in three passes (attention_fused_kernel, which
# sequences too long for a kept score strip take) where it would keep the strip
add_test(NAME gpu_ops_emu_three_pass
         COMMAND gpu_ops_emu --backend cuda --require --filter attention_half)
set_tests_properties(gpu_ops_emu_three_pass PROPERTIES ENVIRONMENT SHERL_CUDA_ATTN_STRIP=0)
# SHERL_CUDA_ATTN_STRIP=49152: the strip plans of a device that cannot opt in past 48 KiB
add_test(NAME gpu_ops_emu_strip_48k
         COMMAND gpu_ops_emu --backend cuda --require --filter attention_half)
set_tests_properties(gpu_ops_emu_strip_48k PROPERTIES ENVIRONMENT SHERL_CUDA_ATTN_STRIP=49152)
set_tests_properties(gpu_ops_emu gpu_ops_emu_no_lt gpu_ops_emu_three_pass gpu_ops_emu_strip_48k
                     PROPERTIES TIMEOUT 600)

# The engine over the emulated CUDA backend: training on "cuda" runs the GPU path (device
# arenas, half copies of the frozen weights, the fused half ops, graphs) through the CUDA
# kernels, checked against the CPU engine by tests/gpu/train_checks.c.
get_target_property(SHERL_ENGINE_SOURCES sherl SOURCES)
get_target_property(SHERL_ENGINE_DIR sherl SOURCE_DIR)
list(TRANSFORM SHERL_ENGINE_SOURCES PREPEND ${SHERL_ENGINE_DIR}/)
add_library(sherl_engine_emu STATIC ${SHERL_ENGINE_SOURCES})
target_include_directories(sherl_engine_emu PUBLIC ${SHERL_ENGINE_DIR})
target_link_libraries(sherl_engine_emu PUBLIC sherl_kernels_emu PkgConfig::CJSON
  PkgConfig::UTF8PROC)

add_executable(gpu_train_checks_emu ${SHERL_TEST_DIR}/gpu/train_checks.c
  ${SHERL_TEST_DIR}/unit/guarded_backend.c)
target_include_directories(gpu_train_checks_emu PRIVATE ${SHERL_TEST_DIR}/unit)
target_link_libraries(gpu_train_checks_emu PRIVATE sherl_engine_emu Threads::Threads)
set_target_properties(gpu_train_checks_emu PROPERTIES LINKER_LANGUAGE CXX)
# the designs' GPU parity checks (tests/cmake/gpu_train.cmake), on the emulated device: fp32
# op by op and from graphs, bf16 with the late layer trained op by op and from graphs, and 3
# jobs sharing one resident backbone (the emulator counts device memory exactly; the medium
# model, whose backbone is large enough that a copy per job would measure 1.48 of the plan)
add_test(NAME gpu_train_parity_emu
  COMMAND gpu_train_checks_emu parity --backend cuda ${small} --steps 20
          --work ${SHERL_GPU_TRAIN_WORK}/parity_emu)
add_test(NAME gpu_train_parity_graphs_emu
  COMMAND gpu_train_checks_emu parity --backend cuda --graphs 1 ${small} --steps 20
          --work ${SHERL_GPU_TRAIN_WORK}/parity_graphs_emu)
add_test(NAME gpu_train_parity_bf16_tuned_emu
  COMMAND gpu_train_checks_emu parity --backend cuda --precision bf16 --tune-late 1 ${small}
          --steps 20 --work ${SHERL_GPU_TRAIN_WORK}/parity_bf16_tuned_emu)
add_test(NAME gpu_train_parity_bf16_graphs_emu
  COMMAND gpu_train_checks_emu parity --backend cuda --precision bf16 --tune-late 1 --graphs 1
          ${small} --steps 20 --work ${SHERL_GPU_TRAIN_WORK}/parity_bf16_graphs_emu)
add_test(NAME gpu_train_sharing_emu
  COMMAND gpu_train_checks_emu sharing --backend cuda ${medium} --jobs 3 --steps 4 --tol 0.01
          --work ${SHERL_GPU_TRAIN_WORK}/sharing_emu)
set_tests_properties(gpu_train_parity_emu gpu_train_parity_graphs_emu
  gpu_train_parity_bf16_tuned_emu gpu_train_parity_bf16_graphs_emu gpu_train_sharing_emu
  PROPERTIES FIXTURES_REQUIRED gpu_train_task TIMEOUT 600 LABELS emu)
