"""Property tests of the layer-index convention and resolve_layers."""

import pytest
from hypothesis import given, strategies as st

from layertrace.errors import LayertraceError
from layertrace.layers import resolve_layers

n_layers = st.integers(min_value=0, max_value=48)


@given(n_layers)
def test_none_and_all_give_every_layer(n):
    assert resolve_layers(n, None) == list(range(n + 1))
    assert resolve_layers(n, "all") == list(range(n + 1))


@given(st.data())
def test_int_and_negative_index(data):
    n = data.draw(st.integers(1, 48))
    i = data.draw(st.integers(-(n + 1), n))
    assert resolve_layers(n, i) == [i % (n + 1)]
    assert resolve_layers(n, str(i)) == [i % (n + 1)]


@given(st.data())
def test_slice_matches_python_slice(data):
    n = data.draw(st.integers(1, 48))
    start = data.draw(st.one_of(st.none(), st.integers(-n - 1, n)))
    stop = data.draw(st.one_of(st.none(), st.integers(-n - 1, n + 1)))
    step = data.draw(st.one_of(st.none(), st.integers(1, 5)))
    text = f"{'' if start is None else start}:{'' if stop is None else stop}:{'' if step is None else step}"
    expected = list(range(n + 1))[slice(start, stop, step)]
    if expected:
        assert resolve_layers(n, text) == expected
    else:
        with pytest.raises(LayertraceError, match="selects no layer"):
            resolve_layers(n, text)


@given(st.data())
def test_list_is_sorted_unique_and_in_range(data):
    n = data.draw(st.integers(1, 48))
    items = data.draw(st.lists(st.integers(-(n + 1), n), min_size=1, max_size=10))
    out = resolve_layers(n, items)
    assert out == sorted(set(i % (n + 1) for i in items))
    assert all(0 <= i <= n for i in out)
    assert resolve_layers(n, ",".join(map(str, items))) == out


@given(st.data())
def test_out_of_range_names_valid_range(data):
    n = data.draw(st.integers(0, 48))
    bad = data.draw(st.one_of(st.integers(n + 1, 200), st.integers(-300, -(n + 2))))
    with pytest.raises(LayertraceError, match=f"0..{n}"):
        resolve_layers(n, bad)
    with pytest.raises(LayertraceError, match=f"0..{n}"):
        resolve_layers(n, [0, bad])


@pytest.mark.parametrize("spec", ["a:b", "1:2:3:4", "0::0", "x", True, [1.5, "q"]])
def test_garbage_specs_raise_one_line_errors(spec):
    with pytest.raises(LayertraceError) as info:
        resolve_layers(12, spec)
    assert "\n" not in str(info.value)


def test_examples():
    assert resolve_layers(12, "0::2") == [0, 2, 4, 6, 8, 10, 12]
    assert resolve_layers(12, -1) == [12]
    assert resolve_layers(12, "1:") == list(range(1, 13))
    assert resolve_layers(6, [-1, 0, 0]) == [0, 6]
