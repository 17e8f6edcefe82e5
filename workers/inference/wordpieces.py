"""Word-piece helpers shared by the runtime and training: which sub-words continue a word, where words are.

Plain functions over ``tokenizers`` encodings; no model, no session (training imports this without
ONNX Runtime, the runtime without torch).
"""

from __future__ import annotations

from tokenizers import Encoding


def is_continuation(token: str, is_unknown: bool, prefix: str | None) -> bool:
    """Whether a sub-word continues the word before it (WordPiece's "##"); an unknown token never does."""
    return bool(prefix) and not is_unknown and token.startswith(prefix or "")


def word_spans(
    text: str, enc: Encoding, prefix: str | None, unk_id: int | None
) -> tuple[tuple[int, int, int], ...]:
    """Words of an encoded text as transformers' token-classification pipeline draws them.

    A word starts at every token that is not a continuation sub-word, so a tag read at a word's
    first token means the same here as in `pipeline(..., aggregation_strategy="first")`. Returns
    (first token position, start, end) with character offsets into `text`. Tokenizers without a
    continuation prefix (byte-level BPE) start a word at a token preceded by a space, as the
    pipeline's fallback does.
    """
    words: list[list[int]] = []
    for pos, (tok, tid, (start, end), special) in enumerate(
        zip(enc.tokens, enc.ids, enc.offsets, enc.special_tokens_mask, strict=True)
    ):
        if special:
            continue
        if prefix:
            cont = is_continuation(tok, tid == unk_id, prefix)
        else:
            cont = start > 0 and " " not in text[start - 1 : start + 1]
        if cont and words:
            words[-1][2] = end
        else:
            words.append([pos, start, end])
    return tuple((p, s, e) for p, s, e in words)
