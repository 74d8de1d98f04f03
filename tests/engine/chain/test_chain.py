"""Chain: how a route's filters are compiled for the runner (engine/chain/context.pyx)."""

import pytest

from engine.chain.context import Chain
from engine.chain.filter import AUTH, BUFFERED, CORS, OBSERVE, STREAM, TRANSFORM
from engine.filters.header_edit import HeaderEdit


class OnlyRequest:
    PHASE = AUTH

    def on_request(self, ctx):
        return None


class OnlyResponse:
    PHASE = CORS

    def on_response(self, ctx, resp):
        pass


class Everything:
    PHASE = TRANSFORM
    RESPONSE_BODY = (STREAM, 100)

    def on_request(self, ctx):
        return None

    def on_response(self, ctx, resp):
        pass

    def on_response_body(self, ctx, body):
        return None

    def on_log(self, ctx):
        pass


class Editor(Everything):
    PHASE = OBSERVE
    RESPONSE_BODY = (BUFFERED, 5000)


def test_each_hook_is_bound_only_for_filters_that_define_it_in_phase_order():
    a, b, c = Everything(), OnlyRequest(), OnlyResponse()
    chain = Chain([a, b, c])  # given out of order
    assert chain.filters == (c, b, a)  # CORS 10, AUTH 20, TRANSFORM 70
    assert [(i, h.__self__) for i, h, _ in chain.request] == [(1, b), (2, a)]
    # Response and body hooks run in reverse; each keeps its filter's position, which the
    # runner compares with how far the request hooks got.
    assert [(i, h.__self__) for i, h, _ in chain.response] == [(2, a), (0, c)]
    assert [(i, h.__self__) for i, h in chain.response_body] == [(2, a)]
    assert [h.__self__ for h in chain.log] == [a]


class Compiled:
    PHASE = TRANSFORM

    def __init__(self, request, response):
        self.on_request, self.on_response = request, response


def test_a_compiled_hook_is_called_in_c_and_any_other_callable_in_python():
    edit = HeaderEdit([b"x-drop"], [], [(b"X-Add", b"1")])
    chain = Chain([Compiled(edit.on_request, edit.on_response), Everything()])
    # (the runner calls the third item's request/response through the vtable when it is set)
    assert [entry[2] for entry in chain.request] == [edit, None]
    assert [entry[2] for entry in chain.response] == [None, edit]
    # A Hooks object's method bound under the other hook's name is not taken for it.
    crossed = Chain([Compiled(edit.on_response, edit.on_request)])
    assert [entry[2] for entry in crossed.request + crossed.response] == [None, None]


def test_body_needs_take_the_largest_cap_and_buffer_when_any_filter_edits():
    assert (Chain([Everything()]).body_limit, Chain([Everything()]).body_buffered) == (100, False)
    both = Chain([Everything(), Editor()])
    assert (both.body_limit, both.body_buffered) == (5000, True)
    assert (Chain([OnlyRequest()]).body_limit, Chain([]).body_buffered) == (0, False)


@pytest.mark.parametrize("need", [None, ("stream", 0), ("all", 10), 100])
def test_a_body_hook_without_a_valid_declared_need_is_refused(need):
    class Bad(Everything):
        RESPONSE_BODY = need

    with pytest.raises(TypeError, match="RESPONSE_BODY"):
        Chain([Bad()])
