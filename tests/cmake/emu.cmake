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
# -ffp-contract=off: no fused multiply-adds the CUDA source does not ask for
target_compile_options(sherl_kernels_emu PRIVATE
  $<$<COMPILE_LANGUAGE:CXX>:-ffp-contract=off -Wall -Wextra -Wno-unused-parameter>
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
set_tests_properties(gpu_ops_emu PROPERTIES TIMEOUT 600)
