// Egress policy: address normalisation, built-in and preset rules, precedence, name rules, self rules, bad entries.

import { expect, test } from "bun:test";
import { canonicalAddress, denialMessage, EgressPolicy } from "../src/egress.ts";
import { PgnetError } from "../src/errors.ts";

const defaults = new EgressPolicy();
const publicOnly = new EgressPolicy({ preset: "public" });

/** The reason `policy` denies `address` on port 80, or null when it is allowed. */
function reason(policy: EgressPolicy, address: string, port = 80): string | null {
  return policy.checkAddress(address, port)?.reason ?? null;
}

test("every numeric IPv4 form of 127.0.0.1 and 169.254.169.254 normalises to dotted decimal", () => {
  for (const form of ["2130706433", "0x7f.1", "0177.1", "0x7f000001", "127.1", "0177.0.0.1", "127.0.0.1."]) {
    expect(canonicalAddress(form)).toBe("127.0.0.1");
  }
  for (const form of ["2852039166", "0xa9.0xfe.0xa9.0xfe", "0xA9FEA9FE", "0251.0376.0251.0376", "169.254.43518"]) {
    expect(canonicalAddress(form)).toBe("169.254.169.254");
    expect(defaults.checkAddress(form, 80)).toEqual({ reason: "cloud metadata", rule: "169.254.169.254/32" });
  }
});

test("strings that are not IP addresses have no canonical form and are denied by checkAddress", () => {
  for (const text of ["example.com", "1..2", "08", "256.0.0.1", "1.2.3.4.5", "1:2:3:4:5:6:7:8:9", "1::2::3", ""]) {
    expect(canonicalAddress(text)).toBeNull();
  }
  expect(defaults.checkAddress("example.com", 80)).toEqual({ reason: "not an IP address", rule: "example.com" });
});

test("IPv6 normalises to RFC 5952 text, without brackets or zone id", () => {
  expect(canonicalAddress("[::ffff:169.254.169.254]")).toBe("::ffff:169.254.169.254");
  expect(canonicalAddress("::ffff:a9fe:a9fe")).toBe("::ffff:169.254.169.254");
  expect(canonicalAddress("fe80::1%eth0")).toBe("fe80::1");
  expect(canonicalAddress("[FD00:EC2:0:0:0:0:0:254]")).toBe("fd00:ec2::254");
  expect(canonicalAddress("1:0:0:2:0:0:0:3")).toBe("1:0:0:2::3");
  expect(canonicalAddress("0:0:0:0:0:0:0:0")).toBe("::");
});

test("IPv6 addresses that embed 169.254.169.254 are denied as cloud metadata", () => {
  for (
    const form of [
      "[::ffff:169.254.169.254]",
      "::ffff:a9fe:a9fe",
      "::a9fe:a9fe",
      "64:ff9b::a9fe:a9fe",
      "64:ff9b:1::a9fe:a9fe",
      "2002:a9fe:a9fe::1",
      "::FFFF:A9FE:A9FE",
    ]
  ) {
    expect(reason(defaults, form)).toBe("cloud metadata");
  }
  expect(reason(defaults, "64:ff9b::8.8.8.8")).toBeNull();
});

test("built-in rules deny unspecified, link-local, multicast, reserved and cloud metadata addresses", () => {
  expect(reason(defaults, "::")).toBe("unspecified");
  expect(reason(defaults, "0.0.0.0")).toBe("unspecified");
  expect(reason(defaults, "[::]")).toBe("unspecified");
  expect(reason(defaults, "fe80::1%eth0")).toBe("link-local");
  expect(reason(defaults, "169.254.1.1")).toBe("link-local");
  expect(reason(defaults, "169.254.170.2")).toBe("cloud metadata");
  expect(reason(defaults, "[fd00:ec2::254]")).toBe("cloud metadata");
  expect(reason(defaults, "FD20:CE::254")).toBe("cloud metadata");
  expect(reason(defaults, "100.100.100.200")).toBe("cloud metadata");
  expect(reason(defaults, "168.63.129.16")).toBe("cloud metadata");
  expect(reason(defaults, "239.1.2.3")).toBe("multicast");
  expect(reason(defaults, "ff02::1")).toBe("multicast");
  expect(reason(defaults, "240.0.0.1")).toBe("reserved");
  expect(reason(defaults, "255.255.255.255")).toBe("broadcast");
});

test("the default preset allows loopback, RFC 1918, unique local and public addresses", () => {
  for (
    const address of [
      "127.0.0.1",
      "::1",
      "10.1.2.3",
      "172.16.0.1",
      "192.168.1.1",
      "100.64.0.1",
      "fd12::1",
      "8.8.8.8",
      "2606:4700::1111",
      "::ffff:127.0.0.1",
    ]
  ) {
    expect(reason(defaults, address)).toBeNull();
  }
});

test("the public preset denies loopback, private, shared and unique local addresses, also in mapped forms", () => {
  const expected: [string, string][] = [
    ["127.0.0.1", "loopback"],
    ["2130706433", "loopback"],
    ["::1", "loopback"],
    ["[::ffff:127.0.0.1]", "loopback"],
    ["10.1.2.3", "private"],
    ["::ffff:10.1.2.3", "private"],
    ["172.31.255.255", "private"],
    ["192.168.0.1", "private"],
    ["64:ff9b::192.168.0.1", "private"],
    ["2002:c0a8:1::", "private"],
    ["100.127.0.1", "shared address space"],
    ["fc00::1", "unique local"],
    ["fdff::1", "unique local"],
  ];
  for (const [address, why] of expected) expect([address, reason(publicOnly, address)]).toEqual([address, why]);
  for (const address of ["172.32.0.1", "100.128.0.1", "8.8.8.8", "fe00::1"]) {
    expect(reason(publicOnly, address)).toBeNull();
  }
});

test("::1 and :: are not read as IPv4-compatible addresses", () => {
  expect(reason(defaults, "::1")).toBeNull();
  expect(defaults.checkAddress("::", 80)?.rule).toBe("::/128");
});

test("allowing one port opens only that port", () => {
  const policy = new EgressPolicy({ preset: "public", allow: ["127.0.0.1:8080", "[::1]:8080", "10.0.0.0/8:443"] });
  expect(reason(policy, "127.0.0.1", 8080)).toBeNull();
  expect(reason(policy, "127.0.0.1", 8081)).toBe("loopback");
  expect(reason(policy, "127.0.0.2", 8080)).toBe("loopback");
  expect(reason(policy, "::1", 8080)).toBeNull();
  expect(reason(policy, "::1", 80)).toBe("loopback");
  expect(reason(policy, "10.9.9.9", 443)).toBeNull();
  expect(reason(policy, "10.9.9.9", 80)).toBe("private");
});

test("a more specific allow reopens part of a built-in deny, but not the metadata addresses inside it", () => {
  const policy = new EgressPolicy({ allow: ["169.254.0.0/16"] });
  expect(reason(policy, "169.254.1.1")).toBe("link-local");
  const narrower = new EgressPolicy({ allow: ["169.254.10.0/24", "[fc00::]/7:443"], preset: "public" });
  expect(reason(narrower, "169.254.10.7")).toBeNull();
  expect(reason(narrower, "169.254.11.7")).toBe("link-local");
  expect(reason(narrower, "fd00::5", 443)).toBeNull();
  expect(reason(narrower, "fd00:ec2::254", 443)).toBe("cloud metadata");
  expect(reason(new EgressPolicy({ allow: ["169.254.169.254"] }), "169.254.169.254")).toBe("cloud metadata");
  expect(reason(new EgressPolicy({ allow: ["169.254.169.254:80"] }), "169.254.169.254")).toBeNull();
});

test("a deny beats an allow of equal specificity, and the most specific rule wins", () => {
  const policy = new EgressPolicy({ allow: ["10.0.0.0/8", "10.1.0.0/16"], deny: ["10.0.0.0/8", "10.1.2.0/24"] });
  expect(policy.checkAddress("10.9.9.9", 80)).toEqual({ reason: "listed in the deny list", rule: "10.0.0.0/8" });
  expect(reason(policy, "10.1.9.9")).toBeNull();
  expect(reason(policy, "10.1.2.3")).toBe("listed in the deny list");
  const ports = new EgressPolicy({ deny: ["10.0.0.0/8"], allow: ["10.0.0.0/8:443"] });
  expect(reason(ports, "10.0.0.1", 443)).toBeNull();
  expect(reason(ports, "10.0.0.1", 80)).toBe("listed in the deny list");
});

test("an IPv6 allow does not open the IPv4 address it embeds", () => {
  const policy = new EgressPolicy({ preset: "public", allow: ["::ffff:0:0/96", "2002::/16"] });
  expect(reason(policy, "::ffff:127.0.0.1")).toBe("loopback");
  expect(reason(policy, "2002:a9fe:a9fe::1")).toBe("cloud metadata");
  expect(reason(policy, "::ffff:8.8.8.8")).toBeNull();
});

test("name rules match exact names and names below a suffix, in any case, with a trailing dot and a port", () => {
  const policy = new EgressPolicy({ deny: ["Blocked.Example", "*.internal.example", "api.example:8443"] });
  const denial = { reason: "listed in the deny list", rule: "Blocked.Example" };
  expect(policy.checkName("blocked.example", 80)).toEqual(denial);
  expect(policy.checkName("BLOCKED.EXAMPLE.", 80)?.rule).toBe("Blocked.Example");
  expect(policy.checkName("sub.blocked.example", 80)).toBeNull();
  expect(policy.checkName("db.internal.example", 80)?.rule).toBe("*.internal.example");
  expect(policy.checkName("a.b.Internal.Example.", 80)?.rule).toBe("*.internal.example");
  expect(policy.checkName("internal.example", 80)).toBeNull();
  expect(policy.checkName("xinternal.example", 80)).toBeNull();
  expect(policy.checkName("api.example", 8443)?.rule).toBe("api.example:8443");
  expect(policy.checkName("api.example", 443)).toBeNull();
});

test("the most specific name rule wins: exact over suffix, longer suffix over shorter, port over none", () => {
  const policy = new EgressPolicy({
    deny: ["*.example", "*.api.internal.example", "web.example"],
    allow: ["*.internal.example", "api.internal.example", "web.example:443"],
  });
  expect(policy.checkName("api.internal.example", 80)).toBeNull();
  expect(policy.checkName("db.internal.example", 80)).toBeNull();
  expect(policy.checkName("v1.api.internal.example", 80)?.rule).toBe("*.api.internal.example");
  expect(policy.checkName("other.example", 80)?.rule).toBe("*.example");
  expect(policy.checkName("web.example", 443)).toBeNull();
  expect(policy.checkName("web.example", 80)?.rule).toBe("web.example");
});

test("metadata names are denied in every preset, exactly", () => {
  for (const policy of [defaults, publicOnly]) {
    for (const name of ["metadata.google.internal", "METADATA.GOOGLE.INTERNAL.", "metadata.goog", "metadata"]) {
      expect(policy.checkName(name, 80)?.reason).toBe("cloud metadata");
    }
    expect(policy.checkName("metadata.example.com", 80)).toBeNull();
    expect(policy.checkName("x.metadata.goog", 80)).toBeNull();
  }
});

test("a name allow never opens an address", () => {
  const policy = new EgressPolicy({ preset: "public", deny: ["*.internal.example"], allow: ["db.internal.example"] });
  expect(policy.checkName("db.internal.example", 5432)).toBeNull();
  expect(reason(policy, "10.0.0.5", 5432)).toBe("private");
});

test("checkName judges an IP literal as an address", () => {
  expect(defaults.checkName("[::ffff:169.254.169.254]", 80)?.reason).toBe("cloud metadata");
  expect(publicOnly.checkName("0x7f.1", 80)?.reason).toBe("loopback");
  expect(defaults.checkName("8.8.8.8", 80)).toBeNull();
});

test("a listener on every interface is denied on its port at every address, whatever is allowed", () => {
  const allow = ["127.0.0.1:8787", "0.0.0.0/0:8787", "[::1]:8787", "::/0"];
  for (const host of ["0.0.0.0", "::", ""]) {
    const policy = new EgressPolicy({ allow, self: [{ host, port: 8787 }] });
    for (const address of ["127.0.0.1", "10.1.2.3", "::1", "::ffff:127.0.0.1", "2606:4700::1111"]) {
      expect(policy.checkAddress(address, 8787)?.reason).toBe("pgnet's own status server");
    }
    expect(reason(policy, "127.0.0.1", 8788)).toBeNull();
  }
});

test("a listener on localhost, an address or a name is denied there on its port", () => {
  const policy = new EgressPolicy({
    allow: ["127.0.0.0/8:9000", "10.0.0.7:9001"],
    self: [{ host: "localhost", port: 9000 }, { host: "10.0.0.7", port: 9001 }, { host: "pgnet.internal", port: 9002 }],
  });
  const denial = { reason: "pgnet's own status server", rule: "localhost:9000" };
  expect(policy.checkAddress("127.0.0.5", 9000)).toEqual(denial);
  expect(reason(policy, "::1", 9000)).toBe("pgnet's own status server");
  expect(reason(policy, "10.0.0.1", 9000)).toBeNull();
  expect(reason(policy, "::ffff:10.0.0.7", 9001)).toBe("pgnet's own status server");
  expect(reason(policy, "10.0.0.8", 9001)).toBeNull();
  expect(policy.checkName("PGNET.internal.", 9002)?.reason).toBe("pgnet's own status server");
  expect(policy.checkName("pgnet.internal", 9003)).toBeNull();
});

test("bad entries raise messages naming the setting, quoting the entry and saying what was expected", () => {
  const help =
    "expected an IP address, a CIDR such as 10.0.0.0/8, a host name or *.suffix, each with an optional :port";
  expect(() => EgressPolicy.parseList("10.0.0.0/33", "--egress-allow")).toThrow(
    `Invalid --egress-allow entry "10.0.0.0/33": ${help}`,
  );
  expect(() => EgressPolicy.parseList("10.0.0.1/8", "--egress-deny")).toThrow(
    'Invalid --egress-deny entry "10.0.0.1/8": host bits are set beyond the /8 prefix, expected "10.0.0.0/8"',
  );
  expect(() => EgressPolicy.parseList("fc00::1/7", "--egress-deny")).toThrow('expected "fc00::/7"');
  for (const port of ["example.com:0", "[::1]:65536", "10.0.0.0/8:99999"]) {
    expect(() => EgressPolicy.parseList(port, "--egress-allow")).toThrow(
      `Invalid --egress-allow entry ${JSON.stringify(port)}: expected a port from 1 to 65535`,
    );
  }
  for (
    const bad of [
      "fd00::1::2",
      "[10.0.0.1]",
      "*.",
      "exa$mple.com",
      "http://example.com",
      "-x.example",
      "1.2.3.256",
      "example.com/24",
      "[fd00::1",
      "::1:8080:",
    ]
  ) {
    const message = `Invalid --egress-deny entry ${JSON.stringify(bad)}`;
    expect(() => EgressPolicy.parseList(bad, "--egress-deny")).toThrow(message);
  }
  const thrown = (() => {
    try {
      new EgressPolicy({ allow: ["nope/1"] });
    } catch (error) {
      return error;
    }
  })();
  expect(thrown).toBeInstanceOf(PgnetError);
  expect((thrown as PgnetError).code).toBe("INVALID_SETTING");
  expect(() => new EgressPolicy({ self: [{ host: "localhost", port: 0 }] })).toThrow('"localhost:0"');
  expect(() => new EgressPolicy({ preset: "strict" as "public" })).toThrow('Invalid egress preset "strict"');
});

test("every entry form is accepted", () => {
  const entries = [
    "10.1.2.3",
    "10.0.0.0/8",
    "10.1.2.3:80",
    "10.0.0.0/8:443",
    "fd00::1",
    "[fd00::1]",
    "fc00::/7",
    "[fc00::]/7",
    "[::1]:8080",
    "[fc00::]/7:443",
    "metadata.google.internal",
    "Example.COM.",
    "example.com:443",
    "*.example.com",
    "*.example.com:443",
    "under_score.example",
    "0.0.0.0/0",
    "::/0",
  ];
  expect(EgressPolicy.parseList(entries.join(","), "--egress-allow")).toEqual(entries);
});

test("parseList splits on commas and whitespace and drops empty entries", () => {
  expect(EgressPolicy.parseList(" 10.0.0.0/8, *.example.com\n[::1]:8080,,\tmetadata ", "--egress-deny")).toEqual(
    ["10.0.0.0/8", "*.example.com", "[::1]:8080", "metadata"],
  );
  expect(EgressPolicy.parseList("", "--egress-deny")).toEqual([]);
  expect(EgressPolicy.parseList(" , ", "--egress-deny")).toEqual([]);
});

test("describe() shows the preset, the entries as given and the self listeners", () => {
  const policy = new EgressPolicy({
    preset: "public",
    allow: ["127.0.0.1:8080", "Api.Example"],
    deny: ["*.internal.example"],
    self: [{ host: "0.0.0.0", port: 8787 }, { host: "", port: 8788 }, { host: "::1", port: 8789 }],
  });
  expect(policy.describe()).toEqual({
    preset: "public",
    allow: ["127.0.0.1:8080", "Api.Example"],
    deny: ["*.internal.example"],
    self: ["0.0.0.0:8787", "*:8788", "[::1]:8789"],
  });
  expect(defaults.describe()).toEqual({ preset: "default", allow: [], deny: [], self: [] });
});

test("denialMessage names the destination and the reason", () => {
  const denial = defaults.checkAddress("169.254.169.254", 80)!;
  expect(denialMessage("169.254.169.254", denial)).toBe(
    "Destination 169.254.169.254 is denied by pgnet's egress policy (cloud metadata)",
  );
});
