# tests/gpu/bert_forward: the BERT forward oracle on a chosen backend (see tests/gpu/).
# gpu_bert_oracle runs the encoder on --backend and compares every hidden state with Hugging Face
# transformers' (max |ours - HF| / max |HF| <= 1e-4). CTest runs it on a small random BERT
# (2 layers, hidden 64, 8 x 128 tokens with padding) made by the fixture below: on the CPU, so
# the program itself is tested everywhere, and on CUDA, which says "no GPU ... not run" and
# passes where there is none. tests/gpu/run.sh runs it on a BERT-base-shaped model on the GPU.
# Defined here, before tests/CMakeLists.txt stops for a missing Criterion: it needs none.
add_executable(gpu_bert_oracle ${SHERL_TEST_DIR}/gpu/bert_forward.c)
target_link_libraries(gpu_bert_oracle PRIVATE sherl)

set(SHERL_GPU_BERT_WORK ${SHERL_TEST_WORK}/gpu_bert)
add_test(NAME fixture_gpu_bert_reference
  COMMAND ${SHERL_PYTHON} ${SHERL_TEST_DIR}/gpu/bert_reference_dump.py ${SHERL_GPU_BERT_WORK}
          --layers 2 --hidden 64 --heads 4 --ffn 128 --vocab 1000 --batch 8 --seq 128 --float64)
set_tests_properties(fixture_gpu_bert_reference PROPERTIES
  FIXTURES_SETUP gpu_bert_reference TIMEOUT 300 LABELS gpu)
# _bf16 / _fp16: the weight matrices and tables held in bf16 / fp16, against PyTorch's fp32 model
# with the tables and every encoder Linear's input and weight rounded the same way (our
# half-precision semantics, computed independently).
foreach(backend cpu cuda)
  foreach(prec fp32 bf16 fp16)
    set(name gpu_bert_oracle_${backend})
    if(NOT prec STREQUAL "fp32")
      set(name gpu_bert_oracle_${prec}_${backend})
    endif()
    add_test(NAME ${name}
      COMMAND gpu_bert_oracle --backend ${backend} --precision ${prec}
              --model ${SHERL_GPU_BERT_WORK}/model
              --reference ${SHERL_GPU_BERT_WORK}/reference.safetensors --tol 1e-4)
    set_tests_properties(${name} PROPERTIES
      FIXTURES_REQUIRED gpu_bert_reference TIMEOUT 120 LABELS gpu)
  endforeach()
endforeach()
