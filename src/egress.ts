// Egress policy: which destinations the worker may connect to, judged from host names and IP addresses (no I/O).
//
// The rules:
// - Two kinds of rules. Address rules (an IP address or CIDR, optionally with :port) judge the addresses pgnet
//   connects to; name rules (a host name or *.suffix, optionally with :port) judge DNS names. A destination must
//   pass both: its name, when the URL has one, and every address it resolves to. A name allow only overrides a
//   name deny (allow api.internal.example inside deny *.internal.example); it never opens an address range. To
//   reach an internal service under the `public` preset, allow its address or CIDR.
// - Within a kind, the most specific matching rule wins, and a deny wins over an allow of equal specificity.
//   Addresses: a longer prefix is more specific (IPv4 rules compete with IPv4 rules, IPv6 with IPv6), and a rule
//   with a port beats the same prefix without one. Names: an exact name beats any *.suffix, a longer suffix beats
//   a shorter one, and a rule with a port beats the same rule without one. *.example.com matches every name below
//   example.com, not example.com itself. Names ignore case and a trailing dot.
// - No matching rule: allowed.
// - Addresses are normalised first: IPv4 in every form inet_aton accepts (2130706433, 0x7f.1, 0177.0.0.1, 127.1),
//   IPv6 in any textual form, with or without brackets and zone id. An IPv6 address that embeds an IPv4 address
//   (IPv4-mapped ::ffff:0:0/96, IPv4-compatible ::/96 except :: and ::1, NAT64 64:ff9b::/96 and 64:ff9b:1::/48,
//   6to4 2002::/16) is judged as both, and is denied if either is denied.
// - Built-in denies, in every preset: unspecified 0.0.0.0/8 and ::/128; link-local 169.254.0.0/16 and fe80::/10;
//   multicast 224.0.0.0/4 and ff00::/8; reserved 240.0.0.0/4; broadcast 255.255.255.255; cloud metadata
//   169.254.169.254, 169.254.170.2, 100.100.100.200, 168.63.129.16, fd00:ec2::254, fd20:ce::254 and the names
//   metadata.google.internal, metadata.goog and metadata.
// - The `public` preset also denies loopback 127.0.0.0/8 and ::1; private 10.0.0.0/8, 172.16.0.0/12 and
//   192.168.0.0/16; shared address space 100.64.0.0/10; unique local fc00::/7.
// - An allow entry reopens part of a built-in deny by being more specific: 169.254.10.0/24 inside link-local,
//   127.0.0.1:8080 under `public`.
// - pgnet's own listeners are denied above every other rule, so no allow reopens them. A listener on 0.0.0.0, ::
//   or no host is denied on its port at every address (it answers on all interfaces); one on localhost is denied
//   on its port at 127.0.0.0/8 and ::1.
// - Through a proxy (--proxy) the proxy resolves names: pgnet judges the name, and the address only where the URL
//   holds one or names localhost. The proxy's own address is the operator's choice and is not judged.

import { isIP } from "node:net";
import { PgnetError } from "./errors.ts";
import { type Address, isLocalhost, type Resolve, systemResolve } from "./http.ts";
import { RequestError } from "./libcurl.ts";

export type EgressPreset = "default" | "public";

export interface EgressPolicyOptions {
  preset?: EgressPreset;
  allow?: string[];
  deny?: string[];
  /** pgnet's own listeners that must never be a destination, e.g. the status server */
  self?: { host: string; port: number }[];
}

/** Why a destination is denied, and the rule that denied it, e.g. { reason: "link-local", rule: "169.254.0.0/16" } */
export interface Denial {
  reason: string;
  rule: string;
}

/** An IPv4 address is one unsigned 32-bit word, an IPv6 address four; a CIDR is then a mask and compare per word. */
type Words = number[];

type Target =
  | { kind: "address"; words: Words; prefix: number; port: number }
  | { kind: "name"; name: string; wildcard: boolean; port: number };

/** A parsed rule. `port` 0 means any port; `denial` is null for an allow. */
interface Rule {
  self: boolean;
  specificity: number;
  port: number;
  denial: Denial | null;
}
interface AddressRule extends Rule {
  net: Words;
  mask: Words;
}
interface NameRule extends Rule {
  /** the exact name, or ".example.com" for *.example.com */
  name: string;
  wildcard: boolean;
}

const ALWAYS: [string, string][] = [
  ["0.0.0.0/8", "unspecified"],
  ["::/128", "unspecified"],
  ["169.254.0.0/16", "link-local"],
  ["fe80::/10", "link-local"],
  ["224.0.0.0/4", "multicast"],
  ["ff00::/8", "multicast"],
  ["240.0.0.0/4", "reserved"],
  ["255.255.255.255/32", "broadcast"],
  ...[
    "169.254.169.254/32",
    "169.254.170.2/32",
    "100.100.100.200/32",
    "168.63.129.16/32",
    "fd00:ec2::254/128",
    "fd20:ce::254/128",
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
  ].map((entry): [string, string] => [entry, "cloud metadata"]),
];
const PUBLIC: [string, string][] = [
  ["127.0.0.0/8", "loopback"],
  ["::1/128", "loopback"],
  ["10.0.0.0/8", "private"],
  ["172.16.0.0/12", "private"],
  ["192.168.0.0/16", "private"],
  ["100.64.0.0/10", "shared address space"],
  ["fc00::/7", "unique local"],
];
const BUILT_IN: Record<EgressPreset, [string, string][]> = { default: ALWAYS, public: [...ALWAYS, ...PUBLIC] };

const SELF_REASON = "pgnet's own status server";
const ENTRY_HELP =
  "expected an IP address, a CIDR such as 10.0.0.0/8, a host name or *.suffix, each with an optional :port";
const PORT_HELP = "expected a port from 1 to 65535";
const BRACKETED = /^\[([^\]]+)\](?:\/(\d+))?(?::(\d+))?$/;
const BARE_IPV6 = /^([^/]+)(?:\/(\d+))?$/;
const HOST_OR_IPV4 = /^([^/:]+)(?:\/(\d+))?(?::(\d+))?$/;
const LABEL = /^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$/;
const NUMERIC_LABEL = /^(?:0x[0-9a-f]*|[0-9]+)$/;
const LIST_SEPARATOR = /[\s,]+/;
/** Above any suffix length (names are at most 253 characters): an exact name beats every *.suffix. */
const EXACT_NAME = 1000;

export class EgressPolicy {
  readonly #preset: EgressPreset;
  readonly #allow: string[];
  readonly #deny: string[];
  readonly #self: string[] = [];
  readonly #v4: AddressRule[] = [];
  readonly #v6: AddressRule[] = [];
  readonly #names: NameRule[] = [];

  constructor(options: EgressPolicyOptions = {}) {
    const preset = options.preset ?? "default";
    if (preset !== "default" && preset !== "public") {
      const message = `Invalid egress preset ${JSON.stringify(preset)}: expected "default" or "public"`;
      throw new PgnetError("INVALID_SETTING", message);
    }
    this.#preset = preset;
    this.#allow = [...(options.allow ?? [])];
    this.#deny = [...(options.deny ?? [])];
    for (const [entry, reason] of BUILT_IN[preset]) this.#add(parseEntry(entry, "built-in"), { reason, rule: entry });
    for (const entry of this.#allow) this.#add(parseEntry(entry, "egress allow"), null);
    for (const entry of this.#deny) {
      this.#add(parseEntry(entry, "egress deny"), { reason: "listed in the deny list", rule: entry });
    }
    for (const { host, port } of options.self ?? []) this.#addSelf(host, port);
    for (const rules of [this.#v4, this.#v6, this.#names]) rules.sort(bySpecificity);
  }

  /** Splits a comma- or whitespace-separated flag value into entries and validates each; `name` is the flag's. */
  static parseList(text: string, name: string): string[] {
    const entries = text.split(LIST_SEPARATOR).filter((entry) => entry !== "");
    for (const entry of entries) parseEntry(entry, name);
    return entries;
  }

  /** Judges a DNS name before resolution; null = no name rule objects. An IP literal is judged as an address. */
  checkName(hostname: string, port: number): Denial | null {
    const words = parseAddress(hostname);
    if (words) return this.#judge(words, port);
    const name = normaliseName(hostname);
    for (const rule of this.#names) {
      if (rule.port !== 0 && rule.port !== port) continue;
      if (rule.wildcard ? name.length > rule.name.length && name.endsWith(rule.name) : name === rule.name) {
        return rule.denial;
      }
    }
    return null;
  }

  /** Judges one address about to be connected to (resolved, or an IP literal from the URL). */
  checkAddress(address: string, port: number): Denial | null {
    const words = parseAddress(address);
    return words ? this.#judge(words, port) : { reason: "not an IP address", rule: address };
  }

  /** What /status and the start-up log line show. */
  describe(): { preset: EgressPreset; allow: string[]; deny: string[]; self: string[] } {
    return { preset: this.#preset, allow: [...this.#allow], deny: [...this.#deny], self: [...this.#self] };
  }

  #judge(words: Words, port: number): Denial | null {
    if (words.length === 1) return firstMatch(this.#v4, words, port);
    const v6 = firstMatch(this.#v6, words, port);
    if (v6) return v6;
    const v4 = embeddedIPv4(words);
    return v4 === null ? null : firstMatch(this.#v4, [v4], port);
  }

  #add(target: Target, denial: Denial | null, self = false): void {
    const rule = { self, port: target.port, denial: denial && Object.freeze(denial) };
    if (target.kind === "name") {
      const specificity = target.wildcard ? target.name.length : EXACT_NAME;
      this.#names.push({ ...rule, specificity, name: target.name, wildcard: target.wildcard });
    } else {
      const { words, prefix } = target;
      const into = words.length === 1 ? this.#v4 : this.#v6;
      into.push({ ...rule, specificity: prefix, net: words, mask: masks(prefix, words.length) });
    }
  }

  #addSelf(host: string, port: number): void {
    const words = parseAddress(host);
    const shown = `${words && words.length === 4 ? `[${formatAddress(words)}]` : host || "*"}:${port}`;
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw invalid("egress self", shown, PORT_HELP);
    this.#self.push(shown);
    const denial = { reason: SELF_REASON, rule: shown };
    const address = (words: Words, prefix: number): Target => ({ kind: "address", words, prefix, port });
    if (host === "" || words?.every((word) => word === 0)) {
      this.#add(address([0], 0), denial, true);
      this.#add(address([0, 0, 0, 0], 0), denial, true);
    } else if (words) {
      this.#add(address(words, words.length * 32), denial, true);
    } else if (normaliseName(host) === "localhost") {
      this.#add(address([0x7f000000], 8), denial, true);
      this.#add(address([0, 0, 0, 1], 128), denial, true);
    } else {
      const name = parseName(host);
      if (!name) throw invalid("egress self", shown, "expected an IP address or a host name");
      this.#add({ kind: "name", ...name, port }, denial, true);
    }
  }
}

/**
 * A resolver that enforces the policy: the name is judged first, then resolved once, then every address it
 * resolved to is judged; only checked addresses are returned, and the HTTP client connects to one of those, so
 * a name that answers differently the next time it is asked gets no second chance. A refusal is the request's
 * error, before any packet is sent.
 */
export function guardedResolve(policy: EgressPolicy, resolve: Resolve): Resolve {
  return async (hostname: string, port: number): Promise<Address[]> => {
    const byName = policy.checkName(hostname, port);
    if (byName) throw new RequestError(denialMessage(hostname, byName));
    const addresses = await resolve(hostname, port);
    for (const { address } of addresses) {
      const denial = policy.checkAddress(address, port);
      if (denial) {
        throw new RequestError(denialMessage(address === hostname ? address : `${hostname} (${address})`, denial));
      }
    }
    return addresses;
  };
}

/**
 * The check when requests go through a proxy (--proxy), which resolves names itself: the name is judged, and so
 * is the address when the URL holds one or names localhost (loopback by definition), but an ordinary name is not
 * resolved, so its addresses are the proxy's to judge. Resolves with the addresses checked, or none.
 */
export function proxiedCheck(policy: EgressPolicy): Resolve {
  const literal = guardedResolve(policy, systemResolve);
  return async (hostname: string, port: number): Promise<Address[]> => {
    if (isIP(hostname) !== 0 || isLocalhost(hostname)) return await literal(hostname, port);
    const byName = policy.checkName(hostname, port);
    if (byName) throw new RequestError(denialMessage(hostname, byName));
    return [];
  };
}

/** Canonical text of an IP address in any form the policy accepts, or null if `text` is not an IP address. */
export function canonicalAddress(text: string): string | null {
  const words = parseAddress(text);
  return words && formatAddress(words);
}

/** The message stored as the request's error. */
export function denialMessage(destination: string, denial: Denial): string {
  return `Destination ${destination} is denied by pgnet's egress policy (${denial.reason})`;
}

// Self rules first, then specificity, then a port over none, then a deny over an allow: the first match decides.
// Policies hold tens of rules, so a scan of the sorted list is enough: with the public preset plus 22 entries,
// checkAddress took 0.3 µs for IPv4, 0.4 µs for IPv6 and 1.1 µs for ::ffff:a.b.c.d, checkName 0.1 µs (Bun 1.4.5).
function bySpecificity(a: Rule, b: Rule): number {
  return +b.self - +a.self || b.specificity - a.specificity || +(b.port > 0) - +(a.port > 0) ||
    +(b.denial !== null) - +(a.denial !== null);
}

function firstMatch(rules: AddressRule[], words: Words, port: number): Denial | null {
  next: for (const rule of rules) {
    if (rule.port !== 0 && rule.port !== port) continue;
    for (let i = 0; i < words.length; i++) if (((words[i]! & rule.mask[i]!) >>> 0) !== rule.net[i]) continue next;
    return rule.denial;
  }
  return null;
}

function masks(prefix: number, length: number): Words {
  return Array.from({ length }, (_, i) => {
    const bits = Math.min(32, Math.max(0, prefix - 32 * i));
    return bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
  });
}

/** The IPv4 address inside an IPv4-mapped, IPv4-compatible, NAT64 or 6to4 IPv6 address, else null. */
function embeddedIPv4([a, b, c, d]: Words): number | null {
  if (a === 0 && b === 0 && (c === 0xffff || (c === 0 && d! > 1))) return d!;
  if (a === 0x64ff9b && ((b === 0 && c === 0) || b! >>> 16 === 1)) return d!;
  if (a! >>> 16 === 0x2002) return (a! & 0xffff) * 0x10000 + (b! >>> 16);
  return null;
}

function invalid(name: string, entry: string, expected: string): PgnetError {
  return new PgnetError("INVALID_SETTING", `Invalid ${name} entry ${JSON.stringify(entry)}: ${expected}`);
}

function parseEntry(entry: string, name: string): Target {
  const match = entry.startsWith("[")
    ? BRACKETED.exec(entry)
    : entry.indexOf(":") !== entry.lastIndexOf(":")
    ? BARE_IPV6.exec(entry)
    : HOST_OR_IPV4.exec(entry);
  if (!match) throw invalid(name, entry, ENTRY_HELP);
  const [, host = "", prefixText, portText] = match;
  const port = portText === undefined ? 0 : Number(portText);
  if (portText !== undefined && !(port >= 1 && port <= 65535)) throw invalid(name, entry, PORT_HELP);
  const words = parseAddress(entry.startsWith("[") ? `[${host}]` : host);
  if (!words) {
    const parsed = prefixText === undefined && !entry.startsWith("[") && parseName(host);
    if (!parsed) throw invalid(name, entry, ENTRY_HELP);
    return { kind: "name", ...parsed, port };
  }
  const prefix = prefixText === undefined ? words.length * 32 : Number(prefixText);
  if (prefix > words.length * 32) throw invalid(name, entry, ENTRY_HELP);
  const mask = masks(prefix, words.length);
  const network = words.map((word, i) => (word & mask[i]!) >>> 0);
  if (network.some((word, i) => word !== words[i])) {
    const expected = `${formatAddress(network)}/${prefix}`;
    throw invalid(name, entry, `host bits are set beyond the /${prefix} prefix, expected ${JSON.stringify(expected)}`);
  }
  return { kind: "address", words, prefix, port };
}

function normaliseName(hostname: string): string {
  const name = hostname.toLowerCase();
  return name.endsWith(".") ? name.slice(0, -1) : name;
}

/** A host name or *.suffix entry; a name whose last label is a number would be read as an IPv4 address, so none. */
function parseName(text: string): { name: string; wildcard: boolean } | null {
  const wildcard = text.startsWith("*.");
  const name = normaliseName(wildcard ? text.slice(2) : text);
  const labels = name.split(".");
  const valid = name.length <= 253 && labels.every((label) => LABEL.test(label)) && !NUMERIC_LABEL.test(labels.at(-1)!);
  return valid ? { name: wildcard ? `.${name}` : name, wildcard } : null;
}

/** IPv4 (any inet_aton form) or IPv6 (brackets and zone id allowed) as words, or null. */
function parseAddress(text: string): Words | null {
  if (text.includes(":")) return parseIPv6(text);
  const v4 = parseIPv4(text, false);
  return Number.isNaN(v4) ? null : [v4];
}

/**
 * inet_aton: one to four parts, each decimal, octal (leading 0) or hex (0x); the last part fills the remaining
 * bytes (127.1 is 127.0.0.1). A trailing dot is allowed, as the URL parser allows it. `strict` is the dotted quad
 * inside an IPv6 address: four decimal parts. Returns NaN when `text` is not an address.
 */
function parseIPv4(text: string, strict: boolean): number {
  const parts = text.split(".");
  if (!strict && parts.length > 1 && parts.at(-1) === "") parts.pop();
  if (parts.length > 4 || (strict && parts.length !== 4)) return NaN;
  let value = 0;
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i]!;
    const last = i === parts.length - 1;
    const limit = last ? 256 ** (5 - parts.length) : 256;
    const n = strict
      ? parseDigits(part, 0, 10)
      : part.length > 1 && part[0] === "0"
      ? part[1] === "x" || part[1] === "X" ? parseDigits(part, 2, 16) : parseDigits(part, 1, 8)
      : parseDigits(part, 0, 10);
    if (!(n < limit) || part === "") return NaN;
    value = value * (last ? limit : 256) + n;
  }
  return value;
}

/** The number written in text[start..] in `radix`, or NaN on any other character. "0x" alone is 0, as in inet_aton. */
function parseDigits(text: string, start: number, radix: number): number {
  let n = 0;
  for (let i = start; i < text.length; i++) {
    const c = text.charCodeAt(i);
    const letter = c | 0x20; // a-f from A-F too
    const digit = c >= 0x30 && c <= 0x39 ? c - 0x30 : letter >= 0x61 && letter <= 0x66 ? letter - 0x61 + 10 : radix;
    if (digit >= radix) return NaN;
    n = n * radix + digit;
  }
  return n;
}

function parseIPv6(text: string): Words | null {
  if (text.startsWith("[")) {
    if (!text.endsWith("]")) return null;
    text = text.slice(1, -1);
  }
  const zone = text.indexOf("%");
  if (zone >= 0) {
    if (zone === text.length - 1) return null;
    text = text.slice(0, zone);
  }
  const halves = text.split("::");
  if (halves.length > 2) return null;
  const head = parseGroups(halves[0]!, halves.length === 1);
  const tail = halves.length === 2 ? parseGroups(halves[1]!, true) : [];
  if (!head || !tail) return null;
  const missing = 8 - head.length - tail.length;
  if (halves.length === 1 ? missing !== 0 : missing < 1) return null;
  const groups = [...head, ...Array<number>(missing).fill(0), ...tail];
  return [0, 1, 2, 3].map((i) => groups[2 * i]! * 0x10000 + groups[2 * i + 1]!);
}

/** Colon-separated 16-bit groups; the last one may be a dotted quad (two groups) when `last`. */
function parseGroups(text: string, last: boolean): number[] | null {
  if (text === "") return [];
  const parts = text.split(":");
  const groups: number[] = [];
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i]!;
    if (last && i === parts.length - 1 && part.includes(".")) {
      const v4 = parseIPv4(part, true);
      if (Number.isNaN(v4)) return null;
      groups.push(v4 >>> 16, v4 & 0xffff);
      continue;
    }
    const group = part.length >= 1 && part.length <= 4 ? parseDigits(part, 0, 16) : NaN;
    if (Number.isNaN(group)) return null;
    groups.push(group);
  }
  return groups;
}

function formatIPv4(word: number): string {
  return `${word >>> 24}.${(word >>> 16) & 255}.${(word >>> 8) & 255}.${word & 255}`;
}

/** RFC 5952 text: lower case, the longest run of two or more zero groups as "::", IPv4-mapped as ::ffff:a.b.c.d. */
function formatAddress(words: Words): string {
  if (words.length === 1) return formatIPv4(words[0]!);
  if (words[0] === 0 && words[1] === 0 && words[2] === 0xffff) return `::ffff:${formatIPv4(words[3]!)}`;
  const groups = words.flatMap((word) => [word >>> 16, word & 0xffff]);
  let best = -1;
  let bestLength = 1;
  for (let i = 0, j = 0; i < 8; i = Math.max(j, i + 1)) {
    for (j = i; j < 8 && groups[j] === 0; j++);
    if (j - i > bestLength) [best, bestLength] = [i, j - i];
  }
  const hex = groups.map((group) => group.toString(16));
  if (best < 0) return hex.join(":");
  return `${hex.slice(0, best).join(":")}::${hex.slice(best + bestLength).join(":")}`;
}
