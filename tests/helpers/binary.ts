// The compiled ./pgnet, built once per test run into a temporary directory, and ways to run it.

import { describe, test } from "bun:test";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { waitFor } from "./worker.ts";

export const ROOT = resolve(import.meta.dir, "../..");
let built: string | undefined;
/** temporary directories made here, removed by removeTemporaryDirs() after the run */
const made: string[] = [];

function temporaryDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  made.push(dir);
  return dir;
}

export function removeTemporaryDirs(): void {
  for (const dir of made.splice(0)) rmSync(dir, { recursive: true, force: true });
  built = undefined;
}

/** The runtime the end-to-end tests run pgnet under: the compiled Bun binary, or main.ts under Deno. */
export const RUNTIME: "bun" | "deno" = process.env.PGNET_TEST_RUNTIME === "deno" ? "deno" : "bun";
export const DENO = join(ROOT, "node_modules", "@deno", "linux-x64-glibc", "deno");

/**
 * For the tests in the end-to-end files that run pgnet's code inside the test process (startWorker, a Fleet,
 * postgres.js itself) rather than a pgnet process: the same under either runtime, so the Deno run skips them.
 */
export const inProcess = { test: test.skipIf(RUNTIME === "deno"), describe: describe.skipIf(RUNTIME === "deno") };

/**
 * Path of a pgnet to run: a freshly compiled executable (compile.sh into a temporary directory), or, with
 * PGNET_TEST_RUNTIME=deno, a launcher that execs `deno run main.ts` (signals reach Deno itself).
 */
export function binary(): string {
  if (built) return built;
  if (RUNTIME === "deno") {
    const launcher = join(temporaryDir("pgnet-deno-"), "pgnet");
    const config = join(ROOT, "deno.json");
    writeFileSync(
      launcher,
      `#!/bin/sh\nexec '${DENO}' run --allow-all --config='${config}' '${join(ROOT, "main.ts")}' "$@"\n`,
    );
    chmodSync(launcher, 0o755);
    return built = launcher;
  }
  const out = join(temporaryDir("pgnet-bin-"), "pgnet");
  const result = spawnSync("bash", ["compile.sh"], {
    cwd: ROOT,
    env: { ...process.env, PGNET_OUT: out },
    encoding: "utf8",
  });
  if (result.status !== 0) throw new Error(`compile.sh failed: ${result.stderr}${result.stdout}`);
  built = out;
  return out;
}

/** A directory with nothing in it, so the binary cannot lean on the repository's node_modules. */
export function emptyDir(): string {
  const dir = temporaryDir("pgnet-cwd-");
  chmodSync(dir, 0o755); // an embedded PostgreSQL started as root runs as another account
  return dir;
}

/** Environment without anything that would point pgnet at a database by accident. */
export function cleanEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v !== undefined && !/^(PG|DATABASE_URL|PGNET_)/.test(k)) env[k] = v;
  }
  return { ...env, ...extra };
}

export interface Finished {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the binary to completion. */
export function runPgnet(args: string[], options: { env?: Record<string, string>; cwd?: string } = {}): Finished {
  const result = spawnSync(binary(), args, {
    cwd: options.cwd ?? emptyDir(),
    env: options.env ?? cleanEnv(),
    encoding: "utf8",
    timeout: 60_000,
  });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** A running pgnet process, with its log lines. */
export class PgnetProcess {
  /** processes started and not exited yet: the test setup checks none outlives its test */
  static readonly running = new Set<PgnetProcess>();
  /** started in a process group of its own */
  readonly detached: boolean;
  readonly lines: string[] = [];
  readonly child: ChildProcess;
  readonly exited: Promise<number | null>;

  /** `command` defaults to the compiled binary; e.g. [deno, "run", "-A", "main.ts"] runs the source instead */
  /** `detached` puts it in a process group of its own, which a test can signal as a terminal would */
  constructor(
    args: string[],
    options: { env?: Record<string, string>; cwd?: string; command?: string[]; detached?: boolean } = {},
  ) {
    this.detached = options.detached ?? false;
    const [program, ...pre] = options.command ?? [binary()];
    this.child = spawn(program!, [...pre, ...args], {
      detached: options.detached ?? false,
      cwd: options.cwd ?? emptyDir(),
      env: options.env ?? cleanEnv(),
      stdio: ["ignore", "pipe", "pipe"],
    });
    for (const stream of [this.child.stdout!, this.child.stderr!]) {
      let rest = "";
      stream.on("data", (chunk: Buffer) => {
        const text = rest + chunk.toString("utf8");
        const parts = text.split("\n");
        rest = parts.pop()!;
        this.lines.push(...parts);
      });
    }
    PgnetProcess.running.add(this);
    this.exited = new Promise((resolve) =>
      this.child.on("exit", (code) => {
        PgnetProcess.running.delete(this);
        resolve(code);
      })
    );
  }

  async waitForLine(pattern: RegExp, timeoutMs = 20_000): Promise<RegExpExecArray> {
    return await waitFor(
      () => {
        for (const line of this.lines) {
          const m = pattern.exec(line);
          if (m) return m;
        }
        return null;
      },
      timeoutMs,
      `a log line matching ${pattern}\n${this.lines.join("\n")}`,
    );
  }

  /** The status server's base URL, from its start-up line. */
  async statusUrl(): Promise<string> {
    return (await this.waitForLine(/status server listening url=(http:\/\/\S+?)\/?$/))[1]!;
  }

  signal(name: NodeJS.Signals): void {
    this.child.kill(name);
  }

  /** SIGTERM, then the exit code; a non-zero one comes with the process's log, to say why. */
  async stop(): Promise<number | null> {
    if (this.child.exitCode === null) this.signal("SIGTERM");
    const code = await this.exited;
    if (code !== 0) console.error(`pgnet exited ${code}; its log:\n${this.lines.join("\n")}`);
    return code;
  }
}
