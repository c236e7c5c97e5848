"""A tiny authoritative DNS server on loopback for ferry's end-to-end tests.

It answers A queries from a table the test edits while it runs
(`server.records[name] = (["127.0.0.2"], ttl)`), AAAA queries with an empty
answer, unknown names with NXDOMAIN, and, while `server.failing` is set,
every query with SERVFAIL; with `server.delay` set (seconds), every answer
leaves that late, so lookups stay in flight. It counts the queries it saw per
name. Standard library only; it runs in a thread of the test process.
"""

import socket
import struct
import threading


class DNSServer:
    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.addr = "127.0.0.1:%d" % self.port
        self.records = {}
        self.failing = False
        self.queries = {}
        self.delay = 0
        self.lock = threading.Lock()
        self.stopping = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def stop(self):
        self.stopping = True
        self.thread.join(timeout=5)
        self.sock.close()

    def run(self):
        while not self.stopping:
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            reply = self.answer(data)
            if reply and self.delay:
                threading.Timer(self.delay, self.send_late, (reply, peer)).start()
            elif reply:
                self.sock.sendto(reply, peer)

    def send_late(self, reply, peer):
        try:
            self.sock.sendto(reply, peer)
        except OSError:
            pass  # stopped meanwhile

    @staticmethod
    def parse_question(data):
        labels, i = [], 12
        while data[i] != 0:
            n = data[i]
            labels.append(data[i + 1:i + 1 + n].decode("ascii").lower())
            i += 1 + n
        qtype, qclass = struct.unpack("!HH", data[i + 1:i + 5])
        return ".".join(labels), qtype, data[12:i + 5]

    def answer(self, data):
        if len(data) < 17:
            return None
        qid, flags = struct.unpack("!HH", data[:4])
        name, qtype, question = self.parse_question(data)
        with self.lock:
            self.queries[name] = self.queries.get(name, 0) + 1
            record = self.records.get(name)
            failing = self.failing
        rd = flags & 0x0100
        if failing:
            return struct.pack("!HHHHHH", qid, 0x8002 | rd, 1, 0, 0, 0) + question  # SERVFAIL
        if record is None:
            return struct.pack("!HHHHHH", qid, 0x8403 | rd, 1, 0, 0, 0) + question  # NXDOMAIN
        ips, ttl = record
        answers = b""
        if qtype == 1:  # A
            for ip in ips:
                answers += struct.pack("!HHHIH", 0xC00C, 1, 1, ttl, 4) + socket.inet_aton(ip)
        count = len(ips) if qtype == 1 else 0
        return struct.pack("!HHHHHH", qid, 0x8400 | rd, 1, count, 0, 0) + question + answers
