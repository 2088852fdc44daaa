/* WordPiece tokenizer with the behaviour of Hugging Face transformers 4.40.2's slow
 * BertTokenizer (tokenization_bert.py, PreTrainedTokenizer.tokenize, truncate_sequences).
 *
 * The pipeline, per text:
 *   1. strict UTF-8 decode (Python's rules) into code points;
 *   2. split on the special tokens [PAD] [UNK] [CLS] [SEP] [MASK] (case-sensitive); they
 *      become their ids, the pieces between them go through 3-7 separately;
 *   3. when lowercasing: Python's str.lower() one character at a time (U+0130 -> i U+0307);
 *      drop NUL, U+FFFD and category C* except \t\n\r; whitespace -> ' '; spaces around CJK;
 *   4. NFC; split at Python whitespace (str.split());
 *   5. per word (unless it is exactly a special token): lower again, strip accents (NFD,
 *      drop Mn) when asked, split off punctuation;
 *   6. WordPiece: greedy longest match first with "##", [UNK] for words over 100 characters
 *      or with a piece not in the vocabulary.
 * Unicode properties come from utf8proc, corrected to the Unicode 14.0 that Python 3.11's
 * unicodedata uses (see new_in_unicode15 below).
 */
#include "tokenizer.h"

#include <cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <utf8proc.h>

#include "json_util.h"

#define WP_MAX_WORD_CHARS 100
#define WP_DEFAULT_MAX_LENGTH 512
#define WP_MAX_MODEL_MAX_LENGTH (1 << 20)
#define WP_MAX_VOCAB_FILE ((size_t)1 << 30)
#define WP_MAX_CONFIG_FILE ((size_t)16 << 20)
/* Token counts beyond this are refused rather than risking int overflow in tok_encoding. */
#define WP_MAX_TOKENS (INT_MAX / 4)

enum { SP_PAD, SP_UNK, SP_CLS, SP_SEP, SP_MASK, SP_COUNT };
static const char *const special_names[SP_COUNT] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
static const char *const special_keys[SP_COUNT] = {"pad_token", "unk_token", "cls_token",
                                                   "sep_token", "mask_token"};

struct wordpiece_tokenizer {
    wordpiece_options opts;
    char *arena;        /* the whole vocab file's tokens, each NUL-terminated */
    uint32_t *tok_off;  /* per id (line): offset of its token in arena */
    uint32_t *tok_len;  /* per id: byte length */
    int n_ids;          /* lines in vocab.txt */
    uint32_t *slots;    /* open addressing: id + 1, 0 = empty */
    size_t slot_mask;
    size_t max_key_len; /* longest token in bytes: longer substrings cannot match */
    int32_t special_id[SP_COUNT];
    size_t mem_bytes;   /* what the loaded tokenizer holds, for the memory plan */
};

size_t wordpiece_memory_bytes(const wordpiece_tokenizer *tok) { return tok->mem_bytes; }

/* ------------------------------------------------------------------------------------ */
/* Growable buffers                                                                     */

typedef struct {
    uint32_t *v;
    size_t n, cap;
} cpbuf;

typedef struct {
    int32_t *v;
    size_t n, cap;
} idbuf;

typedef struct {
    unsigned char *v;
    size_t n, cap;
} bytebuf;

static int grow(void **v, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t nc = *cap ? *cap : 64;
    while (nc < need) {
        if (nc > SIZE_MAX / 2 / elem)
            return -1;
        nc *= 2;
    }
    void *p = realloc(*v, nc * elem);
    if (!p)
        return -1;
    *v = p;
    *cap = nc;
    return 0;
}

static int cp_reserve(cpbuf *b, size_t extra)
{
    if (extra > SIZE_MAX - b->n)
        return -1;
    return grow((void **)&b->v, &b->cap, b->n + extra, sizeof *b->v);
}

static int id_push(idbuf *b, int32_t id)
{
    if (b->n >= (size_t)WP_MAX_TOKENS)
        return -1;
    if (b->n == b->cap && grow((void **)&b->v, &b->cap, b->n + 1, sizeof *b->v))
        return -1;
    b->v[b->n++] = id;
    return 0;
}

static int byte_reserve(bytebuf *b, size_t need)
{
    return grow((void **)&b->v, &b->cap, need, 1);
}

/* ------------------------------------------------------------------------------------ */
/* Unicode, as Python 3.11 (Unicode 14.0) sees it                                       */

/* Code points assigned in Unicode 15.0 (which utf8proc 2.8 knows) that Python 3.11's
 * unicodedata (14.0) reports as unassigned "Cn". Found by comparing every code point's
 * category, lowercase, NFD and NFC between the two: these and U+0130's lowercase are the
 * only differences. */
static const uint32_t new_in_unicode15[][2] = {
    {0x00CF3, 0x00CF3}, {0x00ECE, 0x00ECE}, {0x10EFD, 0x10EFF}, {0x1123F, 0x11241},
    {0x11B00, 0x11B09}, {0x11F00, 0x11F10}, {0x11F12, 0x11F3A}, {0x11F3E, 0x11F59},
    {0x1342F, 0x1342F}, {0x13439, 0x13455}, {0x1B132, 0x1B132}, {0x1B155, 0x1B155},
    {0x1D2C0, 0x1D2D3}, {0x1DF25, 0x1DF2A}, {0x1E030, 0x1E06D}, {0x1E08F, 0x1E08F},
    {0x1E4D0, 0x1E4F9}, {0x1F6DC, 0x1F6DC}, {0x1F774, 0x1F776}, {0x1F77B, 0x1F77F},
    {0x1F7D9, 0x1F7D9}, {0x1FA75, 0x1FA77}, {0x1FA87, 0x1FA88}, {0x1FAAD, 0x1FAAF},
    {0x1FABB, 0x1FABD}, {0x1FABF, 0x1FABF}, {0x1FACE, 0x1FACF}, {0x1FADA, 0x1FADB},
    {0x1FAE8, 0x1FAE8}, {0x1FAF7, 0x1FAF8}, {0x2B739, 0x2B739}, {0x31350, 0x323AF},
};

static int is_new_in_unicode15(uint32_t c)
{
    if (c < 0xCF3)
        return 0;
    size_t lo = 0, hi = sizeof new_in_unicode15 / sizeof new_in_unicode15[0];
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (c < new_in_unicode15[mid][0])
            hi = mid;
        else if (c > new_in_unicode15[mid][1])
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}

static utf8proc_category_t py_category(uint32_t c)
{
    if (c > 0x10FFFF || is_new_in_unicode15(c))
        return UTF8PROC_CATEGORY_CN;
    return utf8proc_category((utf8proc_int32_t)c);
}

/* Python's str.lower() of one character: the full lowercase mapping. The only
 * unconditional multi-character lowercase in SpecialCasing.txt is U+0130. */
static int py_lower(uint32_t c, uint32_t out[2])
{
    if (c < 0x80) {
        out[0] = (c >= 'A' && c <= 'Z') ? c + 32 : c;
        return 1;
    }
    if (c == 0x130) {
        out[0] = 0x69;
        out[1] = 0x307;
        return 2;
    }
    if (c > 0x10FFFF || is_new_in_unicode15(c)) {
        out[0] = c;
        return 1;
    }
    out[0] = (uint32_t)utf8proc_tolower((utf8proc_int32_t)c);
    return 1;
}

/* Python's str.isspace(): bidi class WS, B or S, or category Zs (Unicode 14.0). */
static int py_isspace(uint32_t c)
{
    if (c < 0x80)
        return c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F);
    switch (c) {
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F:
    case 0x3000:
        return 1;
    default:
        return c >= 0x2000 && c <= 0x200A;
    }
}

/* HF's _is_whitespace: space, \t, \n, \r or category Zs. */
static int hf_is_whitespace(uint32_t c)
{
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r')
        return 1;
    if (c < 0x80)
        return 0;
    return py_category(c) == UTF8PROC_CATEGORY_ZS;
}

/* HF's _is_control: category C* except \t \n \r. */
static int hf_is_control(uint32_t c)
{
    if (c == '\t' || c == '\n' || c == '\r')
        return 0;
    if (c < 0x80)
        return c < 0x20 || c == 0x7F;
    switch (py_category(c)) {
    case UTF8PROC_CATEGORY_CN: case UTF8PROC_CATEGORY_CC: case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS: case UTF8PROC_CATEGORY_CO:
        return 1;
    default:
        return 0;
    }
}

/* HF's _is_punctuation: all non-alphanumeric printable ASCII, and category P*. */
static int hf_is_punctuation(uint32_t c)
{
    if ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
        (c >= 123 && c <= 126))
        return 1;
    if (c < 0x80)
        return 0;
    switch (py_category(c)) {
    case UTF8PROC_CATEGORY_PC: case UTF8PROC_CATEGORY_PD: case UTF8PROC_CATEGORY_PS:
    case UTF8PROC_CATEGORY_PE: case UTF8PROC_CATEGORY_PI: case UTF8PROC_CATEGORY_PF:
    case UTF8PROC_CATEGORY_PO:
        return 1;
    default:
        return 0;
    }
}

/* HF's BasicTokenizer._is_chinese_char. */
static int hf_is_chinese(uint32_t c)
{
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
           (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
           (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

static const char *const category_names[] = {
    "Cn", "Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc", "Pd", "Ps",
    "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co",
};

void wordpiece_unicode_char_info(uint32_t cp, wordpiece_char_info *out)
{
    memset(out, 0, sizeof *out);
    utf8proc_category_t cat = py_category(cp);
    const char *name = (size_t)cat < sizeof category_names / sizeof category_names[0]
                           ? category_names[cat]
                           : "Cn";
    memcpy(out->category, name, 3);
    out->is_space = py_isspace(cp);
    out->n_lower = py_lower(cp, out->lower);
}

static size_t utf8_encode(uint32_t c, unsigned char *p)
{
    if (c < 0x80) {
        p[0] = (unsigned char)c;
        return 1;
    }
    if (c < 0x800) {
        p[0] = (unsigned char)(0xC0 | (c >> 6));
        p[1] = (unsigned char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        p[0] = (unsigned char)(0xE0 | (c >> 12));
        p[1] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
        p[2] = (unsigned char)(0x80 | (c & 0x3F));
        return 3;
    }
    p[0] = (unsigned char)(0xF0 | (c >> 18));
    p[1] = (unsigned char)(0x80 | ((c >> 12) & 0x3F));
    p[2] = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
    p[3] = (unsigned char)(0x80 | (c & 0x3F));
    return 4;
}

/* Strict UTF-8 as Python decodes it: no overlongs, no surrogates, nothing above U+10FFFF.
 * Returns the sequence length and the code point, or 0 when s[0..] is not valid. */
static size_t utf8_decode_one(const unsigned char *s, size_t avail, uint32_t *cp)
{
    unsigned char b0 = s[0];
    if (b0 < 0x80) {
        *cp = b0;
        return 1;
    }
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;
    uint32_t c;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        len = 2;
        c = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        len = 3;
        c = b0 & 0x0F;
        if (b0 == 0xE0)
            lo = 0xA0;
        else if (b0 == 0xED)
            hi = 0x9F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        len = 4;
        c = b0 & 0x07;
        if (b0 == 0xF0)
            lo = 0x90;
        else if (b0 == 0xF4)
            hi = 0x8F;
    } else {
        return 0;
    }
    if (avail < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        unsigned char b = s[i];
        if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF))
            return 0;
        c = (c << 6) | (b & 0x3F);
    }
    *cp = c;
    return len;
}

/* Workspace for one encode call: nothing in the tokenizer itself is written. */
typedef struct {
    cpbuf text;    /* decoded input */
    cpbuf a, b, c; /* stage buffers */
    cpbuf word;
    bytebuf u8;    /* UTF-8 scratch (normalization input, WordPiece keys) */
    size_t *off;   /* byte offsets of a word's code points */
    size_t off_cap;
} workspace;

static void ws_free(workspace *w)
{
    free(w->text.v);
    free(w->a.v);
    free(w->b.v);
    free(w->c.v);
    free(w->word.v);
    free(w->u8.v);
    free(w->off);
}

static sherl_status oom(void)
{
    return sherl_errorf(SHERL_ENOMEM, "tokenizer: out of memory");
}

/* NFC or NFD of in[0..n) into out (replacing its content). */
static sherl_status normalize(workspace *w, const uint32_t *in, size_t n, int nfd, cpbuf *out)
{
    uint32_t maxc = 0;
    for (size_t i = 0; i < n; i++)
        if (in[i] > maxc)
            maxc = in[i];
    out->n = 0;
    /* Below U+00C0 nothing decomposes; below U+0300 nothing composes or reorders either. */
    if (maxc < (nfd ? 0xC0u : 0x300u)) {
        if (cp_reserve(out, n))
            return oom();
        if (n)
            memcpy(out->v, in, n * sizeof *in);
        out->n = n;
        return sherl_ok();
    }
    if (n > SIZE_MAX / 4 - 1 || byte_reserve(&w->u8, n * 4 + 1))
        return oom();
    size_t len = 0;
    for (size_t i = 0; i < n; i++)
        len += utf8_encode(in[i], w->u8.v + len);
    utf8proc_option_t opts = (nfd ? UTF8PROC_DECOMPOSE : UTF8PROC_COMPOSE) | UTF8PROC_STABLE;
    if (len > (size_t)PTRDIFF_MAX)
        return oom();
    size_t want = n + 16;
    for (;;) {
        if (cp_reserve(out, want))
            return oom();
        utf8proc_ssize_t r = utf8proc_decompose(w->u8.v, (utf8proc_ssize_t)len,
                                                (utf8proc_int32_t *)out->v,
                                                (utf8proc_ssize_t)out->cap, opts);
        if (r < 0)
            return sherl_errorf(SHERL_EINVAL, "tokenizer: normalization failed: %s",
                                utf8proc_errmsg(r));
        if ((size_t)r <= out->cap) {
            if (!nfd) {
                r = utf8proc_normalize_utf32((utf8proc_int32_t *)out->v, r, opts);
                if (r < 0)
                    return sherl_errorf(SHERL_EINVAL, "tokenizer: normalization failed: %s",
                                        utf8proc_errmsg(r));
            }
            out->n = (size_t)r;
            return sherl_ok();
        }
        want = (size_t)r;
    }
}

sherl_status wordpiece_unicode_normalize(const uint32_t *cps, size_t n, int nfd, uint32_t **out,
                                         size_t *out_n)
{
    *out = NULL;
    *out_n = 0;
    for (size_t i = 0; i < n; i++)
        if (cps[i] > 0x10FFFF || (cps[i] >= 0xD800 && cps[i] <= 0xDFFF))
            return sherl_errorf(SHERL_EINVAL, "tokenizer: code point %#x is not a character",
                                (unsigned)cps[i]);
    workspace w;
    memset(&w, 0, sizeof w);
    cpbuf res = {0};
    sherl_status st = normalize(&w, cps, n, nfd, &res);
    ws_free(&w);
    if (st.code != SHERL_OK) {
        free(res.v);
        return st;
    }
    if (!res.v) {
        res.v = malloc(sizeof *res.v);
        if (!res.v)
            return oom();
    }
    *out = res.v;
    *out_n = res.n;
    return sherl_ok();
}

/* ------------------------------------------------------------------------------------ */
/* Vocabulary hash table                                                                */

static uint64_t hash_bytes(const unsigned char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 32;
    return h;
}

/* Slot holding key, or the empty slot where it would go. */
static size_t vocab_find_slot(const wordpiece_tokenizer *t, const unsigned char *key, size_t n)
{
    size_t i = (size_t)hash_bytes(key, n) & t->slot_mask;
    for (;;) {
        uint32_t s = t->slots[i];
        if (!s)
            return i;
        uint32_t id = s - 1;
        if (t->tok_len[id] == n && memcmp(t->arena + t->tok_off[id], key, n) == 0)
            return i;
        i = (i + 1) & t->slot_mask;
    }
}

static int32_t vocab_lookup(const wordpiece_tokenizer *t, const unsigned char *key, size_t n)
{
    if (n > t->max_key_len)
        return -1;
    uint32_t s = t->slots[vocab_find_slot(t, key, n)];
    return s ? (int32_t)(s - 1) : -1;
}

/* ------------------------------------------------------------------------------------ */
/* Tokenization                                                                         */

static int32_t special_at(const wordpiece_tokenizer *t, const uint32_t *s, size_t n, size_t *len)
{
    (void)t;
    for (int k = 0; k < SP_COUNT; k++) {
        const char *name = special_names[k];
        size_t m = strlen(name);
        if (m > n)
            continue;
        size_t j = 0;
        while (j < m && s[j] == (unsigned char)name[j])
            j++;
        if (j == m) {
            *len = m;
            return k;
        }
    }
    return -1;
}

/* WordPiece of one word (no whitespace in it). */
static sherl_status wordpiece_word(const wordpiece_tokenizer *t, workspace *w, const uint32_t *cps,
                                   size_t n, idbuf *out)
{
    if (n == 0)
        return sherl_ok();
    if (n > WP_MAX_WORD_CHARS) {
        if (id_push(out, t->special_id[SP_UNK]))
            return oom();
        return sherl_ok();
    }
    /* "##" + the word's bytes; a piece starting at code point `start` is looked up as
     * u8[off[start]-2 .. off[end]) after writing "##" in front of it. */
    if (byte_reserve(&w->u8, 2 + n * 4) ||
        grow((void **)&w->off, &w->off_cap, n + 1, sizeof *w->off))
        return oom();
    unsigned char *buf = w->u8.v;
    size_t *off = w->off;
    size_t pos = 2;
    for (size_t i = 0; i < n; i++) {
        off[i] = pos;
        pos += utf8_encode(cps[i], buf + pos);
    }
    off[n] = pos;
    size_t saved = out->n;
    size_t start = 0;
    unsigned char keep[2];
    while (start < n) {
        int32_t found = -1;
        size_t end = n;
        size_t pre = start > 0 ? 2 : 0;
        const unsigned char *key = buf + off[start] - pre;
        if (pre) {
            keep[0] = buf[off[start] - 2];
            keep[1] = buf[off[start] - 1];
            buf[off[start] - 2] = '#';
            buf[off[start] - 1] = '#';
        }
        while (end > start && off[end] - off[start] + pre > t->max_key_len)
            end--;
        for (; end > start; end--) {
            found = vocab_lookup(t, key, off[end] - off[start] + pre);
            if (found >= 0)
                break;
        }
        if (pre) {
            buf[off[start] - 2] = keep[0];
            buf[off[start] - 1] = keep[1];
        }
        if (found < 0) {
            out->n = saved;
            if (id_push(out, t->special_id[SP_UNK]))
                return oom();
            return sherl_ok();
        }
        if (id_push(out, found))
            return oom();
        start = end;
    }
    return sherl_ok();
}

/* Step 5 for one whitespace-separated token: lower, strip accents, split punctuation,
 * WordPiece. */
static sherl_status process_token(const wordpiece_tokenizer *t, workspace *w, const uint32_t *s,
                                  size_t n, idbuf *out)
{
    size_t splen;
    if (special_at(t, s, n, &splen) >= 0 && splen == n) /* in never_split: kept whole */
        return wordpiece_word(t, w, s, n, out);

    const wordpiece_options *o = &t->opts;
    const uint32_t *x = s;
    size_t xn = n;
    if (o->do_lower_case) {
        w->c.n = 0;
        if (cp_reserve(&w->c, 2 * n))
            return oom();
        for (size_t i = 0; i < n; i++) {
            uint32_t l[2];
            int k = py_lower(s[i], l);
            for (int j = 0; j < k; j++)
                w->c.v[w->c.n++] = l[j];
        }
        x = w->c.v;
        xn = w->c.n;
    }
    int strip = o->do_lower_case ? o->strip_accents != 0 : o->strip_accents == 1;
    if (strip) {
        SHERL_TRY(normalize(w, x, xn, 1, &w->b));
        size_t k = 0;
        for (size_t i = 0; i < w->b.n; i++)
            if (w->b.v[i] < 0x300 || py_category(w->b.v[i]) != UTF8PROC_CATEGORY_MN)
                w->b.v[k++] = w->b.v[i];
        w->b.n = k;
        x = w->b.v;
        xn = k;
    }
    /* The reference checks never_split (the special tokens) again before splitting
     * punctuation: "[SEP\u0301]" cased with stripped accents becomes [SEP]. */
    if (special_at(t, x, xn, &splen) >= 0 && splen == xn)
        return wordpiece_word(t, w, x, xn, out);
    /* Punctuation split (and whitespace, which a canonical decomposition never yields, but
     * the reference's final whitespace_tokenize would split on). */
    size_t ws = 0;
    for (size_t i = 0; i <= xn; i++) {
        if (i == xn || py_isspace(x[i])) {
            SHERL_TRY(wordpiece_word(t, w, x + ws, i - ws, out));
            ws = i + 1;
        } else if (hf_is_punctuation(x[i])) {
            SHERL_TRY(wordpiece_word(t, w, x + ws, i - ws, out));
            SHERL_TRY(wordpiece_word(t, w, x + i, 1, out));
            ws = i + 1;
        }
    }
    return sherl_ok();
}

/* Steps 3-6 for the text between two special tokens. */
static sherl_status process_segment(const wordpiece_tokenizer *t, workspace *w, const uint32_t *s,
                                    size_t n, idbuf *out)
{
    const wordpiece_options *o = &t->opts;
    cpbuf *a = &w->a;
    a->n = 0;
    if (n > SIZE_MAX / 8 || cp_reserve(a, 6 * n))
        return oom();
    for (size_t i = 0; i < n; i++) {
        uint32_t l[2];
        int k;
        if (o->do_lower_case) {
            k = py_lower(s[i], l);
        } else {
            l[0] = s[i];
            k = 1;
        }
        for (int j = 0; j < k; j++) {
            uint32_t c = l[j];
            if (c == 0 || c == 0xFFFD || hf_is_control(c))
                continue;
            if (hf_is_whitespace(c)) {
                a->v[a->n++] = ' ';
            } else if (o->tokenize_chinese_chars && hf_is_chinese(c)) {
                a->v[a->n++] = ' ';
                a->v[a->n++] = c;
                a->v[a->n++] = ' ';
            } else {
                a->v[a->n++] = c;
            }
        }
    }
    /* w->a is only read from here on; normalize() writes w->u8 and the destination. */
    cpbuf nfc = {0};
    sherl_status st = normalize(w, a->v, a->n, 0, &nfc);
    if (st.code != SHERL_OK) {
        free(nfc.v);
        return st;
    }
    size_t ws = 0;
    for (size_t i = 0; i <= nfc.n; i++) {
        if (i == nfc.n || py_isspace(nfc.v[i])) {
            if (i > ws) {
                st = process_token(t, w, nfc.v + ws, i - ws, out);
                if (st.code != SHERL_OK)
                    break;
            }
            ws = i + 1;
        }
    }
    free(nfc.v);
    return st;
}

static sherl_status tokenize_ids(const wordpiece_tokenizer *t, workspace *w, const char *text,
                                 const char *what, idbuf *out)
{
    if (!text)
        return sherl_errorf(SHERL_EINVAL, "tokenizer: %s is NULL", what);
    const unsigned char *s = (const unsigned char *)text;
    size_t len = strlen(text);
    w->text.n = 0;
    if (cp_reserve(&w->text, len))
        return oom();
    for (size_t i = 0; i < len;) {
        uint32_t c;
        size_t k = utf8_decode_one(s + i, len - i, &c);
        if (!k)
            return sherl_errorf(SHERL_EINVAL,
                                "tokenizer: %s is not valid UTF-8 at byte offset %zu (byte 0x%02x)",
                                what, i, s[i]);
        w->text.v[w->text.n++] = c;
        i += k;
    }
    const uint32_t *cp = w->text.v;
    size_t n = w->text.n;
    size_t seg = 0;
    for (size_t i = 0; i < n;) {
        size_t m;
        int k;
        if (cp[i] == '[' && (k = special_at(t, cp + i, n - i, &m)) >= 0) {
            if (i > seg)
                SHERL_TRY(process_segment(t, w, cp + seg, i - seg, out));
            if (id_push(out, t->special_id[k]))
                return oom();
            i += m;
            seg = i;
        } else {
            i++;
        }
    }
    if (n > seg)
        SHERL_TRY(process_segment(t, w, cp + seg, n - seg, out));
    if (out->n > (size_t)WP_MAX_TOKENS)
        return sherl_errorf(SHERL_EINVAL, "tokenizer: %s has too many tokens", what);
    return sherl_ok();
}

sherl_status wordpiece_encode(const wordpiece_tokenizer *tok, const char *a, const char *b,
                              int max_length, tok_encoding *out)
{
    if (!out)
        return sherl_errorf(SHERL_EINVAL, "wordpiece_encode: out is NULL");
    memset(out, 0, sizeof *out);
    if (!tok)
        return sherl_errorf(SHERL_EINVAL, "wordpiece_encode: tokenizer is NULL");
    workspace w;
    memset(&w, 0, sizeof w);
    idbuf ia = {0}, ib = {0};
    sherl_status st = tokenize_ids(tok, &w, a, b ? "first text" : "text", &ia);
    if (st.code == SHERL_OK && b)
        st = tokenize_ids(tok, &w, b, "second text", &ib);
    ws_free(&w);
    if (st.code != SHERL_OK)
        goto done;

    /* prepare_for_model + truncate_sequences (truncation=True: longest_first, right side). */
    size_t la = ia.n, lb = ib.n;
    size_t specials = b ? 3 : 2;
    size_t limit = max_length > 0 ? (size_t)max_length : (size_t)tok->opts.model_max_length;
    size_t total = la + lb + specials;
    if (total > limit) {
        size_t remove = total - limit;
        if (!b) {
            if (la > remove) /* else the reference only logs an error and keeps everything */
                la -= remove;
        } else {
            size_t diff = la > lb ? la - lb : lb - la;
            size_t first = diff < remove ? diff : remove;
            size_t second = remove - first;
            size_t ra, rb;
            if (la > lb) {
                ra = first + second / 2;
                rb = second - second / 2;
            } else {
                ra = second / 2;
                rb = first + second - second / 2;
            }
            la = ra >= la ? 0 : la - ra; /* Python's ids[:-k] */
            lb = rb >= lb ? 0 : lb - rb;
        }
    }
    size_t n = la + lb + specials;
    out->input_ids = malloc(n * sizeof *out->input_ids);
    out->token_type_ids = malloc(n * sizeof *out->token_type_ids);
    out->attention_mask = malloc(n * sizeof *out->attention_mask);
    if (!out->input_ids || !out->token_type_ids || !out->attention_mask) {
        tok_encoding_free(out);
        st = oom();
        goto done;
    }
    size_t k = 0;
    out->input_ids[k++] = tok->special_id[SP_CLS];
    for (size_t i = 0; i < la; i++)
        out->input_ids[k++] = ia.v[i];
    out->input_ids[k++] = tok->special_id[SP_SEP];
    size_t first_len = k;
    if (b) {
        for (size_t i = 0; i < lb; i++)
            out->input_ids[k++] = ib.v[i];
        out->input_ids[k++] = tok->special_id[SP_SEP];
    }
    for (size_t i = 0; i < n; i++) {
        out->token_type_ids[i] = i < first_len ? 0 : 1;
        out->attention_mask[i] = 1;
    }
    out->len = (int)n;
done:
    free(ia.v);
    free(ib.v);
    return st;
}

void tok_encoding_free(tok_encoding *enc)
{
    if (!enc)
        return;
    free(enc->input_ids);
    free(enc->token_type_ids);
    free(enc->attention_mask);
    memset(enc, 0, sizeof *enc);
}

sherl_status wordpiece_tokenize(const wordpiece_tokenizer *tok, const char *text, char ***tokens,
                                int *n)
{
    if (!tokens || !n)
        return sherl_errorf(SHERL_EINVAL, "wordpiece_tokenize: NULL output");
    *tokens = NULL;
    *n = 0;
    if (!tok)
        return sherl_errorf(SHERL_EINVAL, "wordpiece_tokenize: tokenizer is NULL");
    workspace w;
    memset(&w, 0, sizeof w);
    idbuf ids = {0};
    sherl_status st = tokenize_ids(tok, &w, text, "text", &ids);
    ws_free(&w);
    if (st.code != SHERL_OK) {
        free(ids.v);
        return st;
    }
    char **res = calloc(ids.n ? ids.n : 1, sizeof *res);
    if (!res) {
        free(ids.v);
        return oom();
    }
    for (size_t i = 0; i < ids.n; i++) {
        uint32_t id = (uint32_t)ids.v[i];
        size_t len = tok->tok_len[id];
        res[i] = malloc(len + 1);
        if (!res[i]) {
            wordpiece_free_tokens(res, (int)i);
            free(ids.v);
            return oom();
        }
        memcpy(res[i], tok->arena + tok->tok_off[id], len + 1);
    }
    *tokens = res;
    *n = (int)ids.n;
    free(ids.v);
    return sherl_ok();
}

void wordpiece_free_tokens(char **tokens, int n)
{
    if (!tokens)
        return;
    for (int i = 0; i < n; i++)
        free(tokens[i]);
    free(tokens);
}

/* ------------------------------------------------------------------------------------ */
/* Loading                                                                              */

void wordpiece_free(wordpiece_tokenizer *tok)
{
    if (!tok)
        return;
    free(tok->arena);
    free(tok->tok_off);
    free(tok->tok_len);
    free(tok->slots);
    free(tok);
}

sherl_status wordpiece_load_vocab(wordpiece_tokenizer **out, const char *vocab_path,
                                  const wordpiece_options *opts)
{
    if (!out)
        return sherl_errorf(SHERL_EINVAL, "wordpiece_load_vocab: out is NULL");
    *out = NULL;
    if (!vocab_path)
        return sherl_errorf(SHERL_EINVAL, "wordpiece_load_vocab: vocab path is NULL");
    wordpiece_options o = {1, -1, 1, WP_DEFAULT_MAX_LENGTH};
    if (opts) {
        o = *opts;
        o.do_lower_case = o.do_lower_case != 0;
        o.tokenize_chinese_chars = o.tokenize_chinese_chars != 0;
        if (o.strip_accents < -1 || o.strip_accents > 1)
            return sherl_errorf(SHERL_EINVAL, "wordpiece options: strip_accents must be -1, 0 or 1, not %d",
                                o.strip_accents);
        if (o.model_max_length <= 0)
            o.model_max_length = WP_DEFAULT_MAX_LENGTH;
    }

    char *data;
    size_t len;
    SHERL_TRY(sherl_read_file(vocab_path, WP_MAX_VOCAB_FILE, &data, &len));
    wordpiece_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        free(data);
        return oom();
    }
    t->opts = o;
    sherl_status st = sherl_ok();

    /* Lines as Python's text-mode readlines() gives them: \n, \r\n and \r all end a line;
     * a last line without terminator still counts, an empty file has none. The tokens are
     * rewritten in place into data, NUL-terminated. */
    size_t lines = 0;
    for (size_t i = 0; i < len; i++) {
        if (data[i] == '\n' || (data[i] == '\r' && (i + 1 == len || data[i + 1] != '\n')))
            lines++;
    }
    if (len > 0 && data[len - 1] != '\n' && data[len - 1] != '\r')
        lines++;
    if (lines == 0) {
        st = sherl_errorf(SHERL_EFORMAT, "%s: empty vocabulary", vocab_path);
        goto fail;
    }
    if (lines > (size_t)INT32_MAX - 1 || len > (size_t)UINT32_MAX - 1) {
        st = sherl_errorf(SHERL_EFORMAT, "%s: vocabulary too large", vocab_path);
        goto fail;
    }
    t->tok_off = malloc(lines * sizeof *t->tok_off);
    t->tok_len = malloc(lines * sizeof *t->tok_len);
    size_t nslots = 16;
    while (nslots < lines * 2)
        nslots *= 2;
    t->slots = calloc(nslots, sizeof *t->slots);
    if (!t->tok_off || !t->tok_len || !t->slots) {
        st = oom();
        goto fail;
    }
    t->slot_mask = nslots - 1;
    t->arena = data;
    t->mem_bytes = sizeof *t + len + 1 + lines * 2 * sizeof(uint32_t) + nslots * sizeof(uint32_t);
    size_t id = 0, w = 0;
    for (size_t i = 0; i < len && id < lines;) {
        size_t start = i;
        while (i < len && data[i] != '\n' && data[i] != '\r')
            i++;
        size_t tl = i - start;
        size_t next = i; /* past the terminator (\r\n, \r or \n), read before the rewrite */
        if (next < len)
            next += (data[next] == '\r' && next + 1 < len && data[next + 1] == '\n') ? 2 : 1;
        for (size_t j = start; j < i;) {
            uint32_t c;
            size_t k = utf8_decode_one((const unsigned char *)data + j, i - j, &c);
            if (!k) {
                st = sherl_errorf(SHERL_EFORMAT, "%s: line %zu is not valid UTF-8 (byte offset %zu)",
                                  vocab_path, id + 1, j);
                t->arena = NULL;
                goto fail;
            }
            j += k;
        }
        memmove(data + w, data + start, tl);
        t->tok_off[id] = (uint32_t)w;
        t->tok_len[id] = (uint32_t)tl;
        w += tl;
        data[w++] = '\0';
        if (tl > t->max_key_len)
            t->max_key_len = tl;
        size_t s = vocab_find_slot(t, (const unsigned char *)data + t->tok_off[id], tl);
        t->slots[s] = (uint32_t)id + 1; /* a later duplicate replaces the earlier id */
        id++;
        i = next;
    }
    t->n_ids = (int)id;
    data = NULL;

    char missing[64] = "";
    for (int k = 0; k < SP_COUNT; k++) {
        t->special_id[k] = vocab_lookup(t, (const unsigned char *)special_names[k],
                                        strlen(special_names[k]));
        if (t->special_id[k] < 0) {
            strcat(missing, " ");
            strcat(missing, special_names[k]);
        }
    }
    if (missing[0]) {
        st = sherl_errorf(SHERL_EFORMAT, "%s: vocabulary lacks the special token(s)%s", vocab_path,
                          missing);
        goto fail;
    }
    *out = t;
    return sherl_ok();
fail:
    if (t->arena == NULL)
        free(data);
    wordpiece_free(t);
    return st;
}

/* A special token in tokenizer_config.json / special_tokens_map.json: a string or an
 * AddedToken object {"content": ...}. NULL when it is neither. */
static const char *token_content(const cJSON *v)
{
    if (cJSON_IsString(v))
        return v->valuestring;
    if (cJSON_IsObject(v)) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(v, "content");
        if (cJSON_IsString(c))
            return c->valuestring;
    }
    return NULL;
}

static int is_bert_special(const char *s)
{
    for (int k = 0; k < SP_COUNT; k++)
        if (strcmp(s, special_names[k]) == 0)
            return 1;
    return 0;
}

/* Refuses what would change tokenization in ways not implemented here. */
static sherl_status check_special_tokens(const cJSON *root, const char *path)
{
    for (int k = 0; k < SP_COUNT; k++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, special_keys[k]);
        if (!v || cJSON_IsNull(v))
            continue;
        const char *s = token_content(v);
        if (!s)
            return sherl_errorf(SHERL_EFORMAT, "%s: %s is neither a string nor a token object",
                                path, special_keys[k]);
        if (strcmp(s, special_names[k]) != 0)
            return sherl_errorf(SHERL_EUNSUPPORTED, "%s: %s \"%.100s\" (only BERT's %s is supported)",
                                path, special_keys[k], s, special_names[k]);
    }
    const cJSON *extra = cJSON_GetObjectItemCaseSensitive(root, "additional_special_tokens");
    if (extra && !cJSON_IsNull(extra)) {
        if (!cJSON_IsArray(extra))
            return sherl_errorf(SHERL_EFORMAT, "%s: additional_special_tokens is not a list", path);
        const cJSON *e;
        cJSON_ArrayForEach(e, extra)
        {
            const char *s = token_content(e);
            if (!s || !is_bert_special(s))
                return sherl_errorf(SHERL_EUNSUPPORTED,
                                    "%s: additional special tokens are not supported", path);
        }
    }
    return sherl_ok();
}

static sherl_status parse_config(const char *path, wordpiece_options *o)
{
    cJSON *root;
    SHERL_TRY(json_load_object(path, WP_MAX_CONFIG_FILE, &root));
    sherl_status st = sherl_ok();
    const struct {
        const char *field;
        int *out;
    } flags[] = {
        {"do_lower_case", &o->do_lower_case},
        {"strip_accents", &o->strip_accents}, /* null keeps -1: follow do_lower_case */
        {"tokenize_chinese_chars", &o->tokenize_chinese_chars},
    };
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        st = json_get_bool(root, path, flags[i].field, flags[i].out);
        if (st.code != SHERL_OK)
            goto done;
    }
    /* Out of range (transformers writes 1e30 for "no limit"): the default. */
    double max_len = o->model_max_length;
    st = json_get_number(root, path, "model_max_length", &max_len);
    if (st.code != SHERL_OK)
        goto done;
    o->model_max_length = isfinite(max_len) && max_len >= 1 && max_len <= WP_MAX_MODEL_MAX_LENGTH
                              ? (int)max_len
                              : WP_DEFAULT_MAX_LENGTH;
    const cJSON *v;
    v = cJSON_GetObjectItemCaseSensitive(root, "do_basic_tokenize");
    if (v && !cJSON_IsNull(v) && !cJSON_IsTrue(v)) {
        st = sherl_errorf(SHERL_EUNSUPPORTED, "%s: do_basic_tokenize=false is not supported", path);
        goto done;
    }
    v = cJSON_GetObjectItemCaseSensitive(root, "never_split");
    if (v && !cJSON_IsNull(v) && !(cJSON_IsArray(v) && cJSON_GetArraySize(v) == 0)) {
        st = sherl_errorf(SHERL_EUNSUPPORTED, "%s: never_split is not supported", path);
        goto done;
    }
    v = cJSON_GetObjectItemCaseSensitive(root, "added_tokens_decoder");
    if (v && !cJSON_IsNull(v)) {
        const cJSON *e;
        cJSON_ArrayForEach(e, v)
        {
            const char *s = token_content(e);
            if (!s || !is_bert_special(s)) {
                st = sherl_errorf(SHERL_EUNSUPPORTED, "%s: added tokens are not supported", path);
                goto done;
            }
        }
    }
    st = check_special_tokens(root, path);
done:
    cJSON_Delete(root);
    return st;
}

/* Whether path names something (the reader then says what is wrong with it); no open(), which
 * would wait forever on a FIFO nobody writes. */
static int file_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

sherl_status wordpiece_load(wordpiece_tokenizer **out, const char *model_dir)
{
    if (!out)
        return sherl_errorf(SHERL_EINVAL, "wordpiece_load: out is NULL");
    *out = NULL;
    if (!model_dir)
        return sherl_errorf(SHERL_EINVAL, "wordpiece_load: model_dir is NULL");
    size_t dl = strlen(model_dir);
    size_t cap = dl + 64;
    char *path = malloc(cap);
    if (!path)
        return oom();
    wordpiece_options o = {1, -1, 1, WP_DEFAULT_MAX_LENGTH};
    sherl_status st = sherl_ok();

    snprintf(path, cap, "%s/tokenizer_config.json", model_dir);
    if (file_exists(path)) {
        st = parse_config(path, &o);
        if (st.code != SHERL_OK)
            goto done;
    }
    snprintf(path, cap, "%s/special_tokens_map.json", model_dir);
    if (file_exists(path)) {
        cJSON *root;
        st = json_load_object(path, WP_MAX_CONFIG_FILE, &root);
        if (st.code == SHERL_OK)
            st = check_special_tokens(root, path);
        cJSON_Delete(root);
        if (st.code != SHERL_OK)
            goto done;
    }
    snprintf(path, cap, "%s/added_tokens.json", model_dir);
    if (file_exists(path)) {
        cJSON *root;
        st = json_load_object(path, WP_MAX_CONFIG_FILE, &root);
        if (st.code == SHERL_OK && cJSON_GetArraySize(root) != 0)
            st = sherl_errorf(SHERL_EUNSUPPORTED, "%s: added tokens are not supported", path);
        cJSON_Delete(root);
        if (st.code != SHERL_OK)
            goto done;
    }
    snprintf(path, cap, "%s/vocab.txt", model_dir);
    st = wordpiece_load_vocab(out, path, &o);
done:
    free(path);
    return st;
}

const wordpiece_options *wordpiece_get_options(const wordpiece_tokenizer *tok)
{
    return &tok->opts;
}

int wordpiece_vocab_size(const wordpiece_tokenizer *tok)
{
    return tok->n_ids;
}

int wordpiece_pad_id(const wordpiece_tokenizer *tok)
{
    return tok->special_id[SP_PAD];
}
