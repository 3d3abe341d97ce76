"""Words for searching the text in photos: one tokenizer for what OCR read and for what people type.

PostgreSQL's own parsers do not split Chinese, and the embedded server has no pg_trgm, so clipdex
makes the lexemes itself and hands them over as an array (``array_to_tsvector``):

- the text is folded first: NFKC (full-width ``ＭＵ５１３７`` is ``MU5137``), Traditional Chinese
  to Simplified (``發票`` is ``发票``), lower case;
- Latin words and digits are kept whole (``mu5137``, ``04412938``); a word that mixes letters and
  digits also gives its parts (``mu``, ``5137``) so a flight number is found by its digits;
- a run of CJK characters (OCR drops the spaces around them: ``发票号码04412938``) gives its
  overlapping character pairs and, in the stored text only, its single characters, so a query of
  one character finds it too.

A photo's names are searched with the same words: the caption its export gave it, its album and
its file name, kept per file location with a weight for each field (``name_words``).

A query's words must all be present (tsquery AND, Latin and digits as prefixes), and the phrase
itself, without spaces or punctuation, must appear in the folded text (``compact``): so
``gate 23`` does not match a photo with ``gate 9`` and ``23`` on different lines.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from pathlib import PurePosixPath

MAX_WORD_LENGTH = 64            # longer runs are cut: no one searches a 500-letter "word"
MAX_WORDS = 4096                # distinct lexemes kept per text

# Han (with extensions A and compatibility), kana, Hangul: scripts written without spaces.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
_TOKEN = re.compile(rf"(?P<cjk>[{_CJK}]+)|(?P<word>[^\W_{_CJK}]+)")
_LETTERS_DIGITS = re.compile(r"[^\W\d_]+|\d+")
_NOT_TEXT = re.compile(rf"[^{_CJK}\w]|_")


@lru_cache(maxsize=1)
def _to_simplified():
    from opencc import OpenCC
    return OpenCC("t2s")


def fold(text: str) -> str:
    """The form both sides are compared in: NFKC, Simplified Chinese, lower case."""
    text = unicodedata.normalize("NFKC", text)
    if re.search(f"[{_CJK}]", text):
        text = _to_simplified().convert(text)
    return text.casefold()


def compact(text: str) -> str:
    """The folded text without spaces or punctuation: what a phrase must be a part of."""
    return _NOT_TEXT.sub("", fold(text))


def _runs(folded: str):
    for match in _TOKEN.finditer(folded):
        yield ("cjk" if match.group("cjk") else "word"), match.group()[:MAX_WORD_LENGTH]


def text_words(text: str) -> list[str]:
    """The lexemes stored for a text (OCR output, a caption, a file name)."""
    words: dict[str, None] = {}
    for kind, run in _runs(fold(text)):
        if kind == "cjk":
            for i in range(len(run)):
                words[run[i]] = None
                if i + 1 < len(run):
                    words[run[i:i + 2]] = None
        else:
            words[run] = None
            parts = _LETTERS_DIGITS.findall(run)
            if len(parts) > 1:
                words.update(dict.fromkeys(parts))
        if len(words) >= MAX_WORDS:
            break
    return list(words)[:MAX_WORDS]


def query_words(text: str) -> list[tuple[str, bool]]:
    """The lexemes a query needs, each with whether it may be a prefix (Latin words and digits:
    ``starbuck`` finds ``starbucks``). A CJK run of one character is looked up alone; longer runs
    by their pairs."""
    words: dict[str, bool] = {}
    for kind, run in _runs(fold(text)):
        if kind == "cjk":
            if len(run) == 1:
                words[run] = False
            for i in range(len(run) - 1):
                words[run[i:i + 2]] = False
        else:
            words[run] = True
    return list(words.items())


def quoted(word: str) -> str:
    """A lexeme as tsvector and tsquery text take it (quoted, so no word is read as syntax)."""
    return "'" + word.replace("\\", "\\\\").replace("'", "''") + "'"


def tsquery_of(words: list[tuple[str, bool]], weights: str = "") -> str:
    """``tsquery`` text for all of ``words`` (each quoted, so no word is read as an operator),
    found only in fields of ``weights`` when given (``"B"``: the caption)."""
    return " & ".join(quoted(w) + ((":*" if prefix else ":") + weights if prefix or weights else "")
                      for w, prefix in words)


# The weight of each of a photo's names in a location's tsvector, and its place in the compact
# form (the fields joined by "|", which compact text never holds, so a phrase cannot run from
# one field into the next).
NAME_FIELDS = (("caption", "B"), ("album", "C"), ("file name", "D"))
CAPTION_WEIGHT = "B"


def name_words(caption: str | None, album: str | None, relpath: str) -> tuple[str, str]:
    """A file location's searchable names: (tsvector input text with each lexeme labelled by the
    weights of the fields that hold it, the fields' compact forms joined by "|"). The file name
    counts without its extension (``IMG_2041.HEIC``: ``img``, ``2041``)."""
    fields = (caption or "", album or "", PurePosixPath(relpath).stem)
    found: dict[str, list[str]] = {}
    for position, (text, (_name, weight)) in enumerate(zip(fields, NAME_FIELDS), start=1):
        for word in text_words(text):
            found.setdefault(word, []).append(f"{position}{weight}")
    vector = " ".join(f"{quoted(word)}:{','.join(labels)}" for word, labels in found.items())
    return vector, "|".join(compact(text) for text in fields)
