#!/usr/bin/env python3
"""A slow link in userspace: a TCP proxy with a round-trip time and a
bandwidth cap shared by every connection through it (the kernel here has
`tbf` but no `netem`). Python 3 standard library only.

    linksim.py --listen 127.0.0.1:PORT --to 127.0.0.1:PORT2 --rate 100mbit --rtt 30ms [--stats FILE]
    linksim.py --self-check --rate 100mbit --rtt 30ms [--bytes 50M]

The model, per direction (client to server, server to client):
  - one wire, shared by all connections: a chunk of N bytes read from one
    side occupies it for N*8/rate seconds, after whatever is already on it
    (a single serialized wire clock, so the cap is the sum over connections);
  - each chunk is delivered to the other side rtt/2 after it has left the
    wire (timestamps and a queue per connection and direction: delivery is
    delayed, not throttled, so a stream runs at the rate, not one chunk per
    round trip);
  - a new connection pays one round trip before its first byte goes out
    (the TCP handshake on a real link; here the local connect is instant);
  - a reader keeps at most a few milliseconds of its own bytes queued on the
    wire ahead of time, so connections share it round-robin by chunk, and a
    receiver that stops reading stops the sender (bounded queues).
Not modelled: loss, slow start and TCP windows (the proxy buffers), so a
transfer here is a best case for a real link of that rate and RTT. The
proxy's own loopback sockets forward at once (TCP_NODELAY) and ACK at once
(TCP_QUICKACK after each read): otherwise a server that leaves Nagle on,
like Python's http.server, waits up to 40 ms for loopback's delayed ACK
before each response body, a stall that is loopback's, not the link's.

It prints `listening on PORT` once it accepts connections. On SIGUSR1 it
writes its counters to --stats as one JSON object, replacing the file
atomically: seq (one more per signal), bytes_up (client to server),
bytes_down (server to client), connections (accepted so far), active.
SIGTERM or SIGINT closes every connection and exits 0.

--self-check starts a test server and a proxy in this process, then
measures the RTT of a small request on an open connection (median of 10),
the first answer on a new connection (about 2 RTTs), and the throughput of
--bytes through one connection and through 8 at once; it exits 1 if the
throughput is off the rate by more than 10% or the RTT by more than 5 ms
plus 10%.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import sys

CHUNK = 16 * 1024  # bytes read at a time: the wire's unit of sharing
AHEAD = 0.005  # seconds of a connection's own bytes queued on the wire
QUEUE = 256  # chunks in flight per connection and direction (4 MiB)


def parse_rate(text: str) -> float:
    """'100mbit', '20Mbit', '1gbit', '500kbit', '8000bit' -> bits per second."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmg]?)bit", text.strip().lower())
    if not m:
        raise argparse.ArgumentTypeError(f"rate {text!r}: expected e.g. 100mbit, 20mbit, 1gbit")
    return float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)]


def parse_time(text: str) -> float:
    """'30ms', '0.08s' -> seconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s)", text.strip().lower())
    if not m:
        raise argparse.ArgumentTypeError(f"time {text!r}: expected e.g. 30ms or 0.03s")
    return float(m.group(1)) * (1e-3 if m.group(2) == "ms" else 1)


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([kmg]?)", text.strip().lower())
    if not m:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected e.g. 50M")
    return int(m.group(1)) * {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}[m.group(2)]


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"address {text!r}: expected HOST:PORT")
    return host, int(port)


def no_delay(writer: asyncio.StreamWriter) -> None:
    """No Nagle on the proxy's own loopback sockets: it forwards at once."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def quick_ack(sock) -> None:
    """ACKs what was just read at once (Linux resets this after each read):
    with delayed ACKs, a sender's Nagle would hold its next small segment
    for up to 40 ms on loopback, a stall the simulated link does not have."""
    if sock is not None and hasattr(socket, "TCP_QUICKACK"):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            pass


class Wire:
    """One direction of the link: a clock of when the wire is next free."""

    def __init__(self, rate: float):
        self.rate = rate
        self.free_at = 0.0
        self.bytes = 0

    def send(self, n: int, now: float) -> tuple[float, float]:
        """Puts n bytes on the wire; returns when they start and finish."""
        start = max(now, self.free_at)
        self.free_at = start + n * 8 / self.rate
        self.bytes += n
        return start, self.free_at


class Link:
    def __init__(self, target: tuple[str, int], rate: float, rtt: float):
        self.target = target
        self.half = rtt / 2
        self.rtt = rtt
        self.up = Wire(rate)
        self.down = Wire(rate)
        self.connections = 0
        self.active: set[asyncio.Task] = set()
        self.pumps: set[asyncio.Future] = set()

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter):
        loop = asyncio.get_running_loop()
        # The handshake: on a real link the client's first byte leaves one RTT after connect().
        ready = loop.time() + self.rtt
        self.connections += 1
        task = asyncio.current_task()
        self.active.add(task)
        try:
            try:
                server_r, server_w = await asyncio.open_connection(*self.target)
            except OSError:
                client_w.transport.abort()
                return
            writers = (client_w, server_w)
            for w in writers:
                no_delay(w)

            def abort():
                for w in writers:
                    w.transport.abort()

            pumps = [
                asyncio.ensure_future(self.pump(client_r, client_w, server_w, self.up, ready, abort)),
                asyncio.ensure_future(self.pump(server_r, server_w, client_w, self.down, ready, abort)),
            ]
            self.pumps.update(pumps)
            # Cancelled pumps (shutdown) come back as results: the handler ends normally.
            await asyncio.gather(*pumps, return_exceptions=True)
            self.pumps.difference_update(pumps)
            for w in writers:
                w.close()
        finally:
            self.active.discard(task)

    async def shutdown(self):
        """Ends every connection now (both sides closed) and waits for them."""
        for pump in list(self.pumps):
            pump.cancel()
        await asyncio.wait_for(asyncio.gather(*self.active, return_exceptions=True), 5)

    async def pump(self, reader, source, writer, wire: Wire, ready: float, abort):
        """Forwards reader (source: its writer, for the socket) to writer
        over one direction of the link."""
        loop = asyncio.get_running_loop()
        sock = source.get_extra_info("socket")
        queue: asyncio.Queue = asyncio.Queue(QUEUE)
        deliver = asyncio.ensure_future(self.deliver(queue, writer, abort))
        last = ready
        try:
            while True:
                try:
                    data = await reader.read(CHUNK)
                except (ConnectionError, OSError):
                    abort()
                    break
                quick_ack(sock)
                now = loop.time()
                if not data:
                    # The FIN travels too, after the last byte.
                    await queue.put((max(last, now + self.half), None))
                    break
                _, end = wire.send(len(data), now)
                last = max(end, ready) + self.half
                await queue.put((last, data))
                # Keep at most AHEAD seconds of this connection's bytes queued
                # on the wire: the others get their turn between its chunks.
                wait = end - AHEAD - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
            await deliver
        finally:
            deliver.cancel()

    async def deliver(self, queue: asyncio.Queue, writer: asyncio.StreamWriter, abort):
        loop = asyncio.get_running_loop()
        while True:
            at, data = await queue.get()
            wait = at - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                if data is None:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
            except (ConnectionError, OSError, RuntimeError):
                abort()
                return

    def stats(self, seq: int) -> dict:
        return {
            "seq": seq,
            "bytes_up": self.up.bytes,
            "bytes_down": self.down.bytes,
            "connections": self.connections,
            "active": len(self.active),
        }


async def serve(args) -> None:
    loop = asyncio.get_running_loop()
    link = Link(args.to, args.rate, args.rtt)
    server = await asyncio.start_server(link.handle, *args.listen, backlog=256)
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    seq = 0

    def write_stats():
        nonlocal seq
        seq += 1
        if args.stats:
            tmp = f"{args.stats}.tmp"
            with open(tmp, "w") as f:
                json.dump(link.stats(seq), f)
                f.write("\n")
            os.replace(tmp, args.stats)

    loop.add_signal_handler(signal.SIGUSR1, write_stats)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(f"listening on {port}", flush=True)
    await stop.wait()
    server.close()
    await link.shutdown()


# --- self-check ---------------------------------------------------------


async def test_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    """'ping\\n' -> 'pong\\n'; 'bytes N\\n' -> N bytes; until EOF."""
    block = b"x" * 65536
    TEST_CONNECTIONS.add(asyncio.current_task())
    try:
        while line := await reader.readline():
            words = line.split()
            if words == [b"ping"]:
                writer.write(b"pong\n")
            elif len(words) == 2 and words[0] == b"bytes":
                left = int(words[1])
                while left:
                    n = min(left, len(block))
                    writer.write(block[:n])
                    left -= n
                    await writer.drain()
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
        TEST_CONNECTIONS.discard(asyncio.current_task())


TEST_CONNECTIONS: set[asyncio.Task] = set()


async def self_check(args) -> int:
    loop = asyncio.get_running_loop()
    origin = await asyncio.start_server(test_server, "127.0.0.1", 0)
    origin_port = origin.sockets[0].getsockname()[1]
    link = Link(("127.0.0.1", origin_port), args.rate, args.rtt)
    proxy = await asyncio.start_server(link.handle, "127.0.0.1", 0, backlog=256)
    port = proxy.sockets[0].getsockname()[1]
    mbit = args.rate / 1e6
    ok = True

    # RTT: a new connection's first answer, then pings on it.
    start = loop.time()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"ping\n")
    await reader.readline()
    first = loop.time() - start
    pings = []
    for _ in range(10):
        start = loop.time()
        writer.write(b"ping\n")
        await reader.readline()
        pings.append(loop.time() - start)
    writer.close()
    rtt = statistics.median(pings)
    rtt_ok = abs(rtt - args.rtt) <= 0.005 + 0.1 * args.rtt
    ok &= rtt_ok
    print(f"linksim self-check {mbit:g} Mbit/s, {args.rtt * 1000:g} ms: "
          f"RTT of a small request {rtt * 1000:.1f} ms (median of 10; configured {args.rtt * 1000:g} ms)"
          f"{'' if rtt_ok else ' OFF'}; first answer on a new connection {first * 1000:.1f} ms (handshake + request)")

    async def fetch(n: int) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"bytes {n}\n".encode())
        got = 0
        while got < n:
            data = await reader.read(1 << 20)
            if not data:
                break
            got += len(data)
        writer.close()
        return got

    for conns in (1, 8):
        each = args.bytes // conns
        start = loop.time()
        got = sum(await asyncio.gather(*(fetch(each) for _ in range(conns))))
        took = loop.time() - start
        # The floor: the bytes at the rate, plus the handshake and one round trip.
        floor = got * 8 / args.rate + 2 * args.rtt
        achieved = got * 8 / (took - 2 * args.rtt) / 1e6
        off = abs(achieved - mbit) / mbit
        ok &= off <= 0.1 and got == each * conns
        print(f"linksim self-check {got / 1e6:.0f} MB over {conns} connection{'s' if conns > 1 else ''}: "
              f"{took:.2f} s (floor {floor:.2f} s), {achieved:.1f} Mbit/s of {mbit:g} "
              f"({100 * achieved / mbit:.0f}%){'' if off <= 0.1 else ' OFF'}")
    proxy.close()
    await link.shutdown()
    await asyncio.wait_for(asyncio.gather(*TEST_CONNECTIONS, return_exceptions=True), 5)
    origin.close()
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", type=address, help="HOST:PORT to accept on (port 0: any)")
    p.add_argument("--to", type=address, help="HOST:PORT to forward to")
    p.add_argument("--rate", type=parse_rate, required=True, help="bandwidth each way, e.g. 100mbit")
    p.add_argument("--rtt", type=parse_time, required=True, help="round-trip time, e.g. 30ms")
    p.add_argument("--stats", help="file the counters are written to on SIGUSR1")
    p.add_argument("--self-check", action="store_true", help="measure a proxy of this rate and RTT, then exit")
    p.add_argument("--bytes", type=parse_size, default=50 * 10**6, help="self-check transfer size (default 50M)")
    args = p.parse_args()
    if args.self_check:
        return asyncio.run(self_check(args))
    if not args.listen or not args.to:
        p.error("--listen and --to are required (or --self-check)")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
