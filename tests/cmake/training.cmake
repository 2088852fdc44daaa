sherl_python_fixture(sherl_reference ${SHERL_TEST_DIR}/oracle/sherl_reference.py ${SHERL_TEST_WORK}/sherl)
sherl_unit_test(test_sherl_oracle SOURCES ${SHERL_TEST_DIR}/oracle/test_sherl_oracle.c
  FIXTURES sherl_reference TIMEOUT 300)
