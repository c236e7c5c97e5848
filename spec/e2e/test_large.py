"""64 MiB bodies in both directions: intact (sha256) and streamed, not
buffered: ferry's peak RSS (VmHWM) must stay far below the body size, also
when the receiving side is slow and ferry has to apply back-pressure."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

from .harness import (CATCH_ALL_POLICY, CLEAN_ENV, CURL_BASE, E2ECase, HttpReader,
                      MiB, connect, curl, curl_download_sha, pattern_sha256,
                      request_bytes, write_pattern_file)

CONFIG = """
return {
  listeners = { { name = "edge", type = "http", address = "$listen" } },
  upstreams = { default = { servers = { "$up" } } },
  policy = "$policy",
  log = { level = "info", access = true },
}
"""

SIZE = 64 * MiB
RSS_LIMIT_KB = 32 * 1024
HOST = "large.test"


class LargeTest(E2ECase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ferry-e2e-large-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.payload = write_pattern_file(os.path.join(cls.tmp, "payload"), SIZE)
        cls.expected = pattern_sha256(SIZE)
        cls.up = cls.start_upstream_cls("default")
        cls.ferry = cls.start_ferry_cls(CONFIG, CATCH_ALL_POLICY, up=cls.up.addr)
        sys.stderr.write("\n  ferry VmHWM at start: %s kB\n" % cls.ferry.peak_rss_kb())

    def assertPeakRss(self, what):
        peak = self.ferry.peak_rss_kb()
        self.assertIsNotNone(peak)
        sys.stderr.write("\n  ferry peak RSS (VmHWM) after %s: %d kB (%.1f MiB)\n"
                         % (what, peak, peak / 1024.0))
        self.assertLess(peak, RSS_LIMIT_KB,
                        "ferry's peak RSS %d kB after %s: the body was buffered" % (peak, what))

    def test_upload_64mib(self):
        r = curl(self.ferry.url("/upload"), host=HOST, data_file=self.payload, timeout=60)
        self.assertEqual((r.rc, r.status), (0, 200), r)
        self.assertEqual(r.json()["body_len"], SIZE)
        self.assertEqual(r.json()["body_sha256"], self.expected)
        self.assertPeakRss("64 MiB upload")

    def test_upload_64mib_chunked(self):
        r = curl(self.ferry.url("/upload"), host=HOST, data_file=self.payload, timeout=60,
                 headers=[("Transfer-Encoding", "chunked"), ("Expect", "")])
        self.assertEqual((r.rc, r.status), (0, 200), r)
        self.assertEqual(r.json()["body_len"], SIZE)
        self.assertEqual(r.json()["body_sha256"], self.expected)
        self.assertPeakRss("64 MiB chunked upload")

    def test_download_64mib_content_length(self):
        rc, status, n, digest, err = curl_download_sha(
            self.ferry.url("/bytes?n=%d&mode=cl" % SIZE), host=HOST, timeout=60)
        self.assertEqual((rc, status), (0, 200), err)
        self.assertEqual((n, digest), (SIZE, self.expected))
        self.assertPeakRss("64 MiB download (Content-Length)")

    def test_download_64mib_chunked(self):
        rc, status, n, digest, err = curl_download_sha(
            self.ferry.url("/bytes?n=%d&mode=chunked" % SIZE), host=HOST, timeout=60)
        self.assertEqual((rc, status), (0, 200), err)
        self.assertEqual((n, digest), (SIZE, self.expected))
        self.assertPeakRss("64 MiB download (chunked)")

    def test_download_to_slow_reader_applies_backpressure(self):
        """The client stops reading: ferry must stop reading the upstream."""
        sock = connect(self.ferry.port, timeout=10, rcvbuf=64 * 1024)
        try:
            sock.sendall(request_bytes("GET", "/bytes?n=%d&mode=cl" % SIZE, host=HOST))
            reader = HttpReader(sock, timeout=60)
            resp = reader.read_head(time.monotonic() + 10)
            self.assertEqual(resp.status, 200)
            stalled = []
            for _ in range(15):  # 1.5 s without reading
                time.sleep(0.1)
                stalled.append(self.ferry.rss_kb() or 0)
            digest = hashlib.sha256(bytes(reader.buf))
            n = len(reader.buf)
            reader.buf.clear()
            sock.settimeout(30)
            while n < SIZE:
                block = sock.recv(1 << 20)
                if not block:
                    break
                digest.update(block)
                n += len(block)
        finally:
            sock.close()
        sys.stderr.write("\n  ferry RSS while the client stalled: max %d kB\n" % max(stalled))
        self.assertLess(max(stalled), RSS_LIMIT_KB, "ferry buffered the response for a slow client")
        self.assertEqual((n, digest.hexdigest()), (SIZE, self.expected))
        self.assertPeakRss("64 MiB download to a slow reader")

    def test_upstream_close_after_answer_to_slow_reader(self):
        """The upstream sends a whole response and closes while ferry still has
        most of it to write to a slow client: the client gets every byte and
        its connection stays usable."""
        size = 4 * 1024 * 1024
        sock = connect(self.ferry.port, timeout=10, rcvbuf=64 * 1024)
        try:
            sock.sendall(request_bytes("GET", "/bytes?n=%d&mode=cl&close=1" % size, host=HOST))
            reader = HttpReader(sock, timeout=30)
            resp = reader.read_head(time.monotonic() + 10)
            self.assertEqual(resp.status, 200)
            time.sleep(0.5)  # the upstream finishes and closes meanwhile
            n = len(reader.buf)
            reader.buf.clear()
            sock.settimeout(30)
            while n < size:
                block = sock.recv(1 << 20)
                if not block:
                    break
                n += len(block)
            self.assertEqual(n, size, "the response was cut short")
            sock.sendall(request_bytes("GET", "/echo?again=1", host=HOST))
            again = HttpReader(sock, timeout=10).read_response()
            self.assertEqual(again.status, 200)
        finally:
            sock.close()

    def test_upload_to_slow_upstream_applies_backpressure(self):
        """The upstream does not read for 1.5 s: ferry must stop reading the client."""
        args = CURL_BASE + ["--max-time", "60", "-H", "Host: " + HOST, "-H", "Expect:",
                            "--data-binary", "@" + self.payload,
                            self.ferry.url("/upload?delay=1.5")]
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=CLEAN_ENV)
        try:
            stalled = []
            for _ in range(14):
                time.sleep(0.1)
                stalled.append(self.ferry.rss_kb() or 0)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
        sys.stderr.write("\n  ferry RSS while the upstream stalled: max %d kB\n" % max(stalled))
        self.assertEqual(proc.returncode, 0, err)
        info = json.loads(out)
        self.assertEqual((info["body_len"], info["body_sha256"]), (SIZE, self.expected))
        self.assertLess(max(stalled), RSS_LIMIT_KB, "ferry buffered the upload for a slow upstream")
        self.assertPeakRss("64 MiB upload to a slow upstream")


if __name__ == "__main__":
    unittest.main()
