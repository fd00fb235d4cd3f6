"""The lean path through nats-py (esfsm/runtime/wire.py) against a real nats-server.

It relies on nats-py internals, so these tests pin what the runtime needs from
it: direct delivery with and without header parsing, status messages, the raw
publish (headers, order, the errors when it cannot send), and that requests
taking the lean path still count in the micro service's statistics.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import nats
import nats.errors
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.errors import ConnectionClosedError, MaxPayloadError, OutboundBufferLimitError

from esfsm.runtime.projector import stream_sequence
from esfsm.runtime.wire import header_block, wire


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_direct_subscription_gets_subject_reply_data_and_headers(nats_server: Any) -> None:
    async def scenario() -> None:
        nc = await nats.connect(nats_server.url)
        other = await nats.connect(nats_server.url)
        got: list[tuple[str, str, bytes, Any]] = []
        raw: list[tuple[str, str, bytes, Any]] = []
        lean = wire(nc)
        assert wire(nc) is lean  # one per connection
        await lean.subscribe("lean.parsed.>", lambda *m: got.append(m))
        await lean.subscribe("lean.raw.>", lambda *m: raw.append(m), parse_headers=False)
        await nc.flush()  # the subscriptions are in place before the other connection publishes
        await other.publish("lean.parsed.a", b"one", reply="reply.to", headers={"x-a": "1", "x-b": " two "})
        await other.publish("lean.parsed.b", b"")
        await other.publish("lean.raw.c", b"three", reply="r", headers={"x-a": "1"})
        await other.flush()
        for _ in range(50):
            if len(got) == 2 and raw:
                break
            await asyncio.sleep(0.02)
        assert got[0] == ("lean.parsed.a", "reply.to", b"one", {"x-a": "1", "x-b": "two"})
        assert got[1] == ("lean.parsed.b", "", b"", None)
        assert raw == [("lean.raw.c", "r", b"three", None)]  # headers not parsed when not asked for
        # ordinary subscriptions on the same connection are untouched (the publish is repeated:
        # now and then the first message to a brand-new subscription never arrives, with plain
        # nats-py connections too - seen here, not investigated further)
        seen = await nc.subscribe("plain.x")
        await nc.flush()
        msg = None
        for _ in range(20):
            await other.publish("plain.x", b"four", headers={"k": "v"})
            await other.flush()
            try:
                msg = await seen.next_msg(timeout=0.2)
                break
            except nats.errors.TimeoutError:
                continue
        assert msg is not None and (msg.data, msg.headers) == (b"four", {"k": "v"})
        await nc.close()
        await other.close()

    run(scenario())


def test_status_messages_reach_a_raw_subscription_parsed(nats_server: Any) -> None:
    """A request nobody serves gets a 503 status (no reply subject): parsed even without parse_headers."""

    async def scenario() -> None:
        nc = await nats.connect(nats_server.url)
        got: list[Any] = []
        lean = wire(nc)
        inbox = nc.new_inbox()
        await lean.subscribe(inbox, lambda *m: got.append(m), parse_headers=False)
        lean.publish("nobody.listens.here", b"x", reply=inbox)
        for _ in range(50):
            if got:
                break
            await asyncio.sleep(0.02)
        assert got and got[0][1] == "" and got[0][3]["Status"] == "503"
        await nc.close()

    run(scenario())


def test_publish_sends_headers_and_keeps_order(nats_server: Any) -> None:
    async def scenario() -> None:
        nc = await nats.connect(nats_server.url)
        listener = await nats.connect(nats_server.url)
        sub = await listener.subscribe("order.>")
        await listener.flush()
        lean = wire(nc)
        lean.publish("order.1", b"a", headers=header_block({"Nats-Msg-Id": "m1", "x-v": " padded "}))
        await nc.publish("order.2", b"b")  # nats-py's own publish, in between
        lean.publish_many([("order.3", b"c"), ("order.4", b""), ("order.5", b"e")])
        received = [await sub.next_msg(timeout=2) for _ in range(5)]
        assert [(m.subject, m.data) for m in received] == [
            ("order.1", b"a"),
            ("order.2", b"b"),
            ("order.3", b"c"),
            ("order.4", b""),
            ("order.5", b"e"),
        ]
        assert received[0].headers == {"Nats-Msg-Id": "m1", "x-v": "padded"}
        with pytest.raises(MaxPayloadError):
            lean.publish("order.6", b"x" * (nc.max_payload + 1))
        block = header_block({"x-v": "1"})  # the server counts headers too, and closes a connection that goes over
        with pytest.raises(MaxPayloadError):
            lean.publish("order.6", b"x" * (nc.max_payload - len(block) + 1), headers=block)
        lean.publish("order.6", b"x" * (nc.max_payload - len(block)), headers=block)
        assert len((await sub.next_msg(timeout=2)).data) == nc.max_payload - len(block)
        assert nc.is_connected
        await nc.close()
        with pytest.raises(ConnectionClosedError):
            lean.publish("order.7", b"late")
        await listener.close()

    run(scenario())


def test_publish_while_disconnected_fails_at_once(tmp_path: Any) -> None:
    """Never queued for after the reconnect: the caller answers 'nothing stored'."""
    from nats_support import start_server

    server = start_server(tmp_path)

    async def scenario() -> None:
        nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        lean = wire(nc)
        lean.publish("before", b"ok")
        await nc.flush()
        server.stop()
        for _ in range(100):
            if not nc.is_connected:
                break
            await asyncio.sleep(0.05)
        with pytest.raises(OutboundBufferLimitError):
            lean.publish("during", b"lost?")
        assert nc.pending_data_size == 0
        await nc.close()

    try:
        run(scenario())
    finally:
        server.stop()


def test_lean_requests_still_count_in_the_service_statistics(nats_server: Any, runtime: Any) -> None:
    async def scenario() -> None:
        nc = await nats.connect(nats_server.url)

        async def deposits() -> int:
            stats = json.loads((await nc.request("$SRV.STATS.aggregate-bankaccount", b"", timeout=5)).data)
            return sum(e["num_requests"] for e in stats["endpoints"] if e["name"] == "deposit")

        before = await deposits()
        for _ in range(20):
            await nc.request(
                "bank.cmds.deposit",
                b'{"amount": 1}',
                timeout=5,
                headers={"x-ergonats-entity-key": "wire-lean-stats", "x-username": "ann"},
            )
        # the catch-all in the same queue group takes its share; each request is counted once at most
        counted = await deposits() - before
        assert 0 < counted <= 20
        await nc.close()

    run(scenario())


def test_stream_sequence_from_both_ack_subject_forms() -> None:
    assert stream_sequence("$JS.ACK.BANK.AGG_bank.1.42.7.1700000000000000000.3") == 42
    assert stream_sequence("$JS.ACK.hub.ACCHASH.BANK.AGG_bank.1.43.8.1700000000000000000.0.rand") == 43
    assert stream_sequence("$JS.ACK.too.short") is None
    assert stream_sequence("$JS.ACK.BANK.AGG_bank.1.x.7.1.3") is None


class _Recorder:
    """Stands in for the client: records what a parser hands it."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: Any) -> None:
        self.calls.append(("msg", sid, bytes(subject), bytes(reply), data, headers))

    async def _process_ping(self) -> None:
        self.calls.append(("ping",))

    async def _process_pong(self) -> None:
        self.calls.append(("pong",))

    async def _process_info(self, info: Any) -> None:
        self.calls.append(("info", info))

    async def _process_err(self, err: str) -> None:
        self.calls.append(("err", err))


_protocol = st.lists(
    st.one_of(
        st.tuples(
            st.just("MSG"),
            st.from_regex(r"[a-z]{1,8}(\.[a-z0-9]{1,5}){0,3}", fullmatch=True),
            st.integers(1, 999),
            st.sampled_from(["", "_INBOX.x.1", "r"]),
            st.binary(max_size=300),
            st.one_of(
                st.none(),
                st.dictionaries(
                    st.sampled_from(["a", "Nats-Msg-Id", "x-k"]), st.text("abc xyz-", max_size=8), min_size=1
                ),
            ),
        ),
        st.sampled_from([("PING",), ("PONG",), ("+OK",), ("INFO",), ("ERR",)]),
    ),
    max_size=25,
)


def _encode(items: list[tuple[Any, ...]]) -> bytes:
    out = bytearray()
    for item in items:
        if item[0] == "MSG":
            _, subject, sid, reply, payload, headers = item
            reply_part = f" {reply}" if reply else ""
            if headers is None:
                out += f"MSG {subject} {sid}{reply_part} {len(payload)}\r\n".encode() + payload + b"\r\n"
            else:
                block = b"NATS/1.0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items()) + b"\r\n"
                out += (
                    f"HMSG {subject} {sid}{reply_part} {len(block)} {len(block) + len(payload)}\r\n".encode()
                    + block
                    + payload
                    + b"\r\n"
                )
        elif item[0] == "INFO":
            out += b'INFO {"server_id":"x","max_payload":1048576}\r\n'
        elif item[0] == "ERR":
            out += b"-ERR 'Permissions Violation for Subscription to \"x\"'\r\n"
        else:
            out += item[0].encode() + b"\r\n"
    return bytes(out)


@settings(max_examples=150, deadline=None)
@given(items=_protocol, cuts=st.lists(st.integers(0, 5000), max_size=8))
def test_lean_parser_hands_over_what_nats_py_parser_does(items: list[tuple[Any, ...]], cuts: list[int]) -> None:
    """Any protocol stream, split into reads anywhere: the same calls, in the same order."""
    from nats.protocol.parser import Parser

    from esfsm.runtime.wire import LeanParser

    data = _encode(items)
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]

    async def feed(parser_class: Any) -> list[tuple[Any, ...]]:
        recorder = _Recorder()
        parser = parser_class(recorder)
        for chunk in chunks:
            await parser.parse(chunk)
        assert not parser.buf  # everything consumed
        return recorder.calls

    assert run(feed(LeanParser)) == run(feed(Parser))


def test_lean_parser_refuses_what_nats_py_refuses() -> None:
    from nats.errors import ProtocolError

    from esfsm.runtime.wire import LeanParser

    for bad in (b"MSG a notanumber 3\r\nabc\r\n", b"HMSG a 1 9 3\r\nxyz\r\n", b"BOGUS line\r\n", b"MSG a\r\n"):
        with pytest.raises(ProtocolError):
            run(LeanParser(_Recorder()).parse(bad))


def test_runtime_connections_read_with_the_lean_parser(nats_server: Any) -> None:
    """Large and small messages, split across reads, arrive whole through esfsm's own client."""
    from esfsm.runtime.connection import ConnectOptions, connect
    from esfsm.runtime.wire import LeanParser
    from esfsm.seam import parser_of

    async def scenario() -> None:
        nc = await connect([nats_server.url], ConnectOptions())
        assert isinstance(parser_of(nc), LeanParser)
        sender = await nats.connect(nats_server.url)
        sub = await nc.subscribe("sizes.>")
        await nc.flush()
        sizes = [0, 1, 100, 4095, 4096, 70_000, 3, 200_000, 17]
        for i, size in enumerate(sizes):
            await sender.publish(f"sizes.{i}", bytes([i % 251]) * size, headers={"n": str(i)} if i % 2 else None)
        await sender.flush()
        for i, size in enumerate(sizes):
            msg = await sub.next_msg(timeout=5)
            assert (msg.subject, len(msg.data), msg.data[:1]) == (f"sizes.{i}", size, bytes([i % 251])[:size])
            assert msg.headers == ({"n": str(i)} if i % 2 else None)
        await sender.close()
        await nc.close()

    run(scenario())


def test_serving_tunes_the_garbage_collector() -> None:
    import gc

    from esfsm.runtime.runner import GC_THRESHOLDS, tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0  # what start-up loaded is out of the collector's way
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


@settings(max_examples=400, deadline=None)
@given(
    lines=st.lists(
        st.binary(max_size=20)
        | st.sampled_from(
            [
                b"a: b",
                b"x-username: ann",
                b"K:V",
                b"bad line",
                b": empty",
                b"\xff: x",
                b"k: \xff\xfe",
                b"a b: c",
                b"a\x0bb: c",
                b"dup: 1",
                b"dup: 2",
                b"  spaced  :  value  ",
            ]
        ),
        max_size=6,
    )
)
def test_lean_header_parsing_matches_nats_py(lines: list[bytes]) -> None:
    from nats.aio.client import Client

    from esfsm.runtime.wire import header_lines

    block = b"NATS/1.0\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"
    assert header_lines(block) == run(Client()._process_headers(block))


def test_a_request_nobody_answers_times_out_on_time(nats_server: Any) -> None:
    """The request mux bounds each wait with a periodic sweep, not a timer per request."""
    import time

    from nats.errors import TimeoutError as NatsTimeout

    from esfsm.runtime.jetstream import SWEEP, requester

    async def scenario() -> None:
        nc = await nats.connect(nats_server.url)
        silent = await nc.subscribe("silent.service")  # takes requests, never answers
        await nc.flush()
        mux = requester(nc)
        started = time.monotonic()
        results = await asyncio.gather(
            mux.request("silent.service", b"1", 0.3), mux.request("silent.service", b"2", 0.6), return_exceptions=True
        )
        elapsed = time.monotonic() - started
        assert all(isinstance(r, NatsTimeout) for r in results)
        assert 0.6 <= elapsed < 0.6 + SWEEP + 0.5

        # answered requests are unaffected by the overdue ones around them
        async def answer(msg: Any) -> None:
            await nc.publish(msg.reply, msg.data)

        echo = await nc.subscribe("echo.service", cb=answer)
        assert (await mux.request("echo.service", b"hi", 2))[0] == b"hi"
        await silent.unsubscribe()
        await echo.unsubscribe()
        await nc.close()

    run(scenario())


def test_the_snapshot_writer_waits_after_a_pull_ends_in_trouble(nats_server: Any) -> None:
    """404 (nothing there) and 408 (expired) end a pull request quietly; anything else (no
    responders, a 409 of any kind) is trouble and the loop waits RETRY before asking again,
    so a missing or misconfigured consumer is not asked in a tight loop."""
    from nats_support import ROOT

    from esfsm.project import load_project
    from esfsm.runtime import projector as module
    from esfsm.runtime.projector import Projector
    from esfsm.runtime.store import AggregateStore

    compiled = load_project([ROOT / "definitions" / "bankaccount.yaml"]).aggregates["bankaccount"]

    class Missing(AggregateStore):
        durable = "AGG_never_created"  # type: ignore[assignment]

    async def scenario() -> None:
        nc = await nats.connect(nats_server.url)
        projector = Projector(AggregateStore(nc, compiled))
        for status, description, ends, trouble in [
            ("404", "No Messages", True, False),
            ("408", "Request Timeout", True, False),
            ("503", "", True, True),
            ("409", "Consumer Deleted", True, True),
            ("409", "Consumer is push based", True, True),
            ("409", "Exceeded MaxWaiting", True, True),
            ("100", "Idle Heartbeat", False, False),
        ]:
            projector._ended.clear()
            projector._trouble = False
            projector._deliver("_INBOX.x", "", b"", {"Status": status, "Description": description})
            assert (projector._ended.is_set(), projector._trouble) == (ends, trouble), status

        # Live: the consumer does not exist, every pull gets 503 no responders.
        missing = Projector(Missing(nc, compiled))
        sent: list[bool] = []
        request = missing._request

        async def counted(*args: Any) -> None:
            await request(*args)
            sent.append(missing._trouble)

        missing._request = counted  # type: ignore[method-assign]
        task = asyncio.create_task(missing.run())
        await asyncio.sleep(4 * module.RETRY - 0.2)
        missing.stop()
        await asyncio.wait_for(task, 5)
        assert 2 <= len(sent) <= 4 and all(sent), sent
        await nc.close()

    run(scenario())


# -- a repeated entity-key header -----------------------------------------------------------------

KEY = "x-ergonats-entity-key"


def test_two_entity_key_header_lines_are_marked_not_resolved_to_the_last() -> None:
    from esfsm.runtime.wire import DUPLICATED, duplicate_header, header_lines

    block = f"NATS/1.0\r\nx-username: ann\r\n{KEY}: alice\r\n{KEY}: bob\r\n\r\n".encode()
    parsed = header_lines(block)
    assert duplicate_header(parsed) == KEY
    assert parsed is not None and parsed[KEY] == DUPLICATED and parsed["x-username"] == "ann"
    assert DUPLICATED not in ("alice", "bob")
    from esfsm.values import valid_key

    assert not valid_key(DUPLICATED)  # a service that does not look still answers 400
    # once is fine, and other repeated headers keep nats-py's last-one-wins
    once = header_lines(f"NATS/1.0\r\n{KEY}: alice\r\ndup: 1\r\ndup: 2\r\n\r\n".encode())
    assert once == {KEY: "alice", "dup": "2"} and duplicate_header(once) is None
    assert duplicate_header(None) is None and duplicate_header({}) is None


def test_a_raw_hmsg_with_two_entity_key_lines_reaches_the_handler_marked(nats_server: Any) -> None:
    """Through a runtime connection's parser, with and without a status line (which nats-py parses)."""
    from esfsm.runtime.connection import ConnectOptions, connect
    from esfsm.runtime.wire import DUPLICATED, duplicate_header

    async def scenario() -> None:
        nc = await connect([nats_server.url], ConnectOptions())
        sender = await nats.connect(nats_server.url)
        got: list[Any] = []
        await wire(nc).subscribe("dupkey.>", lambda *m: got.append(m))
        await nc.flush()
        lines = f"x-username: ann\r\n{KEY}: alice\r\n{KEY}: bob\r\n\r\n".encode()
        wire(sender).publish("dupkey.plain", b"{}", reply="r.1", headers=b"NATS/1.0\r\n" + lines)
        wire(sender).publish("dupkey.status", b"{}", reply="r.2", headers=b"NATS/1.0 200 OK\r\n" + lines)
        wire(sender).publish("dupkey.once", b"{}", reply="r.3", headers=f"NATS/1.0\r\n{KEY}: alice\r\n\r\n".encode())
        await sender.flush()
        for _ in range(100):
            if len(got) == 3:
                break
            await asyncio.sleep(0.02)
        by_subject = {subject: headers for subject, _, _, headers in got}
        for subject in ("dupkey.plain", "dupkey.status"):
            assert duplicate_header(by_subject[subject]) == KEY, subject
            assert by_subject[subject][KEY] == DUPLICATED, subject
        assert by_subject["dupkey.once"] == {KEY: "alice"}
        await sender.close()
        await nc.close()

    run(scenario())


# -- subjects NATS delivers --------------------------------------------------------------------------


def test_sendable_subjects() -> None:
    from esfsm.runtime.wire import sendable_subject

    for subject in (
        "a",
        "_INBOX.x.1",
        "$JS.ACK.a.b",
        "ünïcödé.日本",
        "emoji.\U0001f600",
        "nbsp.\u00a0",
        "raw.\udcff\udce9",
    ):  # bytes that were not UTF-8, kept as surrogate escapes
        assert sendable_subject(subject), repr(subject)
    for subject in (
        "",
        "a b",
        "a\tb",
        "a\r\nPUB x 1",
        "a\nb",
        "a\x0bb",
        "a\x0cb",
        "a\x00b",
        "a\x7fb",
        "ü b",
        "ü\tb",
        "ü\x0b",
        "lone.\ud800",
    ):
        assert not sendable_subject(subject), repr(subject)


def test_publish_refuses_what_would_break_the_protocol_and_sends_nothing(nats_server: Any) -> None:
    async def scenario() -> None:
        nc = await nats.connect(nats_server.url)
        lean = wire(nc)
        before = nc.stats["out_msgs"]
        for subject, reply in (("", ""), ("a b", ""), ("ok", "r\r\nPUB x 1"), ("ok", "r\x0b"), ("a\x00", "")):
            with pytest.raises(nats.errors.BadSubjectError):
                lean.publish(subject, b"x", reply=reply)
        with pytest.raises(nats.errors.BadSubjectError):
            lean.publish_many([("ok", b"1"), ("not ok", b"2")])
        assert nc.stats["out_msgs"] == before
        assert nc.is_connected
        await nc.close()

    run(scenario())


def test_publish_reaches_a_subject_with_non_ascii_characters(tmp_path: Any) -> None:
    """NATS delivers such subjects (a reply subject, say) and a plain nats-py responder answers them."""
    from nats_support import start_server

    server = start_server(tmp_path)

    async def scenario() -> None:
        nc = await nats.connect(server.url)
        listener = await nats.connect(server.url)
        sub = await listener.subscribe("ünï.>")
        await listener.flush()
        wire(nc).publish("ünï.日本.\U0001f600", b"hello", reply="_INBOX.é")
        msg = await sub.next_msg(timeout=2)
        assert (msg.subject, msg.reply, msg.data) == ("ünï.日本.\U0001f600", "_INBOX.é", b"hello")
        await nc.close()
        await listener.close()

    try:
        run(scenario())
    finally:
        server.stop()


def test_a_reply_subject_that_is_not_utf8_is_answered_byte_for_byte(nats_server: Any) -> None:
    host, port = nats_server.url.removeprefix("nats://").rsplit(":", 1)

    async def scenario() -> None:
        nc = await nats.connect(nats_server.url)
        lean = wire(nc)
        await lean.subscribe("echo.raw", lambda subject, reply, data, headers: lean.publish(reply, data))
        await nc.flush()
        reader, writer = await asyncio.open_connection(host, int(port))
        await reader.readline()  # INFO
        writer.write(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB _R.> 1\r\nPING\r\n')
        await asyncio.wait_for(reader.readuntil(b"PONG\r\n"), 5)
        writer.write(b"PUB echo.raw _R.\xff\xfe.x 2\r\nhi\r\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 5)
        while line == b"PING\r\n":
            writer.write(b"PONG\r\n")
            line = await asyncio.wait_for(reader.readline(), 5)
        assert line == b"MSG _R.\xff\xfe.x 1 2\r\n"
        assert await reader.readline() == b"hi\r\n"
        writer.close()
        await nc.close()

    run(scenario())


def test_runtime_connections_take_subjects_with_a_vertical_tab_without_patching_nats_py() -> None:
    """The server splits protocol lines on space and tab only, so it delivers `a<VT>b`; nats-py's
    parser (\\s) would raise ProtocolError on it and drop the connection. The lean parser splits
    as the server does, so esfsm rewrites no pattern of nats-py's parser module (it once did)."""
    from nats.protocol import parser

    import esfsm.runtime.connection  # noqa: F401

    assert parser.MSG_RE.pattern.startswith(rb"\AMSG\s+") and parser.HMSG_RE.pattern.startswith(rb"\AHMSG\s+")

    async def feed() -> list[tuple[Any, ...]]:
        from esfsm.runtime.wire import LeanParser

        recorder = _Recorder()
        parser_ = LeanParser(recorder)
        await parser_.parse(b"MSG a\x0bb 1 _R.\x0c 2\r\nhi\r\nHMSG a\x0bb 2 12 12\r\nNATS/1.0\r\n\r\n\r\n")
        return recorder.calls

    assert run(feed()) == [
        ("msg", 1, b"a\x0bb", b"_R.\x0c", b"hi", None),
        ("msg", 2, b"a\x0bb", b"", b"", b"NATS/1.0\r\n\r\n"),
    ]
