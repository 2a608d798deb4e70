// The HTTP client layer: one queued request in, one pg_net-shaped response row out. Never throws.

import { Buffer } from "node:buffer";
import { lookup } from "node:dns/promises";
import { isIP } from "node:net";
import { errorCode } from "./errors.ts";
import { fetchExtras } from "./runtime.ts";
import type { QueuedRequest, ResponseRow } from "./queue.ts";
import { USER_AGENT } from "./version.ts";

export interface HttpOptions {
  /** bodies over this many bytes become an error row */
  maxResponseBytes: number;
  /** libcurl ≥ 8.3's default: 30 */
  maxRedirects?: number;
}

/** The request id travels with every attempt, so receivers can drop a duplicate delivery after a crash. */
export const REQUEST_ID_HEADER = "X-Pgnet-Request-Id";

const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
// header values may hold any byte but CR, LF and NUL (RFC 9110 §5.5)
const BAD_VALUE = /[\r\n\0]/;
const MAX_TIMEOUT_MS = 2_147_483_647; // setTimeout's ceiling; timeout_milliseconds is an int4 anyway

/** libcurl's texts (pg_net's error_msg values) for the failures fetch reports. */
export const ERRORS = {
  protocol: "Unsupported protocol",
  badUrl: "URL using bad/illegal format or missing URL",
  resolve: "Couldn't resolve host name",
  connect: "Couldn't connect to server",
  nothing: "Server returned nothing (no headers, no data)",
  weird: "Weird server reply",
  recv: "Failure when receiving data from the peer",
  partial: "Transferred a partial file",
  peerCert: "SSL peer certificate or SSH remote key was not OK",
  sslConnect: "SSL connect error",
  redirects: "Number of redirects hit maximum amount",
  send: "Failed sending data to the peer",
} as const;

// Bun/Node codes for a certificate that fails verification
const CERT_CODES = new Set([
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "CERT_HAS_EXPIRED",
  "CERT_NOT_YET_VALID",
  "ERR_TLS_CERT_ALTNAME_INVALID",
  "CERT_UNTRUSTED",
  "CERT_REJECTED",
  "CERT_SIGNATURE_FAILURE",
  "HOSTNAME_MISMATCH",
  "ERR_TLS_CERT_ALTNAME_FORMAT",
]);

class RequestError extends Error {}

type Stage = "dns" | "http" | "body";

/** Runs one request and describes the outcome as a response row. Every failure becomes error_msg. */
export async function performRequest(request: QueuedRequest, options: HttpOptions): Promise<ResponseRow> {
  const started = performance.now();
  const timeoutMs = request.timeoutMs > 0 ? Math.min(request.timeoutMs, MAX_TIMEOUT_MS) : 0;
  const signal = timeoutMs > 0 ? AbortSignal.timeout(timeoutMs) : undefined;
  let stage: Stage = "dns";
  let dnsMs = 0;
  let expectedLength: number | null = null;
  try {
    const method = request.method.toUpperCase();
    let url = parseTarget(request.url);
    const headers = buildHeaders(request);
    let body = request.body;
    if (body && method === "GET") {
      throw new RequestError("GET requests with a body are not supported (fetch refuses them); use POST");
    }
    if (body && !headers.has("content-type")) headers.set("Content-Type", "application/x-www-form-urlencoded");

    const dnsStart = performance.now();
    await resolve(url.hostname, signal);
    dnsMs = performance.now() - dnsStart;
    stage = "http";

    let current = method;
    for (let redirects = 0;; redirects++) {
      const response = await fetch(url, {
        method: current,
        headers,
        body,
        redirect: "manual",
        signal,
        ...fetchExtras,
      } as RequestInit);
      const location = response.headers.get("location");
      if (!REDIRECT_STATUSES.has(response.status) || location === null) {
        stage = "body";
        expectedLength = contentLength(response.headers);
        const bytes = await readBody(response, options.maxResponseBytes);
        return success(request.id, response, bytes);
      }
      await response.body?.cancel().catch(() => {});
      if (redirects >= (options.maxRedirects ?? 30)) throw new RequestError(ERRORS.redirects);
      const next = new URL(location, url);
      if (next.protocol !== "http:" && next.protocol !== "https:") throw new RequestError(ERRORS.protocol);
      // libcurl's rules: POST becomes GET on 301/302/303; a custom method (DELETE) is kept; 307/308 keep the body
      if (response.status !== 307 && response.status !== 308) {
        if (current === "POST") current = "GET";
        body = null;
        headers.delete("content-type");
      }
      // credentials are not forwarded to another host, port or scheme (curl ≥ 7.83)
      if (next.origin !== url.origin) {
        headers.delete("authorization");
        headers.delete("cookie");
      }
      if (next.hostname !== url.hostname) await resolve(next.hostname, signal);
      url = next;
    }
  } catch (error) {
    const elapsed = performance.now() - started;
    if (isTimeout(error, signal)) return failure(request.id, timeoutMessage(timeoutMs, elapsed, stage, dnsMs), true);
    return failure(request.id, describeError(error, stage, expectedLength), false);
  }
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

/** The caller's headers in jsonb order, then pg_net's User-Agent unless the caller set one. */
function buildHeaders(request: QueuedRequest): Headers {
  const given = request.headers ?? {};
  if (typeof given !== "object" || Array.isArray(given)) {
    throw new RequestError(`headers must be a JSON object, got ${JSON.stringify(given)}`);
  }
  const headers = new Headers();
  for (const [name, raw] of Object.entries(given as Record<string, unknown>)) {
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
    headers.append(name, byteString(value));
  }
  if (!headers.has("user-agent")) headers.set("User-Agent", USER_AGENT);
  headers.set(REQUEST_ID_HEADER, request.id);
  return headers;
}

/** fetch sends one byte per character of a header value: pass UTF-8 bytes, as pg_net's libcurl sends them. */
function byteString(value: string): string {
  return Buffer.byteLength(value) === value.length ? value : Buffer.from(value, "utf8").toString("latin1");
}

/** Resolves a host name before fetch so DNS failures and DNS time are known (fetch hides both). */
async function resolve(hostname: string, signal: AbortSignal | undefined): Promise<void> {
  const bare = hostname.startsWith("[") ? hostname.slice(1, -1) : hostname;
  if (isIP(bare) !== 0) return;
  const lookedUp = lookup(bare, { all: true }).catch(() => {
    throw new RequestError(ERRORS.resolve);
  });
  if (!signal) return void await lookedUp;
  signal.throwIfAborted();
  let onAbort = () => {};
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
  });
  try {
    await Promise.race([lookedUp, aborted]);
  } finally {
    signal.removeEventListener("abort", onAbort);
  }
}

async function readBody(response: Response, limit: number): Promise<Uint8Array> {
  if (!response.body) return new Uint8Array(0);
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
    size += chunk.byteLength;
    if (size > limit) {
      await response.body.cancel().catch(() => {});
      throw new RequestError(`Maximum file size exceeded: the response body is over ${limit} bytes`);
    }
    chunks.push(chunk);
  }
  if (chunks.length === 1) return chunks[0]!;
  const bytes = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return bytes;
}

function contentLength(headers: Headers): number | null {
  const value = headers.get("content-length");
  return value !== null && /^\d+$/.test(value) ? Number(value) : null;
}

// keeps a UTF-8 BOM, as pg_net does; invalid sequences become U+FFFD (PostgreSQL text must be valid UTF-8)
const decoder = new TextDecoder("utf-8", { ignoreBOM: true });

function success(id: string, response: Response, bytes: Uint8Array): ResponseRow {
  // PostgreSQL text cannot hold NUL: like pg_net, keep what comes before the first one
  const nul = bytes.indexOf(0);
  const text = decoder.decode(nul === -1 ? bytes : bytes.subarray(0, nul));
  return {
    id,
    status_code: response.status,
    content_type: response.headers.get("content-type"),
    headers: headerObject(response.headers),
    content: text === "" ? null : text,
    timed_out: false,
    error_msg: null,
  };
}

function failure(id: string, message: string, timedOut: boolean): ResponseRow {
  return {
    id,
    status_code: null,
    content_type: null,
    headers: null,
    content: null,
    timed_out: timedOut,
    error_msg: message,
  };
}

// names whose usual spelling is not plain Title-Case
const SPELLINGS: Record<string, string> = {
  etag: "ETag",
  te: "TE",
  dnt: "DNT",
  "www-authenticate": "WWW-Authenticate",
  "content-md5": "Content-MD5",
  "x-xss-protection": "X-XSS-Protection",
  "content-security-policy": "Content-Security-Policy",
};

/** fetch lower-cases header names; give them their usual capitalisation, e.g. Content-Type. */
export function headerName(lower: string): string {
  return SPELLINGS[lower] ?? lower.replace(/(^|-)([a-z])/g, (_, dash: string, c: string) => dash + c.toUpperCase());
}

/** Response headers as a jsonb-ready object; repeated headers (Set-Cookie too) are joined with ", ". */
function headerObject(headers: Headers): Record<string, string> {
  const object: Record<string, string> = {};
  headers.forEach((value, name) => {
    const key = headerName(name);
    // jsonb cannot store \u0000
    const clean = value.includes("\0") ? value.replaceAll("\0", "") : value;
    object[key] = key in object ? `${object[key]}, ${clean}` : clean;
  });
  return object;
}

function isTimeout(error: unknown, signal: AbortSignal | undefined): boolean {
  return signal?.aborted === true && (error === signal.reason || (error as Error)?.name === "TimeoutError" ||
    (error as Error)?.name === "AbortError");
}

/**
 * pg_net's timeout text. fetch exposes no connection timings: DNS time is measured (pgnet resolves first),
 * connect and TLS time cannot be separated from the request, so the handshake figure is the 0.001 ms floor
 * that keeps every figure positive, as pg_net's parsers expect; the rest is the HTTP figure.
 */
export function timeoutMessage(timeoutMs: number, totalMs: number, stage: Stage, dnsMs: number): string {
  const floor = (ms: number) => Math.max(ms, 0.001).toFixed(6);
  const dns = stage === "dns" ? totalMs : dnsMs;
  const handshake = 0.001;
  const http = stage === "dns" ? 0 : totalMs - dnsMs - handshake;
  return `Timeout of ${timeoutMs} ms reached. Total time: ${floor(totalMs)} ms (DNS time: ${floor(dns)} ms, ` +
    `TCP/SSL handshake time: ${floor(handshake)} ms, HTTP Request/Response time: ${floor(http)} ms)`;
}

/** Maps what fetch threw onto libcurl's wording (pg_net-behavior.md ERR-03, IMPL-02). */
function describeError(error: unknown, stage: Stage, expectedLength: number | null): string {
  if (error instanceof RequestError) return error.message;
  const code = errorCode(error) ?? "";
  const message = (error as Error)?.message ?? String(error);
  if (
    code === "ECONNREFUSED" || code === "ConnectionRefused" || code === "EHOSTUNREACH" ||
    code === "ENETUNREACH" || code === "FailedToOpenSocket"
  ) return ERRORS.connect;
  if (code === "ENOTFOUND" || code === "EAI_AGAIN" || code === "DNSException") return ERRORS.resolve;
  if (CERT_CODES.has(code)) return ERRORS.peerCert;
  if (code === "EPROTO" || code.startsWith("ERR_SSL") || code.startsWith("ERR_TLS") || /TLS|SSL/.test(code)) {
    return ERRORS.sslConnect;
  }
  if (code === "Malformed_HTTP_Response" || code === "HPE_INVALID_HEADER_TOKEN" || code.startsWith("HPE_")) {
    return ERRORS.weird;
  }
  if (code === "ECONNRESET" || code === "ConnectionClosed" || code === "EPIPE") {
    if (stage === "http") return ERRORS.nothing;
    return expectedLength !== null ? ERRORS.partial : ERRORS.recv;
  }
  if (code === "ERR_INVALID_URL") return ERRORS.badUrl;
  return message;
}
