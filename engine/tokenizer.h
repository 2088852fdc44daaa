/* WordPiece tokenizer, behaving exactly as Hugging Face's (slow) BertTokenizer:
 * text cleanup, CJK splitting, NFC, lowercasing + accent stripping for uncased models,
 * punctuation splitting, greedy longest-match WordPiece with "##", [UNK] for words over
 * 100 characters, special tokens in the input kept whole, [CLS] A [SEP] (B [SEP]),
 * longest_first truncation, token_type_ids and attention mask. */
#ifndef SHERL_TOKENIZER_H
#define SHERL_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef struct wordpiece_tokenizer wordpiece_tokenizer;

typedef struct {
    int do_lower_case;        /* default 1 */
    int strip_accents;        /* -1: follow do_lower_case (HF's None), 0: never, 1: always */
    int tokenize_chinese_chars; /* default 1 */
    int model_max_length;     /* default 512 */
} wordpiece_options;

/* Reads MODEL_DIR/vocab.txt and, when present, MODEL_DIR/tokenizer_config.json. */
sherl_status wordpiece_load(wordpiece_tokenizer **out, const char *model_dir);
/* From a vocab file and explicit options (tests). */
sherl_status wordpiece_load_vocab(wordpiece_tokenizer **out, const char *vocab_path,
                                  const wordpiece_options *opts);
void wordpiece_free(wordpiece_tokenizer *tok);

const wordpiece_options *wordpiece_get_options(const wordpiece_tokenizer *tok);
int wordpiece_vocab_size(const wordpiece_tokenizer *tok);
int wordpiece_pad_id(const wordpiece_tokenizer *tok);

typedef struct {
    int32_t *input_ids;
    int32_t *token_type_ids;
    int32_t *attention_mask;
    int len;
} tok_encoding;

/* Encodes one text (b may be NULL for single sentences) as HF's
 * tokenizer(a, b, truncation=True, max_length=max_length) would. max_length <= 0 means
 * the tokenizer's model_max_length. text must be valid UTF-8, else SHERL_EINVAL.
 * Free with tok_encoding_free. */
sherl_status wordpiece_encode(const wordpiece_tokenizer *tok, const char *a, const char *b,
                              int max_length, tok_encoding *out);
void tok_encoding_free(tok_encoding *enc);

/* Token strings (after basic + wordpiece tokenization, before ids): for debugging and tests.
 * Returns count in *n; free with wordpiece_free_tokens. */
sherl_status wordpiece_tokenize(const wordpiece_tokenizer *tok, const char *text, char ***tokens,
                                int *n);
void wordpiece_free_tokens(char **tokens, int n);

#endif
