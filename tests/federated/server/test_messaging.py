"""Reading the clients' replies: Flower's wrapped errors unwrapped to the client's message, and the
signature that tells a repeating error from a new one."""

from fedrs.federated.server.messaging import client_error, error_signature, make_message
from tests.federated.fake_grid import FakeGrid


def test_a_wrapped_client_error_is_unwrapped_to_its_message():
    inner = "Traceback (most recent call last):\\n  File x\\nValueError: bad partition 3"
    wrapped = f"<class 'flwr.common.exception'>:<'<class 'ValueError'>:<'{inner}'>'>"
    assert client_error(wrapped) == "Traceback (most recent call last):\n  File x\nValueError: bad partition 3"


def test_the_same_error_with_other_numbers_has_one_signature():
    a = error_signature("Traceback ...\nValueError: client 3 sent 12 outputs for 40 pixels\n")
    b = error_signature("Traceback ...\nValueError: client 5 sent 7 outputs for 41 pixels")
    assert a == b == "ValueError: client # sent # outputs for # pixels"
    assert error_signature("RuntimeError: other") != a and error_signature("") == ""


def test_a_message_carries_the_settings_and_its_round():
    FakeGrid(1)  # a Flower task identity, as a ServerApp process has one
    message = make_message({}, {"seed": 5, "round": 2}, node=101, kind="train", rnd=2)
    assert message.metadata.dst_node_id == 101 and message.metadata.group_id == "2"
    assert message.metadata.message_type == "train" and '"seed": 5' in str(message.content["config"]["settings"])
