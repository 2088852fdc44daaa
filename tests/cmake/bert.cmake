sherl_python_fixture(bert_reference ${SHERL_TEST_DIR}/oracle/bert_reference.py tiny ${SHERL_TEST_WORK}/bert)
sherl_python_fixture(minilm_reference ${SHERL_TEST_DIR}/oracle/bert_reference.py minilm ${SHERL_TEST_WORK}/bert ${SHERL_MINILM_DIR})
set_tests_properties(fixture_minilm_reference PROPERTIES FIXTURES_REQUIRED bert_reference)
sherl_unit_test(test_bert_oracle SOURCES ${SHERL_TEST_DIR}/oracle/test_bert_oracle.c
  FIXTURES "bert_reference;minilm_reference" TIMEOUT 300)
add_test(NAME cli_oracle COMMAND ${SHERL_PYTHON} ${SHERL_TEST_DIR}/oracle/check_cli.py
  $<TARGET_FILE:sherl_cli> ${SHERL_MINILM_DIR})
set_tests_properties(cli_oracle PROPERTIES TIMEOUT 300)
