sherl_unit_test(test_training_utils SOURCES ${SHERL_TEST_DIR}/unit/test_training_utils.c)
