"""A text-analysis service: readability, keywords and key stretching, behind batchgate.

batchgate serve examples/textkit.py
curl --json '{"text": "Batch work, one call."}' localhost:8000/v1/functions/analyze
"""

from __future__ import annotations

import collections
import hashlib
import re
import unicodedata

from batchgate import App

app = App("textkit")

_WORD = re.compile(r"[^\W\d_]+(?:['\u2019-][^\W\d_]+)*")
_SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")
_STOPWORD_TEXT = (
    "a an and are as at be been but by for from has have he her his i in is it its of on or "
    "she so that the their them they this to was were which will with you your we our not "
    "no do does did can could would should may might must than then there these those"
)
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def _syllables(word: str) -> int:
    """A dictionary-free English syllable estimate (vowel groups, silent final e)."""
    word = word.lower()
    groups = re.findall(r"[aeiouy]+", word)
    count = len(groups)
    if word.endswith("e") and not word.endswith(("le", "ee")) and count > 1:
        count -= 1
    return max(1, count)


@app.function(timeout=30, retries=1)
def analyze(doc: dict[str, object]) -> dict[str, object]:
    """Readability and keyword statistics of `{"text": "...", "top": 5}`."""
    text = doc.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError('expected {"text": "<non-empty string>"}')
    top = int(doc.get("top", 5))  # type: ignore[call-overload]
    text = unicodedata.normalize("NFKC", text)
    words = _WORD.findall(text)
    sentences = max(1, len(_SENTENCE_END.findall(text)))
    syllables = sum(_syllables(w) for w in words)
    n = max(1, len(words))
    # Flesch reading ease: higher is easier; 60-70 is plain English.
    flesch = 206.835 - 1.015 * (len(words) / sentences) - 84.6 * (syllables / n)
    counts = collections.Counter(w.lower() for w in words if w.lower() not in _STOPWORDS)
    return {
        "words": len(words),
        "sentences": sentences,
        "characters": len(text),
        "reading_ease": round(flesch, 1),
        "reading_minutes": round(len(words) / 238, 2),
        "keywords": [w for w, _ in counts.most_common(top)],
    }


@app.map(chunk_size=100, timeout=60)
def keywords(text: str) -> list[str]:
    """The three most frequent non-stopwords of one text: a batch of texts in, one list each."""
    if not isinstance(text, str):
        raise TypeError(f"expected a string, got {type(text).__name__}")
    words = (w.lower() for w in _WORD.findall(unicodedata.normalize("NFKC", text)))
    counts = collections.Counter(w for w in words if w not in _STOPWORDS)
    return [w for w, _ in counts.most_common(3)]


@app.function(timeout=120, retries=0)
def stretch(doc: dict[str, object]) -> dict[str, object]:
    """Derive a key from `{"secret": "...", "salt": "...", "rounds": N}` with PBKDF2-SHA256.

    Deliberately slow (a million rounds take about a second): the kind of CPU work that
    should never run on a web server's request thread.
    """
    secret = str(doc["secret"]).encode()
    salt = str(doc.get("salt", "batchgate")).encode()
    rounds = int(doc.get("rounds", 600_000))  # type: ignore[call-overload]
    if not 1 <= rounds <= 50_000_000:
        raise ValueError("rounds must be between 1 and 50,000,000")
    key = hashlib.pbkdf2_hmac("sha256", secret, salt, rounds)
    return {"algorithm": "pbkdf2-sha256", "rounds": rounds, "key": key.hex()}
