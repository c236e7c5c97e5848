"""Differential test of request framing: a table of vectors through ferry.

Each vector is the bytes a client sends on one connection and what that
client meant: the exact requests (method, target, body) the upstream must
receive, in order, and the statuses the client must get back. A vector that
ferry must refuse lists the requests before the refusal (if any) and the
refusal's status; after it the connection must be closed and nothing more may
reach the upstream, whatever bytes the client sent after it (most refused
vectors carry a smuggled request to prove that).

The upstream journal (upstream.py) records every request head and body it
read. After each vector a probe request goes through ferry on a fresh
connection, so whatever ferry forwarded for the vector has reached the
upstream before its journal is read: the journal must then hold exactly the
vector's requests and the probe.

One ferry and one upstream serve the whole table, one connection per vector.
"""

import socket
import unittest

from .harness import (CATCH_ALL_POLICY, E2ECase, HttpReader, ProtocolError, connect,
                      exchange, request_bytes)

CONFIG = """
return {
  listeners = { { name = "edge", type = "http", address = "$listen" } },
  upstreams = { default = { servers = { "$up" } } },
  policy = "$policy",
  limits = { max_request_line = 1024, max_header_bytes = 4096, max_headers = 20 },
}
"""

HOST = "f.test"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: f.test\r\n\r\n"


def msg(line, *headers, body=b"", host=True):
    """A request: the request line, Host (unless host=False), the header lines as
    given (str, sent verbatim with CRLF), an empty line and body."""
    lines = [line] + (["Host: " + HOST] if host else []) + list(headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def post(*headers, body=b"", target="/echo", version="HTTP/1.1", host=True):
    return msg("POST %s %s" % (target, version), *headers, body=body, host=host)


def get(target="/echo", *headers, version="HTTP/1.1", host=True):
    return msg("GET %s %s" % (target, version), *headers, host=host)


def te(body, *headers, target="/echo", version="HTTP/1.1", coding="chunked"):
    return post("Transfer-Encoding: " + coding, *headers, body=body, target=target, version=version)


def cl(body, *headers, target="/echo", version="HTTP/1.1"):
    return post("Content-Length: %d" % len(body), *headers, body=body, target=target, version=version)


def chunks(*parts, trailers=b""):
    """A chunked body of the given data parts, lower-case hex sizes."""
    out = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)
    return out + b"0\r\n" + trailers + b"\r\n"


class V:
    """One vector. upstream: [(method, target, body)] the upstream must see;
    statuses: what the client gets, in order; close: whether ferry closes the
    connection after the last answer (always, after a refusal); head: the
    methods whose answers carry no body, by position."""

    def __init__(self, category, name, data, upstream, statuses, close, methods=None, refusal=False):
        self.category, self.name, self.data = category, name, data
        self.upstream, self.statuses, self.close = upstream, statuses, close
        self.methods = methods or ["GET"] * len(statuses)
        self.refusal = refusal  # the last answer is ferry's refusal


def ok(category, name, data, *upstream, statuses=None, close=False, methods=None):
    return V(category, name, data, list(upstream), statuses or [200] * len(upstream), close, methods)


def refused(category, name, data, status, *before, methods=None):
    return V(category, name, data, list(before), [200] * len(before) + [status], True, methods, True)


def echo(body=b"", method="POST", target="/echo"):
    return (method, target, body)


GET_ECHO = ("GET", "/echo", b"")
HELLO = echo(b"hello")

VECTORS = [
    # -- Content-Length ---------------------------------------------------------
    ok("content-length", "plain", cl(b"hello"), HELLO),
    ok("content-length", "zero", cl(b""), echo(b"")),
    ok("content-length", "leading zeros", post("Content-Length: 005", body=b"hello"), HELLO),
    ok("content-length", "no space after colon", post("Content-Length:5", body=b"hello"), HELLO),
    # Stricter than RFC 9112 (which strips trailing whitespace), as llhttp's strict mode is.
    refused("content-length", "trailing whitespace", post("Content-Length: 5 \t", body=b"hello" + SMUGGLED), 400),
    ok("content-length", "tab before value", post("Content-Length:\t5", body=b"hello"), HELLO),
    ok("content-length", "name in odd case", post("cOnTeNt-LeNgTh: 5", body=b"hello"), HELLO),
    ok("content-length", "body looks like a request", cl(SMUGGLED), echo(SMUGGLED)),
    ok("content-length", "on a GET", msg("GET /echo HTTP/1.1", "Content-Length: 5", body=b"hello"),
       echo(b"hello", "GET")),
    ok("content-length", "25 digits, mostly zeros", post("Content-Length: " + "0" * 24 + "5", body=b"hello"),
       HELLO),
    ok("content-length", "on a PATCH", msg("PATCH /echo HTTP/1.1", "Content-Length: 5", body=b"hello"),
       echo(b"hello", "PATCH")),
    ok("content-length", "on a HEAD", msg("HEAD /echo HTTP/1.1", "Content-Length: 5", body=b"hello"),
       echo(b"hello", "HEAD"), methods=["HEAD"]),
    refused("content-length", "duplicate, same value",
            post("Content-Length: 5", "Content-Length: 5", body=b"hello" + SMUGGLED), 400),
    refused("content-length", "duplicate, different values",
            post("Content-Length: 5", "Content-Length: 44", body=b"hello" + SMUGGLED), 400),
    refused("content-length", "list of equal values", post("Content-Length: 5, 5", body=b"hello" + SMUGGLED), 400),
    refused("content-length", "list of different values",
            post("Content-Length: 5, 44", body=b"hello" + SMUGGLED), 400),
    refused("content-length", "plus sign", post("Content-Length: +5", body=b"hello" + SMUGGLED), 400),
    refused("content-length", "negative", post("Content-Length: -5", body=b"hello" + SMUGGLED), 400),
    refused("content-length", "hex", post("Content-Length: 0x5", body=b"hello" + SMUGGLED), 400),
    refused("content-length", "empty", post("Content-Length: ", body=b"hello" + SMUGGLED), 400),
    refused("content-length", "space inside", post("Content-Length: 1 0", body=b"helloworld" + SMUGGLED), 400),
    refused("content-length", "decimal point", post("Content-Length: 5.0", body=b"hello" + SMUGGLED), 400),
    refused("content-length", "letters after digits", post("Content-Length: 5abc", body=b"hello" + SMUGGLED),
            400),
    refused("content-length", "overflows 64 bits",
            post("Content-Length: 99999999999999999999999", body=b"hello" + SMUGGLED), 400),
    refused("content-length", "2^64 exactly", post("Content-Length: 18446744073709551616", body=b"hello"), 400),
    refused("content-length", "space before colon", post("Content-Length : 5", body=b"hello" + SMUGGLED), 400),
    refused("content-length", "NUL in value", post("Content-Length: 5\x00", body=b"hello" + SMUGGLED), 400),
    refused("content-length", "vertical tab in value", post("Content-Length: \x0b5", body=b"hello" + SMUGGLED),
            400),
    refused("content-length", "folded onto the next line",
            post("Content-Length:", " 5", body=b"hello" + SMUGGLED), 400),

    # -- Transfer-Encoding --------------------------------------------------------
    ok("transfer-encoding", "chunked", te(chunks(b"hello")), HELLO),
    ok("transfer-encoding", "two chunks", te(chunks(b"hel", b"lo")), HELLO),
    ok("transfer-encoding", "empty body", te(chunks()), echo(b"")),
    ok("transfer-encoding", "coding in upper case", te(chunks(b"hello"), coding="CHUNKED"), HELLO),
    ok("transfer-encoding", "name in odd case",
       post("tRaNsFeR-eNcOdInG: chunked", body=chunks(b"hello")), HELLO),
    refused("transfer-encoding", "trailing whitespace", te(chunks(b"hello") + SMUGGLED, coding="chunked \t"), 400),
    ok("transfer-encoding", "body looks like a request", te(chunks(SMUGGLED)), echo(SMUGGLED)),
    refused("transfer-encoding", "gzip, chunked", te(chunks(b"hello") + SMUGGLED, coding="gzip, chunked"), 501),
    refused("transfer-encoding", "deflate, chunked",
            te(chunks(b"hello") + SMUGGLED, coding="deflate, chunked"), 501),
    refused("transfer-encoding", "identity, chunked",
            te(chunks(b"hello") + SMUGGLED, coding="identity, chunked"), 501),
    refused("transfer-encoding", "gzip and chunked in two headers",
            post("Transfer-Encoding: gzip", "Transfer-Encoding: chunked", body=chunks(b"hello") + SMUGGLED), 501),
    refused("transfer-encoding", "chunked, chunked",
            te(chunks(b"hello") + SMUGGLED, coding="chunked, chunked"), 400),
    refused("transfer-encoding", "chunked twice in two headers",
            post("Transfer-Encoding: chunked", "Transfer-Encoding: chunked", body=chunks(b"hello") + SMUGGLED),
            400),
    refused("transfer-encoding", "chunked, gzip", te(chunks(b"hello") + SMUGGLED, coding="chunked, gzip"), 400),
    refused("transfer-encoding", "gzip alone", te(b"hello" + SMUGGLED, coding="gzip"), 400),
    refused("transfer-encoding", "identity alone", te(b"hello" + SMUGGLED, coding="identity"), 400),
    refused("transfer-encoding", "empty value", te(b"5\r\nhello\r\n0\r\n\r\n" + SMUGGLED, coding=""), 400),
    refused("transfer-encoding", "misspelt", te(chunks(b"hello") + SMUGGLED, coding="chunk"), 400),
    refused("transfer-encoding", "chunked with a prefix", te(chunks(b"hello") + SMUGGLED, coding="xchunked"), 400),
    refused("transfer-encoding", "chunked with parameters",
            te(chunks(b"hello") + SMUGGLED, coding="chunked;q=1"), 400),
    refused("transfer-encoding", "space before colon",
            post("Transfer-Encoding : chunked", body=chunks(b"hello") + SMUGGLED), 400),
    refused("transfer-encoding", "vertical tab before coding",
            post("Transfer-Encoding: \x0bchunked", body=chunks(b"hello") + SMUGGLED), 400),
    refused("transfer-encoding", "folded coding",
            post("Transfer-Encoding: gzip,", " chunked", body=chunks(b"hello") + SMUGGLED), 400),
    refused("transfer-encoding", "NUL after coding",
            post("Transfer-Encoding: chunked\x00", body=chunks(b"hello") + SMUGGLED), 400),

    refused("transfer-encoding", "unknown coding then chunked in two headers (TE.TE)",
            post("Transfer-Encoding: x", "Transfer-Encoding: chunked", body=chunks(b"hello") + SMUGGLED), 501),
    refused("transfer-encoding", "chunked then an unknown coding in two headers (TE.TE)",
            post("Transfer-Encoding: chunked", "Transfer-Encoding: x", body=chunks(b"hello") + SMUGGLED), 400),
    refused("transfer-encoding", "whitespace before the name on the first line",
            b"POST /echo HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: f.test\r\n\r\n"
            + chunks(b"hello") + SMUGGLED, 400),
    ok("transfer-encoding", "tab before the coding", post("Transfer-Encoding:\tchunked", body=chunks(b"hello")),
       HELLO),
    ok("transfer-encoding", "on a GET", msg("GET /echo HTTP/1.1", "Transfer-Encoding: chunked",
                                           body=chunks(b"hello")), echo(b"hello", "GET")),
    ok("transfer-encoding", "on a PUT", msg("PUT /echo HTTP/1.1", "Transfer-Encoding: chunked",
                                           body=chunks(b"hello")), echo(b"hello", "PUT")),
    ok("transfer-encoding", "Content-Length in the trailers is not framing",
       te(chunks(b"hello", trailers=b"Content-Length: 50\r\n")) + get(), HELLO, GET_ECHO),
    refused("transfer-encoding", "Transfer-Encoding in the trailers",
            te(chunks(b"hello", trailers=b"Transfer-Encoding: chunked\r\n")) + SMUGGLED, 400),

    # -- Content-Length and Transfer-Encoding together ----------------------------
    refused("cl+te", "CL then TE", post("Content-Length: 10", "Transfer-Encoding: chunked",
                                        body=chunks(b"hello") + SMUGGLED), 400),
    refused("cl+te", "TE then CL", post("Transfer-Encoding: chunked", "Content-Length: 10",
                                        body=chunks(b"hello") + SMUGGLED), 400),
    refused("cl+te", "CL 0 with TE", post("Content-Length: 0", "Transfer-Encoding: chunked",
                                          body=chunks(b"hello") + SMUGGLED), 400),
    refused("cl+te", "CL with gzip, chunked", post("Content-Length: 10", "Transfer-Encoding: gzip, chunked",
                                                   body=chunks(b"hello") + SMUGGLED), 400),
    refused("cl+te", "CL with TE gzip", post("Content-Length: 5", "Transfer-Encoding: gzip",
                                             body=b"hello" + SMUGGLED), 400),
    refused("cl+te", "HTTP/1.0 CL then TE", post("Content-Length: 10", "Transfer-Encoding: chunked",
                                                 "Connection: keep-alive", version="HTTP/1.0",
                                                 body=chunks(b"hello") + SMUGGLED), 400),

    # -- HTTP/1.0 and versions ------------------------------------------------------
    ok("version", "HTTP/1.0 without Host", get(version="HTTP/1.0", host=False), GET_ECHO, close=True),
    ok("version", "HTTP/1.0 with Host", get(version="HTTP/1.0"), GET_ECHO, close=True),
    ok("version", "HTTP/1.0 keep-alive", get("/echo", "Connection: keep-alive", version="HTTP/1.0"), GET_ECHO),
    ok("version", "HTTP/1.0 body then pipelined request",
       cl(b"hello", "Connection: keep-alive", version="HTTP/1.0") + get("/echo", version="HTTP/1.0"),
       HELLO, GET_ECHO, close=True),
    ok("version", "HTTP/1.0 without keep-alive stops after one",
       get(version="HTTP/1.0") + get("/second", version="HTTP/1.0"), GET_ECHO, close=True),
    refused("version", "HTTP/1.0 chunked", te(chunks(b"hello"), version="HTTP/1.0"), 400),
    refused("version", "HTTP/1.0 chunked keep-alive with a request after it",
            te(chunks(b"hello"), "Connection: keep-alive", version="HTTP/1.0") + SMUGGLED, 400),
    refused("version", "HTTP/1.0 gzip, chunked",
            te(chunks(b"hello"), "Connection: keep-alive", version="HTTP/1.0", coding="gzip, chunked") + SMUGGLED,
            400),
    refused("version", "HTTP/2.0 request line", get(version="HTTP/2.0"), 505),
    refused("version", "HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SMUGGLED, 400),
    refused("version", "HTTP/1.2", get(version="HTTP/1.2") + SMUGGLED, 400),
    refused("version", "HTTP/0.9 request line", b"GET /echo\r\n\r\n" + SMUGGLED, 505),
    refused("version", "lower-case protocol name", get(version="http/1.1") + SMUGGLED, 400),
    refused("version", "two-digit minor", get(version="HTTP/1.10") + SMUGGLED, 400),

    # -- chunk sizes ------------------------------------------------------------------
    ok("chunk-size", "upper-case hex", te(b"A\r\n0123456789\r\n0\r\n\r\n"), echo(b"0123456789")),
    ok("chunk-size", "lower-case hex", te(b"a\r\n0123456789\r\n0\r\n\r\n"), echo(b"0123456789")),
    ok("chunk-size", "leading zeros", te(b"0005\r\nhello\r\n0\r\n\r\n"), HELLO),
    ok("chunk-size", "last chunk with leading zeros", te(b"5\r\nhello\r\n000\r\n\r\n"), HELLO),
    ok("chunk-size", "16 hex digits with zeros", te(b"0000000000000005\r\nhello\r\n0\r\n\r\n"), HELLO),
    ok("chunk-size", "20 hex digits, mostly zeros", te(b"0" * 19 + b"5\r\nhello\r\n0\r\n\r\n"), HELLO),
    refused("chunk-size", "not hex", te(b"zz\r\nhello\r\n0\r\n\r\n" + SMUGGLED), 400),
    refused("chunk-size", "0x prefix", te(b"0x5\r\nhello\r\n0\r\n\r\n" + SMUGGLED), 400),
    refused("chunk-size", "negative", te(b"-5\r\nhello\r\n0\r\n\r\n" + SMUGGLED), 400),
    refused("chunk-size", "plus sign", te(b"+5\r\nhello\r\n0\r\n\r\n" + SMUGGLED), 400),
    refused("chunk-size", "empty", te(b"\r\nhello\r\n0\r\n\r\n" + SMUGGLED), 400),
    refused("chunk-size", "leading space", te(b" 5\r\nhello\r\n0\r\n\r\n" + SMUGGLED), 400),
    refused("chunk-size", "trailing space", te(b"5 \r\nhello\r\n0\r\n\r\n" + SMUGGLED), 400),
    refused("chunk-size", "overflows 64 bits", te(b"1" + b"0" * 16 + b"5\r\nhello\r\n0\r\n\r\n" + SMUGGLED), 400),
    refused("chunk-size", "overflow wrapping to a small size",
            te(b"10000000000000005\r\nhello\r\n0\r\n\r\n" + SMUGGLED), 400),
    refused("chunk-size", "size larger than the data", te(b"9\r\nhello\r\n0\r\n\r\n" + SMUGGLED), 400),
    refused("chunk-size", "size smaller than the data", te(b"3\r\nhello\r\n0\r\n\r\n" + SMUGGLED), 400),
    refused("chunk-size", "data followed by junk before CRLF", te(b"5\r\nhelloXX\r\n0\r\n\r\n" + SMUGGLED), 400),
    refused("chunk-size", "size line ended by bare LF", te(b"5\nhello\r\n0\r\n\r\n" + SMUGGLED), 400),
    refused("chunk-size", "data ended by bare LF", te(b"5\r\nhello\n0\r\n\r\n" + SMUGGLED), 400),
    refused("chunk-size", "data ended by bare CR", te(b"5\r\nhello\r0\r\n\r\n" + SMUGGLED), 400),
    refused("chunk-size", "last chunk ended by bare LF", te(b"5\r\nhello\r\n0\n\r\n" + SMUGGLED), 400),

    # -- chunk extensions -------------------------------------------------------------
    ok("chunk-extension", "name=value", te(b"5;ext=1\r\nhello\r\n0\r\n\r\n"), HELLO),
    ok("chunk-extension", "name only", te(b"5;ext\r\nhello\r\n0\r\n\r\n"), HELLO),
    ok("chunk-extension", "quoted value", te(b'5;ext="a b"\r\nhello\r\n0\r\n\r\n'), HELLO),
    ok("chunk-extension", "two extensions without values", te(b"5;a;b\r\nhello\r\n0\r\n\r\n"), HELLO),
    # llhttp 8.1 takes no extension after one with a value: refused, stricter than RFC 9112.
    refused("chunk-extension", "an extension after one with a value",
            te(b"5;a=1;b=2\r\nhello\r\n0\r\n\r\n" + SMUGGLED), 400),
    refused("chunk-extension", "whitespace after the value", te(b"5;a=1 \r\nhello\r\n0\r\n\r\n" + SMUGGLED), 400),
    ok("chunk-extension", "on the last chunk", te(b"5\r\nhello\r\n0;last=1\r\n\r\n"), HELLO),
    refused("chunk-extension", "NUL in extension", te(b"5;e\x00=1\r\nhello\r\n0\r\n\r\n" + SMUGGLED), 400),
    refused("chunk-extension", "bare LF inside extension", te(b"5;e=1\nhello\r\n0\r\n\r\n" + SMUGGLED), 400),
    refused("chunk-extension", "bare CR inside extension", te(b"5;e=\r1\r\nhello\r\n0\r\n\r\n" + SMUGGLED), 400),
    refused("chunk-extension", "control byte in quoted value",
            te(b'5;e="\x01"\r\nhello\r\n0\r\n\r\n' + SMUGGLED), 400),

    # -- trailers ---------------------------------------------------------------------
    ok("trailer", "one trailer field", te(chunks(b"hello", trailers=b"X-Sum: 1\r\n")), HELLO),
    ok("trailer", "two trailer fields", te(chunks(b"hello", trailers=b"X-A: 1\r\nX-B: 2\r\n")), HELLO),
    ok("trailer", "trailer then a pipelined request",
       te(chunks(b"hello", trailers=b"X-Sum: 1\r\n")) + get(), HELLO, GET_ECHO),
    refused("trailer", "folded trailer", te(chunks(b"hello", trailers=b"X-A: 1\r\n folded\r\n") + SMUGGLED), 400),
    refused("trailer", "trailer without colon", te(chunks(b"hello", trailers=b"X-A\r\n") + SMUGGLED), 400),
    refused("trailer", "NUL in a trailer value", te(chunks(b"hello", trailers=b"X-A: a\x00b\r\n") + SMUGGLED), 400),
    refused("trailer", "trailer ended by bare LF", te(chunks(b"hello", trailers=b"X-A: 1\n") + SMUGGLED), 400),
    refused("trailer", "bare CR in a trailer", te(chunks(b"hello", trailers=b"X-A: 1\rX-B: 2\r\n") + SMUGGLED), 400),
    refused("trailer", "space in a trailer name", te(chunks(b"hello", trailers=b"X A: 1\r\n") + SMUGGLED), 400),

    # -- header names and values ------------------------------------------------------
    ok("header", "tab inside a value", get("/echo", "X-A: a\tb"), GET_ECHO),
    ok("header", "obs-text in a value", get("/echo", "X-A: caf\xe9"), GET_ECHO),
    ok("header", "empty value", get("/echo", "X-A:"), GET_ECHO),
    ok("header", "token characters in a name", get("/echo", "X-!#$%&'*+-.^_`|~: 1"), GET_ECHO),
    refused("header", "obs-fold with a space", get("/echo", "X-A: 1", " 2") + SMUGGLED, 400),
    refused("header", "obs-fold with a tab", get("/echo", "X-A: 1", "\t2") + SMUGGLED, 400),
    refused("header", "whitespace before the first header",
            b"GET /echo HTTP/1.1\r\n Host: f.test\r\n\r\n" + SMUGGLED, 400),
    refused("header", "space before colon", get("/echo", "X-A : 1") + SMUGGLED, 400),
    refused("header", "tab before colon", get("/echo", "X-A\t: 1") + SMUGGLED, 400),
    refused("header", "empty name", get("/echo", ": 1") + SMUGGLED, 400),
    refused("header", "no colon", get("/echo", "X-A 1") + SMUGGLED, 400),
    refused("header", "NUL in a name", get("/echo", "X-\x00A: 1") + SMUGGLED, 400),
    refused("header", "NUL in a value", get("/echo", "X-A: a\x00b") + SMUGGLED, 400),
    refused("header", "SOH in a value", get("/echo", "X-A: a\x01b") + SMUGGLED, 400),
    refused("header", "DEL in a value", get("/echo", "X-A: a\x7fb") + SMUGGLED, 400),
    refused("header", "ESC in a value", get("/echo", "X-A: a\x1bb") + SMUGGLED, 400),
    refused("header", "separator in a name", get("/echo", "X(A): 1") + SMUGGLED, 400),
    refused("header", "slash in a name", get("/echo", "X/A: 1") + SMUGGLED, 400),
    refused("header", "non-ASCII in a name", get("/echo", "X-\xe9: 1") + SMUGGLED, 400),
    ok("header", "as many fields as allowed", get("/echo", *["X-H%d: v" % i for i in range(19)]), GET_ECHO),
    refused("header", "one field more than allowed", get("/echo", *["X-H%d: v" % i for i in range(20)]) + SMUGGLED,
            431),
    refused("header", "too many fields", get("/echo", *["X-H%d: v" % i for i in range(30)]) + SMUGGLED, 431),
    refused("header", "header block too large", get("/echo", "X-Big: " + "v" * 5000) + SMUGGLED, 431),
    refused("header", "Connection naming Host", get("/echo", "Connection: close, Host") + SMUGGLED, 400),

    # -- line endings --------------------------------------------------------------------
    refused("line-ending", "bare LF after the request line",
            b"GET /echo HTTP/1.1\nHost: f.test\r\n\r\n" + SMUGGLED, 400),
    refused("line-ending", "bare LF after a header", b"GET /echo HTTP/1.1\r\nHost: f.test\nX-A: 1\r\n\r\n" + SMUGGLED,
            400),
    refused("line-ending", "bare LF ending the head", b"GET /echo HTTP/1.1\r\nHost: f.test\r\n\n" + SMUGGLED, 400),
    refused("line-ending", "bare LF ending the head of a POST",
            b"POST /echo HTTP/1.1\r\nHost: f.test\r\nContent-Length: 5\r\n\nhello" + SMUGGLED, 400),
    refused("line-ending", "bare LF ending the head of a chunked POST",
            b"POST /echo HTTP/1.1\r\nHost: f.test\r\nTransfer-Encoding: chunked\r\n\n0\r\n\r\n" + SMUGGLED, 400),
    refused("line-ending", "only bare LFs", b"GET /echo HTTP/1.1\nHost: f.test\n\n" + SMUGGLED, 400),
    refused("line-ending", "bare CR after the request line",
            b"GET /echo HTTP/1.1\rHost: f.test\r\n\r\n" + SMUGGLED, 400),
    refused("line-ending", "bare CR inside a value", b"GET /echo HTTP/1.1\r\nHost: f.test\r\nX-A: a\rb\r\n\r\n"
            + SMUGGLED, 400),
    refused("line-ending", "CR CR LF", b"GET /echo HTTP/1.1\r\r\nHost: f.test\r\n\r\n" + SMUGGLED, 400),
    ok("line-ending", "empty line before the request line", b"\r\n" + get(), GET_ECHO),
    ok("line-ending", "two empty lines before the request line", b"\r\n\r\n" + get(), GET_ECHO),
    refused("line-ending", "bare LF before the request line", b"\n" + get() + SMUGGLED, 400),

    # -- request line -------------------------------------------------------------------
    ok("request-line", "query string kept", get("/echo?a=1&b=2"), ("GET", "/echo?a=1&b=2", b"")),
    ok("request-line", "HEAD", msg("HEAD /echo HTTP/1.1"), ("HEAD", "/echo", b""), methods=["HEAD"]),
    ok("request-line", "OPTIONS *", msg("OPTIONS * HTTP/1.1"), ("OPTIONS", "*", b""), statuses=[404]),
    ok("request-line", "DELETE with a body", msg("DELETE /echo HTTP/1.1", "Content-Length: 5", body=b"hello"),
       echo(b"hello", "DELETE")),
    ok("request-line", "percent-encoded NUL passes as text", get("/echo?x=%00"), ("GET", "/echo?x=%00", b"")),
    refused("request-line", "fragment in the target", get("/echo#frag") + SMUGGLED, 400),
    refused("request-line", "non-ASCII in the target", get("/ech\xe9") + SMUGGLED, 400),
    refused("request-line", "NUL in the method", msg("G\x00T /echo HTTP/1.1") + SMUGGLED, 400),
    refused("request-line", "two spaces before the version", b"GET /echo  HTTP/1.1\r\nHost: f.test\r\n\r\n"
            + SMUGGLED, 400),
    refused("request-line", "two spaces after the method", b"GET  /echo HTTP/1.1\r\nHost: f.test\r\n\r\n"
            + SMUGGLED, 400),
    refused("request-line", "tab as separator", b"GET\t/echo HTTP/1.1\r\nHost: f.test\r\n\r\n" + SMUGGLED, 400),
    refused("request-line", "space inside the target", get("/ec ho") + SMUGGLED, 400),
    refused("request-line", "control byte in the target", get("/ec\x01ho") + SMUGGLED, 400),
    refused("request-line", "NUL in the target", get("/ec\x00ho") + SMUGGLED, 400),
    refused("request-line", "lower-case method", msg("get /echo HTTP/1.1") + SMUGGLED, 400),
    refused("request-line", "unknown method", msg("FOO /echo HTTP/1.1") + SMUGGLED, 400),
    refused("request-line", "target without a leading slash", get("echo") + SMUGGLED, 400),
    refused("request-line", "authority-form outside CONNECT", get("f.test:80") + SMUGGLED, 400),
    refused("request-line", "CONNECT", msg("CONNECT f.test:443 HTTP/1.1") + SMUGGLED, 405),
    refused("request-line", "request line too long", get("/echo?" + "a" * 1100) + SMUGGLED, 414),
    refused("request-line", "trailing space after the version", b"GET /echo HTTP/1.1 \r\nHost: f.test\r\n\r\n"
            + SMUGGLED, 400),

    # -- absolute-form ---------------------------------------------------------------------
    ok("absolute-form", "http", msg("GET http://f.test/echo HTTP/1.1"), GET_ECHO),
    ok("absolute-form", "https", msg("GET https://f.test/echo?x=1 HTTP/1.1"), ("GET", "/echo?x=1", b"")),
    ok("absolute-form", "without a path", msg("GET http://f.test HTTP/1.1"), ("GET", "/", b""), statuses=[404]),
    ok("absolute-form", "with a port", msg("GET http://f.test:8080/echo HTTP/1.1"), GET_ECHO),
    ok("absolute-form", "Host differs from the authority", msg("GET http://other.test/echo HTTP/1.1"), GET_ECHO),
    ok("absolute-form", "HTTP/1.0 without Host", msg("GET http://f.test/echo HTTP/1.0", host=False), GET_ECHO,
       close=True),
    ok("absolute-form", "scheme in upper case", msg("GET HTTP://f.test/echo HTTP/1.1"), GET_ECHO),
    ok("absolute-form", "query without a path", msg("GET http://f.test?x=1 HTTP/1.1"), ("GET", "/?x=1", b""),
       statuses=[404]),
    refused("absolute-form", "port not numeric", msg("GET http://f.test:ab/echo HTTP/1.1") + SMUGGLED, 400),
    ok("absolute-form", "IPv6 authority", msg("GET http://[::1]:8080/echo HTTP/1.1"), GET_ECHO),
    refused("absolute-form", "HTTP/1.1 without Host", msg("GET http://f.test/echo HTTP/1.1", host=False)
            + SMUGGLED, 400),
    refused("absolute-form", "userinfo", msg("GET http://u:p@f.test/echo HTTP/1.1") + SMUGGLED, 400),
    refused("absolute-form", "ftp scheme", msg("GET ftp://f.test/echo HTTP/1.1") + SMUGGLED, 400),
    refused("absolute-form", "empty authority", msg("GET http:///echo HTTP/1.1") + SMUGGLED, 400),

    # -- Host ------------------------------------------------------------------------------
    ok("host", "with a port", msg("GET /echo HTTP/1.1", "Host: f.test:8080", host=False), GET_ECHO),
    ok("host", "IPv6 literal", msg("GET /echo HTTP/1.1", "Host: [::1]:8080", host=False), GET_ECHO),
    ok("host", "upper case", msg("GET /echo HTTP/1.1", "Host: F.TEST", host=False), GET_ECHO),
    ok("host", "empty", msg("GET /echo HTTP/1.1", "Host:", host=False), GET_ECHO),
    ok("host", "trailing dot", msg("GET /echo HTTP/1.1", "Host: f.test.", host=False), GET_ECHO),
    ok("host", "empty port", msg("GET /echo HTTP/1.1", "Host: f.test:", host=False), GET_ECHO),
    refused("host", "a list of hosts", msg("GET /echo HTTP/1.1", "Host: a.test, b.test", host=False) + SMUGGLED,
            400),
    refused("host", "non-ASCII", msg("GET /echo HTTP/1.1", "Host: f\xe9.test", host=False) + SMUGGLED, 400),
    refused("host", "space before colon", msg("GET /echo HTTP/1.1", "Host : f.test", host=False) + SMUGGLED, 400),
    refused("host", "missing in HTTP/1.1", msg("GET /echo HTTP/1.1", host=False) + SMUGGLED, 400),
    refused("host", "two Host headers", msg("GET /echo HTTP/1.1", "Host: other.test") + SMUGGLED, 400),
    refused("host", "two equal Host headers", msg("GET /echo HTTP/1.1", "Host: f.test") + SMUGGLED, 400),
    refused("host", "port not numeric", msg("GET /echo HTTP/1.1", "Host: f.test:ab", host=False) + SMUGGLED, 400),
    refused("host", "userinfo", msg("GET /echo HTTP/1.1", "Host: u@f.test", host=False) + SMUGGLED, 400),
    refused("host", "space inside", msg("GET /echo HTTP/1.1", "Host: f .test", host=False) + SMUGGLED, 400),
    refused("host", "slash inside", msg("GET /echo HTTP/1.1", "Host: f.test/x", host=False) + SMUGGLED, 400),
    refused("host", "unclosed IPv6 bracket", msg("GET /echo HTTP/1.1", "Host: [::1", host=False) + SMUGGLED, 400),

    # -- Expect ------------------------------------------------------------------------------
    ok("expect", "100-continue with a body", cl(b"hello", "Expect: 100-continue"), HELLO),
    ok("expect", "100-continue without a body", get("/echo", "Expect: 100-continue"), GET_ECHO),
    ok("expect", "100-continue in upper case", cl(b"hello", "Expect: 100-CONTINUE"), HELLO),
    ok("expect", "HTTP/1.0 100-continue", cl(b"hello", "Expect: 100-continue", version="HTTP/1.0"), HELLO,
       close=True),
    ok("expect", "100-continue with a chunked body", te(chunks(b"hello"), "Expect: 100-continue"), HELLO),
    refused("expect", "100-continue and another expectation",
            cl(b"hello", "Expect: 100-continue", "Expect: something") + SMUGGLED, 417),
    refused("expect", "100-continue listed with another", cl(b"hello", "Expect: 100-continue, x") + SMUGGLED, 417),
    refused("expect", "unknown expectation", cl(b"hello", "Expect: something") + SMUGGLED, 417),

    # -- connection handling -------------------------------------------------------------
    ok("connection", "Connection: close in odd case", get("/echo", "Connection: Close") + get("/second"),
       GET_ECHO, close=True),
    ok("connection", "HTTP/1.0 keep-alive then Connection: close",
       get("/echo", "Connection: keep-alive", version="HTTP/1.0") + get("/echo", "Connection: close")
       + get("/third"), GET_ECHO, GET_ECHO, close=True),
    ok("connection", "Upgrade is not followed: the request is forwarded, the rest is not",
       get("/echo", "Connection: Upgrade", "Upgrade: websocket") + SMUGGLED, GET_ECHO, close=True),
    ok("connection", "Upgrade with a body", cl(b"hello", "Connection: Upgrade", "Upgrade: x") + SMUGGLED,
       HELLO, close=True),

    ok("connection", "keep-alive and close: close wins",
       get("/echo", "Connection: keep-alive", "Connection: close") + get("/second"), GET_ECHO, close=True),
    ok("connection", "an empty line between pipelined requests", te(chunks(b"hello")) + b"\r\n" + get(),
       HELLO, GET_ECHO),

    # -- pipelining ---------------------------------------------------------------------------
    ok("pipeline", "two GETs", get() + get("/echo?2"), GET_ECHO, ("GET", "/echo?2", b"")),
    ok("pipeline", "three GETs", get() + get("/echo?2") + get("/echo?3"),
       GET_ECHO, ("GET", "/echo?2", b""), ("GET", "/echo?3", b"")),
    ok("pipeline", "CL body then GET", cl(b"hello") + get(), HELLO, GET_ECHO),
    ok("pipeline", "chunked body then GET", te(chunks(b"hello")) + get(), HELLO, GET_ECHO),
    ok("pipeline", "chunked then CL", te(chunks(b"hel", b"lo")) + cl(b"world"), HELLO, echo(b"world")),
    ok("pipeline", "HEAD then GET", msg("HEAD /echo HTTP/1.1") + get(), ("HEAD", "/echo", b""), GET_ECHO,
       methods=["HEAD", "GET"]),
    ok("pipeline", "Connection: close stops the pipeline", get("/echo", "Connection: close") + get("/second"),
       GET_ECHO, close=True),
    ok("pipeline", "GET with CL 0 then GET", msg("GET /echo HTTP/1.1", "Content-Length: 0") + get(),
       GET_ECHO, GET_ECHO),
    refused("pipeline", "valid then CL+TE", get() + post("Content-Length: 10", "Transfer-Encoding: chunked",
                                                         body=chunks(b"hello")) + SMUGGLED, 400, GET_ECHO),
    refused("pipeline", "valid then obs-fold", get() + get("/echo", "X-A: 1", " 2") + SMUGGLED, 400, GET_ECHO),
    refused("pipeline", "chunked then bad chunk size", te(chunks(b"hello")) + te(b"zz\r\nhello\r\n0\r\n\r\n")
            + SMUGGLED, 400, HELLO),
    refused("pipeline", "CL body then garbage", cl(b"hello") + b"\x00\x01garbage\r\n\r\n" + SMUGGLED, 400, HELLO),
    refused("pipeline", "valid then HTTP/1.0 chunked", get() + te(chunks(b"hello"), version="HTTP/1.0")
            + SMUGGLED, 400, GET_ECHO),
    refused("pipeline", "Transfer_Encoding is another header: the chunks are the next request",
            post("Transfer_Encoding: chunked", body=chunks(b"hello")), 400, echo(b"")),
    refused("pipeline", "Content_Length is another header: the body is the next request",
            post("Content_Length: 5", body=b"hello"), 400, echo(b"")),
    ok("pipeline", "Expect then a pipelined GET", cl(b"hello", "Expect: 100-continue") + get(), HELLO, GET_ECHO),
    ok("pipeline", "a hundred one-byte chunks then GET", te(chunks(*[b"x"] * 100)) + get(),
       echo(b"x" * 100), GET_ECHO),
    ok("pipeline", "CL body holding a last chunk", cl(b"0\r\n\r\n") + get(), echo(b"0\r\n\r\n"), GET_ECHO),
    ok("pipeline", "chunk data holding CRLF", te(chunks(b"a\r\nb")) + get(), echo(b"a\r\nb"), GET_ECHO),
    refused("pipeline", "valid then gzip, chunked", get() + te(chunks(b"hello"), coding="gzip, chunked")
            + SMUGGLED, 501, GET_ECHO),
]


class FramingVectorsTest(E2ECase):
    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream_cls("default")
        cls.ferry = cls.start_ferry_cls(CONFIG, CATCH_ALL_POLICY, up=cls.up.addr)

    def run_vector(self, v):
        """Sends v on one connection; returns (responses, closed-with-nothing-more)."""
        sock = connect(self.ferry.port, timeout=3)
        try:
            try:
                sock.sendall(v.data)
            except (BrokenPipeError, ConnectionResetError):
                pass
            reader = HttpReader(sock, timeout=3)
            responses = []
            try:
                for method in v.methods:
                    responses.append(reader.read_response(method))
            except (ProtocolError, socket.timeout, OSError) as e:
                responses.append(e)
                return responses, None
            if not v.close:
                sock.shutdown(socket.SHUT_WR)  # ferry answers what it got, then closes
            return responses, reader.closed_within(3)
        finally:
            sock.close()

    def check_vector(self, i, v):
        up = self.up
        responses, closed = self.run_vector(v)
        # The probe: on a fresh connection, so anything ferry forwarded for the
        # vector has reached the upstream before the probe's answer comes back.
        (probe,) = exchange(self.ferry.port, request_bytes("GET", "/echo?probe=%d" % i, host=HOST), 1)
        journal = up.journal()
        up.clear()
        problems = []
        got = [r.status if not isinstance(r, Exception) else repr(r) for r in responses]
        if got != v.statuses:
            problems.append("client got %r, meant %r" % (got, v.statuses))
        else:
            origins = ["upstream" if r.header("x-upstream") else "ferry" for r in responses]
            want = ["upstream"] * len(v.upstream) + ["ferry"] * (len(v.statuses) - len(v.upstream))
            if origins != want:
                problems.append("answers came from %r, meant %r" % (origins, want))
            last_close = "close" in responses[-1].tokens("connection")
            if last_close != v.close:
                problems.append("last answer %s Connection: close" % ("has" if last_close else "lacks"))
            if not closed:
                problems.append("connection not closed with nothing more after the answers")
        entries = journal["requests"]
        n = len(v.upstream)
        if v.refusal and len(entries) > n and not entries[n].get("body_complete", True):
            # Refused inside its body (a bad chunk, a bad trailer): ferry streams, so the head
            # may have gone on before the fault arrived. The upstream then got it cut, never
            # complete, and nothing after it.
            del entries[n]
        seen = [(r["line"].rsplit(" ", 1)[0], r.get("body")) for r in entries]
        meant = [("%s %s" % (m, t), b.decode("latin-1")) for m, t, b in v.upstream]
        meant.append(("GET /echo?probe=%d" % i, ""))
        if seen != meant:
            problems.append("upstream saw %r, meant %r" % (seen, meant))
        if journal["partial"]:
            problems.append("upstream got stray bytes %r" % journal["partial"])
        if probe.status != 200:
            problems.append("probe after the vector got %d" % probe.status)
        return problems

    def test_vectors(self):
        self.assertGreaterEqual(len(VECTORS), 100)
        names = [(v.category, v.name) for v in VECTORS]
        self.assertEqual(len(names), len(set(names)), "vector names must be unique")
        failures = []
        for i, v in enumerate(VECTORS):
            problems = self.check_vector(i, v)
            if problems:
                failures.append("[%s] %s: %s" % (v.category, v.name, "; ".join(problems)))
        self.assertEqual(failures, [], "%d of %d vectors failed:\n%s"
                         % (len(failures), len(VECTORS), "\n".join(failures)))


if __name__ == "__main__":
    unittest.main()
