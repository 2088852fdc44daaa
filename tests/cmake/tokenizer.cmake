# WordPiece tokenizer (engine/tokenizer.c). Included from tests/CMakeLists.txt.

# Hand-computed expectations on a tiny vocabulary, loader errors, arbitrary input.
sherl_unit_test(test_tokenizer SOURCES unit/test_tokenizer.c TIMEOUT 120)

# Parity with transformers 4.40.2's slow BertTokenizer: every WordNet gloss plus hard and
# random cases in five configurations, and Python's Unicode tables. The fixture (~1 min)
# writes the reference outputs into the work folder; the comparison takes seconds.
sherl_python_fixture(tokenizer_oracle ${SHERL_TEST_DIR}/oracle/tokenizer_reference.py
  ${SHERL_TEST_WORK} ${SHERL_MINILM_DIR})
sherl_unit_test(test_tokenizer_parity SOURCES unit/test_tokenizer.c
  FIXTURES tokenizer_oracle TIMEOUT 300)
target_compile_definitions(test_tokenizer_parity PRIVATE SHERL_TOKENIZER_PARITY)
