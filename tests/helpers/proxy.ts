// A local HTTP proxy fixture: absolute-form requests are forwarded, CONNECT opens a tunnel, and every request it
// receives is recorded. Names are not resolved: each destination is reached on 127.0.0.1, so tests can use names
// that exist nowhere (the proxy, not pgnet, is what would resolve them).

import http, { type IncomingMessage } from "node:http";
import { connect, type Socket } from "node:net";

export interface ProxyRequest {
  method: string;
  /** the request target: an absolute URL, or host:port for CONNECT */
  target: string;
  /** header lines in order, names as sent */
  headers: [string, string][];
}

export class ProxyFixture {
  readonly requests: ProxyRequest[] = [];
  /** answer CONNECT with this status instead of opening the tunnel */
  refuseConnect: number | null = null;
  #server: http.Server;
  #sockets = new Set<Socket>();

  private constructor(server: http.Server) {
    this.#server = server;
  }

  static async start(): Promise<ProxyFixture> {
    const server = http.createServer();
    const proxy = new ProxyFixture(server);
    server.on("connection", (socket: Socket) => {
      proxy.#sockets.add(socket);
      socket.on("close", () => proxy.#sockets.delete(socket));
    });
    server.on(
      "request",
      (request: IncomingMessage, response: http.ServerResponse) => proxy.#forward(request, response),
    );
    server.on(
      "connect",
      (request: IncomingMessage, socket: Socket, head: Buffer) => proxy.#tunnel(request, socket, head),
    );
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    return proxy;
  }

  get port(): number {
    return (this.#server.address() as { port: number }).port;
  }

  /** The URL to give --proxy, with credentials when given. */
  url(credentials = ""): string {
    return `http://${credentials ? `${credentials}@` : ""}127.0.0.1:${this.port}`;
  }

  async stop(): Promise<void> {
    for (const socket of this.#sockets) socket.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #record(request: IncomingMessage): void {
    const headers: [string, string][] = [];
    for (let i = 0; i + 1 < request.rawHeaders.length; i += 2) {
      headers.push([request.rawHeaders[i]!, request.rawHeaders[i + 1]!]);
    }
    this.requests.push({ method: request.method!, target: request.url!, headers });
  }

  #forward(request: IncomingMessage, response: http.ServerResponse): void {
    this.#record(request);
    let url: URL;
    try {
      url = new URL(request.url!);
    } catch {
      response.writeHead(400).end("not a proxy request");
      return;
    }
    // Proxy-Authorization is for the proxy: it goes no further
    const headers: string[] = [];
    for (let i = 0; i + 1 < request.rawHeaders.length; i += 2) {
      if (request.rawHeaders[i]!.toLowerCase() !== "proxy-authorization") {
        headers.push(request.rawHeaders[i]!, request.rawHeaders[i + 1]!);
      }
    }
    const upstream = http.request({
      host: "127.0.0.1",
      port: url.port || 80,
      path: url.pathname + url.search,
      method: request.method,
      headers: headers as unknown as http.OutgoingHttpHeaders,
      agent: false,
    }, (answer) => {
      response.writeHead(answer.statusCode!, answer.headers);
      answer.pipe(response);
    });
    upstream.on("error", () => response.writeHead(502).end("bad gateway"));
    request.pipe(upstream);
  }

  #tunnel(request: IncomingMessage, socket: Socket, head: Buffer): void {
    this.#record(request);
    socket.on("error", () => {});
    if (this.refuseConnect !== null) {
      socket.end(`HTTP/1.1 ${this.refuseConnect} Refused\r\nContent-Length: 0\r\n\r\n`);
      return;
    }
    const port = Number(/:(\d+)$/.exec(request.url!)?.[1] ?? 443);
    const upstream = connect(port, "127.0.0.1", () => {
      socket.write("HTTP/1.1 200 Connection Established\r\n\r\n");
      upstream.write(head);
      upstream.pipe(socket);
      socket.pipe(upstream);
    });
    upstream.on("error", () => socket.destroy());
    socket.on("close", () => upstream.destroy());
  }
}
