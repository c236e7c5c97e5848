"""What the client sees when the upstream fails: refused connection, read
timeouts, responses cut short, connections reset.  After each failure the
proxy must still serve."""

import unittest

from .harness import E2ECase, curl, free_port

CONFIG = """
return {
  listeners = { { name = "edge", type = "http", address = "$listen" } },
  upstreams = {
    main = { servers = { "$up" }, timeouts = { connect = 2, read = 1, write = 5 } },
    dead = { servers = { "$dead" }, timeouts = { connect = 2, read = 1, write = 5 } },
  },
  policy = "$policy",
}
"""

POLICY = r"""
local M = {}
function M.route(req)
  if req.host == "dead.test" then return "dead" end
  return "main"
end
return M
"""

# curl exit codes that mean the transfer ended early: 18 partial file,
# 52 empty reply, 56 failure receiving network data.
CURL_CUT_SHORT = (18, 52, 56)


class UpstreamFailuresTest(E2ECase):
    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream_cls("main")
        cls.ferry = cls.start_ferry_cls(CONFIG, POLICY, up=cls.up.addr,
                                        dead="127.0.0.1:%d" % free_port())

    def assertStillServing(self):
        r = curl(self.ferry.url("/echo?after-failure=1"), host="ok.test", timeout=10)
        self.assertEqual((r.rc, r.status), (0, 200), "ferry stopped serving: %r" % r)
        self.assertTrue(self.ferry.alive())

    def assertCutShort(self, r, announced=None):
        """The response must not look complete to the client."""
        if r.rc == 0 and r.status is not None and r.status >= 500:
            return  # ferry saw the failure before it started the response
        self.assertIn(r.rc, CURL_CUT_SHORT,
                      "client got a complete-looking response from a failed upstream: %r" % r)
        if announced is not None:
            self.assertLess(len(r.body), announced)

    def test_connection_refused_gives_502(self):
        r = curl(self.ferry.url("/echo"), host="dead.test", timeout=10)
        self.assertEqual((r.rc, r.status), (0, 502), r)
        self.assertLess(r.elapsed, 5)
        self.assertStillServing()

    def test_read_timeout_before_headers_gives_504(self):
        r = curl(self.ferry.url("/slow?delay=3"), host="ok.test", timeout=10)
        self.assertEqual((r.rc, r.status), (0, 504), r)
        self.assertLess(r.elapsed, 2.9, "504 must come after timeouts.read (1 s), "
                                        "not after the upstream answered")
        self.assertGreater(r.elapsed, 0.8)
        self.assertStillServing()

    def test_read_timeout_after_headers_aborts_response(self):
        r = curl(self.ferry.url("/slow?delay=3&phase=body"), host="ok.test", timeout=10)
        self.assertCutShort(r, announced=5)
        self.assertLess(r.elapsed, 2.9)
        self.assertStillServing()

    def test_abort_mid_response_with_content_length(self):
        r = curl(self.ferry.url("/abort?after=100000"), host="ok.test", timeout=10)
        self.assertCutShort(r, announced=2 * 100000 + 1000)
        if r.rc in CURL_CUT_SHORT:
            self.assertEqual(r.status, 200, r)
        self.assertStillServing()

    def test_abort_mid_response_chunked(self):
        r = curl(self.ferry.url("/abort?after=100000&mode=chunked"), host="ok.test", timeout=10)
        self.assertCutShort(r)
        self.assertStillServing()

    def test_reset_gives_502(self):
        r = curl(self.ferry.url("/reset"), host="ok.test", timeout=10)
        self.assertEqual((r.rc, r.status), (0, 502), r)
        self.assertStillServing()


if __name__ == "__main__":
    unittest.main()
