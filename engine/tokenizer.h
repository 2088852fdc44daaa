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
/* Host bytes the loaded tokenizer holds. */
size_t wordpiece_memory_bytes(const wordpiece_tokenizer *tok);

typedef struct {
    int32_t *input_ids;
    int32_t *token_type_ids;
    int32_t *attention_mask;
    int len;
} tok_encoding;

/* Encodes one text (b may be NULL for single sentences) as HF's
 * tokenizer(a, b, truncation=True, max_length=max_length) would. max_length <= 0 means
 * the tokenizer's model_max_length. text must be valid UTF-8, else SHERL_EINVAL.
 * Free with tok_encoding_free.
 * (Strict UTF-8 as Python decodes it: no overlongs or surrogates; the error names the byte
 * offset. As C strings, texts cannot hold U+0000 (HF deletes it in its cleanup). b = "" is a
 * pair with an empty second text, as in HF. Like HF, truncation can leave the result longer
 * than max_length when max_length is too small to remove enough tokens.) */
sherl_status wordpiece_encode(const wordpiece_tokenizer *tok, const char *a, const char *b,
                              int max_length, tok_encoding *out);
void tok_encoding_free(tok_encoding *enc);

/* Token strings (after basic + wordpiece tokenization, before ids): for debugging and tests.
 * Returns count in *n; free with wordpiece_free_tokens. */
sherl_status wordpiece_tokenize(const wordpiece_tokenizer *tok, const char *text, char ***tokens,
                                int *n);
void wordpiece_free_tokens(char **tokens, int n);

/* Notes on the loaders above:
 * - vocab.txt is read as Python reads it (lines split at \n, \r\n or \r; a later duplicate
 *   of a token wins). It must be valid UTF-8 and hold [PAD] [UNK] [CLS] [SEP] [MASK].
 *   wordpiece_vocab_size() is the number of lines, so every id is below it.
 * - tokenizer_config.json: do_lower_case, strip_accents (null/true/false),
 *   tokenize_chinese_chars, model_max_length. A model_max_length that is missing, not
 *   positive or above 2^20 (HF writes 1e30 for "no limit") becomes 512. Special tokens
 *   other than BERT's five, added tokens or never_split are refused (SHERL_EUNSUPPORTED).
 * - wordpiece_load_vocab: opts NULL means the defaults; model_max_length <= 0 means 512. */

/* For tests: the Unicode facts the tokenizer relies on, as the reference (Python 3.11's
 * unicodedata, Unicode 14.0) states them, even where the linked utf8proc knows a newer
 * Unicode (characters assigned later count as unassigned, "Cn"). */
typedef struct {
    char category[3];  /* general category, e.g. "Lu" */
    int is_space;      /* Python's str.isspace() */
    int n_lower;       /* Python's str.lower() of the one character: 1 or 2 code points */
    uint32_t lower[2];
} wordpiece_char_info;
void wordpiece_unicode_char_info(uint32_t cp, wordpiece_char_info *out);
/* NFC (nfd == 0) or NFD (nfd != 0) of n code points (each <= 0x10FFFF, no surrogates);
 * *out is malloc'ed (free()). */
sherl_status wordpiece_unicode_normalize(const uint32_t *cps, size_t n, int nfd, uint32_t **out,
                                         size_t *out_n);

#endif
