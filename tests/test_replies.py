"""Every reply is well-formed: code, matching enhanced code, sentence."""

import pytest

from gateway import replies
from gateway.replies import Reply


def all_replies():
    return [v for v in vars(replies).values() if isinstance(v, Reply)]


@pytest.mark.parametrize("reply", all_replies(), ids=str)
def test_every_named_reply_has_an_enhanced_code_of_its_class(reply):
    assert reply.enhanced.split(".")[0] == str(reply.code)[0]
    assert reply.text


def test_a_4xx_reply_cannot_carry_a_5xx_enhanced_code():
    with pytest.raises(ValueError):
        Reply(450, "5.7.25", "maddy once sent this")


def test_multiline_reply_uses_hyphen_on_all_but_the_last_line():
    assert str(Reply(550, "5.7.1", "one\ntwo")) == "550-5.7.1 one\r\n550 5.7.1 two"


@pytest.mark.parametrize("reply", all_replies(), ids=str)
def test_every_named_reply_is_ascii_so_it_can_go_on_the_wire(reply):
    assert str(reply).isascii()
