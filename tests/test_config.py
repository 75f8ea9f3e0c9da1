from dataclasses import dataclass

import pytest

from fedrs.config import from_mapping


@dataclass(frozen=True)
class Spec:
    width: int = 8
    mult: tuple[int, ...] = (1, 2)


def test_specs_ignore_foreign_keys_and_take_lists_as_tuples():
    assert from_mapping(Spec, {"width": 4, "mult": [1, 2, 4], "steps": 50}, tuples=("mult",)) == Spec(4, (1, 2, 4))
    assert from_mapping(Spec, None) == Spec()


def test_user_settings_name_the_unknown_key_and_the_known_ones():
    with pytest.raises(ValueError, match=r"my config: unknown keys \['widht'\]; known are \['mult', 'width'\]"):
        from_mapping(Spec, {"widht": 4}, label="my config")
