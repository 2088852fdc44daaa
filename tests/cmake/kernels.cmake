sherl_unit_test(test_kernels SOURCES ${SHERL_TEST_DIR}/unit/test_kernels.c TIMEOUT 120)
