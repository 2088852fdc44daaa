# tests/gpu/ops: every op of the CUDA backend against the CPU backend (see tests/gpu/ops.c).
# gpu_ops passes without a GPU (it reports the tests it did not run); gpu_ops_cpu runs the same
# harness with the CPU as the tested backend, and gpu_ops_self_test proves the harness catches
# broken ops.
add_executable(gpu_ops ${SHERL_TEST_DIR}/gpu/ops.c)
target_link_libraries(gpu_ops PRIVATE sherl)
add_test(NAME gpu_ops COMMAND gpu_ops)
add_test(NAME gpu_ops_cpu COMMAND gpu_ops --backend cpu)
add_test(NAME gpu_ops_self_test COMMAND gpu_ops --self-test)
set_tests_properties(gpu_ops gpu_ops_cpu gpu_ops_self_test PROPERTIES TIMEOUT 300)
