// The runtime adapter: the only file that touches Bun.* or Deno.*. Everything else uses Web APIs and node: modules.

import { spawn } from "node:child_process";

declare const Deno: {
  serve(
    options: { hostname: string; port: number; onListen?: (addr: { port: number }) => void },
    handler: (request: Request) => Response | Promise<Response>,
  ): { addr: { port: number }; shutdown(): Promise<void> };
} | undefined;

export const runtimeName: "bun" | "deno" | "node" = typeof Bun !== "undefined"
  ? "bun"
  : typeof Deno !== "undefined"
  ? "deno"
  : "node";

/**
 * Extra fetch options. On Bun, `decompress: false` stops fetch from adding `Accept-Encoding` and
 * decoding bodies, so requests carry exactly the headers pg_net's libcurl sends (Host, Accept, User-Agent).
 */
export const fetchExtras: Record<string, unknown> = runtimeName === "bun" ? { decompress: false } : {};

/**
 * How many fetches the runtime really runs at once. Bun runs 256 and queues the rest, with their timeout
 * clocks already running, unless BUN_CONFIG_MAX_HTTP_REQUESTS was set when the process started (setting it
 * later has no effect: measured, 1,000 fetches to a 500 ms endpoint peaked at ~300 sockets). Fixed for the
 * life of the process, so it is read once.
 */
export const FETCH_LIMIT: number = (() => {
  if (runtimeName !== "bun") return Number.POSITIVE_INFINITY;
  const configured = Number(process.env.BUN_CONFIG_MAX_HTTP_REQUESTS);
  return Number.isInteger(configured) && configured > 0 ? Math.min(configured, 65_535) : 256;
})();

const RELAUNCHED = "PGNET_RELAUNCHED";

/**
 * Bun reads its fetch limit only at start, so when `wanted` fetches at once are more than it allows, this runs
 * the same program again as a child with BUN_CONFIG_MAX_HTTP_REQUESTS set and stands in for it: signals are
 * forwarded, the child's exit code is returned. The child keeps a pipe to this process as its stdin and kills
 * itself the moment that closes, so `kill -9` of this process still stops everything (see dieWithParent).
 * Returns null when no relaunch is needed (not Bun, the limit already suffices, or this is the child).
 */
export function relaunchForFetchLimit(wanted: number): Promise<number> | null {
  if (runtimeName !== "bun" || FETCH_LIMIT >= wanted || process.env[RELAUNCHED]) return null;
  const compiled = process.argv[1]?.startsWith("/$bunfs/") === true;
  const child = spawn(process.execPath, process.argv.slice(compiled ? 2 : 1), {
    stdio: ["pipe", "inherit", "inherit"],
    // its own process group: a terminal's Ctrl-C reaches this process only, which passes it on once
    detached: true,
    env: { ...process.env, BUN_CONFIG_MAX_HTTP_REQUESTS: String(wanted), [RELAUNCHED]: "1" },
  });
  for (const signal of ["SIGTERM", "SIGINT", "SIGHUP"] as const) process.on(signal, () => child.kill(signal));
  return new Promise((resolve) => child.on("exit", (code) => resolve(code ?? 1)));
}

/** In a relaunched child: exit at once (as if killed) when the parent that launched it is gone. */
export function dieWithParent(): void {
  if (!process.env[RELAUNCHED]) return;
  const die = () => process.kill(process.pid, "SIGKILL");
  process.stdin.on("end", die);
  process.stdin.on("close", die);
  process.stdin.on("error", die);
  process.stdin.resume();
}

export interface Server {
  /** the port actually bound (useful with port 0) */
  port: number;
  stop(): Promise<void>;
}

/** Serves a fetch-style handler on hostname:port. */
export function serve(
  handler: (request: Request) => Response | Promise<Response>,
  options: { hostname: string; port: number },
): Promise<Server> {
  if (runtimeName === "bun") {
    const server = Bun.serve({ hostname: options.hostname, port: options.port, fetch: handler });
    return Promise.resolve({ port: server.port ?? options.port, stop: () => server.stop(true) });
  }
  if (Deno) {
    const server = Deno.serve({ hostname: options.hostname, port: options.port, onListen() {} }, handler);
    return Promise.resolve({ port: server.addr.port, stop: () => server.shutdown() });
  }
  throw new Error("pgnet runs on Bun or Deno");
}
