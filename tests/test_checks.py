"""The shared argument checks (ddpm_lib/_checks.py): what they accept and what they say."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ddpm_lib._checks import (
    ArgumentTypeError,
    check_bool,
    check_int,
    check_int_tuple,
    check_probability,
    check_real,
    is_int,
    is_real,
)


def test_check_int_accepts_integers_and_names_what_is_wrong():
    assert check_int("n", 3, 1) == 3 and type(check_int("n", np.int64(3), 1)) is int
    assert check_int("n", None, 1, allow_none=True) is None
    with pytest.raises(ArgumentTypeError, match=r"^n must be an int; got float 2.5$"):
        check_int("n", 2.5, 1)
    with pytest.raises(TypeError, match=r"^n must be an int; got bool True$"):
        check_int("n", True)
    with pytest.raises(ValueError, match=r"^n must be an int or None; got str 'x'$"):
        check_int("n", "x", allow_none=True)  # an ArgumentTypeError is a ValueError too
    with pytest.raises(ValueError, match=r"^n must be >= 1; got 0$"):
        check_int("n", 0, 1)
    with pytest.raises(ValueError, match=r"^n must be <= 3; got 4$"):
        check_int("n", 4, maximum=3)
    with pytest.raises(ValueError, match=r"^n must be in \[1, 3\]; got 4$"):
        check_int("n", 4, 1, 3)


def test_check_real_ranges_open_bounds_and_finiteness():
    assert check_real("lr", 1, 0, open_min=True) == 1 and check_real("x", np.float32(0.5)) == 0.5
    assert check_real("s", math.inf, 0, finite=False) == math.inf
    with pytest.raises(ValueError, match=r"^lr must be > 0; got 0$"):
        check_real("lr", 0, 0, open_min=True)
    with pytest.raises(ValueError, match=r"^p must be in \[0, 1\); got 1$"):
        check_real("p", 1, 0, 1, open_max=True)
    with pytest.raises(ValueError, match=r"^lr must be a finite number > 0; got nan$"):
        check_real("lr", math.nan, 0, open_min=True)
    with pytest.raises(ValueError, match=r"^s must be a number; got nan$"):
        check_real("s", math.nan, finite=False)
    with pytest.raises(ValueError, match=r"^x must be a finite number; got inf$"):
        check_real("x", math.inf)
    with pytest.raises(ArgumentTypeError, match=r"^x must be a real number; got bool False$"):
        check_real("x", False)


def test_check_probability_bool_and_int_tuple():
    assert check_probability("dropout", 0) == 0.0
    assert check_probability("class_dropout", 1, allow_one=True) == 1.0
    for bad in (1.0, -0.1, math.nan):
        with pytest.raises(ValueError, match=r"^dropout must be a float in \[0, 1\); got "):
            check_probability("dropout", bad)
    with pytest.raises(ArgumentTypeError, match=r"must be a float in \[0, 1\]; got str"):
        check_probability("p", "0.5", allow_one=True)
    assert check_bool("flag", False) is False
    with pytest.raises(ArgumentTypeError, match=r"^flag must be a bool; got int 1$"):
        check_bool("flag", 1)
    assert check_int_tuple("mults", [1, 2], 1) == (1, 2)
    assert check_int_tuple("res", (), 1, allow_empty=True) == ()
    with pytest.raises(ValueError, match="mults must not be empty"):
        check_int_tuple("mults", (), 1)
    with pytest.raises(ValueError, match=r"each entry of mults must be >= 1; got 0"):
        check_int_tuple("mults", (1, 0), 1)
    with pytest.raises(TypeError, match="mults must be a sequence of ints; got '12'"):
        check_int_tuple("mults", "12", 1)


def test_predicates_refuse_bools_and_accept_numpy_scalars():
    assert is_int(3) and is_int(np.int64(3)) and not is_int(True) and not is_int(3.0)
    assert not is_int("3") and not is_int(None)
    assert is_real(2) and is_real(2.5) and is_real(np.float32(0.5)) and is_real(math.inf)
    assert not is_real(False) and not is_real("2.5") and not is_real(None)


def test_expected_words_every_message():
    with pytest.raises(ArgumentTypeError, match=r"^n must be a positive int; got str '3'$"):
        check_int("n", "3", 1, expected="a positive int")
    with pytest.raises(ValueError, match=r"^n must be a positive int; got 0$"):
        check_int("n", 0, 1, expected="a positive int")
    with pytest.raises(ArgumentTypeError, match=r"^w must be a finite float >= 0 or None; got "
                                                r"bool True$"):
        check_real("w", True, 0, allow_none=True, expected="a finite float >= 0")
    with pytest.raises(ValueError, match=r"^w must be a finite float >= 0; got -0.1$"):
        check_real("w", -0.1, 0, expected="a finite float >= 0")
    with pytest.raises(ValueError, match=r"^w must be a finite float >= 0; got nan$"):
        check_real("w", math.nan, 0, expected="a finite float >= 0")
    assert check_real("w", 0.5, 0, expected="a finite float >= 0") == 0.5
