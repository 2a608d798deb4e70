// A local HTTP fixture server on a raw TCP socket, so tests see exactly what arrived (header order, case,
// duplicates) and can answer in ways a well-behaved server never would.

import { createServer, type Server, type Socket } from "node:net";
import { createServer as createTlsServer } from "node:tls";
import type { KeyPair } from "./tls.ts";

export interface Received {
  method: string;
  /** path and query as sent */
  target: string;
  path: string;
  query: URLSearchParams;
  /** header lines in order, names as sent */
  headers: [string, string][];
  body: Buffer;
  /** Date.now() when the request had fully arrived */
  at: number;
  /** which connection it came on: the fixture numbers them 1, 2, … in the order they were accepted */
  connection: number;
}

export function header(request: Received, name: string): string[] {
  return request.headers.filter(([n]) => n.toLowerCase() === name.toLowerCase()).map(([, v]) => v);
}

interface Reply {
  status?: number;
  headers?: [string, string][];
  body?: string | Buffer;
}

const REASONS: Record<number, string> = {
  200: "OK",
  204: "No Content",
  404: "Not Found",
  429: "Too Many Requests",
  503: "Service Unavailable",
  500: "Internal Server Error",
};

export class Fixture {
  readonly requests: Received[] = [];
  #server: Server;
  #sockets = new Set<Socket>();
  #connections = 0;
  #host: string;
  #scheme: "http" | "https";

  private constructor(server: Server, host: string, scheme: "http" | "https") {
    this.#server = server;
    this.#host = host;
    this.#scheme = scheme;
  }

  /** Starts a fixture on `host` ("127.0.0.1" or "::1") and a free port; with `tls`, an https one. */
  static async start(host = "127.0.0.1", options: { tls?: KeyPair } = {}): Promise<Fixture> {
    const server = options.tls ? createTlsServer(options.tls) : createServer();
    const fixture = new Fixture(server, host, options.tls ? "https" : "http");
    server.on(options.tls ? "secureConnection" : "connection", (socket: Socket) => fixture.#accept(socket));
    server.on("tlsClientError", () => {});
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(0, host, () => resolve());
    });
    return fixture;
  }

  get port(): number {
    return (this.#server.address() as { port: number }).port;
  }

  /** URL of a path on this fixture, e.g. url("/echo"). */
  url(path: string, host = this.#host.includes(":") ? `[${this.#host}]` : this.#host): string {
    return `${this.#scheme}://${host}:${this.port}${path}`;
  }

  /** Requests received on a path (query ignored). */
  received(path: string): Received[] {
    return this.requests.filter((r) => r.path === path);
  }

  async stop(): Promise<void> {
    for (const socket of this.#sockets) socket.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #accept(socket: Socket): void {
    const connection = ++this.#connections;
    this.#sockets.add(socket);
    socket.on("close", () => this.#sockets.delete(socket));
    socket.on("error", () => {});
    let buffer = Buffer.alloc(0);
    socket.on("data", (data: Buffer) => {
      buffer = Buffer.concat([buffer, data]);
      for (;;) {
        const parsed = parseRequest(buffer, connection);
        if (!parsed) return;
        buffer = buffer.subarray(parsed.consumed);
        this.requests.push(parsed.request);
        this.#respond(socket, parsed.request);
      }
    });
  }

  #respond(socket: Socket, request: Received): void {
    const send = (reply: Reply) => {
      if (socket.destroyed) return;
      const body = typeof reply.body === "string" || reply.body === undefined
        ? Buffer.from(reply.body ?? "")
        : reply.body;
      const status = reply.status ?? 200;
      const lines = [`HTTP/1.1 ${status} ${REASONS[status] ?? "Status"}`];
      for (const [name, value] of reply.headers ?? []) lines.push(`${name}: ${value}`);
      if (status !== 204 && status !== 304) lines.push(`Content-Length: ${body.length}`);
      socket.write(Buffer.concat([Buffer.from(lines.join("\r\n") + "\r\n\r\n"), body]));
    };
    const [, route = "", arg = ""] = /^\/([^/]*)\/?(.*)$/.exec(request.path) ?? [];
    const { query } = request;
    switch (route) {
      case "echo": {
        // ?delay=ms answers that much later
        const reply = () =>
          send({
            headers: [["Content-Type", "application/json"]],
            body: JSON.stringify({
              method: request.method,
              target: request.target,
              headers: request.headers,
              body: request.body.toString("utf8"),
            }),
          });
        const delay = Number(query.get("delay") ?? 0);
        if (delay > 0) setTimeout(reply, delay);
        else reply();
        return;
      }
      case "status":
        return send({ status: Number(arg), body: Number(arg) === 204 ? "" : `status ${arg}` });
      case "delay":
        setTimeout(() => send({ headers: [["Content-Type", "text/plain"]], body: "done" }), Number(arg));
        return;
      case "never":
        return; // holds the connection open, never answers
      case "redirect":
        return send({ status: Number(arg), headers: [["Location", query.get("to") ?? "/echo"]] });
      case "disconnect":
        socket.destroy();
        return;
      case "weird":
        socket.end("HTTP/1.1 200 OK\r\nthis line has no colon\r\n\r\nbody");
        return;
      case "partial":
        socket.write("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc");
        setTimeout(() => socket.destroy(), 20);
        return;
      case "trickle": {
        // announces 20 bytes, then sends one every 100 ms
        socket.write("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 20\r\n\r\n");
        let sent = 0;
        const timer = setInterval(() => {
          if (socket.destroyed || ++sent > 20) return clearInterval(timer);
          socket.write("x");
        }, 100);
        return;
      }
      case "reset":
        socket.write("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc");
        setTimeout(() => socket.resetAndDestroy(), 20);
        return;
      case "loop":
        return send({ status: 302, headers: [["Location", "/loop"]] });
      case "bytes":
        return send({
          headers: [["Content-Type", query.get("type") ?? "application/octet-stream"]],
          body: Buffer.from(query.get("hex") ?? "", "hex"),
        });
      case "huge":
        return send({ headers: [["Content-Type", "text/plain"]], body: Buffer.alloc(Number(arg), "a") });
      case "empty":
        return send({});
      case "race": {
        // the first delivery of a request id is answered after `arg` ms with "first", any later one at once with
        // "later": a lease race in which the second worker stores its result before the first
        const id = request.headers.find(([n]) => n.toLowerCase() === "x-pgnet-request-id")?.[1] ?? "";
        const deliveries = this.requests.filter((r) =>
          r.path === request.path && header(r, "X-Pgnet-Request-Id")[0] === id
        );
        if (deliveries.length > 1) return send({ body: "later" });
        setTimeout(() => send({ body: "first" }), Number(arg));
        return;
      }
      case "flaky": {
        // the first `arg` deliveries of a request id (of the URL, with ?per=url) fail with ?status= (503 unless
        // told), with ?retry_after= as Retry-After when given; later ones answer 200 "ok after N failures"
        const id = header(request, "X-Pgnet-Request-Id")[0];
        const n =
          this.requests.filter((r) =>
            query.get("per") === "url"
              ? r.target === request.target
              : r.path === request.path && header(r, "X-Pgnet-Request-Id")[0] === id
          ).length;
        if (n > Number(arg)) return send({ body: `ok after ${n - 1} failures` });
        const retryAfter = query.get("retry_after");
        return send({
          status: Number(query.get("status") ?? 503),
          headers: retryAfter === null ? [] : [["Retry-After", retryAfter]],
          body: `failure ${n}`,
        });
      }
      case "text":
        return send({ headers: [["Content-Type", "text/plain; charset=utf-8"]], body: sampleBody(Number(arg)) });
      case "chunked": {
        // sampleBody(arg) in ?chunks= chunks (3 unless told), ?pause= ms apart (50 unless told), each boundary
        // inside a multi-byte character
        const body = sampleBody(Number(arg));
        const count = Number(query.get("chunks") ?? 3);
        const pieces = splitInsideCharacters(body, count);
        socket.write(
          "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        const next = () => {
          if (socket.destroyed) return;
          const piece = pieces.shift();
          if (!piece) return void socket.write("0\r\n\r\n");
          socket.write(Buffer.concat([Buffer.from(`${piece.length.toString(16)}\r\n`), piece, Buffer.from("\r\n")]));
          setTimeout(next, Number(query.get("pause") ?? 50));
        };
        next();
        return;
      }
      case "close": {
        // no Content-Length, no chunks: sampleBody(arg) in two writes ?pause= ms apart (50 unless told), split inside
        // a character, then the connection is closed to end the body
        const [first, second] = splitInsideCharacters(sampleBody(Number(arg)), 2);
        socket.write("HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n");
        socket.write(first!);
        setTimeout(() => socket.end(second ?? ""), Number(query.get("pause") ?? 50));
        return;
      }
      case "headers":
        return send({
          headers: [
            ["Content-Type", "text/plain; charset=utf-8"],
            ["X-Custom", "  spaced  "],
            ["Set-Cookie", "a=1"],
            ["Set-Cookie", "b=2"],
            ["ETag", '"v1"'],
          ],
          body: "with headers",
        });
      default:
        return send({ status: 404, body: "no such fixture route" });
    }
  }
}

const SAMPLE_LINE = (n: number) => `${String(n).padStart(6, "0")} héllo wörld ✓ naïve café\n`;

/** A deterministic UTF-8 text body of at least `size` bytes (whole numbered lines, so no two lines are alike). */
export function sampleBody(size: number): Buffer {
  const lines: string[] = [];
  let bytes = 0;
  for (let n = 0; bytes < size; n++) {
    const line = SAMPLE_LINE(n);
    lines.push(line);
    bytes += Buffer.byteLength(line);
  }
  return Buffer.from(lines.join(""));
}

/** Splits `body` into `count` pieces of about equal size, each ending with the first byte of a multi-byte character. */
function splitInsideCharacters(body: Buffer, count: number): Buffer[] {
  const pieces: Buffer[] = [];
  let start = 0;
  for (let i = 1; i < count; i++) {
    let at = Math.max(start, Math.floor((body.length * i) / count));
    while (at < body.length && body[at]! < 0xc0) at++; // a lead byte of a multi-byte character
    if (at >= body.length - 1) break;
    pieces.push(body.subarray(start, at + 1));
    start = at + 1;
  }
  pieces.push(body.subarray(start));
  return pieces;
}

function parseRequest(buffer: Buffer, connection: number): { request: Received; consumed: number } | null {
  const end = buffer.indexOf("\r\n\r\n");
  if (end === -1) return null;
  const [line = "", ...rest] = buffer.subarray(0, end).toString("latin1").split("\r\n");
  const [method = "", target = ""] = line.split(" ");
  const headers = rest.map((h): [string, string] => {
    const colon = h.indexOf(":");
    return [h.slice(0, colon), h.slice(colon + 1).trim()];
  });
  const length = Number(headers.find(([n]) => n.toLowerCase() === "content-length")?.[1] ?? 0);
  const start = end + 4;
  if (buffer.length < start + length) return null;
  const url = new URL(target, "http://fixture");
  return {
    request: {
      method,
      target,
      path: url.pathname,
      query: url.searchParams,
      headers,
      body: buffer.subarray(start, start + length),
      at: Date.now(),
      connection,
    },
    consumed: start + length,
  };
}
