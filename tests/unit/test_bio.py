"""BIO decoding: tag sequences become typed spans the way conlleval counts them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from workers.inference.bio import tag_spans


def test_b_i_sequence_is_one_span() -> None:
    assert tag_spans(["O", "B-person", "I-person", "O", "B-company"]) == [("person", 1, 3), ("company", 4, 5)]


def test_adjacent_b_tags_start_new_spans() -> None:
    assert tag_spans(["B-person", "B-person", "I-person"]) == [("person", 0, 1), ("person", 1, 3)]


def test_stray_i_starts_a_span_and_type_change_splits() -> None:
    assert tag_spans(["I-geo-loc", "I-geo-loc", "I-company", "O"]) == [("geo-loc", 0, 2), ("company", 2, 3)]


def test_span_running_to_the_end_is_closed() -> None:
    assert tag_spans(["O", "B-other", "I-other"]) == [("other", 1, 3)]


def test_empty_and_all_outside() -> None:
    assert tag_spans([]) == []
    assert tag_spans(["O", "O"]) == []


TAGS = st.sampled_from(["O", "B-person", "I-person", "B-geo-loc", "I-geo-loc"])


@given(st.lists(TAGS, max_size=30))
def test_spans_are_ordered_disjoint_and_cover_every_non_o_tag(tags: list[str]) -> None:
    spans = tag_spans(tags)
    covered = [i for _, s, e in spans for i in range(s, e)]
    assert covered == sorted(set(covered))
    assert covered == [i for i, t in enumerate(tags) if t != "O"]
    for kind, s, e in spans:
        assert all(t[2:] == kind for t in tags[s:e])
        assert all(t.startswith("I-") for t in tags[s + 1 : e])
