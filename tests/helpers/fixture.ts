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
  500: "Internal Server Error",
};

export class Fixture {
  readonly requests: Received[] = [];
  #server: Server;
  #sockets = new Set<Socket>();
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
    this.#sockets.add(socket);
    socket.on("close", () => this.#sockets.delete(socket));
    socket.on("error", () => {});
    let buffer = Buffer.alloc(0);
    socket.on("data", (data: Buffer) => {
      buffer = Buffer.concat([buffer, data]);
      for (;;) {
        const parsed = parseRequest(buffer);
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

function parseRequest(buffer: Buffer): { request: Received; consumed: number } | null {
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
    },
    consumed: start + length,
  };
}
