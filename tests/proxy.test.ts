// --proxy: every request goes through an explicitly configured HTTP proxy (absolute form for http, a CONNECT
// tunnel for https), the egress policy judges the destination name, and the proxy's own address is allowed.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { EgressPolicy, type EgressPolicyOptions, proxiedCheck } from "../src/egress.ts";
import { createAgents, parseProxy, performRequest, type Proxy } from "../src/http.ts";
import { Fixture, header } from "./helpers/fixture.ts";
import { ProxyFixture } from "./helpers/proxy.ts";
import { type Certificates, makeCertificates } from "./helpers/tls.ts";

let target: Fixture;
let proxy: ProxyFixture;
let certificates: Certificates;
let secure: Fixture;
let nextId = 1;

beforeAll(async () => {
  target = await Fixture.start("127.0.0.1");
  proxy = await ProxyFixture.start();
  certificates = makeCertificates();
  secure = await Fixture.start("127.0.0.1", { tls: certificates.localhost });
});
afterAll(async () => {
  await target.stop();
  await proxy.stop();
  await secure.stop();
  certificates.remove();
});

async function run(
  url: string,
  options: { policy?: EgressPolicyOptions; through?: Proxy; headers?: Record<string, string>; ca?: string } = {},
) {
  const id = `proxy-${nextId++}`;
  const row = await performRequest(
    { id, method: "GET", url, headers: options.headers ?? {}, body: null, timeoutMs: 3000 },
    {
      maxResponseBytes: 1 << 20,
      resolve: proxiedCheck(new EgressPolicy(options.policy ?? {})),
      proxy: options.through ?? parseProxy(proxy.url()),
      ...(options.ca ? { agents: createAgents({ ca: options.ca }) } : {}),
    },
  );
  return { row, id };
}

const sent = (id: string, on: Fixture = target) =>
  on.requests.filter((r) => header(r, "X-Pgnet-Request-Id").includes(id));
const proxied = (id: string) => proxy.requests.filter((r) => r.headers.some(([, v]) => v === id));

describe("through the proxy", () => {
  test("http goes to the proxy in absolute form, with the destination's Host, and is answered", async () => {
    // a name nobody can resolve: only the proxy's name handling (everything on 127.0.0.1) makes it reachable
    const { row, id } = await run(`http://api.pgnet-proxy.test:${target.port}/echo?x=1`);
    expect(row.error_msg).toBeNull();
    expect(row.status_code).toBe(200);
    const [seen] = proxied(id);
    expect(seen!.method).toBe("GET");
    expect(seen!.target).toBe(`http://api.pgnet-proxy.test:${target.port}/echo?x=1`);
    expect(sent(id).map((r) => header(r, "Host"))).toEqual([[`api.pgnet-proxy.test:${target.port}`]]);
  });

  test("https opens a CONNECT tunnel to the name and checks the destination's certificate through it", async () => {
    const count = proxy.requests.length;
    const { row, id } = await run(secure.url("/echo", "localhost"), { ca: certificates.ca.toString() });
    expect(row.error_msg).toBeNull();
    expect(row.status_code).toBe(200);
    expect(proxy.requests.slice(count).map((r) => [r.method, r.target])).toEqual([[
      "CONNECT",
      `localhost:${secure.port}`,
    ]]);
    expect(sent(id, secure)).toHaveLength(1);
    // without the private authority the same tunnel ends in libcurl's certificate error
    const untrusted = await run(secure.url("/echo", "localhost"));
    expect(untrusted.row.error_msg).toBe("SSL peer certificate or SSH remote key was not OK");
    expect(sent(untrusted.id, secure)).toHaveLength(0);
  });

  test("credentials in the proxy URL go to the proxy as Proxy-Authorization, never to the destination", async () => {
    const through = parseProxy(proxy.url("pgnet:s%3Acret"));
    expect(through.display).toBe(`http://pgnet:***@127.0.0.1:${proxy.port}`);
    const plain = await run(target.url("/echo"), { through });
    expect(plain.row.status_code).toBe(200);
    const auth = `Basic ${Buffer.from("pgnet:s:cret").toString("base64")}`;
    expect(proxied(plain.id)[0]!.headers.filter(([n]) => n === "Proxy-Authorization")).toEqual([[
      "Proxy-Authorization",
      auth,
    ]]);
    const count = proxy.requests.length;
    const tunnelled = await run(secure.url("/echo", "localhost"), { through, ca: certificates.ca.toString() });
    expect(tunnelled.row.status_code).toBe(200);
    expect(proxy.requests[count]!.headers).toContainEqual(["Proxy-Authorization", auth]);
    // inside the tunnel the destination sees the request without it
    expect(header(sent(tunnelled.id, secure)[0]!, "Proxy-Authorization")).toEqual([]);
  });

  test("a CONNECT the proxy refuses, and a proxy that is down, are error rows in libcurl's words", async () => {
    proxy.refuseConnect = 403;
    try {
      const { row, id } = await run(secure.url("/echo", "localhost"), { ca: certificates.ca.toString() });
      expect(row.error_msg).toBe("Received HTTP code 403 from proxy after CONNECT");
      expect(sent(id, secure)).toHaveLength(0);
    } finally {
      proxy.refuseConnect = null;
    }
    const down = await ProxyFixture.start();
    const through = parseProxy(down.url());
    await down.stop();
    const { row } = await run(target.url("/echo"), { through });
    expect(row.error_msg).toBe("Couldn't connect to server");
  });
});

describe("the egress policy with a proxy", () => {
  const denied: [string, string][] = [
    [
      "http://169.254.169.254/latest/meta-data/",
      "Destination 169.254.169.254 is denied by pgnet's egress policy (cloud metadata)",
    ],
    ["http://2852039166/", "Destination 169.254.169.254 is denied by pgnet's egress policy (cloud metadata)"],
    [
      "https://[::ffff:169.254.169.254]/",
      "Destination ::ffff:a9fe:a9fe is denied by pgnet's egress policy (cloud metadata)",
    ],
    [
      "http://metadata.google.internal/computeMetadata/v1/",
      "Destination metadata.google.internal is denied by pgnet's egress policy (cloud metadata)",
    ],
  ];
  for (const [url, message] of denied) {
    test(`${url} is refused before the proxy hears of it`, async () => {
      const count = proxy.requests.length;
      const { row } = await run(url);
      expect(row.error_msg).toBe(message);
      expect(proxy.requests.length).toBe(count);
    });
  }

  test("localhost is loopback by definition: under public it is judged as 127.0.0.1 and ::1, not sent on", async () => {
    const count = proxy.requests.length;
    const { row } = await run(target.url("/echo", "localhost"), { policy: { preset: "public" } });
    expect(row.error_msg).toBe(`Destination localhost (127.0.0.1) is denied by pgnet's egress policy (loopback)`);
    expect(proxy.requests.length).toBe(count);
  });

  test("pgnet's own status listener stays denied through the proxy", async () => {
    const self = { host: "127.0.0.1", port: target.port };
    const { row, id } = await run(target.url("/restart"), { policy: { self: [self] } });
    expect(row.error_msg).toBe("Destination 127.0.0.1 is denied by pgnet's egress policy (pgnet's own status server)");
    expect(proxied(id)).toHaveLength(0);
    expect(sent(id)).toHaveLength(0);
  });

  test("the proxy's own loopback address is allowed under public, and names are judged by name rules", async () => {
    const policy = { preset: "public" as const, deny: ["*.internal.test"] };
    const open = await run(`http://api.pgnet-proxy.test:${target.port}/echo`, { policy });
    expect(open.row.status_code).toBe(200);
    const closed = await run(`http://db.internal.test:${target.port}/echo`, { policy });
    expect(closed.row.error_msg).toBe(
      "Destination db.internal.test is denied by pgnet's egress policy (listed in the deny list)",
    );
    expect(proxied(closed.id)).toHaveLength(0);
  });

  test("a redirect is re-checked at every hop: from an allowed name into metadata stops at the proxy's door", async () => {
    const location = encodeURIComponent("http://169.254.169.254/latest/meta-data/iam/");
    const { row, id } = await run(`http://api.pgnet-proxy.test:${target.port}/redirect/302?to=${location}`);
    expect(row.error_msg).toBe("Destination 169.254.169.254 is denied by pgnet's egress policy (cloud metadata)");
    expect(proxied(id).map((r) => r.target)).toEqual([
      `http://api.pgnet-proxy.test:${target.port}/redirect/302?to=${location}`,
    ]);
  });
});

describe("--proxy's value", () => {
  test("only http:// URLs with a host and no path are taken", () => {
    expect(parseProxy("http://proxy.internal:3128")).toMatchObject({ host: "proxy.internal", port: 3128 });
    expect(parseProxy("http://[::1]")).toMatchObject({ host: "::1", port: 80, authorization: null });
    expect(() => parseProxy("https://proxy.internal:3128")).toThrow("only http:// proxies are supported, not https://");
    expect(() => parseProxy("socks5://proxy.internal:1080")).toThrow("only http:// proxies are supported");
    expect(() => parseProxy("http://proxy.internal:3128/path")).toThrow("a proxy URL has no path, query or fragment");
    expect(() => parseProxy("proxy.internal:3128")).toThrow();
  });
});
