#!/usr/bin/env python3
"""An agent's push through PrivateLink, played on one machine, for
examples/agents.lua: sends the PROXY protocol v2 header an AWS NLB sends
(with the consumer's VPC endpoint id in TLV 0xEA), then TLS with the demo CA,
then one HTTP request, and prints the answer.

    python3 examples/agent_push.py --vpce vpce-0123456789abcdef0 metrics.observability.internal
    python3 examples/agent_push.py --local metrics.observability.internal   # an NLB health check
    python3 examples/agent_push.py --sni logs.observability.internal metrics.observability.internal
"""

import argparse
import os
import socket
import ssl
import struct
import sys

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
HERE = os.path.dirname(os.path.abspath(__file__))


def proxy_v2(src, sport, dst, dport, vpce=None, local=False):
    """A v2 header: PROXY over TCP/IPv4 with the AWS endpoint TLV, or LOCAL."""
    if local:
        return SIG + b"\x20\x00" + struct.pack("!H", 0)
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    if vpce:
        value = b"\x01" + vpce.encode()  # PP2_SUBTYPE_AWS_VPCE_ID
        body += struct.pack("!BH", 0xEA, len(value)) + value
    return SIG + b"\x21\x11" + struct.pack("!H", len(body)) + body


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("host", help="Host header, e.g. metrics.observability.internal")
    ap.add_argument("--vpce", help="VPC endpoint id the NLB reports (none: a PROXY header without it)")
    ap.add_argument("--local", action="store_true", help="send a LOCAL header, as an NLB health check does")
    ap.add_argument("--sni", help="TLS server name (default: the host)")
    ap.add_argument("--source", default="10.20.30.40", help="the agent's address in the PROXY header")
    ap.add_argument("--address", default="127.0.0.1:8443", help="ferry's agents listener")
    ap.add_argument("--path", default="/api/v1/push")
    ap.add_argument("--cacert", default=os.path.join(HERE, "certs", "ca.pem"))
    args = ap.parse_args()

    ip, port = args.address.rsplit(":", 1)
    sock = socket.create_connection((ip, int(port)), timeout=5)
    sock.sendall(proxy_v2(args.source, 40000, ip, int(port), args.vpce, args.local))
    ctx = ssl.create_default_context(cafile=args.cacert)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    with ctx.wrap_socket(sock, server_hostname=args.sni or args.host) as tls:
        body = b"demo payload\n"
        tls.sendall(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: text/plain\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                    % (args.path.encode(), args.host.encode(), len(body), body))
        reply = b""
        while True:
            chunk = tls.recv(65536)
            if not chunk:
                break
            reply += chunk
    head, _, rest = reply.partition(b"\r\n\r\n")
    print(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    sys.stdout.write(rest.decode(errors="replace"))
    return 0 if b" 200 " in head.split(b"\r\n", 1)[0] else 1


if __name__ == "__main__":
    sys.exit(main())
