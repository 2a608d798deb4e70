// The egress policy in the HTTP layer: every bypass of the issue ends in a policy error and no connection, on the
// first request and at every redirect hop. Loopback fixtures stand in for denied ranges (`public` denies
// loopback); addresses such as 169.254.169.254 are refused before any packet is sent.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { EgressPolicy, type EgressPolicyOptions, guardedResolve } from "../src/egress.ts";
import { type Address, createAgents, performRequest, type Resolve, systemResolve } from "../src/http.ts";
import { Fixture, header } from "./helpers/fixture.ts";
import { type Certificates, makeCertificates } from "./helpers/tls.ts";

let fixture: Fixture;
let other: Fixture;
let nextId = 1;

beforeAll(async () => {
  fixture = await Fixture.start("127.0.0.1");
  other = await Fixture.start("127.0.0.1");
});
afterAll(async () => {
  await fixture.stop();
  await other.stop();
});

/** A resolver that answers from a table (and counts its calls), for names that do not exist. */
function fakeResolver(answers: Record<string, string[][]>): Resolve & { calls: string[] } {
  const calls: string[] = [];
  const resolve = (async (hostname: string, port: number): Promise<Address[]> => {
    calls.push(hostname);
    const queue = answers[hostname];
    if (!queue) return await systemResolve(hostname, port);
    const next = queue.length > 1 ? queue.shift()! : queue[0]!;
    return next.map((address) => ({ address, family: address.includes(":") ? 6 : 4 }));
  }) as Resolve & { calls: string[] };
  resolve.calls = calls;
  return resolve;
}

async function run(url: string, policy: EgressPolicyOptions = {}, resolve: Resolve = systemResolve, extra = {}) {
  const id = `egress-${nextId++}`;
  const row = await performRequest(
    { id, method: "GET", url, headers: {}, body: null, timeoutMs: 3000 },
    { maxResponseBytes: 1 << 20, resolve: guardedResolve(new EgressPolicy(policy), resolve), ...extra },
  );
  return { row, id };
}

function seen(id: string, on: Fixture = fixture) {
  return on.requests.filter((r) => header(r, "X-Pgnet-Request-Id").includes(id));
}

describe("denied destinations", () => {
  const metadata: [string, string][] = [
    [
      "http://169.254.169.254/latest/meta-data/",
      "Destination 169.254.169.254 is denied by pgnet's egress policy (cloud metadata)",
    ],
    [
      "http://169.254.170.2/v2/credentials",
      "Destination 169.254.170.2 is denied by pgnet's egress policy (cloud metadata)",
    ],
    [
      "http://100.100.100.200/latest/meta-data/",
      "Destination 100.100.100.200 is denied by pgnet's egress policy (cloud metadata)",
    ],
    [
      "http://[fd00:ec2::254]/latest/meta-data/",
      "Destination fd00:ec2::254 is denied by pgnet's egress policy (cloud metadata)",
    ],
    ["http://2852039166/", "Destination 169.254.169.254 is denied by pgnet's egress policy (cloud metadata)"],
    ["http://0xa9.0xfe.0xa9.0xfe/", "Destination 169.254.169.254 is denied by pgnet's egress policy (cloud metadata)"],
    [
      "http://[::ffff:169.254.169.254]/",
      "Destination ::ffff:a9fe:a9fe is denied by pgnet's egress policy (cloud metadata)",
    ],
    ["http://169.254.1.1/", "Destination 169.254.1.1 is denied by pgnet's egress policy (link-local)"],
    ["http://0.0.0.0:80/", "Destination 0.0.0.0 is denied by pgnet's egress policy (unspecified)"],
    ["http://[::]/", "Destination :: is denied by pgnet's egress policy (unspecified)"],
    ["http://224.0.0.1/", "Destination 224.0.0.1 is denied by pgnet's egress policy (multicast)"],
  ];
  for (const [url, message] of metadata) {
    test(`${url} is refused by default, naming the policy`, async () => {
      const { row } = await run(url);
      expect([row.status_code, row.error_msg, row.timed_out]).toEqual([null, message, false]);
    });
  }

  test("metadata.google.internal is refused by name, before it is even resolved", async () => {
    const resolve = fakeResolver({ "metadata.google.internal": [["127.0.0.1"]] });
    const { row } = await run(`http://metadata.google.internal:${fixture.port}/computeMetadata/v1/`, {}, resolve);
    expect(row.error_msg).toBe(
      "Destination metadata.google.internal is denied by pgnet's egress policy (cloud metadata)",
    );
    expect(resolve.calls).toEqual([]);
  });

  test("a name that resolves to a denied address is refused", async () => {
    const resolve = fakeResolver({ "evil.test": [["169.254.169.254"]] });
    const { row } = await run("http://evil.test/", {}, resolve);
    expect(row.error_msg).toBe(
      "Destination evil.test (169.254.169.254) is denied by pgnet's egress policy (cloud metadata)",
    );
  });

  test("a name is resolved once: answering an allowed address first and a denied one next gets no second chance", async () => {
    const resolve = fakeResolver({ "flip.test": [["127.0.0.1"], ["169.254.169.254"]] });
    const { row, id } = await run(`http://flip.test:${fixture.port}/echo`, {}, resolve);
    expect(row.status_code).toBe(200);
    expect(resolve.calls).toEqual(["flip.test"]); // checked and connected with the same answer
    expect(header(seen(id)[0]!, "Host")).toEqual([`flip.test:${fixture.port}`]);
    // and the other way round: a denied first answer is never followed by a connection
    const denied = fakeResolver({ "flop.test": [["169.254.169.254"], ["127.0.0.1"]] });
    const second = await run(`http://flop.test:${fixture.port}/echo`, {}, denied);
    expect(second.row.error_msg).toContain("is denied by pgnet's egress policy");
    expect(seen(second.id)).toHaveLength(0);
    expect(denied.calls).toEqual(["flop.test"]);
  });

  test("every numeric form of a loopback address is denied under --egress public, and nothing connects", async () => {
    const port = fixture.port;
    for (
      const host of ["127.0.0.1", "2130706433", "0x7f.1", "0177.0.0.1", "127.1", "[::ffff:127.0.0.1]", "localhost"]
    ) {
      const { row, id } = await run(`http://${host}:${port}/echo`, { preset: "public" });
      expect({ host, message: row.error_msg }).toEqual({
        host,
        message: expect.stringMatching(/is denied by pgnet's egress policy \(loopback\)$/),
      });
      expect(seen(id)).toHaveLength(0);
    }
  });

  test("an allow entry opens one port of a denied range, and only that port", async () => {
    const policy: EgressPolicyOptions = { preset: "public", allow: [`127.0.0.1:${fixture.port}`] };
    expect((await run(fixture.url("/echo"), policy)).row.status_code).toBe(200);
    const { row, id } = await run(other.url("/echo"), policy);
    expect(row.error_msg).toBe("Destination 127.0.0.1 is denied by pgnet's egress policy (loopback)");
    expect(seen(id, other)).toHaveLength(0);
  });

  test("a redirect from an allowed server into a denied address is refused at that hop", async () => {
    const policy: EgressPolicyOptions = { preset: "public", allow: [`127.0.0.1:${fixture.port}`] };
    const to = encodeURIComponent(other.url("/echo"));
    const { row, id } = await run(fixture.url(`/redirect/302?to=${to}`), policy);
    expect(row.error_msg).toBe("Destination 127.0.0.1 is denied by pgnet's egress policy (loopback)");
    expect(seen(id)).toHaveLength(1);
    expect(seen(id, other)).toHaveLength(0);
    const meta = await run(fixture.url(`/redirect/307?to=${encodeURIComponent("http://169.254.169.254/")}`));
    expect(meta.row.error_msg).toBe("Destination 169.254.169.254 is denied by pgnet's egress policy (cloud metadata)");
  });

  test("pgnet's own status listener is denied even where an allow entry names it", async () => {
    const self = { host: "127.0.0.1", port: other.port };
    const policy: EgressPolicyOptions = { allow: [`127.0.0.1:${other.port}`], self: [self] };
    const { row, id } = await run(other.url("/status"), policy);
    expect(row.error_msg).toBe("Destination 127.0.0.1 is denied by pgnet's egress policy (pgnet's own status server)");
    expect(seen(id, other)).toHaveLength(0);
  });
});

describe("redirect headers", () => {
  const secrets = {
    Authorization: "Bearer a",
    Cookie: "c=1",
    apikey: "k",
    "X-Api-Key": "k2",
    "Metadata-Flavor": "Google",
    "X-Custom": "v",
    Accept: "application/json",
  };
  const sentNames = (r: ReturnType<typeof seen>[number]) => r.headers.map(([n]) => n);

  async function redirected(to: string) {
    const id = `egress-${nextId++}`;
    const row = await performRequest(
      {
        id,
        method: "GET",
        url: fixture.url(`/redirect/302?to=${encodeURIComponent(to)}`),
        headers: secrets,
        body: null,
        timeoutMs: 3000,
      },
      { maxResponseBytes: 1 << 20 },
    );
    return { row, id };
  }

  test("a cross-origin hop carries only headers known to carry no credentials", async () => {
    const { row, id } = await redirected(other.url("/echo"));
    expect(row.status_code).toBe(200);
    const names = sentNames(seen(id, other)[0]!);
    for (const dropped of ["Authorization", "Cookie", "apikey", "X-Api-Key", "Metadata-Flavor", "X-Custom"]) {
      expect(names).not.toContain(dropped);
    }
    expect(names).toEqual(expect.arrayContaining(["Host", "Accept", "User-Agent", "X-Pgnet-Request-Id"]));
  });

  test("a same-origin hop keeps every header", async () => {
    const { id } = await redirected("/echo");
    const [, hop] = seen(id);
    expect(sentNames(hop!)).toEqual(expect.arrayContaining(Object.keys(secrets)));
  });
});

describe("https → http", () => {
  let certificates: Certificates;
  let secure: Fixture;
  beforeAll(async () => {
    certificates = makeCertificates();
    secure = await Fixture.start("127.0.0.1", { tls: certificates.localhost });
  });
  afterAll(async () => {
    await secure.stop();
    certificates.remove();
  });

  test("a redirect from https to http is refused, unless allowInsecureRedirects", async () => {
    const agents = createAgents({ ca: certificates.ca });
    const url = secure.url(`/redirect/302?to=${encodeURIComponent(fixture.url("/echo"))}`, "localhost");
    const refused = await run(url, {}, systemResolve, { agents });
    expect(refused.row.error_msg).toBe(
      `Redirect from https to http refused: ${
        fixture.url("").replace(/\/$/, "")
      } (pgnet --allow-insecure-redirects follows such redirects)`,
    );
    expect(seen(refused.id)).toHaveLength(0);
    const followed = await run(url, {}, systemResolve, { agents, allowInsecureRedirects: true });
    expect(followed.row.status_code).toBe(200);
    expect(seen(followed.id)).toHaveLength(1);
  });
});
