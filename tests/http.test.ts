// The HTTP client layer against a raw-socket fixture: the row performRequest returns, and what went on the wire.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServer as createTlsServer, type Server as TlsServer } from "node:tls";
import { type Agents, createAgents, type HttpOptions, performRequest } from "../src/http.ts";
import { type Certificates, type KeyPair, makeCertificates } from "./helpers/tls.ts";
import type { QueuedRequest, ResponseRow } from "../src/queue.ts";
import { resolveSettings } from "../src/config.ts";
import { Fixture, header, type Received, sampleBody } from "./helpers/fixture.ts";

const OPTIONS: HttpOptions = { maxResponseBytes: 1_000_000 };
const TIMEOUT_MESSAGE =
  /^Timeout of 300 ms reached\. Total time: ([0-9]+\.[0-9]{6}) ms \(DNS time: ([0-9]+\.[0-9]{6}) ms, TCP\/SSL handshake time: ([0-9]+\.[0-9]{6}) ms, HTTP Request\/Response time: ([0-9]+\.[0-9]{6}) ms\)$/;

let fixture: Fixture;
let fixture6: Fixture;
let nextId = 1;

beforeAll(async () => {
  fixture = await Fixture.start("127.0.0.1");
  fixture6 = await Fixture.start("::1");
});

afterAll(async () => {
  await fixture?.stop();
  await fixture6?.stop();
});

/** Runs one request with a fresh id; returns the row and the id, so the fixture's records can be matched. */
async function run(
  partial: Partial<QueuedRequest> & { url: string },
  options: HttpOptions = OPTIONS,
): Promise<{ row: ResponseRow; id: string }> {
  const id = String(nextId++);
  const row = await performRequest(
    { id, method: "GET", headers: {}, body: null, timeoutMs: 5_000, ...partial },
    options,
  );
  return { row, id };
}

/** Every request a fixture received for request `id`, in arrival order (redirect hops included). */
function sent(id: string, on: Fixture = fixture): Received[] {
  return on.requests.filter((r) => header(r, "X-Pgnet-Request-Id").includes(id));
}

function only(id: string, on: Fixture = fixture): Received {
  const received = sent(id, on);
  expect(received).toHaveLength(1);
  return received[0]!;
}

const bytes = (text: string) => new TextEncoder().encode(text);

/** Asserts the shape of a failure row (RESP-08, RESP-09) and returns its error_msg. */
function expectErrorRow(row: ResponseRow, id: string): string {
  expect(row.id).toBe(id);
  expect(row.status_code).toBeNull();
  expect(row.content_type).toBeNull();
  expect(row.headers).toBeNull();
  expect(row.content).toBeNull();
  expect(row.timed_out).toBe(false);
  expect(typeof row.error_msg).toBe("string");
  return row.error_msg!;
}

/** A port nothing listens on: bind a server to a free port, then close it. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** A one-off raw TCP server on 127.0.0.1 that answers each request's first bytes with `reply`; returns its URL. */
async function rawServer(reply: (socket: Socket) => void): Promise<{ url: string; stop: () => Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => {});
    socket.once("data", () => reply(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  const { port } = server.address() as { port: number };
  return {
    url: `http://127.0.0.1:${port}/`,
    stop: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describe("a successful response", () => {
  test("a GET returns the status, content type, capitalised headers and body text, with no error", async () => {
    const { row, id } = await run({ url: fixture.url("/echo") });
    expect(row.id).toBe(id);
    expect(row.status_code).toBe(200);
    expect(row.content_type).toBe("application/json");
    expect(row.headers).toEqual({ "Content-Type": "application/json", "Content-Length": expect.any(String) });
    expect(row.headers!["Content-Length"]).toBe(String(Buffer.byteLength(row.content!)));
    expect(JSON.parse(row.content!)).toMatchObject({ method: "GET", target: "/echo", body: "" });
    expect(row.timed_out).toBe(false);
    expect(row.error_msg).toBeNull();
  });

  test("a non-2xx status is a successful row carrying that status and body", async () => {
    const { row } = await run({ url: fixture.url("/status/404") });
    expect(row.status_code).toBe(404);
    expect(row.content).toBe("status 404");
    expect(row.content_type).toBeNull();
    expect(row.error_msg).toBeNull();
    expect(row.timed_out).toBe(false);
  });

  test("response header names get their usual capitalisation, such as ETag", async () => {
    const { row } = await run({ url: fixture.url("/headers") });
    expect(Object.keys(row.headers!).sort()).toEqual([
      "Content-Length",
      "Content-Type",
      "ETag",
      "Set-Cookie",
      "X-Custom",
    ]);
    expect(row.headers!.ETag).toBe('"v1"');
    expect(row.content_type).toBe("text/plain; charset=utf-8");
    expect(row.content).toBe("with headers");
  });

  test('repeated response headers are joined with a comma, as Set-Cookie a=1 and b=2 give "a=1, b=2"', async () => {
    const { row } = await run({ url: fixture.url("/headers") });
    expect(row.headers!["Set-Cookie"]).toBe("a=1, b=2");
  });

  test("an unusual status such as 999 is stored as-is", async () => {
    const server = await rawServer((socket) => socket.end("HTTP/1.1 999 Odd\r\nContent-Length: 2\r\n\r\nok"));
    try {
      const { row } = await run({ url: server.url });
      expect(row.status_code).toBe(999);
      expect(row.content).toBe("ok");
      expect(row.error_msg).toBeNull();
    } finally {
      await server.stop();
    }
  });

  test("response header values are trimmed of surrounding whitespace", async () => {
    const { row } = await run({ url: fixture.url("/headers") });
    expect(row.headers!["X-Custom"]).toBe("spaced");
  });

  test("a 50 KB body is stored byte for byte", async () => {
    const expected = sampleBody(50_000);
    const { row } = await run({ url: fixture.url("/text/50000") });
    expect(row.status_code).toBe(200);
    expect(row.error_msg).toBeNull();
    expect(row.headers!["Content-Length"]).toBe(String(expected.length));
    expect(Buffer.from(row.content!, "utf8").equals(expected)).toBe(true);
  });

  test("a chunked body sent in five chunks with pauses between them is stored byte for byte", async () => {
    // every chunk boundary falls inside a multi-byte character: it must be decoded whole, not as U+FFFD
    const expected = sampleBody(20_000);
    const { row } = await run({ url: fixture.url("/chunked/20000?chunks=5&pause=100") });
    expect(row.status_code).toBe(200);
    expect(row.error_msg).toBeNull();
    expect(row.headers!["Transfer-Encoding"]).toBe("chunked");
    expect(row.content).not.toContain("\uFFFD");
    expect(Buffer.from(row.content!, "utf8").equals(expected)).toBe(true);
  });

  test("a body with no Content-Length, ended by the server closing the connection, is stored byte for byte", async () => {
    const expected = sampleBody(10_000);
    const { row } = await run({ url: fixture.url("/close/10000?pause=100") });
    expect(row.status_code).toBe(200);
    expect(row.error_msg).toBeNull();
    expect(row.headers).not.toHaveProperty("Content-Length");
    expect(row.headers).not.toHaveProperty("Transfer-Encoding");
    expect(Buffer.from(row.content!, "utf8").equals(expected)).toBe(true);
  });
});

describe("request headers", () => {
  test("the caller's headers are sent", async () => {
    const { row, id } = await run({
      url: fixture.url("/echo"),
      headers: { "X-Custom": "yes", "X-Other": "two words" },
    });
    expect(row.status_code).toBe(200);
    const received = only(id);
    expect(header(received, "X-Custom")).toEqual(["yes"]);
    expect(header(received, "X-Other")).toEqual(["two words"]);
  });

  test("User-Agent defaults to pg_net/0.20.4", async () => {
    const { id } = await run({ url: fixture.url("/echo") });
    expect(header(only(id), "User-Agent")).toEqual(["pg_net/0.20.4"]);
  });

  test("a caller's User-Agent replaces the default, so exactly one User-Agent line is sent", async () => {
    const { id } = await run({ url: fixture.url("/echo"), headers: { "user-agent": "mine/1.0" } });
    expect(header(only(id), "User-Agent")).toEqual(["mine/1.0"]);
  });

  test("X-Pgnet-Request-Id carries the request id", async () => {
    const before = fixture.requests.length;
    const { id } = await run({ url: fixture.url("/echo") });
    expect(fixture.requests.length).toBe(before + 1);
    expect(header(fixture.requests.at(-1)!, "X-Pgnet-Request-Id")).toEqual([id]);
  });

  test("headers whose JSON value is null or the empty string are not sent", async () => {
    const { row, id } = await run({
      url: fixture.url("/echo"),
      headers: { "X-Null": null, "X-Empty": "", "X-Kept": "k" },
    });
    expect(row.status_code).toBe(200);
    const received = only(id);
    expect(header(received, "X-Null")).toEqual([]);
    expect(header(received, "X-Empty")).toEqual([]);
    expect(header(received, "X-Kept")).toEqual(["k"]);
  });

  test("numbers and booleans are sent as their JSON text, as pg_net sends them", async () => {
    const { id } = await run({
      url: fixture.url("/echo"),
      headers: { "X-Num": 1, "X-Float": 2.5, "X-Bool": true, "X-False": false },
    });
    const received = only(id);
    expect(header(received, "X-Num")).toEqual(["1"]);
    expect(header(received, "X-Float")).toEqual(["2.5"]);
    expect(header(received, "X-Bool")).toEqual(["true"]);
    expect(header(received, "X-False")).toEqual(["false"]);
  });

  test("an object or array header value becomes an error row naming the header, and nothing is sent", async () => {
    for (const value of [{ a: [1, 2] }, [1, 2]]) {
      const before = fixture.requests.length;
      const { row, id } = await run({ url: fixture.url("/echo"), headers: { "X-Obj": value } });
      expect(expectErrorRow(row, id)).toBe(
        `Invalid value for header "X-Obj": expected a string, number or boolean, got ${JSON.stringify(value)}`,
      );
      expect(fixture.requests.length).toBe(before);
    }
  });

  test("no Accept-Encoding header is sent and Accept is */*", async () => {
    const { id } = await run({ url: fixture.url("/echo") });
    const received = only(id);
    expect(header(received, "Accept-Encoding")).toEqual([]);
    expect(header(received, "Accept")).toEqual(["*/*"]);
  });

  test("Host names the fixture's host and port", async () => {
    const { id } = await run({ url: fixture.url("/echo") });
    expect(header(only(id), "Host")).toEqual([`127.0.0.1:${fixture.port}`]);
  });

  // fetch takes header values as byte strings; pg_net sends a value's UTF-8 bytes
  test("a non-ASCII header value is sent as its UTF-8 bytes", async () => {
    const { row, id } = await run({ url: fixture.url("/echo"), headers: { "X-Utf8": "café ✓" } });
    expect(row.error_msg).toBeNull();
    const [value] = header(only(id), "X-Utf8");
    // the fixture decodes header bytes as Latin-1
    expect(Buffer.from(value!, "latin1").toString("utf8")).toBe("café ✓");
  });

  test("null headers are treated as no headers and the request is sent", async () => {
    const { row, id } = await run({ url: fixture.url("/echo"), headers: null });
    expect(row.status_code).toBe(200);
    expect(header(only(id), "User-Agent")).toEqual(["pg_net/0.20.4"]);
  });

  test("a header value with CR/LF becomes an error row naming the header, and nothing is sent", async () => {
    const before = fixture.requests.length;
    const { row, id } = await run({ url: fixture.url("/echo"), headers: { "X-Inject": "a\r\nEvil: 1" } });
    expect(expectErrorRow(row, id)).toContain('"X-Inject"');
    expect(fixture.requests.length).toBe(before);
  });

  test("a header value with a bare LF also becomes an error row naming the header", async () => {
    const before = fixture.requests.length;
    const { row, id } = await run({ url: fixture.url("/echo"), headers: { "X-Lf": "a\nb" } });
    expect(expectErrorRow(row, id)).toContain('"X-Lf"');
    expect(fixture.requests.length).toBe(before);
  });

  test("an invalid header name becomes an error row naming the header, and nothing is sent", async () => {
    const before = fixture.requests.length;
    const { row, id } = await run({ url: fixture.url("/echo"), headers: { "Bad Name": "x" } });
    expect(expectErrorRow(row, id)).toContain('"Bad Name"');
    expect(fixture.requests.length).toBe(before);
  });

  test("headers that are a JSON array become an error row", async () => {
    const before = fixture.requests.length;
    const { row, id } = await run({ url: fixture.url("/echo"), headers: [1, 2] });
    expect(expectErrorRow(row, id)).toBe("headers must be a JSON object, got [1,2]");
    expect(fixture.requests.length).toBe(before);
  });

  test("credentials in the URL are sent as Basic auth, percent-decoded as libcurl sends them", async () => {
    const { row, id } = await run({ url: `http://user:p%40ss@127.0.0.1:${fixture.port}/echo` });
    expect(row.status_code).toBe(200);
    const received = only(id);
    expect(header(received, "Authorization")).toEqual([`Basic ${Buffer.from("user:p@ss").toString("base64")}`]);
    expect(received.target).toBe("/echo"); // the credentials go in the header only
  });

  test("a caller's own Authorization header wins over credentials in the URL", async () => {
    const { row, id } = await run({
      url: `http://user:p%40ss@127.0.0.1:${fixture.port}/echo`,
      headers: { authorization: "Bearer mine" },
    });
    expect(row.status_code).toBe(200);
    expect(header(only(id), "Authorization")).toEqual(["Bearer mine"]);
  });

  test("headers that are a JSON string become an error row", async () => {
    const { row, id } = await run({ url: fixture.url("/echo"), headers: "X-A: 1" });
    expect(expectErrorRow(row, id)).toBe('headers must be a JSON object, got "X-A: 1"');
  });
});

describe("methods and bodies", () => {
  test("a POST with a body sends it with its Content-Length", async () => {
    const { row, id } = await run({
      url: fixture.url("/echo"),
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: bytes('{"a":1}'),
    });
    expect(row.status_code).toBe(200);
    const received = only(id);
    expect(received.method).toBe("POST");
    expect(received.body.toString()).toBe('{"a":1}');
    expect(header(received, "Content-Length")).toEqual(["7"]);
    expect(header(received, "Content-Type")).toEqual(["application/json"]);
  });

  test("a body without a Content-Type is sent as application/x-www-form-urlencoded", async () => {
    const { id } = await run({ url: fixture.url("/echo"), method: "POST", body: bytes("a=1&b=2") });
    const received = only(id);
    expect(header(received, "Content-Type")).toEqual(["application/x-www-form-urlencoded"]);
    expect(received.body.toString()).toBe("a=1&b=2");
  });

  test("a multi-byte UTF-8 body is sent byte for byte with its byte length", async () => {
    const { id } = await run({ url: fixture.url("/echo"), method: "POST", body: bytes("héllo ✓") });
    const received = only(id);
    expect(header(received, "Content-Length")).toEqual([String(bytes("héllo ✓").byteLength)]);
    expect(received.body.toString("utf8")).toBe("héllo ✓");
  });

  test("a POST with a null body sends Content-Length: 0", async () => {
    const { row, id } = await run({ url: fixture.url("/echo"), method: "POST" });
    expect(row.status_code).toBe(200);
    const received = only(id);
    expect(received.method).toBe("POST");
    expect(header(received, "Content-Length")).toEqual(["0"]);
    expect(received.body.length).toBe(0);
  });

  test("a lower-case method is sent upper-case", async () => {
    const { id } = await run({ url: fixture.url("/echo"), method: "post", body: bytes("x") });
    expect(only(id).method).toBe("POST");
  });

  test("a DELETE without a body sends no body and no Content-Type", async () => {
    const { row, id } = await run({ url: fixture.url("/echo"), method: "DELETE" });
    expect(row.status_code).toBe(200);
    const received = only(id);
    expect(received.method).toBe("DELETE");
    expect(received.body.length).toBe(0);
    expect(header(received, "Content-Type")).toEqual([]);
  });

  test("a DELETE with a body sends the body as a form", async () => {
    const { row, id } = await run({ url: fixture.url("/echo"), method: "DELETE", body: bytes("id=7") });
    expect(row.status_code).toBe(200);
    const received = only(id);
    expect(received.method).toBe("DELETE");
    expect(received.body.toString()).toBe("id=7");
    expect(header(received, "Content-Length")).toEqual(["4"]);
    expect(header(received, "Content-Type")).toEqual(["application/x-www-form-urlencoded"]);
  });

  test("a GET with a body is sent with it, as pg_net's libcurl sends it", async () => {
    const { row, id } = await run({ url: fixture.url("/echo"), method: "GET", body: bytes("x=1") });
    expect(row.status_code).toBe(200);
    const received = only(id);
    expect(received.method).toBe("GET");
    expect(received.body.toString()).toBe("x=1");
    expect(header(received, "Content-Length")).toEqual(["3"]);
  });
});

describe("redirects", () => {
  for (const code of [301, 302, 303]) {
    test(`a ${code} turns a POST into a GET without the body`, async () => {
      const { row, id } = await run({
        url: fixture.url(`/redirect/${code}?to=/echo`),
        method: "POST",
        body: bytes("a=1"),
      });
      expect(row.status_code).toBe(200);
      const [first, second, ...rest] = sent(id);
      expect(rest).toEqual([]);
      expect(first!.method).toBe("POST");
      expect(first!.body.toString()).toBe("a=1");
      expect(second!.method).toBe("GET");
      expect(second!.target).toBe("/echo");
      expect(second!.body.length).toBe(0);
      expect(header(second!, "Content-Type")).toEqual([]);
      expect(header(second!, "Content-Length")).toEqual([]);
      expect(JSON.parse(row.content!)).toMatchObject({ method: "GET", body: "" });
    });
  }

  for (const code of [307, 308]) {
    test(`a ${code} keeps the POST and its body`, async () => {
      const { row, id } = await run({
        url: fixture.url(`/redirect/${code}?to=/echo`),
        method: "POST",
        headers: { "Content-Type": "text/plain" },
        body: bytes("keep me"),
      });
      expect(row.status_code).toBe(200);
      const [first, second, ...rest] = sent(id);
      expect(rest).toEqual([]);
      expect(first!.method).toBe("POST");
      expect(second!.method).toBe("POST");
      expect(second!.target).toBe("/echo");
      expect(second!.body.toString()).toBe("keep me");
      expect(header(second!, "Content-Type")).toEqual(["text/plain"]);
      expect(header(second!, "Content-Length")).toEqual(["7"]);
    });
  }

  test("a DELETE stays a DELETE on a 303", async () => {
    const { row, id } = await run({ url: fixture.url("/redirect/303?to=/echo"), method: "DELETE" });
    expect(row.status_code).toBe(200);
    const methods = sent(id).map((r) => `${r.method} ${r.path}`);
    expect(methods).toEqual(["DELETE /redirect/303", "DELETE /echo"]);
    expect(JSON.parse(row.content!).method).toBe("DELETE");
  });

  test("every redirect hop carries the request id and the caller's headers", async () => {
    const { id } = await run({
      url: fixture.url("/redirect/302?to=/redirect/307?to=/echo"),
      headers: { "X-Custom": "hop" },
    });
    const hops = sent(id);
    expect(hops.map((r) => r.path)).toEqual(["/redirect/302", "/redirect/307", "/echo"]);
    for (const hop of hops) {
      expect(header(hop, "X-Pgnet-Request-Id")).toEqual([id]);
      expect(header(hop, "X-Custom")).toEqual(["hop"]);
      expect(header(hop, "User-Agent")).toEqual(["pg_net/0.20.4"]);
    }
  });

  test("the final response's status, body and headers are returned, not the redirect's", async () => {
    const { row } = await run({ url: fixture.url("/redirect/302?to=/headers") });
    expect(row.status_code).toBe(200);
    expect(row.content).toBe("with headers");
    expect(row.content_type).toBe("text/plain; charset=utf-8");
    expect(row.headers!.ETag).toBe('"v1"');
    expect(row.headers!.Location).toBeUndefined();
  });

  test("a redirect to an error status returns that status", async () => {
    const { row } = await run({ url: fixture.url("/redirect/301?to=/status/500") });
    expect(row.status_code).toBe(500);
    expect(row.content).toBe("status 500");
  });

  test("a redirect with an absolute Location to another port is followed", async () => {
    const { row, id } = await run({
      url: fixture.url(`/redirect/302?to=${encodeURIComponent(fixture6.url("/echo"))}`),
    });
    expect(row.status_code).toBe(200);
    expect(only(id, fixture6).path).toBe("/echo");
  });

  test('a redirect loop ends with "Number of redirects hit maximum amount" after 30 redirects', async () => {
    // an empty Location points back at the same URL
    const { row, id } = await run({ url: fixture.url("/redirect/302?to=") });
    expect(expectErrorRow(row, id)).toBe("Number of redirects hit maximum amount");
    expect(sent(id)).toHaveLength(31);
  });

  test("maxRedirects lowers the redirect limit", async () => {
    const { row, id } = await run({ url: fixture.url("/redirect/302?to=") }, { ...OPTIONS, maxRedirects: 2 });
    expect(expectErrorRow(row, id)).toBe("Number of redirects hit maximum amount");
    expect(sent(id)).toHaveLength(3);
  });

  test('a redirect whose Location is not a valid URL gives "URL using bad/illegal format or missing URL"', async () => {
    const { row, id } = await run({ url: fixture.url("/redirect/302?to=http://%5Bbad") });
    expect(expectErrorRow(row, id)).toBe("URL using bad/illegal format or missing URL");
    expect(sent(id)).toHaveLength(1);
  });

  test('a redirect to file:// gives "Unsupported protocol"', async () => {
    const { row, id } = await run({ url: fixture.url("/redirect/302?to=file:///etc/passwd") });
    expect(expectErrorRow(row, id)).toBe("Unsupported protocol");
    expect(sent(id)).toHaveLength(1);
  });

  test('a redirect to ftp:// gives "Unsupported protocol"', async () => {
    const { row, id } = await run({ url: fixture.url("/redirect/301?to=ftp://127.0.0.1/file") });
    expect(expectErrorRow(row, id)).toBe("Unsupported protocol");
  });

  test("Authorization, Cookie and custom headers are dropped on a redirect to another origin", async () => {
    const { row, id } = await run({
      url: fixture.url(`/redirect/302?to=${encodeURIComponent(fixture6.url("/echo"))}`),
      headers: { Authorization: "Bearer secret", Cookie: "session=1", "X-Custom": "kept" },
    });
    expect(row.status_code).toBe(200);
    const first = only(id, fixture);
    expect(header(first, "Authorization")).toEqual(["Bearer secret"]);
    expect(header(first, "Cookie")).toEqual(["session=1"]);
    const second = only(id, fixture6);
    expect(header(second, "Authorization")).toEqual([]);
    expect(header(second, "Cookie")).toEqual([]);
    expect(header(second, "X-Custom")).toEqual([]); // only headers known to carry no credentials go along
  });

  test("the Authorization header is dropped on a redirect to another port of the same host", async () => {
    const other = await Fixture.start("127.0.0.1");
    try {
      const { row, id } = await run({
        url: fixture.url(`/redirect/307?to=${encodeURIComponent(other.url("/echo"))}`),
        headers: { Authorization: "Bearer secret" },
      });
      expect(row.status_code).toBe(200);
      expect(header(only(id, other), "Authorization")).toEqual([]);
    } finally {
      await other.stop();
    }
  });

  test("the Authorization header is kept on a redirect within the same origin", async () => {
    const { row, id } = await run({
      url: fixture.url("/redirect/302?to=/echo"),
      headers: { Authorization: "Bearer secret" },
    });
    expect(row.status_code).toBe(200);
    const hops = sent(id);
    expect(hops).toHaveLength(2);
    expect(header(hops[1]!, "Authorization")).toEqual(["Bearer secret"]);
  });
});

describe("error texts", () => {
  test('file:///etc/passwd gives "Unsupported protocol"', async () => {
    const { row, id } = await run({ url: "file:///etc/passwd" });
    expect(expectErrorRow(row, id)).toBe("Unsupported protocol");
  });

  test('ftp://127.0.0.1/ gives "Unsupported protocol"', async () => {
    const { row, id } = await run({ url: "ftp://127.0.0.1/" });
    expect(expectErrorRow(row, id)).toBe("Unsupported protocol");
  });

  test('a URL that does not parse gives "URL using bad/illegal format or missing URL"', async () => {
    const { row, id } = await run({ url: "not a url" });
    expect(expectErrorRow(row, id)).toBe("URL using bad/illegal format or missing URL");
  });

  test('a refused connection gives "Couldn\'t connect to server"', async () => {
    const port = await closedPort();
    const { row, id } = await run({ url: `http://127.0.0.1:${port}/` });
    expect(expectErrorRow(row, id)).toBe("Couldn't connect to server");
  });

  test('a server that closes without answering gives "Server returned nothing (no headers, no data)"', async () => {
    const { row, id } = await run({ url: fixture.url("/disconnect") });
    expect(expectErrorRow(row, id)).toBe("Server returned nothing (no headers, no data)");
  });

  test('a header line without a colon gives "Weird server reply"', async () => {
    const { row, id } = await run({ url: fixture.url("/weird") });
    expect(expectErrorRow(row, id)).toContain("Weird server reply");
  });

  test('a body shorter than its Content-Length gives "Transferred a partial file"', async () => {
    const { row, id } = await run({ url: fixture.url("/partial") });
    expect(expectErrorRow(row, id)).toBe("Transferred a partial file");
  });

  test('a connection reset in the middle of a chunked body gives "Failure when receiving data from the peer"', async () => {
    const server = await rawServer((socket) => {
      socket.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n");
      setTimeout(() => socket.destroy(), 20);
    });
    try {
      const { row, id } = await run({ url: server.url });
      expect(expectErrorRow(row, id)).toBe("Failure when receiving data from the peer");
    } finally {
      await server.stop();
    }
  });

  test('a host name that does not resolve gives "Couldn\'t resolve host name"', async () => {
    const { row, id } = await run({ url: "http://no-such-host.invalid/" });
    expect(expectErrorRow(row, id)).toBe("Couldn't resolve host name");
  });

  describe("TLS", () => {
    let dir: string;
    let server: TlsServer;
    let port: number;

    beforeAll(async () => {
      dir = mkdtempSync(join(tmpdir(), "pgnet-http-test-"));
      const key = join(dir, "key.pem");
      const cert = join(dir, "cert.pem");
      execFileSync("openssl", [
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        key,
        "-out",
        cert,
        "-days",
        "1",
        "-subj",
        "/CN=localhost",
      ], { stdio: "ignore" });
      server = createTlsServer({ key: readFileSync(key), cert: readFileSync(cert) }, (socket) => {
        socket.on("error", () => {});
        socket.end("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok");
      });
      server.on("tlsClientError", () => {});
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
      port = (server.address() as { port: number }).port;
    });

    afterAll(async () => {
      await new Promise<void>((resolve) => server?.close(() => resolve()) ?? resolve());
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    test('a self-signed certificate gives "SSL peer certificate or SSH remote key was not OK"', async () => {
      const { row, id } = await run({ url: `https://localhost:${port}/` });
      expect(expectErrorRow(row, id)).toBe("SSL peer certificate or SSH remote key was not OK");
    });
  });

  describe("TLS with a private certificate authority (--ca-file)", () => {
    let certificates: Certificates;
    const servers: Fixture[] = [];
    let agents: Agents;
    beforeAll(() => {
      certificates = makeCertificates();
      agents = createAgents({ ca: certificates.ca });
    });
    afterAll(async () => {
      for (const server of servers) await server.stop();
      certificates.remove();
    });
    const serve = async (pair: KeyPair) => {
      const server = await Fixture.start("127.0.0.1", { tls: pair });
      servers.push(server);
      return server;
    };

    test("a certificate from the trusted authority succeeds, body and all", async () => {
      const server = await serve(certificates.localhost);
      const { row } = await run({ url: server.url("/echo", "localhost") }, { ...OPTIONS, agents });
      expect(row.status_code).toBe(200);
      expect(JSON.parse(row.content!).target).toBe("/echo");
      // without the authority, the same server is not trusted
      const untrusted = await run({ url: server.url("/echo", "localhost") });
      expect(untrusted.row.error_msg).toBe("SSL peer certificate or SSH remote key was not OK");
    });

    test('a certificate for another name gives "SSL peer certificate or SSH remote key was not OK"', async () => {
      const server = await serve(certificates.otherName);
      const { row, id } = await run({ url: server.url("/echo", "localhost") }, { ...OPTIONS, agents });
      expect(expectErrorRow(row, id)).toBe("SSL peer certificate or SSH remote key was not OK");
    });

    test('an expired certificate gives "SSL peer certificate or SSH remote key was not OK"', async () => {
      await Bun.sleep(1100); // it expired one second after it was made
      const server = await serve(certificates.expired);
      const { row, id } = await run({ url: server.url("/echo", "localhost") }, { ...OPTIONS, agents });
      expect(expectErrorRow(row, id)).toBe("SSL peer certificate or SSH remote key was not OK");
    });
  });
});

describe("timeouts", () => {
  function expectTimeoutRow(row: ResponseRow, id: string): void {
    expect(row.id).toBe(id);
    expect(row.timed_out).toBe(true);
    expect(row.status_code).toBeNull();
    expect(row.content).toBeNull();
    expect(row.headers).toBeNull();
    expect(row.content_type).toBeNull();
    const match = TIMEOUT_MESSAGE.exec(row.error_msg ?? "");
    expect(match).not.toBeNull();
    for (const figure of match!.slice(1)) expect(Number(figure)).toBeGreaterThan(0);
    // the total is the timeout asked for (300 ms), not an early or a much later one
    const total = Number(match![1]);
    expect({ total, early: total < 300, late: total > 1300 }).toEqual({ total, early: false, late: false });
    // and the parts add up to it
    const parts = Number(match![2]) + Number(match![3]) + Number(match![4]);
    expect(Math.abs(parts - total)).toBeLessThan(1);
  }

  test("a server that never answers produces a timeout row with pg_net's detailed message", async () => {
    const { row, id } = await run({ url: fixture.url("/never"), timeoutMs: 300 });
    expectTimeoutRow(row, id);
    expect(sent(id)).toHaveLength(1);
  });

  test("a timeout through the host name localhost produces the same timeout row", async () => {
    const { row, id } = await run({ url: fixture.url("/never", "localhost"), timeoutMs: 300 });
    expectTimeoutRow(row, id);
  });

  test("a timeout while the body is still arriving produces a timeout row", async () => {
    const server = await rawServer((socket) => socket.write("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc"));
    try {
      const { row, id } = await run({ url: server.url, timeoutMs: 300 });
      expectTimeoutRow(row, id);
    } finally {
      await server.stop();
    }
  });

  test("the timeout covers every redirect hop", async () => {
    const { row, id } = await run({ url: fixture.url("/redirect/302?to=/never"), timeoutMs: 300 });
    expectTimeoutRow(row, id);
    expect(sent(id).map((r) => r.path)).toEqual(["/redirect/302", "/never"]);
  });

  test("a timeout of 0 means no timeout: an answer later than the 5 s default still succeeds", async () => {
    const { row } = await run({ url: fixture.url("/delay/5500"), timeoutMs: 0 });
    expect(row.status_code).toBe(200);
    expect(row.content).toBe("done");
    expect(row.timed_out).toBe(false);
    expect(row.error_msg).toBeNull();
  });

  test("a negative timeout also means no timeout, past the 5 s default too", async () => {
    const { row } = await run({ url: fixture.url("/delay/5500"), timeoutMs: -1 });
    expect(row.status_code).toBe(200);
    expect(row.content).toBe("done");
  });
});

describe("response bodies", () => {
  test("an empty body gives content null", async () => {
    const { row } = await run({ url: fixture.url("/empty") });
    expect(row.status_code).toBe(200);
    expect(row.content).toBeNull();
    expect(row.error_msg).toBeNull();
  });

  test("a 204 gives content null", async () => {
    const { row } = await run({ url: fixture.url("/status/204") });
    expect(row.status_code).toBe(204);
    expect(row.content).toBeNull();
  });

  test("a body with a NUL byte is truncated before the NUL", async () => {
    const { row } = await run({ url: fixture.url("/bytes?hex=6162006364") });
    expect(row.content).toBe("ab");
  });

  test("a body that starts with a NUL byte gives content null", async () => {
    const { row } = await run({ url: fixture.url("/bytes?hex=006162") });
    expect(row.status_code).toBe(200);
    expect(row.content).toBeNull();
  });

  test("invalid UTF-8 becomes U+FFFD", async () => {
    const { row } = await run({ url: fixture.url("/bytes?hex=636166e9206f6b&type=text/plain") });
    expect(row.content).toBe("caf\uFFFD ok");
    expect(row.content_type).toBe("text/plain");
  });

  test("valid multi-byte UTF-8 is decoded", async () => {
    const { row } = await run({ url: fixture.url(`/bytes?hex=${Buffer.from("héllo ✓").toString("hex")}`) });
    expect(row.content).toBe("héllo ✓");
  });

  test("a UTF-8 byte-order mark is kept", async () => {
    const { row } = await run({ url: fixture.url("/bytes?hex=efbbbf6869") });
    expect(row.content).toBe("\uFEFFhi");
  });

  test("a body of exactly maxResponseBytes is returned whole", async () => {
    const { row } = await run({ url: fixture.url("/huge/1000") }, { maxResponseBytes: 1000 });
    expect(row.status_code).toBe(200);
    expect(row.content).toBe("a".repeat(1000));
  });

  test('a body over maxResponseBytes becomes an error row mentioning "Maximum file size exceeded"', async () => {
    const { row, id } = await run({ url: fixture.url("/huge/1001") }, { maxResponseBytes: 1000 });
    expect(expectErrorRow(row, id)).toContain("Maximum file size exceeded");
  });

  test("a large body over maxResponseBytes becomes an error row too", async () => {
    const { row, id } = await run({ url: fixture.url("/huge/2000000") });
    expect(expectErrorRow(row, id)).toContain("Maximum file size exceeded");
  });

  describe("the default cap of 64 MiB", () => {
    const MiB64 = 64 * 1024 * 1024;
    const defaults: HttpOptions = { maxResponseBytes: resolveSettings({}).settings.maxResponseBytes };

    test("is what --max-response-size defaults to", () => {
      expect(defaults.maxResponseBytes).toBe(MiB64);
    });

    test("a body of exactly 64 MiB is returned whole", async () => {
      const { row } = await run({ url: fixture.url(`/huge/${MiB64}`), timeoutMs: 30_000 }, defaults);
      expect(row.error_msg).toBeNull();
      expect(row.status_code).toBe(200);
      expect(row.content!.length).toBe(MiB64);
      expect(row.content === "a".repeat(MiB64)).toBe(true); // not toBe: a failure would print 64 MiB
    }, 60_000);

    test("a body of 64 MiB and one byte, announced by its Content-Length, is an error row", async () => {
      const { row, id } = await run({ url: fixture.url(`/huge/${MiB64 + 1}`), timeoutMs: 30_000 }, defaults);
      expect(expectErrorRow(row, id)).toStartWith("Maximum file size exceeded");
    }, 60_000);

    test("a body over 64 MiB without a Content-Length, chunked or ended by closing, is an error row", async () => {
      for (const path of [`/chunked/${MiB64 + 1}?chunks=4&pause=0`, `/close/${MiB64 + 1}?pause=0`]) {
        const { row, id } = await run({ url: fixture.url(path), timeoutMs: 30_000 }, defaults);
        expect({ path, error: expectErrorRow(row, id) }).toEqual({
          path,
          error: expect.stringMatching(/^Maximum file size exceeded/),
        });
      }
    }, 60_000);
  });
});

describe("IPv6", () => {
  test("a server listening only on ::1 is reached through http://localhost:PORT/", async () => {
    const { row, id } = await run({ url: `http://localhost:${fixture6.port}/echo` });
    expect(row.status_code).toBe(200);
    expect(row.error_msg).toBeNull();
    expect(only(id, fixture6).path).toBe("/echo");
  });

  test("a server listening only on ::1 is reached through http://[::1]:PORT/", async () => {
    const { row, id } = await run({ url: `http://[::1]:${fixture6.port}/echo` });
    expect(row.status_code).toBe(200);
    expect(row.error_msg).toBeNull();
    const received = only(id, fixture6);
    expect(header(received, "Host")).toEqual([`[::1]:${fixture6.port}`]);
  });
});
