// The HTTP client layer: one queued request (and its redirect hops) in, one pg_net-shaped response row out.
// Never throws. Built on node:http, which Bun and Deno share: it keeps response header names as the server
// spelled them (fetch lower-cases them), sends request headers in order and spelling, connects to the addresses
// it is given (so a name is resolved once, by the caller's resolver), adds no Accept-Encoding and decompresses
// nothing, exactly like pg_net's libcurl. Measured on Bun 1.4, 30,000 GETs, 256 at once, to a local target:
// node:http 28,500–31,000 req/s, fetch 17,900–18,700 req/s.

import { Buffer } from "node:buffer";
import { lookup } from "node:dns/promises";
import http, { type IncomingMessage } from "node:http";
import https from "node:https";
import { isIP, type LookupFunction, type Socket } from "node:net";
import tls from "node:tls";
import { describeError, ERRORS, RequestError, type Stage, timeoutMessage, type Timings } from "./libcurl.ts";
import type { QueuedRequest, ResponseRow } from "./queue.ts";
import { USER_AGENT } from "./version.ts";

export interface Address {
  address: string;
  family: 4 | 6;
}

/** Turns a host name (or an IP literal, unbracketed) into the addresses to connect to; throws RequestError to refuse. */
export type Resolve = (hostname: string, port: number) => Promise<Address[]>;

/** Memory for a response body: resolves once `total` bytes of body may be held (the memory budget). */
export interface BodyRoom {
  reserve(total: number, expected: number | null): Promise<void> | void;
}

export interface HttpOptions {
  /** bodies over this many bytes become an error row */
  maxResponseBytes: number;
  /** libcurl ≥ 8.3's default: 30 */
  maxRedirects?: number;
  /** how names become addresses; the system resolver by default */
  resolve?: Resolve;
  /** asked before a response body grows */
  room?: BodyRoom;
  /** keep-alive connection pools; shared ones by default */
  agents?: Agents;
  /** follow a redirect from https to http (refused by default) */
  allowInsecureRedirects?: boolean;
  /** send every request through this HTTP proxy (--proxy); `resolve` then only checks, the proxy resolves */
  proxy?: Proxy;
}

export interface Agents {
  http: http.Agent;
  https: https.Agent;
  /** the certificate authorities https trusts, when not only the runtime's own (tunnels through a proxy use them) */
  ca?: string[];
}

/**
 * An HTTP proxy (--proxy http://[user:password@]host:port). Plain http requests go to it in absolute form over
 * pooled keep-alive connections; https requests open a CONNECT tunnel each and speak TLS to the destination
 * through it, so the certificate is the destination's and checked as without a proxy.
 */
export interface Proxy {
  /** host name or IP address, unbracketed */
  host: string;
  port: number;
  /** Proxy-Authorization, from the URL's user and password */
  authorization: string | null;
  /** the URL with its password masked, for logs and /status */
  display: string;
}

/** Reads --proxy: an http:// URL with a host, an optional port (80) and credentials, and nothing else. */
export function parseProxy(text: string): Proxy {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new Error("not a URL");
  }
  if (url.protocol !== "http:") throw new Error(`only http:// proxies are supported, not ${url.protocol}//`);
  if (url.hostname === "") throw new Error("no host");
  if ((url.pathname !== "/" && url.pathname !== "") || url.search || url.hash) {
    throw new Error("a proxy URL has no path, query or fragment");
  }
  const hasCredentials = url.username !== "" || url.password !== "";
  const pair = `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`;
  return {
    host: bare(url.hostname),
    port: Number(url.port) || 80,
    authorization: hasCredentials ? `Basic ${Buffer.from(pair, "utf8").toString("base64")}` : null,
    display: `http://${hasCredentials ? `${url.username}:***@` : ""}${url.host}`,
  };
}

/** The request id travels with every attempt, so receivers can drop a duplicate delivery after a crash. */
export const REQUEST_ID_HEADER = "X-Pgnet-Request-Id";
/** Which attempt this is: 1 for the first, 2 for the first retry, and so on (a re-send after a crash counts). */
export const ATTEMPT_HEADER = "X-Pgnet-Attempt";

const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
// header values may hold any byte but CR, LF and NUL (RFC 9110 §5.5)
const BAD_VALUE = /[\r\n\0]/;
const MAX_TIMEOUT_MS = 2_147_483_647; // setTimeout's ceiling; timeout_milliseconds is an int4 anyway
/** The caller's headers that still go along when a redirect leads to another origin. */
export const CROSS_ORIGIN_HEADERS: ReadonlySet<string> = new Set([
  "accept",
  "accept-language",
  "content-language",
  "content-type",
  "user-agent",
  REQUEST_ID_HEADER.toLowerCase(),
  ATTEMPT_HEADER.toLowerCase(),
]);
// methods that announce an empty body with Content-Length: 0, as libcurl does for POST
const BODY_METHODS = new Set(["POST", "PUT", "PATCH"]);

let sharedAgents: Agents | undefined;

/**
 * Keep-alive pools with no per-host cap of their own: the worker's window is the limit. `ca` adds certificate
 * authorities (PEM) to the runtime's own roots, for internal services with a private CA (--ca-file).
 */
export function createAgents(options: { ca?: string | Buffer } = {}): Agents {
  const common = { keepAlive: true, maxSockets: Infinity, maxFreeSockets: 1024 };
  const ca = options.ca ? { ca: [...tls.rootCertificates, options.ca.toString()] } : {};
  return { http: new http.Agent(common), https: new https.Agent({ ...common, ...ca }), ...ca };
}

const LOOPBACK: Address[] = [{ address: "127.0.0.1", family: 4 }, { address: "::1", family: 6 }];

/**
 * The system resolver: every address of a name; an IP literal is its own address. `localhost` and names under it
 * are 127.0.0.1 and ::1 without asking DNS, as libcurl ≥ 7.78 does (RFC 6761), whatever /etc/hosts says.
 */
export const systemResolve: Resolve = async (hostname) => {
  const family = isIP(hostname);
  if (family !== 0) return [{ address: hostname, family: family as 4 | 6 }];
  if (isLocalhost(hostname)) return LOOPBACK;
  try {
    return (await lookup(hostname, { all: true })).map((a) => ({ address: a.address, family: a.family as 4 | 6 }));
  } catch {
    throw new RequestError(ERRORS.resolve);
  }
};

/** localhost and names under it (RFC 6761): loopback, whatever DNS or /etc/hosts say. */
export function isLocalhost(hostname: string): boolean {
  const lower = hostname.toLowerCase().replace(/\.$/, "");
  return lower === "localhost" || lower.endsWith(".localhost");
}

class TimeoutError extends Error {}

/**
 * One request's state across its redirect hops: the timeout, the timings, and what to destroy when the timeout
 * fires. The timer destroys the exchange in progress, whose pending promise then rejects: no promise per step.
 */
class Attempt {
  readonly started = performance.now();
  readonly timings: Timings = { dns: 0, handshake: 0, sent: 0 };
  stage: Stage = "dns";
  expectedLength: number | null = null;
  timedOut = false;
  /** destroys the exchange in progress; a DNS lookup, which cannot be cancelled, is raced instead */
  cancel: ((error: Error) => void) | null = null;
  #timer: ReturnType<typeof setTimeout> | undefined;

  constructor(readonly timeoutMs: number) {
    if (timeoutMs > 0) {
      this.#timer = setTimeout(() => {
        this.timedOut = true;
        this.cancel?.(new TimeoutError("timeout"));
      }, timeoutMs);
    }
  }

  elapsed(): number {
    return performance.now() - this.started;
  }

  done(): void {
    clearTimeout(this.#timer);
    this.cancel = null;
  }
}

/** Runs one request and describes the outcome as a response row. Every failure becomes error_msg. */
export async function performRequest(request: QueuedRequest, options: HttpOptions): Promise<ResponseRow> {
  const attempt = new Attempt(request.timeoutMs > 0 ? Math.min(request.timeoutMs, MAX_TIMEOUT_MS) : 0);
  try {
    return await exchange(request, options, attempt);
  } catch (error) {
    if (attempt.timedOut) {
      return failure(request.id, timeoutMessage(attempt.timeoutMs, attempt.elapsed(), attempt.timings), true);
    }
    return failure(request.id, describeError(error, attempt.stage, attempt.expectedLength), false);
  } finally {
    attempt.done();
  }
}

async function exchange(request: QueuedRequest, options: HttpOptions, attempt: Attempt): Promise<ResponseRow> {
  const resolve = options.resolve ?? systemResolve;
  const agents = options.agents ?? (sharedAgents ??= createAgents());
  let method = request.method.toUpperCase();
  if (!TOKEN.test(method)) throw new RequestError(`Invalid method ${JSON.stringify(request.method)}`);
  let url = parseTarget(request.url);
  const headers = buildHeaders(request);
  let body = request.body;
  if (body && !hasHeader(headers, "content-type")) headers.push(["Content-Type", "application/x-www-form-urlencoded"]);

  for (let redirects = 0;; redirects++) {
    const port = Number(url.port) || (url.protocol === "https:" ? 443 : 80);
    attempt.stage = "dns";
    const addresses = await lookUp(resolve, bare(url.hostname), port, attempt);
    if (attempt.timings.dns === 0) attempt.timings.dns = attempt.elapsed();
    attempt.stage = "connect";
    const response = await send(
      url,
      method,
      credentials(url, headers),
      body,
      addresses,
      agents,
      attempt,
      options.proxy,
    );
    const location = response.headers.location;
    if (!REDIRECT_STATUSES.has(response.statusCode ?? 0) || location === undefined) {
      attempt.stage = "body";
      return success(request.id, response, await readBody(response, options, attempt), request.rawResponse === true);
    }
    response.destroy();
    if (redirects >= (options.maxRedirects ?? 30)) throw new RequestError(ERRORS.redirects);
    let next: URL;
    try {
      next = new URL(location, url);
    } catch {
      throw new RequestError(ERRORS.badUrl);
    }
    if (next.protocol !== "http:" && next.protocol !== "https:") throw new RequestError(ERRORS.protocol);
    if (url.protocol === "https:" && next.protocol === "http:" && !options.allowInsecureRedirects) {
      throw new RequestError(
        `Redirect from https to http refused: ${next.origin} (pgnet --allow-insecure-redirects follows such redirects)`,
      );
    }
    // libcurl's rules: POST becomes GET on 301/302/303; a custom method (DELETE) is kept; 307/308 keep the body
    const status = response.statusCode!;
    if (status !== 307 && status !== 308) {
      if (method === "POST") method = "GET";
      body = null;
      removeHeader(headers, "content-type");
    }
    // another host, port or scheme gets only the headers known to carry no credentials (curl ≥ 7.83 drops
    // Authorization and Cookie; an API key can travel in any header, so every other header is dropped too)
    if (next.origin !== url.origin) {
      for (let i = headers.length - 1; i >= 0; i--) {
        if (!CROSS_ORIGIN_HEADERS.has(headers[i]![0].toLowerCase())) headers.splice(i, 1);
      }
    }
    url = next;
  }
}

/** Resolves a name under the request's timeout (a lookup cannot be cancelled: it is raced). */
function lookUp(resolve: Resolve, hostname: string, port: number, attempt: Attempt): Promise<Address[]> {
  return new Promise((ok, fail) => {
    attempt.cancel = fail;
    resolve(hostname, port).then(ok, fail);
  });
}

/** Sends one hop and resolves with the response once its status line and headers have arrived. */
async function send(
  url: URL,
  method: string,
  headers: [string, string][],
  body: Uint8Array | null,
  addresses: Address[],
  agents: Agents,
  attempt: Attempt,
  proxy: Proxy | undefined,
): Promise<IncomingMessage> {
  const secure = url.protocol === "https:";
  // Host first, as libcurl sends it; node:http on Bun adds none when headers come as a list
  const lines = ["Host", url.host, ...headers.flat()];
  if (body) lines.push("Content-Length", String(body.byteLength));
  else if (BODY_METHODS.has(method)) lines.push("Content-Length", "0");
  const host = bare(url.hostname);
  const port = url.port || (secure ? 443 : 80);
  const path = url.pathname + url.search;
  let route: http.RequestOptions;
  if (!proxy) {
    // the addresses were resolved and checked once; the connection goes to one of them
    const fixed: LookupFunction = (_name, opts, callback) => {
      const cb = callback as (...args: unknown[]) => void;
      if ((opts as { all?: boolean }).all) cb(null, addresses);
      else cb(null, addresses[0]!.address, addresses[0]!.family);
    };
    route = { host, port, path, agent: secure ? agents.https : agents.http, lookup: fixed };
  } else if (!secure) {
    // absolute form to the proxy, which resolves the name (its address is the operator's choice: no check)
    if (proxy.authorization) lines.push("Proxy-Authorization", proxy.authorization);
    route = { host: proxy.host, port: proxy.port, path: `http://${url.host}${path}`, agent: agents.http };
  } else {
    const socket = await tunnel(proxy, url, attempt);
    const ca = agents.ca ? { ca: agents.ca } : {};
    const servername = isIP(host) ? {} : { servername: host };
    // the authorities go to the request and the socket alike: Bun checks the certificate with the request's
    const createConnection = () => tls.connect({ socket, ...servername, ...ca });
    route = { host, port, path, agent: false, ...ca, createConnection };
  }
  return await new Promise<IncomingMessage>((resolve, reject) => {
    const request = (secure ? https : http).request({
      protocol: url.protocol,
      ...route,
      method,
      headers: lines as unknown as http.OutgoingHttpHeaders,
    }, resolve);
    attempt.cancel = (error) => {
      // Deno's node:http (2.9, denoland/deno#36786) resends a request it was told to destroy when it went out on a
      // reused keep-alive socket: its retry for stale pooled sockets skips a request already marked as retrying.
      // Without this, a timeout on a pooled connection delivers the request twice and stores the second answer.
      (request as { _retrying?: boolean })._retrying = true;
      request.destroy(error);
    };
    request.on("error", reject);
    request.on("socket", (socket) => {
      const ready = () => {
        attempt.timings.handshake = attempt.elapsed();
        attempt.timings.sent = attempt.timings.handshake;
        attempt.stage = "http";
      };
      // a socket from the keep-alive pool is connected already (a tunnel's TLS socket never is: it is new)
      const pooled = (socket as { connecting?: boolean }).connecting === false && !route.createConnection;
      if (pooled && !socket.destroyed) ready();
      else socket.once(secure ? "secureConnect" : "connect", ready);
    });
    if (body) request.end(body);
    else request.end();
  });
}

/**
 * Opens a CONNECT tunnel through the proxy to the URL's host and port (the name as given: the proxy resolves it).
 * A refusal is libcurl's error for it; the timeout and cancellation cover the tunnel as they do a connection.
 */
function tunnel(proxy: Proxy, url: URL, attempt: Attempt): Promise<Socket> {
  const authority = `${url.hostname}:${url.port || 443}`;
  const lines = ["Host", authority];
  if (proxy.authorization) lines.push("Proxy-Authorization", proxy.authorization);
  return new Promise((resolve, reject) => {
    const request = http.request({
      host: proxy.host,
      port: proxy.port,
      method: "CONNECT",
      path: authority,
      headers: lines as unknown as http.OutgoingHttpHeaders,
      agent: false,
    });
    attempt.cancel = (error) => request.destroy(error);
    request.on("error", reject);
    request.on("connect", (response: IncomingMessage, socket: Socket) => {
      if (response.statusCode === 200) return resolve(socket);
      socket.destroy();
      reject(new RequestError(`Received HTTP code ${response.statusCode} from proxy after CONNECT`));
    });
    request.end();
  });
}

/** Reads the body, pausing while the memory budget has no room for it; bodies over the limit are an error. */
function readBody(response: IncomingMessage, options: HttpOptions, attempt: Attempt): Promise<Uint8Array> {
  const limit = options.maxResponseBytes;
  const expected = contentLength(response);
  attempt.expectedLength = expected;
  const room = options.room;
  return new Promise((resolve, reject) => {
    // the first failure is the one reported: destroying the response makes it emit another ("aborted")
    let settled = false;
    const fail = (error: Error) => {
      if (settled) return;
      settled = true;
      reject(error);
      response.destroy();
    };
    attempt.cancel = fail;
    const tooLarge = () => new RequestError(`Maximum file size exceeded: the response body is over ${limit} bytes`);
    if (expected !== null && expected > limit) return fail(tooLarge());
    // the whole body at once when its length is known: one reservation, one buffer, no concatenation; nothing is
    // read (the socket is not drained) until the budget has room for it
    const read = () => {
      const whole = expected !== null ? Buffer.allocUnsafe(expected) : null;
      const chunks: Buffer[] = [];
      let size = 0;
      response.on("data", (chunk: Buffer) => {
        if (size + chunk.byteLength > limit) return fail(tooLarge());
        if (whole && size + chunk.byteLength <= expected!) chunk.copy(whole, size);
        else chunks.push(chunk);
        size += chunk.byteLength;
        if (whole) return;
        const pending = room?.reserve(size, null);
        if (!pending) return;
        response.pause();
        pending.then(() => response.resume(), fail);
      });
      response.on("end", () => {
        if (!response.complete) return fail(Object.assign(new Error("incomplete response"), { code: "ECONNRESET" }));
        if (whole) resolve(size === expected ? whole : whole.subarray(0, size));
        else resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size));
      });
    };
    response.on("error", fail);
    response.on("aborted", () => fail(Object.assign(new Error("aborted"), { code: "ECONNRESET" })));
    const pending = expected !== null ? room?.reserve(expected, expected) : undefined;
    if (pending) pending.then(read, fail);
    else read();
  });
}

function parseTarget(text: string): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new RequestError(ERRORS.badUrl);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") throw new RequestError(ERRORS.protocol);
  if (url.hostname === "") throw new RequestError(ERRORS.badUrl);
  return url;
}

/** URL credentials (http://user:pass@host/) become Basic auth, as libcurl sends them, unless the caller set one. */
function credentials(url: URL, headers: [string, string][]): [string, string][] {
  if ((url.username === "" && url.password === "") || hasHeader(headers, "authorization")) return headers;
  const pair = `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`;
  return [...headers, ["Authorization", `Basic ${Buffer.from(pair, "utf8").toString("base64")}`]];
}

/** [::1] → ::1: node:http and resolvers take IPv6 literals without brackets. */
function bare(hostname: string): string {
  return hostname.startsWith("[") ? hostname.slice(1, -1) : hostname;
}

/**
 * Host and Accept: *\/* (unless the caller set it), the caller's headers in jsonb order with their spelling,
 * then pg_net's User-Agent unless the caller set one, and the request id.
 */
function buildHeaders(request: QueuedRequest): [string, string][] {
  const given = request.headers ?? {};
  if (typeof given !== "object" || Array.isArray(given)) {
    throw new RequestError(`headers must be a JSON object, got ${JSON.stringify(given)}`);
  }
  const headers: [string, string][] = [];
  for (const [name, raw] of inOrder(given as Record<string, unknown>, request.headerOrder)) {
    // pg_net: JSON null is skipped, "" removes the header, numbers and booleans are sent as their JSON text;
    // an object or array is no header value (pg_net sends its JSON text): an error on this request
    if (raw === null || raw === "") continue;
    if (typeof raw === "object") {
      throw new RequestError(
        `Invalid value for header ${JSON.stringify(name)}: expected a string, number or boolean, got ${
          JSON.stringify(raw)
        }`,
      );
    }
    const value = String(raw);
    if (!TOKEN.test(name)) throw new RequestError(`Invalid header name ${JSON.stringify(name)}`);
    if (BAD_VALUE.test(value)) {
      throw new RequestError(`Invalid value for header ${JSON.stringify(name)}: CR, LF and NUL are not allowed`);
    }
    headers.push([name, byteString(value)]);
  }
  if (!hasHeader(headers, "accept")) headers.unshift(["Accept", "*/*"]);
  if (!hasHeader(headers, "user-agent")) headers.push(["User-Agent", USER_AGENT]);
  headers.push([REQUEST_ID_HEADER, request.id], [ATTEMPT_HEADER, String(request.attempt ?? 1)]);
  return headers;
}

/** The object's entries in the caller's order where one was recorded (jsonb sorts keys), then any others. */
function inOrder(object: Record<string, unknown>, order: string[] | null | undefined): [string, unknown][] {
  if (!order) return Object.entries(object);
  const seen = new Set<string>();
  const entries: [string, unknown][] = [];
  for (const name of order) {
    if (Object.hasOwn(object, name) && !seen.has(name)) {
      seen.add(name);
      entries.push([name, object[name]]);
    }
  }
  for (const [name, value] of Object.entries(object)) if (!seen.has(name)) entries.push([name, value]);
  return entries;
}

function hasHeader(headers: [string, string][], lower: string): boolean {
  return headers.some(([name]) => name.toLowerCase() === lower);
}

function removeHeader(headers: [string, string][], lower: string): void {
  for (let i = headers.length - 1; i >= 0; i--) if (headers[i]![0].toLowerCase() === lower) headers.splice(i, 1);
}

/** node:http sends one byte per character of a header value: pass UTF-8 bytes, as pg_net's libcurl sends them. */
function byteString(value: string): string {
  return Buffer.byteLength(value) === value.length ? value : Buffer.from(value, "utf8").toString("latin1");
}

function contentLength(response: IncomingMessage): number | null {
  const value = response.headers["content-length"];
  return value !== undefined && /^\d+$/.test(value) ? Number(value) : null;
}

// keeps a UTF-8 BOM, as pg_net does; invalid sequences become U+FFFD (PostgreSQL text must be valid UTF-8)
const decoder = new TextDecoder("utf-8", { ignoreBOM: true });
const strict = new TextDecoder("utf-8", { ignoreBOM: true, fatal: true });

/**
 * The response row. content is pg_net's text: up to the first NUL (PostgreSQL text cannot hold one), with
 * invalid UTF-8 replaced by U+FFFD. Where that is not the body as received (binary data, NUL bytes), or the
 * request asked for them, body holds the exact bytes.
 */
function success(id: string, response: IncomingMessage, bytes: Uint8Array, raw: boolean): ResponseRow {
  const nul = bytes.indexOf(0);
  let text: string;
  let exact = nul === -1;
  if (exact) {
    try {
      text = strict.decode(bytes);
    } catch {
      exact = false;
      text = decoder.decode(bytes);
    }
  } else text = decoder.decode(bytes.subarray(0, nul));
  const { headers, contentType } = headerObject(response.rawHeaders);
  return {
    id,
    status_code: response.statusCode ?? null,
    content_type: contentType,
    headers,
    content: text === "" ? null : text,
    timed_out: false,
    error_msg: null,
    body: raw || !exact ? bytes : null,
  };
}

/** An error row: a failed request's response, as pg_net stores one. */
export function failure(id: string, message: string, timedOut: boolean): ResponseRow {
  return {
    id,
    status_code: null,
    content_type: null,
    headers: null,
    content: null,
    timed_out: timedOut,
    error_msg: message,
    body: null,
  };
}

/**
 * Response headers as a jsonb-ready object, names spelled as the server sent them (so `headers->>'ETag'` and
 * `headers->>'x-amz-request-id'` find what the server wrote, as in pg_net). A name repeated with the same
 * spelling (Set-Cookie too) is joined with ", "; spellings that differ are separate keys, as in pg_net.
 * Content-Type is the first one, matched in any case (pg_net's content_type).
 */
function headerObject(raw: string[]): { headers: Record<string, string>; contentType: string | null } {
  const headers: Record<string, string> = {};
  let contentType: string | null = null;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!;
    // jsonb cannot store \u0000
    const value = raw[i + 1]!.includes("\0") ? raw[i + 1]!.replaceAll("\0", "") : raw[i + 1]!;
    if (contentType === null && name.toLowerCase() === "content-type") contentType = value;
    headers[name] = Object.hasOwn(headers, name) ? `${headers[name]}, ${value}` : value;
  }
  return { headers, contentType };
}
