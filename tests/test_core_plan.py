import pytest

from fploopd.core.plan import (
    bridge_section,
    connection_history_4x,
    forward_section,
    inverted_section,
    lay_out,
    original_paddings,
)


@pytest.mark.parametrize(
    ("sections", "paddings"),
    [(1, [0]), (2, [1, 0]), (4, [3, 2, 1, 0]), (5, [3, 2, 2, 1, 0]), (7, [3, 2, 2, 2, 2, 1, 0])],
)
def test_framepack_paddings(sections, paddings):
    assert original_paddings(sections) == paddings


def test_inverted_layout_matches_framepack_split():
    # torch.arange(0, 1 + 18 + 9 + 1 + 2 + 16).split([1, 18, 9, 1, 2, 16])
    s = inverted_section(blank=18, window=9)
    assert s.latents == tuple(range(19, 28))
    assert s.clean == (0, 28)
    assert s.history_2x == (29, 30)
    assert s.history_4x == tuple(range(31, 47))


def test_inverted_layout_without_padding_puts_window_right_after_the_start():
    s = inverted_section(blank=0, window=3, n4x=6)
    assert s.latents == (1, 2, 3) and s.clean == (0, 4) and s.history_4x == tuple(range(7, 13))


def test_forward_layout():
    s = forward_section(window=9)
    assert s.clean == (0, 19) and s.history_4x == tuple(range(1, 17)) and s.history_2x == (17, 18)
    assert s.latents == tuple(range(20, 29))


def test_bridge_layout_takes_context_from_both_sides():
    s = bridge_section(head_4x=3, blank=2, window=4, tail_4x=5)
    assert s.history_4x == (0, 1, 2) + tuple(range(15, 20))
    assert s.history_2x == (3, 4, 13, 14)
    assert s.clean == (5, 12)
    assert s.latents == (8, 9, 10, 11)


def test_tensors_are_long_1d():
    t = inverted_section(0, 2).tensors()
    assert set(t) == {"indices_latents", "indices_latents_clean", "indices_latents_history_2x", "indices_latents_history_4x"}
    assert all(v.ndim == 1 and v.dtype.is_floating_point is False for v in t.values())


@pytest.mark.parametrize(("main_latents", "n"), [(9, 6), (18, 15), (27, 16), (90, 16), (4, 1)])
def test_connection_4x_length_reproduces_framepackloop(main_latents, n):
    assert connection_history_4x(main_latents) == n


def test_too_short_main_for_a_connection():
    with pytest.raises(ValueError, match="at least 4 latents"):
        connection_history_4x(3)


def test_lay_out_refuses_negative_spans():
    with pytest.raises(ValueError):
        lay_out(("a", 1), ("b", -1))
