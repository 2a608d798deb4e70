// The runtime adapter: the only file that touches Bun.* or Deno.*. Everything else uses Web APIs and node: modules.

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
