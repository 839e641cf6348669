"""The decrypted label: highest score, first label on a tie, like the clear model's argmax."""

import numpy as np
import pytest

from client.encrypted_model import top_class

pytestmark = pytest.mark.fast


def test_ties_in_the_last_bits_go_to_the_first_label() -> None:
    assert top_class(np.array([0.3425177917246925, 0.31, 0.34251779172469254])) == 0


def test_clear_winner() -> None:
    assert top_class(np.array([0.2, 0.5, 0.3])) == 1
    assert top_class(np.array([0.2, 0.3, 0.5])) == 2
