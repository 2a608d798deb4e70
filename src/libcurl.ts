// pg_net's error texts: libcurl's wording for each failure (pg_net-behavior.md ERR-02, ERR-03), and the
// mapping from what the runtime's HTTP client throws onto them.

import { errorCode } from "./errors.ts";

/** libcurl's texts, as pg_net stores them in error_msg. */
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
  encoding: "Unrecognized or bad HTTP Content or Transfer-Encoding",
} as const;

/** A failure whose message is final: it is stored as error_msg as it is. */
export class RequestError extends Error {}

/** Where a request was when it failed or timed out. */
export type Stage = "dns" | "connect" | "http" | "body";

// codes for a certificate that fails verification (Node, Bun and Deno use OpenSSL's names)
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

const CONNECT_CODES = new Set(["ECONNREFUSED", "EHOSTUNREACH", "ENETUNREACH", "EADDRNOTAVAIL", "ConnectionRefused"]);
const RESOLVE_CODES = new Set(["ENOTFOUND", "EAI_AGAIN", "EAI_FAIL", "EAI_NONAME", "DNSException"]);
const RESET_CODES = new Set(["ECONNRESET", "EPIPE", "ECONNABORTED", "ConnectionClosed", "ERR_STREAM_PREMATURE_CLOSE"]);

/** Maps a failure onto libcurl's wording; `expectedLength` is the response's Content-Length, when known. */
export function describeError(error: unknown, stage: Stage, expectedLength: number | null): string {
  if (error instanceof RequestError) return error.message;
  const code = errorCode(error) ?? "";
  if (CONNECT_CODES.has(code)) return ERRORS.connect;
  if (RESOLVE_CODES.has(code)) return ERRORS.resolve;
  if (CERT_CODES.has(code)) return ERRORS.peerCert;
  if (code === "EPROTO" || code.startsWith("ERR_SSL") || code.startsWith("ERR_TLS") || /TLS|SSL/.test(code)) {
    return ERRORS.sslConnect;
  }
  if (code === "HPE_INVALID_CHUNK_SIZE" || code === "HPE_INVALID_TRANSFER_ENCODING") return ERRORS.encoding;
  if (code.startsWith("HPE_")) return ERRORS.weird;
  if (RESET_CODES.has(code)) {
    if (stage === "connect" || stage === "http") return ERRORS.nothing;
    return expectedLength !== null ? ERRORS.partial : ERRORS.recv;
  }
  return (error as Error)?.message ?? String(error);
}

/** How long each step took, in ms since the request started; 0 where the step has not happened. */
export interface Timings {
  /** the name was resolved (or needed no resolving) */
  dns: number;
  /** TCP connected, and TLS done for https: 0 on a reused connection */
  handshake: number;
  /** the request went out on a connection */
  sent: number;
}

/**
 * pg_net's timeout text (ERR-02), built as pg_net builds it from libcurl's timings: a timeout before the name
 * resolved is all DNS time; before the request went out, the rest is handshake time; after, the HTTP time is
 * what followed the request going out. A reused connection has no handshake: its figure is the 0.001 ms floor
 * that keeps every figure positive, as pg_net's tests expect.
 */
export function timeoutMessage(timeoutMs: number, totalMs: number, t: Timings): string {
  const floor = (ms: number) => Math.max(ms, 0.001).toFixed(6);
  let dns = t.dns, handshake = 0, http = 0;
  if (t.dns === 0) dns = totalMs;
  else if (t.sent === 0) handshake = totalMs - t.dns;
  else {
    handshake = t.handshake > 0 ? t.handshake - t.dns : 0;
    http = totalMs - t.sent;
  }
  return `Timeout of ${timeoutMs} ms reached. Total time: ${floor(totalMs)} ms (DNS time: ${floor(dns)} ms, ` +
    `TCP/SSL handshake time: ${floor(handshake)} ms, HTTP Request/Response time: ${floor(http)} ms)`;
}
